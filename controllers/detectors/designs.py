"""What each CUSUM is designed to catch, and what that design means row by row (pure NumPy).

A CUSUM is optimal for the change it is designed for: its increments are the
log-likelihood ratio of "changed by the design amount" against "as in the
reference". A design therefore fixes two things, kept together here because the
detectors (:mod:`controllers.detectors.cusum`) and the simulations that set their
thresholds (:mod:`controllers.detectors.calibration`) must compute exactly the same
increments:

- :class:`FeatureCusumConfig`: a mean shift of ``shift_sd`` reference sds and a
  factor ``scale_ratio`` on the sd, per feature; :meth:`FeatureCusumConfig.increments`
  turns standardized rows into the four statistics' increments.
- :class:`ErrorCusumConfig`: rises of a model's error rate (odds ratios, or shares of
  labels turned over), per confidence bin; :meth:`ErrorCusumConfig.llr_steps` gives
  the increment of an error and of a success for a baseline rate.

Both also carry the false-alarm budget and how the calibration simulates it. The
detectors re-export the two configs (``from controllers.detectors.cusum import
FeatureCusumConfig``); they live in this module so that the calibration can read a
design without importing the detectors that call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymedic.config import PerformanceSettings, error_design_problem
from raymedic.errors import ConfigError

__all__ = ["FeatureCusumConfig", "ErrorCusumConfig"]


def check_calibration(name: str, false_alarms_per_10k: float, paths: int, rows: int) -> None:
    """Reject a false-alarm budget or a simulation too small to place a tail quantile (configs and
    :func:`controllers.detectors.calibration.known_law_threshold` share these limits)."""
    if not 0 < false_alarms_per_10k <= 1_000:
        raise ConfigError(f"{name}.false_alarms_per_10k must be in (0, 1000], got {false_alarms_per_10k}: "
                          f"0.05 is about one false alarm per 200,000 rows")
    if paths < 50:
        raise ConfigError(f"{name}.calibration_paths must be >= 50, got {paths}: fewer paths cannot place "
                          f"a tail quantile")
    if rows < 500:
        raise ConfigError(f"{name}.calibration_rows must be >= 500, got {rows}: paths shorter than a CUSUM's "
                          f"typical excursion misjudge its tail")


def _clip_rate(p: np.ndarray | float, n: int) -> np.ndarray:
    """An error rate measured on ``n`` labels, kept half a label off 0 and 1 (its log-odds stay finite)."""
    return np.clip(p, 0.5 / n, 1.0 - 0.5 / n)


@dataclass(frozen=True)
class FeatureCusumConfig:
    """What the input CUSUM is designed to catch, and how rarely it may cry wolf."""

    shift_sd: float = 0.25
    """Design mean shift in reference sds (``k = shift_sd / 2``): the smallest shift to catch quickly;
    larger shifts are caught faster still, smaller ones later."""
    scale_ratio: float = 1.5
    """Design factor on a feature's sd, up and (as ``1 / scale_ratio``) down."""
    false_alarms_per_10k: float = 0.05
    """False alarms per 10,000 rows for the whole detector when nothing changes (~1 in 200,000 rows)."""
    mean_share: float = 0.8
    """Share of that budget spent on the mean statistics; the variance statistics get the rest. A change of
    sd ×1.5 carries 0.22 nats per row, a mean shift of 0.25 sd only 0.03: the mean statistics need the
    lower threshold more."""
    calibration: str = "gaussian"
    """``"gaussian"``: simulate Gaussian features (pivotal: cached per reference size);
    ``"bootstrap"``: resample the reference (features far from Gaussian)."""
    calibration_paths: int = 400
    calibration_rows: int = 10_000
    """Rows per simulated path: long enough that a path sees several excursions."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.shift_sd <= 5:
            raise ConfigError(f"shift_sd must be in (0, 5] reference sds, got {self.shift_sd}")
        if not 1 < self.scale_ratio <= 10:
            raise ConfigError(f"scale_ratio must be in (1, 10], got {self.scale_ratio}: it is the factor on the "
                              f"sd to catch (1.5 catches sd ×1.5 and ×1/1.5)")
        if not 0 < self.mean_share < 1:
            raise ConfigError(f"mean_share must be in (0, 1), got {self.mean_share}: both the mean and the "
                              f"variance statistics need part of the false-alarm budget")
        if self.calibration not in ("gaussian", "bootstrap"):
            raise ConfigError(f"calibration must be 'gaussian' or 'bootstrap', got {self.calibration!r}")
        check_calibration("FeatureCusumConfig", self.false_alarms_per_10k, self.calibration_paths,
                           self.calibration_rows)

    @property
    def k_mean(self) -> float:
        """Allowance of the mean statistics: half the design shift (the midpoint of the two means' LLR)."""
        return self.shift_sd / 2.0

    @property
    def k_var_up(self) -> float:
        """Gaussian LLR of sd ×r against sd ×1 is linear in ``z² - ln(r²) r² / (r² - 1)``."""
        r2 = self.scale_ratio ** 2
        return math.log(r2) * r2 / (r2 - 1.0)

    @property
    def k_var_down(self) -> float:
        """... and of sd ×1/r against sd ×1 in ``ln(r²) / (r² - 1) - z²``."""
        r2 = self.scale_ratio ** 2
        return math.log(r2) / (r2 - 1.0)

    def increments(self, z: np.ndarray) -> np.ndarray:
        """Standardized rows ``(..., d)`` → increments ``(..., 4d)``: mean up, mean down, variance up, down.

        In the dtype of ``z``: the calibration feeds float32 (hundreds of millions of cells), the detector
        float64; the same function for both keeps the simulated statistic the one the detector runs.
        """
        k = np.float32(self.k_mean) if z.dtype == np.float32 else self.k_mean
        z2 = z * z
        return np.concatenate([z - k, -z - k, z2 - z.dtype.type(self.k_var_up),
                               z.dtype.type(self.k_var_down) - z2], axis=-1)


@dataclass(frozen=True, kw_only=True)
class ErrorCusumConfig:
    """The error-stream CUSUM: which rises of the error rate to catch, and the false-alarm budget.

    The designs and the budget have no defaults here: the shipped ones are the config's
    (``performance.error_*`` in :class:`raymedic.config.PerformanceSettings`), and
    :meth:`from_settings` is how the controller and the drift bench build this config, so that
    there is one place that says what ships. The fields with defaults are the detector's own
    internals (baseline shrinkage, the calibration's simulation).
    """

    odds_ratios: tuple[float, ...]
    """Design odds ratios of an error against the baseline: 1.3 (17 % → 21 % error) is near optimal for
    slow concept drift, 3.0 (17 % → 38 %) catches a broken model within tens of labels. ``()`` for none."""
    flip_shares: tuple[float, ...]
    """Designs where a share ε of labels turned over: a bin's error rate p becomes p + ε(1 − 2p), a large
    relative rise where the model was confident (a concept change acts wherever it rotates the rule)."""
    confidence_bins: int
    """Quantile bins of the baseline's confidence, each with its own error rate; 1 = one rate for all."""
    shrink_labels: float = 5.0
    """Pseudo-labels pulling each bin's rate towards the pooled one, so that a bin of 50 labels with no
    error does not get a rate near 0 that it would then alarm on. Few: the pull biases the confident bins
    upwards, which costs delay and leaves false alarms under budget (20 pseudo-labels on 200-label
    baselines: a tenth of the budget, and 78 instead of 70 labels for a 60° rotation)."""
    false_alarms_per_10k: float
    """False alarms per 10,000 labels when nothing changes, shared equally by the designs."""
    calibration_paths: int = 400
    calibration_rows: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        problem = error_design_problem(self.odds_ratios, self.flip_shares)
        if problem:
            raise ConfigError(problem)
        if not 1 <= self.confidence_bins <= 10:
            raise ConfigError(f"confidence_bins must be in [1, 10], got {self.confidence_bins}: each bin needs "
                              f"its own share of the baseline's labels")
        if self.shrink_labels < 0:
            raise ConfigError(f"shrink_labels must be >= 0, got {self.shrink_labels}")
        check_calibration("ErrorCusumConfig", self.false_alarms_per_10k, self.calibration_paths,
                           self.calibration_rows)

    @classmethod
    def from_settings(cls, settings: PerformanceSettings, **overrides: Any) -> "ErrorCusumConfig":
        """The design and budget the config asks for (``performance.error_*``): the live controller and
        the drift bench take their detector from here, so both run what is shipped."""
        return cls(odds_ratios=tuple(settings.error_odds_ratios), flip_shares=tuple(settings.error_flip_shares),
                   confidence_bins=settings.error_confidence_bins,
                   false_alarms_per_10k=settings.error_false_alarms_per_10k, **overrides)

    def statistic_names(self) -> list[str]:
        """One statistic per design, in design order: ``error_x<odds ratio>`` then ``error_flip<share>``
        (the names alarms carry and calibrations key their thresholds by)."""
        return [f"error_x{r:g}" for r in self.odds_ratios] + [f"error_flip{e:g}" for e in self.flip_shares]

    def llr_steps(self, p0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bernoulli LLR of an error and of a success per baseline rate ``(...)`` and design: ``(..., designs)``.

        The increments of every design's CUSUM: an error adds ``log(p1 / p0)``, a success
        ``log((1 - p1) / (1 - p0))``, with ``p1`` the design's rate after the change.
        """
        p0 = np.asarray(p0, dtype=float)[..., None]
        r, e = np.asarray(self.odds_ratios, dtype=float), np.asarray(self.flip_shares, dtype=float)
        p1 = np.concatenate([np.broadcast_to(r * p0 / (1.0 - p0 + r * p0), p0.shape[:-1] + r.shape),
                             np.broadcast_to(np.clip(p0 + e * (1.0 - 2.0 * p0), 1e-6, 1 - 1e-6),
                                             p0.shape[:-1] + e.shape)], axis=-1)
        return np.log(p1 / p0), np.log((1.0 - p1) / (1.0 - p0))

    def shrunk_rates(self, k: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Per-bin error rates ``k / n`` (last axis: bins) shrunk towards the pooled rate, clipped off 0 and 1.

        The baseline a detector (or a simulated path) designs its CUSUMs on: a thin bin borrows
        ``shrink_labels`` labels' worth of the pooled rate instead of trusting its own few.
        """
        total = n.sum()
        pooled = k.sum(axis=-1, keepdims=True) / total
        m = self.shrink_labels if len(n) > 1 else 0.0
        return _clip_rate((k + m * pooled) / (n + m), int(total))
