"""Confidence bounds for a proportion: the Wilson score interval (pure).

Healing compares accuracies measured on a few hundred labels (a live window, a gate's
holdout) with a bar; on so few labels the measured share is off by several points, and
acting on the point estimate flaps between versions on noise. The performance monitor
and the playbook therefore compare a *bound* with the bar: the upper bound of a live
accuracy must be under it before a decay or a failed probation counts, and a holdout
promises only its lower bound. Wilson's interval (rather than the normal
approximation) stays inside ``[0, 1]`` and keeps its coverage near 0 and 1, where a
good model's accuracy lives.

>>> round(wilson_lower(0.85, 100), 4), round(wilson_upper(0.85, 100), 4)
(0.7672, 0.9069)
>>> wilson_upper(1.0, 50) == 1.0, wilson_upper(0.5, 0)
(True, 1.0)
"""

from __future__ import annotations

import math

__all__ = ["wilson_upper", "wilson_lower"]


def wilson_upper(p: float, n: int, z: float = 1.96) -> float:
    """Upper end of the Wilson score interval for a proportion ``p`` seen on ``n`` trials.

    ``z`` sets the confidence (1.96: two-sided 95 %); with no trials nothing is ruled out, so 1.0.
    """
    if n <= 0:
        return 1.0
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def wilson_lower(p: float, n: int, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval (the interval is symmetric under ``p → 1 - p``)."""
    return 1.0 - wilson_upper(1.0 - p, n, z)
