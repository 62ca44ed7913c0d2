"""The model phase of the step: data quality, drift and performance checks, then the model playbook.

Every ``data.check_period_s`` the controller checks the window of rows the
gateways sampled (quality, drift) and the labelled answers (accuracy, concept
drift, prediction drift). Alerts are recorded and exported; the ones that can
justify a retrain (material drift, accuracy decay, concept drift) become the
playbook's triggers, and the model healer advances the playbook (retrain, trial,
promotion, probation). The statistics run in a worker thread: the loop keeps
probing and healing replicas meanwhile.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Callable

from controllers.audit import AuditLog
from controllers.checkpoint import Checkpoint
from controllers.deployment import Deployment
from controllers.models.healer import ModelHealer
from controllers.monitors.data import MODEL_KINDS, PREDICTION_KINDS, DataAlerts, DataReport
from controllers.monitors.performance import PerformanceMonitor, PerformanceReport
from controllers.policies.playbook import Trigger
from controllers.policies.replica import HealingPolicy, IncidentStatus
from controllers.recorder import Recorder
from controllers.series import drift_distribution

__all__ = ["ModelChecks", "RETRAIN_KINDS"]

RETRAIN_KINDS = MODEL_KINDS | {"drift"}
"""Alert kinds that may trigger a retrain (drift only at severity ``act``: the playbook decides)."""


LABEL_RATE_WINDOW_S = 300.0
"""The window the label rate is read over: minutes, so a trial's length does not jump with every burst."""


class ModelChecks:
    """Runs the data and model checks on their period and hands the open alerts to the model healer.

    Args:
        deployment: The deployment now (its data monitor).
        policy: The replica policy (paused means no model action either; its open incidents count).
        data_alerts: Open and closed data and model alerts (checkpointed).
        performance: The accuracy and drift monitors on labelled answers (checkpointed).
        healer: Carries out the playbook.
        recorder: Audit, metrics and alerts.
        checkpoint: Written when anything changed.
        audit: Flushed with the checkpoint.
        on_drift: Takes the before/after distributions of each feature whose drift alert opened or escalated
            (the report's pictures; :func:`controllers.series.drift_distribution` rows).

    Attributes:
        data_report: The latest data-quality and drift report (None before enough rows).
        performance_report: The latest performance report.
    """

    def __init__(self, *, deployment: Callable[[], Deployment], policy: HealingPolicy, data_alerts: DataAlerts,
                 performance: PerformanceMonitor, healer: ModelHealer, recorder: Recorder, checkpoint: Checkpoint,
                 audit: AuditLog, on_drift: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self._deployment = deployment
        self._policy = policy
        self._alerts = data_alerts
        self._perf = performance
        self._healer = healer
        self._recorder = recorder
        self._checkpoint = checkpoint
        self._audit = audit
        self._on_drift = on_drift
        self._last = -math.inf
        self.data_report: DataReport | None = None
        self.performance_report: PerformanceReport | None = None

    def due(self, now: float) -> bool:
        """Whether the checks are due at ``now`` (then they count as run: one run per period)."""
        if now - self._last < self._deployment().cfg.data.check_period_s:
            return False
        self._last = now
        return True

    def soon(self) -> None:
        """Run the checks (and so the playbook) on the next step: an operator asked for a retrain."""
        self._last = -math.inf

    async def run(self, now: float) -> None:
        """Check, record and export; advance the playbook; checkpoint if anything changed."""
        events: list[tuple[str, Any]] = []
        monitor = self._deployment().monitor
        if monitor is not None:
            batches, rows = monitor.window()
            report = await asyncio.to_thread(monitor.check_window, batches, rows, now, monitor.sequential_hits())
            if report is not None:
                self.data_report = report
                opened = self._alerts.update(report)
                events += opened
                self._record_drift(monitor, batches, opened, now)
        perf = await asyncio.to_thread(self._perf.check, now)
        self.performance_report = perf
        events += self._alerts.apply(perf.breaches, now, kinds=MODEL_KINDS | PREDICTION_KINDS)
        open_now = sum(i.status == IncidentStatus.OPEN for i in self._policy.incidents) + len(self._alerts.open())
        self._recorder.checks(self.data_report, self.performance_report, open_incidents=open_now)
        self._recorder.data_alerts(events)
        if await self._heal_model(now) or events:
            await asyncio.to_thread(self._checkpoint.save)
            await asyncio.to_thread(self._audit.flush)

    def _record_drift(self, monitor: Any, batches: list[dict[str, Any]], events: list[tuple[str, Any]],
                      now: float) -> None:
        """Hand the training vs window distributions of each feature whose drift alert just opened or
        escalated to ``on_drift`` (what the window held at detection: later windows have moved on)."""
        if self._on_drift is None or monitor.reference is None:
            return
        refs = {f.name: f for f in monitor.reference.features}
        rows = []
        for event, alert in events:
            ref = refs.get(alert.feature)
            if alert.kind != "drift" or event not in ("opened", "escalated") or ref is None or ref.tensor:
                continue
            parts = [(b.get("features") or {}).get(alert.feature) or {} for b in batches]
            evidence = {"alert": alert.id, "event": event, **(alert.evidence or {})}
            if ref.numeric:
                values = [v for p in parts for v in p.get("values", ())]
                row = drift_distribution(feature=alert.feature, at=now, reference=ref.sample, window=values,
                                         evidence=evidence)
            else:
                spec = next((f for f in monitor.schema.features if f.name == alert.feature), None)
                counts = [p["counts"] for p in parts if p.get("counts") is not None]
                width = len(ref.counts) if ref.counts is not None else 0
                total = [sum(c[i] for c in counts if len(c) == width) for i in range(width)]
                row = drift_distribution(feature=alert.feature, at=now, levels=list(spec.levels or ()) if spec else [],
                                         reference_probabilities=ref.probabilities.tolist(), window_counts=total,
                                         evidence=evidence)
            if row is not None:
                rows.append(row)
        if rows:
            self._on_drift(rows)

    async def _heal_model(self, now: float) -> bool:
        """The model-level playbook: retrain on material drift or decay, promote what passes the gate."""
        if self._policy.paused:
            return False
        triggers = [Trigger(a.id, a.kind, a.feature, a.severity, since=(a.evidence or {}).get("change_at"))
                    for a in self._alerts.open() if a.kind in RETRAIN_KINDS]
        sources = self.performance_report.sources if self.performance_report else {}
        live = {m: (float(v["accuracy"]), int(v["labels"])) for m, v in sources.items()}
        # After a dated change, only the labels since then count towards a retrain worth running.
        since = max((t.since for t in triggers if t.since is not None), default=None)
        labels = self._perf.labels() if since is None else self._perf.labels_since(since)
        # Labels per second of late (a trial's length follows it): answers of the window that got their label.
        label_rate = self._perf.labels_since(now - LABEL_RATE_WINDOW_S) / LABEL_RATE_WINDOW_S
        return await self._healer.step(now, triggers, labels, live, label_rate=label_rate or None)
