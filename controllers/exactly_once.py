"""Whether an audit trail shows every action done exactly once and every record there (pure: no Ray).

A controller killed at the worst moment and restarted by Ray must neither repeat an
action nor lose its record. The audit trail is where both show, so the check reads
only audit records (``raymedic audit --json``, :func:`controllers.audit.read_audit`):
the kill tests and ``raymedic bench durability`` run it after the service settled.

Duplicates (:func:`duplicate_actions`): the same thing acted on twice —

- two ``restart`` (or ``await-replacement``) records for one incident;
- two ``retrain-submitted`` records for one retrain intent (its record id), or for one Ray job;
- two successful ``promote`` records of one version of one member;
- two ``detected-*`` records for one incident (one detection audited twice).

Missing records (:func:`missing_records`):

- an incident acted on or closed (``restart``, ``await-replacement``, ``recovered``, ...) with no
  ``detected-*`` record;
- a detection with no outcome (``recovered``, ``recovery-failed``, ``rejected``) — only meaningful once
  the service had time to recover, so the caller checks after it settled;
- a ``recovered`` record whose action was a restart with no ``restart`` record;
- a ``retrain-finished`` with no ``retrain-submitted``, or a submitted job with no ``retrain-finished``;
- a trial that finished with a promotion and no ``promote`` record.

>>> recs = [{"kind": "detected-hung", "incident": "inc-1"}, {"kind": "restart", "incident": "inc-1"},
...         {"kind": "restart", "incident": "inc-1"}, {"kind": "recovered", "incident": "inc-1", "action": "restart"}]
>>> [(d.action, d.key, d.count) for d in duplicate_actions(recs)]
[('restart', 'inc-1', 2)]
>>> missing_records(recs)
[]
>>> exactly_once(recs[:1]).missing[0].what
'outcome'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Duplicate", "ExactlyOnce", "Missing", "duplicate_actions", "exactly_once", "missing_records"]

REPLICA_INCIDENT_PREFIX = "inc-"
"""The replica policy's incident ids (``inc-000012``): the incident rules apply to them (node and disk
proposals have lifecycles of their own)."""
INCIDENT_ACTIONS = ("restart", "await-replacement")
"""Replica actions done at most once per incident."""
INCIDENT_OUTCOMES = ("recovered", "recovery-failed", "rejected")
"""Records that close a replica incident."""
INCIDENT_FOLLOWERS = INCIDENT_ACTIONS + INCIDENT_OUTCOMES + ("proposed", "approved", "suppressed")
"""Records of an incident that only exist after its detection."""


@dataclass(frozen=True)
class Duplicate:
    """One action (or record) that appears more than once.

    Attributes:
        action: What was repeated (``restart``, ``retrain-submitted``, ``promote``, ``detected``, ...).
        key: What it was repeated for (the incident, the retrain record or job id, ``member@version``).
        count: How many times it appears.
    """

    action: str
    key: str
    count: int


@dataclass(frozen=True)
class Missing:
    """A record the trail should hold and does not.

    Attributes:
        what: Which record is missing: ``detection``, ``outcome``, ``action``, ``submission``, ``promotion``.
        key: The incident or retrain/trial record it belongs to.
        seen: The record kind that implies the missing one (``restart``, ``detected-hung``, ...).
    """

    what: str
    key: str
    seen: str


@dataclass(frozen=True)
class ExactlyOnce:
    """The verdict on one audit trail: ``ok`` when nothing is duplicated and nothing is missing."""

    duplicates: tuple[Duplicate, ...]
    missing: tuple[Missing, ...]

    @property
    def ok(self) -> bool:
        """Every action exactly once, every record there."""
        return not self.duplicates and not self.missing


def _kind(r: Mapping[str, Any]) -> str:
    return str(r.get("kind", ""))


def _ok(r: Mapping[str, Any]) -> bool:
    return str(r.get("outcome", "")).startswith("ok")


def duplicate_actions(records: Iterable[Mapping[str, Any]]) -> list[Duplicate]:
    """Actions done (or recorded) more than once in ``records``, in a stable order."""
    counts: Counter[tuple[str, str]] = Counter()
    for r in records:
        kind, incident = _kind(r), r.get("incident")
        if kind in INCIDENT_ACTIONS and incident:
            counts[(kind, str(incident))] += 1
        elif kind.startswith("detected-") and incident:
            counts[("detected", str(incident))] += 1
        elif kind == "retrain-submitted":
            if incident:
                counts[("retrain-submitted", str(incident))] += 1
            job = (r.get("evidence") or {}).get("job_id") if isinstance(r.get("evidence"), dict) else None
            if job and job != incident:
                counts[("retrain-job", str(job))] += 1
        elif kind == "promote" and _ok(r):
            versions = (r.get("evidence") or {}).get("versions") if isinstance(r.get("evidence"), dict) else None
            for member, version in (versions or {}).items():
                counts[("promote", f"{member}@{version}")] += 1
    return [Duplicate(action, key, n) for (action, key), n in sorted(counts.items()) if n > 1]


def missing_records(records: Iterable[Mapping[str, Any]]) -> list[Missing]:
    """Records that ``records`` implies and does not hold (check once the service has settled)."""
    by_incident: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get("incident"):
            by_incident.setdefault(str(r["incident"]), []).append(r)
    out: list[Missing] = []
    for key, recs in by_incident.items():
        kinds = [_kind(r) for r in recs]
        if key.startswith(REPLICA_INCIDENT_PREFIX):
            detected = next((k for k in kinds if k.startswith("detected-")), None)
            followers = [k for k in kinds if k in INCIDENT_FOLLOWERS]
            if followers and detected is None:
                out.append(Missing("detection", key, followers[0]))
            if detected is not None and not any(k in INCIDENT_OUTCOMES for k in kinds):
                out.append(Missing("outcome", key, detected))
            if any(_kind(r) == "recovered" and r.get("action") == "restart" for r in recs) and "restart" not in kinds:
                out.append(Missing("action", key, "recovered"))
        if "retrain-finished" in kinds and not {"retrain-submitted", "retrain-submit-failed"} & set(kinds):
            out.append(Missing("submission", key, "retrain-finished"))
        if "retrain-submitted" in kinds and "retrain-finished" not in kinds:
            out.append(Missing("outcome", key, "retrain-submitted"))
        promoted = any(_kind(r) == "trial-finished" and r.get("outcome") == "promote" for r in recs)
        if promoted and "promote" not in kinds:
            out.append(Missing("promotion", key, "trial-finished"))
    return out


def exactly_once(records: Iterable[Mapping[str, Any]]) -> ExactlyOnce:
    """Both checks over one pass of ``records`` (e.g. :func:`controllers.audit.read_audit`'s list)."""
    recs = list(records)
    return ExactlyOnce(tuple(duplicate_actions(recs)), tuple(missing_records(recs)))
