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
from typing import Any, Iterator

import numpy as np

from raymedic.errors import ConfigError, DataError

__all__ = ["FeatureCusumConfig", "ErrorCusumConfig", "Calibration", "Alarm", "FeatureCusum", "ErrorCusum",
           "calibrate_features", "calibrate_errors"]

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
    false_alarms_per_10k: float = 0.05
    """False alarms per 10,000 labels when nothing changes, shared equally by the designs."""
    calibration_paths: int = 400
    calibration_rows: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.odds_ratios or any(not 1 < r <= 100 for r in self.odds_ratios):
            raise ConfigError(f"odds_ratios must be a non-empty tuple of values in (1, 100], got "
                              f"{self.odds_ratios}: each is a rise in the odds of an error to catch")
        _check_calibration("ErrorCusumConfig", self.false_alarms_per_10k, self.calibration_paths,
                           self.calibration_rows)


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


def _error_steps(p0: np.ndarray, odds_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bernoulli LLR of an error and of a success, per baseline rate (...,) and design: (..., designs) each."""
    p0 = np.asarray(p0, dtype=float)[..., None]
    p1 = odds_ratios * p0 / (1.0 - p0 + odds_ratios * p0)
    return np.log(p1 / p0), np.log((1.0 - p1) / (1.0 - p0))


@functools.lru_cache(maxsize=256)
def _simulate_errors(baseline_rate: float, n_baseline: int, config: ErrorCusumConfig) -> Calibration:
    rng = np.random.default_rng([config.seed, n_baseline, int(round(baseline_rate * 1e9))])
    rows, ratios = config.calibration_rows, np.asarray(config.odds_ratios)
    names = [_error_name(r) for r in config.odds_ratios]
    maxima: list[np.ndarray] = []
    for b in _blocks(config.calibration_paths, rows, len(ratios)):
        # A baseline of n_baseline labels designs each path's CUSUM; the stream errs at the true rate.
        up, down = _error_steps(_clip_rate(rng.binomial(n_baseline, baseline_rate, b) / n_baseline, n_baseline),
                                ratios)
        errs = rng.random((rows, b, 1)) < baseline_rate
        maxima.append(_path_maxima(np.where(errs, up.astype(np.float32), down.astype(np.float32)), n_baseline))
    peak = np.concatenate(maxima)
    share = 1.0 / len(names)
    rates = {n: _rate(config.false_alarms_per_10k) * share for n in names}
    h = _levels({n: peak[:, i] for i, n in enumerate(names)}, rates, rows)
    return Calibration(thresholds=h, false_alarms_per_10k=config.false_alarms_per_10k, method="bernoulli",
                       paths=config.calibration_paths, rows_per_path=rows, shares={n: share for n in names})


def calibrate_errors(baseline_rate: float, n_baseline: int,
                     config: ErrorCusumConfig = ErrorCusumConfig()) -> Calibration:
    """Thresholds of :class:`ErrorCusum` for an error rate measured on ``n_baseline`` labels (cached)."""
    if not 0 < baseline_rate < 1 or n_baseline < 100:
        raise ConfigError(f"the baseline needs >= 100 labels and an error rate in (0, 1), got "
                          f"{n_baseline} labels at {baseline_rate}")
    return _simulate_errors(float(baseline_rate), int(n_baseline), config)


def _clip_rate(p: np.ndarray | float, n: int) -> np.ndarray:
    return np.clip(p, 0.5 / n, 1.0 - 0.5 / n)


def _error_name(ratio: float) -> str:
    return f"error_x{ratio:g}"


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
    """

    def __init__(self, baseline_errors: np.ndarray, config: ErrorCusumConfig = ErrorCusumConfig(), *,
                 calibration: Calibration | None = None) -> None:
        self.config = config
        self._alarms: list[Alarm] = []
        self._last: list[Alarm] = []
        self._set_baseline(baseline_errors, calibration)

    def _set_baseline(self, baseline_errors: np.ndarray, calibration: Calibration | None) -> None:
        e = self._errors(baseline_errors)
        if len(e) < 100:
            raise DataError(f"the baseline has {len(e)} labels: an error rate needs >= 100 (a few hundred "
                            f"for rates near 5 %)")
        rate = float(e.mean())
        if not 0 < rate < 1:
            raise DataError(f"the baseline error rate is {rate:g}: the CUSUM needs both errors and successes "
                            f"in the baseline; collect more labels")
        self.baseline_rate, self.n_baseline = rate, len(e)
        self.calibration = calibration or calibrate_errors(rate, len(e), self.config)
        self._names = [_error_name(r) for r in self.config.odds_ratios]
        self._engine = _Cusum(np.array([self.calibration.thresholds[n] for n in self._names]), len(e))

    @staticmethod
    def _errors(values: np.ndarray) -> np.ndarray:
        e = np.asarray(values, dtype=float).ravel()
        if not np.isin(e, (0.0, 1.0)).all():
            raise DataError("errors must be 0 (right) or 1 (wrong)")
        return e

    @property
    def labels_seen(self) -> int:
        return self._engine.seen

    def update(self, errors: np.ndarray) -> ErrorCusum:
        """Feed 0/1 errors (one or many) in the order of the rows they label."""
        e = self._errors(errors)
        up, down = _error_steps(self.baseline_rate, np.asarray(self.config.odds_ratios))
        inc = np.where(e[:, None] > 0, up, down)
        self._last = [Alarm(index=row, change_index=change, statistic=self._names[col], feature=None, score=score)
                      for row, col, change, score in self._engine.feed(inc)]
        self._alarms.extend(self._last)
        return self

    def reset(self) -> None:
        self._engine.reset()
        self._last = []

    def rebase(self, baseline_errors: np.ndarray) -> None:
        """A new baseline, e.g. the retrained model's errors on held-out post-change labels."""
        self._set_baseline(baseline_errors, None)
        self._last = []
