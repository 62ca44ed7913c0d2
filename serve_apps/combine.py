"""Combine member answers into the ensemble's answer (pure: no Ray).

Soft voting: a weighted mean of class probabilities over the members that
answered, weights renormalised over those members, so a missing member never
silently drags probabilities toward zero. When fewer than ``min_members`` answer,
the answer is flagged degraded and comes from the fallback member alone if it
answered (its behaviour is known and stable), else from whoever answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

__all__ = ["Combination", "combine", "equal_weights"]


@dataclass(frozen=True)
class Combination:
    """The ensemble's answer and how it was made.

    Attributes:
        probabilities: one row of class probabilities per request row.
        members_used: the members whose answers went into it.
        degraded: the fallback stood in alone, or fewer than ``min_members`` members went into it
            (clients may treat such an answer with care).
    """
    probabilities: np.ndarray
    members_used: tuple[str, ...]
    degraded: bool


def equal_weights(members: list[str]) -> dict[str, float]:
    """The weights before the controller sent any: every member alike."""
    return {m: 1.0 / len(members) for m in members}


def combine(answers: Mapping[str, np.ndarray], weights: Mapping[str, float], *,
            fallback: str, min_members: int) -> Combination | None:
    """The ensemble answer from the members that answered, or None if none did.

    Members with weight 0 (quarantined) are ignored unless nothing else answered.
    """
    if not answers:
        return None
    healthy = {m: p for m, p in answers.items() if weights.get(m, 0.0) > 0}
    if len(healthy) < min_members:
        if fallback in answers:
            return Combination(np.asarray(answers[fallback]), (fallback,), True)
        pool = healthy or dict(answers)
        w = np.ones(len(pool))
    else:
        pool = healthy
        w = np.array([weights[m] for m in pool], dtype=np.float64)
    w = w / w.sum()
    probs = sum(wi * np.asarray(p) for wi, p in zip(w, pool.values()))
    # Degraded by the healthy members that answered: quarantined ones standing in do not count.
    return Combination(np.asarray(probs), tuple(pool), len(healthy) < min_members)
