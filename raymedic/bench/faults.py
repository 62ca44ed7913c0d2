"""``raymedic bench replica-faults``: recovery figures measured against plain Ray Serve in the same run.

For each fault (kill, hang, slow, wrong) drive open-loop load at ``--rps``
with a client deadline, inject the fault into one replica, and
measure what clients saw — failures (errors and answers past the deadline), wrong
answers (final answers that differ from the fault-free service's answer for the
same input), p50/p99 latency from injection on — plus the time to detect and the
time until a replacement serves, both from the injection and ("replacement took")
from the system's reaction, which is mostly a new Ray worker importing Serve and
PyTorch (5 s on an idle 2-core machine, about 11 s under load). The same scenarios run on raymedic and on the
plain Serve baseline (:mod:`serve_apps.baseline`) of the same trained members.

The saturation bench (:mod:`raymedic.bench.saturation`) says up to which rate these
figures mean something on this machine.

Figures, not assertions: they depend on the machine, and are printed as a table
and as JSON for the record.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Sequence

from raymedic.app.http import request_json
from raymedic.bench.cluster import (
    BenchTable,
    PlainServe,
    Progress,
    System,
    bench_cluster,
    bench_inputs,
    systems,
    wait_until,
)
from raymedic.bench.controller_step import run_controller_step
from raymedic.bench.loadgen import Sample, open_loop, summarize
from raymedic.bench.report import PLAIN_SERVE, RAYMEDIC, VERSUS_HEADER, versus
from raymedic.errors import RaymedicError
from raymedic.keys import REPLICA_BENCH_FAULTS

__all__ = ["BenchSettings", "FAULT_MEMBER", "REPLICA_FAULTS", "fault_member", "run_replica_faults", "format_table"]

FAULT_MEMBER = {"kill": "mlp", "hang": "tabresnet", "slow": "mlp", "wrong": "tabresnet", "error": "mlp"}
"""The member each fault hits (never the fallback member, ``logistic``)."""
REPLICA_FAULTS = REPLICA_BENCH_FAULTS
"""The faults this bench runs: every chaos fault but ``leak`` (a leak needs a minute to reach a limit, more
than a fault window here)."""

NEVER_KEYS = ("detect_s", "recover_s", "replace_s")
"""Events a system may never reach: a missing figure among these reads ``never``, not ``-``."""


@dataclass(frozen=True)
class BenchSettings:
    """How the replica-faults bench loads and breaks each system (``raymedic bench`` flags)."""

    rps: float = 50.0  # the rate; `bench saturation` shows where each system stops keeping up
    deadline_s: float = 2.0
    warmup_s: float = 3.0
    fault_s: float = 20.0
    slow_ms: float = 500.0
    faults: tuple[str, ...] = REPLICA_FAULTS


def _reference(url: str, inputs: Sequence[dict[str, Any]], batch: int) -> list[Any]:
    """The fault-free answers, in requests of at most ``batch`` rows (the gateway's limit)."""
    out: list[Any] = []
    for i in range(0, len(inputs), batch):
        r = request_json("POST", url, {"instances": list(inputs[i:i + batch])}, timeout_s=60)
        if r.status != 200:
            raise RaymedicError(f"the fault-free reference answers failed ({r.status} {r.body}); the service is not "
                                "healthy before any fault: check `ray status` and the Serve logs")
        out += r.body["predictions"]
    return out


def fault_member(fault: str, config: Any) -> str:
    """The member a fault is injected into: the built-in one :data:`FAULT_MEMBER` names when the config has
    it (the figures compare across runs), else the first member that is not the fallback (a user's model)."""
    names = [m.name for m in config.members]
    if FAULT_MEMBER[fault] in names:
        return FAULT_MEMBER[fault]
    return next((n for n in names if n != config.fallback_member), names[0])


def _scenario(system: System, fault: str, s: BenchSettings, inputs: list[dict[str, Any]], reference: list[Any],
              progress: Progress) -> dict[str, Any]:
    """One fault on one system: load, inject after the warm-up, measure from the injection on, clean up."""
    member = fault_member(fault, system.config)
    wait_until(system.ready, 180, f"{system.name} to be at full strength before {fault}")
    injected: dict[str, Any] = {}

    async def drive() -> list[Sample]:
        load = asyncio.ensure_future(open_loop(system.predict_url, inputs, rps=s.rps,
                                               duration_s=s.warmup_s + s.fault_s, deadline_s=s.deadline_s))
        await asyncio.sleep(s.warmup_s)
        injected["at"] = time.time()
        injected.update(await asyncio.to_thread(system.inject, fault, member, s.slow_ms))
        if isinstance(system, PlainServe):
            await asyncio.to_thread(system.watch, injected["replica"], member, injected["at"],
                                    injected["at"] + s.fault_s)
        out = await load
        if isinstance(system, PlainServe) and fault == "kill" and system.outcome("", 0, member)["recover_s"] is None:
            await asyncio.to_thread(system.watch, injected["replica"], member, injected["at"],
                                    time.time() + 60, keep=True)
        return out

    samples = asyncio.run(drive())
    result = summarize(samples, reference, since=injected["at"])
    before = summarize([x for x in samples if x.sent_at < injected["at"]], reference)
    result.update(before_failed=before["failed"], before_p99_ms=before["p99_ms"])
    result.update(system.outcome(injected["replica"], injected["at"], member))
    # From the system's reaction (restart or Serve noticing) to a replacement serving: the replica start itself.
    result["replace_s"] = (None if result["recover_s"] is None or result["detect_s"] is None
                           else round(result["recover_s"] - result["detect_s"], 2))
    result.update({"system": system.name, "fault": fault, "member": member, "replica": injected["replica"]})
    progress(f"  {system.name:<12} {fault:<6} failed {result['failed']:>4}/{result['requests']:<5} "
             f"wrong {result['wrong']:>4}  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  "
             f"detect {result['detect_s']} s  recover {result['recover_s']} s")
    system.clear()
    try:  # the next fault starts from a whole service (plain Serve: the fault was cleared above)
        wait_until(system.ready, 120, f"{system.name} to be whole again")
    except TimeoutError:
        progress(f"  ({system.name} did not reach full strength within 120 s)")
    return result


def run_replica_faults(*, config_path: str | None, port: int, settings: BenchSettings,
                       progress: Progress, data: BenchTable | None = None) -> dict[str, Any]:
    """Both systems, every fault, one embedded cluster; returns the figures.

    Each system's fault-free answers to the bench inputs are recorded first, so a
    "wrong" answer is one that differs from what the same system said when whole.

    Args:
        config_path: The raymedic config (default: ``cluster/raymedic.yaml``).
        port: HTTP port of the benchmark's Serve proxy.
        settings: Load, deadline and faults.
        progress: Where progress lines go.
        data: The user's table to train on and replay rows of (default: the synthetic table).

    Returns:
        ``settings``, one ``results`` row per system and fault, and the ``controller_step`` figures.
    """
    # lazy: only the cluster benches need Serve; imported before bench_cluster, where it always was
    from ray import serve

    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    with bench_cluster(config_path, progress, chaos=True, data=data) as cfg:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        inputs = bench_inputs(cfg, data=data)
        for system in systems(cfg, url, inputs):
            system.deploy(progress)
            reference = _reference(system.predict_url, inputs, cfg.gateway.max_batch_size)
            wait_until(system.ready, 180, f"{system.name} to be whole")
            asyncio.run(open_loop(system.predict_url, inputs, rps=settings.rps, duration_s=10,
                                  deadline_s=settings.deadline_s))  # warm-up, not measured
            progress(f"{system.name}: {len(settings.faults)} faults, {settings.rps:.0f} req/s open loop, "
                     f"client deadline {settings.deadline_s:.1f} s, {settings.fault_s:.0f} s after each fault")
            for fault in settings.faults:
                results.append(_scenario(system, fault, settings, inputs, reference, progress))
            system.remove()
        step = run_controller_step()
    return {"settings": settings.__dict__, "results": results, "controller_step": step}


def format_table(report: dict[str, Any]) -> str:
    """The replica-faults figures as a table: per fault and metric, both systems and their ratio.

    A fault run on one system only is left out (there is nothing to compare); a
    detection, recovery or replacement that never happened shows as ``never``.
    """
    rows = report["results"]
    by = {(r["system"], r["fault"]): r for r in rows}
    st = report["settings"]
    lines = [f"{st['rps']:.0f} req/s open loop, client deadline {st['deadline_s']} s, figures from the injection on "
             f"({st['fault_s']:.0f} s)",
             f"{'fault':<6} {'metric':<20} {VERSUS_HEADER}"]
    for fault in report["settings"]["faults"]:
        b, r = by.get((PLAIN_SERVE, fault)), by.get((RAYMEDIC, fault))
        if not b or not r:
            continue
        for key, label in (("before_p99_ms", "p99 before (ms)"), ("failed", "failed requests"), ("wrong", "wrong answers"),
                           ("last_wrong_after_s", "last wrong at (s)"), ("p50_ms", "p50 (ms)"),
                           ("p99_ms", "p99 (ms)"), ("detect_s", "detected at (s)"), ("recover_s", "serving again (s)"),
                           ("replace_s", "replacement took (s)")):
            missing = "never" if key in NEVER_KEYS else "-"
            lines.append(f"{fault:<6} {label:<20} {versus(b.get(key), r.get(key), missing=missing)}")
        lines.append("")
    st = report["controller_step"]
    lines.append(f"controller step, {st['members']} members × {st['replicas_per_member']} replicas: "
                 f"p50 {st['step_ms_p50']} ms, max {st['step_ms_max']} ms")
    if "data_check_ms_p50" in st:
        lines.append(f"data check, {st['data_check_features']} features × {st['data_check_rows']} rows: "
                     f"p50 {st['data_check_ms_p50']} ms")
    return "\n".join(lines)
