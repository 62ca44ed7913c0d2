"""Sequential change detection against a reference: CUSUM on the inputs and on the error stream (pure NumPy).

Why sequential: a window test (KS, PSI, Wasserstein on the last 500 rows, every 50
rows) throws evidence away twice, once by forgetting rows older than the window and
once by testing only every ``step`` rows, and its threshold has to cover every
window it ever tests. Page's CUSUM accumulates the log-likelihood ratio of
"shifted by the design amount" against "as in the reference" row by row and
restarts at zero whenever the evidence turns negative, so it looks at exactly the
rows since the change, whatever their number; for an abrupt shift of the design
size no procedure with the same false-alarm rate detects faster on average
(Lorden 1971, Moustakides 1986).

Two detectors share one engine:

- :class:`FeatureCusum` standardizes each feature by the reference's mean and
  standard deviation and runs, per feature, four one-sided CUSUMs: mean up and
  mean down (increments ``±z - k`` with ``k = shift_sd / 2``) and variance up and
  down (increments ``z² - k_up`` and ``k_down - z²``, the Gaussian likelihood
  ratios for a standard deviation ``scale_ratio`` times larger or smaller). One
  ``update(batch)`` takes an ``(n, d)`` array and is vectorized over features
  and rows; rows are still processed in order.
- :class:`ErrorCusum` runs Bernoulli CUSUMs on the model's 0/1 error stream (from
  delayed labels) against the error rate measured on the reference (e.g. the
  cross-validated errors of the model), one per design odds ratio of error: a
  small ratio for slow concept drift, a large one so that a big rise alarms in
  few labels. Inputs may be unchanged under concept drift, so only labels show it.
  Optionally the stream is split by the model's confidence in each answer
  (``confidence_bins`` quantile bins of the baseline's confidence, each with its own
  baseline error rate) with designs of ``flip_shares``: a concept change turns a
  share of labels over wherever it acts, so an error where the model used to be
  right 97 % of the time is far stronger evidence than one where it was right 60 %
  of the time; a plain error rate weighs them the same. The reference-size discount
  below holds unchanged for quantile bins (each bin's excursion share equals its
  baseline share).

**The reference is a sample, not the truth.** With a 2,000-row reference, the mean
of a feature is off by about ``0.022`` sd, a sizeable fraction of ``k``; a plain
CUSUM accumulates that bias over long excursions and its false-alarm rate on an
unlucky reference is many times the nominal one (Jones, Champ & Rigdon 2004).
Given the reference's size ``n``, the sum of ``l`` standardized rows has variance
``l + l²/n`` rather than ``l``, so the two-sample log-likelihood ratio of the
excursion is the one-sample one divided by ``1 + l/n``: an excursion of ``l`` rows
alarms when its CUSUM exceeds ``h · (1 + l / n)``. Short excursions (a real change
of the design size) pay a few percent; long drifting ones (a biased reference)
pay what they should. The same holds for the error rate measured on ``n``
baseline labels.

**Calibration.** Thresholds ``h`` are set by seeded simulation so that the whole
detector raises ``false_alarms_per_10k`` alarms per 10,000 rows (labels) when
nothing changes, the reference's own sampling error included: each simulated path
draws a fresh reference of the same size (to get the standardization or the
baseline error rate a real reference would give), then a stream of
``calibration_rows`` null rows, and records the largest discounted statistic of
each family (mean, variance; each error design). The false-alarm budget is split
between families (``mean_share``; equally between error designs) and ``h`` of a
family is the level its path maxima exceed with probability
``1 - exp(-rate · rows)``; where too few paths exceed it, the tail of the maxima
is extrapolated as exponential (a CUSUM's maximum has an exponential tail,
Cramér–Lundberg), fitted to the largest 20 (peaks over threshold). ``"gaussian"``
simulates Gaussian features, for which the standardized statistic's null law does
not depend on the reference's values (only on its size), so it is computed once
and cached; ``"bootstrap"`` resamples the given reference instead, for features
that are not Gaussian (heavy tails raise the variance CUSUM's false alarms).
Error thresholds depend on the baseline error rate, and are simulated (Bernoulli
streams and binomial baselines) for each baseline, also cached.

**After an alarm** every statistic restarts at zero against the same reference
(River's convention: the detector is usable at once), and :attr:`alarms` keeps
the record. A change that persists alarms again soon after; what a caller should
do is adopt a new reference once it has rows from after the change (the rows
from :attr:`Alarm.change_index` on: the start of the excursion that crossed, the
CUSUM's own estimate of when the change began) with :meth:`FeatureCusum.rebase`
or, for errors, once the model has been retrained, a new baseline with
:meth:`ErrorCusum.rebase`.

>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> config = FeatureCusumConfig(false_alarms_per_10k=1.0, calibration_paths=100, calibration_rows=5_000)
>>> detector = FeatureCusum(rng.standard_normal((2_000, 3)), config)
>>> detector.update(rng.standard_normal((300, 3))).alarm
False
>>> shifted = rng.standard_normal((300, 3))
>>> shifted[:, 1] += 1.0
>>> alarm = detector.update(shifted).alarms[0]
>>> alarm.statistic, alarm.feature, alarm.index - 300, alarm.change_index - 300
('mean_up', 1, 31, -27)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from raymedic.config import PerformanceSettings
from raymedic.errors import ConfigError, DataError

__all__ = ["FeatureCusumConfig", "ErrorCusumConfig", "Calibration", "Alarm", "FeatureCusum", "ErrorCusum",
           "calibrate_features", "calibrate_errors", "known_law_threshold", "crossings"]

CHUNK_ROWS = 2048
"""Rows scanned at once: the scan is O(rows) per alarm, so an alarm costs at most one chunk's rescan."""
SIM_CELLS = 500_000
"""Float32 cells (rows × paths × statistics) per simulation block: 2 MB per temporary stays in cache."""
TAIL_PEAKS = 20
"""Fewer path maxima than this above the quantile and it is extrapolated from the largest ones."""
MEAN_STATS = ("mean_up", "mean_down")
VARIANCE_STATS = ("var_up", "var_down")


def _rate(false_alarms_per_10k: float) -> float:
    return false_alarms_per_10k / 10_000.0


def _check_calibration(name: str, false_alarms_per_10k: float, paths: int, rows: int) -> None:
    if not 0 < false_alarms_per_10k <= 1_000:
        raise ConfigError(f"{name}.false_alarms_per_10k must be in (0, 1000], got {false_alarms_per_10k}: "
                          f"0.05 is about one false alarm per 200,000 rows")
    if paths < 50:
        raise ConfigError(f"{name}.calibration_paths must be >= 50, got {paths}: fewer paths cannot place "
                          f"a tail quantile")
    if rows < 500:
        raise ConfigError(f"{name}.calibration_rows must be >= 500, got {rows}: paths shorter than a CUSUM's "
                          f"typical excursion misjudge its tail")


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
        _check_calibration("FeatureCusumConfig", self.false_alarms_per_10k, self.calibration_paths,
                           self.calibration_rows)

    @property
    def k_mean(self) -> float:
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


@dataclass(frozen=True)
class ErrorCusumConfig:
    """The error-stream CUSUM: which rises of the error rate to catch, and the false-alarm budget."""

    odds_ratios: tuple[float, ...] = (1.3, 3.0)
    """Design odds ratios of an error against the baseline: 1.3 (17 % → 21 % error) is near optimal for
    slow concept drift, 3.0 (17 % → 38 %) catches a broken model within tens of labels."""
    flip_shares: tuple[float, ...] = ()
    """Designs where a share ε of labels turned over: a bin's error rate p becomes p + ε(1 − 2p), a large
    relative rise where the model was confident (a concept change acts wherever it rotates the rule)."""
    confidence_bins: int = 1
    """Quantile bins of the baseline's confidence, each with its own error rate; 1 = one rate for all."""
    shrink_labels: float = 5.0
    """Pseudo-labels pulling each bin's rate towards the pooled one, so that a bin of 50 labels with no
    error does not get a rate near 0 that it would then alarm on. Few: the pull biases the confident bins
    upwards, which costs delay and leaves false alarms under budget (20 pseudo-labels on 200-label
    baselines: a tenth of the budget, and 78 instead of 70 labels for a 60° rotation)."""
    false_alarms_per_10k: float = 0.05
    """False alarms per 10,000 labels when nothing changes, shared equally by the designs."""
    calibration_paths: int = 400
    calibration_rows: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if any(not 1 < r <= 100 for r in self.odds_ratios):
            raise ConfigError(f"odds_ratios must be values in (1, 100], got {self.odds_ratios}: each is a rise "
                              f"in the odds of an error to catch")
        if any(not 0 < e < 1 for e in self.flip_shares):
            raise ConfigError(f"flip_shares must be values in (0, 1), got {self.flip_shares}: each is a share "
                              f"of labels turned over, e.g. 0.2")
        if not self.odds_ratios and not self.flip_shares:
            raise ConfigError("give at least one design: odds_ratios (e.g. (1.3, 3.0)) or flip_shares (e.g. (0.2,))")
        if not 1 <= self.confidence_bins <= 10:
            raise ConfigError(f"confidence_bins must be in [1, 10], got {self.confidence_bins}: each bin needs "
                              f"its own share of the baseline's labels")
        if self.shrink_labels < 0:
            raise ConfigError(f"shrink_labels must be >= 0, got {self.shrink_labels}")
        _check_calibration("ErrorCusumConfig", self.false_alarms_per_10k, self.calibration_paths,
                           self.calibration_rows)

    @classmethod
    def from_settings(cls, settings: PerformanceSettings, **overrides: Any) -> "ErrorCusumConfig":
        """The design and budget the config asks for (``performance.error_*``): the live controller and
        the drift bench take their detector from here, so both run what is shipped."""
        return cls(odds_ratios=tuple(settings.error_odds_ratios), flip_shares=tuple(settings.error_flip_shares),
                   confidence_bins=settings.error_confidence_bins,
                   false_alarms_per_10k=settings.error_false_alarms_per_10k, **overrides)


@dataclass(frozen=True)
class Calibration:
    """Thresholds per family of statistics, and how they were obtained (for the record)."""

    thresholds: dict[str, float]
    false_alarms_per_10k: float
    method: str
    paths: int
    rows_per_path: int
    shares: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Alarm:
    """One crossing. Indices count rows (labels) since the detector was built or last rebased."""

    index: int
    """The row whose update crossed the threshold."""
    change_index: int
    """First row of the excursion that crossed: the CUSUM's estimate of when the change began."""
    statistic: str
    """``mean_up``/``mean_down``/``var_up``/``var_down``, or ``error_x<odds ratio>``."""
    feature: int | None
    """Column of the feature that crossed; None for the error stream."""
    score: float
    """Statistic over its (discounted) threshold when it crossed: ≥ 1, larger for an abrupt change."""


# ---- the engine ----------------------------------------------------------------------------


def _scan(inc: np.ndarray, s0: np.ndarray, run0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CUSUM ``S_t = max(0, S_{t-1} + inc_t)`` along axis 0, started at ``(s0, run0)``, without a loop.

    With ``W_t = s0 + sum(inc[:t+1])``, Lindley's recursion solves to ``S_t = W_t - min(0, min_{j<=t} W_j)``;
    the run length (rows since ``S`` was last zero) comes from the last row where it was.
    """
    w = np.cumsum(inc, axis=0, dtype=inc.dtype)
    w += s0
    low = np.minimum.accumulate(w, axis=0)
    np.minimum(low, 0.0, out=low)
    s = w - low
    rows = np.arange(1, len(inc) + 1, dtype=np.int64).reshape((-1,) + (1,) * (inc.ndim - 1))
    last = np.maximum.accumulate(np.where(s <= 0.0, rows, 0), axis=0)
    run = np.where(last > 0, rows - last, run0 + rows)
    return s, run


class _Cusum:
    """Column-wise one-sided CUSUMs with the reference-size discount; alarms reset every column.

    Invariant: only :meth:`feed` and :meth:`reset` change ``_s``/``_run``.
    """

    def __init__(self, thresholds: np.ndarray, n_reference: int) -> None:
        self._h = thresholds.astype(float)
        self._n_ref = float(n_reference)
        self.seen = 0
        self.reset()

    def reset(self) -> None:
        self._s = np.zeros_like(self._h)
        self._run = np.zeros(len(self._h), dtype=np.int64)

    def scores(self) -> np.ndarray:
        return self._s / (self._h * (1.0 + self._run / self._n_ref))

    def excursion(self) -> tuple[int, int, float] | None:
        """``(column, first row, score)`` of the running excursion nearest its threshold; None at rest."""
        scores = self.scores()
        c = int(np.argmax(scores))
        if scores[c] <= 0.0:
            return None
        return c, self.seen - int(self._run[c]), float(scores[c])

    def to_dict(self) -> dict[str, Any]:
        return {"s": self._s.tolist(), "run": self._run.tolist(), "seen": self.seen}

    def load(self, state: dict[str, Any]) -> None:
        s, run = np.asarray(state["s"], dtype=float), np.asarray(state["run"], dtype=np.int64)
        if s.shape != self._h.shape or run.shape != self._h.shape:
            raise DataError(f"a checkpoint of {len(s)} statistics does not fit a detector of {len(self._h)}")
        self._s, self._run, self.seen = s, run, int(state["seen"])

    def feed(self, inc: np.ndarray) -> Iterator[tuple[int, int, int, float]]:
        """Yield ``(row, column, change_row, score)`` per alarm, rows counted since construction.

        Rows after an alarm are scanned again from the reset; under a change that persists, alarms come
        every few rows, so the next chunk is only twice the distance between the last two alarms.
        """
        start, n, size = 0, len(inc), CHUNK_ROWS
        while start < n:
            stop = min(n, start + size)
            s, run = _scan(inc[start:stop], self._s, self._run)
            score = s / (self._h * (1.0 + run / self._n_ref))
            crossed = (score > 1.0).any(axis=1)
            if crossed.any():
                r = int(np.argmax(crossed))
                c = int(np.argmax(score[r]))
                row = self.seen + start + r
                yield row, c, row - int(run[r, c]) + 1, float(score[r, c])
                self.reset()
                start += r + 1
                size = min(CHUNK_ROWS, max(64, 2 * (r + 1)))
            else:
                self._s, self._run = s[-1].astype(float), run[-1].copy()
                start = stop
                size = min(CHUNK_ROWS, 2 * size)
        self.seen += n


def _path_maxima(inc: np.ndarray, n_reference: int) -> np.ndarray:
    """``(rows, paths, stats)`` increments → the largest discounted statistic per (path, stat).

    :func:`_scan` from zero, in place and in float32: calibration scans hundreds of millions of cells.
    """
    s = np.cumsum(inc, axis=0, dtype=np.float32)
    low = np.minimum.accumulate(s, axis=0)
    np.minimum(low, 0.0, out=low)
    s -= low
    rows = np.arange(1, len(inc) + 1, dtype=np.float32).reshape((-1,) + (1,) * (inc.ndim - 1))
    last = np.where(s <= 0.0, rows, np.float32(0.0))  # exact: row numbers < 2**24
    np.maximum.accumulate(last, axis=0, out=last)
    np.subtract(rows, last, out=last)  # the run length
    last *= np.float32(1.0 / n_reference)
    last += np.float32(1.0)
    s /= last
    return s.max(axis=0)


def _tail_level(maxima: np.ndarray, p: float) -> float:
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


def _levels(maxima: dict[str, np.ndarray], rates: dict[str, float], rows: int) -> dict[str, float]:
    # Alarms are rare and nearly memoryless: P(a path of `rows` alarms) = 1 - exp(-rate · rows).
    return {f: _tail_level(maxima[f], -math.expm1(-rates[f] * rows)) for f in maxima}


def _blocks(paths: int, rows: int, stats: int) -> Iterator[int]:
    per = max(1, SIM_CELLS // (rows * stats))
    for start in range(0, paths, per):
        yield min(per, paths - start)


def _feature_increments(z: np.ndarray, config: FeatureCusumConfig) -> np.ndarray:
    """Standardized rows (..., d) → increments (..., 4d): mean up, mean down, variance up, variance down."""
    k = np.float32(config.k_mean) if z.dtype == np.float32 else config.k_mean
    z2 = z * z
    return np.concatenate([z - k, -z - k, z2 - z.dtype.type(config.k_var_up),
                           z.dtype.type(config.k_var_down) - z2], axis=-1)


def _simulate_features(n_reference: int, n_features: int, config: FeatureCusumConfig,
                       population: np.ndarray | None) -> Calibration:
    rng = np.random.default_rng([config.seed, n_reference, n_features])
    rows, d = config.calibration_rows, n_features
    mean_max, var_max = [], []
    for b in _blocks(config.calibration_paths, rows, 4 * d):
        if population is None:  # Gaussian: the reference's mean and sd have their exact sampling laws
            ref_mean = rng.standard_normal((b, d)) / math.sqrt(n_reference)
            ref_sd = np.sqrt(rng.chisquare(n_reference - 1, (b, d)) / (n_reference - 1))
            x = rng.standard_normal((rows, b, d), dtype=np.float32)
        else:  # bootstrap: a resampled reference standardizes a resampled stream
            cols = np.arange(d)
            ref = population[rng.integers(0, len(population), (b, n_reference, d)), cols]
            ref_mean, ref_sd = ref.mean(axis=1), ref.std(axis=1, ddof=1)
            x = population[rng.integers(0, len(population), (rows, b, d)), cols].astype(np.float32)
        z = (x - ref_mean.astype(np.float32)) / ref_sd.astype(np.float32)
        peak = _path_maxima(_feature_increments(z, config), n_reference)
        mean_max.append(peak[:, : 2 * d].max(axis=1))
        var_max.append(peak[:, 2 * d:].max(axis=1))
    rate = _rate(config.false_alarms_per_10k)
    rates = {"mean": rate * config.mean_share, "variance": rate * (1.0 - config.mean_share)}
    h = _levels({"mean": np.concatenate(mean_max), "variance": np.concatenate(var_max)}, rates, rows)
    return Calibration(thresholds=h, false_alarms_per_10k=config.false_alarms_per_10k, method=config.calibration,
                       paths=config.calibration_paths, rows_per_path=rows,
                       shares={"mean": config.mean_share, "variance": 1.0 - config.mean_share})


@functools.lru_cache(maxsize=32)
def _gaussian_features(n_reference: int, n_features: int, config: FeatureCusumConfig) -> Calibration:
    return _simulate_features(n_reference, n_features, config, None)


def calibrate_features(n_reference: int, n_features: int, config: FeatureCusumConfig = FeatureCusumConfig(),
                       *, reference: np.ndarray | None = None) -> Calibration:
    """Thresholds of :class:`FeatureCusum` for a reference of ``n_reference`` rows × ``n_features``.

    ``config.calibration == "bootstrap"`` needs ``reference`` (resampled after standardizing each
    feature); ``"gaussian"`` ignores it and is cached, since its answer depends on sizes alone.
    """
    if n_reference < 50 or n_features < 1:
        raise ConfigError(f"a reference needs >= 50 rows and >= 1 feature, got {n_reference} × {n_features}")
    if config.calibration == "gaussian":
        return _gaussian_features(n_reference, n_features, config)
    if reference is None:
        raise ConfigError("calibration='bootstrap' resamples the reference: pass reference=, or use "
                          "calibration='gaussian'")
    ref = np.asarray(reference, dtype=float)
    population = (ref - ref.mean(axis=0)) / ref.std(axis=0, ddof=1)
    return _simulate_features(n_reference, n_features, config, population)


def _error_steps(p0: np.ndarray, config: ErrorCusumConfig) -> tuple[np.ndarray, np.ndarray]:
    """Bernoulli LLR of an error and of a success per baseline rate ``(...)`` and design: ``(..., designs)``."""
    p0 = np.asarray(p0, dtype=float)[..., None]
    r, e = np.asarray(config.odds_ratios, dtype=float), np.asarray(config.flip_shares, dtype=float)
    p1 = np.concatenate([np.broadcast_to(r * p0 / (1.0 - p0 + r * p0), p0.shape[:-1] + r.shape),
                         np.broadcast_to(np.clip(p0 + e * (1.0 - 2.0 * p0), 1e-6, 1 - 1e-6),
                                         p0.shape[:-1] + e.shape)], axis=-1)
    return np.log(p1 / p0), np.log((1.0 - p1) / (1.0 - p0))


def _bin_rates(k: np.ndarray, n: np.ndarray, config: ErrorCusumConfig) -> np.ndarray:
    """Per-bin error rates ``k / n`` (last axis: bins) shrunk towards the pooled rate, clipped off 0 and 1."""
    total = n.sum()
    pooled = k.sum(axis=-1, keepdims=True) / total
    m = config.shrink_labels if len(n) > 1 else 0.0
    return _clip_rate((k + m * pooled) / (n + m), int(total))


@functools.lru_cache(maxsize=256)
def _simulate_errors(rates: tuple[float, ...], counts: tuple[int, ...], config: ErrorCusumConfig) -> Calibration:
    p, n = np.asarray(rates), np.asarray(counts)
    total = int(n.sum())
    rng = np.random.default_rng([config.seed, total, int(round(float(p @ n) / total * 1e9))] +
                                ([len(p)] if len(p) > 1 else []))
    rows = config.calibration_rows
    names = _error_names(config)
    maxima: list[np.ndarray] = []
    for b in _blocks(config.calibration_paths, rows, len(names)):
        # A baseline of `counts` labels per bin designs each path's CUSUM; the stream errs at the true rates.
        up, down = _error_steps(_bin_rates(rng.binomial(n, p, (b, len(p))), n, config), config)
        if len(p) == 1:
            errs = rng.random((rows, b, 1)) < p[0]
            inc = np.where(errs, up[:, 0].astype(np.float32), down[:, 0].astype(np.float32))
        else:
            bins = np.minimum(np.searchsorted(np.cumsum(n) / total, rng.random((rows, b))), len(p) - 1)
            errs = (rng.random((rows, b)) < p[bins])[..., None]
            path = np.arange(b)[None, :]
            inc = np.where(errs, up[path, bins].astype(np.float32), down[path, bins].astype(np.float32))
        maxima.append(_path_maxima(inc, total))
    peak = np.concatenate(maxima)
    share = 1.0 / len(names)
    rates_fa = {name: _rate(config.false_alarms_per_10k) * share for name in names}
    h = _levels({name: peak[:, i] for i, name in enumerate(names)}, rates_fa, rows)
    return Calibration(thresholds=h, false_alarms_per_10k=config.false_alarms_per_10k, method="bernoulli",
                       paths=config.calibration_paths, rows_per_path=rows, shares={name: share for name in names})


def calibrate_errors(baseline_rate: float | Sequence[float], n_baseline: int | Sequence[int],
                     config: ErrorCusumConfig = ErrorCusumConfig()) -> Calibration:
    """Thresholds of :class:`ErrorCusum` for error rates measured on ``n_baseline`` labels (cached).

    One rate and count, or one per confidence bin.
    """
    rates = tuple(float(r) for r in np.atleast_1d(baseline_rate))
    counts = tuple(int(c) for c in np.atleast_1d(n_baseline))
    if len(rates) != len(counts) or sum(counts) < 100 or any(c < 1 for c in counts) \
            or not all(0 < r < 1 for r in rates):
        raise ConfigError(f"the baseline needs >= 100 labels, at least one per bin, and error rates in (0, 1), "
                          f"got {counts} labels at {rates}")
    return _simulate_errors(rates, counts, config)


def _clip_rate(p: np.ndarray | float, n: int) -> np.ndarray:
    return np.clip(p, 0.5 / n, 1.0 - 0.5 / n)


def _quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner edges of ``n_bins`` quantile bins of ``values``, merged until no bin is empty (ties: a model
    with few distinct answers gets fewer bins)."""
    edges = np.unique(np.quantile(values, np.arange(1, n_bins) / n_bins))
    while len(edges):
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        if counts.all():
            break
        edges = np.delete(edges, max(0, int(np.argmax(counts == 0)) - 1))
    return edges


def _error_names(config: ErrorCusumConfig) -> list[str]:
    return [f"error_x{r:g}" for r in config.odds_ratios] + [f"error_flip{e:g}" for e in config.flip_shares]


def known_law_threshold(null_increments: Callable[[np.random.Generator, int, int], np.ndarray],
                        false_alarms_per_10k: float, *, paths: int = 1600, rows: int = 10_000,
                        seed: int = 0) -> float:
    """Threshold of one CUSUM of log-likelihood ratios when the pre-change law is known exactly.

    ``null_increments(rng, rows, paths)`` draws ``(rows, paths)`` increments with nothing changed. No
    reference-size discount: this is the optimal detector told everything about the change (Moustakides
    1986), the limit a benchmark compares real detectors with, not one to deploy.
    """
    _check_calibration("known_law_threshold", false_alarms_per_10k, paths, rows)
    rng = np.random.default_rng([seed, rows, paths])
    maxima = [_path_maxima(np.asarray(null_increments(rng, rows, b), dtype=np.float32)[..., None], 1 << 40)[:, 0]
              for b in _blocks(paths, rows, 1)]
    return _tail_level(np.concatenate(maxima), -math.expm1(-_rate(false_alarms_per_10k) * rows))


def crossings(increments: np.ndarray, threshold: float) -> list[int]:
    """Rows where one undiscounted CUSUM of ``increments`` crosses ``threshold``, restarting after each."""
    engine = _Cusum(np.array([float(threshold)]), 1 << 40)
    return [row for row, _col, _start, _score in engine.feed(np.asarray(increments, dtype=float)[:, None])]


# ---- the detectors ---------------------------------------------------------------------------


class _Detector:
    """What both detectors share: the alarm of the last update, every alarm so far, the score."""

    _engine: _Cusum
    _last: list[Alarm]
    _alarms: list[Alarm]

    @property
    def alarm(self) -> bool:
        """Whether the last :meth:`update` raised at least one alarm."""
        return bool(self._last)

    @property
    def alarms(self) -> tuple[Alarm, ...]:
        return tuple(self._alarms)

    @property
    def score(self) -> float:
        """Largest statistic over its discounted threshold now: 1 is an alarm."""
        return float(self._engine.scores().max())

    def excursion(self) -> tuple[int, float] | None:
        """``(first row, score)`` of the running excursion nearest its threshold, None when all rest at zero.

        Before any alarm, the CUSUM's estimate of when a change began and how sure it is (score 1 alarms):
        a caller that learns of a change another way (a window test) can date it from here.
        """
        exc = self._engine.excursion()
        return None if exc is None else (exc[1], exc[2])

    def state(self) -> dict[str, Any]:
        """The running statistics, for a checkpoint (the calibration is rebuilt from the reference)."""
        return self._engine.to_dict()

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` of a detector built on the same reference and config."""
        self._engine.load(state)


class FeatureCusum(_Detector):
    """Per-feature two-sided CUSUMs of the mean and the variance against a reference sample.

    ``update(batch)`` then :attr:`alarm`; :attr:`alarms` keeps every crossing. After an alarm the
    statistics restart at zero against the same reference (see the module docstring for when to
    :meth:`rebase`).
    """

    def __init__(self, reference: np.ndarray, config: FeatureCusumConfig = FeatureCusumConfig(), *,
                 calibration: Calibration | None = None) -> None:
        self.config = config
        self._alarms: list[Alarm] = []
        self._last: list[Alarm] = []
        self._set_reference(reference, calibration)

    def _set_reference(self, reference: np.ndarray, calibration: Calibration | None) -> None:
        ref = np.asarray(reference, dtype=float)
        if ref.ndim != 2 or len(ref) < 50:
            raise DataError(f"the reference must be a 2-D array of >= 50 rows, got shape {ref.shape}")
        if not np.isfinite(ref).all():
            raise DataError("the reference has missing or infinite values: impute or drop them first")
        sd = ref.std(axis=0, ddof=1)
        flat = np.flatnonzero(sd <= 0)
        if len(flat):
            raise DataError(f"features {flat.tolist()} are constant in the reference: drop them, a CUSUM "
                            f"standardizes by the reference's spread")
        self._mean, self._sd, self.n_reference = ref.mean(axis=0), sd, len(ref)
        self.calibration = calibration or calibrate_features(len(ref), ref.shape[1], self.config, reference=ref)
        d = ref.shape[1]
        h = self.calibration.thresholds
        self._engine = _Cusum(np.repeat([h["mean"], h["mean"], h["variance"], h["variance"]], d), len(ref))

    @property
    def n_features(self) -> int:
        return len(self._mean)

    @property
    def rows_seen(self) -> int:
        return self._engine.seen

    def update(self, batch: np.ndarray) -> FeatureCusum:
        """Feed rows (an ``(n, d)`` array, or one row), in order."""
        x = np.asarray(batch, dtype=float)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise DataError(f"expected rows of {self.n_features} features (the reference's, same order), got "
                            f"shape {np.shape(batch)}")
        if not np.isfinite(x).all():
            raise DataError("the batch has missing or infinite values: impute or drop them before the CUSUM")
        z = (x - self._mean) / self._sd
        d, names = self.n_features, MEAN_STATS + VARIANCE_STATS
        self._last = [Alarm(index=row, change_index=change, statistic=names[col // d], feature=col % d,
                            score=score)
                      for row, col, change, score in self._engine.feed(_feature_increments(z, self.config))]
        self._alarms.extend(self._last)
        return self

    def reset(self) -> None:
        """Statistics back to zero (same reference, same row count); alarms are kept."""
        self._engine.reset()
        self._last = []

    def rebase(self, reference: np.ndarray) -> None:
        """Adopt a new reference (e.g. rows since :attr:`Alarm.change_index`); rows count from zero again.

        Gaussian thresholds depend only on the reference's size and are reused from the cache; bootstrap
        thresholds are simulated again from the new reference.
        """
        self._set_reference(reference, None)
        self._last = []


class ErrorCusum(_Detector):
    """Bernoulli CUSUMs on a model's 0/1 error stream against the error rate of a baseline.

    ``baseline_errors`` are the model's errors on labelled reference rows it was not fitted on
    (cross-validation or a holdout): in-sample errors are optimistic and would alarm on a healthy model.
    With ``confidence_bins > 1`` every error comes with the model's confidence in that answer (its top
    probability), in the baseline and in :meth:`update`.
    """

    def __init__(self, baseline_errors: np.ndarray, config: ErrorCusumConfig = ErrorCusumConfig(), *,
                 baseline_confidence: np.ndarray | None = None, calibration: Calibration | None = None) -> None:
        self.config = config
        self._alarms: list[Alarm] = []
        self._last: list[Alarm] = []
        self._set_baseline(baseline_errors, baseline_confidence, calibration)

    def _set_baseline(self, baseline_errors: np.ndarray, confidence: np.ndarray | None,
                      calibration: Calibration | None) -> None:
        e = self._errors(baseline_errors)
        if len(e) < 100:
            raise DataError(f"the baseline has {len(e)} labels: an error rate needs >= 100 (a few hundred "
                            f"for rates near 5 %)")
        rate = float(e.mean())
        if not 0 < rate < 1:
            raise DataError(f"the baseline error rate is {rate:g}: the CUSUM needs both errors and successes "
                            f"in the baseline; collect more labels")
        self._edges = np.empty(0)
        if self.config.confidence_bins > 1:
            self._edges = _quantile_edges(self._confidence(confidence, len(e)), self.config.confidence_bins)
        bins = self.bins(confidence, len(e))
        counts = np.bincount(bins, minlength=len(self._edges) + 1)
        errs = np.bincount(bins, weights=e, minlength=len(self._edges) + 1)
        self.bin_rates = _bin_rates(errs, counts, self.config)
        self.baseline_rate, self.n_baseline = rate, len(e)
        self.calibration = calibration or calibrate_errors(self.bin_rates, counts, self.config)
        self._names = _error_names(self.config)
        self._up, self._down = _error_steps(self.bin_rates, self.config)
        self._engine = _Cusum(np.array([self.calibration.thresholds[n] for n in self._names]), len(e))

    @staticmethod
    def _errors(values: np.ndarray) -> np.ndarray:
        e = np.asarray(values, dtype=float).ravel()
        if not np.isin(e, (0.0, 1.0)).all():
            raise DataError("errors must be 0 (right) or 1 (wrong)")
        return e

    def _confidence(self, values: np.ndarray | None, n: int) -> np.ndarray:
        if values is None:
            raise DataError(f"this detector splits errors by confidence (confidence_bins="
                            f"{self.config.confidence_bins}): give each error's confidence too")
        c = np.asarray(values, dtype=float).ravel()
        if len(c) != n or not np.isfinite(c).all():
            raise DataError(f"need one finite confidence per error: {len(c)} confidences for {n} errors")
        return c

    @property
    def labels_seen(self) -> int:
        return self._engine.seen

    def bins(self, confidence: np.ndarray | None, n: int) -> np.ndarray:
        """The confidence bin of each of ``n`` answers (all 0 with one bin)."""
        if not len(self._edges):
            return np.zeros(n, dtype=np.int64)
        return np.searchsorted(self._edges, self._confidence(confidence, n), side="right")

    def update(self, errors: np.ndarray, confidence: np.ndarray | None = None) -> ErrorCusum:
        """Feed 0/1 errors (one or many) in the order of the rows they label, with their confidences if binned."""
        e = self._errors(errors)
        bins = self.bins(confidence, len(e))
        inc = np.where(e[:, None] > 0, self._up[bins], self._down[bins])
        self._last = [Alarm(index=row, change_index=change, statistic=self._names[col], feature=None, score=score)
                      for row, col, change, score in self._engine.feed(inc)]
        self._alarms.extend(self._last)
        return self

    def reset(self) -> None:
        self._engine.reset()
        self._last = []

    def rebase(self, baseline_errors: np.ndarray, baseline_confidence: np.ndarray | None = None) -> None:
        """A new baseline, e.g. the retrained model's errors on held-out post-change labels."""
        self._set_baseline(baseline_errors, baseline_confidence, None)
        self._last = []
