"""Which changes of the diagnosis' incident groups become an audit record (pure: no Ray, no clock).

The diagnosis (:mod:`controllers.policies.diagnosis`) is recomputed whenever it is asked for, so a
group exists only in ``/v1/status`` and in the fields of its incidents' own records: an operator
reading ``raymedic audit`` after a node loss saw four ``detected-dead`` records and had to notice
their shared ``group`` field to learn they were one fault. :class:`GroupAudit` turns the groups
into records of their own, one ``incident-group`` record per change that matters:

- **formed**: a group id seen for the first time (its cause, confidence and incidents);
- **grew**: a group already recorded gained incidents (an effect detected later, or the incident
  that is its cause, e.g. the node's pressure alert): the record names the incidents added.

A group recomputed the same way step after step is recorded once; a group that loses an incident
(one forgotten, or re-diagnosed elsewhere) is not recorded again, and regaining it is no change
either — the incidents recorded only accumulate, so a group flickering between two diagnoses costs
at most one record per incident it ever held. The memory is bounded (:data:`GROUPS_KEPT` groups,
the oldest forgotten first) and checkpointed, so a restarted controller does not record its groups
again.

>>> from controllers.policies.diagnosis import Cause, IncidentGroup
>>> def grp(*effects, cause_incident=None):
...     return IncidentGroup(id="grp-inc-1", cause=Cause.NODE, confidence=0.75, evidence=(), effects=effects,
...                          detected_at=10.0, onset_at=9.0, recovered_at=None, status="open",
...                          cause_incident=cause_incident, node="worker-1", node_id="n1")
>>> audit = GroupAudit()
>>> [(str(r.change), r.added) for r in audit.offer([grp("inc-1", "inc-2")])]
[('formed', ('inc-1', 'inc-2'))]
>>> audit.offer([grp("inc-1", "inc-2")])  # the same group again: nothing new
[]
>>> [(str(r.change), r.added) for r in audit.offer([grp("inc-1", "inc-2", "inc-3")])]
[('grew', ('inc-3',))]
>>> audit.offer([grp("inc-1", "inc-3")])  # lost one: not a change worth a record
[]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controllers.policies.diagnosis import IncidentGroup, cause_fields
from raymedic.enums import StrEnum

__all__ = ["GROUP_RECORD_KIND", "GROUPS_KEPT", "GroupAudit", "GroupChange", "GroupRecord"]

GROUP_RECORD_KIND = "incident-group"
"""The audit kind of a group's records (``raymedic audit --kind incident-group``)."""
GROUPS_KEPT = 500
"""Groups remembered (and checkpointed): more than the incidents the policy keeps can form."""


class GroupChange(StrEnum):
    """Why a group got a record (the record's ``outcome``)."""

    FORMED = "formed"
    GREW = "grew"


@dataclass(frozen=True)
class GroupRecord:
    """One group's record: the group as diagnosed now, what changed, and the incidents it added."""

    group: IncidentGroup
    change: GroupChange
    added: tuple[str, ...]

    @property
    def target(self) -> str:
        """The shared cause the record is about: the node's name, the feature, else the cause itself."""
        g = self.group
        return g.node or g.feature or g.cause.value

    @property
    def evidence(self) -> dict[str, Any]:
        """What an operator reads: the cause, how sure, why, and which incidents are one."""
        g = self.group
        return {**cause_fields(g.cause, g.confidence, g.evidence), "incidents": list(g.incidents),
                "effects": list(g.effects), "cause_incident": g.cause_incident, "added": list(self.added)}

    def fields(self) -> dict[str, Any]:
        """The record's top-level fields besides the contract's: the diagnosis fields an incident's records
        carry (``group``, ``effects``, ``group_cause_incident``...), so readers of those read these alike."""
        g = self.group
        out: dict[str, Any] = {"group": g.id, "incidents": list(g.incidents), "effects": list(g.effects),
                               "group_cause_incident": g.cause_incident, "detected_at": g.detected_at,
                               "first_evidence_at": g.onset_at,
                               **cause_fields(g.cause, g.confidence, g.evidence, node=g.node, feature=g.feature,
                                              members=g.members)}
        if g.node_id is not None:
            out["node_id"] = g.node_id
        return out


class GroupAudit:
    """Decides, diagnosis by diagnosis, which groups are recorded.

    Invariant: ``_recorded`` maps each group id recorded to every incident any of its records named;
    only :meth:`offer` adds to it, and only when it returns a record for that group.

    Args:
        memory: What :meth:`to_dict` returned (a checkpoint), or None.
        kept: Groups remembered at most.
    """

    def __init__(self, memory: Mapping[str, Sequence[str]] | None = None, *, kept: int = GROUPS_KEPT) -> None:
        if kept < 1:
            raise ValueError(f"kept ({kept}) must be at least 1: a group audit that remembers nothing records "
                             "every group at every offer")
        self._kept = kept
        self._recorded: OrderedDict[str, frozenset[str]] = OrderedDict(
            (str(gid), frozenset(str(i) for i in incs)) for gid, incs in (memory or {}).items())

    def offer(self, groups: Iterable[IncidentGroup]) -> list[GroupRecord]:
        """The records due for ``groups`` (the diagnosis now), in the order given."""
        out: list[GroupRecord] = []
        for g in groups:
            incidents = tuple(g.incidents)
            before = self._recorded.get(g.id)
            if before is None:
                out.append(GroupRecord(g, GroupChange.FORMED, incidents))
                self._recorded[g.id] = frozenset(incidents)
            else:
                added = tuple(i for i in incidents if i not in before)
                if not added:
                    continue
                out.append(GroupRecord(g, GroupChange.GREW, added))
                self._recorded[g.id] = before | set(added)
            self._recorded.move_to_end(g.id)
            while len(self._recorded) > self._kept:
                self._recorded.popitem(last=False)
        return out

    def to_dict(self) -> dict[str, list[str]]:
        """The memory for the controller's checkpoint (group id → incidents recorded)."""
        return {gid: sorted(incs) for gid, incs in self._recorded.items()}
