"""Root-cause classes and grouping of incidents (pure: hand-built incidents and signals, fake timestamps),
then the same through the controller's step and recorder on fakes (no Ray)."""

from __future__ import annotations

import json

import pytest

from controllers.diagnostician import Diagnostician
from controllers.monitors.data import DataAlert, DataAlerts
from controllers.policies.diagnosis import (
    Cause,
    CauseClass,
    FeatureDrift,
    IncidentGroup,
    IncidentView,
    NodeSignal,
    NodeState,
    Signals,
    confidence,
    diagnose,
    signals_from,
)
from controllers.policies.group_audit import GroupAudit, GroupChange
from controllers.policies.vanish import VanishCause, VanishVerdict
from serve_apps.serve_state import ReplicaView
from tests import test_controller_step
from tests.test_controller_step import MODEL, Harness, healthy_fleet, replica, view

recorded = test_controller_step.recorded  # the fixture that records metrics instead of Ray's exporter

NODES = {"n1": NodeSignal("n1", "worker-1"), "n2": NodeSignal("n2", "worker-2"), "n0": NodeSignal("n0", "head")}


def rep(iid: str, kind: str, at: float, *, member: str = "mlp", replica: str | None = None, node: str | None = "n1",
        **kw) -> IncidentView:
    return IncidentView(iid, kind, at, member=member, replica=replica or f"r-{iid}", node_id=node,
                        onset_at=kw.pop("onset_at", at - 1.0), **kw)


def alert(iid: str, kind: str, at: float, target: str, **kw) -> IncidentView:
    return IncidentView(iid, kind, at, target=target, **kw)


# ---- node loss --------------------------------------------------------------------------------------------


def test_four_replicas_on_one_lost_node_within_seconds_are_one_incident_with_four_effects():
    signals = Signals(nodes={**NODES, "n1": NodeSignal("n1", "worker-1", NodeState.LOST, since=1003.0)})
    members = ("mlp", "lr", "tabresnet", "mlp")
    incs = [rep(f"inc-{i}", "dead" if i % 2 else "hung", 1001.0 + 1.5 * i, member=members[i],
                death="NODE_DIED: node lost" if i == 3 else "") for i in range(4)]
    incs.append(rep("inc-9", "dead", 1002.0, node="n2", member="lr"))  # another node: its own crash
    out = diagnose(incs, signals, window_s=30.0)
    (group,) = out.groups
    assert group.effects == ("inc-0", "inc-1", "inc-2", "inc-3")
    assert (group.cause, group.cause.cause_class, group.node, group.node_id) == (
        Cause.NODE, CauseClass.INFRASTRUCTURE, "worker-1", "n1")
    # The node lost, a death record saying so and four replicas failing together: three signals.
    assert group.confidence == confidence(3) == 0.875
    assert {e["signal"] for e in group.evidence} == {"node-lost", "death-record", "replicas-failed-together"}
    assert group.detected_at == 1001.0 and group.onset_at == 1000.0 and group.status == "open"
    for iid in group.effects:
        d = out.of(iid)
        assert (d.cause_class, d.node, d.group) == (CauseClass.INFRASTRUCTURE, "worker-1", group.id)
    assert out.of("inc-9").cause == Cause.CRASH and out.of("inc-9").group is None


def test_a_grouped_incident_recovers_when_its_last_effect_does():
    signals = Signals(nodes={**NODES, "n1": NodeSignal("n1", "worker-1", NodeState.LOST, since=1000.0)})
    incs = [rep("a", "dead", 1001.0, status="recovered", recovered_at=1010.0),
            rep("b", "dead", 1002.0, status="recovered", recovered_at=1014.0)]
    (g,) = diagnose(incs, signals).groups
    d = g.to_dict()
    # Recovered from the onset (1000.0, a second before the first detection) to the last effect's recovery.
    assert (d["status"], d["time_to_recover_s"], d["time_to_detect_s"]) == ("recovered", 14.0, 1.0)
    assert d["cause_class"] == "infrastructure" and d["effects"] == ["a", "b"]


def test_a_wrong_answer_on_a_pressured_node_is_not_the_node_s():
    signals = Signals(nodes={**NODES, "n1": NodeSignal("n1", "worker-1", NodeState.PRESSURE, since=999.0)})
    out = diagnose([rep("a", "wrong", 1000.0), rep("b", "slow", 1001.0, member="lr")], signals)
    assert out.of("a").cause == Cause.WRONG and out.of("b").cause == Cause.NODE and out.groups == ()


def test_replicas_on_a_lost_node_far_apart_in_time_are_not_one_incident():
    signals = Signals(nodes={**NODES, "n1": NodeSignal("n1", "worker-1", NodeState.LOST, since=1000.0)})
    incs = [rep("a", "dead", 1001.0), rep("b", "dead", 1900.0)]
    out = diagnose(incs, signals, window_s=30.0)
    assert out.groups == ()
    assert out.of("a").cause == Cause.NODE  # near the loss: the node, named, without a group of one
    assert out.of("b").cause == Cause.CRASH  # long after: its own


def test_crashes_on_a_one_node_cluster_are_not_blamed_on_the_node():
    # Every replica shares the only node: three chaos kills within seconds say nothing about it.
    incs = [rep(f"i{i}", "dead", 1000.0 + i, member=m) for i, m in enumerate(("mlp", "lr", "tabresnet"))]
    out = diagnose(incs, Signals(nodes={"n1": NodeSignal("n1", "head")}))
    assert out.groups == () and {out.of(i.id).cause for i in incs} == {Cause.CRASH}


def test_several_replicas_failing_together_on_one_node_of_several_point_at_it():
    incs = [rep(f"i{i}", "hung", 1000.0 + i, member=m) for i, m in enumerate(("mlp", "lr", "tabresnet"))]
    (g,) = diagnose(incs, Signals(nodes=NODES)).groups
    assert g.cause == Cause.NODE and g.confidence == 0.5  # one signal (co-failure), no node signal yet


def test_a_node_pressure_incident_is_the_cause_of_the_replica_incidents_on_its_node():
    signals = Signals(nodes={**NODES, "n1": NodeSignal("n1", "worker-1", NodeState.PRESSURE, since=995.0)})
    incs = [alert("d0001", "node_pressure", 1000.0, "worker-1", onset_at=995.0),
            rep("a", "slow", 1004.0), rep("b", "hung", 1006.0, member="lr")]
    out = diagnose(incs, signals)
    (g,) = out.groups
    assert g.cause_incident == "d0001" and g.effects == ("a", "b") and g.incidents == ("d0001", "a", "b")
    assert out.of("d0001").group == g.id and g.onset_at == 995.0


# ---- drift, decay, versions ----------------------------------------------------------------------------------


def test_an_accuracy_decay_30_s_after_feature_f_drifted_names_f_and_the_members_that_suffer_most():
    signals = Signals(nodes=NODES, drifts=(FeatureDrift("f3", 1000.0, "mean_up+psi", 0.41, "act", "d0001"),
                                           FeatureDrift("f7", 100.0, "psi", 0.2, "warn", "d0000")),
                      member_accuracy={"mlp": 0.61, "lr": 0.83, "tabresnet": 0.55})
    incs = [alert("d0000", "drift", 100.0, "f7"), alert("d0001", "drift", 1004.0, "f3", onset_at=1000.0),
            alert("d0002", "accuracy_decay", 1045.0, "ensemble", onset_at=1030.0)]
    out = diagnose(incs, signals, horizon_s=900.0)
    (g,) = out.groups
    d = out.of("d0002")
    assert (d.cause, d.cause_class, d.feature) == (Cause.DATA_DRIFT, CauseClass.DATA, "f3")
    assert d.members[:2] == ("tabresnet", "mlp") and d.group == g.id
    drift = next(e for e in g.evidence if e["signal"] == "feature-drift")
    assert (drift["statistic"], drift["value"], drift["moved_at"]) == ("mean_up+psi", 0.41, 1000.0)
    assert next(e for e in g.evidence if e["signal"] == "accuracy-after-drift")["lag_s"] == 30.0
    assert g.cause_incident == "d0001" and g.effects == ("d0002",) and g.confidence == 0.875
    assert out.of("d0000").group is None  # f7 moved too long before: its own drift, nothing more


def test_a_decay_with_no_drift_before_it_is_the_model_s():
    out = diagnose([alert("d1", "accuracy_decay", 1000.0, "ensemble")], Signals())
    assert (out.of("d1").cause, out.of("d1").cause_class, out.of("d1").confidence) == (
        Cause.ACCURACY_DECAY, CauseClass.MODEL, 0.5)
    out = diagnose([alert("d1", "accuracy_decay", 1000.0, "ensemble"), alert("d2", "concept_drift", 990.0,
                                                                              "ensemble")], Signals())
    assert out.of("d1").cause == Cause.CONCEPT_DRIFT and out.of("d2").cause == Cause.CONCEPT_DRIFT


def test_wrong_answers_after_a_promotion_are_the_new_version_s():
    signals = Signals(nodes=NODES, promotions=((900.0, "mlp"),))
    d = diagnose([rep("a", "wrong", 1000.0)], signals).of("a")
    assert (d.cause, d.cause_class, d.members) == (Cause.BAD_VERSION, CauseClass.MODEL, ("mlp",))
    assert diagnose([rep("a", "wrong", 1000.0, member="lr")], signals).of("a").cause == Cause.WRONG


def test_a_slow_replica_during_a_load_spike_is_load():
    d = diagnose([rep("a", "slow", 1000.0)], Signals(nodes=NODES, load_at=(990.0,))).of("a")
    assert (d.cause, d.cause_class, d.confidence) == (Cause.OVERLOAD, CauseClass.LOAD, 0.75)


# ---- lone incidents ------------------------------------------------------------------------------------------


def test_a_lone_crash_is_replica_software():
    d = diagnose([rep("a", "dead", 1000.0)], Signals(nodes=NODES)).of("a")
    assert (d.cause, d.cause_class, d.group) == (Cause.CRASH, CauseClass.REPLICA_SOFTWARE, None)
    # Its own death, its node healthy, its peers healthy: three signals agree.
    assert d.confidence == 0.875 and [e["signal"] for e in d.evidence] == [
        "incident-dead", "node-healthy", "peers-healthy"]


def test_a_crash_beside_a_peer_s_crash_is_less_sure():
    out = diagnose([rep("a", "error", 1000.0), rep("b", "error", 1002.0, node="n2")], Signals(nodes=NODES))
    assert out.of("a").cause == Cause.ERROR and out.of("a").confidence == confidence(2, 1) == 0.5


@pytest.mark.parametrize("kind,cause,klass", [
    ("leak", Cause.MEMORY, CauseClass.INFRASTRUCTURE), ("gpu", Cause.GPU, CauseClass.INFRASTRUCTURE),
    ("hung", Cause.HANG, CauseClass.REPLICA_SOFTWARE), ("slow", Cause.SLOW, CauseClass.REPLICA_SOFTWARE),
    ("disk_space", Cause.DISK, CauseClass.INFRASTRUCTURE), ("missing_values", Cause.DATA_QUALITY, CauseClass.DATA),
    ("drift", Cause.DATA_DRIFT, CauseClass.DATA), ("concept_drift", Cause.CONCEPT_DRIFT, CauseClass.MODEL),
    ("node_pressure", Cause.NODE, CauseClass.INFRASTRUCTURE), ("something_new", Cause.UNKNOWN, CauseClass.UNKNOWN)])
def test_every_incident_kind_has_a_cause_class(kind, cause, klass):
    inc = (rep("x", kind, 1000.0) if kind in ("leak", "gpu", "hung", "slow")
           else alert("x", kind, 1000.0, "f1"))
    d = diagnose([inc], Signals(nodes=NODES)).of("x")
    assert (d.cause, d.cause_class) == (cause, klass)
    assert (d.confidence == 0.0) == (cause == Cause.UNKNOWN)
    assert d.fields()["cause_class"] == klass.value


# ---- onsets: time to detect for every kind ---------------------------------------------------------------------


def test_data_and_model_incidents_have_a_time_to_detect_where_their_evidence_dates_the_onset():
    decay = DataAlert("d1", "accuracy_decay", "ensemble", 1045.0, {"accuracy": 0.6, "change_at": 1030.0})
    node = DataAlert("d2", "node_pressure", "worker-1", 1010.0, {"since": 1000.0}, recovered_at=1070.0)
    quality = DataAlert("d3", "missing_values", "f1", 1000.0, {"missing_rate": 0.4})
    assert decay.to_dict()["time_to_detect_s"] == 15.0 and decay.to_dict()["first_evidence_at"] == 1030.0
    assert (node.to_dict()["time_to_detect_s"], node.to_dict()["time_to_recover_s"]) == (10.0, 70.0)  # from onset
    assert quality.to_dict()["time_to_detect_s"] is None  # nothing dates a window test's onset: unknown, not 0


def test_signals_read_from_the_status_parts():
    s = signals_from(nodes={"nodes": [{"name": "w1", "node_id": "n1", "draining": True, "phase_since": 5.0},
                                      {"name": "w2", "node_id": "n2", "pressure": "none"}]},
                     alerts=[{"id": "d9", "kind": "node_pressure", "target": "w2", "detected_at": 20.0,
                              "evidence": {"since": 12.0}, "status": "open"}],
                     records=[{"kind": "slo-breach", "ts": 30.0}, {"kind": "promote", "ts": 31.0,
                                                                     "outcome": "failed: x", "evidence": {}}])
    assert {n.name: (n.state, n.since) for n in s.nodes.values()} == {
        "w1": (NodeState.DRAINING, 5.0), "w2": (NodeState.PRESSURE, 12.0)}
    assert s.load_at == (30.0,) and s.promotions == ()


# ---- through the step and the recorder (fakes, no Ray) -----------------------------------------------------------


def diagnosed(h: Harness) -> Diagnostician:
    """The harness's recorder with a diagnosis, as :class:`controllers.loop.ModelController` wires it."""
    diag = Diagnostician(policy=h.policy, data_alerts=DataAlerts(h.cfg.data), audit=h.audit,
                         cfg=lambda: h.cfg.controller, performance=lambda: None, nodes=lambda: None)
    h.recorder.diagnosis = diag.fields
    return diag


def two_nodes(h: Harness) -> None:
    """mlp and lr, one replica of each on node n1 and one on n2, every probe passing."""
    h.observer.view = view(mlp=[ReplicaView("a", "RUNNING", node_id="n1", actor_name="A", actor_id="id-a"),
                                ReplicaView("b", "RUNNING", node_id="n2", actor_name="B", actor_id="id-b")],
                           lr=[ReplicaView("c", "RUNNING", node_id="n1", actor_name="C", actor_id="id-c"),
                               ReplicaView("d", "RUNNING", node_id="n2", actor_name="D", actor_id="id-d")])
    for rid in "abcd":
        h.prober.answer(rid, "ok", "ok", "ok")


def lose_n1(h: Harness) -> None:
    """Node n1 dies: Serve drops both of its replicas; their death records say the node died."""
    h.observer.view = view(mlp=[replica("b", "mlp")], lr=[replica("d", "lr")])
    for rid in "ac":
        h.observer.causes[f"id-{rid}"] = VanishCause(VanishVerdict.CRASH, "NODE_DIED: raylet gone")


def test_replicas_lost_with_their_node_are_audited_with_the_node_as_cause(tmp_path, recorded):
    h = Harness(tmp_path)
    two_nodes(h)
    diag = diagnosed(h)
    h.run()
    lose_n1(h)
    h.run()
    incidents = {i.replica: i for i in h.policy.incidents}
    assert set(incidents) == {"a", "c"} and {i.node_id for i in incidents.values()} == {"n1"}
    assert all(i.death.startswith("NODE_DIED") for i in incidents.values())
    detected = h.records("detected-dead")
    assert [r["cause_class"] for r in detected] == ["infrastructure", "infrastructure"]
    last = detected[-1]  # by the second detection both are known: one group with two effects
    assert last["cause"] == "node" and sorted(last["effects"]) == sorted(i.id for i in incidents.values())
    assert last["node_id"] == "n1" and 0 < last["confidence"] <= 1
    observed = [t for kind, name, _, t in recorded if name == "raymedic_incident_detect_seconds"]
    assert observed and all(t["cause"] == "node" for t in observed)
    groups = diag.run().groups
    assert len(groups) == 1 and groups[0].node_id == "n1"


def test_a_lone_kill_is_audited_as_replica_software(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    diagnosed(h)
    h.run()
    h.observer.dead.add(replica("a", "mlp").actor_name)
    h.run()
    (rec,) = h.records("detected-dead")
    assert (rec["cause_class"], rec["cause"], rec["group"]) == ("replica-software", "crash", None)


# ---- a group's own audit records ----------------------------------------------------------------------------


def lost_node_group(*effects: str, cause_incident: str | None = None, confidence_: float = 0.75) -> IncidentGroup:
    return IncidentGroup(id="grp-inc-1", cause=Cause.NODE, confidence=confidence_, evidence=({"signal": "node-lost"},),
                         effects=effects, detected_at=1001.0, onset_at=1000.0, recovered_at=None, status="open",
                         cause_incident=cause_incident, node="worker-1", node_id="n1")


def test_a_group_is_recorded_when_it_forms_and_once_per_incident_it_gains_never_per_step():
    audit = GroupAudit()
    (formed,) = audit.offer([lost_node_group("inc-1", "inc-2")])
    assert (formed.change, formed.added, formed.target) == (GroupChange.FORMED, ("inc-1", "inc-2"), "worker-1")
    assert formed.evidence["incidents"] == ["inc-1", "inc-2"] and formed.evidence["cause_class"] == "infrastructure"
    for _ in range(20):  # the diagnosis recomputed every check: the same group is no news
        assert audit.offer([lost_node_group("inc-1", "inc-2", confidence_=0.875)]) == []
    (grew,) = audit.offer([lost_node_group("inc-1", "inc-2", "inc-3")])
    assert (grew.change, grew.added) == (GroupChange.GREW, ("inc-3",))
    # The node's pressure alert found as the cause later: it joins the group, one record.
    (cause,) = audit.offer([lost_node_group("inc-1", "inc-2", "inc-3", cause_incident="d0004")])
    assert cause.added == ("d0004",) and cause.fields()["group_cause_incident"] == "d0004"
    # Flickering between diagnoses (an incident dropped, then back) records nothing more.
    assert audit.offer([lost_node_group("inc-1", "inc-3")]) == []
    assert audit.offer([lost_node_group("inc-1", "inc-2", "inc-3", cause_incident="d0004")]) == []


def test_a_restarted_controller_does_not_record_its_groups_again_and_the_memory_is_bounded():
    audit = GroupAudit()
    audit.offer([lost_node_group("inc-1", "inc-2")])
    restored = GroupAudit(json.loads(json.dumps(audit.to_dict())))  # through the checkpoint
    assert restored.offer([lost_node_group("inc-1", "inc-2")]) == []
    assert [r.added for r in restored.offer([lost_node_group("inc-1", "inc-2", "inc-5")])] == [("inc-5",)]
    small = GroupAudit(kept=2)
    for i in range(5):
        small.offer([IncidentGroup(id=f"grp-{i}", cause=Cause.NODE, confidence=0.5, evidence=(), effects=(f"i{i}",),
                                   detected_at=float(i), onset_at=None, recovered_at=None, status="open")])
    assert list(small.to_dict()) == ["grp-3", "grp-4"]
    with pytest.raises(ValueError, match="kept"):
        GroupAudit(kept=0)


def test_a_lost_node_s_group_gets_one_audit_record_that_audit_and_report_find(tmp_path, recorded):
    """Through the step, the diagnostician and the recorder, as the controller's loop wires them."""
    from controllers.audit import read_audit
    from controllers.audit_query import parse_query, select
    from raymedic.app.report import incidents_in, view_of

    h = Harness(tmp_path)
    two_nodes(h)
    diag = diagnosed(h)
    groups = GroupAudit()

    def check() -> int:  # ModelController._record_groups, on the harness's clock
        due = groups.offer(diag.recent_groups(h.clock.now))
        for rec in due:
            h.recorder.group(rec, ts=h.clock.now)
        h.audit.flush()
        return len(due)

    h.run()
    assert check() == 0
    lose_n1(h)
    h.run()
    assert check() == 1
    for _ in range(3):
        h.run()
        assert check() == 0  # recomputed every check, recorded once
    trail = read_audit(h.storage, MODEL)
    (rec,) = select(trail, parse_query(kinds=["incident-group"], now=h.clock.now))
    ids = sorted(i.id for i in h.policy.incidents)
    assert (rec["target"], rec["action"], rec["outcome"], rec["node_id"]) == ("n1"[:8], "group", "formed", "n1")
    assert sorted(rec["incidents"]) == ids and rec["evidence"]["cause"] == "node" and rec["group"] == f"grp-{ids[0]}"
    # `raymedic audit --incident` finds it from any incident of the group, and by the group's id.
    assert rec in select(trail, parse_query(incident=ids[1], now=h.clock.now))
    assert rec in select(trail, parse_query(incident=rec["group"], now=h.clock.now))
    # `raymedic report` of the group's second incident shows the whole group, its record in the timeline.
    shown = view_of(incidents_in(trail), ids[1])
    assert shown is not None and shown.id == ids[0] and shown.diagnosis["group"] == rec["group"]
    assert "incident-group" in [r["kind"] for r in shown.records]
    assert {r.get("incident") for r in shown.records} >= set(ids)
    assert [a["event"] for a in h.webhook.alerts].count("incident-group") == 1
