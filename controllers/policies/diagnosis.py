"""Why an incident happened, and which incidents share one cause (pure: no Ray, no clock).

An operator reading the incidents after a bad night wants the cause, not six lines
of symptoms. :func:`diagnose` takes every incident the controller holds (replica
incidents and data, model, node and disk alerts, as plain :class:`IncidentView`
records) and the signals it already has (:class:`Signals`: each node's health,
the features that drifted and when, each member's live accuracy, promotions,
load events) and gives each incident a **cause** (:class:`Cause`, in one of five
classes, :class:`CauseClass`) with the **evidence** that decided it and a
**confidence**, and groups the incidents that share a cause into one
:class:`IncidentGroup` with several effects.

Rules, in the order they are tried:

- **a node takes its replicas**: replica incidents on one node detected within
  ``window_s`` of each other form a group whose cause is that node when the node is
  known lost, under pressure or draining within ``window_s`` of them, when a
  replica's death record says its node died (``NODE_DIED``), or — on a cluster of
  several nodes — when at least :data:`CO_FAILING` replicas on it fail together.
  A node-pressure incident on the node joins the group as its cause incident;
- **an accuracy decay that follows a drifting feature**: an ``accuracy_decay`` or
  ``concept_drift`` (or ``prediction_drift``) whose onset is at most ``horizon_s``
  after a feature moved is caused by that drift: the group names the feature, its
  drift statistic and when it moved, and the members whose live accuracy is lowest;
- **a bad version**: a decay, a wrong answer or an error after the member's new
  version began serving (within ``horizon_s``) is the version's;
- **load**: a slow or hung replica within ``window_s`` of an SLO breach or a
  scale-out at its maximum is load, not the replica;
- otherwise the incident's own kind (:data:`OWN_CAUSE`): a lone crash is replica
  software, a leak is memory, a missing-value breach is data quality.

Confidence is one documented rule, :func:`confidence`: every independent signal
that agrees with the cause counts one (the incident's own evidence is one; a node
known lost, a death record, other replicas failing with it, a feature that moved
first, a healthy node and healthy peers for a replica's own fault each add one),
and every signal that points elsewhere counts against it:
``(1 - 0.5 ** agree) * agree / (agree + against)``. One signal alone is 0.5,
two agreeing 0.75, three 0.875.

Time to detect, per kind (:attr:`IncidentView.onset_at`): for a replica fault, from
its first evidence (the first failed probe, the death seen) to detection; for an
accuracy decay or a concept drift, from the change the error stream's CUSUM dates
(``change_at``) to detection; for a feature's drift, from the change its CUSUM
dates; for node pressure, from the first reading of the sustained window; for a
lost node, from the node keeper's last reading of it. Where nothing dates an onset
(a window test on data quality, a disk forecast) it is unknown (None), not zero. Time to
recover runs from the same onset (the detection where none is known) to the recovery:
detection is part of what the fault cost.

>>> sig = Signals(nodes={"n1": NodeSignal("n1", "worker-1", NodeState.LOST, since=100.0)})
>>> reps = [IncidentView(f"inc-{i}", "dead", 101.0 + i, member="mlp", replica=f"r{i}", node_id="n1")
...         for i in range(4)]
>>> out = diagnose(reps, sig, window_s=30.0)
>>> [(g.cause.value, g.node, list(g.effects), g.confidence) for g in out.groups]
[('node', 'worker-1', ['inc-0', 'inc-1', 'inc-2', 'inc-3'], 0.75)]
>>> out.of("inc-2").cause_class.value, out.of("inc-2").group == out.groups[0].id
('infrastructure', True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raymedic.enums import StrEnum

__all__ = [
    "CO_FAILING", "OWN_CAUSE", "Cause", "CauseClass", "Diagnoses", "Diagnosis", "FeatureDrift", "IncidentGroup",
    "IncidentView", "NodeSignal", "NodeState", "Signals", "cause_fields", "confidence", "diagnose", "onset_of",
    "signals_from",
]

CO_FAILING = 3
"""Replicas on one node failing within the window that point at the node with no node signal (several nodes only:
on a one-node cluster every replica shares the node, and three crashes say nothing about it)."""
MEMBERS_NAMED = 3
"""Members named as suffering most from a drift (the lowest live accuracy first)."""


class CauseClass(StrEnum):
    """The five root-cause classes an operator sorts incidents into."""

    INFRASTRUCTURE = "infrastructure"
    """A node, its memory, a disk or a GPU: restarting the replica where it is buys nothing."""
    REPLICA_SOFTWARE = "replica-software"
    """One replica's process: it crashed, hung, raised, slowed or answered wrong on its own."""
    MODEL = "model"
    """The model: its accuracy decayed, the concept moved, or a new version is worse."""
    DATA = "data"
    """The inputs: they drifted from training, or their quality broke (missing, out of range, unseen)."""
    LOAD = "load"
    """More traffic than the service carries now."""
    UNKNOWN = "unknown"
    """An incident kind this module does not know (a newer writer's): no claim, confidence 0."""


class Cause(StrEnum):
    """The cause itself, within its class (:attr:`Cause.cause_class`)."""

    NODE = "node"
    MEMORY = "memory"
    DISK = "disk"
    GPU = "gpu"
    CRASH = "crash"
    HANG = "hang"
    ERROR = "error"
    SLOW = "slow"
    WRONG = "wrong"
    ACCURACY_DECAY = "accuracy-decay"
    CONCEPT_DRIFT = "concept-drift"
    BAD_VERSION = "bad-version"
    DATA_DRIFT = "data-drift"
    DATA_QUALITY = "data-quality"
    OVERLOAD = "overload"
    UNKNOWN = "unknown"

    @property
    def cause_class(self) -> CauseClass:
        """The class this cause belongs to."""
        return _CLASS_OF[self]


_CLASS_OF = {
    Cause.NODE: CauseClass.INFRASTRUCTURE, Cause.MEMORY: CauseClass.INFRASTRUCTURE,
    Cause.DISK: CauseClass.INFRASTRUCTURE, Cause.GPU: CauseClass.INFRASTRUCTURE,
    Cause.CRASH: CauseClass.REPLICA_SOFTWARE, Cause.HANG: CauseClass.REPLICA_SOFTWARE,
    Cause.ERROR: CauseClass.REPLICA_SOFTWARE, Cause.SLOW: CauseClass.REPLICA_SOFTWARE,
    Cause.WRONG: CauseClass.REPLICA_SOFTWARE,
    Cause.ACCURACY_DECAY: CauseClass.MODEL, Cause.CONCEPT_DRIFT: CauseClass.MODEL, Cause.BAD_VERSION: CauseClass.MODEL,
    Cause.DATA_DRIFT: CauseClass.DATA, Cause.DATA_QUALITY: CauseClass.DATA,
    Cause.OVERLOAD: CauseClass.LOAD, Cause.UNKNOWN: CauseClass.UNKNOWN,
}

OWN_CAUSE: Mapping[str, Cause] = {
    "dead": Cause.CRASH, "hung": Cause.HANG, "error": Cause.ERROR, "slow": Cause.SLOW, "wrong": Cause.WRONG,
    "leak": Cause.MEMORY, "gpu": Cause.GPU, "node_pressure": Cause.NODE, "disk_space": Cause.DISK,
    "missing_values": Cause.DATA_QUALITY, "out_of_range": Cause.DATA_QUALITY, "unseen_levels": Cause.DATA_QUALITY,
    "drift": Cause.DATA_DRIFT, "prediction_drift": Cause.DATA_DRIFT, "accuracy_decay": Cause.ACCURACY_DECAY,
    "concept_drift": Cause.CONCEPT_DRIFT,
}
"""What an incident of each kind is caused by when nothing else explains it."""

REPLICA_KINDS = frozenset({"dead", "hung", "error", "slow", "wrong", "leak", "gpu"})
NODE_BOUND = REPLICA_KINDS - {"wrong"}
"""Replica faults a bad node can cause (a lost node: dead or hung; a starved one: slow, hung; out of memory: dead,
leaking); a wrong answer is the replica's own or its version's, wherever it runs."""
MODEL_KINDS = frozenset({"accuracy_decay", "concept_drift", "prediction_drift"})
_LOADED = frozenset({"slow", "hung"})  # what a load spike looks like on a replica
_VERSIONED = frozenset({"wrong", "error", "accuracy_decay", "concept_drift"})  # what a bad version looks like


class NodeState(StrEnum):
    """A node's health as the controller knows it."""

    HEALTHY = "healthy"
    PRESSURE = "pressure"
    DRAINING = "draining"
    LOST = "lost"


def confidence(agree: int, against: int = 0) -> float:
    """How sure a cause is from the signals that agree with it and the ones that point elsewhere.

    >>> confidence(1), confidence(2), confidence(3), confidence(2, 1), confidence(0)
    (0.5, 0.75, 0.875, 0.5, 0.0)
    """
    if agree <= 0:
        return 0.0
    return round((1 - 0.5 ** agree) * agree / (agree + max(0, against)), 3)


def onset_of(kind: str, evidence: Mapping[str, Any] | None) -> float | None:
    """When a data, model, node or disk incident began, from its evidence (None: nothing dates it).

    >>> onset_of("accuracy_decay", {"change_at": 12.5}), onset_of("node_pressure", {"since": 3.0})
    (12.5, 3.0)
    >>> onset_of("missing_values", {"missing_rate": 0.4}) is None
    True
    """
    ev = evidence or {}
    for key in ("change_at", "moved_at", "since", "onset_at"):
        value = ev.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


@dataclass(frozen=True)
class IncidentView:
    """One incident of any kind, as plain data (what :func:`diagnose` reads).

    Attributes:
        onset_at: When the fault began, where something dates it (see the module: time to detect).
        node_id: The node a replica incident's replica ran on (None: unknown, or not a replica's).
        target: What a non-replica incident is about: a feature, a node's name, a volume, ``ensemble``.
    """

    id: str
    kind: str
    detected_at: float
    member: str | None = None
    replica: str | None = None
    node_id: str | None = None
    target: str | None = None
    onset_at: float | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    status: str = "open"
    recovered_at: float | None = None
    death: str = ""
    """A vanished replica's death record (``NODE_DIED: ...`` when its node was lost)."""

    @property
    def began(self) -> float:
        """The onset when known, else the detection."""
        return self.detected_at if self.onset_at is None else min(self.onset_at, self.detected_at)

    @classmethod
    def from_status(cls, d: Mapping[str, Any]) -> IncidentView:
        """From an incident as the status document lists it (a replica incident or a data alert)."""
        onset = d.get("first_evidence_at")
        if onset is None:
            onset = onset_of(str(d.get("kind")), d.get("evidence"))
        return cls(id=str(d["id"]), kind=str(d["kind"]), detected_at=float(d["detected_at"]), member=d.get("member"),
                   replica=d.get("replica"), node_id=d.get("node_id"), target=d.get("target") or d.get("feature"),
                   onset_at=None if onset is None else float(onset), evidence=d.get("evidence") or {},
                   status=str(d.get("status", "open")), recovered_at=d.get("recovered_at"),
                   death=str(d.get("death") or ""))


@dataclass(frozen=True)
class NodeSignal:
    """One node's health: healthy, under pressure, draining or lost, and since when."""

    node_id: str
    name: str
    state: NodeState = NodeState.HEALTHY
    since: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", NodeState(self.state))


@dataclass(frozen=True)
class FeatureDrift:
    """A feature that drifted: the statistic that said so, when it moved, and its alert."""

    feature: str
    moved_at: float
    statistic: str
    value: float | None = None
    severity: str = "warn"
    alert: str | None = None


@dataclass(frozen=True)
class Signals:
    """What the controller knows besides the incidents themselves (every field optional).

    Attributes:
        nodes: node id → its health (every node known, the healthy ones too: they clear a replica's node).
        drifts: Features that drifted (open or recent drift alerts), with when each moved.
        member_accuracy: member → live accuracy on feedback labels.
        promotions: (when, member) a new version began serving.
        load_at: When the service was overloaded: an SLO breach, a scale-out stopped at its maximum.
    """

    nodes: Mapping[str, NodeSignal] = field(default_factory=dict)
    drifts: tuple[FeatureDrift, ...] = ()
    member_accuracy: Mapping[str, float] = field(default_factory=dict)
    promotions: tuple[tuple[float, str], ...] = ()
    load_at: tuple[float, ...] = ()

    def node_named(self, name: str | None) -> NodeSignal | None:
        """The node with this name (a node-pressure incident's target)."""
        return next((n for n in self.nodes.values() if n.name == name), None)


@dataclass(frozen=True)
class Diagnosis:
    """One incident's cause, the evidence that decided it, how sure, and its group."""

    incident: str
    cause: Cause
    confidence: float
    evidence: tuple[Mapping[str, Any], ...] = ()
    node: str | None = None
    node_id: str | None = None
    feature: str | None = None
    members: tuple[str, ...] = ()
    group: str | None = None

    @property
    def cause_class(self) -> CauseClass:
        return self.cause.cause_class

    def fields(self) -> dict[str, Any]:
        """The plain fields an incident's status entry and audit records carry."""
        return {**cause_fields(self.cause, self.confidence, self.evidence, node=self.node, feature=self.feature,
                               members=self.members), "group": self.group}


def cause_fields(cause: Cause, confidence: float, evidence: Sequence[Mapping[str, Any]], *, node: str | None = None,
                 feature: str | None = None, members: Sequence[str] = ()) -> dict[str, Any]:
    """A diagnosis as plain record fields (``cause_class``, ``cause``, ``confidence``, ``cause_evidence`` and,
    where known, ``cause_node`` / ``cause_feature`` / ``cause_members``): one shape for an incident's records,
    its group's status entry and the group's own record, so every reader reads them alike."""
    d: dict[str, Any] = {"cause_class": cause.cause_class.value, "cause": cause.value, "confidence": confidence,
                         "cause_evidence": [dict(e) for e in evidence]}
    if node is not None:
        d["cause_node"] = node
    if feature is not None:
        d["cause_feature"] = feature
    if members:
        d["cause_members"] = list(members)
    return d


@dataclass(frozen=True)
class IncidentGroup:
    """Incidents that share one cause: one incident for the operator, the others its effects.

    Attributes:
        cause_incident: The incident that *is* the cause, when there is one (a node-pressure or drift alert).
        effects: The incidents the cause produced (replica incidents of a lost node; a decay after a drift).
    """

    id: str
    cause: Cause
    confidence: float
    evidence: tuple[Mapping[str, Any], ...]
    effects: tuple[str, ...]
    detected_at: float
    onset_at: float | None
    recovered_at: float | None
    status: str
    cause_incident: str | None = None
    node: str | None = None
    node_id: str | None = None
    feature: str | None = None
    members: tuple[str, ...] = ()

    @property
    def incidents(self) -> tuple[str, ...]:
        """Every incident of the group: the cause's own first, then the effects."""
        return ((self.cause_incident,) if self.cause_incident else ()) + self.effects

    def to_dict(self) -> dict[str, Any]:
        """The status form (``incident_groups``), with its time to detect and to recover."""
        return {"id": self.id, "cause_class": self.cause.cause_class.value, "cause": self.cause.value,
                "confidence": self.confidence, "cause_evidence": [dict(e) for e in self.evidence],
                "cause_incident": self.cause_incident, "effects": list(self.effects), "node": self.node,
                "node_id": self.node_id, "feature": self.feature, "members": list(self.members),
                "status": self.status, "detected_at": self.detected_at, "onset_at": self.onset_at,
                "recovered_at": self.recovered_at,
                "time_to_detect_s": None if self.onset_at is None else round(self.detected_at - self.onset_at, 3),
                "time_to_recover_s": None if self.recovered_at is None
                else round(self.recovered_at - self.began, 3)}

    @property
    def began(self) -> float:
        """The onset when known, else the detection: where its time to recover starts (as its effects')."""
        return self.detected_at if self.onset_at is None else min(self.onset_at, self.detected_at)


@dataclass(frozen=True)
class Diagnoses:
    """What :func:`diagnose` found: each incident's diagnosis and the groups."""

    by_incident: Mapping[str, Diagnosis]
    groups: tuple[IncidentGroup, ...]

    def of(self, incident: str) -> Diagnosis | None:
        return self.by_incident.get(incident)

    def group_of(self, incident: str) -> IncidentGroup | None:
        d = self.by_incident.get(incident)
        return next((g for g in self.groups if g.id == d.group), None) if d is not None and d.group else None


# ---- the rules ------------------------------------------------------------------------------------------


def _died_with_node(inc: IncidentView) -> bool:
    return "NODE_DIED" in inc.death or "NODE_DIED" in " ".join(str(v) for v in inc.evidence.values())


def _node_bad_near(node: NodeSignal | None, start: float, end: float, window_s: float) -> bool:
    """The node is lost, pressured or draining, since a time within ``window_s`` of [start, end] (or undated)."""
    if node is None or node.state == NodeState.HEALTHY:
        return False
    return node.since is None or start - window_s <= node.since <= end + window_s


def _chains(incs: Sequence[IncidentView], window_s: float) -> list[list[IncidentView]]:
    """Incidents (of one node) cut into runs whose consecutive detections are within ``window_s``."""
    runs: list[list[IncidentView]] = []
    for inc in sorted(incs, key=lambda i: (i.detected_at, i.id)):
        if runs and inc.detected_at - runs[-1][-1].detected_at <= window_s:
            runs[-1].append(inc)
        else:
            runs.append([inc])
    return runs


def _span(incs: Iterable[IncidentView]) -> tuple[float, float | None, float | None, str]:
    """A group's detection (first), onset (earliest known), recovery (last, when all recovered) and status."""
    incs = list(incs)
    detected = min(i.detected_at for i in incs)
    onsets = [i.onset_at for i in incs if i.onset_at is not None]
    open_ = [i for i in incs if i.status == "open"]
    recovered = None if open_ or any(i.recovered_at is None for i in incs) else max(
        float(i.recovered_at) for i in incs)  # type: ignore[arg-type]
    status = "open" if open_ else ("recovered" if recovered is not None else incs[-1].status)
    return detected, (min(onsets) if onsets else None), recovered, status


def _node_groups(incidents: Sequence[IncidentView], signals: Signals, window_s: float) -> list[IncidentGroup]:
    by_node: dict[str, list[IncidentView]] = {}
    for inc in incidents:
        if inc.kind in NODE_BOUND and inc.node_id:
            by_node.setdefault(inc.node_id, []).append(inc)
    pressure = {}
    for inc in incidents:
        if inc.kind == "node_pressure":
            node = signals.node_named(inc.target)
            if node is not None:
                pressure.setdefault(node.node_id, []).append(inc)
    several_nodes = len(signals.nodes) > 1
    groups = []
    for node_id, incs in sorted(by_node.items()):
        node = signals.nodes.get(node_id)
        for run in _chains(incs, window_s):
            start, end = min(i.began for i in run), max(i.detected_at for i in run)
            replicas = {i.replica for i in run}
            evidence: list[dict[str, Any]] = []
            if _node_bad_near(node, start, end, window_s):
                assert node is not None
                evidence.append({"signal": f"node-{node.state}", "node": node.name, "since": node.since})
            died = [i.id for i in run if _died_with_node(i)]
            if died:
                evidence.append({"signal": "death-record", "detail": "NODE_DIED", "incidents": died})
            co = len(replicas) >= CO_FAILING and several_nodes
            if not evidence and not co:
                continue
            if len(replicas) < 2:
                continue  # one replica on a bad node: its own diagnosis names the node (no group of one)
            evidence.append({"signal": "replicas-failed-together", "replicas": len(replicas),
                             "within_s": round(end - start, 3)})
            cause_inc = next((p for p in pressure.get(node_id, ()) if start - window_s <= p.detected_at
                              <= end + window_s), None)
            detected, onset, recovered, status = _span(run + ([cause_inc] if cause_inc else []))
            name = node.name if node is not None else node_id[:8]
            groups.append(IncidentGroup(
                id=f"grp-{run[0].id}", cause=Cause.NODE, confidence=confidence(len(evidence)),
                evidence=tuple(evidence), effects=tuple(i.id for i in run), detected_at=detected, onset_at=onset,
                recovered_at=recovered, status=status, cause_incident=cause_inc.id if cause_inc else None,
                node=name, node_id=node_id))
    return groups


def _suffering(signals: Signals) -> tuple[str, ...]:
    """The members with the lowest live accuracy, worst first."""
    ranked = sorted(signals.member_accuracy.items(), key=lambda kv: (kv[1], kv[0]))
    return tuple(m for m, _ in ranked[:MEMBERS_NAMED])


def _drift_before(inc: IncidentView, signals: Signals, horizon_s: float, window_s: float) -> FeatureDrift | None:
    """The feature drift that best explains a model incident: it moved before the incident began (with
    ``window_s`` of slack: a drift alert opens on the data check's period) and at most ``horizon_s`` before;
    the strongest (act before warn, then the latest) when several did."""
    began = inc.began
    cands = [d for d in signals.drifts if began - horizon_s <= d.moved_at <= began + window_s]
    if not cands:
        return None
    return max(cands, key=lambda d: (d.severity == "act", d.moved_at))


def _drift_groups(incidents: Sequence[IncidentView], signals: Signals, horizon_s: float,
                  window_s: float) -> list[IncidentGroup]:
    by_feature: dict[str, tuple[FeatureDrift, list[IncidentView]]] = {}
    for inc in incidents:
        if inc.kind not in MODEL_KINDS:
            continue
        drift = _drift_before(inc, signals, horizon_s, window_s)
        if drift is not None:
            by_feature.setdefault(drift.feature, (drift, []))[1].append(inc)
    ids = {i.id: i for i in incidents}
    groups = []
    for feature, (drift, effects) in sorted(by_feature.items()):
        effects.sort(key=lambda i: (i.detected_at, i.id))
        evidence: list[dict[str, Any]] = [
            {"signal": "feature-drift", "feature": feature, "statistic": drift.statistic, "value": drift.value,
             "moved_at": drift.moved_at, "severity": drift.severity},
            {"signal": "accuracy-after-drift", "incidents": [i.id for i in effects],
             "lag_s": round(min(i.began for i in effects) - drift.moved_at, 3)}]
        members = _suffering(signals)
        if members:
            evidence.append({"signal": "member-accuracy", "members": {m: round(signals.member_accuracy[m], 4)
                                                                      for m in members}})
        cause_inc = ids.get(drift.alert) if drift.alert else None
        detected, onset, recovered, status = _span(effects + ([cause_inc] if cause_inc else []))
        groups.append(IncidentGroup(
            id=f"grp-{drift.alert or effects[0].id}", cause=Cause.DATA_DRIFT, confidence=confidence(len(evidence)),
            evidence=tuple(evidence), effects=tuple(i.id for i in effects), detected_at=detected,
            onset_at=onset if onset is not None else drift.moved_at, recovered_at=recovered, status=status,
            cause_incident=cause_inc.id if cause_inc else None, feature=feature, members=members))
    return groups


def _alone(inc: IncidentView, incidents: Sequence[IncidentView], signals: Signals, window_s: float,
           horizon_s: float) -> Diagnosis:
    """An incident no group explains: what its own evidence and the signals around it say."""
    own = OWN_CAUSE.get(inc.kind)
    if own is None:
        return Diagnosis(inc.id, Cause.UNKNOWN, 0.0, ({"signal": "unknown-kind", "kind": inc.kind},))
    mine: dict[str, Any] = {"signal": f"incident-{inc.kind}"}  # its evidence is on the incident itself
    if inc.kind in REPLICA_KINDS:
        node = signals.nodes.get(inc.node_id) if inc.node_id else None
        name = node.name if node is not None else None
        if inc.kind in NODE_BOUND and (_node_bad_near(node, inc.began, inc.detected_at, window_s)
                                       or _died_with_node(inc)):
            ev = [mine]
            if node is not None and node.state != NodeState.HEALTHY:
                ev.append({"signal": f"node-{node.state}", "node": node.name, "since": node.since})
            if _died_with_node(inc):
                ev.append({"signal": "death-record", "detail": "NODE_DIED"})
            cause = Cause.MEMORY if inc.kind == "leak" else Cause.GPU if inc.kind == "gpu" else Cause.NODE
            return Diagnosis(inc.id, cause, confidence(len(ev)), tuple(ev), node=name, node_id=inc.node_id)
        if inc.kind in _LOADED and any(abs(t - inc.detected_at) <= window_s for t in signals.load_at):
            at = min(signals.load_at, key=lambda t: abs(t - inc.detected_at))
            return Diagnosis(inc.id, Cause.OVERLOAD, confidence(2), (mine, {"signal": "overload", "at": at}))
        if inc.kind in _VERSIONED and inc.member is not None:
            promoted = [t for t, m in signals.promotions if m == inc.member and 0 <= inc.began - t <= horizon_s]
            if promoted:
                return Diagnosis(inc.id, Cause.BAD_VERSION, confidence(2),
                                 (mine, {"signal": "new-version", "member": inc.member, "serving_since": max(promoted)}),
                                 members=(inc.member,))
        ev = [mine]
        against = 0
        if node is not None and node.state == NodeState.HEALTHY:
            ev.append({"signal": "node-healthy", "node": node.name})
        peers = [o.id for o in incidents if o.id != inc.id and o.member == inc.member and o.kind in REPLICA_KINDS
                 and abs(o.detected_at - inc.detected_at) <= window_s]
        if peers:
            against += 1  # the member's other replicas failing too: a shared cause (version, inputs) is as likely
        else:
            ev.append({"signal": "peers-healthy", "member": inc.member})
        return Diagnosis(inc.id, own, confidence(len(ev), against), tuple(ev), node=name, node_id=inc.node_id)
    if inc.kind in MODEL_KINDS:
        promoted = [t for t, _ in signals.promotions if 0 <= inc.began - t <= horizon_s]
        if promoted and inc.kind in _VERSIONED:
            return Diagnosis(inc.id, Cause.BAD_VERSION, confidence(2),
                             (mine, {"signal": "new-version", "serving_since": max(promoted)}),
                             members=_suffering(signals))
        concept = [o for o in incidents if o.kind == "concept_drift" and o.id != inc.id
                   and abs(o.detected_at - inc.detected_at) <= horizon_s]
        if inc.kind == "accuracy_decay" and concept:
            return Diagnosis(inc.id, Cause.CONCEPT_DRIFT, confidence(2),
                             (mine, {"signal": "error-stream-change", "incident": concept[0].id}),
                             members=_suffering(signals))
        return Diagnosis(inc.id, own, confidence(1), (mine,), members=_suffering(signals))
    if inc.kind == "node_pressure":
        node = signals.node_named(inc.target)
        return Diagnosis(inc.id, own, confidence(1), (mine,), node=inc.target,
                         node_id=node.node_id if node is not None else None)
    feature = inc.target if own in (Cause.DATA_DRIFT, Cause.DATA_QUALITY) and inc.kind != "prediction_drift" else None
    return Diagnosis(inc.id, own, confidence(1), (mine,), feature=feature)


def diagnose(incidents: Sequence[IncidentView], signals: Signals, *, window_s: float = 30.0,
             horizon_s: float = 900.0) -> Diagnoses:
    """Every incident's cause and the groups of incidents that share one (see the module for the rules).

    Args:
        incidents: Every incident the controller holds, any kind, any status.
        signals: What else it knows (nodes, drifts, accuracies, promotions, load).
        window_s: How close in time incidents (and a node's signal) must be to share a node as cause.
        horizon_s: How long before a model incident a drift or a promotion may be its cause.
    """
    groups = _node_groups(incidents, signals, window_s) + _drift_groups(incidents, signals, horizon_s, window_s)
    by_incident: dict[str, Diagnosis] = {}
    for g in groups:
        for iid in g.incidents:
            if iid in by_incident:
                continue  # in two groups (a node's pressure alert near two runs): the first keeps it
            by_incident[iid] = Diagnosis(iid, g.cause, g.confidence, g.evidence, node=g.node, node_id=g.node_id,
                                         feature=g.feature, members=g.members, group=g.id)
    for inc in incidents:
        if inc.id not in by_incident:
            by_incident[inc.id] = _alone(inc, incidents, signals, window_s, horizon_s)
    return Diagnoses(by_incident, tuple(groups))


# ---- the signals, from the plain documents the controller already has ---------------------------------------

_PRESSED = frozenset({"cpu", "memory", "cpu+memory", "held"})
_LOAD_KINDS = frozenset({"slo-breach", "scale-at-max"})


def signals_from(*, nodes: Mapping[str, Any] | None = None, lost: Mapping[str, tuple[str, float]] | None = None,
                 alerts: Sequence[Mapping[str, Any]] = (), performance: Mapping[str, Any] | None = None,
                 records: Sequence[Mapping[str, Any]] = ()) -> Signals:
    """:class:`Signals` from the status's own parts (plain data, as the status document holds them).

    Args:
        nodes: The node keeper's report (``{"nodes": [{"name", "node_id", "draining", "pressure", ...}]}``).
        lost: node id → (name, when the keeper last read it alive) for nodes that left Ray's alive list.
        alerts: The data, model, node and disk alerts (status form): open node-pressure alerts date a node's
            pressure, drift alerts date a feature's move.
        performance: The performance report (status form): ``labelled`` holds each member's live accuracy.
        records: Recent audit records: ``promote`` (a new version serves) and ``slo-breach`` / ``scale-at-max``
            (load).

    >>> s = signals_from(nodes={"nodes": [{"name": "w1", "node_id": "n1", "draining": False, "pressure": "none"}]},
    ...                  lost={"n2": ("w2", 50.0)},
    ...                  alerts=[{"id": "d1", "kind": "drift", "feature": "f3", "detected_at": 90.0,
    ...                           "evidence": {"psi": 0.4, "sequential": "mean_up", "change_at": 80.0},
    ...                           "severity": "act"}],
    ...                  performance={"labelled": {"ensemble": {"accuracy": 0.7}, "mlp": {"accuracy": 0.6}}},
    ...                  records=[{"kind": "promote", "ts": 10.0, "outcome": "ok", "evidence": {"versions": {"mlp": "v2"}}}])
    >>> [(n.name, n.state.value) for n in s.nodes.values()], s.drifts[0].moved_at, dict(s.member_accuracy)
    ([('w1', 'healthy'), ('w2', 'lost')], 80.0, {'mlp': 0.6})
    >>> s.promotions
    ((10.0, 'mlp'),)
    """
    pressed_since = {str(a.get("target") or a.get("feature")): onset_of("node_pressure", a.get("evidence"))
                     or float(a["detected_at"]) for a in alerts
                     if a.get("kind") == "node_pressure" and a.get("status", "open") == "open"}
    out: dict[str, NodeSignal] = {}
    for row in (nodes or {}).get("nodes") or ():
        nid, name = str(row.get("node_id") or row.get("name")), str(row.get("name"))
        if row.get("draining"):
            out[nid] = NodeSignal(nid, name, NodeState.DRAINING, row.get("phase_since"))
        elif name in pressed_since or row.get("pressure") in _PRESSED:
            out[nid] = NodeSignal(nid, name, NodeState.PRESSURE, pressed_since.get(name, row.get("phase_since")))
        else:
            out[nid] = NodeSignal(nid, name, NodeState.HEALTHY)
    for nid, (name, at) in (lost or {}).items():
        out[nid] = NodeSignal(nid, name, NodeState.LOST, at)
    drifts = []
    for a in alerts:
        if a.get("kind") != "drift":
            continue
        ev = a.get("evidence") or {}
        statistic = next((k for k in ("psi", "js", "wasserstein_sd", "statistic") if ev.get(k) is not None), "test")
        drifts.append(FeatureDrift(
            feature=str(a.get("feature") or a.get("target")), moved_at=onset_of("drift", ev) or float(a["detected_at"]),
            statistic=f"{ev['sequential']}+{statistic}" if ev.get("sequential") else statistic,
            value=ev.get(statistic), severity=str(a.get("severity", "warn")), alert=a.get("id")))
    accuracy = {m: float(v["accuracy"]) for m, v in ((performance or {}).get("labelled") or {}).items()
                if m != "ensemble" and isinstance(v, Mapping) and v.get("accuracy") is not None}
    promotions, load = [], []
    for r in records:
        kind = r.get("kind")
        if kind == "promote" and str(r.get("outcome", "")).startswith("ok"):
            promotions += [(float(r["ts"]), str(m)) for m in ((r.get("evidence") or {}).get("versions") or {})]
        elif kind in _LOAD_KINDS:
            load.append(float(r["ts"]))
    return Signals(nodes=out, drifts=tuple(drifts), member_accuracy=accuracy, promotions=tuple(promotions),
                   load_at=tuple(load))
