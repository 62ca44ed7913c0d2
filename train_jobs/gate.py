"""Champion/challenger gate: a retrained version must earn its place on recent data.

A retrain that merely matches the champion is churn with risk and no gain, and
one that wins on accuracy while its confidences stop meaning anything (or that
is much slower) breaks what callers rely on. So the gate is one margin and two
guardrails, all measured on the same newest labelled rows that neither model was
trained on. The decision (:func:`judge`) is pure; :func:`measure` runs a model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from raymedic.config import RetrainingConfig
from train_jobs.evaluation import classification_metrics

__all__ = ["GateVerdict", "judge", "measure"]

LATENCY_SLACK_MS = 0.5
"""Absolute slack on the latency guardrail: sub-millisecond differences are timer noise."""


@dataclass(frozen=True)
class GateVerdict:
    """The gate's answer for one challenger, with the figures both sides were judged on.

    Recorded whole in the retrain outcome, so an operator can see why a challenger
    was kept back, not only that it was.
    """

    passed: bool
    reasons: tuple[str, ...]  # why it failed (empty when it passed)
    champion: dict[str, Any]
    challenger: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """As JSON for the retrain record (``reasons`` as a list)."""
        return asdict(self) | {"reasons": list(self.reasons)}


def judge(champion: Mapping[str, Any], challenger: Mapping[str, Any], cfg: RetrainingConfig) -> GateVerdict:
    """Pass only if the challenger beats the champion by ``gate_margin`` without breaking a guardrail.

    Both mappings hold ``accuracy``, ``ece`` and ``latency_ms`` measured on the same holdout.
    """
    reasons = []
    gain = challenger["accuracy"] - champion["accuracy"]
    if gain < cfg.gate_margin:
        reasons.append(f"holdout accuracy {challenger['accuracy']:.3f} vs champion {champion['accuracy']:.3f}: "
                       f"gain {gain:+.3f} is below the margin {cfg.gate_margin:.3f}")
    if challenger["ece"] > champion["ece"] + cfg.max_ece_increase:
        reasons.append(f"calibration regressed: ECE {challenger['ece']:.3f} vs {champion['ece']:.3f} "
                       f"(allowed +{cfg.max_ece_increase:.3f})")
    limit = champion["latency_ms"] * cfg.max_latency_ratio + LATENCY_SLACK_MS
    if challenger["latency_ms"] > limit:
        reasons.append(f"latency regressed: {challenger['latency_ms']:.2f} ms vs {champion['latency_ms']:.2f} ms "
                       f"per batch (allowed {limit:.2f} ms)")
    return GateVerdict(not reasons, tuple(reasons), dict(champion), dict(challenger))


def measure(model: Any, rows: Sequence[Sequence[Any]], y: np.ndarray, *, batch: int = 64) -> dict[str, Any]:
    """Holdout metrics of a served model (``predict_proba`` over raw rows) and its median batch time."""
    probs, times = [], []
    for i in range(0, len(rows), batch):
        t0 = time.perf_counter()
        probs.append(np.asarray(model.predict_proba(rows[i:i + batch])))
        times.append((time.perf_counter() - t0) * 1000)
    out = classification_metrics(np.asarray(y), np.concatenate(probs))
    out["latency_ms"] = float(np.median(times))
    return out
