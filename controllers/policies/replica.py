"""The healing policy: pure decisions over observed replica state (no Ray here).

The controller feeds :meth:`HealingPolicy.step` a frozen :class:`Observation`
(Serve's replica list, recent golden probes per replica, the gateways' call
statistics per replica) and gets back the actions to take and the audit events to
record. Everything that decides lives here so it can be tested exhaustively
without a cluster; the actor only observes and executes.

Faults and their evidence (ARCHITECTURE.md table):

- **dead**: a probe or a user call failed because the replica's actor died;
- **hung**: consecutive probes timed out, or probes and user calls time out with
  nothing completing (the process still answers Serve's health pings);
- **wrong**: a probe with golden inputs came back with probabilities that differ
  from the ones stored with the version (HTTP 200, wrong answer);
- **slow**: the replica's recent latency is a multiple of its peers' (gray failure);
- **gpu**: failing as above, with a GPU's error (a CUDA error, GPU memory exhausted;
  :mod:`controllers.policies.gpu`): restarted the same way, its own kind in the audit;
- **leak**: its resident memory grows steadily and is forecast to cross its limit
  within a horizon (:mod:`controllers.policies.leak`). It is avoided at once like
  the others, but *drained* before the restart: the kill waits until the gateways
  report no call in flight to it (or a short deadline), so nothing it was answering
  is cut off.

Every fault opens one incident per replica (idempotent: a second finding on the
same replica does not open another), the replica goes on the avoid list at once
(gateways route around it within a sync period), and a restart is requested
subject to a per-member cooldown, a cap per window and at most one restart in
flight per member — no restart storms. A paused policy still detects and records,
but requests nothing.

Hot standby: a member may keep ``standby`` replicas beyond its target. They are
started and probed like the others but held out of user traffic; the moment a
replica is flagged, the member no longer has room for a standby, so the standby
takes traffic in the same step, and the incident is recovered as soon as the
faulty replica is gone — not when Serve's replacement has started a worker and
loaded the model (10-15 s on a busy small machine). The replacement, once it
passes its probes, becomes the next standby. Which replicas stand by is sticky
(a standby stays one, a newly started replica is preferred), so traffic does
not move between healthy replicas from step to step.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from controllers.policies.gpu import gpu_error_kind
from controllers.policies.leak import (DEFAULT_RAY_MEMORY_THRESHOLD, LeakAssessment, MemorySample, assess_leak,
                                       memory_limit)
from raymedic.config import ControllerConfig
from raymedic.enums import StrEnum, plain

__all__ = [
    "ProbeOutcome", "FaultKind", "IncidentStatus", "Approval", "ControlMode",
    "Probe", "CallStats", "ReplicaSnapshot", "Observation", "Finding", "Incident", "RestartReplica",
    "AuditEvent", "StepResult", "assess", "crash_onset", "systemic_timeouts", "choose_standby", "HealingPolicy",
]

OPTIONAL_FIELDS = frozenset({"node_id", "death"})
"""Incident fields written only when set (see :meth:`Incident.to_record`)."""
KEEP_CLOSED = 200
"""Closed incidents remembered (and checkpointed); the audit log keeps them all."""


class ProbeOutcome(StrEnum):
    """How one golden probe ended; the policy's evidence about a replica's inference path."""

    OK = "ok"
    """Answered within the deadline with the golden probabilities."""
    WRONG = "wrong"
    """Answered, but with probabilities off the version's golden ones (HTTP 200, wrong answer)."""
    TIMEOUT = "timeout"
    """No answer within ``probe_timeout_s`` (one is a blip; several in a row are a hang)."""
    DEAD = "dead"
    """The replica's actor died under the probe."""
    ERROR = "error"
    """The replica raised: alive but failing. Several in a row, or one beside failed user calls, make
    the replica *failing* (see :func:`assess`)."""


# Plain-string forms for the hot comparisons of a step (every probe of every replica): on Python 3.11
# reading a member off its Enum class costs ~50 ns, five times reading a module name.
_OK, _TIMEOUT, _ERROR = ProbeOutcome.OK.value, ProbeOutcome.TIMEOUT.value, ProbeOutcome.ERROR.value


PROBE_OUTCOMES = tuple(ProbeOutcome)


class FaultKind(StrEnum):
    """What an incident is about (ARCHITECTURE.md's replica faults)."""

    DEAD = "dead"
    HUNG = "hung"
    ERROR = "error"
    """Alive and answering, but its inference path raises (a CUDA error, state broken by a bad reload)."""
    WRONG = "wrong"
    SLOW = "slow"
    LEAK = "leak"
    """Resident memory grows steadily toward the replica's limit: drained, then restarted before it."""
    GPU = "gpu"
    """Failing like ``error``, and what it raises is a GPU's fault (a CUDA error, GPU memory exhausted:
    :func:`controllers.policies.gpu.gpu_error_kind`): restarted the same way, recorded as the GPU's."""


class IncidentStatus(StrEnum):
    """Where an incident is: open from detection until confirmed recovered, failed or rejected."""

    OPEN = "open"
    RECOVERED = "recovered"
    FAILED = "failed"
    """A requested action was not confirmed within ``confirm_timeout_s``."""
    REJECTED = "rejected"
    """An operator rejected the proposed restart (approval mode)."""


class Approval(StrEnum):
    """An approval-mode proposal's answer: pending until an operator approves or rejects it."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class ControlMode(StrEnum):
    """``controller.mode``: heal on its own, or propose each restart and wait for an operator."""

    AUTO = "auto"
    APPROVE = "approve"


@dataclass(frozen=True)
class Probe:
    """One golden-input request sent through the member's real inference path."""

    ts: float
    outcome: ProbeOutcome
    latency_s: float
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", ProbeOutcome(self.outcome))  # a plain string is validated here


@dataclass(frozen=True)
class CallStats:
    """User-traffic outcomes for one replica over the recent window, as reported by gateways."""

    ok: int = 0
    errors: int = 0
    dead: int = 0
    timeouts: int = 0
    latencies_s: tuple[float, ...] = ()
    inflight: int = 0
    first_error_at: float | None = None
    """When the controller received the window's first error report (within a sync period of the error)."""
    ok_after_error: int = 0
    """Calls answered in reports received after that first error report: a replica that answers again
    after an error is not failing (calls in the same report may have come before the error)."""
    first_timeout_at: float | None = None
    """When the controller received the window's first report of a call timed out or lost to a hedge."""
    ok_after_timeout: int = 0
    """Calls answered in reports received after that first timeout report: a replica that answers again is
    not hung (it may be slow, which the slow rules judge)."""
    first_dead_at: float | None = None
    """When the controller received the window's first report of a call that died with the replica: the
    gateways' evidence of a crash, often before Ray's liveness read shows it (within a sync period)."""


@dataclass(frozen=True)
class ReplicaSnapshot:
    """One replica as the controller saw it this step: Serve's state, its probes, its calls, its liveness."""

    member: str
    replica: str
    state: str  # Serve's replica state: RUNNING, STARTING, STOPPING, ...
    probes: tuple[Probe, ...] = ()  # oldest first
    calls: CallStats = CallStats()
    alive: bool | None = None  # the actor's liveness per Ray's GCS; None when unknown
    seen_dead_at: float | None = None  # when the controller first read it dead (or gone from Serve's view)
    died_at: float | None = None
    """When Ray's GCS says the actor died (its worker's exit, :func:`controllers.observe.death_time`), when read:
    a crash's onset, earlier than ``seen_dead_at`` by up to a view period and the lag of Serve's view."""
    memory: tuple[MemorySample, ...] = ()  # resident-memory samples of the leak window, oldest first
    memory_limit_mb: float | None = None  # the member's configured limit (None: the node's headroom)
    node_id: str | None = None  # the node it runs (ran) on: the diagnosis groups a node's incidents by it
    death: str = ""  # a vanished replica's death record ("NODE_DIED: ...", "WORKER_DIED: ..."), when read


@dataclass(frozen=True)
class Observation:
    """The frozen input of one policy step: every replica of every member, and how many should serve."""

    now: float
    replicas: tuple[ReplicaSnapshot, ...]
    targets: Mapping[str, int]  # member → replicas that serve user traffic
    standby: Mapping[str, int] = field(default_factory=dict)  # member → hot standby replicas beyond that
    memory_threshold: float = DEFAULT_RAY_MEMORY_THRESHOLD  # Ray's memory-monitor threshold (node share)
    evicting: frozenset[str] = frozenset()  # replicas on a node the node keeper moves work off (avoided)


@dataclass(frozen=True)
class Finding:
    """The worst fault :func:`assess` found on one replica, with the evidence the incident will carry."""

    kind: FaultKind
    member: str
    replica: str
    evidence: dict[str, Any]
    first_evidence_at: float


@dataclass
class Incident:
    """One fault on one replica, from detection to confirmed recovery."""

    id: str
    kind: FaultKind
    member: str
    replica: str
    detected_at: float
    first_evidence_at: float
    evidence: dict[str, Any]
    status: IncidentStatus = IncidentStatus.OPEN
    action: str | None = None  # "restart" (or "await-replacement") once requested
    action_at: float | None = None
    action_outcome: str | None = None  # None while in flight, then "ok" or an error
    recovered_at: float | None = None
    suppressed: bool = False  # seen while paused
    approval: Approval | None = None  # approval mode: pending → approved | rejected
    node_id: str | None = None  # the node the replica ran on (None: unknown; older checkpoints)
    death: str = ""  # a vanished replica's death record (NODE_DIED: its node was lost), when Ray gave one

    def __post_init__(self) -> None:
        # Checkpoints hold plain strings: the same words, validated into their Enums on the way in.
        self.kind = FaultKind(self.kind)
        self.status = IncidentStatus(self.status)
        self.approval = None if self.approval is None else Approval(self.approval)

    @property
    def time_to_detect_s(self) -> float:
        """From the fault's onset (its first evidence: a crash's death time per Ray's GCS, the first failed
        call or probe) to the detection: how long the fault went unnoticed."""
        return self.detected_at - self.first_evidence_at

    @property
    def time_to_recover_s(self) -> float | None:
        """From the fault's onset to confirmed recovery (None while not recovered): how long the member was
        short of the replica, detection included. Measured from the onset, not the detection, because a
        standby can take a crashed replica's place in the step that detects the crash: from the detection
        that would read 0 s while users went without the replica for the whole detection time."""
        return None if self.recovered_at is None else self.recovered_at - self.first_evidence_at

    def to_record(self) -> dict[str, Any]:
        """The checkpoint form: every field as plain data (the JSON the controller has always written; the
        fields added since, :data:`OPTIONAL_FIELDS`, only when set, so an older checkpoint reads back as written)."""
        return {k: plain(v) for k, v in asdict(self).items() if k not in OPTIONAL_FIELDS or v not in (None, "")}

    def to_dict(self) -> dict[str, Any]:
        """The status form: the checkpoint fields plus the two durations, rounded for people."""
        d = self.to_record()
        d["time_to_detect_s"] = round(self.time_to_detect_s, 3)
        ttr = self.time_to_recover_s
        d["time_to_recover_s"] = None if ttr is None else round(ttr, 3)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Incident":
        """Read a checkpointed (or status) form back; unknown keys are ignored (older or newer writers)."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class RestartReplica:
    """Kill the replica's actor so Serve replaces it. ``action_id`` makes it idempotent."""

    action_id: str
    incident_id: str
    member: str
    replica: str
    reason: str


@dataclass(frozen=True)
class AuditEvent:
    """Something the policy saw or decided, for the audit trail (the recorder adds incident fields)."""

    kind: str
    target: str
    evidence: dict[str, Any]
    action: str
    outcome: str
    incident: str | None = None


@dataclass(frozen=True)
class StepResult:
    """What one policy step decided: actions to run, events to record, and the routing to publish."""

    actions: tuple[RestartReplica, ...]
    events: tuple[AuditEvent, ...]
    avoid: dict[str, tuple[str, ...]]  # member → replicas gateways must route around
    healthy: dict[str, tuple[str, ...]]  # member → replicas with no open incident and no failed check
    standby: dict[str, tuple[str, ...]] = field(default_factory=dict)  # member → healthy, held out of traffic


def _slow_evidence(seen_in: str, latency_s: float, peer_latency_s: float, limit_s: float,
                   **counts: int) -> dict[str, Any]:
    """One shape for every slow finding, whichever rule saw it: the replica's latency, its peers', the
    limit between them, and what showed it (``seen_in``: user calls, a probe with calls lost to hedges,
    or probes alone), so an operator or a test reads a slow incident the same way under any traffic."""
    return {"median_latency_s": round(latency_s, 4), "peer_latency_s": round(peer_latency_s, 4),
            "limit_s": round(limit_s, 4), "seen_in": seen_in, **counts}


def _recent_call_latencies(snap: ReplicaSnapshot, n: int) -> list[float]:
    """The latest ``n`` answered user calls' latencies (a report's calls beyond its cap carry none)."""
    return [x for x in snap.calls.latencies_s if x > 0][-n:]


def _slow_calls(snap: ReplicaSnapshot, peers: Sequence[ReplicaSnapshot], cfg: ControllerConfig) -> dict | None:
    """Slowness seen in user traffic, before probes can show it: the replica's latest ``slow_calls``
    answered calls all (but one) above the slow limit of its running peers' latest calls.

    Under traffic a replica answers dozens of calls per second against one probe, so its calls show a
    gray failure within a second; probes alone need ``slow_probes`` periods. Only against peers
    answering calls too (one replica has nothing to compare with: the probe rule covers it), and the
    limit is the probe rule's (``slow_factor`` × and ``slow_min_excess_s`` above the peers' median).
    """
    n = cfg.slow_calls
    if n <= 0:
        return None
    mine = _recent_call_latencies(snap, n)
    if len(mine) < n:
        return None
    theirs = [x for r in peers if r.replica != snap.replica and r.state == "RUNNING"
              for x in _recent_call_latencies(r, n)]
    if len(theirs) < n:
        return None
    ref = statistics.median(theirs)
    limit = max(ref * cfg.slow_factor, ref + cfg.slow_min_excess_s)
    slow = [x for x in mine if x > limit]
    if len(slow) < max(1, len(mine) - 1):
        return None
    return _slow_evidence("calls", statistics.median(mine), ref, limit, calls=len(mine))


def _slow_probe_and_lost_calls(snap: ReplicaSnapshot, peers: Sequence[ReplicaSnapshot],
                               cfg: ControllerConfig) -> dict | None:
    """Slowness the gateways already routed around: user calls to the replica lost to a hedge on a peer
    (or timed out) at least twice in the window, and its latest probe answered, but slower than the
    slow limit of its peers' probes.

    A gateway hedges a call still unanswered after ``hedge_after_s`` and then avoids the replica for
    ``eject_s``, so a slow replica soon gets no user calls whose latencies could show it; the lost calls
    say the users saw it, the probe says how slow it is (and that it is not hung). One probe with that
    corroboration instead of ``slow_probes`` alone: a second sooner per probe period.
    """
    probes = snap.probes
    if snap.calls.timeouts < 2 or not probes or probes[-1].outcome != _OK:
        return None
    ref = _peer_latency(snap, peers, cfg)
    if ref is None:
        return None
    limit = max(ref * cfg.slow_factor, ref + cfg.slow_min_excess_s)
    if probes[-1].latency_s <= limit:
        return None
    return _slow_evidence("probe and lost calls", probes[-1].latency_s, ref, limit, lost_calls=snap.calls.timeouts)


def _median(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def _peer_latency(snap: ReplicaSnapshot, peers: Sequence[ReplicaSnapshot], cfg: ControllerConfig) -> float | None:
    # ``peers`` excludes standby replicas: idle, they answer faster than replicas under load.
    lat = [p.latency_s for r in peers if r.replica != snap.replica and r.state == "RUNNING" and r.probes
           and r.probes[-1].outcome == _OK
           for p in r.probes[-cfg.slow_probes:] if p.outcome == _OK]
    return _median(lat)


def crash_onset(snap: ReplicaSnapshot, seen_at: float | None) -> float:
    """When a crashed replica died: the earliest of what dates it — Ray's GCS death time (``died_at``), the
    first call a gateway saw die with it (``calls.first_dead_at``) and ``seen_at`` (when the rule that fired
    saw it: the liveness read, the probe that died). Each is a bound from above on the real death, so the
    earliest is the closest. Nothing at all dates it: ``inf``, which the step caps at its ``now`` (a time to
    detect of 0, never one counted from the epoch); so is a GCS clock ahead of the controller's.

    >>> s = ReplicaSnapshot("mlp", "a", "RUNNING", alive=False, seen_dead_at=10.0, died_at=9.2,
    ...                     calls=CallStats(dead=2, first_dead_at=9.6))
    >>> crash_onset(s, 10.0)
    9.2
    >>> crash_onset(ReplicaSnapshot("mlp", "a", "RUNNING", calls=CallStats(dead=1, first_dead_at=9.6)), 10.0)
    9.6
    """
    return min((t for t in (snap.died_at, snap.calls.first_dead_at, seen_at) if t is not None), default=math.inf)


def _dead_evidence(snap: ReplicaSnapshot, evidence: dict[str, Any]) -> dict[str, Any]:
    """A dead finding's evidence, with what dated the crash where the controller knows it (so an operator
    reading the incident sees where its time to detect starts)."""
    out = dict(evidence)
    if snap.died_at is not None:
        out["died_at"] = round(snap.died_at, 3)  # the GCS's death record
    if snap.calls.first_dead_at is not None:
        out["first_dead_call_at"] = round(snap.calls.first_dead_at, 3)
    return out


def assess(snap: ReplicaSnapshot, peers: Sequence[ReplicaSnapshot], cfg: ControllerConfig, *,
           baseline_latency_s: float | None = None, leak: LeakAssessment | None = None) -> Finding | None:
    """The worst fault the evidence shows for one replica, or None if it looks healthy.

    ``peers`` are the member's replicas (this one may be among them). Slowness is
    judged against peers that answer probes; ``baseline_latency_s`` (the member's
    usual latency) stands in only for a member with no other replica at all — when
    a peer is merely down, the survivor carries its load and is slower for a good
    reason, and flagging it would take the whole member down. ``leak`` is the verdict on the
    replica's memory series (:meth:`HealingPolicy.step` computes it once per new sample); a leak
    ranks below the faults that already cost answers and above slowness.
    """
    probes = snap.probes
    calls = snap.calls

    def found(kind: FaultKind, evidence: dict[str, Any], since: Sequence[Probe] = ()) -> Finding:
        first = min((p.ts for p in since), default=probes[-1].ts if probes else 0.0)
        return Finding(kind, snap.member, snap.replica, evidence, first)

    if snap.alive is False:  # Ray already knows the process is gone; Serve's view lags seconds
        return Finding(FaultKind.DEAD, snap.member, snap.replica, _dead_evidence(snap, {"actor": "DEAD per Ray GCS"}),
                       crash_onset(snap, snap.seen_dead_at if snap.seen_dead_at is not None
                                   else (probes[-1].ts if probes else None)))
    if probes and probes[-1].outcome == ProbeOutcome.DEAD:
        return Finding(FaultKind.DEAD, snap.member, snap.replica, _dead_evidence(snap, {"probe": probes[-1].detail}),
                       crash_onset(snap, probes[-1].ts))
    if calls.dead and not (probes and probes[-1].outcome == _OK):
        return Finding(FaultKind.DEAD, snap.member, snap.replica, _dead_evidence(snap, {"failed_calls": calls.dead}),
                       crash_onset(snap, probes[-1].ts if probes else None))

    tail: list[Probe] = []
    for p in reversed(probes):
        if p.outcome != _TIMEOUT:
            break
        tail.append(p)
    if len(tail) >= cfg.hang_probe_timeouts:
        return found(FaultKind.HUNG, {"probe_timeouts": len(tail), "probe_timeout_s": cfg.probe_timeout_s,
                              "call_timeouts": calls.timeouts}, tail)
    if tail and calls.timeouts >= 2 and calls.ok_after_timeout == 0 and (
            calls.ok == 0 or any(_answers(r) for r in peers if r.replica != snap.replica)):
        # One probe timeout corroborated by user calls lost to hedges (or timed out) with none answered
        # there since: two independent witnesses, a probe period sooner than ``hang_probe_timeouts``
        # probes alone. Answered calls from before the first loss (still in the window) say nothing
        # about now, but then a peer must answer (shared overload is not a hang of this replica).
        first = min([p.ts for p in tail] + ([calls.first_timeout_at] if calls.first_timeout_at is not None else []))
        return Finding(FaultKind.HUNG, snap.member, snap.replica,
                       {"probe_timeouts": len(tail), "call_timeouts": calls.timeouts, "calls_ok_since": 0}, first)

    failing = _failing(snap, peers, cfg)
    if failing is not None:
        evidence, first = failing
        gpu = gpu_error_kind(evidence.get("probe", ""))
        if gpu is not None:  # the error path heals it; the audit says the GPU broke
            return Finding(FaultKind.GPU, snap.member, snap.replica, {**evidence, "gpu_fault": str(gpu)}, first)
        return Finding(FaultKind.ERROR, snap.member, snap.replica, evidence, first)

    if probes and probes[-1].outcome == ProbeOutcome.WRONG:
        return found(FaultKind.WRONG, {"probe": probes[-1].detail}, probes[-1:])

    if leak is not None and leak.fires:
        return Finding(FaultKind.LEAK, snap.member, snap.replica, leak.evidence(cfg.leak_horizon_s),
                       leak.recent_since if leak.recent_since is not None else leak.last_ts)

    slow_calls = _slow_calls(snap, peers, cfg)
    if slow_calls is not None:
        return found(FaultKind.SLOW, slow_calls)
    lost = _slow_probe_and_lost_calls(snap, peers, cfg)
    if lost is not None:
        return found(FaultKind.SLOW, lost, probes[-1:])

    ok = [p for p in probes if p.outcome == _OK][-cfg.slow_probes:]
    if len(ok) >= cfg.slow_probes:
        mine = _median(p.latency_s for p in ok)
        ref = _peer_latency(snap, peers, cfg)
        if ref is None and all(r.replica == snap.replica for r in peers):
            ref = baseline_latency_s
        if mine is not None and ref is not None:
            limit = max(ref * cfg.slow_factor, ref + cfg.slow_min_excess_s)
            slow = [p for p in ok if p.latency_s > limit]
            if mine > limit and len(slow) >= max(1, len(ok) - 1):
                return found(FaultKind.SLOW, _slow_evidence("probes", mine, ref, limit, probes=len(ok)), slow)
    return None


def _answers(snap: ReplicaSnapshot) -> bool:
    """A peer that shows the member's inference path works: its latest probe passed or it answered user
    calls, and its own calls in the window did not mostly raise (a peer failing too vouches for nothing)."""
    calls = snap.calls
    works = (bool(snap.probes) and snap.probes[-1].outcome == _OK) or calls.ok > 0
    return snap.state == "RUNNING" and snap.alive is not False and works and calls.errors <= calls.ok


def _failing(snap: ReplicaSnapshot, peers: Sequence[ReplicaSnapshot], cfg: ControllerConfig
             ) -> tuple[dict[str, Any], float] | None:
    """Evidence that the replica's inference path raises, and when it began, or None.

    Consecutive probe errors are enough on their own (``error_probes``); user calls that raised
    (``error_calls``, none answered there since the first of them) count only against a peer that answers,
    the way Envoy's outlier detection ejects a host whose requests fail while its cluster's others
    succeed: when every replica of a member raises, the cause is shared (the version, the inputs)
    and restarting them all would only take the member down. One probe error and one call error
    are two independent witnesses and count together.
    """
    calls = snap.calls
    if not calls.errors and not (snap.probes and snap.probes[-1].outcome == _ERROR):
        return None  # the usual case, decided without looking further
    tail: list[Probe] = []
    for p in reversed(snap.probes):
        if p.outcome != _ERROR:
            break
        tail.append(p)
    peer_ok = any(_answers(r) for r in peers if r.replica != snap.replica)
    evidence: dict[str, Any] = {"probe_errors": len(tail), "call_errors": calls.errors, "calls_ok": calls.ok}
    if tail:
        evidence["probe"] = tail[0].detail
    first = min([p.ts for p in tail] + ([calls.first_error_at] if calls.first_error_at is not None else []),
                default=snap.probes[-1].ts if snap.probes else 0.0)
    if len(tail) >= cfg.error_probes:
        return evidence, first
    # Answered calls from before the first error (still in the window) say nothing about now.
    if calls.ok_after_error == 0 and peer_ok and (calls.errors >= cfg.error_calls or (tail and calls.errors >= 1)):
        return evidence, first
    return None


def _avoid_evicting(avoid: dict[str, tuple[str, ...]], by_member: Mapping[str, Sequence[ReplicaSnapshot]],
                    evicting: frozenset[str]) -> dict[str, tuple[str, ...]]:
    """The avoid lists plus the replicas on a node being evicted (:mod:`controllers.policies.node`), for
    each member that keeps a serving replica elsewhere: a member whose every replica is there keeps
    serving from them until Serve's replacements run (Serve stops the old ones only then)."""
    out = dict(avoid)
    for mem, snaps in by_member.items():
        there = [s.replica for s in snaps if s.replica in evicting and s.replica not in out.get(mem, ())]
        if not there:
            continue
        elsewhere = [s for s in snaps if _serving(s) and s.replica not in evicting and s.replica not in out.get(mem, ())]
        if elsewhere:
            out[mem] = tuple(sorted(set(out.get(mem, ())) | set(there)))
    return out


def _healthy(snap: ReplicaSnapshot) -> bool:
    """Strict: the latest probe passed (what confirming a recovery needs)."""
    return (snap.state == "RUNNING" and snap.alive is not False and bool(snap.probes)
            and snap.probes[-1].outcome == _OK)


def _serving(snap: ReplicaSnapshot) -> bool:
    """Lenient: nothing says it is broken (a lone late probe is not proof; weights use this)."""
    return (snap.state == "RUNNING" and snap.alive is not False and bool(snap.probes)
            and snap.probes[-1].outcome in (_OK, _TIMEOUT))


def systemic_timeouts(replicas: Sequence[ReplicaSnapshot], *, share: float = 0.5, minimum: int = 3) -> bool:
    """Whether probes time out on so many replicas at once that the cause is shared.

    One hung replica is a replica fault; half the fleet timing out together is CPU
    starvation, a stalled controller or a network problem, and restarting
    everything would only make it worse (a restart storm).
    """
    running = [r for r in replicas if r.state == "RUNNING" and r.probes]
    late = [r for r in running if r.probes[-1].outcome == _TIMEOUT]
    return len(running) >= minimum and len(late) >= max(2, share * len(running))


def choose_standby(snaps: Sequence[ReplicaSnapshot], target: int, spares: int, flagged: set[str],
                   previous: Sequence[str], active: set[str]) -> tuple[str, ...]:
    """The member's replicas to hold out of traffic: as many as ``spares``, never so many that fewer
    than ``target`` serve. Only replicas whose latest probe passed stand by; ``previous`` standbys
    keep the role, then replicas that were not ``active`` (taking traffic) last step — a
    replacement — then by id."""
    serving = [s for s in snaps if _serving(s) and s.replica not in flagged]
    room = min(spares, len(serving) - target)
    if room <= 0:
        return ()
    fit = {s.replica for s in serving if _healthy(s)}
    order = sorted(fit, key=lambda r: (r not in previous, r in active, r))
    return tuple(sorted(order[:room]))


@dataclass
class _Memory:
    """What the policy remembers between steps; checkpointed by the controller."""

    incidents: dict[str, Incident] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)  # times of requested restarts (rate limit)
    last_restart: dict[str, float] = field(default_factory=dict)  # member → time
    baseline_latency: dict[str, float] = field(default_factory=dict)  # member → EWMA of healthy probe latency
    quarantined: list[str] = field(default_factory=list)  # members with no healthy replica
    standby: dict[str, list[str]] = field(default_factory=dict)  # member → replicas held out of traffic
    seq: int = 0
    systemic: bool = False
    active: set[str] = field(default_factory=set)  # replicas that took traffic last step (not checkpointed)


class HealingPolicy:
    """Stateful but pure: same observations in, same decisions out."""

    def __init__(self, config: ControllerConfig, memory: Mapping[str, Any] | None = None) -> None:
        self.cfg = config
        self.paused = False
        self.approval = config.mode == ControlMode.APPROVE
        self._m = _Memory()
        self._leaks: dict[str, LeakAssessment] = {}  # replica → verdict on its latest samples (not checkpointed)
        if memory:
            self._m = _Memory(
                incidents={k: Incident.from_dict(v) for k, v in memory.get("incidents", {}).items()},
                restarts=list(memory.get("restarts", [])),
                last_restart=dict(memory.get("last_restart", {})),
                baseline_latency=dict(memory.get("baseline_latency", {})),
                quarantined=list(memory.get("quarantined", [])),
                standby={k: list(v) for k, v in memory.get("standby", {}).items()},
                seq=int(memory.get("seq", 0)),
            )
            self.paused = bool(memory.get("paused", False))
            self.approval = bool(memory.get("approval", self.approval))

    # ---- persistence ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The policy's memory for the controller's checkpoint (plain JSON; read back by the constructor)."""
        return {"incidents": {k: v.to_record() for k, v in self._m.incidents.items()},
                "restarts": self._m.restarts, "last_restart": self._m.last_restart,
                "baseline_latency": self._m.baseline_latency, "quarantined": self._m.quarantined,
                "standby": self._m.standby, "seq": self._m.seq, "paused": self.paused, "approval": self.approval}

    @property
    def mode(self) -> ControlMode:
        """auto (heal on its own) or approve (propose restarts and wait for an operator)."""
        return ControlMode.APPROVE if self.approval else ControlMode.AUTO

    @property
    def incidents(self) -> list[Incident]:
        """Every remembered incident, oldest first (closed ones are bounded by ``KEEP_CLOSED``)."""
        return sorted(self._m.incidents.values(), key=lambda i: i.detected_at)

    def open_incident(self, replica: str) -> Incident | None:
        """The replica's open incident, if it has one (at most one per replica)."""
        return next((i for i in self._m.incidents.values()
                     if i.replica == replica and i.status == IncidentStatus.OPEN), None)

    def memory_report(self) -> dict[str, dict[str, Any]]:
        """Each replica's memory line for ``/v1/status``: resident memory, slope, limit, forecast."""
        return {rid: a.report() for rid, a in self._leaks.items()}

    def _leak(self, snap: ReplicaSnapshot, threshold: float) -> LeakAssessment | None:
        """The memory verdict on ``snap``'s samples, computed again only when a sample came in (a
        Theil-Sen fit costs ~0.2 ms; samples come once per probe period, steps four times as often)."""
        mem = snap.memory
        if not mem:
            return None
        cached = self._leaks.get(snap.replica)
        if cached is not None and cached.last_ts == mem[-1].ts and cached.samples == len(mem):
            return cached
        cfg = self.cfg
        limit, source = memory_limit(mem[-1], limit_mb=snap.memory_limit_mb, threshold=threshold)
        verdict = assess_leak(mem, limit_bytes=limit, limit_source=source, min_samples=cfg.leak_min_samples,
                              min_span_s=cfg.leak_min_span_s, horizon_s=cfg.leak_horizon_s,
                              confidence=cfg.leak_confidence)
        self._leaks[snap.replica] = verdict
        return verdict

    def _drained(self, inc: Incident, snap: ReplicaSnapshot | None, now: float) -> AuditEvent | None:
        """A leaking replica may be killed once it is drained: avoided for ``leak_drain_settle_s`` (every
        gateway has the avoid list) and no call in flight to it per the gateways' reports, or
        ``leak_drain_timeout_s`` after it was avoided regardless. The drain's audit event then, else None."""
        cfg = self.cfg
        waited = now - inc.detected_at
        inflight = snap.calls.inflight if snap is not None else 0
        if waited < cfg.leak_drain_settle_s or (inflight > 0 and waited < cfg.leak_drain_timeout_s):
            return None
        return AuditEvent("drained", f"{inc.member}/{inc.replica}",
                          {"waited_s": round(waited, 3), "inflight": inflight,
                           "deadline_reached": inflight > 0}, "restart", "ok", inc.id)

    @property
    def quarantined(self) -> list[str]:
        """Members with no healthy replica: their weight is 0 until one recovers."""
        return list(self._m.quarantined)

    # ---- the step ----------------------------------------------------------------------

    def step(self, obs: Observation) -> StepResult:
        """Detect, act and confirm on one observation; the only method that advances the memory.

        Returns the restarts to run (their intent is already in the memory, so the caller
        checkpoints before running them), the audit events, and the routing to publish.
        """
        now, cfg, m = obs.now, self.cfg, self._m
        events: list[AuditEvent] = []
        actions: list[RestartReplica] = []
        by_member: dict[str, list[ReplicaSnapshot]] = {}
        for snap in obs.replicas:
            by_member.setdefault(snap.member, []).append(snap)
        present = {s.replica for s in obs.replicas}
        leaks: dict[str, LeakAssessment] = {}
        for snap in obs.replicas:
            if snap.memory and snap.state == "RUNNING":
                verdict = self._leak(snap, obs.memory_threshold)
                if verdict is not None:
                    leaks[snap.replica] = verdict
        for rid in [r for r in self._leaks if r not in present]:
            del self._leaks[rid]

        # Learn each member's normal latency from replicas that look fine.
        for member, snaps in by_member.items():
            ok = [p.latency_s for s in snaps if _healthy(s) and not self.open_incident(s.replica)
                  for p in s.probes[-cfg.slow_probes:] if p.outcome == _OK]
            if ok:
                med = statistics.median(ok)
                old = m.baseline_latency.get(member)
                m.baseline_latency[member] = med if old is None else 0.9 * old + 0.1 * med

        # Detect: at most one open incident per replica.
        systemic = systemic_timeouts(obs.replicas)
        if systemic and not m.systemic:
            events.append(AuditEvent("systemic-timeouts", "cluster",
                                     {"replicas_late": sum(1 for r in obs.replicas if r.probes
                                                           and r.probes[-1].outcome == _TIMEOUT)},
                                     "hold restarts for hangs", "ok"))
        m.systemic = systemic
        # Latency is only comparable when nothing is starting up: a replica loading its model
        # steals CPU from its neighbours (on small machines, a lot), so slowness measured
        # during a replacement says nothing about the replica measured.
        settling = any(s.state == "STARTING" for s in obs.replicas) or any(
            i.status == IncidentStatus.OPEN and i.action == "restart" for i in m.incidents.values())
        findings: list[Finding] = []
        # Replicas already healed away (restarted, or left to Serve to replace): Serve may list a killed
        # replica as RUNNING for a few seconds after a standby made its incident recovered.
        retired = {i.replica for i in m.incidents.values() if i.status == IncidentStatus.RECOVERED and i.action}
        for snap in obs.replicas:
            if (snap.state not in ("RUNNING", "GONE") or self.open_incident(snap.replica)
                    or snap.replica in retired):
                continue
            standing_by = set(m.standby.get(snap.member, ()))
            peers = [s for s in by_member[snap.member] if s.replica not in standing_by or s.replica == snap.replica]
            finding = assess(snap, peers, cfg, baseline_latency_s=m.baseline_latency.get(snap.member),
                             leak=leaks.get(snap.replica))
            if finding is None or (systemic and finding.kind == FaultKind.HUNG):
                continue
            findings.append(finding)
        slow_members = {f.member for f in findings if f.kind == FaultKind.SLOW}
        if len(slow_members) > 1 or settling:
            findings = [f for f in findings if f.kind != FaultKind.SLOW]  # shared slowness: contention, not a replica
        nodes = {s.replica: s.node_id for s in obs.replicas if s.node_id}
        deaths = {s.replica: s.death for s in obs.replicas if s.death}
        for finding in findings:
            m.seq += 1
            inc = Incident(id=f"inc-{m.seq:06d}", kind=finding.kind, member=finding.member,
                           replica=finding.replica, detected_at=now,
                           first_evidence_at=min(finding.first_evidence_at, now), evidence=finding.evidence,
                           node_id=nodes.get(finding.replica), death=deaths.get(finding.replica, ""))
            m.incidents[inc.id] = inc
            events.append(AuditEvent(f"detected-{finding.kind}", f"{finding.member}/{finding.replica}",
                                     finding.evidence, "avoid", "ok", inc.id))

        # Act: restart under cooldown, cap and one-in-flight-per-member limits.
        m.restarts = [t for t in m.restarts if now - t < cfg.restart_window_s]
        for inc in self.incidents:
            if inc.status != IncidentStatus.OPEN or inc.action is not None:
                continue
            target = f"{inc.member}/{inc.replica}"
            if self.paused:
                if not inc.suppressed:
                    inc.suppressed = True
                    events.append(AuditEvent("suppressed", target, {"incident": inc.kind}, "restart",
                                             "paused by operator", inc.id))
                continue
            gone = next((s.state == "GONE" for s in obs.replicas if s.replica == inc.replica), True)
            if gone and inc.kind == FaultKind.DEAD:  # Serve replaces a crashed replica itself: confirm it
                inc.action, inc.action_at, inc.action_outcome = "await-replacement", now, "ok: Serve replaces it"
                events.append(AuditEvent("await-replacement", target, {"incident": inc.kind}, inc.action,
                                         inc.action_outcome, inc.id))
                continue
            if inc.replica not in present:
                continue  # already gone; recovery check below closes it
            if self.approval and inc.approval != Approval.APPROVED:
                if inc.approval is None:  # propose once; the operator decides (`raymedic approve|reject`)
                    inc.approval = Approval.PENDING
                    events.append(AuditEvent("proposed", target, {"incident": inc.kind, "evidence": inc.evidence},
                                             "restart", "awaiting approval", inc.id))
                continue
            # One replacement at a time per member: until the last one is confirmed serving, the
            # member is short of a replica and the survivors carry its load.
            in_flight = any(o.member == inc.member and o.status == IncidentStatus.OPEN and o.action == "restart"
                            for o in m.incidents.values())
            since_last = now - m.last_restart.get(inc.member, float("-inf"))
            if in_flight or since_last < cfg.member_cooldown_s or len(m.restarts) >= cfg.max_restarts:
                continue
            if inc.kind == FaultKind.LEAK:  # drain first: no call it is answering is cut off
                drained = self._drained(inc, next((s for s in obs.replicas if s.replica == inc.replica), None), now)
                if drained is None:
                    continue
                events.append(drained)
            inc.action, inc.action_at = "restart", now
            m.restarts.append(now)
            m.last_restart[inc.member] = now
            actions.append(RestartReplica(f"restart:{inc.member}:{inc.replica}", inc.id, inc.member, inc.replica,
                                          f"{inc.kind}: {inc.evidence}"))

        # Confirm: the faulty replica is gone and the member is back at strength with healthy replicas.
        for inc in self.incidents:
            if inc.status != IncidentStatus.OPEN:
                continue
            snaps = by_member.get(inc.member, [])
            fresh = [s for s in snaps if s.replica != inc.replica and _healthy(s) and not self.open_incident(s.replica)
                     and s.replica not in retired]
            snap = next((s for s in obs.replicas if s.replica == inc.replica), None)
            gone = snap is None or snap.state != "RUNNING" or snap.alive is False
            # At strength apart from replicas with faults of their own (each has its incident).
            others = sum(1 for o in m.incidents.values() if o.member == inc.member and o.status == IncidentStatus.OPEN
                         and o.id != inc.id and o.replica in present)
            need = max(1, obs.targets.get(inc.member, 1) - others)
            if gone and len(fresh) >= need:
                inc.status, inc.recovered_at = IncidentStatus.RECOVERED, now
                if inc.action:
                    retired.add(inc.replica)
                events.append(AuditEvent("recovered", f"{inc.member}/{inc.replica}",
                                         {"healthy_replicas": sorted(s.replica for s in fresh)},
                                         inc.action or "none", "ok", inc.id))
            elif inc.action_at is not None and now - inc.action_at > cfg.confirm_timeout_s:
                inc.status = IncidentStatus.FAILED
                events.append(AuditEvent("recovery-failed", f"{inc.member}/{inc.replica}",
                                         {"waited_s": round(now - inc.action_at, 1)}, inc.action or "none",
                                         "not confirmed in time", inc.id))

        avoid = {mem: tuple(sorted(i.replica for i in m.incidents.values()
                                   if i.member == mem and i.status == IncidentStatus.OPEN))
                 for mem in by_member}
        if obs.evicting:
            avoid = _avoid_evicting(avoid, by_member, obs.evicting)
        healthy = {mem: tuple(sorted(s.replica for s in snaps if _serving(s) and not self.open_incident(s.replica)
                                     and s.replica not in retired)) for mem, snaps in by_member.items()}
        standby: dict[str, tuple[str, ...]] = {}
        for mem, snaps in by_member.items():
            chosen = choose_standby(snaps, obs.targets.get(mem, 1), obs.standby.get(mem, 0),
                                    set(avoid.get(mem, ())) | retired, m.standby.get(mem, ()), m.active)
            if chosen:
                standby[mem] = chosen
            if tuple(m.standby.get(mem, ())) != chosen:
                # A standby that now takes traffic (not one that left or failed: its incident says so).
                still = {s.replica for s in snaps if s.state == "RUNNING"} - set(avoid.get(mem, ()))
                released = sorted((set(m.standby.get(mem, ())) & still) - set(chosen))
                if released:
                    events.append(AuditEvent("standby-serves", mem, {"replicas": released,
                                                                     "flagged": list(avoid.get(mem, ()))},
                                             "route traffic to standby", "ok"))
            if chosen:
                m.standby[mem] = list(chosen)
            else:
                m.standby.pop(mem, None)
        m.active = {r for mem, rs in healthy.items() for r in rs if r not in standby.get(mem, ())}
        for mem in sorted(obs.targets):
            down = not healthy.get(mem)
            if down and mem not in m.quarantined and by_member.get(mem) is not None and any(
                    s.probes for s in by_member[mem]):
                m.quarantined.append(mem)
                events.append(AuditEvent("quarantine", mem, {"healthy_replicas": 0}, "weight 0", "ok"))
            elif not down and mem in m.quarantined:
                m.quarantined.remove(mem)
                events.append(AuditEvent("unquarantine", mem, {"healthy_replicas": list(healthy[mem])},
                                         "weight restored", "ok"))
        closed = [i for i in self.incidents if i.status != IncidentStatus.OPEN]
        for old in closed[:-KEEP_CLOSED]:  # bounded memory and checkpoint
            del m.incidents[old.id]
        return StepResult(tuple(actions), tuple(events), avoid, healthy, standby)

    def decide(self, incident_id: str, approve: bool, who: str, now: float) -> AuditEvent:
        """An operator's answer to a proposed restart. Approved: it runs on the next step (cooldowns
        and caps still apply). Rejected: the incident closes as rejected and the replica is no
        longer avoided; if the fault persists it is detected, and proposed, again.

        Raises:
            KeyError: no incident with that id.
            ValueError: the incident has no pending proposal.
        """
        inc = self._m.incidents.get(incident_id)
        if inc is None:
            raise KeyError(incident_id)
        if inc.status != IncidentStatus.OPEN or inc.approval != Approval.PENDING:
            raise ValueError(f"incident {incident_id} has no pending proposal (status {inc.status}, "
                             f"approval {inc.approval})")
        target = f"{inc.member}/{inc.replica}"
        if approve:
            inc.approval = Approval.APPROVED
            return AuditEvent("approved", target, {"by": who}, "restart", "approved", inc.id)
        inc.approval, inc.status = Approval.REJECTED, IncidentStatus.REJECTED
        return AuditEvent("rejected", target, {"by": who}, "none", "rejected", inc.id)

    def proposals(self) -> list[Incident]:
        """Open incidents whose restart waits for an operator's answer (approval mode)."""
        return [i for i in self.incidents if i.status == IncidentStatus.OPEN and i.approval == Approval.PENDING]

    def action_done(self, incident_id: str, outcome: str) -> AuditEvent | None:
        """Record how a requested restart went (``"ok"`` or an error text)."""
        inc = self._m.incidents.get(incident_id)
        if inc is None:
            return None
        inc.action_outcome = outcome
        return AuditEvent("restart", f"{inc.member}/{inc.replica}", {"incident": inc.kind}, "restart", outcome,
                          inc.id)

    def pending_actions(self) -> list[RestartReplica]:
        """Restarts requested but never confirmed executed (a controller killed mid-action)."""
        return [RestartReplica(f"restart:{i.member}:{i.replica}", i.id, i.member, i.replica, "resume")
                for i in self.incidents if i.status == IncidentStatus.OPEN and i.action and i.action_outcome is None]
