"""``raymedic bench saturation``: where each system stops keeping up, with no fault.

Open-loop load at rising rates on both systems, one embedded cluster: what each
answers within the deadline at each rate, and the highest rate with no failure. A
benchmark's fault figures only mean something below that rate (on a saturated
machine they measure the machine).

Figures, not assertions: they depend on the machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

from raymedic.bench.cluster import (
    BenchTable,
    Progress,
    bench_cluster,
    bench_inputs,
    systems,
    wait_until,
)
from raymedic.bench.loadgen import open_loop, summarize
from raymedic.bench.profile import format_profile, latency_stats, stage_profile
from raymedic.bench.report import PLAIN_SERVE, RAYMEDIC, SYSTEMS, VERSUS_HEADER, versus

__all__ = ["Progress", "run_saturation", "max_rps_without_failure", "format_saturation"]


def run_saturation(*, config_path: str | None, port: int, rates: Sequence[float], duration_s: float = 15.0,
                   deadline_s: float = 2.0, progress: Progress, data: BenchTable | None = None,
                   profile: bool = False) -> dict[str, Any]:
    """Both systems at each rate (no fault), one embedded cluster; returns the figures.

    A system that fails most requests at a rate is not run at higher ones (they
    would only fail more), and it gets a minute to drain its queues between rates.

    Args:
        config_path: The raymedic config (default: ``cluster/raymedic.yaml``).
        port: HTTP port of the benchmark's Serve proxy.
        rates: Request rates to step through (sorted here).
        duration_s: Seconds of load per rate.
        deadline_s: Client deadline of every request.
        progress: Where progress lines go.
        data: The user's table to train on and replay rows of (default: the synthetic table).
        profile: Deploy raymedic with ``gateway.profile`` on: each raymedic row gets ``profile``, its
            per-stage figures (:func:`raymedic.bench.profile.stage_profile`), and every row ``latency_us``
            (mean, p50, p99 in µs).

    Returns:
        ``settings``, one ``results`` row per system and rate, and ``max_rps_without_failure``.
    """
    # lazy: only the cluster benches need Serve; imported before bench_cluster, where it always was
    from ray import serve

    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    with bench_cluster(config_path, progress, data=data) as cfg:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        inputs = bench_inputs(cfg, data=data)
        if profile:
            cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"profile": True})})
        for system in systems(cfg, url, inputs):
            system.deploy(progress)
            wait_until(system.ready, 180, f"{system.name} to be whole")
            asyncio.run(open_loop(system.predict_url, inputs, rps=min(rates), duration_s=10,
                                  deadline_s=deadline_s))  # warm-up, not measured
            for rps in sorted(rates):
                began = time.time()
                samples = asyncio.run(open_loop(system.predict_url, inputs, rps=rps, duration_s=duration_s,
                                                deadline_s=deadline_s))
                row = {"system": system.name, "rps": rps, **summarize(samples)}
                # No fault runs here: any incident the system opened meanwhile is a false positive.
                row["incidents"] = system.incidents_since(began)
                if profile:
                    row["latency_us"] = latency_stats([x.latency_s * 1e6 for x in samples if x.ok])
                    if system.name == RAYMEDIC:
                        row["profile"] = stage_profile(samples)
                results.append(row)
                progress(f"  {system.name:<12} {rps:>5.0f} req/s: failed {row['failed']:>4}/{row['requests']:<5} "
                         f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms")
                if row["failed"] * 2 > row["requests"]:  # past saturation: higher rates only fail more
                    progress(f"  {system.name} failed most requests at {rps:.0f} req/s: higher rates not run")
                    break
                try:  # an overloaded system drains its queues before the next rate
                    wait_until(system.ready, 60, f"{system.name} to settle")
                except TimeoutError:
                    pass
            system.remove()  # serve.delete returns once its replicas are stopped: the next gets the whole machine
    return {"settings": {"rates": sorted(rates), "duration_s": duration_s, "deadline_s": deadline_s,
                         "profile": profile},
            "results": results, "max_rps_without_failure": max_rps_without_failure(results)}


def max_rps_without_failure(results: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per system, the highest rate at which no request failed (None: it failed at every rate run).

    >>> max_rps_without_failure([{"system": "raymedic", "rps": 20, "failed": 0},
    ...                          {"system": "raymedic", "rps": 35, "failed": 3}])
    {'plain Serve': None, 'raymedic': 20}
    """
    return {name: max((r["rps"] for r in results if r["system"] == name and r["failed"] == 0), default=None)
            for name in SYSTEMS}


def format_saturation(report: dict[str, Any]) -> str:
    """The saturation figures as a table: per rate, failures, p50 and p99 of both systems and their ratio."""
    st = report["settings"]
    by = {(r["system"], r["rps"]): r for r in report["results"]}
    lines = [f"open loop, {st['duration_s']:.0f} s per rate, client deadline {st['deadline_s']} s, no fault",
             f"{'req/s':>6} {'metric':<16} {VERSUS_HEADER}"]
    for rps in st["rates"]:
        b, r = by.get((PLAIN_SERVE, rps), {}), by.get((RAYMEDIC, rps), {})
        if not b and not r:
            continue
        for key, label in (("failed", "failed requests"), ("p50_ms", "p50 (ms)"), ("p99_ms", "p99 (ms)")):
            lines.append(f"{rps:>6.0f} {label:<16} {versus(b.get(key), r.get(key))}")
    false = {rps: by[(RAYMEDIC, rps)].get("incidents") for rps in st["rates"] if (RAYMEDIC, rps) in by}
    if false:  # with no fault, every incident is a false positive: the target is none at any rate
        lines.append("raymedic incidents with no fault (false positives): " + ", ".join(
            f"{rps:.0f} req/s: {'-' if v is None else (' '.join(v) if v else 'none')}" for rps, v in false.items()))
    best = report["max_rps_without_failure"]
    lines.append(f"highest rate without a failure: plain Serve {best[PLAIN_SERVE]}, raymedic {best[RAYMEDIC]} req/s")
    for rps in st["rates"]:  # --profile: where raymedic's time goes at each rate
        r = by.get((RAYMEDIC, rps), {})
        if r.get("profile"):
            lines += ["", format_profile(rps, r["profile"], by.get((PLAIN_SERVE, rps), {}).get("latency_us"))]
    return "\n".join(lines)
