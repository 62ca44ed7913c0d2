"""Thresholds for the CUSUMs of :mod:`controllers.detectors.cusum`, set by seeded simulation (pure NumPy).

Thresholds ``h`` are set by seeded simulation so that the whole
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

Simulations are seeded (by the config's ``seed`` and the sizes involved), so the
same design and reference size give the same thresholds on every machine and in
every process; the caches make a second detector of the same shape free.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from controllers.detectors._engine import CusumEngine, path_maxima
from controllers.detectors.designs import ErrorCusumConfig, FeatureCusumConfig, check_calibration
from raymedic.errors import ConfigError
from train_jobs.tails import tail_level as _tail_level

__all__ = ["Calibration", "calibrate_features", "calibrate_features_given", "calibrate_errors", "known_law_threshold",
           "crossings"]

SIM_CELLS = 500_000
"""Float32 cells (rows × paths × statistics) per simulation block: 2 MB per temporary stays in cache."""


def _rate(false_alarms_per_10k: float) -> float:
    return false_alarms_per_10k / 10_000.0


@dataclass(frozen=True)
class Calibration:
    """Thresholds per family of statistics, and how they were obtained.

    The detector reads only ``thresholds``; the rest is the record a report prints next to its alarms
    (what budget, which simulation, how many paths), since a threshold means nothing without them.
    """

    thresholds: dict[str, float]
    false_alarms_per_10k: float
    method: str
    paths: int
    rows_per_path: int
    shares: dict[str, float] = field(default_factory=dict)


def _levels(maxima: dict[str, np.ndarray], rates: dict[str, float], rows: int) -> dict[str, float]:
    # Alarms are rare and nearly memoryless: P(a path of `rows` alarms) = 1 - exp(-rate · rows).
    return {f: _tail_level(maxima[f], -math.expm1(-rates[f] * rows)) for f in maxima}


def _blocks(paths: int, rows: int, stats: int) -> Iterator[int]:
    per = max(1, SIM_CELLS // (rows * stats))
    for start in range(0, paths, per):
        yield min(per, paths - start)


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
        peak = path_maxima(config.increments(z), n_reference)
        mean_max.append(peak[:, : 2 * d].max(axis=1))
        var_max.append(peak[:, 2 * d:].max(axis=1))
    return _feature_calibration(mean_max, var_max, config, config.calibration)


def _feature_calibration(mean_max: list[np.ndarray], var_max: list[np.ndarray], config: FeatureCusumConfig,
                         method: str) -> Calibration:
    rate = _rate(config.false_alarms_per_10k)
    rates = {"mean": rate * config.mean_share, "variance": rate * (1.0 - config.mean_share)}
    rows = config.calibration_rows
    h = _levels({"mean": np.concatenate(mean_max), "variance": np.concatenate(var_max)}, rates, rows)
    return Calibration(thresholds=h, false_alarms_per_10k=config.false_alarms_per_10k, method=method,
                       paths=config.calibration_paths, rows_per_path=rows,
                       shares={"mean": config.mean_share, "variance": 1.0 - config.mean_share})


def calibrate_features_given(reference: np.ndarray, held_out: np.ndarray,
                             config: FeatureCusumConfig = FeatureCusumConfig()) -> Calibration:
    """Thresholds of :class:`~controllers.detectors.cusum.FeatureCusum` on *this* ``reference``, for live rows
    resampled from ``held_out`` (rows of the same population that the reference does not hold).

    :func:`calibrate_features` draws a fresh reference per path: the false-alarm rate it sets is the average
    over references of that size. Given one fixed reference and rows held out of it (a tensor feature's
    projections, :mod:`controllers.detectors.tensor_drift`), the rate can be set for the reference in hand:
    live rows are standardized by its mean and sd, so its own sampling error, and whatever else sets
    held-out rows apart from it (a training set of a few hundred distinct images, jittered), is in every
    simulated path. Each path draws its rows from its own resample of ``held_out`` (a bootstrap of the
    held-out set): the held-out rows are a sample too, and a live population as far from them as another
    sample would be must not alarm more than the budget. Seeded by the config's seed and the sizes.

    Raises:
        ConfigError: Fewer than 50 reference or held-out rows, or columns that do not match.
    """
    ref, pool = np.asarray(reference, dtype=float), np.asarray(held_out, dtype=float)
    if ref.ndim != 2 or pool.ndim != 2 or ref.shape[1] != pool.shape[1] or len(ref) < 50 or len(pool) < 50:
        raise ConfigError(f"a reference and held-out rows of the same columns, >= 50 rows each, are needed; got "
                          f"shapes {list(ref.shape)} and {list(pool.shape)}")
    d, rows = ref.shape[1], config.calibration_rows
    z_pool = ((pool - ref.mean(axis=0)) / ref.std(axis=0, ddof=1)).astype(np.float32)
    rng = np.random.default_rng([config.seed, len(ref), len(pool), d])
    mean_max, var_max = [], []
    n = len(pool)
    for b in _blocks(config.calibration_paths, rows, 4 * d):
        population = rng.integers(0, n, (b, n))  # each path's own live population: a resample of held_out
        idx = np.take_along_axis(population, rng.integers(0, n, (b, rows)), axis=1).T
        peak = path_maxima(config.increments(z_pool[idx]), len(ref))
        mean_max.append(peak[:, : 2 * d].max(axis=1))
        var_max.append(peak[:, 2 * d:].max(axis=1))
    return _feature_calibration(mean_max, var_max, config, "held-out")


@functools.lru_cache(maxsize=32)
def _gaussian_features(n_reference: int, n_features: int, config: FeatureCusumConfig) -> Calibration:
    return _simulate_features(n_reference, n_features, config, None)


def calibrate_features(n_reference: int, n_features: int, config: FeatureCusumConfig = FeatureCusumConfig(),
                       *, reference: np.ndarray | None = None) -> Calibration:
    """Thresholds of :class:`~controllers.detectors.cusum.FeatureCusum` for a reference of ``n_reference`` rows × ``n_features``.

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


@functools.lru_cache(maxsize=256)
def _simulate_errors(rates: tuple[float, ...], counts: tuple[int, ...], config: ErrorCusumConfig) -> Calibration:
    p, n = np.asarray(rates), np.asarray(counts)
    total = int(n.sum())
    rng = np.random.default_rng([config.seed, total, int(round(float(p @ n) / total * 1e9))] +
                                ([len(p)] if len(p) > 1 else []))
    rows = config.calibration_rows
    names = config.statistic_names()
    maxima: list[np.ndarray] = []
    for b in _blocks(config.calibration_paths, rows, len(names)):
        # A baseline of `counts` labels per bin designs each path's CUSUM; the stream errs at the true rates.
        up, down = config.llr_steps(config.shrunk_rates(rng.binomial(n, p, (b, len(p))), n))
        if len(p) == 1:
            errs = rng.random((rows, b, 1)) < p[0]
            inc = np.where(errs, up[:, 0].astype(np.float32), down[:, 0].astype(np.float32))
        else:
            bins = np.minimum(np.searchsorted(np.cumsum(n) / total, rng.random((rows, b))), len(p) - 1)
            errs = (rng.random((rows, b)) < p[bins])[..., None]
            path = np.arange(b)[None, :]
            inc = np.where(errs, up[path, bins].astype(np.float32), down[path, bins].astype(np.float32))
        maxima.append(path_maxima(inc, total))
    peak = np.concatenate(maxima)
    share = 1.0 / len(names)
    rates_fa = {name: _rate(config.false_alarms_per_10k) * share for name in names}
    h = _levels({name: peak[:, i] for i, name in enumerate(names)}, rates_fa, rows)
    return Calibration(thresholds=h, false_alarms_per_10k=config.false_alarms_per_10k, method="bernoulli",
                       paths=config.calibration_paths, rows_per_path=rows, shares={name: share for name in names})


def calibrate_errors(baseline_rate: float | Sequence[float], n_baseline: int | Sequence[int],
                     config: ErrorCusumConfig) -> Calibration:
    """Thresholds of :class:`~controllers.detectors.cusum.ErrorCusum` for error rates measured on
    ``n_baseline`` labels (cached).

    One rate and count, or one per confidence bin. The simulated baselines are binomial draws of the same
    size, so the thresholds cover the error a baseline of ``n_baseline`` labels makes in its own rate.
    """
    rates = tuple(float(r) for r in np.atleast_1d(baseline_rate))
    counts = tuple(int(c) for c in np.atleast_1d(n_baseline))
    if len(rates) != len(counts) or sum(counts) < 100 or any(c < 1 for c in counts) \
            or not all(0 < r < 1 for r in rates):
        raise ConfigError(f"the baseline needs >= 100 labels, at least one per bin, and error rates in (0, 1), "
                          f"got {counts} labels at {rates}")
    return _simulate_errors(rates, counts, config)


def known_law_threshold(null_increments: Callable[[np.random.Generator, int, int], np.ndarray],
                        false_alarms_per_10k: float, *, paths: int = 1600, rows: int = 10_000,
                        seed: int = 0) -> float:
    """Threshold of one CUSUM of log-likelihood ratios when the pre-change law is known exactly.

    ``null_increments(rng, rows, paths)`` draws ``(rows, paths)`` increments with nothing changed. No
    reference-size discount: this is the optimal detector told everything about the change (Moustakides
    1986), the limit a benchmark compares real detectors with, not one to deploy.
    """
    check_calibration("known_law_threshold", false_alarms_per_10k, paths, rows)
    rng = np.random.default_rng([seed, rows, paths])
    maxima = [path_maxima(np.asarray(null_increments(rng, rows, b), dtype=np.float32)[..., None], 1 << 40)[:, 0]
              for b in _blocks(paths, rows, 1)]
    return _tail_level(np.concatenate(maxima), -math.expm1(-_rate(false_alarms_per_10k) * rows))


def crossings(increments: np.ndarray, threshold: float) -> list[int]:
    """Rows where one undiscounted CUSUM of ``increments`` crosses ``threshold``, restarting after each.

    The detector :func:`known_law_threshold` calibrates (told the change, no reference to estimate), run
    with the same engine as the real detectors so that a benchmark compares like with like.
    """
    engine = CusumEngine(np.array([float(threshold)]), 1 << 40)
    return [row for row, _col, _start, _score in engine.feed(np.asarray(increments, dtype=float)[:, None])]
