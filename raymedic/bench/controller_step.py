"""``raymedic bench controller-step``: what one controller step and one data check cost, in pure code.

The healing policy's step over synthetic observations of 50 members × 10
replicas, and one data-quality + drift check of a 2000-row window of 50 features:
no cluster, so the figures are the decisions' own cost, apart from any Ray call.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import pandas as pd

from controllers.monitors.data import DataMonitor
from controllers.policies.replica import (
    HealingPolicy,
    Observation,
    Probe,
    ReplicaSnapshot,
)
from controllers.policies.weights import HedgeWeights, WeightingConfig
from raymedic.config import ControllerConfig, DataConfig
from raymedic.errors import RaymedicError
from serve_apps.quality import InputTally
from train_jobs.reference import Reference
from train_jobs.tables import infer_schema

__all__ = ["run_controller_step", "run_data_check", "format_step"]


def run_controller_step(*, members: int = 50, replicas: int = 10, steps: int = 50) -> dict[str, Any]:
    """Time :meth:`HealingPolicy.step` (plus weighting) over a synthetic fleet.

    The controller steps every few hundred milliseconds; this says how much of that
    a fleet of ``members`` × ``replicas`` costs in pure policy code, with one faulty
    replica per ten members so the incident path runs too, and adds one data check
    (:func:`run_data_check`).

    Args:
        members: Ensemble members in the synthetic fleet.
        replicas: Replicas per member.
        steps: Policy steps timed.

    Returns:
        The step's p50 and max (ms), the incidents it opened, and the data check's figures.
    """
    cfg = ControllerConfig()
    policy = HealingPolicy(cfg)
    names = [f"m{i}" for i in range(members)]
    hedge = HedgeWeights(names, WeightingConfig.from_settings(cfg))
    probes = tuple(Probe(100.0 + k * 0.5, "ok", 0.01, "") for k in range(12))
    snaps = tuple(ReplicaSnapshot(member=m, replica=f"{m}-r{r}", state="RUNNING", probes=probes)
                  for m in names for r in range(replicas))
    # One faulty replica per ten members keeps the incident path exercised.
    bad = tuple(ReplicaSnapshot(member=s.member, replica=s.replica, state="RUNNING",
                                probes=probes[:-1] + (Probe(106.0, "wrong", 0.01, ""),))
                if i % (10 * replicas) == 0 else s for i, s in enumerate(snaps))
    times = []
    for k in range(steps):
        obs = Observation(now=200.0 + k * 0.25, replicas=bad if k == steps // 2 else snaps,
                          targets={m: replicas for m in names})
        t0 = time.perf_counter()
        result = policy.step(obs)
        hedge.weights([m for m, v in result.healthy.items() if v])
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"members": members, "replicas_per_member": replicas, "steps": steps,
            "step_ms_p50": round(statistics.median(times), 2), "step_ms_max": round(times[-1], 2),
            "incidents_opened": len(policy.incidents), **run_data_check()}


def run_data_check(*, features: int = 50, rows: int = 2000, checks: int = 10) -> dict[str, Any]:
    """Time one data-quality + drift check of a window (half numeric, half categorical features).

    The live window is shifted by half a standard deviation, so the check does the
    work of finding drift, not only of finding none.

    Returns:
        The check's p50 (ms), the window's size and how many features it found drifting.

    Raises:
        RaymedicError: ``checks`` below 1 (there would be nothing to time).
    """
    if checks < 1:
        raise RaymedicError(f"checks ({checks}) must be at least 1: time at least one data check")
    rng = np.random.default_rng(0)

    def frame(n: int, shift: float) -> pd.DataFrame:
        cols = {f"x{i}": rng.normal(shift, 1, n) for i in range(features // 2)}
        cols.update({f"c{i}": rng.choice(["a", "b", "c", "d", "e"], n) for i in range(features - features // 2)})
        return pd.DataFrame({**cols, "label": rng.integers(0, 2, n)})

    train = frame(5000, 0.0)
    schema = infer_schema(train, target="label")
    cfg = DataConfig(window_rows=rows, min_rows=min(rows, 200))
    monitor = DataMonitor(schema, Reference.build(train, schema), cfg)
    tally = InputTally(schema, sample_per_batch=cfg.sample_per_batch)
    live = frame(rows, 0.5)[schema.feature_names].astype(object).values.tolist()
    for i in range(0, rows, 50):  # batches as a gateway sends them
        tally.add(live[i:i + 50])
        monitor.add(tally.drain())
    times = []
    for _ in range(checks):
        report = monitor.check()
        times.append(report.check_ms)
    return {"data_check_features": features, "data_check_rows": report.rows,
            "data_check_ms_p50": round(statistics.median(times), 2),
            "data_check_drifting": sum(f.drift != "none" for f in report.features)}


def format_step(out: dict[str, Any]) -> str:
    """The figures of :func:`run_controller_step` as the two lines ``raymedic bench controller-step`` prints."""
    return (f"controller step over {out['members']} members × {out['replicas_per_member']} replicas: "
            f"p50 {out['step_ms_p50']} ms, max {out['step_ms_max']} ms ({out['steps']} steps)\n"
            f"data check over {out['data_check_features']} features × {out['data_check_rows']} rows: "
            f"p50 {out['data_check_ms_p50']} ms ({out['data_check_drifting']} features drifting)")
