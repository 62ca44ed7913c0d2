"""``raymedic status``: the service at a glance, from the gateway's ``GET /v1/status``."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from raymedic.app.cli._common import admin_headers, service_url, unreachable
from raymedic.app.http import request_json
from raymedic.errors import RaymedicError

__all__ = ["cmd_status", "disk_line", "gpu_line", "node_lines", "performance_line", "replica_cell", "review_line",
           "scaling_line"]


def replica_cell(r: dict[str, Any]) -> str:
    """One replica in the members table: ``id:STATE``, with its memory when the controller has a reading
    (``412MB``, ``+6.0MB/min`` once a slope is known, ``→limit 40s`` when a leak is forecast) and its
    process vitals (``cpu 31%`` of one core, ``fd 42`` open, ``lag 2ms`` worst event-loop lateness).

    >>> replica_cell({"id": "a1", "state": "RUNNING"})
    'a1:RUNNING'
    >>> replica_cell({"id": "a1", "state": "AVOIDED", "rss_mb": 512.4, "rss_slope_mb_per_min": 300.0,
    ...               "time_to_limit_s": 38.0, "memory_state": "leak"})
    'a1:AVOIDED 512MB +300.0MB/min →limit 38s'
    >>> replica_cell({"id": "a1", "state": "RUNNING", "rss_mb": 412.0, "cpu_share": 0.314, "open_fds": 42,
    ...               "loop_lag_ms": 1.6})
    'a1:RUNNING 412MB cpu 31% fd 42 lag 2ms'
    """
    cell = f"{r['id']}:{r['state']}"
    if r.get("rss_mb") is not None:
        cell += f" {r['rss_mb']:.0f}MB"
        slope = r.get("rss_slope_mb_per_min")
        if slope:
            cell += f" {slope:+.1f}MB/min"
        if r.get("memory_state") in ("leak", "growing") and r.get("time_to_limit_s") is not None:
            cell += f" →limit {r['time_to_limit_s']:.0f}s"
    if r.get("cpu_share") is not None:
        cell += f" cpu {100 * r['cpu_share']:.0f}%"
    if r.get("open_fds") is not None:
        cell += f" fd {r['open_fds']}"
    if r.get("loop_lag_ms") is not None:
        cell += f" lag {r['loop_lag_ms']:.0f}ms"
    return cell


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def scaling_line(st: dict[str, Any]) -> str | None:
    """The autoscaled deployments' sizes and the gateway's p99 against the SLO, on one line (None when
    nothing autoscales and no latency was measured).

    >>> scaling_line({"members": [{"name": "mlp", "scaling": {"running": 2, "target": 3, "min": 2, "max": 4,
    ...                                                         "state": "scaling-out"}}],
    ...               "gateway": {"scaling": {"state": "fixed"},
    ...                           "latency": {"p99_ms": 80.0, "slo_ms": 250.0, "requests": 300}}})
    'scaling: mlp 2/3 (scaling-out, 2..4); gateway p99 80 ms of a 250 ms SLO over 300 requests'
    """
    parts = []
    for name, sc in [(m["name"], m.get("scaling") or {}) for m in st.get("members", [])] + [
            ("gateway", (st.get("gateway") or {}).get("scaling") or {})]:
        if sc.get("state") not in (None, "fixed"):
            parts.append(f"{name} {sc['running']}/{sc['target']} ({sc['state']}, {sc['min']}..{sc['max']})")
    lat = (st.get("gateway") or {}).get("latency") or {}
    tail = (f"gateway p99 {lat['p99_ms']:.0f} ms of a {lat['slo_ms']:.0f} ms SLO over {lat['requests']} requests"
            if lat.get("p99_ms") is not None else None)
    if not parts and tail is None:
        return None
    return "scaling: " + ("; ".join(parts + ([tail] if tail else [])))


def gpu_line(gpu: dict[str, Any]) -> str:
    """The GPUs at a glance: each node's device health (as NVML reports it, through its GPU replicas) and
    the faults counted against it, then each GPU replica's memory, utilisation and health.

    >>> gpu_line({"gpu": "none"})
    'gpu: no GPU'
    >>> gpu_line({"nodes": {"a1b2c3d4e5": {"state": "fault", "faults_in_window": 2, "nvml_error": "GPU is lost"}},
    ...           "replicas": {"r1": {"member": "mlp", "memory_allocated_bytes": 1.2e9, "memory_total_bytes": 16e9,
    ...                               "utilization_pct": 40, "health": "ok"},
    ...                        "r2": {"member": "mlp", "health": "fault", "fault": "oom"}}})
    'gpu: node a1b2c3d4 FAULT (2 faults in window; GPU is lost); mlp/r1 1.2 GB/16.0 GB 40% ok; mlp/r2 FAULT oom'
    """
    if not gpu.get("nodes") and not gpu.get("replicas"):
        return "gpu: no GPU"
    parts = []
    for node, n in (gpu.get("nodes") or {}).items():
        why = [f"{n['faults_in_window']} faults in window"] if n.get("faults_in_window") else []
        why += [n["nvml_error"]] if n.get("nvml_error") else []
        parts.append(f"node {node[:8]} {'ok' if n.get('state') == 'ok' else 'FAULT'}"
                     + (f" ({'; '.join(why)})" if why else ""))
    for rid, r in (gpu.get("replicas") or {}).items():
        cell = f"{r.get('member', '?')}/{rid}"
        if r.get("memory_allocated_bytes") is not None:
            cell += f" {_gb(r['memory_allocated_bytes'])}"
            if r.get("memory_total_bytes"):
                cell += f"/{_gb(r['memory_total_bytes'])}"
        if r.get("utilization_pct") is not None:
            cell += f" {r['utilization_pct']:.0f}%"
        cell += " ok" if r.get("health") == "ok" else f" FAULT {r.get('fault') or (r.get('nvml') or {}).get('state', '')}"
        parts.append(cell.rstrip())
    return "gpu: " + "; ".join(parts)


def disk_line(disk: dict[str, Any], prediction_log: dict[str, Any] | None = None) -> str:
    """The disk at a glance: storage_path's free space, the logs' size, the verdict, and whether this
    gateway could write its prediction log ('' before the controller's first reading).

    >>> disk_line({"verdict": "ok", "storage": {"free_bytes": 40e9, "total_bytes": 100e9, "free_fraction": 0.4,
    ...            "time_to_floor_s": None}, "ray_dir": {"state": "unknown"},
    ...            "prediction_log": {"predictions": {"bytes": 3e6, "files": 120}}})
    'disk: storage 40.0 GB free (40%); ray_dir unknown; prediction log 3 MB in 120 files; ok'
    >>> disk_line({"verdict": "unknown"}, {"writable": False, "dropped_rows": 12})
    'disk: prediction log NOT WRITABLE (12 rows dropped)'
    """
    parts = []
    if disk.get("verdict", "unknown") != "unknown":
        for name in ("storage", "ray_dir"):
            v = disk.get(name) or {}
            if v.get("free_bytes") is None:
                parts.append(f"{name} unknown")
                continue
            part = f"{name} {_gb(v['free_bytes'])} free ({v['free_fraction']:.0%})"
            if v.get("time_to_floor_s") is not None:
                part += f", floor in {v['time_to_floor_s']:.0f} s"
            parts.append(part)
        pl = (disk.get("prediction_log") or {}).get("predictions")
        if pl:
            parts.append(f"prediction log {_gb(pl['bytes'])} in {pl['files']} files")
    if prediction_log is not None and not prediction_log.get("writable", True):
        parts.append(f"prediction log NOT WRITABLE ({prediction_log.get('dropped_rows', 0)} rows dropped)")
    if disk.get("verdict", "unknown") != "unknown":
        parts.append(str(disk["verdict"]) + (f" ({'; '.join(disk['reasons'])})" if disk.get("reasons") else ""))
    return "disk: " + "; ".join(parts) if parts else ""


def review_line(review: dict[str, Any] | None) -> str:
    """The review queue at a glance ('' when ``review.threshold`` is off).

    >>> review_line({"threshold": 0.7, "size": 37, "max_items": 10000, "oldest_age_s": 812.4, "queued": 40,
    ...              "cleared": 3, "dropped": 0})
    'review: 37 waiting (oldest 812 s), threshold 0.7, at most 10000; this gateway replica queued 40, cleared 3'
    >>> review_line({"threshold": 0.6, "size": 0, "max_items": 5, "oldest_age_s": None, "queued": 9, "cleared": 2,
    ...              "dropped": 7})
    'review: 0 waiting, threshold 0.6, at most 5; this gateway replica queued 9, cleared 2, dropped 7 (full)'
    """
    if not review:
        return ""
    age = review.get("oldest_age_s")
    line = (f"review: {review['size']} waiting" + (f" (oldest {age:.0f} s)" if age is not None else "")
            + f", threshold {review['threshold']}, at most {review['max_items']}; this gateway replica queued "
            f"{review['queued']}, cleared {review['cleared']}")
    return line + (f", dropped {review['dropped']} (full)" if review.get("dropped") else "")


def node_lines(nodes: dict[str, Any] | None) -> list[str]:
    """One line per node: its CPU share and memory against Ray's threshold, and what is being done about it.

    >>> node_lines({"nodes": [{"name": "worker-1", "node_id": "ab12cd34ef", "head": False, "draining": True,
    ...             "cpu_share": 2.4, "own_cores": 1.2, "memory_used": 0.42, "memory_threshold": 0.95,
    ...             "phase": "draining", "pressure": "cpu", "moving": ["mlp/x1"]}], "cpu_high": 0.9})
    ['node worker-1 (ab12cd34): cpu 2.40 of its share (1.20 cores), memory 42% of 95% threshold; pressure cpu, draining: moving mlp/x1 [DRAINING in Ray]']
    """
    out = []
    for n in (nodes or {}).get("nodes") or []:
        cpu = ("cpu ?" if n.get("cpu_share") is None else
               f"cpu {n['cpu_share']:.2f} of its share ({n.get('own_cores') or 0:.2f} cores)")
        mem = ("memory ?" if n.get("memory_used") is None else
               f"memory {n['memory_used']:.0%} of {n['memory_threshold']:.0%} threshold")
        ident = f" ({str(n['node_id'])[:8]})" if n.get("node_id") else ""  # not in a view without the token
        line = f"node {n['name']}{ident}{' head' if n.get('head') else ''}: {cpu}, {mem}"
        if n.get("pressure") not in (None, "none", "too-few-samples") or n.get("phase") not in (None, "ok"):
            line += f"; pressure {n.get('pressure')}, {n.get('phase')}"
            if n.get("phase") == "no-room":
                line += " (nowhere to move: the gateways shed past their admission limit)"
            if n.get("moving"):
                line += ": moving " + ", ".join(n["moving"])
            if n.get("proposal"):
                line += f" (raymedic approve {n['proposal']})"
        if n.get("draining"):
            line += " [DRAINING in Ray]"
        out.append(line)
    return out


def performance_line(perf: dict[str, Any]) -> str:
    """Live accuracy, the label-free estimate and prediction drift, on one line ('' before any check).

    One line because an operator reads ``raymedic status`` at a glance: how good the
    ensemble is now (on labels, and estimated where labels lag) and whether its
    answers have drifted, before the per-incident detail.

    Args:
        perf: The ``performance`` object of ``GET /v1/status``.

    Returns:
        ``"performance: ..."``, or ``""`` before the controller's first check.
    """
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
    """Print the service's members, versions, weights, replica states, healing and incidents.

    Reads only ``GET /v1/status`` (no Ray connection), so it works from any machine
    that reaches the gateway; ``--json`` prints that answer as it is. It sends the admin
    token where this user has one (the full view); without, the gateway's redacted view.

    Returns:
        0 when the gateway answered.

    Raises:
        RaymedicError: No service answers, or the gateway answered with an error.
    """
    url = service_url(args)
    model = getattr(args, "model", None)
    query = f"?model={urllib.parse.quote(model, safe='')}" if model else ""
    try:
        reply = request_json("GET", f"{url}/v1/status{query}", timeout_s=args.timeout, headers=admin_headers())
    except OSError as exc:
        raise unreachable(url, exc) from None
    if reply.status != 200:
        raise RaymedicError(f"{url}/v1/status{query} answered {reply.status}: {reply.body}")
    st = reply.body
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"model {st['model']}  ({st['model_version']})  application {st['application']['status']}")
    others = [m for m in st.get("models") or () if m != st["model"]]
    if others:
        print(f"  also served: {', '.join(others)} (raymedic status --model NAME)")
    names = {m["name"]: m["name"] + (" (fallback)" if m.get("fallback") else "") for m in st["members"]}
    w = max([14] + [len(n) + 2 for n in names.values()])  # the name column fits the longest name
    print(f"{'member':<{w}}{'version':<10}{'weight':>8}  {'state':<12}replicas")
    for m in st["members"]:
        reps = ", ".join(replica_cell(r) for r in m["replicas"]) or "-"
        print(f"{names[m['name']]:<{w}}{m['version']:<10}{m['weight']:>8.3f}  {m['state']:<12}{reps}")
    gw = st["gateway"]
    print(f"{'gateway':<{w}}{'':<10}{'':>8}  {gw['state']:<12}"
          + ", ".join(f"{r['id']}:{r['state']}" for r in gw["replicas"]))
    line = scaling_line(st)
    if line:
        print(line)
    ctl = st["controller"]
    print(f"controller: {ctl['state']}" + (f" (pid {ctl['pid']}, step p50 {ctl.get('step_ms_p50')} ms)"
                                             if ctl.get("pid") else ""))
    if ctl.get("mode") == "approve":
        props = ctl.get("proposals") or []
        print(f"approval mode: {len(props)} proposal(s) waiting" + ("".join(
            f"\n  {p['incident']}  {p.get('action', 'restart')} {p['target']} ({p['fault']})  → raymedic "
            f"approve|reject {p['incident']}"
            for p in props)))
    rt = ctl.get("retraining") or {}
    if rt.get("job"):
        print(f"retraining: job {rt['job'].get('job_id')} running ({rt['job']['reason']})")
    elif rt.get("deploying"):
        print("retraining: deploying new versions")
    if rt.get("probation"):
        sig = rt["probation"].get("signals") or {}
        print(f"probation: {rt['probation']['versions']} (rolled back automatically on a live accuracy, error-rate "
              "or p99 regression)" + "".join(
                  f"\n  {m}: {s['calls']['calls']} calls, errors {s['calls']['error_rate']}, p99 "
                  f"{s['calls']['p99_ms']} ms vs champion {s['baseline']['error_rate']}, {s['baseline']['p99_ms']} ms"
                  for m, s in sig.items()))
    tr = rt.get("trial")
    if tr:
        print(f"trial {tr['record']} ({tr['mode']}, {tr['share']:.0%} of requests"
              + (f", length {tr['length_s']:.0f} s" if tr.get("length_s") else "") + "):" + "".join(
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
    line = disk_line(ctl.get("disk") or {}, st.get("prediction_log"))
    if line:
        print(line)
    line = review_line(st.get("review"))
    if line:
        print(line)
    if "gpu" in ctl:  # a controller from before GPU signals sends none
        print(gpu_line(ctl["gpu"]))
    for line in node_lines(ctl.get("nodes")):
        print(line)
    line = performance_line(st.get("performance") or {})
    if line:
        print(line)
    groups = st.get("incident_groups") or []  # a controller from before the diagnosis sends none
    if groups:
        print(f"incident groups: {len(groups)} (incidents that share a cause; latest first)")
        for g in list(reversed(groups))[: args.incidents]:
            print("  " + group_line(g))
    incidents = st["incidents"]
    print(f"incidents: {len(incidents)}" + (" (latest first)" if incidents else ""))
    for inc in list(reversed(incidents))[: args.incidents]:
        ttr = inc.get("time_to_recover_s")
        cause = cause_cell(inc)
        if inc.get("replica") is None:  # a data or model incident: a feature or the ensemble, not a replica
            ev = {k: v for k, v in inc.get("evidence", {}).items() if k != "window_rows"}
            what = f"feature {inc['feature']!r}" if inc.get("feature") else inc.get("target", "")
            print(f"  {inc['id']}  {inc['kind']:<14} {what}  {inc['status']:<9} "
                  f"{inc.get('severity', '')}  {_seconds('detect', inc.get('time_to_detect_s'))}"
                  f"{_seconds('recover', ttr)}{json.dumps(ev)}{cause}")
            continue
        print(f"  {inc['id']}  {inc['kind']:<6} {inc['member']}/{inc['replica']}  {inc['status']:<9} "
              f"detect {inc['time_to_detect_s']:.2f} s  recover {'-' if ttr is None else f'{ttr:.1f} s'}  "
              f"action {inc.get('action') or '-'}: {inc.get('action_outcome') or '-'}{cause}")
    return 0


def _seconds(what: str, value: float | None) -> str:
    return f"{what} {value:.1f} s  " if value is not None else ""


def cause_cell(inc: dict[str, Any]) -> str:
    """An incident's diagnosis at the end of its line (empty for a controller from before the diagnosis).

    >>> cause_cell({"cause_class": "data", "cause": "data-drift", "cause_feature": "f3", "confidence": 0.875,
    ...             "group": "grp-d0001"})
    '  cause data/data-drift f3 (0.88) in grp-d0001'
    >>> cause_cell({"id": "inc-000001"})
    ''
    """
    if not inc.get("cause_class"):
        return ""
    named = inc.get("cause_node") or inc.get("cause_feature")
    where = f" {named}" if named else ""
    group = f" in {inc['group']}" if inc.get("group") else ""
    return f"  cause {inc['cause_class']}/{inc['cause']}{where} ({inc.get('confidence', 0):.2f}){group}"


def group_line(g: dict[str, Any]) -> str:
    """One incident group: its cause and what it names, how sure, its effects, time to detect and recover.

    >>> group_line({"id": "grp-inc-000003", "cause_class": "infrastructure", "cause": "node", "node": "worker-1",
    ...             "confidence": 0.875, "effects": ["inc-000003", "inc-000004"], "status": "recovered",
    ...             "time_to_detect_s": 2.25, "time_to_recover_s": 11.0})
    'grp-inc-000003  infrastructure/node node worker-1  recovered  confidence 0.88  effects inc-000003, inc-000004  detect 2.2 s  recover 11.0 s'
    """
    named = (f" node {g['node']}" if g.get("node") else "") + (
        f" feature {g['feature']!r}" if g.get("feature") else "")
    members = f"  members {', '.join(g['members'])}" if g.get("members") else ""
    cause_inc = f"  cause incident {g['cause_incident']}" if g.get("cause_incident") else ""
    return (f"{g['id']}  {g['cause_class']}/{g['cause']}{named}  {g.get('status', '')}  confidence "
            f"{g.get('confidence', 0):.2f}  effects {', '.join(g.get('effects') or [])}{cause_inc}{members}  "
            f"{_seconds('detect', g.get('time_to_detect_s'))}{_seconds('recover', g.get('time_to_recover_s'))}"
            ).rstrip()
