"""Data quality and input drift over a sliding window of live rows (pure: NumPy/SciPy, no Ray).

The gateway ships per-period tallies (:mod:`serve_apps.quality`); the monitor keeps
the most recent ``window_rows`` rows' worth of them and, on :meth:`DataMonitor.check`,
compares the window with the model version's training reference
(:mod:`train_jobs.reference`):

- data quality per feature: missing rate (against the training share), share of
  numeric values outside the training range, share of categorical levels never
  seen in training;
- a sequential CUSUM per numeric feature (:mod:`controllers.detectors.cusum`) on
  every sampled row as it arrives, calibrated to ``sequential_false_alarms_per_10k``
  over all features: it accumulates exactly the rows since a change instead of
  a fixed window, so an abrupt shift alarms in fewer rows; an alarm marks the
  feature drifting for the next ``window_rows`` rows;
- drift per feature (:mod:`controllers.detectors.two_sample`), with a test made
  for the kind of feature: two-sample Kolmogorov–Smirnov, PSI on the reference's
  decile bins and the Wasserstein distance (in reference standard deviations) for
  numeric features; chi-squared goodness of fit and the Jensen–Shannon distance
  for categorical ones. The p-values of all features are corrected together
  (Benjamini–Hochberg), and a feature drifts only when its corrected p-value is
  below ``drift_alpha`` *and* its effect size (PSI or JS) passes the warn level,
  so a large window does not alarm on a shift too small to matter;
- drift on tensor features (images, signals), where per-element tests do not apply:
  a windowed MMD and per-coordinate CUSUMs on a projection fixed at training time
  (:mod:`controllers.detectors.tensor_drift`), fed with the rows a tally carries
  under ``"tensors"`` and built from the reference document's ``"tensors"``
  section; a model whose reference has none (every tabular one) runs none. Their
  findings mark the feature drifting for the next ``window_rows`` rows, as a CUSUM
  alarm does, and open the same ``drift`` incidents.

:class:`DataAlerts` turns checks into incidents that open once and close after
``clear_after`` clean checks in a row, and survives a controller restart through
its checkpoint (``to_dict``, read back by the constructor), so a restarted controller
does not raise the same alert twice. The alert vocabulary (:class:`AlertKind`,
:class:`AlertStatus`, :class:`Severity`, ...) is Enums whose values are the strings
stored in checkpoints and audit records.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
from scipy import stats

from controllers.detectors.cusum import Alarm, FeatureCusum, FeatureCusumConfig
from controllers.detectors.tensor_drift import TensorDriftMonitor, TensorFinding, tensor_monitors
from controllers.detectors.two_sample import categorical_drift, numeric_drift
from controllers.policies.diagnosis import onset_of
from raymedic.config import DataConfig
from raymedic.enums import StrEnum, plain
from raymedic.errors import DataError
from raymedic.logs import get_logger
from train_jobs.reference import FeatureReference, Reference
from train_jobs.schema import ModelSchema

__all__ = ["DataMonitor", "DataReport", "FeatureCheck", "DataAlerts", "DataAlert", "AlertKind", "AlertStatus",
           "AlertEvent", "Severity", "DriftLevel", "FeatureKind", "DATA_KINDS", "MODEL_KINDS", "PREDICTION_KINDS"]

log = get_logger(__name__)


class AlertKind(StrEnum):
    """What a data or model alert is about (the ``kind`` of its incident and audit records)."""

    MISSING_VALUES = "missing_values"
    OUT_OF_RANGE = "out_of_range"
    UNSEEN_LEVELS = "unseen_levels"
    DRIFT = "drift"
    ACCURACY_DECAY = "accuracy_decay"
    CONCEPT_DRIFT = "concept_drift"
    PREDICTION_DRIFT = "prediction_drift"
    DISK_SPACE = "disk_space"  # a filesystem the service writes to is (forecast to be) nearly full: controllers.disk
    NODE_PRESSURE = "node_pressure"  # a node under sustained memory or CPU pressure: controllers.nodes


class AlertStatus(StrEnum):
    """Where an alert is in its life: open until ``clear_after`` clean checks (or superseded), then cleared."""

    OPEN = "open"
    CLEARED = "cleared"


class AlertEvent(StrEnum):
    """What happened to an alert in one check: what the controller records and alerts on."""

    OPENED = "opened"
    ESCALATED = "escalated"
    CLEARED = "cleared"


class Severity(StrEnum):
    """How much an alert asks for: ``warn`` is recorded; ``act`` may start a retrain (the playbook decides)."""

    WARN = "warn"
    ACT = "act"


class DriftLevel(StrEnum):
    """A feature's drift verdict in one check: none, or the severity its effect size reached."""

    NONE = "none"
    WARN = "warn"
    ACT = "act"


class FeatureKind(StrEnum):
    """Which tests a feature gets: KS/PSI/Wasserstein (numeric), chi-squared/JS (categorical), MMD and
    per-coordinate CUSUMs on a projection (tensor)."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    TENSOR = "tensor"
    """A tensor feature: its missing rate in the per-feature checks; its drift through the tensor monitors
    (a PCA projection fitted at training, a calibrated MMD and per-coordinate CUSUMs), since per-element
    tests do not apply to hundreds of pixels."""


DATA_KINDS = frozenset({AlertKind.MISSING_VALUES.value, AlertKind.OUT_OF_RANGE.value,
                        AlertKind.UNSEEN_LEVELS.value, AlertKind.DRIFT.value})
"""Alerts on the inputs: opened and cleared by :meth:`DataAlerts.update` from a data check."""
MODEL_KINDS = frozenset({AlertKind.ACCURACY_DECAY.value, AlertKind.CONCEPT_DRIFT.value})
"""Alerts on the model's answers from labels: they may start a retrain."""
PREDICTION_KINDS = frozenset({AlertKind.PREDICTION_DRIFT.value})
"""Alerts on the ensemble's outputs alone: recorded and warned, never a retrain on their own (outputs move when
inputs move, and with no labels there is nothing to retrain towards)."""

CLOSED_ALERTS_KEPT = 200
"""Closed data alerts kept in memory (and in the checkpoint, which keeps the newest 200 already)."""
MIN_CUSUM_REFERENCE = 100
"""Training values a feature needs before its CUSUM can be standardized and calibrated."""
FED_KEPT = 512
"""Tallies remembered per CUSUM feature (first row index, arrival time): what dates a CUSUM's change estimate
(``moved_at``); a change older than that is dated at the oldest one kept (later than the truth, never earlier)."""
TENSOR_ACT_SCORE = 2.0
"""A tensor finding whose statistic is this many times its threshold acts (may retrain); weaker ones warn."""

def _feature_cusum(feature: FeatureReference, config: FeatureCusumConfig) -> FeatureCusum:
    """The feature's CUSUM against its whole training split when the reference kept its moments.

    The mean and sd of every training value (``moments``), measured on more rows than the stored sample,
    give the CUSUM a smaller reference-size discount and threshold: a smaller shift is caught sooner at the
    same false-alarm rate. A reference written before moments were kept falls back to its sample.
    """
    if feature.moments is not None and feature.moments[2] >= len(feature.sample) and feature.moments[1] > 0:
        mean, sd, count = feature.moments
        return FeatureCusum.from_moments(np.array([mean]), np.array([sd]), count, config)
    return FeatureCusum(np.asarray(feature.sample, dtype=float)[:, None], config)


@dataclass
class FeatureCheck:
    """One feature's figures over the window: quality shares, the drift test and its verdict.

    Only the figures its kind of feature has are set (None is left out of :meth:`to_dict`), so a
    report shows what was measured and nothing else.
    """

    name: str
    kind: FeatureKind
    rows: int
    missing_rate: float
    out_of_range: float | None = None  # numeric
    unseen: float | None = None  # categorical
    test: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    psi: float | None = None
    wasserstein_sd: float | None = None
    js: float | None = None
    drift: DriftLevel = DriftLevel.NONE
    sequential: str | None = None  # the CUSUM statistic that alarmed (mean_up, var_up, ...), if one did
    threshold: float | None = None  # tensor: what the statistic crossed
    component: str | None = None  # tensor: the projected coordinate whose CUSUM crossed (pc3, residual)
    moved_at: float | None = None  # when the rows the CUSUM dates its change to arrived (the drift's onset)
    breaches: list[AlertKind] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The figures set, floats rounded to 6 places, states as plain strings (for reports and evidence)."""
        return {k: (round(v, 6) if isinstance(v, float) else
                    [plain(x) for x in v] if isinstance(v, list) else plain(v))
                for k, v in asdict(self).items() if v is not None}


@dataclass
class DataReport:
    """One check of the window: every feature's figures, when, over how many rows, and how long it took."""

    at: float
    rows: int
    features: list[FeatureCheck]
    check_ms: float

    def to_dict(self) -> dict[str, Any]:
        """The report as the status page shows it (``data`` in the controller's status)."""
        return {"checked_at": self.at, "window_rows": self.rows, "check_ms": round(self.check_ms, 3),
                "features": {f.name: f.to_dict() for f in self.features}}


class DataMonitor:
    """Sliding window of gateway tallies, checked against the training reference.

    The window and the CUSUMs are fed on the controller's event loop (:meth:`add`); a check runs off
    it, on a copy (:meth:`window`, :meth:`sequential_hits`, then :meth:`check_window`), because the
    tests over a thousand rows and dozens of features take milliseconds the loop should not wait.
    """

    def __init__(self, schema: ModelSchema, reference: Reference | None, cfg: DataConfig, *,
                 tensors: Mapping[str, Any] | None = None) -> None:
        if reference is not None and [f.name for f in reference.features] != schema.feature_names:
            log.warning("the training reference has features %s, the schema %s: checking data quality only, "
                        "no drift tests, until a version trained on this schema serves",
                        [f.name for f in reference.features], schema.feature_names)
            reference = None  # a reference from another schema would compare the wrong columns
        self.schema, self.reference, self.cfg = schema, reference, cfg
        self._batches: deque[dict[str, Any]] = deque()
        self._rows = 0
        self._cusums: dict[str, FeatureCusum] = {}
        self._hits: dict[str, tuple[Alarm, int, float | None]] = {}  # feature → (latest alarm, rows seen, moved_at)
        numeric = [f for f in (reference.features if reference else ()) if f.numeric and f.sample is not None
                   and len(f.sample) >= MIN_CUSUM_REFERENCE]
        if cfg.sequential and numeric:
            seq = FeatureCusumConfig(false_alarms_per_10k=cfg.sequential_false_alarms_per_10k / len(numeric))
            self._cusums = {f.name: _feature_cusum(f, seq) for f in numeric}
        self._fed: dict[str, deque[tuple[int, float]]] = {name: deque(maxlen=FED_KEPT) for name in self._cusums}
        # The reference document's "tensors" section (absent for tabular models: no monitor, nothing runs).
        self._tensors: dict[str, TensorDriftMonitor] = tensor_monitors(tensors, cusum=cfg.sequential)
        self._tensor_hits: dict[str, TensorFinding] = {}

    @property
    def rows(self) -> int:
        """Rows in the window now (at most ``window_rows`` plus one tally)."""
        return self._rows

    def add(self, tally: Mapping[str, Any], now: float | None = None) -> None:
        """Take one gateway tally (arrived at ``now``, default the wall clock); forget the oldest ones beyond
        ``window_rows``."""
        n = int(tally.get("rows") or 0)
        if n <= 0:
            return
        at = time.time() if now is None else now
        self._batches.append(dict(tally))
        self._rows += n
        for name, cusum in self._cusums.items():
            values = np.asarray((tally.get("features", {}).get(name) or {}).get("values") or (), dtype=float)
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            self._fed[name].append((cusum.rows_seen, at))
            if cusum.update(values[:, None]).alarm:
                alarm = cusum.alarms[-1]
                self._hits[name] = (alarm, cusum.rows_seen, self._arrived(name, alarm.change_index))
        for name, rows in (tally.get("tensors") or {}).items():
            self.add_tensor_rows(name, rows)
        while self._batches and self._rows - int(self._batches[0]["rows"]) >= self.cfg.window_rows:
            self._rows -= int(self._batches.popleft()["rows"])

    def add_tensor_rows(self, feature: str, rows: Any) -> TensorFinding | None:
        """Feed one tensor feature's rows (nested lists or an array ``[n, *shape]``, in arrival order) to its
        monitor; returns its first finding. Rows of a feature the reference has no entry for are ignored, and
        rows that do not fit the training shape are logged and dropped (the gateway refuses those already)."""
        monitor = self._tensors.get(feature)
        if monitor is None or rows is None or len(rows) == 0:
            return None
        try:
            finding = monitor.update(rows)
        except DataError as exc:
            log.warning("tensor feature %s: %d rows dropped from the drift monitor: %s", feature, len(rows), exc)
            return None
        if monitor.findings:
            self._tensor_hits[feature] = monitor.findings[-1]
        return finding

    def _arrived(self, feature: str, row: int) -> float | None:
        """When the tally holding the CUSUM's row ``row`` of ``feature`` arrived (the oldest kept, if older)."""
        fed = self._fed[feature]
        for first, at in reversed(fed):
            if first <= row:
                return at
        return fed[0][1] if fed else None

    @property
    def tensor_monitors(self) -> dict[str, TensorDriftMonitor]:
        """The tensor features' monitors (empty for a tabular model), by feature."""
        return dict(self._tensors)

    def window(self) -> tuple[list[dict[str, Any]], int]:
        """A copy of the window (tallies, rows), to check off the thread that keeps adding."""
        return list(self._batches), self._rows

    def sequential_hits(self) -> dict[str, dict[str, Any]]:
        """Features whose CUSUM alarmed within the last ``window_rows`` sampled rows (a copy)."""
        out = {}
        for name, (alarm, seen, moved_at) in list(self._hits.items()):
            if self._cusums[name].rows_seen - seen > self.cfg.window_rows:
                del self._hits[name]
                continue
            out[name] = {"cusum": alarm.statistic, "rows_after_change": seen - alarm.change_index,
                         "rows_seen": seen, "moved_at": moved_at}
        for name, finding in list(self._tensor_hits.items()):
            if self._tensors[name].rows_seen - finding.row > self.cfg.window_rows:
                del self._tensor_hits[name]
                continue
            out[name] = {"tensor": True, **finding.to_dict(),
                         "rows_after_change": finding.rows_seen - finding.change_row}
        return out

    def check(self, now: float | None = None) -> DataReport | None:
        """Figures for every feature, or None while the window holds fewer than ``min_rows`` rows."""
        return self.check_window(*self.window(), now=now, hits=self.sequential_hits())

    def check_window(self, batches: list[dict[str, Any]], total: int, now: float | None = None,
                     hits: Mapping[str, Mapping[str, Any]] | None = None) -> DataReport | None:
        """:meth:`check` over a copy taken with :meth:`window` (and :meth:`sequential_hits`)."""
        if total < self.cfg.min_rows:
            return None
        t0 = time.perf_counter()
        c = self.cfg
        refs = {f.name: f for f in self.reference.features} if self.reference else {}
        checks: list[FeatureCheck] = []
        for f in self.schema.features:
            parts = [b["features"].get(f.name) or {} for b in batches]
            rows = total
            missing = sum(int(p.get("missing", 0)) for p in parts)
            present = max(rows - missing, 0)
            kind = (FeatureKind.TENSOR if f.tensor else FeatureKind.NUMERIC if f.numeric
                    else FeatureKind.CATEGORICAL)
            fc = FeatureCheck(name=f.name, kind=kind, rows=rows, missing_rate=missing / rows)
            if fc.missing_rate > f.missing_share + c.missing_rate_max:
                fc.breaches.append(AlertKind.MISSING_VALUES)
            ref = refs.get(f.name)
            if f.tensor:
                pass  # no per-element drift or range test (see FeatureKind.TENSOR)
            elif f.numeric:
                out = sum(int(p.get("out_of_range", 0)) for p in parts)
                fc.out_of_range = out / present if present else 0.0
                if fc.out_of_range > c.out_of_range_max:
                    fc.breaches.append(AlertKind.OUT_OF_RANGE)
                values = np.fromiter((v for p in parts for v in p.get("values", ())), dtype=float)
                if ref is not None and len(values) >= 20 and len(ref.sample) >= 20:
                    for k, v in numeric_drift(ref.sample, values).items():
                        setattr(fc, k, v)
            else:
                unseen = sum(int(p.get("unseen", 0)) for p in parts)
                fc.unseen = unseen / present if present else 0.0
                if fc.unseen > c.unseen_max:
                    fc.breaches.append(AlertKind.UNSEEN_LEVELS)
                width = len(f.levels or ()) + 1
                counts = np.zeros(width)
                for p in parts:
                    pc = p.get("counts")
                    if pc is not None and len(pc) == width:
                        counts += np.asarray(pc, dtype=float)
                if ref is not None and counts.sum() >= 20 and len(ref.counts) == width:
                    for k, v in categorical_drift(ref.probabilities, counts).items():
                        setattr(fc, k, v)
            checks.append(fc)
        tested = [fc for fc in checks if fc.p_value is not None]
        if tested:
            adjusted = stats.false_discovery_control([fc.p_value for fc in tested], method="bh")
            for fc, pa in zip(tested, adjusted):
                fc.p_adjusted = float(pa)
                effect, warn, act = ((fc.psi, c.psi_warn, c.psi_act) if fc.kind == FeatureKind.NUMERIC
                                     else (fc.js, c.js_warn, c.js_act))
                if fc.p_adjusted < c.drift_alpha and effect is not None and effect >= warn:
                    fc.drift = DriftLevel.ACT if effect >= act else DriftLevel.WARN
                    fc.breaches.append(AlertKind.DRIFT)
        for fc in checks:  # a sequential alarm: drifting, whatever the window tests say yet
            hit = (hits or {}).get(fc.name)
            if hit is None or hit.get("tensor"):
                continue
            fc.sequential = str(hit["cusum"])
            fc.moved_at = hit.get("moved_at")
            if fc.drift == DriftLevel.NONE:
                fc.drift = DriftLevel.ACT if (fc.psi or 0.0) >= c.psi_act else DriftLevel.WARN
                fc.breaches.append(AlertKind.DRIFT)
        checks += _tensor_checks(checks, hits or {}, total)
        return DataReport(at=time.time() if now is None else now, rows=total, features=checks,
                          check_ms=(time.perf_counter() - t0) * 1000)


def _tensor_checks(checks: list[FeatureCheck], hits: Mapping[str, Mapping[str, Any]],
                   total: int) -> list[FeatureCheck]:
    """Tensor findings as feature checks: the schema's check of the feature when it has one, else a new one
    (returned, to append). A finding marks the feature drifting; ``act`` from :data:`TENSOR_ACT_SCORE` up."""
    by_name = {fc.name: fc for fc in checks}
    new: list[FeatureCheck] = []
    for name, hit in hits.items():
        if not hit.get("tensor"):
            continue
        fc = by_name.get(name)
        if fc is None:
            fc = FeatureCheck(name=name, kind=FeatureKind.TENSOR, rows=total, missing_rate=0.0)
            new.append(fc)
        fc.kind, fc.test, fc.statistic = FeatureKind.TENSOR, str(hit["test"]), float(hit["value"])
        fc.threshold, fc.component = float(hit["threshold"]), hit.get("coordinate")
        fc.sequential = f"{hit['test']}:{hit['statistic']}"
        fc.drift = DriftLevel.ACT if float(hit["score"]) >= TENSOR_ACT_SCORE else DriftLevel.WARN
        if AlertKind.DRIFT not in fc.breaches:
            fc.breaches.append(AlertKind.DRIFT)
    return new


@dataclass
class DataAlert:
    """An open (or closed) data incident: one kind of problem on one feature.

    ``kind``, ``status`` and ``severity`` hold the plain string values of :class:`AlertKind`,
    :class:`AlertStatus` and :class:`Severity` (they compare equal to the members): an alert travels
    in checkpoints and audit records, and one restored from an older checkpoint keeps what it stored.
    Only :class:`DataAlerts` changes an alert.
    """

    id: str
    kind: str  # an AlertKind
    feature: str  # the feature; for the model-level kinds the source ("ensemble")
    detected_at: float
    evidence: dict[str, Any]
    status: str = AlertStatus.OPEN.value
    severity: str = Severity.WARN.value  # act: drift whose effect size reached the act level, or a model kind
    recovered_at: float | None = None
    clean_checks: int = 0

    def __post_init__(self) -> None:
        self.kind, self.status, self.severity = plain(self.kind), plain(self.status), plain(self.severity)

    def _clear(self, at: float) -> None:
        self.status, self.recovered_at = AlertStatus.CLEARED.value, at

    @property
    def time_to_detect_s(self) -> float | None:
        """From the onset its evidence dates (:func:`controllers.policies.diagnosis.onset_of`: a CUSUM's change,
        a node's first pressured reading) to the detection; None where nothing dates the onset."""
        onset = onset_of(self.kind, self.evidence)
        return None if onset is None else max(0.0, self.detected_at - onset)

    @property
    def time_to_recover_s(self) -> float | None:
        """From the onset its evidence dates (the detection where nothing does) to the clearing (None while
        open): the replica incidents' rule, so every incident's time to recover includes its detection."""
        if self.recovered_at is None:
            return None
        onset = onset_of(self.kind, self.evidence)
        return self.recovered_at - (self.detected_at if onset is None else min(onset, self.detected_at))

    def to_dict(self) -> dict[str, Any]:
        """The alert as an incident of the status page (the replica incidents' fields, ``action`` warn)."""
        d = asdict(self)
        d.pop("clean_checks")
        if self.kind not in DATA_KINDS:
            d["feature"] = None
        onset = onset_of(self.kind, self.evidence)
        d.update(member=None, replica=None, target=self.feature, action="warn", first_evidence_at=onset,
                 time_to_detect_s=None if onset is None else round(max(0.0, self.detected_at - onset), 3),
                 time_to_recover_s=None if self.time_to_recover_s is None else round(self.time_to_recover_s, 3))
        return d


def _evidence(fc: FeatureCheck, kind: AlertKind, cfg: DataConfig) -> dict[str, Any]:
    """What an alert of ``kind`` on ``fc`` records: the figure that breached and its limit, or the drift test."""
    base = {"window_rows": fc.rows}
    if kind == AlertKind.MISSING_VALUES:
        return {**base, "missing_rate": round(fc.missing_rate, 4), "limit": cfg.missing_rate_max}
    if kind == AlertKind.OUT_OF_RANGE:
        return {**base, "out_of_range": round(fc.out_of_range or 0.0, 4), "limit": cfg.out_of_range_max}
    if kind == AlertKind.UNSEEN_LEVELS:
        return {**base, "unseen": round(fc.unseen or 0.0, 4), "limit": cfg.unseen_max}
    return {**base, **{k: v for k, v in fc.to_dict().items()
                       if k in ("test", "statistic", "p_value", "p_adjusted", "psi", "wasserstein_sd", "js", "drift",
                                "sequential", "threshold", "component", "moved_at")}}


class DataAlerts:
    """Incidents from data checks: opened once, cleared after ``clear_after`` clean checks.

    One alert per (kind, target) while open, so a breach that persists over many checks is one
    incident, not one per check; a restarted controller rebuilds them from :meth:`to_dict` and does
    not raise the same alert twice. Events are ``(AlertEvent value, alert)`` pairs the controller
    records and alerts on.
    """

    def __init__(self, cfg: DataConfig, data: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self._alerts: list[DataAlert] = []
        self._seq = 0
        if data:
            self._seq = int(data.get("seq", 0))
            names = DataAlert.__dataclass_fields__.keys()
            self._alerts = [DataAlert(**{k: v for k, v in a.items() if k in names}) for a in data.get("alerts", ())]

    def _trim(self) -> None:
        """Keep every open alert and the newest closed ones (:data:`CLOSED_ALERTS_KEPT`): closed alerts
        are history, which the audit keeps; in memory they only grow."""
        closed = [a for a in self._alerts if a.status != AlertStatus.OPEN]
        if len(closed) > CLOSED_ALERTS_KEPT:
            drop = {id(a) for a in closed[:len(closed) - CLOSED_ALERTS_KEPT]}
            self._alerts = [a for a in self._alerts if id(a) not in drop]

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint: the alert counter and the latest 200 alerts (older ones are in the audit log)."""
        return {"seq": self._seq, "alerts": [asdict(a) for a in self._alerts[-200:]]}

    @property
    def alerts(self) -> list[DataAlert]:
        """Every alert kept, open and cleared, oldest first (a copy)."""
        return list(self._alerts)

    def open(self) -> list[DataAlert]:
        """The alerts still open: what the playbook may act on and the status page counts."""
        return [a for a in self._alerts if a.status == AlertStatus.OPEN]

    def supersede(self, kinds: frozenset[str], at: float, why: str) -> list[tuple[str, DataAlert]]:
        """Clear the open alerts of ``kinds`` because what they judged was replaced (new model
        versions serve, with their own reference): a decay measured on the old champions must not
        retrain the new ones."""
        events: list[tuple[str, DataAlert]] = []
        for alert in self.open():
            if alert.kind in kinds:
                alert._clear(at)
                alert.evidence = {**(alert.evidence or {}), "cleared_by": why}
                events.append((AlertEvent.CLEARED.value, alert))
        return events

    def update(self, report: DataReport) -> list[tuple[str, DataAlert]]:
        """Apply one data check; returns ("opened"|"escalated"|"cleared", alert) events to record."""
        current = {(kind, fc.name): (fc.drift if kind == AlertKind.DRIFT else Severity.WARN,
                                     _evidence(fc, kind, self.cfg))
                   for fc in report.features for kind in fc.breaches}
        return self.apply(current, report.at, kinds=DATA_KINDS)

    def apply(self, current: Mapping[tuple[str, str], tuple[str, dict[str, Any]]], at: float, *,
              kinds: frozenset[str]) -> list[tuple[str, DataAlert]]:
        """Open/escalate the (kind, target) breaches in ``current``; count clean checks for the
        open alerts of ``kinds`` that are not in it (other kinds are checked elsewhere)."""
        events: list[tuple[str, DataAlert]] = []
        by_key = {(a.kind, a.feature): a for a in self.open() if a.kind in kinds}
        for key, (sev, evidence) in current.items():
            kind, target = key
            alert = by_key.get(key)
            if alert is None:
                self._seq += 1
                alert = DataAlert(id=f"d{self._seq:04d}", kind=kind, feature=target, detected_at=at,
                                  evidence=evidence, severity=sev)
                self._alerts.append(alert)
                self._trim()
                events.append((AlertEvent.OPENED.value, alert))
            else:
                alert.clean_checks = 0
                if sev == Severity.ACT and alert.severity != Severity.ACT:
                    alert.severity, alert.evidence = Severity.ACT.value, evidence
                    events.append((AlertEvent.ESCALATED.value, alert))
                elif evidence.get("change_at") is not None and (alert.evidence or {}).get("change_at") is None:
                    # The change dated after the alert opened (the CUSUM found its start): what a retrain
                    # since the change needs; the rest of the opening evidence stands.
                    alert.evidence = {**(alert.evidence or {}), "change_at": evidence["change_at"]}
        for key, alert in by_key.items():
            if key in current:
                continue
            alert.clean_checks += 1
            if alert.clean_checks >= self.cfg.clear_after:
                alert._clear(at)
                events.append((AlertEvent.CLEARED.value, alert))
        return events
