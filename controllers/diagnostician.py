"""Every incident's diagnosis, from the controller's own parts (the pure rules: :mod:`controllers.policies.diagnosis`).

The status document and the audit read the diagnosis from here: :meth:`Diagnostician.run`
gathers the incidents (replica incidents and data, model, node and disk alerts), the
node keeper's readings and lost nodes, the latest performance report and the audit's
recent promotions and load events into plain data and runs
:func:`~controllers.policies.diagnosis.diagnose`. Nothing is stored: a diagnosis is
recomputed from the evidence whenever it is asked for, so it sharpens as the evidence
comes in (the first replica of a lost node is diagnosed before the node is known lost;
its recovery record carries the group), and a restarted controller diagnoses its
checkpointed incidents again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controllers.audit import AuditLog
from controllers.monitors.data import DataAlerts
from controllers.monitors.performance import PerformanceReport
from controllers.nodes import NodeKeeper
from controllers.policies.diagnosis import (
    Diagnoses,
    IncidentGroup,
    IncidentView,
    diagnose,
    signals_from,
)
from controllers.policies.replica import HealingPolicy
from raymedic.config import ControllerConfig
from raymedic.logs import get_logger

__all__ = ["RECORDS_READ", "Diagnostician"]

log = get_logger(__name__)

RECORDS_READ = 200
"""Recent audit records read for promotions and load events (the status's own tail)."""


class Diagnostician:
    """Diagnoses one model's incidents on demand.

    Args:
        policy: The replica incidents.
        data_alerts: The data, model, node and disk incidents.
        audit: Its tail holds the recent promotions and load events.
        cfg: The controller config now (the diagnosis window and horizon).
        performance: The latest performance report (each member's live accuracy).
        nodes: The node keeper (None on a model whose controller does not run it).
    """

    def __init__(self, *, policy: HealingPolicy, data_alerts: DataAlerts, audit: AuditLog,
                 cfg: Callable[[], ControllerConfig], performance: Callable[[], PerformanceReport | None],
                 nodes: Callable[[], NodeKeeper | None]) -> None:
        self._policy = policy
        self._alerts = data_alerts
        self._audit = audit
        self._cfg = cfg
        self._performance = performance
        self._nodes = nodes

    def incidents(self) -> list[dict[str, Any]]:
        """Every incident kept, status form, oldest detection first."""
        return sorted([i.to_dict() for i in self._policy.incidents] + [a.to_dict() for a in self._alerts.alerts],
                      key=lambda d: d["detected_at"])

    def run(self, incidents: list[dict[str, Any]] | None = None) -> Diagnoses:
        """The diagnosis of ``incidents`` (default: every incident kept)."""
        incidents = self.incidents() if incidents is None else incidents
        keeper = self._nodes()
        perf = self._performance()
        signals = signals_from(nodes=keeper.report() if keeper is not None else None,
                               lost=dict(keeper.lost) if keeper is not None else None,
                               alerts=[a.to_dict() for a in self._alerts.alerts],
                               performance=perf.to_dict() if perf is not None else None,
                               records=self._audit.tail(RECORDS_READ))
        cfg = self._cfg()
        return diagnose([IncidentView.from_status(d) for d in incidents], signals,
                        window_s=cfg.diagnosis_window_s, horizon_s=cfg.diagnosis_horizon_s)

    def recent_groups(self, now: float) -> tuple[IncidentGroup, ...]:
        """The groups among the incidents detected within the diagnosis horizon and window before ``now``: what
        a group record can be due for (:class:`~controllers.policies.group_audit.GroupAudit`). Older incidents
        can no longer join a group or gain a cause, so they are not diagnosed again each time."""
        cfg = self._cfg()
        since = now - cfg.diagnosis_horizon_s - cfg.diagnosis_window_s
        recent = [d for d in self.incidents() if d["detected_at"] >= since]
        return self.run(recent).groups if recent else ()

    def fields(self, incident_id: str) -> dict[str, Any]:
        """What an incident's audit records carry: its cause, class, confidence, evidence, and its group and
        the group's effects (``{}`` when the incident is unknown or the diagnosis fails: recording goes on)."""
        try:
            incidents = self.incidents()
            at = next((d["detected_at"] for d in incidents if d["id"] == incident_id), None)
            if at is None:
                return {}
            cfg = self._cfg()
            since = at - cfg.diagnosis_horizon_s - cfg.diagnosis_window_s  # what can explain it, nothing older
            out = self.run([d for d in incidents if d["detected_at"] >= since])
            diag = out.of(incident_id)
            if diag is None:
                return {}
            group = out.group_of(incident_id)
            return {**diag.fields(), **({"effects": list(group.effects), "group_cause_incident": group.cause_incident}
                                        if group is not None else {})}
        except Exception:
            log.exception("could not diagnose incident %s; it is recorded without a cause", incident_id)
            return {}
