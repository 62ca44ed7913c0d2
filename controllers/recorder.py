"""The record phase: every event the controller saw or caused goes to the audit trail, the metrics and
(for the events an operator must hear about) the webhook.

One place decides what each kind of event becomes, so the audit fields, the
metric labels and the alerts stay consistent whichever part of the controller
produced the event (the replica policy, the model healer, the data monitors).
Recording never raises into the loop: metrics swallow their own errors, and a
webhook alert is only queued.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from controllers.alerts import WebhookNotifier
from controllers.audit import AuditLog
from controllers.monitors.data import DataReport
from controllers.monitors.performance import PerformanceReport
from controllers.policies.group_audit import GROUP_RECORD_KIND, GroupRecord
from controllers.policies.replica import AuditEvent, Incident
from controllers.policies.weights_audit import WeightsAudit, WeightsAuditConfig, WeightsRecord
from raymedic import metrics
from raymedic.config import ControllerConfig
from raymedic.logs import get_logger

__all__ = ["Recorder", "ALERTED"]

log = get_logger(__name__)

ALERTED = ("proposed", "approved", "rejected", "recovered", "recovery-failed")
"""Incident events sent to the webhook besides every ``detected-*``: what an operator acts on."""
DIAGNOSED = ("recovered", "recovery-failed")
"""Incident events whose audit record carries the incident's diagnosis besides every ``detected-*``
(:mod:`controllers.diagnostician`): the detection's cause as known then, the recovery's with its group."""


class Recorder:
    """Audit, metrics and alerts for one model's controller.

    Args:
        audit: The audit trail.
        model: The model's name (every record and metric label carries it).
        incident_of: The policy's incident with a given id (None if unknown), for incident fields.
        clock: Wall-clock time for the alerts' timestamps.

        weights_audit: Which weights publications are recorded (default: the shipped thresholds).

    Attributes:
        webhook: The operator's webhook (None: no alerts); replaced when a reload changes its URL.
        weights_audit: Its ``cfg`` is replaced when a reload changes the thresholds.
        diagnosis: An incident id's diagnosis fields (``cause``, ``cause_class``, ``confidence``, ``group``,
            ``effects``, ...; :meth:`controllers.diagnostician.Diagnostician.fields`), added to its detection
            and recovery records and the ``cause`` label of their metrics (None: no diagnosis).
    """

    def __init__(self, audit: AuditLog, model: str, *, incident_of: Callable[[str], Incident | None],
                 webhook: WebhookNotifier | None = None, clock: Callable[[], float] = time.time,
                 weights_audit: WeightsAudit | None = None) -> None:
        self.audit = audit
        self.model = model
        self.webhook = webhook
        self.weights_audit = weights_audit or WeightsAudit(WeightsAuditConfig.from_settings(ControllerConfig()))
        self._incident_of = incident_of
        self._clock = clock
        self.diagnosis: Callable[[str], dict[str, Any]] | None = None

    def _diagnosis(self, incident: str | None) -> dict[str, Any]:
        if incident is None or self.diagnosis is None:
            return {}
        try:
            return self.diagnosis(incident)
        except Exception:  # a diagnosis is an extra: the record is written without it
            log.exception("could not diagnose incident %s", incident)
            return {}

    def alert(self, event: str, target: str, incident: str | None, evidence: Any, *, ts: float | None = None,
              **extra: Any) -> None:
        """One webhook alert (if configured); never blocks or raises into the loop."""
        if self.webhook is None:
            return
        try:
            self.webhook.notify({"source": "raymedic", "model": self.model, "event": event, "target": target,
                                 "incident": incident, "evidence": evidence,
                                 "ts": self._clock() if ts is None else ts, **extra})
        except Exception:
            log.exception("could not queue a webhook alert")

    def event(self, ev: AuditEvent, *, ts: float | None = None, **extra: Any) -> None:
        """A replica-policy event: audited with its incident's fields, counted, alerted if it matters.

        ``ts``: when it was decided (the record's time; default now).
        """
        fields: dict[str, Any] = {"incident": ev.incident, **extra}
        if ev.kind.startswith("detected-") or ev.kind in ALERTED:
            self.alert(ev.kind, ev.target, ev.incident, ev.evidence, ts=ts, outcome=ev.outcome)
        if ev.action:
            metrics.inc("raymedic_healing_actions_total", model=self.model, action=ev.kind,
                        outcome=metrics.outcome_label(ev.outcome))
        if ev.kind == "slo-restored" and ev.evidence.get("breached_s") is not None:
            # A load episode is audited, not an incident (it opens none): its time to recover is the breach's length.
            metrics.observe("raymedic_incident_recover_seconds", ev.evidence["breached_s"], model=self.model,
                            kind="slo-breach", cause="overload")
        if ev.incident:
            inc = self._incident_of(ev.incident)
            if inc is not None:
                detected = ev.kind.startswith("detected-")
                diagnosis = self._diagnosis(inc.id) if detected or ev.kind in DIAGNOSED else {}
                cause = diagnosis.get("cause", "unknown")
                if detected:
                    metrics.inc("raymedic_incidents_total", model=self.model, kind=inc.kind)
                    metrics.observe("raymedic_incident_detect_seconds", inc.time_to_detect_s, model=self.model,
                                    kind=inc.kind, cause=cause)
                elif ev.kind == "recovered" and inc.time_to_recover_s is not None:
                    metrics.observe("raymedic_incident_recover_seconds", inc.time_to_recover_s,
                                    model=self.model, kind=inc.kind, cause=cause)
                fields.update(detected_at=inc.detected_at, recovered_at=inc.recovered_at,
                              first_evidence_at=inc.first_evidence_at, fault=inc.kind, **diagnosis)
                if inc.node_id:
                    fields["node_id"] = inc.node_id
        self.audit.record(ev.kind, ev.target, evidence=ev.evidence, action=ev.action, outcome=ev.outcome, ts=ts,
                          **fields)

    def group(self, rec: GroupRecord, *, ts: float | None = None) -> None:
        """A group of incidents formed or grew (:class:`~controllers.policies.group_audit.GroupAudit` decides
        which): one ``incident-group`` record naming the shared cause and every incident it explains, and an
        alert, so the operator hears "these are one fault" once rather than reading it off each incident."""
        self.audit.record(GROUP_RECORD_KIND, rec.target, evidence=rec.evidence, action="group",
                          outcome=str(rec.change), ts=ts, **rec.fields())
        self.alert(GROUP_RECORD_KIND, rec.target, rec.group.id, rec.evidence, ts=ts, outcome=str(rec.change))

    def model_action(self, kind: str, target: str, *, evidence: Any, action: str, outcome: str,
                     incident: str | None = None, **extra: Any) -> None:
        """A model-level action (retrain, trial, promotion, rollback): audited, counted, alerted."""
        self.audit.record(kind, target, evidence=evidence, action=action, outcome=outcome, incident=incident,
                          **extra)
        metrics.inc("raymedic_healing_actions_total", model=self.model, action=kind,
                    outcome=metrics.outcome_label(outcome))
        self.alert(kind, target, incident, evidence, outcome=outcome)

    def data_alerts(self, events: Iterable[tuple[str, Any]]) -> None:
        """Data and model-quality alerts opened or cleared (``(what, alert)`` pairs): warned, not acted on
        here (the playbook decides whether one is worth a retrain)."""
        for what, alert in events:
            self.alert(f"data-{alert.kind}-{what}", alert.feature, alert.id, alert.evidence,
                       severity=alert.severity)
            diagnosis = self._diagnosis(alert.id) if what in ("opened", "cleared") else {}
            cause = diagnosis.get("cause", "unknown")
            ttd, ttr = alert.time_to_detect_s, alert.time_to_recover_s
            if what == "opened":
                metrics.inc("raymedic_incidents_total", model=self.model, kind=alert.kind)
                if ttd is not None:
                    metrics.observe("raymedic_incident_detect_seconds", ttd, model=self.model, kind=alert.kind,
                                    cause=cause)
            elif what == "cleared" and ttr is not None:
                metrics.observe("raymedic_incident_recover_seconds", ttr, model=self.model, kind=alert.kind,
                                cause=cause)
            self.audit.record(f"data-{alert.kind}", alert.feature, evidence=alert.evidence, action="warn",
                              outcome=what, incident=alert.id, severity=alert.severity,
                              detected_at=alert.detected_at, recovered_at=alert.recovered_at,
                              first_evidence_at=alert.to_dict()["first_evidence_at"],
                              time_to_detect_s=None if ttd is None else round(ttd, 3),
                              time_to_recover_s=None if ttr is None else round(ttr, 3), **diagnosis)

    def published(self, weights: dict[str, float], avoid: dict[str, tuple[str, ...]], *, epoch: int,
                  announce: bool, ts: float | None = None) -> None:
        """New weights and routing went out: weight gauges for every publication, and a ``weights`` audit
        record when :class:`~controllers.policies.weights_audit.WeightsAudit` finds the move material (never
        for the first after a start, which restates the checkpoint)."""
        for member, w in weights.items():
            metrics.set_gauge("raymedic_member_weight", w, model=self.model, member=member)
        now = self._clock() if ts is None else ts
        self._weights_record(self.weights_audit.offer(weights, avoid, epoch=epoch, now=now, announce=announce),
                             now)

    def weights_due(self, ts: float | None = None) -> None:
        """Record the latest weights if a material move was held back by the interval and it has passed
        (each record step: the trail ends at the weights that serve even when no publication follows)."""
        now = self._clock() if ts is None else ts
        self._weights_record(self.weights_audit.due(now), now)

    def _weights_record(self, rec: WeightsRecord | None, ts: float) -> None:
        if rec is None:
            return
        self.audit.record("weights", self.model,
                          evidence={"avoid": rec.avoid, "reason": rec.reason, "max_change": round(rec.max_change, 4),
                                    "publications": rec.publications},
                          action="publish", outcome="ok", ts=ts, weights=rec.weights, epoch=rec.epoch)

    def checks(self, data: DataReport | None, performance: PerformanceReport | None, *, open_incidents: int) -> None:
        """Gauges for dashboards: drift and quality per feature, accuracy per source, open incidents."""
        m = self.model
        if data is not None:
            for f in data.features:
                metrics.set_gauge("raymedic_feature_missing_rate", f.missing_rate, model=m, feature=f.name)
                if f.psi is not None:
                    metrics.set_gauge("raymedic_drift_psi", f.psi, model=m, feature=f.name)
                if f.js is not None:
                    metrics.set_gauge("raymedic_drift_js", f.js, model=m, feature=f.name)
                if f.p_adjusted is not None:
                    metrics.set_gauge("raymedic_drift_p_adjusted", f.p_adjusted, model=m, feature=f.name)
        if performance is not None:
            for source, v in performance.sources.items():
                metrics.set_gauge("raymedic_accuracy", v["accuracy"], model=m, source=source)
            if performance.estimate:
                metrics.set_gauge("raymedic_estimated_accuracy", performance.estimate["accuracy"], model=m)
            for output, check in ((performance.prediction or {}).get("outputs") or {}).items():
                metrics.set_gauge("raymedic_prediction_psi", check["psi"], model=m, output=output)
        metrics.set_gauge("raymedic_open_incidents", open_incidents, model=m)
