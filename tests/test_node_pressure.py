"""A node under memory or CPU pressure: the pure rule, the watch's moves, the keeper on fakes (no Ray).

The real-Ray test (a CPU hog on one node of a local multi-node cluster, its replicas moved
off with no failed request) is in tests/test_multinode.py, sharing that module's cluster.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from controllers.audit import AuditLog
from controllers.monitors.data import DataAlerts
from controllers.nodes import NodeKeeper
from controllers.outcome import Outcome
from controllers.policies.node import (
    NodeInfo,
    NodePhase,
    NodeReading,
    NodeSeries,
    NodeSettings,
    NodeWatch,
    Pressure,
    ReplicaPlacement,
    assess_node,
    cpu_shares,
    effective_memory_threshold,
    room_for,
)
from controllers.policies.replica import (
    HealingPolicy,
    Observation,
    Probe,
    ReplicaSnapshot,
)
from controllers.recorder import Recorder
from raymedic.config import ControllerConfig, RaymedicConfig
from raymedic.errors import InvalidRequest
from raymedic.storage import Storage
from serve_apps.chaos import resolve_node

S = NodeSettings(window_s=10, min_samples=3, min_span_s=4, cpu_high=0.9, cpu_low=0.6, memory_margin=0.05,
                 settle_s=1.0, cooldown_s=60.0, max_drains=2, drain_window_s=600.0, drain_timeout_s=30.0)
T0 = 1_800_000_000.0


def _r(t: float, cpu: float | None = 0.2, mem: float = 0.4, thr: float = 0.95) -> NodeReading:
    return NodeReading(T0 + t, cpu, mem, thr)


def _node(nid: str, name: str, *, head: bool = False, free: float = 4.0, draining: bool = False,
          host: str = "h", own: float | None = 0.1) -> NodeInfo:
    return NodeInfo(0.0, nid, name, host, head, draining, 4.0, free, own, 0.5, 2, 16e9, 8e9, 0.95)


# ---- the rule --------------------------------------------------------------------------------------------

def test_pressure_needs_a_sustained_window_and_ends_only_under_the_low_mark():
    hot = [_r(t, cpu=1.5) for t in range(0, 10, 2)]
    assert assess_node(hot, S, pressured=False).state == Pressure.CPU
    assert assess_node(hot[:2], S, pressured=False).state == Pressure.TOO_FEW  # two readings: no verdict
    one_spike = [_r(t, cpu=1.5 if t == 8 else 0.2) for t in range(0, 10, 2)]
    assert assess_node(one_spike, S, pressured=False).state == Pressure.NONE
    # Hysteresis: between the marks a pressured node stays pressured, a calm one stays calm.
    middle = [_r(t, cpu=0.75) for t in range(0, 10, 2)]
    assert assess_node(middle, S, pressured=True).pressured
    assert not assess_node(middle, S, pressured=False).pressured
    calm = [_r(t, cpu=0.3) for t in range(0, 10, 2)]
    assert assess_node(calm, S, pressured=True).state == Pressure.NONE
    # An agent that stopped answering clears nothing.
    assert assess_node([], S, pressured=True).state == Pressure.HELD


def test_memory_pressure_is_judged_against_the_threshold_the_raylet_runs_with():
    near = [_r(t, mem=0.77, thr=0.8) for t in range(0, 10, 2)]  # within 0.05 of a threshold of 0.8
    assert assess_node(near, S, pressured=False).state == Pressure.MEMORY
    assert not assess_node([_r(t, mem=0.77, thr=0.95) for t in range(0, 10, 2)], S, pressured=False).pressured
    both = [_r(t, cpu=2.0, mem=0.93) for t in range(0, 10, 2)]
    assert assess_node(both, S, pressured=False).state == Pressure.BOTH
    assert effective_memory_threshold({"memory_usage_threshold": 0.7}, {}) == 0.7
    assert effective_memory_threshold({}, {"RAY_memory_usage_threshold": "0.85"}) == 0.85
    assert effective_memory_threshold({}, {"RAY_memory_usage_threshold": "junk"}) == 0.95


def test_cpu_share_is_a_nodes_own_processes_over_its_share_of_a_shared_host():
    a, b = _node("a", "head", head=True, own=0.5), _node("b", "worker-1", own=1.5)
    shares = cpu_shares([a, b])  # one 2-core host, 4 + 4 logical CPUs: 1 core each
    assert shares == {"a": 0.5, "b": 1.5}
    alone = _node("c", "solo", host="other", own=0.2)._replace(host_busy=0.95)
    assert cpu_shares([alone])["c"] == 0.95  # alone on its host: a neighbour outside Ray counts too
    assert cpu_shares([_node("d", "new", own=None)])["d"] is None


def test_room_respects_free_cpus_max_replicas_per_node_and_pressure():
    nodes = [_node("a", "head", head=True, free=0.5), _node("b", "w1"), _node("c", "w2", free=0.1)]
    moving = [ReplicaPlacement("mlp", "r1", "b", 0.25, 1)]
    others = [ReplicaPlacement("mlp", "r0", "a", 0.25, 1)]
    fits, why = room_for(moving, away_from="b", nodes=nodes, pressured=set(), placements=moving + others)
    assert not fits and "max_replicas_per_node" in why["why"]  # head has mlp already, w2 has no CPU
    fits, plan = room_for(moving, away_from="b", nodes=nodes[:2] + [nodes[2]._replace(free_cpus=2.0)],
                          pressured=set(), placements=moving + others)
    assert fits and plan == {"mlp/r1": "w2"}
    fits, why = room_for(moving, away_from="b", nodes=[nodes[0], nodes[1], nodes[2]._replace(free_cpus=2.0)],
                         pressured={"c"}, placements=moving)
    assert fits and why == {"mlp/r1": "head"}  # w2 is under pressure itself: the head takes it


# ---- the watch: evict, drain, follow, clear -----------------------------------------------------------------

class _World:
    def __init__(self) -> None:
        self.nodes = [_node("a", "head", head=True), _node("b", "worker-1"), _node("c", "worker-2")]
        self.placements = [ReplicaPlacement("mlp", "r1", "b", 0.25, 1), ReplicaPlacement("mlp", "r2", "c", 0.25, 1)]
        self.series = NodeSeries()
        self.t = 0.0

    def tick(self, watch: NodeWatch, *, hot: set[str], dt: float = 2.0, paused=False, approval=False):
        self.t += dt
        for n in self.nodes:
            self.series.add(n.node_id, _r(self.t, cpu=1.5 if n.node_id in hot else 0.2))
        return watch.step(now=T0 + self.t, nodes=self.nodes, series=self.series, placements=self.placements,
                          paused=paused, approval=approval)


def _kinds(steps) -> list[str]:
    return [e[0] for s in steps for e in s.events]


def test_a_pressured_worker_is_evicted_then_drained_and_followed_until_its_replicas_left():
    w, watch = _World(), NodeWatch(S)
    steps = [w.tick(watch, hot={"b"}) for _ in range(3)]  # 3 readings over 4 s: a verdict only now
    assert _kinds(steps) == ["detected-node-pressure", "evict"]
    assert watch.phase("b") == NodePhase.EVICTING and watch.evicting() == frozenset({"r1"})
    drain = w.tick(watch, hot={"b"}).drain  # settle_s later: drain through Ray
    assert drain is not None and drain.node_id == "b" and drain.replicas == ("mlp/r1",)
    assert watch.phase("b") == NodePhase.DRAINING and w.tick(watch, hot={"b"}).drain is None
    w.placements = [ReplicaPlacement("mlp", "r3", "a", 0.25, 1), w.placements[1]]  # Serve moved it to the head
    done = w.tick(watch, hot={"b"})
    assert _kinds([done]) == ["node-drained"] and done.events[0][2]["moved"] == ["mlp/r1"]
    assert watch.phase("b") == NodePhase.DRAINED and watch.evicting() == frozenset()
    steps = [w.tick(watch, hot=set()) for _ in range(7)]  # the hot readings age out of the window
    cleared = [e for s in steps for e in s.events if e[0] == "node-pressure-cleared"]
    assert len(cleared) == 1 and "no undrain" in cleared[0][2]["note"] and watch.phase("b") == NodePhase.OK
    # The memory survives a controller restart.
    assert NodeWatch(S, watch.to_dict()).drains == watch.drains


def test_paused_suppresses_approval_proposes_and_no_room_sheds():
    w, watch = _World(), NodeWatch(S)
    steps = [w.tick(watch, hot={"b"}, paused=True) for _ in range(5)]
    assert _kinds(steps) == ["detected-node-pressure", "suppressed"] and all(s.drain is None for s in steps)

    w, watch = _World(), NodeWatch(S)
    steps = [w.tick(watch, hot={"b"}, approval=True) for _ in range(4)]
    assert _kinds(steps) == ["detected-node-pressure", "proposed"] and watch.phase("b") == NodePhase.PROPOSED
    ((pid, nid),) = watch.pending()
    assert nid == "b" and watch.decide(pid, True, "op", T0)[0] == "approved"
    assert _kinds([w.tick(watch, hot={"b"}, approval=True)]) == ["evict"]
    with pytest.raises(KeyError):
        watch.decide("node-999999", True, "op", T0)

    w, watch = _World(), NodeWatch(S)  # every other node is hot too: nowhere to move
    w.placements.append(ReplicaPlacement("lr", "q0", "a", 0.25, None))
    steps = [w.tick(watch, hot={"a", "b", "c"}) for _ in range(5)]
    no_room = [e for s in steps for e in s.events if e[0] == "node-pressure-no-room"]
    assert no_room and all(e[3].startswith("shed") for e in no_room) and all(s.drain is None for s in steps)
    assert watch.phase("b") == NodePhase.NO_ROOM
    assert any(e[0] == "node-pressure-no-move" and e[1] == "head" for s in steps for e in s.events)


def test_one_drain_at_a_time_a_cooldown_and_a_refused_drain_goes_back():
    w, watch = _World(), NodeWatch(S)
    w.nodes.append(_node("d", "worker-3"))
    steps = [w.tick(watch, hot={"b", "c"}) for _ in range(4)]
    drains = [s.drain for s in steps if s.drain]
    assert len(drains) == 1 and drains[0].node_id == "b" and watch.phase("c") == NodePhase.PRESSURED
    watch.drain_done(drains[0].action_id, ok=False, now=T0 + w.t)
    assert watch.phase("b") == NodePhase.PRESSURED and watch.evicting() == frozenset()
    later = [w.tick(watch, hot={"b", "c"}) for _ in range(5)]
    assert all(s.drain is None for s in later)  # the cooldown holds after a drain, refused or not


# ---- the replica policy avoids what is evicted ---------------------------------------------------------------

def _snap(member: str, rid: str) -> ReplicaSnapshot:
    return ReplicaSnapshot(member=member, replica=rid, state="RUNNING", alive=True, probes=(Probe(T0, "ok", 0.01),))


def test_evicted_replicas_are_avoided_only_where_the_member_serves_elsewhere():
    pol = HealingPolicy(ControllerConfig())
    obs = Observation(now=T0, replicas=(_snap("mlp", "r1"), _snap("mlp", "r2"), _snap("lr", "q1")),
                      targets={"mlp": 1, "lr": 1}, standby={"mlp": 1}, evicting=frozenset({"r1", "q1"}))
    res = pol.step(obs)
    assert res.avoid["mlp"] == ("r1",) and res.avoid["lr"] == ()  # lr's only replica keeps serving
    assert "r1" not in res.standby.get("mlp", ())


# ---- the keeper on fakes ----------------------------------------------------------------------------------

class _FakeNodes:
    def __init__(self, world: _World) -> None:
        self.world = world
        self.hot: set[str] = set()

    def read(self, now: float) -> list[NodeInfo]:
        return [n._replace(ts=now, own_cores=1.5 if n.node_id in self.hot else 0.1) for n in self.world.nodes]


def test_keeper_audits_opens_an_incident_drains_and_reports(tmp_path):
    storage = Storage(str(tmp_path))
    cfg = RaymedicConfig(storage_path=str(tmp_path), data={"clear_after": 1},
                         controller={"node_window_s": 10, "node_min_samples": 3, "node_min_span_s": 4,
                                     "node_drain_settle_s": 0})
    clock = {"now": T0}
    audit = AuditLog(storage, "m", writer="t")
    alerts = DataAlerts(cfg.data)
    world = _World()
    obs = _FakeNodes(world)
    drained: list[str] = []

    def drain(node_id: str, why: str) -> Outcome:
        drained.append(node_id)
        return Outcome.done("ok")

    keeper = NodeKeeper(model="m", cfg=lambda: cfg, policy=HealingPolicy(cfg.controller), data_alerts=alerts,
                        recorder=Recorder(audit, "m", incident_of=lambda _: None), audit=audit, observer=obs,
                        placements=lambda _cfg: world.placements, drain=drain, clock=lambda: clock["now"])
    obs.hot = {"b"}
    for _ in range(5):
        clock["now"] += 2
        asyncio.run(keeper.check())
    kinds = [r["kind"] for r in audit.tail(50)]
    assert drained == ["b"] and kinds.index("detected-node-pressure") < kinds.index("evict") < kinds.index("drain-node")
    assert [a.kind for a in alerts.open()] == ["node_pressure"] and alerts.open()[0].feature == "worker-1"
    rows = {n["name"]: n for n in keeper.report()["nodes"]}
    assert rows["worker-1"]["phase"] == "draining" and rows["worker-1"]["pressure"] == "cpu"
    assert rows["worker-1"]["cpu_share"] == 2.25 and rows["head"]["head"] is True  # 1.5 cores of a fair 2/3
    world.placements = world.placements[1:]
    obs.hot = set()
    for _ in range(6):
        clock["now"] += 2
        asyncio.run(keeper.check())
    kinds = [r["kind"] for r in audit.tail(80)]
    assert "node-drained" in kinds and "node-pressure-cleared" in kinds and alerts.open() == []


def test_resolve_node_names_what_to_send():
    nodes = [{"NodeID": "ab12", "Alive": True, "Labels": {"raymedic.dev/node": "head"}},
             {"NodeID": "ab34", "Alive": True, "Labels": {}}]
    assert resolve_node("ab3", nodes)["NodeID"] == "ab34"
    with pytest.raises(InvalidRequest, match="matches 2 alive nodes"):
        resolve_node("ab", nodes)


# ---- the readings' parts that need no Ray: a process tree's CPU, the hog's processes --------------------------

def test_a_busy_child_shows_in_its_parents_process_tree_and_a_hog_stops_on_clear():
    import psutil
    import ray  # noqa: F401  (psutil ships inside Ray: this import puts it on sys.path)

    from controllers.nodes import read_process_tree
    from serve_apps.chaos import CpuHog

    hog = CpuHog(1, 30.0)  # one busy process under this one, as under a hog actor on a node
    try:
        (pid,) = hog.info()["pids"]
        first = read_process_tree(psutil.Process())[pid][1]
        deadline = time.monotonic() + 10
        while read_process_tree(psutil.Process())[pid][1] <= first + 0.05:
            assert time.monotonic() < deadline, "the busy child used no CPU in 10 s"
        assert hog.info()["running"] == 1
    finally:
        assert hog.stop() == 1
    assert hog.info()["running"] == 0 and pid not in read_process_tree(psutil.Process())
