"""The disk keeper: watches the filesystems the service writes to and compacts the logs before they fill.

Every ``controller.disk_period_s`` (its own task on the controller's event loop, so a
slow listing or a long compaction never delays replica healing):

- **observe** (in a worker thread): ``psutil.disk_usage`` of ``storage_path`` (a local
  directory; a ``://`` URI's free space is unknown, never an error) and of Ray's session
  directory on the controller's node, and the size of the prediction and feedback logs;
- **decide**: :func:`controllers.policies.disk.assess_disk` and :class:`DiskWatch`
  (pure): compact or not, alert or not;
- **act** (in a worker thread): :func:`train_jobs.compaction.compact_log`; its intent is
  audited before it runs and its outcome after (``compact``, with what it merged,
  dropped and freed), counted in ``raymedic_healing_actions_total``;
- **record**: a ``disk_space`` incident opened or cleared through the data-alert path
  (status ``incidents``, the audit, the webhook), gauges, the status's ``disk``.

Paused (``raymedic pause``) it observes and alerts but compacts nothing; in approval
mode a compaction is proposed (``disk-NNNNNN`` in status ``proposals``) and runs once
``raymedic approve`` says so.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Callable, Mapping

import psutil
import ray

from controllers.audit import AuditLog, compact_audit
from controllers.checkpoint import Checkpoint
from controllers.monitors.data import AlertKind, DataAlerts
from controllers.periodic import Periodic
from controllers.policies.disk import (DiskAssessment, DiskObservation, DiskSample, DiskSeries, DiskSettings,
                                       DiskWatch, assess_disk)
from controllers.policies.replica import ControlMode, HealingPolicy
from controllers.recorder import Recorder
from raymedic import metrics
from raymedic.config import RaymedicConfig
from raymedic.logs import get_logger
from raymedic.storage import Storage
from train_jobs.compaction import LogStats, compact_log, log_stats

__all__ = ["DISK_KINDS", "DiskKeeper", "DiskObserver", "ray_session_dir"]

log = get_logger(__name__)

DISK_KINDS = frozenset({AlertKind.DISK_SPACE.value})
"""The alert kinds the disk keeper opens and clears (no other check touches them)."""
TARGETS = {"storage": "storage_path", "ray_dir": "ray_session_dir"}
"""Filesystem → the incident's target (its ``feature`` field)."""


def ray_session_dir() -> str | None:
    """This node's Ray session directory (where Ray's logs grow), or None outside Ray."""
    try:
        node = ray._private.worker.global_worker.node  # no public API names the session directory
        return node.get_session_dir_path() if node is not None else None
    except Exception:
        return None


def _usage(path: str | None) -> DiskSample | None:
    if not path:
        return None
    try:
        u = psutil.disk_usage(path)
    except OSError:
        return None
    return DiskSample(time.time(), float(u.free), float(u.total))


class DiskObserver:
    """Reads the filesystems and the logs' size (blocking: run it in a thread).

    Args:
        storage: The service's storage.
        model: Whose logs.
        ray_dir: Ray's session directory (default: this process's node's).
    """

    def __init__(self, storage: Storage, model: str, *, ray_dir: Callable[[], str | None] = ray_session_dir) -> None:
        self._storage = storage
        self._model = model
        self._ray_dir = ray_dir
        self.logs: dict[str, LogStats] = {}

    @property
    def storage_path(self) -> str | None:
        """The local directory of ``storage_path`` (None for a URI: its free space is unknown)."""
        p = self._storage.local_path("")
        return str(p) if p is not None else None

    def read(self, now: float) -> DiskObservation:
        try:
            self.logs = log_stats(self._storage, self._model)
        except Exception:
            log.exception("could not list the prediction log of %s; counting it as empty this period", self._model)
            self.logs = {}
        return DiskObservation(now=now, storage=_usage(self.storage_path), ray_dir=_usage(self._ray_dir()),
                               log_files=sum(s.files for s in self.logs.values()),
                               log_small_files=sum(s.small_files for s in self.logs.values()),
                               log_bytes=sum(s.bytes for s in self.logs.values()))


def _volume(sample: DiskSample | None, path: str | None, ttf: float | None) -> dict[str, Any]:
    if sample is None:
        return {"path": path, "state": "unknown"}
    return {"path": path, "free_bytes": int(sample.free_bytes), "total_bytes": int(sample.total_bytes),
            "free_fraction": round(sample.free_bytes / sample.total_bytes, 4) if sample.total_bytes else None,
            "time_to_floor_s": None if ttf is None else round(ttf, 1)}


AUDIT_MERGE_EVERY_S = 3600.0
"""How often the audit's files older than an hour are merged (if there are enough of them)."""


class DiskKeeper:
    """One model's disk watch, on its own period (see the module).

    Args:
        storage: The service's storage.
        model: The model (its logs, metric labels).
        cfg: The deployed config now.
        policy: The replica policy (``paused``, approval mode): one switch for every action.
        data_alerts: Where the ``disk_space`` incidents live (checkpointed, shown, alerted with the others).
        recorder: Audit, metrics and webhook.
        audit: Flushed after each period that recorded something.
        checkpoint: Marked dirty when the watch's memory changed.
        memory: The watch's memory from the checkpoint.
        observer: Reads the disks (default: the real one).
        clock: Wall-clock time.
    """

    def __init__(self, *, storage: Storage, model: str, cfg: Callable[[], RaymedicConfig], policy: HealingPolicy,
                 data_alerts: DataAlerts, recorder: Recorder, audit: AuditLog, checkpoint: Checkpoint | None = None,
                 memory: Mapping[str, Any] | None = None, observer: DiskObserver | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._model = model
        self._cfg = cfg
        self._policy = policy
        self._alerts = data_alerts
        self._recorder = recorder
        self._audit = audit
        self._checkpoint = checkpoint
        self._observer = observer or DiskObserver(storage, model)
        self._clock = clock
        self.watch = DiskWatch(DiskSettings.from_config(cfg().controller), memory)
        self._series = DiskSeries()
        self._periodic = Periodic(self.check, lambda: self._cfg().controller.disk_period_s,
                                  what=f"disk check for model {model}")
        self.last_obs: DiskObservation | None = None
        self.last: DiskAssessment | None = None
        self.last_compaction: dict[str, Any] | None = None
        self._audit_merged_at = float("-inf")

    def to_dict(self) -> dict[str, Any]:
        """The watch's memory, for the checkpoint."""
        return self.watch.to_dict()

    # ---- the period -----------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the period's task on the running event loop (no-op outside one, or when it runs)."""
        self._periodic.ensure_running()

    def stop(self) -> None:
        """Stop watching (the model is no longer served)."""
        self._periodic.stop()

    async def check(self) -> DiskAssessment:
        """One period: observe, decide, act, record."""
        cfg = self._cfg()
        self.watch.settings = settings = DiskSettings.from_config(cfg.controller)
        now = self._clock()
        obs = await asyncio.to_thread(self._observer.read, now)
        self.last_obs = obs
        self._series.add("storage", obs.storage)
        self._series.add("ray_dir", obs.ray_dir)
        a = assess_disk(obs, self._series.window("storage", now=now, window_s=settings.window_s),
                        self._series.window("ray_dir", now=now, window_s=settings.window_s), settings)
        self.last = a
        self._export(obs, a)
        recorded = self._record_alerts(a, now)
        step = self.watch.step(a, now=now, paused=self._policy.paused,
                               approval=self._policy.mode == ControlMode.APPROVE)
        for kind, evidence, action, outcome in step.events:
            self._recorder.model_action(kind, self._target, evidence=evidence, action=action, outcome=outcome)
            recorded = True
        if step.events and self._checkpoint is not None:
            self._checkpoint.mark_dirty()
        if step.compact is not None:
            await self._compact(step.compact.action_id, list(step.compact.reasons), cfg)
            recorded = True
        if not self._policy.paused and now - self._audit_merged_at >= AUDIT_MERGE_EVERY_S:
            self._audit_merged_at = now
            recorded |= await self._merge_audit(now)
        if recorded:
            await asyncio.to_thread(self._audit.flush)
        return a

    async def _merge_audit(self, now: float) -> bool:
        """Merge the audit's old files (one per step that recorded something) so they stay few; whether it
        recorded that it did."""
        try:
            done = await asyncio.to_thread(compact_audit, self._storage, self._model, now=now)
        except Exception as exc:  # the audit stays readable as it is; the next hour tries again
            log.warning("could not merge the audit files of model %s: %s", self._model, exc)
            return False
        if not done.merged_files:
            return False
        # Audited, not alerted: housekeeping that changes no record, once an hour at most.
        self._audit.record("audit-compacted", f"{self._model}/audit", evidence={
            "merged_files": done.merged_files, "records": done.records, "into": done.into},
            action="compact", outcome="ok")
        return True

    @property
    def _target(self) -> str:
        return f"{self._model}/prediction-log"

    async def _compact(self, action_id: str, reasons: list[str], cfg: RaymedicConfig) -> None:
        retention_s = cfg.data.prediction_log_retention_h * 3600.0
        # Intent first: a controller killed mid-compaction leaves this record (the compaction is idempotent).
        self._audit.record("compact-started", self._target, evidence={"reasons": reasons,
                                                                      "retention_h": cfg.data.prediction_log_retention_h},
                           action="compact", outcome="started", action_id=action_id)
        await asyncio.to_thread(self._audit.flush)
        t0 = time.monotonic()
        try:
            labelled_days = cfg.data.labelled_retention_days
            report = await asyncio.to_thread(compact_log, self._storage, self._model, retention_s=retention_s,
                                             labelled_retention_s=None if labelled_days is None
                                             else labelled_days * 86400.0)
            evidence = {"reasons": reasons, **report.to_dict()}
            outcome = "ok" if not report.failed else f"partial: {len(report.failed)} folder(s) failed"
        except Exception as exc:
            log.exception("compaction of %s's logs failed; the logs stay as they were", self._model)
            evidence, outcome = {"reasons": reasons, "error": f"{type(exc).__name__}: {exc}"}, f"failed: {exc}"
        finally:
            self.watch.done(action_id)
        try:  # the status shows the logs as compaction left them, not as the period found them
            self._observer.logs = await asyncio.to_thread(log_stats, self._storage, self._model)
        except Exception:
            log.exception("could not list the logs of %s after compacting them", self._model)
        evidence["duration_s"] = round(time.monotonic() - t0, 3)
        self.last_compaction = {"id": action_id, "at": self._clock(), "outcome": outcome, **evidence}
        self._recorder.model_action("compact", self._target, evidence=evidence, action="compact", outcome=outcome,
                                    action_id=action_id)
        if self._checkpoint is not None:
            self._checkpoint.mark_dirty()

    def _record_alerts(self, a: DiskAssessment, now: float) -> bool:
        obs = self.last_obs
        current = {}
        for where, why in a.alert_reasons.items():
            sample = getattr(obs, where) if obs is not None else None
            current[(AlertKind.DISK_SPACE.value, TARGETS[where])] = (
                "act", {"why": why, "free_bytes": int(sample.free_bytes) if sample else None,
                        "total_bytes": int(sample.total_bytes) if sample else None,
                        "time_to_floor_s": a.storage_time_to_floor_s if where == "storage" else a.ray_dir_time_to_floor_s})
        events = self._alerts.apply(current, now, kinds=DISK_KINDS)
        if events:
            self._recorder.data_alerts(events)
            if self._checkpoint is not None:
                self._checkpoint.mark_dirty()
        return bool(events)

    def _export(self, obs: DiskObservation, a: DiskAssessment) -> None:
        m = self._model
        for volume, sample, ttf in (("storage", obs.storage, a.storage_time_to_floor_s),
                                    ("ray_dir", obs.ray_dir, a.ray_dir_time_to_floor_s)):
            if sample is None:
                continue
            metrics.set_gauge("raymedic_disk_free_bytes", sample.free_bytes, model=m, volume=volume)
            if sample.total_bytes:
                metrics.set_gauge("raymedic_disk_free_ratio", sample.free_bytes / sample.total_bytes, model=m,
                                  volume=volume)
            metrics.set_gauge("raymedic_disk_time_to_floor_seconds", -1.0 if ttf is None else ttf, model=m,
                              volume=volume)
        for name, s in self._observer.logs.items():
            metrics.set_gauge("raymedic_prediction_log_bytes", s.bytes, model=m, log=name)
            metrics.set_gauge("raymedic_prediction_log_files", s.files, model=m, log=name)

    # ---- the operator ---------------------------------------------------------------------

    def owns(self, proposal_id: str) -> bool:
        """Whether ``proposal_id`` names one of this keeper's proposals (``disk-NNNNNN``)."""
        return proposal_id.startswith("disk-")

    async def decide(self, proposal_id: str, approve: bool, who: str = "operator") -> dict[str, Any]:
        """An operator's answer to a compaction proposal (``{"error", "status"}`` when there is none)."""
        try:
            kind, evidence, action, outcome = self.watch.decide(proposal_id, approve, who, self._clock())
        except KeyError:
            pending = self.watch.pending()
            return {"error": f"no disk proposal {proposal_id!r}; pending: {[pending['id']] if pending else []}",
                    "status": 404}
        except ValueError as exc:
            return {"error": f"{exc}; `raymedic status` lists the pending proposals", "status": 409}
        self._recorder.model_action(kind, self._target, evidence=evidence, action=action, outcome=outcome)
        if self._checkpoint is not None:
            self._checkpoint.mark_dirty()
            await asyncio.to_thread(self._checkpoint.save)
        await asyncio.to_thread(self._audit.flush)
        if approve:
            asyncio.get_running_loop().create_task(self.check())  # run it now, not a period later
        return {"incident": proposal_id, "approval": "approved" if approve else "rejected"}

    # ---- status ---------------------------------------------------------------------------

    def proposals(self) -> list[dict[str, Any]]:
        """The pending compaction proposal, in the status's ``proposals`` form."""
        p = self.watch.pending()
        if p is None:
            return []
        return [{"incident": p["id"], "target": self._target, "fault": "disk", "action": "compact",
                 "detected_at": p["proposed_at"], "reasons": p["reasons"]}]

    def report(self) -> dict[str, Any]:
        """The status's ``disk``: both filesystems, the logs' size, the verdict and the last compaction."""
        obs, a = self.last_obs, self.last
        if obs is None or a is None:
            return {"verdict": "unknown", "note": "no disk reading yet"}
        w = self.watch
        return {
            "verdict": str(a.verdict),
            "reasons": list(a.compact_reasons) + [f"{TARGETS[k]}: {v}" for k, v in a.alert_reasons.items()],
            "checked_at": obs.now,
            "storage": _volume(obs.storage, self._observer.storage_path or self._storage.uri,
                               a.storage_time_to_floor_s),
            "ray_dir": _volume(obs.ray_dir, ray_session_dir(), a.ray_dir_time_to_floor_s),
            "prediction_log": {name: s.to_dict() for name, s in self._observer.logs.items()},
            "compacting": w.running,
            "last_compaction": self.last_compaction,
            "next_compaction_after": None if math.isinf(w.last_compact_at)
            else w.last_compact_at + w.settings.cooldown_s,
        }
