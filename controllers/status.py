"""The controller's status document: what ``/v1/status`` shows under ``controller`` and
``raymedic status`` prints.

Its keys and their meaning are a contract with the gateway and the CLI. It is
built from plain data only (no Enum members, no objects of ours), because it
travels to the gateway in a Ray call and the gateway must read it without
importing the healing layer.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Mapping, Sequence

from controllers.alerts import WebhookNotifier
from controllers.audit import AuditLog
from controllers.deployment import Deployment
from controllers.diagnostician import Diagnostician
from controllers.models.healer import ModelHealer
from controllers.monitors.data import DataAlerts, DataReport
from controllers.monitors.performance import PerformanceReport
from controllers.policies.replica import HealingPolicy, StepResult
from controllers.publish import ControlState

__all__ = ["ACTION_KINDS", "KEPT", "SCALING_KINDS", "status_document"]

ACTION_KINDS = (
    "restart", "drained", "standby-serves", "quarantine", "unquarantine", "suppressed", "pause", "resume", "proposed", "approved",
    "rejected", "mode", "retrain-submitted", "retrain-submit-failed", "retrain-finished", "promote",
    "rollback", "trial-started", "trial-promote", "trial-reject", "trial-finished", "trial-abandoned",
    "trial-requested", "compact", "compact-started", "disk-proposal-withdrawn", "gpu-node-drain", "evict",
    "drain-node", "node-drained", "node-drain-failed", "node-pressure-no-room", "node-pressure-no-move")
"""Audit kinds listed under ``actions``: what the controller (or an operator) did, not what it saw."""
KEPT = 50
"""Incidents, data alerts and actions shown (the newest)."""
SCALING_KINDS = ("scale-out", "scale-in", "scaled", "scale-at-max", "slo-breach", "slo-restored")
"""Audit kinds of Serve's scaling as the controller observed it (:mod:`controllers.policies.scaling`)."""
SCALING_KEPT = 10


def status_document(*, policy: HealingPolicy, healer: ModelHealer, data_alerts: DataAlerts, audit: AuditLog,
                    control: ControlState, deployment: Deployment, webhook: WebhookNotifier | None,
                    last: StepResult | None, gateways: Collection[str], step_ms: Sequence[float],
                    data_report: DataReport | None, performance_report: PerformanceReport | None,
                    process: Mapping[str, Any], disk: Mapping[str, Any] | None = None,
                    disk_proposals: Sequence[Mapping[str, Any]] = (),
                    slo_breached: Sequence[str] = (), gpu: Mapping[str, Any] | None = None,
                    vitals: Mapping[str, Mapping[str, Any]] | None = None,
                    nodes: Mapping[str, Any] | None = None,
                    diagnostician: Diagnostician | None = None) -> dict[str, Any]:
    """The status document.

    Args:
        process: ``pid``, ``started_at`` and ``resumed_from_checkpoint`` of this controller process.
        disk: The disk keeper's report (filesystems, the logs' size, verdict, last compaction).
        disk_proposals: Compactions and node drains waiting for an operator (approval mode), listed with the
            restarts.
        nodes: The node keeper's report (each node's memory and CPU readings, verdict and phase; None: this
            model's controller does not run it).
        slo_breached: Gateways whose p99 is above ``gateway.latency_slo_ms`` now.
        vitals: Each replica's latest process vitals (:class:`controllers.monitors.vitals.VitalsBoard`).
        gpu: The GPU signals (:meth:`controllers.reconcile.Reconciler.gpu_report`): per GPU replica its
            latest reading, per node its health and the faults counted; ``{"gpu": "none"}`` without GPUs.
        step_ms: Recent durations of the decide phase (the policy step and the weights), in ms:
            ``step_ms_p50`` is their median, the figure ``raymedic bench controller-step`` measures.
        diagnostician: Each incident's cause (``cause``, ``cause_class``, ``confidence``, ``cause_evidence``,
            ``group``, ``effects`` and the node, feature or members named, added to its entry) and the
            ``incident_groups`` (incidents that share a cause). None: no diagnosis fields.
        Others: the controller's parts, read as they are now.
    """
    incidents = sorted([i.to_dict() for i in policy.incidents][-KEPT:]
                       + [a.to_dict() for a in data_alerts.alerts][-KEPT:], key=lambda d: d["detected_at"])
    groups: list[dict[str, Any]] = []
    if diagnostician is not None:
        diagnoses = diagnostician.run()  # over every incident kept: a group may reach past the ones shown
        for d in incidents:
            diag = diagnoses.of(d["id"])
            if diag is not None:
                d.update(diag.fields())
                group = diagnoses.group_of(d["id"])
                if group is not None:
                    d["effects"] = list(group.effects)
        groups = [g.to_dict() for g in sorted(diagnoses.groups, key=lambda g: g.detected_at)][-KEPT:]
    tail = audit.tail(200)
    actions = [r for r in tail if r.get("kind") in ACTION_KINDS][-KEPT:]
    scaling = [r for r in tail if r.get("kind") in SCALING_KINDS][-SCALING_KEPT:]
    steps = sorted(step_ms)
    monitor = deployment.monitor
    return {
        "state": "paused" if policy.paused else "running",
        "mode": str(policy.mode),
        "retraining": healer.status(),
        "proposals": [{"incident": i.id, "target": f"{i.member}/{i.replica}", "fault": str(i.kind),
                       "action": "restart", "detected_at": i.detected_at} for i in policy.proposals()]
        + [dict(p) for p in disk_proposals],
        "webhook": webhook.stats() if webhook else None,
        "pid": process["pid"],
        "started_at": process["started_at"],
        "resumed_from_checkpoint": process["resumed_from_checkpoint"],
        "epoch": control.epoch,
        "weights": dict(control.weights),
        "quarantined": policy.quarantined,
        "avoid": {k: list(v) for k, v in control.avoid.items()},
        "standby": {k: list(v) for k, v in control.standby.items()},
        "healthy": {k: list(v) for k, v in (last.healthy if last else {}).items()},
        "memory": policy.memory_report(),
        "vitals": {rid: dict(v) for rid, v in (vitals or {}).items()},
        "disk": dict(disk) if disk is not None else {"verdict": "unknown"},
        "gpu": dict(gpu) if gpu is not None else {"gpu": "none"},
        "nodes": dict(nodes) if nodes is not None else None,
        "scaling": {"slo_breached": list(slo_breached), "slo_ms": deployment.cfg.gateway.latency_slo_ms,
                    "recent": scaling},
        "gateways": sorted(gateways),
        "step_ms_p50": round(steps[len(steps) // 2], 3) if steps else None,
        "incidents": incidents,
        "incident_groups": groups,
        "actions": actions,
        "data": {**(data_report.to_dict() if data_report else
                    {"window_rows": monitor.rows if monitor else 0,
                     "note": f"no verdict before {deployment.cfg.data.min_rows} rows"}),
                 "drift_tests": monitor is not None and monitor.reference is not None,
                 # rows each tensor feature's drift monitor has read (a sample when traffic outruns the gateways' cap)
                 "tensor_rows": {name: m.rows_seen for name, m in (monitor.tensor_monitors if monitor else {}).items()},
                 "alerts": [a.to_dict() for a in data_alerts.open()]},
        "performance": {**(performance_report.to_dict() if performance_report else {}),
                        "reference_accuracy": deployment.reference_accuracy},
    }
