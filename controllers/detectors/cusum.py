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

**Thresholds** come from seeded simulations of the null stream, the reference's
own sampling error included (:mod:`controllers.detectors.calibration`): the
``false_alarms_per_10k`` of a config is what the whole detector raises per
10,000 rows (labels) when nothing changes.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

from controllers.detectors._engine import CusumEngine
from controllers.detectors.calibration import Calibration, calibrate_errors, calibrate_features
from controllers.detectors.designs import ErrorCusumConfig, FeatureCusumConfig
from raymedic.errors import ConfigError, DataError

__all__ = ["FeatureCusumConfig", "ErrorCusumConfig", "Alarm", "FeatureCusum", "ErrorCusum"]

MEAN_STATS = ("mean_up", "mean_down")
VARIANCE_STATS = ("var_up", "var_down")


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


# ---- the detectors ---------------------------------------------------------------------------


class _Detector:
    """What both detectors share: the alarm of the last update, every alarm so far, the score."""

    _engine: CusumEngine
    _last: list[Alarm]
    _alarms: list[Alarm]

    @property
    def alarm(self) -> bool:
        """Whether the last :meth:`update` raised at least one alarm."""
        return bool(self._last)

    @property
    def alarms(self) -> tuple[Alarm, ...]:
        """Every alarm since the detector was built or rebased, oldest first (a restart keeps them)."""
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

    @classmethod
    def from_moments(cls, mean: np.ndarray, sd: np.ndarray, n_reference: int,
                     config: FeatureCusumConfig | None = None, *,
                     calibration: Calibration | None = None) -> FeatureCusum:
        """A detector against a reference known by its per-feature mean, sd and size only.

        All the detector reads of a reference is its mean and sd (and, for the reference-size discount and
        the thresholds, how many rows they were measured on), so a whole training split can be the reference
        without storing its rows: the discount ``1 + l / n`` and the threshold shrink as ``n`` grows (``raymedic
        bench drift``: mean +0.25 sd caught after ~310 rather than ~510 rows with 4,800 rows instead of 2,000).
        Gaussian calibration only: ``"bootstrap"`` resamples reference rows, which moments do not have.

        Raises:
            ConfigError: ``config.calibration`` is ``"bootstrap"``.
            DataError: The moments are not finite, an sd is not positive, or ``n_reference`` < 50.
        """
        config = config or FeatureCusumConfig()
        if config.calibration != "gaussian" and calibration is None:
            raise ConfigError("a reference given by its moments has no rows to resample: use calibration='gaussian' "
                              "or build the detector from reference rows")
        det = cls.__new__(cls)
        det.config = config
        det._alarms, det._last = [], []
        m, s = np.atleast_1d(np.asarray(mean, dtype=float)), np.atleast_1d(np.asarray(sd, dtype=float))
        if m.ndim != 1 or m.shape != s.shape or not (np.isfinite(m).all() and np.isfinite(s).all()):
            raise DataError(f"need one finite mean and sd per feature, got shapes {m.shape} and {s.shape}")
        det._set_moments(m, s, int(n_reference), calibration)
        return det

    def _set_reference(self, reference: np.ndarray, calibration: Calibration | None) -> None:
        ref = np.asarray(reference, dtype=float)
        if ref.ndim != 2 or len(ref) < 50:
            raise DataError(f"the reference must be a 2-D array of >= 50 rows, got shape {ref.shape}")
        if not np.isfinite(ref).all():
            raise DataError("the reference has missing or infinite values: impute or drop them first")
        if calibration is None and self.config.calibration != "gaussian":
            calibration = calibrate_features(len(ref), ref.shape[1], self.config, reference=ref)
        self._set_moments(ref.mean(axis=0), ref.std(axis=0, ddof=1), len(ref), calibration)

    def _set_moments(self, mean: np.ndarray, sd: np.ndarray, n: int, calibration: Calibration | None) -> None:
        if n < 50:
            raise DataError(f"the reference must hold >= 50 rows, got {n}")
        flat = np.flatnonzero(sd <= 0)
        if len(flat):
            raise DataError(f"features {flat.tolist()} are constant in the reference: drop them, a CUSUM "
                            f"standardizes by the reference's spread")
        self._mean, self._sd, self.n_reference = mean, sd, n
        self.calibration = calibration or calibrate_features(n, len(mean), self.config)
        d = len(mean)
        h = self.calibration.thresholds
        self._engine = CusumEngine(np.repeat([h["mean"], h["mean"], h["variance"], h["variance"]], d), n)

    @property
    def n_features(self) -> int:
        """Columns of the reference, which every batch must have in the same order."""
        return len(self._mean)

    @property
    def rows_seen(self) -> int:
        """Rows fed since the detector was built or rebased: what :class:`Alarm` indices count."""
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
                      for row, col, change, score in self._engine.feed(self.config.increments(z))]
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

    def __init__(self, baseline_errors: np.ndarray, config: ErrorCusumConfig, *,
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
        self.bin_rates = self.config.shrunk_rates(errs, counts)
        self.baseline_rate, self.n_baseline = rate, len(e)
        self.calibration = calibration or calibrate_errors(self.bin_rates, counts, self.config)
        self._names = self.config.statistic_names()
        self._up, self._down = self.config.llr_steps(self.bin_rates)
        self._engine = CusumEngine(np.array([self.calibration.thresholds[n] for n in self._names]), len(e))

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
        """Labels fed since the baseline was set: what :class:`Alarm` indices count."""
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
        """Statistics back to zero (same baseline, same label count); alarms are kept."""
        self._engine.reset()
        self._last = []

    def rebase(self, baseline_errors: np.ndarray, baseline_confidence: np.ndarray | None = None) -> None:
        """A new baseline, e.g. the retrained model's errors on held-out post-change labels."""
        self._set_baseline(baseline_errors, baseline_confidence, None)
        self._last = []
