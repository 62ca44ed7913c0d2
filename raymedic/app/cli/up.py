"""``raymedic up`` and ``raymedic down``: start or join Ray, deploy the service; undo exactly that.

``up`` records what it started in the run file (:mod:`cluster.runstate`) so that
``down`` stops only that: its own head or ``--nodes`` cluster, never a cluster the
user named with ``RAY_ADDRESS``.

Ray is imported only after :func:`cluster.connect.join`: Ray reads
``RAY_AUTH_MODE`` when it is imported, and ``join`` sets it for the clusters
raymedic starts.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from cluster.connect import check_tls_served, join, user_code_importable
from cluster.head import ray_alive, start_head, stop_head
from cluster.nodes import LocalCluster, describe, start_cluster, stop_cluster, wait_for_nodes
from cluster.plan import check_shape, plan_cluster, spread_over_nodes
from cluster.runstate import RunState, clear_run_state, read_run_state, write_run_state
from raymedic.app.cli._common import config_from, ensure_admin_token, progress
from raymedic.config import RaymedicConfig, ServeFile
from raymedic.errors import ConfigError, RaymedicError
from raymedic.keys import APP_NAME

__all__ = ["cmd_up", "cmd_down"]


def _local_url(host: str, port: int, *, tls: bool = False) -> str:
    """The URL a client on this machine uses for a service bound to ``host``: a wildcard bind
    (``0.0.0.0``, ``::``) is reached through the loopback address."""
    return f"http{'s' if tls else ''}://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def cmd_up(args: argparse.Namespace) -> int:
    """Start (or join, or reuse) a Ray cluster, deploy the service, return once it answers.

    The cluster comes from, in order: ``RAY_ADDRESS`` (joined, never stopped by
    ``down``); the local cluster an earlier ``up`` started, if it still runs; a new
    ``--nodes`` cluster; else a new single-node head. Models are trained first only
    when the registry has no champions. The run file is written last, with
    everything ``down`` needs to undo this.

    Returns:
        0 once real predictions succeed over HTTP.

    Raises:
        ConfigError: The flags ask for something that cannot work (e.g. ``--nodes`` with a
            different cluster still running); the message says what to run instead.
        RaymedicError: The service did not become ready in ``--timeout`` seconds.
    """
    # lazy: imports pyarrow (the registry); keeps `raymedic --help` fast
    from raymedic.app import service

    sf, cfg = config_from(args)
    port = args.port or sf.http_port
    host = sf.http_host
    tls = sf.http_tls
    if tls and not os.environ.get("RAY_ADDRESS"):
        # Serve 2.60's HAProxy ingress does not terminate TLS: a cluster started here for an HTTPS config
        # runs Serve's Python proxy (uvicorn serves the certificate); an operator's own choice is kept.
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "0")
    check_tls_served(tls)
    previous = read_run_state()
    started = False
    head_session = previous.head_session if previous and previous.started_cluster else None
    local: dict | None = None  # the multi-node cluster `up --nodes` started (or reuses)
    if args.nodes is not None:
        _check_nodes_request(args)
    if os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        progress(f"joining the Ray cluster at {address}")
    elif previous and previous.started_cluster and ray_alive(previous.ray_address):
        running = len((previous.cluster or {}).get("nodes", ())) or 1
        if args.nodes is not None and (previous.cluster is None or running != args.nodes):
            raise ConfigError(f"a local Ray cluster raymedic started ({running} node(s)) still runs at "
                              f"{previous.ray_address}: stop it with `raymedic down`, then run "
                              f"`raymedic up --nodes {args.nodes}`")
        address, started, local = previous.ray_address, True, previous.cluster
        progress(f"reusing the local Ray cluster raymedic started at {address}")
    elif args.nodes is not None:
        local = _start_nodes(args, previous, sf, cfg, url=_local_url(host, port, tls=bool(tls)))
        address, started = local["address"], True
    else:
        ray_port, dashboard_port = args.ray_port or 6379, args.dashboard_port or 8265
        progress(f"starting a local Ray cluster (ray start --head, port {ray_port}, "
                 f"dashboard :{dashboard_port})")
        (address, head_session), started = start_head(port=ray_port, dashboard_port=dashboard_port), True
        # Recorded at once, as `up --nodes` does: should the deploy fail, `raymedic down` still stops this head.
        write_run_state(RunState(ray_address=address, dashboard_url=f"http://127.0.0.1:{dashboard_port}",
                                 http_url=_local_url(host, port, tls=bool(tls)), started_cluster=True, config_path=str(sf.path),
                                 model=cfg.model, storage_path=cfg.storage_path, head_session=head_session))
    token_note = ensure_admin_token()
    # The application's runtime_env is this driver job's: serve.run gives it to every deployment it
    # deploys (Serve's default for a deployment without its own), and the Ray Train workers of a first
    # training, the controller and its retrain jobs inherit it from there.
    join(address, ours=started, runtime_env=sf.runtime_env)
    # lazy: Ray reads RAY_AUTH_MODE when it is imported; join() above has set it
    import ray

    try:
        proxy_location = None
        if local is not None:
            nodes = len(local["nodes"])
            if previous is None or previous.cluster is not local:  # just started (a reused one may
                wait_for_nodes(nodes, timeout_s=120)               # have lost a node: redeploy anyway)
            cfg = spread_over_nodes(cfg, nodes, gpu_nodes=sum(n["node_type"] == "gpu-worker"
                                                              for n in local["nodes"]))
            proxy_location = "HeadOnly"  # every node's proxy would bind the same port on one machine
        cfg = service.choose_models(cfg, args.model, progress)
        with user_code_importable(sf.runtime_env):  # the contract check and registration import it here
            service.ensure_trained(cfg, progress)
        service.deploy(cfg, host=host, port=port, progress=progress, proxy_location=proxy_location, tls=tls)
        url = _local_url(host, port, tls=bool(tls))
        waited = service.wait_all_ready(url, cfg, timeout_s=args.timeout, progress=progress)
        dashboard = _dashboard_url()
    finally:
        ray.shutdown()
    write_run_state(RunState(ray_address=address, dashboard_url=dashboard, http_url=url,
                             started_cluster=started, config_path=str(sf.path), model=cfg.model,
                             storage_path=cfg.storage_path, cluster=local,
                             head_session=head_session if started and local is None else None))
    progress(f"service answers at {url} (ready after {waited:.1f} s)")
    if local is not None:
        print(f"  nodes:\n{describe(LocalCluster.from_dict(local))}")
    several = len(cfg.model_names) > 1
    print(f"  model{'s:     ' if several else ':      '}{', '.join(cfg.model_names)}\n"
          f"  predict:    curl -X POST {url}/v1/models/{cfg.model}:predict "
          f"-d '{{\"instances\": [...]}}'\n  schema:     curl {url}/v1/models/{cfg.model}\n"
          f"  status:     raymedic status{' [--model NAME]' if several else ''}\n  dashboard:  {dashboard}\n"
          f"  stop:       raymedic down")
    if token_note:
        print(f"  admin:      {token_note}")
    return 0


def _check_nodes_request(args: argparse.Namespace) -> None:
    """Refuse ``up --nodes`` requests that cannot work, before anything starts."""
    if os.environ.get("RAY_ADDRESS"):
        raise ConfigError(f"--nodes starts a new local cluster, but RAY_ADDRESS={os.environ['RAY_ADDRESS']} "
                          "names one to join: drop --nodes to deploy onto that cluster, or unset RAY_ADDRESS "
                          f"(env -u RAY_ADDRESS raymedic up --nodes {args.nodes})")
    check_shape(args.nodes, cpus_per_node=args.cpus_per_node, gpu_nodes=args.gpu_nodes,
                gpus_per_node=args.gpus_per_node)


def _start_nodes(args: argparse.Namespace, previous: RunState | None, sf: ServeFile, cfg: RaymedicConfig, *,
                 url: str) -> dict[str, Any]:
    """Start a head and ``--nodes - 1`` workers on this machine; recorded at once so ``down`` can stop them."""
    if previous is not None and previous.cluster:
        stop_cluster(LocalCluster.from_dict(previous.cluster))  # leftovers of one that died
    plan = plan_cluster(args.nodes, cpus_per_node=args.cpus_per_node, gpu_nodes=args.gpu_nodes,
                        gpus_per_node=args.gpus_per_node, gcs_port=args.ray_port,
                        dashboard_port=args.dashboard_port)
    progress(f"starting a local {args.nodes}-node Ray cluster (GCS :{plan.head.ports['gcs']}, dashboard "
             f"{plan.dashboard_url}, state in {plan.root})")
    local = start_cluster(plan, progress=progress).to_dict()
    # Written before the deploy: should anything below fail, `raymedic down` still stops these nodes.
    write_run_state(RunState(ray_address=local["address"], dashboard_url=local["dashboard_url"], http_url=url,
                             started_cluster=True, config_path=str(sf.path), model=cfg.model,
                             storage_path=cfg.storage_path, cluster=local))
    return local


def _dashboard_url() -> str:
    """The connected cluster's dashboard URL, or ``"unknown"`` (Ray's context does not always carry it)."""
    # lazy: only called once join() has connected, after the import in cmd_up
    import ray

    try:
        ctx = ray.get_runtime_context()
        addr = ctx.dashboard_url if hasattr(ctx, "dashboard_url") else None
        addr = addr or ray._private.worker.global_worker.node.address_info.get("webui_url")
    except Exception:
        addr = None
    return f"http://{addr}" if addr and not str(addr).startswith("http") else (addr or "unknown")


def cmd_down(args: argparse.Namespace) -> int:
    """Delete the Serve application and its controller; stop the cluster only if ``up`` started it.

    A cluster joined through ``RAY_ADDRESS`` keeps running; a local one raymedic
    started is stopped through its own processes only (never ``ray stop``, which
    would stop every cluster on the machine). Nothing to stop is not an error.

    Returns:
        0, also when nothing was running.

    Raises:
        RaymedicError: The application could not be deleted from a cluster raymedic does not own.
    """
    state = read_run_state()
    address = os.environ.get("RAY_ADDRESS") or (state.ray_address if state else None)
    if not address:
        progress("nothing to stop: no service started by `raymedic up` was found")
        return 0
    if ray_alive(address):
        join(address, ours=bool(state and state.started_cluster))
        # lazy: Ray reads RAY_AUTH_MODE when it is imported; join() above has set it
        import ray

        try:
            # lazy: imports pyarrow (the registry); keeps `raymedic --help` fast
            from raymedic.app import service

            progress(f"deleting Serve application {APP_NAME!r} and its healing controller")
            try:
                service.undeploy()
            except Exception as exc:  # e.g. an `up` interrupted before Serve started
                if not (state and state.started_cluster and not os.environ.get("RAY_ADDRESS")):
                    raise RaymedicError(f"could not delete the Serve application ({exc}); check "
                                        "`ray status` and the Serve logs") from None
                progress(f"  nothing to delete ({str(exc).splitlines()[0]}); stopping the cluster anyway")
        finally:
            ray.shutdown()
    if state and state.started_cluster and not os.environ.get("RAY_ADDRESS") and state.cluster:
        local = LocalCluster.from_dict(state.cluster)
        progress(f"stopping the {len(local.nodes)}-node local Ray cluster raymedic started (its own "
                 "processes only)")
        stop_cluster(local)
    elif state and state.started_cluster and not os.environ.get("RAY_ADDRESS"):
        progress("stopping the local Ray cluster raymedic started (its own processes only)")
        stop_head(state.head_session, state.ray_address)
    clear_run_state()
    progress("down")
    return 0
