"""Nodes under memory or CPU pressure: when to move the work off one (pure: no Ray).

A node starved of CPU (a noisy neighbour, a runaway batch job) slows every replica on
it; a node whose memory nears Ray's memory-monitor threshold has its workers killed
by Ray (``RAY_memory_usage_threshold``, default 0.95 of the node's memory), replicas
first among them. Neither is a fault of a replica, so restarting one where it is buys
nothing: the work has to leave the node. This module decides when, from the per-node
readings the controller's node agents take (:mod:`controllers.nodes`):

- **memory**: the node's used share (``1 - available / total``, psutil's reading, as
  the leak rule's) against the threshold the node's raylet runs with (its
  ``_system_config``, else its environment, else Ray's default: :func:`effective_memory_threshold`),
  less ``node_memory_margin``: past it Ray is one allocation away from killing;
- **CPU**: the CPU time the node's *own* processes (its raylet and every process under
  it: replica workers, agents) used per second, against the cores that node may use —
  the host's cores when the node has the host to itself, its fair share of them (by
  logical CPUs) when several raylets share one host, as a local multi-node cluster does.
  Machine-wide load cannot tell one local node from another; a node's own processes
  can. A node alone on its host also counts the host's busy share (a neighbour outside
  Ray starves it just as well);
- **sustained, with hysteresis**: pressure begins only when at least ``node_min_samples``
  readings spanning ``node_min_span_s`` of the last ``node_window_s`` are *all* over the
  high mark (one busy second, a model load, is not pressure) and ends only when they are
  all under the low mark (``node_cpu_low``, or the memory mark less the margin again).

What to do (:class:`NodeWatch`): a pressured node that hosts member replicas, when
another node has room for them (alive, not draining, not under pressure itself, with
the logical CPUs the replicas need), is *evicted*: its replicas are avoided at once (the
gateways route to their peers and standbys elsewhere), then, after
``node_drain_settle_s``, the node is drained through Ray (Serve then starts each
replacement elsewhere and stops the old replica only once the new one runs). With no
room anywhere nothing is moved — moving would only crowd the other nodes onto the same
shortage — and the gateways' admission limit sheds what the service cannot carry (503
with Retry-After), which the status says. The head node is never drained (the GCS, the
Serve controller and the HTTP proxy live there). One drain at a time, a cooldown
between two, a budget per window; paused by ``raymedic pause``; proposed first in
approval mode (``node-NNNNNN``).

>>> s = NodeSettings(window_s=10, min_samples=3, min_span_s=4, cpu_high=0.9, cpu_low=0.6, memory_margin=0.05)
>>> hot = [NodeReading(float(t), cpu_share=1.4, memory_used=0.5, memory_threshold=0.95) for t in range(0, 10, 2)]
>>> assess_node(hot, s, pressured=False).state
<Pressure.CPU: 'cpu'>
>>> blip = hot[:-1] + [NodeReading(8.0, cpu_share=0.3, memory_used=0.5, memory_threshold=0.95)]
>>> assess_node(blip, s, pressured=False).state, assess_node(blip, s, pressured=True).state
(<Pressure.NONE: 'none'>, <Pressure.CPU: 'cpu'>)
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from controllers.policies.leak import ray_memory_threshold
from controllers.policies.replica import Approval
from raymedic.config import ControllerConfig
from raymedic.enums import StrEnum

__all__ = [
    "NODE_SAMPLES_KEPT",
    "DrainNode",
    "NodeAssessment",
    "NodeInfo",
    "NodePhase",
    "NodeReading",
    "NodeSeries",
    "NodeSettings",
    "NodeStep",
    "NodeWatch",
    "Pressure",
    "ReplicaPlacement",
    "assess_node",
    "cpu_shares",
    "effective_memory_threshold",
    "room_for",
]

NODE_SAMPLES_KEPT = 600
"""Readings remembered per node (bounded whatever the window)."""


def effective_memory_threshold(system_config: Mapping[str, Any] | None, env: Mapping[str, str] = os.environ
                               ) -> float:
    """The used-memory share at which a node's raylet starts killing workers.

    Ray reads ``memory_usage_threshold`` from the ``_system_config`` the cluster was started with
    (it wins), else from the raylet's ``RAY_memory_usage_threshold`` environment variable (a worker
    inherits its raylet's environment, so a node agent reads its own), else 0.95.

    >>> effective_memory_threshold({"memory_usage_threshold": 0.8}, {"RAY_memory_usage_threshold": "0.9"})
    0.8
    >>> effective_memory_threshold({}, {"RAY_memory_usage_threshold": "0.9"}), effective_memory_threshold(None, {})
    (0.9, 0.95)
    """
    value = (system_config or {}).get("memory_usage_threshold")
    try:
        if value is not None and 0 < float(value) <= 1:
            return float(value)
    except (TypeError, ValueError):
        pass
    return ray_memory_threshold(env)


class NodeInfo(NamedTuple):
    """One node as its agent read it (the raw reading; :func:`cpu_shares` turns CPU time into a share).

    Attributes:
        ts: When the controller got the reading.
        node_id: Ray's node id (hex).
        name: What people call it: its ``raymedic.dev/node`` label, else the first 8 hex digits of its id.
        host: The host it runs on (nodes of a local multi-node cluster share one).
        is_head: The head node (never drained).
        draining: Ray has it DRAINING (nothing new is placed there).
        logical_cpus: Its ``CPU`` resource.
        free_cpus: The ``CPU`` resource still unclaimed on it.
        own_cores: CPU seconds per second its own processes (its raylet's process tree) used since
            the agent's previous reading (None on the first).
        host_busy: The host's busy CPU share since the previous reading (0..1).
        host_cores: The host's cores.
        memory_total: The host's memory (bytes).
        memory_available: What is available of it.
        memory_threshold: Its raylet's memory-monitor threshold.
    """

    ts: float
    node_id: str
    name: str
    host: str
    is_head: bool
    draining: bool
    logical_cpus: float
    free_cpus: float
    own_cores: float | None
    host_busy: float
    host_cores: int
    memory_total: float
    memory_available: float
    memory_threshold: float


class NodeReading(NamedTuple):
    """The two pressures of one node at one time, as the rule compares them."""

    ts: float
    cpu_share: float | None
    """Its own processes' CPU over the cores it may use (1.0: all of them; None: not known yet)."""
    memory_used: float
    """Used share of its memory (0..1)."""
    memory_threshold: float


def cpu_shares(infos: Sequence[NodeInfo]) -> dict[str, float | None]:
    """node_id → the CPU share its own processes took of the cores it may use (see the module).

    >>> a = NodeInfo(0.0, "a", "head", "h1", True, False, 4, 4, 0.4, 0.9, 2, 8e9, 4e9, 0.95)
    >>> b = a._replace(node_id="b", name="worker-1", is_head=False, own_cores=1.2)
    >>> c = a._replace(node_id="c", host="h2", own_cores=0.2, host_busy=0.7)
    >>> {k: round(v, 2) for k, v in cpu_shares([a, b, c]).items()}  # a, b share h1's 2 cores; c is alone
    {'a': 0.4, 'b': 1.2, 'c': 0.7}
    """
    by_host: dict[str, list[NodeInfo]] = {}
    for n in infos:
        by_host.setdefault(n.host, []).append(n)
    out: dict[str, float | None] = {}
    for nodes in by_host.values():
        logical = sum(max(n.logical_cpus, 0.0) for n in nodes)
        for n in nodes:
            if n.own_cores is None:
                out[n.node_id] = None
                continue
            if len(nodes) == 1:
                cores = max(1, n.host_cores)
                out[n.node_id] = max(n.own_cores / cores, n.host_busy)
            else:
                fair = n.host_cores * (n.logical_cpus / logical if logical > 0 else 1 / len(nodes))
                out[n.node_id] = n.own_cores / fair if fair > 0 else None
    return out


class NodeSeries:
    """Bounded per-node readings, oldest first."""

    def __init__(self, *, kept: int = NODE_SAMPLES_KEPT) -> None:
        self._kept = kept
        self._d: dict[str, deque[NodeReading]] = {}

    def add(self, node_id: str, reading: NodeReading) -> None:
        self._d.setdefault(node_id, deque(maxlen=self._kept)).append(reading)

    def window(self, node_id: str, *, now: float, window_s: float) -> tuple[NodeReading, ...]:
        """``node_id``'s readings of the last ``window_s`` seconds (older ones are dropped)."""
        kept = self._d.get(node_id)
        if not kept:
            return ()
        while kept and kept[0].ts < now - window_s:
            kept.popleft()
        return tuple(kept)

    def retain(self, node_ids: Iterable[str]) -> None:
        """Forget nodes not in ``node_ids`` (dead or gone)."""
        keep = set(node_ids)
        for nid in [k for k in self._d if k not in keep]:
            del self._d[nid]


@dataclass(frozen=True)
class NodeSettings:
    """The rule's thresholds (``controller.node_*``)."""

    window_s: float = 20.0
    min_samples: int = 5
    min_span_s: float = 8.0
    cpu_high: float = 0.9
    cpu_low: float = 0.6
    memory_margin: float = 0.05
    settle_s: float = 1.0
    cooldown_s: float = 300.0
    max_drains: int = 2
    drain_window_s: float = 3600.0
    drain_timeout_s: float = 180.0

    @classmethod
    def from_config(cls, c: ControllerConfig) -> NodeSettings:
        """From a :class:`~raymedic.config.ControllerConfig`."""
        return cls(window_s=c.node_window_s, min_samples=c.node_min_samples, min_span_s=c.node_min_span_s,
                   cpu_high=c.node_cpu_high, cpu_low=c.node_cpu_low, memory_margin=c.node_memory_margin,
                   settle_s=c.node_drain_settle_s, cooldown_s=c.node_drain_cooldown_s,
                   max_drains=c.node_max_drains, drain_window_s=c.node_drain_window_s,
                   drain_timeout_s=c.node_drain_timeout_s)


class Pressure(StrEnum):
    """What a node's window shows."""

    TOO_FEW = "too-few-samples"
    """Not enough readings (or not spanning enough time) for a verdict: treated as no pressure."""
    HELD = "held"
    """Too few readings on a node that was under pressure: it stays so (an agent that stopped answering
    clears nothing)."""
    NONE = "none"
    CPU = "cpu"
    MEMORY = "memory"
    BOTH = "cpu+memory"


@dataclass(frozen=True)
class NodeAssessment:
    """One node's verdict with its evidence (status, audit, incident)."""

    state: Pressure
    samples: int
    span_s: float
    cpu_share: float | None
    memory_used: float
    memory_threshold: float
    since: float | None = None
    """The window's first reading (the incident's first evidence)."""

    @property
    def pressured(self) -> bool:
        return self.state in (Pressure.CPU, Pressure.MEMORY, Pressure.BOTH, Pressure.HELD)

    def evidence(self, s: NodeSettings) -> dict[str, Any]:
        return {"pressure": str(self.state), "cpu_share": None if self.cpu_share is None else round(self.cpu_share, 3),
                "cpu_high": s.cpu_high, "cpu_low": s.cpu_low, "memory_used": round(self.memory_used, 4),
                "memory_threshold": self.memory_threshold, "memory_margin": s.memory_margin,
                "samples": self.samples, "span_s": round(self.span_s, 1)}


def assess_node(window: Sequence[NodeReading], s: NodeSettings, *, pressured: bool) -> NodeAssessment:
    """The verdict on one node's window (oldest first), with hysteresis: ``pressured`` is its last verdict.

    Not yet pressured: pressure once every reading of a long enough window is over the high mark.
    Already pressured: it stays so until every reading is under the low mark.
    """
    n = len(window)
    last = window[-1] if n else NodeReading(0.0, None, 0.0, 1.0)
    span = last.ts - window[0].ts if n else 0.0
    base = {"samples": n, "span_s": span, "cpu_share": last.cpu_share, "memory_used": last.memory_used,
            "memory_threshold": last.memory_threshold, "since": window[0].ts if n else None}
    if n < s.min_samples or span < s.min_span_s:  # no verdict: a pressured node stays so until readings say
        return NodeAssessment(Pressure.HELD if pressured else Pressure.TOO_FEW, **base)

    def over_cpu(r: NodeReading, mark: float) -> bool:
        return r.cpu_share is not None and r.cpu_share >= mark

    def over_mem(r: NodeReading, margin: float) -> bool:
        return r.memory_used >= r.memory_threshold - margin

    if pressured:  # it stays until every reading is under the low marks
        cpu = any(over_cpu(r, s.cpu_low) for r in window)
        mem = any(over_mem(r, 2 * s.memory_margin) for r in window)
    else:
        cpu = all(over_cpu(r, s.cpu_high) for r in window)
        mem = all(over_mem(r, s.memory_margin) for r in window)
    state = Pressure.BOTH if cpu and mem else Pressure.CPU if cpu else Pressure.MEMORY if mem else Pressure.NONE
    return NodeAssessment(state, **base)


class ReplicaPlacement(NamedTuple):
    """A member replica and the node it runs on (every model's: a node is shared)."""

    deployment: str
    replica: str
    node_id: str
    num_cpus: float
    max_per_node: int | None


def room_for(replicas: Sequence[ReplicaPlacement], *, away_from: str, nodes: Sequence[NodeInfo],
             pressured: set[str], placements: Sequence[ReplicaPlacement]) -> tuple[bool, dict[str, str]]:
    """Whether ``replicas`` (those on ``away_from``) fit on the other nodes, and a plan or the reason not.

    A node may take a replica when it is not ``away_from``, not draining, not pressured, has the
    replica's logical CPUs free (taken greedily, biggest first), and holds fewer of its deployment's
    replicas than ``max_replicas_per_node``.

    Returns:
        ``(fits, replica → node name)`` when it fits, ``(False, {"why": ...})`` when not.
    """
    free = {n.node_id: n.free_cpus for n in nodes
            if n.node_id != away_from and not n.draining and n.node_id not in pressured}
    if not free:
        return False, {"why": "no other node that is alive, not draining and not under pressure"}
    names = {n.node_id: n.name for n in nodes}
    count: dict[tuple[str, str], int] = {}
    for p in placements:
        count[(p.deployment, p.node_id)] = count.get((p.deployment, p.node_id), 0) + 1
    plan: dict[str, str] = {}
    for r in sorted(replicas, key=lambda r: -r.num_cpus):
        fits = [nid for nid, cpus in free.items() if cpus + 1e-9 >= r.num_cpus
                and (r.max_per_node is None or count.get((r.deployment, nid), 0) < r.max_per_node)]
        if not fits:
            return False, {"why": f"no other node has {r.num_cpus:g} free CPU and room under "
                                  f"max_replicas_per_node for {r.deployment}/{r.replica}"}
        best = max(fits, key=lambda nid: free[nid])
        free[best] -= r.num_cpus
        count[(r.deployment, best)] = count.get((r.deployment, best), 0) + 1
        plan[f"{r.deployment}/{r.replica}"] = names.get(best, best[:8])
    return True, plan


class NodePhase(StrEnum):
    """Where the work on a node is (status, audit)."""

    OK = "ok"
    PRESSURED = "pressured"
    """Under pressure; nothing to move (no replica there) or waiting (cooldown, budget, another drain)."""
    NO_ROOM = "no-room"
    """Under pressure with nowhere to move its replicas: the gateways' admission sheds what cannot be served."""
    PROPOSED = "proposed"
    """Approval mode: the drain waits for ``raymedic approve node-NNNNNN``."""
    EVICTING = "evicting"
    """Its replicas are avoided; the drain follows after ``node_drain_settle_s``."""
    DRAINING = "draining"
    """Ray drains it: Serve starts each replacement elsewhere, then stops the old replica."""
    DRAINED = "drained"
    """No member replica left on it. Ray keeps it DRAINING (Ray has no undrain): nothing new is placed
    there until its raylet is restarted."""


@dataclass(frozen=True)
class DrainNode:
    """Drain ``node_id`` through Ray (its replicas are already avoided). ``action_id`` makes it idempotent."""

    action_id: str
    node_id: str
    name: str
    replicas: tuple[str, ...]


@dataclass
class NodeStep:
    """What one step decided: audit events ``(kind, target, evidence, action, outcome)`` and a drain to run."""

    events: list[tuple[str, str, dict[str, Any], str, str]] = field(default_factory=list)
    drain: DrainNode | None = None


@dataclass
class _Node:
    phase: NodePhase = NodePhase.OK
    since: float = 0.0
    replicas: tuple[str, ...] = ()
    proposal: str | None = None
    approval: Approval | None = None
    suppressed: bool = False
    no_room_said: bool = False
    drain_id: str | None = None


class NodeWatch:
    """The nodes' memory: per-node phase, drains done (cooldown, budget), proposals.

    Invariant: only :meth:`step`, :meth:`decide` and :meth:`drain_done` change it.
    """

    def __init__(self, settings: NodeSettings, memory: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        m = dict(memory or {})
        self.seq = int(m.get("seq", 0))
        self.drains: list[float] = [float(t) for t in m.get("drains", [])]
        self.nodes: dict[str, _Node] = {}
        for nid, d in (m.get("nodes") or {}).items():
            self.nodes[nid] = _Node(phase=NodePhase(d.get("phase", "ok")), since=float(d.get("since", 0.0)),
                                    replicas=tuple(d.get("replicas", ())), proposal=d.get("proposal"),
                                    approval=None if d.get("approval") is None else Approval(d["approval"]),
                                    drain_id=d.get("drain_id"))
        self.assessments: dict[str, NodeAssessment] = {}

    def to_dict(self) -> dict[str, Any]:
        """For the checkpoint: a restarted controller keeps its cooldown, budget, proposals and drains."""
        return {"seq": self.seq, "drains": self.drains,
                "nodes": {nid: {"phase": str(n.phase), "since": n.since, "replicas": list(n.replicas),
                                "proposal": n.proposal, "approval": None if n.approval is None else str(n.approval),
                                "drain_id": n.drain_id}
                          for nid, n in self.nodes.items() if n.phase != NodePhase.OK}}

    def evicting(self) -> frozenset[str]:
        """Replica ids the gateways should route around now (on nodes being evicted or drained)."""
        return frozenset(r.split("/", 1)[-1] for n in self.nodes.values()
                         if n.phase in (NodePhase.EVICTING, NodePhase.DRAINING) for r in n.replicas)

    def pending(self) -> list[tuple[str, str]]:
        """``(proposal id, node id)`` of drains waiting for an operator."""
        return [(n.proposal, nid) for nid, n in self.nodes.items()
                if n.phase == NodePhase.PROPOSED and n.proposal and n.approval == Approval.PENDING]

    def phase(self, node_id: str) -> NodePhase:
        n = self.nodes.get(node_id)
        return n.phase if n is not None else NodePhase.OK

    def step(self, *, now: float, nodes: Sequence[NodeInfo], series: NodeSeries,
             placements: Sequence[ReplicaPlacement], paused: bool, approval: bool) -> NodeStep:
        """One period: assess every node, then move the work off at most one pressured node."""
        s = self.settings
        out = NodeStep()
        by_id = {n.node_id: n for n in nodes}
        on_node: dict[str, list[ReplicaPlacement]] = {}
        for p in placements:
            on_node.setdefault(p.node_id, []).append(p)
        for nid in [k for k in self.nodes if k not in by_id]:  # the node is gone: nothing left to move
            del self.nodes[nid]
        self.drains = [t for t in self.drains if now - t < s.drain_window_s]
        for n in nodes:
            st = self.nodes.get(n.node_id)
            was = st is not None and st.phase != NodePhase.OK
            self.assessments[n.node_id] = assess_node(series.window(n.node_id, now=now, window_s=s.window_s), s,
                                                      pressured=was)
        for nid in [k for k in self.assessments if k not in by_id]:
            del self.assessments[nid]
        pressured = {nid for nid, a in self.assessments.items() if a.pressured}
        busy = any(n.phase in (NodePhase.EVICTING, NodePhase.DRAINING) for n in self.nodes.values())

        for n in sorted(nodes, key=lambda n: n.name):
            a = self.assessments[n.node_id]
            st = self.nodes.setdefault(n.node_id, _Node())
            here = tuple(sorted(f"{p.deployment}/{p.replica}" for p in on_node.get(n.node_id, ())))
            if st.phase == NodePhase.OK and not a.pressured:
                continue
            if st.phase == NodePhase.OK:
                st.phase, st.since = NodePhase.PRESSURED, now
                out.events.append(("detected-node-pressure", n.name, {**a.evidence(s), "node_id": n.node_id,
                                                                      "replicas": list(here)}, "evaluate", "ok"))
            if st.phase in (NodePhase.EVICTING, NodePhase.DRAINING):  # moving: follow it whatever the pressure
                self._follow(n, st, here, now, out)
                continue
            if not a.pressured:
                out.events.append(("node-pressure-cleared", n.name, {**a.evidence(s), "phase": str(st.phase)},
                                   "none", "ok"))
                if st.phase == NodePhase.DRAINED:
                    out.events[-1][2]["note"] = ("the node stays DRAINING in Ray (no undrain): restart its raylet "
                                                 "to place work there again")
                del self.nodes[n.node_id]
                continue
            if st.phase == NodePhase.DRAINED:
                continue
            if not here or n.draining:
                continue  # pressure, but nothing to move (status shows it), or Ray drains it already
            target = n.name
            if n.is_head:
                if not st.no_room_said:
                    st.no_room_said = True
                    out.events.append(("node-pressure-no-move", target, {"why": "the head node is never drained "
                                       "(GCS, Serve controller, HTTP proxy)", "replicas": list(here)},
                                       "shed at the gateways' admission limit", "ok"))
                continue
            fits, plan = room_for(on_node.get(n.node_id, []), away_from=n.node_id, nodes=nodes, pressured=pressured,
                                  placements=placements)
            if not fits:
                st.phase = NodePhase.NO_ROOM
                if not st.no_room_said:
                    st.no_room_said = True
                    out.events.append(("node-pressure-no-room", target, {**plan, "replicas": list(here)},
                                       "shed at the gateways' admission limit", "ok"))
                continue
            if st.phase == NodePhase.NO_ROOM:
                st.phase, st.no_room_said = NodePhase.PRESSURED, False
            if paused:
                if not st.suppressed:
                    st.suppressed = True
                    out.events.append(("suppressed", target, {"incident": "node-pressure", "replicas": list(here)},
                                       "drain", "paused by operator"))
                continue
            st.suppressed = False
            if busy or (self.drains and now - self.drains[-1] < s.cooldown_s) or len(self.drains) >= s.max_drains:
                continue  # one drain at a time, a cooldown between two, a budget per window
            if approval and st.approval != Approval.APPROVED:
                if st.proposal is None:
                    self.seq += 1
                    st.proposal, st.approval, st.phase = f"node-{self.seq:06d}", Approval.PENDING, NodePhase.PROPOSED
                    out.events.append(("proposed", target, {"proposal": st.proposal, "plan": plan,
                                                            "evidence": a.evidence(s)}, "drain", "awaiting approval"))
                continue
            st.phase, st.since, st.replicas, st.proposal, st.approval = NodePhase.EVICTING, now, here, None, None
            busy = True
            out.events.append(("evict", target, {"replicas": list(here), "plan": plan, "node_id": n.node_id},
                               "avoid its replicas", "ok"))
        return out

    def _follow(self, n: NodeInfo, st: _Node, here: tuple[str, ...], now: float, out: NodeStep) -> None:
        s = self.settings
        if st.phase == NodePhase.EVICTING:
            if now - st.since >= s.settle_s:
                self.seq += 1
                st.drain_id = f"drain-{self.seq:06d}"
                st.phase, st.since = NodePhase.DRAINING, now
                self.drains.append(now)
                out.drain = DrainNode(st.drain_id, n.node_id, n.name, st.replicas)
            return
        moved = [r for r in st.replicas if r not in here]
        if not here:
            out.events.append(("node-drained", n.name, {"moved": list(st.replicas), "took_s": round(now - st.since, 3)},
                               "drain", "ok"))
            st.phase, st.since, st.replicas = NodePhase.DRAINED, now, ()
        elif now - st.since > s.drain_timeout_s:
            out.events.append(("node-drain-failed", n.name, {"left": list(here), "moved": moved,
                                                             "waited_s": round(now - st.since, 1)},
                               "drain", "replicas still on the node"))
            st.phase, st.since, st.replicas = NodePhase.DRAINED, now, ()

    def drain_done(self, action_id: str, ok: bool, now: float) -> None:
        """How the Ray drain of ``action_id`` went: refused or failed, the node goes back to pressured
        (its replicas are no longer avoided) and is tried again after the cooldown."""
        if ok:
            return
        for st in self.nodes.values():
            if st.drain_id == action_id:
                st.phase, st.since, st.replicas = NodePhase.PRESSURED, now, ()

    def decide(self, proposal_id: str, approve: bool, who: str, now: float
               ) -> tuple[str, str, dict[str, Any], str, str]:
        """An operator's answer to a proposed drain: the audit event.

        Raises:
            KeyError: no such proposal.
            ValueError: it was already answered.
        """
        for nid, st in self.nodes.items():
            if st.proposal == proposal_id:
                if st.approval != Approval.PENDING:
                    raise ValueError(f"proposal {proposal_id} was already {st.approval}")
                if approve:
                    st.approval = Approval.APPROVED
                    return ("approved", nid, {"proposal": proposal_id, "by": who}, "drain", "approved")
                st.phase, st.proposal, st.approval = NodePhase.PRESSURED, None, None
                self.drains.append(now)  # not proposed again before the cooldown
                return ("rejected", nid, {"proposal": proposal_id, "by": who}, "drain", "rejected")
        raise KeyError(proposal_id)

    def report(self, node_id: str) -> dict[str, Any]:
        """The phase part of a node's status line."""
        st = self.nodes.get(node_id)
        a = self.assessments.get(node_id)
        out: dict[str, Any] = {"phase": str(st.phase) if st else "ok",
                               "pressure": str(a.state) if a else "too-few-samples"}
        if st is not None and st.phase != NodePhase.OK:
            out["phase_since"] = st.since
            if st.replicas:
                out["moving"] = list(st.replicas)
            if st.proposal:
                out["proposal"] = st.proposal
        return out

    def next_drain_after(self) -> float | None:
        """When the cooldown allows the next drain (None: now)."""
        if not self.drains:
            return None
        t = self.drains[-1] + self.settings.cooldown_s
        return t if math.isfinite(t) else None
