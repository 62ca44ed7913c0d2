"""The ``raymedic`` command line.

Each sub-command is a thin function over :mod:`raymedic.app.service`, the registry and
the gateway's HTTP API; every failure the user can fix prints ``error: ...`` with
the fix and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cluster.head import ray_alive
from raymedic.config import ServeFile, load_config
from raymedic.keys import ADMIN_TOKEN_ENV, APP_NAME
from raymedic.errors import ConfigError, RaymedicError
from raymedic.app.http import request_json

__all__ = ["main"]

log = logging.getLogger("raymedic")


def _progress(msg: str) -> None:
    print(f"[raymedic] {msg}", flush=True)


def _config_from(args: argparse.Namespace) -> tuple[ServeFile, Any]:
    sf = load_config(args.config)
    cfg = sf.config
    if getattr(args, "storage_path", None):
        cfg = cfg.model_copy(update={"storage_path": args.storage_path})
    if getattr(args, "chaos", False):
        cfg = cfg.model_copy(update={"chaos": cfg.chaos.model_copy(update={"enabled": True})})
    return sf, cfg.resolved()


def _service_url(args: argparse.Namespace) -> str:
    from cluster.runstate import read_run_state

    if getattr(args, "url", None):
        return args.url.rstrip("/")
    state = read_run_state()
    if state:
        return state.http_url
    sf = load_config(args.config)
    return f"http://{sf.http_host}:{sf.http_port}"


# ---- up / down ----------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    # No `import ray` before join(): Ray reads RAY_AUTH_MODE when it is imported.
    from cluster.connect import join
    from cluster.head import start_head
    from cluster.runstate import RunState, read_run_state, write_run_state
    from raymedic.app import service

    sf, cfg = _config_from(args)
    port = args.port or sf.http_port
    host = sf.http_host
    previous = read_run_state()
    started = False
    head_session = previous.head_session if previous and previous.started_cluster else None
    local: dict | None = None  # the multi-node cluster `up --nodes` started (or reuses)
    if args.nodes is not None:
        _check_nodes_request(args)
    if os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        _progress(f"joining the Ray cluster at {address}")
    elif previous and previous.started_cluster and ray_alive(previous.ray_address):
        running = len((previous.cluster or {}).get("nodes", ())) or 1
        if args.nodes is not None and (previous.cluster is None or running != args.nodes):
            raise ConfigError(f"a local Ray cluster raymedic started ({running} node(s)) still runs at "
                              f"{previous.ray_address}: stop it with `raymedic down`, then run "
                              f"`raymedic up --nodes {args.nodes}`")
        address, started, local = previous.ray_address, True, previous.cluster
        _progress(f"reusing the local Ray cluster raymedic started at {address}")
    elif args.nodes is not None:
        local = _start_nodes(args, previous, sf, cfg,
                             url=f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}")
        address, started = local["address"], True
    else:
        ray_port, dashboard_port = args.ray_port or 6379, args.dashboard_port or 8265
        _progress(f"starting a local Ray cluster (ray start --head, port {ray_port}, "
                  f"dashboard :{dashboard_port})")
        (address, head_session), started = start_head(port=ray_port, dashboard_port=dashboard_port), True
    token_note = _ensure_admin_token()
    join(address, ours=started)
    import ray

    try:
        proxy_location = None
        if local is not None:
            from cluster.nodes import wait_for_nodes
            from cluster.plan import spread_over_nodes

            nodes = len(local["nodes"])
            if previous is None or previous.cluster is not local:  # just started (a reused one may
                wait_for_nodes(nodes, timeout_s=120)               # have lost a node: redeploy anyway)
            cfg = spread_over_nodes(cfg, nodes, gpu_nodes=sum(n["node_type"] == "gpu-worker"
                                                              for n in local["nodes"]))
            proxy_location = "HeadOnly"  # every node's proxy would bind the same port on one machine
        cfg = service.choose_model(cfg, args.model)
        service.ensure_trained(cfg, _progress)
        service.deploy(cfg, host=host, port=port, progress=_progress, proxy_location=proxy_location)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        waited = service.wait_ready(url, cfg.model, timeout_s=args.timeout, progress=_progress)
        dashboard = _dashboard_url()
    finally:
        ray.shutdown()
    write_run_state(RunState(ray_address=address, dashboard_url=dashboard, http_url=url,
                             started_cluster=started, config_path=str(sf.path), model=cfg.model,
                             storage_path=cfg.storage_path, cluster=local,
                             head_session=head_session if started and local is None else None))
    _progress(f"service answers at {url} (ready after {waited:.1f} s)")
    if local is not None:
        from cluster.nodes import LocalCluster, describe

        print(f"  nodes:\n{describe(LocalCluster.from_dict(local))}")
    print(f"  model:      {cfg.model}\n  predict:    curl -X POST {url}/v1/models/{cfg.model}:predict "
          f"-d '{{\"instances\": [...]}}'\n  schema:     curl {url}/v1/models/{cfg.model}\n"
          f"  status:     raymedic status\n  dashboard:  {dashboard}\n  stop:       raymedic down")
    if token_note:
        print(f"  admin:      {token_note}")
    return 0


def _check_nodes_request(args: argparse.Namespace) -> None:
    """Refuse ``up --nodes`` requests that cannot work, before anything starts."""
    from cluster.plan import check_shape

    if os.environ.get("RAY_ADDRESS"):
        raise ConfigError(f"--nodes starts a new local cluster, but RAY_ADDRESS={os.environ['RAY_ADDRESS']} "
                          "names one to join: drop --nodes to deploy onto that cluster, or unset RAY_ADDRESS "
                          f"(env -u RAY_ADDRESS raymedic up --nodes {args.nodes})")
    check_shape(args.nodes, cpus_per_node=args.cpus_per_node, gpu_nodes=args.gpu_nodes,
                gpus_per_node=args.gpus_per_node)


def _start_nodes(args: argparse.Namespace, previous: Any, sf: ServeFile, cfg: Any, *, url: str) -> dict:
    """Start a head and ``--nodes - 1`` workers on this machine; recorded at once so ``down`` can stop them."""
    from cluster.runstate import RunState, write_run_state
    from cluster.nodes import LocalCluster, start_cluster, stop_cluster
    from cluster.plan import plan_cluster

    if previous is not None and previous.cluster:
        stop_cluster(LocalCluster.from_dict(previous.cluster))  # leftovers of one that died
    plan = plan_cluster(args.nodes, cpus_per_node=args.cpus_per_node, gpu_nodes=args.gpu_nodes,
                        gpus_per_node=args.gpus_per_node, gcs_port=args.ray_port,
                        dashboard_port=args.dashboard_port)
    _progress(f"starting a local {args.nodes}-node Ray cluster (GCS :{plan.head.ports['gcs']}, dashboard "
              f"{plan.dashboard_url}, state in {plan.root})")
    local = start_cluster(plan, progress=_progress).to_dict()
    # Written before the deploy: should anything below fail, `raymedic down` still stops these nodes.
    write_run_state(RunState(ray_address=local["address"], dashboard_url=local["dashboard_url"], http_url=url,
                             started_cluster=True, config_path=str(sf.path), model=cfg.model,
                             storage_path=cfg.storage_path, cluster=local))
    return local


def _token_file():
    from cluster.runstate import raymedic_home

    return raymedic_home() / "admin_token"


def _ensure_admin_token() -> str | None:
    """Make sure the deploy carries an admin token: $RAYMEDIC_ADMIN_TOKEN, else a generated one."""
    if os.environ.get(ADMIN_TOKEN_ENV):
        return None
    path = _token_file()
    if not path.is_file():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    os.environ[ADMIN_TOKEN_ENV] = path.read_text().strip()
    return f"token in {path} (the CLI reads it; set {ADMIN_TOKEN_ENV} to choose your own)"


def _admin_token() -> str:
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return token
    path = _token_file()
    if path.is_file():
        return path.read_text().strip()
    raise RaymedicError(f"no admin token: set {ADMIN_TOKEN_ENV} to the token the service was deployed with")


def _admin(args: argparse.Namespace, route: str, body: Any = None) -> Any:
    url = _service_url(args)
    try:
        reply = request_json("POST", f"{url}/v1/admin/{route}", body if body is not None else {},
                             headers={"Authorization": f"Bearer {_admin_token()}"}, timeout_s=30)
    except OSError as exc:
        raise RaymedicError(f"no raymedic service answers at {url} ({exc}); start it with `raymedic up`") from None
    if reply.status == 404 and route.startswith("chaos"):
        raise RaymedicError(f"{reply.body.get('error', reply.body)} — chaos routes exist only when chaos is "
                            "enabled: `raymedic up --chaos` or chaos.enabled: true in the config")
    if reply.status >= 400:
        raise RaymedicError(str(reply.body.get("error", reply.body)) if isinstance(reply.body, dict)
                            else str(reply.body))
    return reply.body


def _dashboard_url() -> str:
    import ray

    try:
        ctx = ray.get_runtime_context()
        addr = ctx.dashboard_url if hasattr(ctx, "dashboard_url") else None
        addr = addr or ray._private.worker.global_worker.node.address_info.get("webui_url")
    except Exception:
        addr = None
    return f"http://{addr}" if addr and not str(addr).startswith("http") else (addr or "unknown")


def cmd_down(args: argparse.Namespace) -> int:
    from cluster.connect import join
    from cluster.head import stop_head
    from cluster.runstate import clear_run_state, read_run_state

    state = read_run_state()
    address = os.environ.get("RAY_ADDRESS") or (state.ray_address if state else None)
    if not address:
        _progress("nothing to stop: no service started by `raymedic up` was found")
        return 0
    if ray_alive(address):
        join(address, ours=bool(state and state.started_cluster))
        import ray

        try:
            from raymedic.app import service

            _progress(f"deleting Serve application {APP_NAME!r} and its healing controller")
            try:
                service.undeploy()
            except Exception as exc:  # e.g. an `up` interrupted before Serve started
                if not (state and state.started_cluster and not os.environ.get("RAY_ADDRESS")):
                    raise RaymedicError(f"could not delete the Serve application ({exc}); check "
                                        "`ray status` and the Serve logs") from None
                _progress(f"  nothing to delete ({str(exc).splitlines()[0]}); stopping the cluster anyway")
        finally:
            ray.shutdown()
    if state and state.started_cluster and not os.environ.get("RAY_ADDRESS") and state.cluster:
        from cluster.nodes import LocalCluster, stop_cluster

        local = LocalCluster.from_dict(state.cluster)
        _progress(f"stopping the {len(local.nodes)}-node local Ray cluster raymedic started (its own "
                  "processes only)")
        stop_cluster(local)
    elif state and state.started_cluster and not os.environ.get("RAY_ADDRESS"):
        _progress("stopping the local Ray cluster raymedic started (its own processes only)")
        stop_head(state.head_session, state.ray_address)
    clear_run_state()
    _progress("down")
    return 0


# ---- status ---------------------------------------------------------------------------


def _performance_line(perf: dict) -> str:
    """Live accuracy, the label-free estimate and prediction drift, on one line ('' before any check)."""
    parts = []
    ens = (perf.get("labelled") or {}).get("ensemble")
    if ens:
        parts.append(f"ensemble accuracy {ens['accuracy']:.3f} on {ens['labels']} labels")
    est = perf.get("estimated")
    if est:
        parts.append(f"estimated {est['accuracy']:.3f} ({est['reliability']})")
    pd = perf.get("prediction_drift") or {}
    if pd.get("outputs"):
        psi = ", ".join(f"{k} PSI {v['psi']:.3f}" for k, v in pd["outputs"].items())
        parts.append(f"prediction drift {'in ' + ', '.join(pd['drifted_outputs']) if pd['drifted'] else 'none'} "
                     f"({psi})")
    elif pd:
        parts.append(f"prediction drift: collecting ({pd['reference_answers']} reference answers, "
                     f"{pd['window_answers']} in the window)")
    return "performance: " + "; ".join(parts) if parts else ""


def cmd_status(args: argparse.Namespace) -> int:
    url = _service_url(args)
    try:
        reply = request_json("GET", f"{url}/v1/status", timeout_s=args.timeout)
    except OSError as exc:
        raise RaymedicError(f"no raymedic service answers at {url} ({exc}); start it with `raymedic up`") from None
    if reply.status != 200:
        raise RaymedicError(f"{url}/v1/status answered {reply.status}: {reply.body}")
    st = reply.body
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"model {st['model']}  ({st['model_version']})  application {st['application']['status']}")
    names = {m["name"]: m["name"] + (" (fallback)" if m.get("fallback") else "") for m in st["members"]}
    w = max([14] + [len(n) + 2 for n in names.values()])  # the name column fits the longest name
    print(f"{'member':<{w}}{'version':<10}{'weight':>8}  {'state':<12}replicas")
    for m in st["members"]:
        reps = ", ".join(f"{r['id']}:{r['state']}" for r in m["replicas"]) or "-"
        print(f"{names[m['name']]:<{w}}{m['version']:<10}{m['weight']:>8.3f}  {m['state']:<12}{reps}")
    gw = st["gateway"]
    print(f"{'gateway':<{w}}{'':<10}{'':>8}  {gw['state']:<12}"
          + ", ".join(f"{r['id']}:{r['state']}" for r in gw["replicas"]))
    ctl = st["controller"]
    print(f"controller: {ctl['state']}" + (f" (pid {ctl['pid']}, step p50 {ctl.get('step_ms_p50')} ms)"
                                             if ctl.get("pid") else ""))
    if ctl.get("mode") == "approve":
        props = ctl.get("proposals") or []
        print(f"approval mode: {len(props)} proposal(s) waiting" + ("".join(
            f"\n  {p['incident']}  restart {p['target']} ({p['fault']})  → raymedic approve|reject {p['incident']}"
            for p in props)))
    rt = ctl.get("retraining") or {}
    if rt.get("job"):
        print(f"retraining: job {rt['job'].get('job_id')} running ({rt['job']['reason']})")
    elif rt.get("deploying"):
        print("retraining: deploying new versions")
    if rt.get("probation"):
        print(f"probation: {rt['probation']['versions']} (rolled back automatically if live accuracy drops)")
    tr = rt.get("trial")
    if tr:
        print(f"trial {tr['record']} ({tr['mode']}, {tr['share']:.0%} of requests):" + "".join(
            f"\n  {m} {v}: " + (f"challenger {t['challenger_accuracy']:.3f} vs champion {t['champion_accuracy']:.3f}"
                               f" on {t['labels']} paired labels" if t.get("labels") else "no paired labels yet")
            + (f" → {tr['verdicts'][m][0]}: {tr['verdicts'][m][1]}" if m in tr.get("verdicts", {}) else "")
            for m, v in tr["versions"].items() for t in [tr["tally"].get(m, {})]))
    for h in (rt.get("history") or [])[-3:]:
        print(f"  retrain {h.get('record')}: {h.get('result')}" + "".join(
            f"\n    {m}: {'pass' if g['passed'] else 'reject'} " + (
                f"{g['challenger_accuracy']:.3f} vs champion {g['champion_accuracy']:.3f}"
                if g.get("challenger_accuracy") is not None else "") + (
                f" — {'; '.join(g['reasons'])}" if g.get("reasons") else "")
            for m, g in (h.get("gate") or {}).items()))
    line = _performance_line(st.get("performance") or {})
    if line:
        print(line)
    incidents = st["incidents"]
    print(f"incidents: {len(incidents)}" + (" (latest first)" if incidents else ""))
    for inc in list(reversed(incidents))[: args.incidents]:
        ttr = inc.get("time_to_recover_s")
        if inc.get("replica") is None:  # a data or model incident: a feature or the ensemble, not a replica
            ev = {k: v for k, v in inc.get("evidence", {}).items() if k != "window_rows"}
            what = f"feature {inc['feature']!r}" if inc.get("feature") else inc.get("target", "")
            print(f"  {inc['id']}  {inc['kind']:<14} {what}  {inc['status']:<9} "
                  f"{inc.get('severity', '')}  {json.dumps(ev)}")
            continue
        print(f"  {inc['id']}  {inc['kind']:<6} {inc['member']}/{inc['replica']}  {inc['status']:<9} "
              f"detect {inc['time_to_detect_s']:.2f} s  recover {'-' if ttr is None else f'{ttr:.1f} s'}  "
              f"action {inc.get('action') or '-'}: {inc.get('action_outcome') or '-'}")
    return 0


# ---- operator controls ---------------------------------------------------------------


def cmd_pause(args: argparse.Namespace) -> int:
    out = _admin(args, "pause")
    print(json.dumps(out) if args.json else "controller paused: it detects and records, but takes no action")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    out = _admin(args, "approve", {"incident": args.incident})
    print(json.dumps(out) if args.json else f"{args.incident}: approved; the restart runs on the next step")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    out = _admin(args, "reject", {"incident": args.incident})
    print(json.dumps(out) if args.json else f"{args.incident}: rejected; the replica is no longer avoided")
    return 0


def cmd_mode(args: argparse.Namespace) -> int:
    out = _admin(args, "mode", {"mode": args.mode})
    print(json.dumps(out) if args.json else
          {"auto": "controller heals on its own", "approve": "controller proposes restarts; approve them with "
           "`raymedic approve ID`"}[args.mode])
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    out = _admin(args, "retrain", {"reason": args.reason or ""})
    print(json.dumps(out) if args.json else
          "retrain requested: the controller submits a Ray job (see the dashboard's Jobs view), gates the "
          "challengers and promotes those that pass; follow it with `raymedic status`")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    out = _admin(args, "rollback", {"members": args.member} if args.member else {})
    print(json.dumps(out) if args.json else
          "rolling back: " + ", ".join(f"{m} → {v}" for m, v in out["champion_now"].items())
          + " (every replica swaps in place; `raymedic status` shows the versions)")
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    out = _admin(args, "trial", {"member": args.member, "version": args.version,
                                 **({"mode": args.mode} if args.mode else {})})
    print(json.dumps(out) if args.json else
          f"trial {out['trial']}: {out['member']} {out['version']} now sees {out['share']:.0%} of requests "
          f"next to the champion ({out['mode']}); it is promoted if it holds up on labelled traffic, dropped "
          "otherwise. Follow it with `raymedic status`; `raymedic rollback` ends it")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    out = _admin(args, "resume")
    print(json.dumps(out) if args.json else "controller resumed")
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    if args.fault == "clear":
        out = _admin(args, "chaos/clear")
    else:
        if args.member is None:
            raise RaymedicError("--member is required: which ensemble member to hurt (see `raymedic status`)")
        if args.fault == "slow" and args.delay_ms is None:
            raise RaymedicError("slow needs --delay-ms N (e.g. --delay-ms 500)")
        out = _admin(args, "chaos", {"fault": args.fault, "member": args.member, "replica": args.replica,
                                     "delay_ms": args.delay_ms})
    if args.json:
        print(json.dumps(out))
    elif args.fault == "clear":
        print(f"cleared faults on {len(out['cleared'])} replica(s)")
    else:
        print(f"injected {out['fault']} into {out['member']}/{out['replica']}; watch it heal with `raymedic status`")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """The gateway's OpenAPI document (V1 and V2 routes), without a running service."""
    from serve_apps.gateway import api

    text = json.dumps(api.openapi(), indent=2)
    if args.out:
        try:
            Path(args.out).write_text(text + "\n")
        except OSError as exc:
            raise RaymedicError(f"cannot write {args.out!r}: {exc.strerror}; pass --out with a writable path") from None
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from controllers.audit import read_audit
    from raymedic.storage import Storage

    state = _run_state_or_config(args)
    since = time.time() - args.since if args.since else None
    records = read_audit(Storage(state["storage_path"]), state["model"], since=since)[-args.limit:]
    for r in records:
        if args.json:
            print(json.dumps(r, default=str))
        else:
            when = time.strftime("%H:%M:%S", time.localtime(r["ts"])) + f".{int(r['ts'] % 1 * 1000):03d}"
            ev = json.dumps(r.get("evidence"), default=str)
            print(f"{when}  {r['kind']:<18} {r['target']:<28} {r.get('action', ''):<10} "
                  f"{r.get('outcome', '')}  {ev[:120]}")
    if not records and not args.json:
        print("no audit records yet")
    return 0


def _run_state_or_config(args: argparse.Namespace) -> dict[str, str]:
    from cluster.runstate import read_run_state

    state = read_run_state()
    if state and not args.config:
        return {"storage_path": state.storage_path, "model": state.model}
    _, cfg = _config_from(args)
    return {"storage_path": cfg.storage_path, "model": args.model or cfg.model}


# ---- train ----------------------------------------------------------------------------


def _use_running_cluster() -> None:
    """Point RAY_ADDRESS at the cluster `raymedic up` started, if it runs, so work goes there."""
    from cluster.connect import use_token_auth
    from cluster.runstate import read_run_state

    state = read_run_state()
    if not os.environ.get("RAY_ADDRESS") and state and ray_alive(state.ray_address):
        os.environ["RAY_ADDRESS"] = state.ray_address
        if state.started_cluster:
            use_token_auth()


def cmd_train(args: argparse.Namespace) -> int:
    from cluster.connect import connect_or_start
    from train_jobs.train import report_json, resolve_cli_inputs, train_ensemble

    config, table, target, model = resolve_cli_inputs(args)
    _use_running_cluster()  # train on the running cluster
    out = (lambda s: print(s, file=sys.stderr)) if args.json else _progress
    with connect_or_start(log_to_driver=not args.json):
        report = train_ensemble(config, table, target=target, model=model, members=args.members,
                                promote=not args.no_promote, progress=out)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        _progress(f"trained {len(report.versions)} member(s) of {report.model!r} in {report.wall_s:.1f} s; "
                  f"serve them with `raymedic up --model {report.model}`")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from cluster.connect import connect_or_start
    from train_jobs.search import format_report, report_json, resolve_search_inputs, search_member

    config, table, target, model = resolve_search_inputs(args)  # bad flags fail here, before Ray starts
    _use_running_cluster()
    out = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else _progress
    with connect_or_start(log_to_driver=False):  # trials' own output would bury the progress lines
        report = search_member(config, table, target=target, model=model, member=args.member,
                               num_samples=args.trials, max_epochs=args.max_epochs, progress=out)
    print(json.dumps(report_json(report), indent=2) if args.json else format_report(report))
    return 0


# ---- demo -----------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from raymedic.app.demo import run_demo

    return run_demo(config_path=args.config, port=args.port, requests=args.requests, progress=_progress)


# ---- bench ----------------------------------------------------------------------------


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Ray's own workers print notices to this process's stdout (e.g. while Serve shuts down);
    keep stdout for a JSON report alone by pointing fd 1 at stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.rps is not None and not args.rps > 0:
        raise RaymedicError(f"--rps {args.rps:g}: give a positive rate, e.g. 50")
    if args.scenario == "drift" and args.live:  # the same kind of streams through a deployed service
        from raymedic.bench import live as benchlive

        names = tuple(n.strip() for n in args.live_scenarios.split(",")) if args.live_scenarios else \
            benchlive.LiveDriftSettings().scenarios
        live = benchlive.LiveDriftSettings(rows_per_s=args.rows_per_s, scenarios=names,
                                           control_rows=args.control_rows, seed=args.seed)
        if args.json:
            with _stdout_to_stderr():
                report = benchlive.run_live_drift(config_path=args.config, port=args.port, settings=live,
                                                  progress=lambda m: print(m, file=sys.stderr, flush=True))
            print(benchlive.dumps(report))
        else:
            report = benchlive.run_live_drift(config_path=args.config, port=args.port, settings=live,
                                              progress=_progress)
            print(benchlive.format_live_table(report))
        return 0
    if args.scenario == "drift":  # pure NumPy/SciPy: no cluster, no Serve
        from raymedic.bench import drift as benchdrift

        drift_settings = benchdrift.DriftBenchSettings(seeds=args.seeds, rows_per_s=args.rps or 25.0)
        progress = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else _progress
        report = benchdrift.run_drift_bench(drift_settings, progress=progress)
        print(benchdrift.dumps(report) if args.json else benchdrift.format_table(report))
        return 0

    from raymedic.bench import faults as bench

    if args.scenario == "saturation":
        try:
            rates = [float(x) for x in args.rates.split(",") if x.strip()]
        except ValueError:
            rates = []
        if not rates or any(r <= 0 for r in rates):
            raise RaymedicError(f"--rates {args.rates!r}: give a comma list of positive request rates, e.g. 20,35,50")
        run = lambda progress: bench.run_saturation(config_path=args.config, port=args.port,  # noqa: E731
                                                     rates=rates, duration_s=args.seconds,
                                                     deadline_s=args.deadline, progress=progress)
        if args.json:
            with _stdout_to_stderr():
                report = run(lambda m: print(m, file=sys.stderr))
            print(bench.dumps(report))
        else:
            report = run(_progress)
            print()
            print(bench.format_saturation(report))
        return 0
    if args.scenario == "controller-step":
        out = bench.run_controller_step(members=args.members, replicas=args.replicas)
        print(json.dumps(out, indent=2) if args.json else
              f"controller step over {out['members']} members × {out['replicas_per_member']} replicas: "
              f"p50 {out['step_ms_p50']} ms, max {out['step_ms_max']} ms ({out['steps']} steps)\n"
              f"data check over {out['data_check_features']} features × {out['data_check_rows']} rows: "
              f"p50 {out['data_check_ms_p50']} ms ({out['data_check_drifting']} features drifting)")
        return 0
    faults = tuple(args.faults.split(","))
    bad = [f for f in faults if f not in ("kill", "hang", "slow", "wrong")]
    if bad:
        raise RaymedicError(f"unknown fault(s) {bad}: --faults takes a comma list of kill,hang,slow,wrong")
    settings = bench.BenchSettings(rps=args.rps or bench.BenchSettings.rps, deadline_s=args.deadline,
                                   fault_s=args.fault_seconds, slow_ms=args.slow_ms, faults=faults)
    if args.json:
        with _stdout_to_stderr():
            report = bench.run_replica_faults(config_path=args.config, port=args.port, settings=settings,
                                              progress=lambda m: print(m, file=sys.stderr))
        print(bench.dumps(report))
        return 0
    report = bench.run_replica_faults(config_path=args.config, port=args.port, settings=settings,
                                      progress=_progress)
    print()
    print(bench.format_table(report))
    print()
    print(bench.dumps(report))
    return 0


# ---- parser ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raymedic", description="Self-healing ensemble serving on Ray.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        sp.add_argument("--config", help="raymedic/Serve YAML config (default: cluster/raymedic.yaml)")
        return sp

    up = add("up", cmd_up, "Start or join Ray, deploy the service, return once it answers.")
    up.add_argument("--model", help="Model to serve (default: the config's, else the registry's only one).")
    up.add_argument("--storage-path", help="Override the config's storage_path.")
    up.add_argument("--chaos", action="store_true", help="Enable the chaos admin routes.")
    up.add_argument("--port", type=int, help="HTTP port (default: the config's http_options.port).")
    up.add_argument("--ray-port", type=int, help="GCS port of a local cluster (default 6379; with --nodes a "
                    "free port).")
    up.add_argument("--dashboard-port", type=int, help="Ray dashboard port (default 8265; with --nodes a free "
                    "port).")
    up.add_argument("--nodes", type=int, help="Start a real N-node Ray cluster on this machine (a head and N-1 "
                    "workers, each its own raylet) and spread the members over it; `down` stops exactly it.")
    up.add_argument("--cpus-per-node", type=int, default=4, help="With --nodes: logical CPUs per node (default 4).")
    up.add_argument("--gpu-nodes", type=int, default=0, help="With --nodes: how many workers are GPU workers "
                    "(default 0); members with num_gpus > 0 land only there.")
    up.add_argument("--gpus-per-node", type=int, default=1, help="With --nodes: logical GPUs per GPU worker "
                    "(default 1).")
    up.add_argument("--timeout", type=float, default=300.0, help="Seconds to wait for the service.")

    add("down", cmd_down, "Delete the service and stop the local cluster `up` started.")

    st = add("status", cmd_status, "Members, versions, weights, replica states, incidents.")
    st.add_argument("--json", action="store_true", help="Print GET /v1/status as JSON.")
    st.add_argument("--url", help="Gateway URL (default: from `raymedic up`, else the config).")
    st.add_argument("--timeout", type=float, default=10.0)

    st.add_argument("--incidents", type=int, default=10, help="Incidents to list (default 10).")

    def admin(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--url", help="Gateway URL (default: from `raymedic up`, else the config).")
        sp.add_argument("--json", action="store_true", help="Print the answer as JSON.")
        return sp

    admin(add("pause", cmd_pause, "Pause automatic healing (detection and audit go on)."))
    admin(add("resume", cmd_resume, "Resume automatic healing."))
    ap = admin(add("approve", cmd_approve, "Approve a restart the controller proposed (approval mode)."))
    ap.add_argument("incident", help="Incident id, from `raymedic status`.")
    rj = admin(add("reject", cmd_reject, "Reject a proposed restart (approval mode)."))
    rj.add_argument("incident", help="Incident id, from `raymedic status`.")
    mo = admin(add("mode", cmd_mode, "auto: heal on its own; approve: propose restarts for an operator."))
    mo.add_argument("mode", choices=["auto", "approve"])
    rt = admin(add("retrain", cmd_retrain, "Retrain on recent labelled data now (a Ray job), gated like "
                   "an automatic retrain."))
    rt.add_argument("--reason", help="Why (recorded in the audit log and the versions' metadata).")
    rb = admin(add("rollback", cmd_rollback, "Serve the previous version again (every member, or --member)."))
    rb.add_argument("--member", action="append", help="Only this member (repeatable).")
    tr = admin(add("trial", cmd_trial, "Put a registered version (default: the member's 'challenger', e.g. "
                   "from `raymedic search`) on live trial next to its champion; promoted only if it holds up."))
    tr.add_argument("--member", required=True, help="Ensemble member.")
    tr.add_argument("--version", default="challenger", help="Version id or alias (default: challenger).")
    tr.add_argument("--mode", choices=["canary", "shadow"], help="canary: its answers are served on the "
                    "trial share; shadow: mirrored, never served (default: rollout.mode in the config).")
    ch = admin(add("chaos", cmd_chaos, "Inject a replica fault (needs chaos enabled and the admin token)."))
    ch.add_argument("fault", choices=["kill", "hang", "slow", "wrong", "clear"],
                    help="kill: SIGKILL; hang: block inference; slow: add latency; wrong: wrong answers; "
                         "clear: remove all injected faults")
    ch.add_argument("--member", help="Ensemble member to hurt.")
    ch.add_argument("--replica", help="Replica id (default: the member's first running replica).")
    ch.add_argument("--delay-ms", type=float, help="Added latency for slow.")

    oa = add("openapi", cmd_openapi, "Print the gateway's OpenAPI document (also served at GET /openapi.json).")
    oa.add_argument("--out", help="Write it to this file instead of stdout.")
    au = add("audit", cmd_audit, "The controller's audit trail (what it saw, decided and did).")
    au.add_argument("--json", action="store_true", help="One JSON object per line.")
    au.add_argument("--model", help="Model (default: the running service's).")
    au.add_argument("--since", type=float, help="Only records from the last N seconds.")
    au.add_argument("--limit", type=int, default=200, help="At most this many (newest).")

    tr = add("train", cmd_train, "Train every member on a table with Ray Train and register champions.")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="Parquet or CSV table.")
    src.add_argument("--synthetic", action="store_true", help="Use the built-in synthetic table.")
    tr.add_argument("--target", help="Target column of --data.")
    tr.add_argument("--model", help="Model name (default: the file's stem).")
    tr.add_argument("--storage-path", help="Override the config's storage_path.")
    tr.add_argument("--members", nargs="+", help="Train only these members.")
    tr.add_argument("--no-promote", action="store_true", help="Register without moving the champion alias.")
    tr.add_argument("--json", action="store_true", help="Print the training report as JSON.")

    from train_jobs.search import add_arguments as search_arguments

    search_arguments(add("search", cmd_search, "Search one member's hyperparameters with Ray Tune (Optuna + "
                         "ASHA); register the best as its 'challenger', not promoted."))

    be = add("bench", cmd_bench, "Recovery and speed figures, raymedic against plain Ray Serve in the same run.")
    be.add_argument("scenario", choices=["replica-faults", "saturation", "controller-step", "drift"])
    be.add_argument("--rps", type=float, default=None,
                    help="replica-faults: open-loop request rate (default 50, the rate the targets are set for; "
                         "`bench saturation` shows where each system stops keeping up on this machine). "
                         "drift: the row rate that turns rows into seconds (default 25).")
    be.add_argument("--rates", default="20,35,50,70",
                    help="saturation: comma list of request rates to step through (default 20,35,50,70).")
    be.add_argument("--seconds", type=float, default=15.0, help="saturation: load per rate (default 15 s).")
    be.add_argument("--seeds", type=int, default=30,
                    help="drift: seeds, each its own reference, no-drift control and stream per scenario "
                         "(default 30, ~1 min on 2 cores).")
    be.add_argument("--deadline", type=float, default=2.0, help="Client deadline in seconds (default 2).")
    be.add_argument("--fault-seconds", type=float, default=20.0, help="Load after each injection (default 20).")
    be.add_argument("--slow-ms", type=float, default=500.0, help="Latency added by the slow fault.")
    be.add_argument("--faults", default="kill,hang,slow,wrong", help="Comma list of faults to run.")
    be.add_argument("--port", type=int, default=8011, help="HTTP port for the benchmark's service.")
    be.add_argument("--members", type=int, default=50, help="controller-step: members.")
    be.add_argument("--replicas", type=int, default=10, help="controller-step: replicas per member.")
    be.add_argument("--live", action="store_true",
                    help="drift: stream through a deployed service on an embedded cluster (HTTP, delayed "
                         "feedback, the controller's detectors and healing loop), one seed.")
    be.add_argument("--rows-per-s", type=float, default=50.0, help="drift --live: rows sent per second.")
    be.add_argument("--seed", type=int, default=7,
                    help="drift --live: the streams' seed (default 7); run several to see the spread.")
    be.add_argument("--control-rows", type=int, default=3000, help="drift --live: unchanged labelled rows of the "
                                                                   "no-drift control (default 3000).")
    be.add_argument("--live-scenarios", help="drift --live: comma list of 'mean +0.5 sd', 'mean +1 sd', 'sd x2', "
                                             "'concept 60 deg' (default: all).")
    be.add_argument("--json", action="store_true", help="Print only the JSON report.")

    de = add("demo", cmd_demo, "The main job: an embedded local cluster, training, serving, live traffic.")
    de.add_argument("--port", type=int, default=8000, help="HTTP port for the demo service.")
    de.add_argument("--requests", type=int, default=300, help="Requests of demo traffic.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("RAYMEDIC_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except RaymedicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
