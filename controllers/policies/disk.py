"""Disk filling under ``storage_path`` (and Ray's session directory): compact, rotate, alert (pure: no Ray).

A full disk takes a service down quietly: the prediction log stops being written,
checkpoints and audit files fail, Ray's own logs stop, and a node whose disk is full
is marked unusable by Ray. The signal is each filesystem's free bytes, read every
``controller.disk_period_s``, and the size of the prediction log. The rule:

- **compact** (merge each hour's small Parquet parts into one file, drop prediction rows
  past ``data.prediction_log_retention_h`` that have no label) when the log holds at
  least ``controller.disk_compact_small_files`` small parts, or when the free share
  of ``storage_path``'s filesystem is under ``controller.disk_compact_free_fraction``;
- **alert** when a filesystem's free share is under ``controller.disk_alert_free_fraction``
  (the hard floor), or when its free bytes fall steadily — a Theil-Sen slope over the
  last ``controller.disk_window_s``, negative at 95 % confidence, not two readings —
  and the forecast reaches that floor within ``controller.disk_horizon_s``.

:class:`DiskWatch` turns the verdict into at most one compaction at a time, with a
cooldown, nothing while paused, and a proposal an operator approves first in
approval mode (as replica restarts are).

>>> s = DiskSettings(compact_free_fraction=0.15, alert_free_fraction=0.05, horizon_s=600.0, window_s=300.0,
...                  min_samples=5, compact_small_files=100, cooldown_s=60.0)
>>> falling = [DiskSample(float(t), 100e9 - 0.1e9 * t, 1000e9) for t in range(0, 300, 30)]  # 100 MB/s down
>>> a = assess_disk(DiskObservation(now=270.0, storage=falling[-1], log_small_files=3), falling, (), s)
>>> a.verdict, round(a.storage_time_to_floor_s)
(<DiskVerdict.ALERT: 'alert'>, 230)
>>> steady = [DiskSample(float(t), 500e9, 1000e9) for t in range(0, 300, 30)]
>>> assess_disk(DiskObservation(now=270.0, storage=steady[-1], log_small_files=3), steady, (), s).verdict
<DiskVerdict.OK: 'ok'>
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import theilslopes

from raymedic.config import ControllerConfig
from raymedic.enums import StrEnum

__all__ = ["Approval", "CompactRequest", "DiskAssessment", "DiskObservation", "DiskSample", "DiskSeries",
           "DiskSettings", "DiskStep", "DiskVerdict", "DiskWatch", "assess_disk", "time_to_floor"]

SAMPLES_KEPT = 360
"""Disk readings remembered per filesystem (three hours at one every 30 s): bounded whatever the window."""
SLOPE_CONFIDENCE = 0.95
"""The fall must be real at this confidence (the upper bound of the slope's interval below zero)."""


class DiskVerdict(StrEnum):
    """What the disk rule says now (``verdict`` in the status's ``disk``)."""

    OK = "ok"
    COMPACT = "compact"  # the log is worth compacting (many small files, or free space getting short)
    ALERT = "alert"  # under the hard floor, or forecast to reach it within the horizon (compacting too)


class Approval(StrEnum):
    """An approval-mode compaction proposal's answer."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class DiskSample(NamedTuple):
    """One reading of a filesystem: when (Unix s), free bytes (for an unprivileged writer) and its size."""

    ts: float
    free_bytes: float
    total_bytes: float


@dataclass(frozen=True)
class DiskSettings:
    """The rule's thresholds (from ``controller.disk_*``)."""

    compact_free_fraction: float
    alert_free_fraction: float
    horizon_s: float
    window_s: float
    min_samples: int
    compact_small_files: int
    cooldown_s: float

    @classmethod
    def from_config(cls, c: ControllerConfig) -> DiskSettings:
        return cls(compact_free_fraction=c.disk_compact_free_fraction, alert_free_fraction=c.disk_alert_free_fraction,
                   horizon_s=c.disk_horizon_s, window_s=c.disk_window_s, min_samples=c.disk_min_samples,
                   compact_small_files=c.disk_compact_small_files, cooldown_s=c.disk_compact_cooldown_s)


@dataclass(frozen=True)
class DiskObservation:
    """One period's readings.

    Attributes:
        now: When they were taken.
        storage: ``storage_path``'s filesystem (None: unknown, e.g. an ``s3://`` URI or a failed read).
        ray_dir: The Ray session directory's filesystem on the controller's node (None: unknown).
        log_files, log_small_files, log_bytes: The prediction and feedback logs' Parquet parts.
    """

    now: float
    storage: DiskSample | None = None
    ray_dir: DiskSample | None = None
    log_files: int = 0
    log_small_files: int = 0
    log_bytes: int = 0


class DiskSeries:
    """The recent readings of each filesystem (``"storage"``, ``"ray_dir"``), bounded."""

    def __init__(self, *, kept: int = SAMPLES_KEPT) -> None:
        self._kept = kept
        self._by: dict[str, deque[DiskSample]] = {}

    def add(self, where: str, sample: DiskSample | None) -> None:
        if sample is not None:
            self._by.setdefault(where, deque(maxlen=self._kept)).append(sample)

    def window(self, where: str, *, now: float, window_s: float) -> tuple[DiskSample, ...]:
        """Readings of ``where`` in the last ``window_s`` seconds, oldest first."""
        return tuple(s for s in self._by.get(where, ()) if now - s.ts <= window_s)


def time_to_floor(samples: Sequence[DiskSample], *, floor_bytes: float, min_samples: int) -> float | None:
    """Seconds until free space reaches ``floor_bytes`` at its steady rate of fall, or None when it does not
    fall steadily (too few samples, a slope whose interval reaches zero or above).

    >>> time_to_floor([DiskSample(float(t), 10e9 - 1e6 * t, 100e9) for t in range(10)], floor_bytes=5e9,
    ...               min_samples=5)
    4991.0
    """
    if len(samples) < max(min_samples, 3):
        return None
    ts = np.array([s.ts for s in samples], dtype=float)
    ys = np.array([s.free_bytes for s in samples], dtype=float)
    if np.ptp(ts) <= 0:
        return None
    res = theilslopes(ys, ts, alpha=SLOPE_CONFIDENCE)
    if not res.high_slope < 0:
        return None
    fitted_now = res.intercept + res.slope * ts[-1]
    if fitted_now <= floor_bytes:
        return 0.0
    return float((fitted_now - floor_bytes) / -res.slope)


@dataclass(frozen=True)
class DiskAssessment:
    """The verdict and why (the reasons are plain sentences an operator reads in status and the audit)."""

    verdict: DiskVerdict
    compact_reasons: tuple[str, ...] = ()
    alert_reasons: dict[str, str] = field(default_factory=dict)
    storage_time_to_floor_s: float | None = None
    ray_dir_time_to_floor_s: float | None = None


def _fraction(s: DiskSample) -> float:
    return s.free_bytes / s.total_bytes if s.total_bytes > 0 else 1.0


def assess_disk(obs: DiskObservation, storage_window: Sequence[DiskSample], ray_window: Sequence[DiskSample],
                s: DiskSettings) -> DiskAssessment:
    """The verdict on one observation and the filesystems' recent readings (oldest first)."""
    compact: list[str] = []
    alerts: dict[str, str] = {}
    if obs.log_small_files >= s.compact_small_files:
        compact.append(f"the logs hold {obs.log_small_files} small parts (compact at {s.compact_small_files})")
    ttf: dict[str, float | None] = {}
    for where, sample, window in (("storage", obs.storage, storage_window), ("ray_dir", obs.ray_dir, ray_window)):
        if sample is None:
            ttf[where] = None
            continue
        free = _fraction(sample)
        floor = s.alert_free_fraction * sample.total_bytes
        ttf[where] = time_to_floor(window, floor_bytes=floor, min_samples=s.min_samples)
        if where == "storage" and free < s.compact_free_fraction:
            compact.append(f"{free:.1%} of storage_path's filesystem is free (compact under "
                           f"{s.compact_free_fraction:.0%})")
        if free < s.alert_free_fraction:
            alerts[where] = f"{free:.1%} free, under the floor of {s.alert_free_fraction:.0%}"
        elif ttf[where] is not None and ttf[where] <= s.horizon_s:
            alerts[where] = (f"{free:.1%} free and falling: the floor of {s.alert_free_fraction:.0%} is forecast "
                             f"in {ttf[where]:.0f} s (horizon {s.horizon_s:.0f} s)")
    if "storage" in alerts and not compact:
        compact.append("storage_path's filesystem is short of space: " + alerts["storage"])
    verdict = DiskVerdict.ALERT if alerts else DiskVerdict.COMPACT if compact else DiskVerdict.OK
    return DiskAssessment(verdict, tuple(compact), alerts, ttf["storage"], ttf["ray_dir"])


@dataclass(frozen=True)
class CompactRequest:
    """Compact the logs now: a deterministic id (audited before and after) and why."""

    action_id: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class DiskStep:
    """What :meth:`DiskWatch.step` decided: at most one compaction, and the events to audit.

    ``events`` are ``(kind, evidence, action, outcome)``.
    """

    compact: CompactRequest | None = None
    events: tuple[tuple[str, dict[str, Any], str, str], ...] = ()


class DiskWatch:
    """The compaction's memory: one at a time, a cooldown between two, paused, proposed in approval mode.

    Invariant: only :meth:`step`, :meth:`decide` and :meth:`done` change it.

    Args:
        settings: The thresholds.
        memory: What :meth:`to_dict` saved (a restarted controller keeps its cooldown and proposal).
    """

    def __init__(self, settings: DiskSettings, memory: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        m = dict(memory or {})
        self.seq = int(m.get("seq", 0))
        self.last_compact_at = float(m.get("last_compact_at", -math.inf) or -math.inf)
        self.proposal: dict[str, Any] | None = m.get("proposal")
        self.running: str | None = None
        self._suppressed = False

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "proposal": self.proposal,
                "last_compact_at": None if math.isinf(self.last_compact_at) else self.last_compact_at}

    def _request(self, reasons: tuple[str, ...], now: float) -> CompactRequest:
        self.seq += 1
        self.running = f"compact-{self.seq:06d}"
        self.last_compact_at = now
        return CompactRequest(self.running, reasons)

    def step(self, a: DiskAssessment, *, now: float, paused: bool, approval: bool) -> DiskStep:
        """The compaction ``a`` calls for, if any may run now."""
        events: list[tuple[str, dict[str, Any], str, str]] = []
        reasons = a.compact_reasons
        if not reasons:
            self._suppressed = False
            if self.proposal is not None and self.proposal["approval"] == Approval.PENDING:
                events.append(("disk-proposal-withdrawn", {"proposal": self.proposal["id"],
                                                           "why": "no longer needed"}, "compact", "withdrawn"))
                self.proposal = None
            return DiskStep(events=tuple(events))
        if self.running is not None or now - self.last_compact_at < self.settings.cooldown_s:
            return DiskStep()
        if paused:
            if not self._suppressed:
                self._suppressed = True
                events.append(("suppressed", {"reasons": list(reasons)}, "compact", "paused by operator"))
            return DiskStep(events=tuple(events))
        self._suppressed = False
        if approval:
            p = self.proposal
            if p is None:
                self.seq += 1
                self.proposal = {"id": f"disk-{self.seq:06d}", "reasons": list(reasons), "proposed_at": now,
                                 "approval": Approval.PENDING.value}
                return DiskStep(events=(("proposed", {"proposal": self.proposal["id"], "reasons": list(reasons)},
                                         "compact", "waiting for an operator"),))
            if p["approval"] != Approval.APPROVED:
                return DiskStep()
            self.proposal = None
        return DiskStep(compact=self._request(reasons, now))

    def decide(self, proposal_id: str, approve: bool, who: str, now: float) -> tuple[str, dict[str, Any], str, str]:
        """An operator's answer to the pending proposal (the audit event).

        Raises:
            KeyError: no such proposal.
            ValueError: it was already answered.
        """
        p = self.proposal
        if p is None or p["id"] != proposal_id:
            raise KeyError(proposal_id)
        if p["approval"] != Approval.PENDING:
            raise ValueError(f"proposal {proposal_id} was already {p['approval']}")
        if approve:
            p["approval"] = Approval.APPROVED.value
            return ("approved", {"proposal": proposal_id, "by": who}, "compact", "approved")
        self.proposal = None
        self.last_compact_at = now  # not asked again before the cooldown
        return ("rejected", {"proposal": proposal_id, "by": who}, "compact", "rejected")

    def done(self, action_id: str) -> None:
        """The compaction ``action_id`` finished (whatever came of it)."""
        if self.running == action_id:
            self.running = None

    def pending(self) -> dict[str, Any] | None:
        """The proposal waiting for an operator, if any."""
        p = self.proposal
        return p if p is not None and p["approval"] == Approval.PENDING else None
