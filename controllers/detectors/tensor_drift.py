"""Input drift on a tensor feature: a windowed MMD and per-coordinate CUSUMs on a fixed projection (pure NumPy).

Per-feature tests do not apply to 784 pixels. When a version is trained, each tensor
feature gets a fixed low-dimensional view (:mod:`train_jobs.projection`: ``k`` ≤ 8
principal components and the reconstruction residual) and a reference document
entry (:mod:`train_jobs.tensor_reference`). Live rows are projected and fed, in
order, to two detectors that share the false-alarm budget of the whole feature
(``false_alarms_per_10k``, bench drift's 0.05 per 10,000 rows by default):

- a windowed MMD² between the last ``window`` projected rows and the reference
  sample (:class:`train_jobs.mmd.WindowMmd`), its Gaussian kernel's bandwidth and its
  threshold fixed at training time (``mmd_share`` of the budget): one test on the
  joint law, so a class-mix shift that moves no coordinate much still shows;
- the per-feature CUSUMs the tabular monitor runs
  (:class:`controllers.detectors.cusum.FeatureCusum`, mean and variance up and down)
  on the ``k + 1`` coordinates as virtual numeric features, calibrated together over
  all of them (the multiple-testing correction is the calibration of the maximum
  over every statistic) on paths resampled from the stored held-out rows against
  the stored reference (:func:`~controllers.detectors.calibration.calibrate_features_given`):
  the coordinates are not Gaussian (a mixture of digit classes), and the reference
  in hand, not an average one, is what live rows are compared with. The simulation
  runs in this process (a few seconds, once per reference: cached), because
  training may not import the healing layer that holds it.

After an alarm the detector that raised it restarts (the MMD's window refills, the
CUSUMs restart at zero) against the same reference. :meth:`TensorDriftMonitor.update`
returns the first :class:`TensorFinding` of a batch (every one is kept in
:attr:`TensorDriftMonitor.findings`); findings are values, states are Enums.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from controllers.detectors.calibration import Calibration, calibrate_features_given
from controllers.detectors.cusum import FeatureCusum, FeatureCusumConfig
from raymedic.enums import StrEnum, plain
from raymedic.errors import SchemaError
from train_jobs.mmd import MmdCalibration, WindowMmd
from train_jobs.projection import Projection

__all__ = ["TensorDriftMonitor", "TensorFinding", "TensorState", "TensorTest", "tensor_monitors"]


class TensorTest(StrEnum):
    """Which detector raised a finding."""

    MMD = "mmd"
    CUSUM = "cusum"


class TensorState(StrEnum):
    """Where a tensor monitor is: filling its first window, watching, or drifting (a finding in the last window)."""

    FILLING = "filling"
    WATCHING = "watching"
    DRIFTING = "drifting"


@dataclass(frozen=True)
class TensorFinding:
    """One alarm on a tensor feature. Rows count from the monitor's construction."""

    feature: str
    test: TensorTest
    statistic: str
    """``mmd2``, or the CUSUM statistic (``mean_up``, ``var_down``, ...)."""
    coordinate: str | None
    """The projected coordinate whose CUSUM crossed (``pc3``, ``residual``); None for the MMD."""
    value: float
    """MMD² of the window, or the CUSUM's score over its discounted threshold."""
    threshold: float
    """What ``value`` crossed (the MMD threshold, or 1 for a CUSUM score)."""
    row: int
    """The row whose arrival raised the alarm."""
    change_row: int
    """Estimate of the first changed row: the window's first row (MMD), the excursion's start (CUSUM)."""
    rows_seen: int
    """Rows fed to the monitor when the finding was returned."""

    @property
    def score(self) -> float:
        """``value / threshold``: ≥ 1, larger for a plainer change."""
        return self.value / self.threshold if self.threshold > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (for evidence in incidents and audit records)."""
        return {**plain(asdict(self)), "score": round(self.score, 4)}


_CUSUM_CALIBRATIONS: dict[tuple[str, FeatureCusumConfig], Calibration] = {}
"""CUSUM thresholds per (reference sample and held-out rows, design): a reloaded deployment does not simulate
again."""


def _cusum_calibration(sample: np.ndarray, held_out: np.ndarray, config: FeatureCusumConfig) -> Calibration:
    digest = hashlib.sha256(np.ascontiguousarray(sample).tobytes())
    digest.update(np.ascontiguousarray(held_out).tobytes())
    key = (digest.hexdigest(), config)
    if key not in _CUSUM_CALIBRATIONS:
        if len(_CUSUM_CALIBRATIONS) >= 32:
            _CUSUM_CALIBRATIONS.pop(next(iter(_CUSUM_CALIBRATIONS)))
        _CUSUM_CALIBRATIONS[key] = calibrate_features_given(sample, held_out, config)
    return _CUSUM_CALIBRATIONS[key]


class TensorDriftMonitor:
    """The MMD and the per-coordinate CUSUMs of one tensor feature, fed with raw rows ``[n, *shape]``.

    Args:
        feature: The feature's name (findings carry it).
        entry: The feature's entry of the reference document's ``"tensors"`` section.
        mmd: Run the windowed MMD.
        cusum: Run the per-coordinate CUSUMs (their calibration costs a few seconds on first use).

    Invariant: only :meth:`update` changes the detectors and :attr:`findings`.
    """

    def __init__(self, feature: str, entry: Mapping[str, Any], *, mmd: bool = True, cusum: bool = True) -> None:
        try:
            self.projection = Projection.from_dict(entry["projection"])
            self.sample = np.asarray(entry["sample"], dtype=float)
            held_out = np.asarray(entry["held_out"], dtype=float)
            self.calibration = MmdCalibration.from_dict(entry["mmd"])
            cusum_doc = entry["cusum"]
            cusum_budget = float(cusum_doc["false_alarms_per_10k"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed tensor reference for feature {feature!r}: {exc}") from exc
        for part, rows in (("sample", self.sample), ("held_out", held_out)):
            if rows.ndim != 2 or rows.shape[1] != self.projection.dims or len(rows) < 50:
                raise SchemaError(f"malformed tensor reference for feature {feature!r}: {part} of shape "
                                  f"{list(rows.shape)} for {self.projection.dims} coordinates (>= 50 rows)")
        self.feature = feature
        self.coordinates = self.projection.coordinate_names
        c = self.calibration
        self._mmd = WindowMmd(self.sample, bandwidth=c.bandwidth, window=c.window, step=c.step,
                              k_rr=c.k_rr) if mmd else None
        self._cusum: FeatureCusum | None = None
        if cusum:
            config = FeatureCusumConfig(false_alarms_per_10k=cusum_budget, seed=int(cusum_doc.get("seed", 0)))
            self._cusum = FeatureCusum(self.sample, config,
                                       calibration=_cusum_calibration(self.sample, held_out, config))
        self._findings: list[TensorFinding] = []
        self._since_reset = 0  # rows since the MMD's window last restarted
        self.rows_seen = 0

    @property
    def findings(self) -> tuple[TensorFinding, ...]:
        """Every finding so far, oldest first."""
        return tuple(self._findings)

    @property
    def state(self) -> TensorState:
        """Drifting while a finding is within the last window of rows; filling before the first full window."""
        window = self.calibration.window
        if self._findings and self.rows_seen - self._findings[-1].row <= window:
            return TensorState.DRIFTING
        if self._mmd is not None and self._since_reset < window:
            return TensorState.FILLING
        return TensorState.WATCHING

    def update(self, rows: Any) -> TensorFinding | None:
        """Feed raw rows (nested lists or an array ``[n, *shape]``, or one row) in order.

        Returns:
            The batch's first finding (by row), or None.

        Raises:
            DataError: The rows do not have the feature's shape, or hold NaN/inf.
        """
        x = self.projection.transform(np.asarray(rows, dtype=float))
        start = self.rows_seen
        new: list[TensorFinding] = []
        if self._mmd is not None:
            new += self._feed_mmd(x, start)
        if self._cusum is not None:
            cusum = self._cusum
            before = len(cusum.alarms)
            cusum.update(x)
            new += [TensorFinding(feature=self.feature, test=TensorTest.CUSUM, statistic=a.statistic,
                                  coordinate=self.coordinates[a.feature or 0], value=a.score, threshold=1.0,
                                  row=a.index, change_row=a.change_index, rows_seen=start + len(x))
                    for a in cusum.alarms[before:]]
        self.rows_seen = start + len(x)
        new.sort(key=lambda f: f.row)
        self._findings.extend(new)
        return new[0] if new else None

    def _feed_mmd(self, x: np.ndarray, start: int) -> list[TensorFinding]:
        mmd, c, out = self._mmd, self.calibration, []
        assert mmd is not None  # only called when the MMD runs
        at = 0
        while at < len(x):
            rows, stat = mmd.feed(x[at:])
            crossed = np.flatnonzero(stat > c.threshold)
            if not len(crossed):
                self._since_reset += len(x) - at
                break
            i = int(crossed[0])
            row = int(rows[i])
            out.append(TensorFinding(feature=self.feature, test=TensorTest.MMD, statistic="mmd2", coordinate=None,
                                     value=float(stat[i]), threshold=c.threshold, row=row,
                                     change_row=row - c.window + 1, rows_seen=start + len(x)))
            # Restart after the alarm: rows after it are fed again into an empty window.
            fed_after = int(mmd.seen) - (row + 1)
            mmd.seen = row + 1
            mmd.reset()
            self._since_reset = 0
            at = len(x) - fed_after
        return out


def tensor_monitors(section: Mapping[str, Any] | None, *, mmd: bool = True,
                    cusum: bool = True) -> dict[str, TensorDriftMonitor]:
    """A monitor per feature of a reference document's ``"tensors"`` section (``doc.get(TENSORS_KEY)``); none
    for None or an empty section (every tabular model)."""
    return {name: TensorDriftMonitor(name, entry, mmd=mmd, cusum=cusum) for name, entry in (section or {}).items()}
