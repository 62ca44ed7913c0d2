"""Tail levels of simulated null maxima: the one rule every threshold calibration uses (pure NumPy).

A detector's threshold is the level its largest statistic over a no-change path of
``rows`` rows exceeds with probability ``1 - exp(-rate · rows)`` (alarms are rare
and nearly memoryless). Where too few simulated paths exceed that level, the tail
of the maxima is extrapolated as exponential (a CUSUM's or a windowed MMD's maximum
has a light, about exponential tail: Cramér–Lundberg for the CUSUM, a weighted
chi-squared for MMD²), fitted to the largest :data:`TAIL_PEAKS` (peaks over
threshold). It lives in training so that the calibrations run when a model is
trained (the tensor MMD, :mod:`train_jobs.mmd`) and those the controller runs
(:mod:`controllers.detectors.calibration`) read the same rule.

>>> import numpy as np
>>> maxima = np.random.default_rng(0).exponential(1.0, 4_000)
>>> round(tail_level(maxima, 0.1), 2), round(tail_level(maxima, 0.001), 2)
(2.33, 7.2)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TAIL_PEAKS", "exceed_probability", "tail_level"]

TAIL_PEAKS = 20
"""Fewer path maxima than this above the quantile and it is extrapolated from the largest ones."""


def exceed_probability(false_alarms_per_10k: float, rows: int) -> float:
    """Probability that a no-change path of ``rows`` rows alarms at ``false_alarms_per_10k``."""
    return -math.expm1(-false_alarms_per_10k / 10_000.0 * rows)


def tail_level(maxima: np.ndarray, p: float) -> float:
    """The level that a fraction ``p`` of ``maxima`` exceeds; exponential tail past the top ``TAIL_PEAKS``."""
    top = np.sort(maxima)[::-1]
    want = p * len(top)
    if want >= TAIL_PEAKS:
        return float(np.quantile(maxima, 1.0 - p))
    u = top[TAIL_PEAKS]
    mean_excess = float(np.mean(top[:TAIL_PEAKS] - u))
    if mean_excess <= 0:
        return float(u)
    return float(u + mean_excess * math.log(TAIL_PEAKS / want))
