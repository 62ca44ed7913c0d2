"""The controller's reconcile step on hand-written fakes and a fake clock (no Ray cluster).

The step is built exactly as the actor builds it, but its collaborators are fakes:
an observer with a scripted Serve view, a prober with scripted probe outcomes, and
actuators that record what they were asked to do. The policy, the weights, the
checkpoint, the audit trail and the recorder are the real ones (on a temporary
directory), so each test checks what an operator would see: the actions taken,
the checkpoint, the audit records.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from controllers.audit import AuditLog, read_audit
from controllers.checkpoint import Checkpoint, load_checkpoint
from controllers.deployment import Deployment
from controllers.gateway_sync import GatewaySync
from controllers.loop import new_hedge
from controllers.monitors.performance import PerformanceMonitor
from controllers.observe import ClusterState
from controllers.outcome import Outcome
from controllers.policies.calls import CallLog
from controllers.policies.playbook import Playbook
from controllers.policies.replica import HealingPolicy, Probe, ProbeOutcome
from controllers.policies.vanish import VanishCause, VanishVerdict
from controllers.publish import ControlState
from controllers.reconcile import Reconciler
from controllers.recorder import Recorder
from raymedic import metrics
from raymedic.config import RaymedicConfig
from raymedic.storage import Storage
from serve_apps.serve_state import AppView, DeploymentView, ReplicaView

MODEL = "m"


# ---- fakes -------------------------------------------------------------------------------------


class FakeClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TickingTimer:
    """A monotonic timer that moves a fixed tick on every read: durations are counts of reads."""

    def __init__(self, tick: float = 0.001) -> None:
        self.t = 0.0
        self.tick = tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def label_batch(prefix: str, losses: dict[str, list[float]], **extra: Any) -> dict[str, Any]:
    """A gateway batch of labels: answer ``{prefix}{j}`` lost ``losses[key][j]`` for each ``member@version``."""
    n = max(len(v) for v in losses.values())
    records = [{"id": f"{prefix}{j}", "losses": {k: v[j] for k, v in losses.items() if j < len(v)},
                "labelled": None} for j in range(n)]
    return {"labels": records, **extra}


def replica(rid: str, member: str, state: str = "RUNNING") -> ReplicaView:
    return ReplicaView(id=rid, state=state, actor_name=f"SERVE_REPLICA::raymedic#{member}#{rid}", actor_id=f"id-{rid}")


def view(**members: list[ReplicaView]) -> AppView:
    return AppView("raymedic", "RUNNING", deployments={
        m: DeploymentView(m, "HEALTHY", "", None, tuple(rs)) for m, rs in members.items()})


class FakeObserver:
    """A cluster whose Serve view, live actors and death records the test sets."""

    def __init__(self) -> None:
        self.view: AppView | None = None
        self.dead: set[str] = set()  # actor names Ray reports dead
        self.died_at: dict[str, float] = {}  # actor name → its death record's time (read for the dead only)
        self.causes: dict[str, VanishCause] = {}
        self.asked: list[str] = []

    def read(self) -> ClusterState:
        if self.view is None:
            return ClusterState(None, frozenset())
        names = {r.actor_name for d in self.view.deployments.values() for r in d.replicas}
        return ClusterState(self.view, frozenset(names - self.dead),
                            {n: t for n, t in self.died_at.items() if n in self.dead})

    def vanish_cause(self, actor_id: str) -> VanishCause:
        self.asked.append(actor_id)
        return self.causes.get(actor_id, VanishCause(VanishVerdict.UNKNOWN, "actor is ALIVE"))


class FakeProber:
    """Probe outcomes the test scripts, per replica."""

    def __init__(self) -> None:
        self.histories: dict[str, list[Probe]] = {}
        self.skipped: list[str] = []
        self.fail: Exception | None = None
        self.gpu: dict[str, dict[str, Any]] = {}

    def answer(self, rid: str, *outcomes: str, ts: float = 990.0, latency_s: float = 0.01) -> None:
        for i, o in enumerate(outcomes):
            self.histories.setdefault(rid, []).append(Probe(ts + i * 0.5, ProbeOutcome(o), latency_s))

    def schedule(self, now: float, view: AppView, *, being_replaced: Callable[[str], bool]) -> set[str]:
        if self.fail is not None:
            raise self.fail
        live = {r.id for d in view.deployments.values() for r in d.replicas}
        self.skipped += sorted(rid for rid in live if being_replaced(rid))
        return live

    def history(self, rid: str) -> tuple[Probe, ...]:
        return tuple(self.histories.get(rid, ()))

    @property
    def probed(self) -> bool:
        return any(self.histories.values())

    def last_outcomes(self) -> dict[str, str]:
        return {rid: str(ps[-1].outcome) for rid, ps in self.histories.items() if ps}


class FakeActuators:
    """Records each restart, with the checkpoint as it was when the restart ran."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.restarts: list[tuple[str, str, str | None]] = []
        self.checkpoints: list[dict[str, Any] | None] = []
        self.outcome = Outcome.done()
        self.raises: Exception | None = None
        self.stale: list[tuple[str, str]] = []
        self.drains: list[tuple[str, list[tuple[str, str]]]] = []

    async def restart_replica(self, member: str, replica: str, *, actor_name: str | None = None) -> Outcome:
        self.restarts.append((member, replica, actor_name))
        self.checkpoints.append(load_checkpoint(self.storage, MODEL))
        if self.raises is not None:
            raise self.raises
        return self.outcome

    def swap_stale(self, member: str, replica: str, *, served: str, champion: str) -> None:
        self.stale.append((member, replica))

    async def drain_gpu_node(self, node_id: str, replicas: list[tuple[str, str]]) -> Outcome:
        self.drains.append((node_id, sorted(replicas)))
        return Outcome.done("proposed")


class FakeWebhook:
    url = "http://alerts.example/hook"

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []

    def notify(self, alert: dict[str, Any]) -> None:
        self.alerts.append(alert)

    def stats(self) -> dict[str, Any]:
        return {"sent": len(self.alerts)}


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[str, str, float, dict[str, Any]]]:
    """Every metric the step records: (kind, name, value, tags), instead of Ray's exporter."""
    seen: list[tuple[str, str, float, dict[str, Any]]] = []
    monkeypatch.setattr(metrics, "observe", lambda name, value, **tags: seen.append(("observe", name, value, tags)))
    monkeypatch.setattr(metrics, "set_gauge", lambda name, value, **tags: seen.append(("gauge", name, value, tags)))
    monkeypatch.setattr(metrics, "inc", lambda name, value=1.0, **tags: seen.append(("inc", name, value, tags)))
    return seen


@dataclass
class Harness:
    """One controller's step over fakes, as :class:`controllers.loop.HealingController` wires it."""

    tmp: Path
    members: list[dict[str, Any]] = field(default_factory=lambda: [
        {"name": "mlp", "kind": "mlp", "replicas": 2}, {"name": "lr", "kind": "logistic", "replicas": 2,
                                                         "fallback": True}])
    controller: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None  # a checkpoint to resume from

    def __post_init__(self) -> None:
        self.storage = Storage(str(self.tmp))
        self.cfg = RaymedicConfig(model=MODEL, storage_path=str(self.tmp), members=self.members,
                                  controller=self.controller)
        self.deployment = Deployment(cfg=self.cfg, versions={m["name"]: "v0001" for m in self.members}, golden={},
                                     monitor=None, reference_accuracy=None, n_classes=None)
        state = self.state or {}
        self.clock = FakeClock()
        self.timer = TickingTimer()
        self.policy = HealingPolicy(self.cfg.controller, state.get("policy"))
        self.hedge = new_hedge(self.cfg, state.get("weights"))
        self.control = ControlState(epoch=int(state.get("epoch", 0)) + 1,
                                    weights=self.hedge.weights(self.deployment.members))
        self.audit = AuditLog(self.storage, MODEL, writer="test")
        self.webhook = FakeWebhook()
        self.recorder = Recorder(self.audit, MODEL, incident_of=self.incident, webhook=self.webhook,
                                 clock=self.clock)
        self.checkpoint = Checkpoint(self.storage, MODEL, policy=self.policy.to_dict, weights=self.hedge.to_dict,
                                     epoch=lambda: self.control.epoch, data_alerts=dict, performance=dict,
                                     playbook=dict, clock=self.clock)
        self.observer = FakeObserver()
        self.prober = FakeProber()
        self.actuators = FakeActuators(self.storage)
        self.calls = CallLog()
        self.step = Reconciler(model=MODEL, deployment=lambda: self.deployment, policy=self.policy, hedge=self.hedge,
                               observer=self.observer, prober=self.prober, actuators=self.actuators,
                               recorder=self.recorder, checkpoint=self.checkpoint, audit=self.audit,
                               control=self.control, calls=self.calls, trial_view=lambda: None,
                               clock=self.clock, timer=self.timer)

    def incident(self, incident_id: str):
        return next((i for i in self.policy.incidents if i.id == incident_id), None)

    def run(self, steps: int = 1, *, every_s: float = 1.0) -> list[bool]:
        """Run ``steps`` steps, the clock moving ``every_s`` before each (a fresh Serve view each time)."""
        async def go() -> list[bool]:
            out = []
            for _ in range(steps):
                self.clock.advance(every_s)
                out.append(await self.step.step())
            return out

        return asyncio.run(go())

    def kinds(self) -> list[str]:
        return [r["kind"] for r in read_audit(self.storage, MODEL)]

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in read_audit(self.storage, MODEL) if r["kind"] == kind]


def healthy_fleet(h: Harness, **dead: str) -> None:
    """Two healthy replicas per member, every probe passing."""
    h.observer.view = view(mlp=[replica("a", "mlp"), replica("b", "mlp")], lr=[replica("c", "lr"), replica("d", "lr")])
    for rid in "abcd":
        h.prober.answer(rid, "ok", "ok", "ok")


# ---- replica faults -------------------------------------------------------------------------------


def test_a_dead_replica_is_restarted_once_with_its_intent_checkpointed_first(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.observer.dead = {"SERVE_REPLICA::raymedic#mlp#a"}  # Ray's GCS: the actor is gone; Serve still lists it
    h.observer.died_at = {"SERVE_REPLICA::raymedic#mlp#a": h.clock.now + 0.2}  # it died 0.8 s before the step
    assert h.run() == [True]
    assert h.actuators.restarts == [("mlp", "a", "SERVE_REPLICA::raymedic#mlp#a")]
    (dead,) = h.policy.incidents
    assert dead.first_evidence_at == h.clock.now - 0.8 and dead.time_to_detect_s == pytest.approx(0.8)
    assert h.records("detected-dead")[0]["first_evidence_at"] == dead.first_evidence_at
    # The intent was durable before the kill: the checkpoint the actuator saw holds the requested restart.
    seen = h.actuators.checkpoints[0]["policy"]["incidents"]
    (inc,) = seen.values()
    assert inc["replica"] == "a" and inc["kind"] == "dead" and inc["action"] == "restart"
    assert inc["action_outcome"] is None  # not done yet when it was written
    # After the step: the outcome is checkpointed too, and the audit trail tells the story in order.
    done = load_checkpoint(h.storage, MODEL)["policy"]["incidents"][inc["id"]]
    assert done["action_outcome"] == "ok"
    assert h.kinds()[:2] == ["detected-dead", "restart"]
    restart = h.records("restart")[0]
    assert restart["incident"] == inc["id"] and restart["outcome"] == "ok" and restart["fault"] == "dead"
    assert restart["action_id"] == "restart:mlp:a"
    assert [a["event"] for a in h.webhook.alerts] == ["detected-dead"]
    # Serve still lists it for a while: no second restart.
    h.run(3)
    assert len(h.actuators.restarts) == 1


def test_a_controller_rebuilt_from_the_checkpoint_does_not_repeat_a_restart(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.observer.dead = {"SERVE_REPLICA::raymedic#mlp#a"}
    h.run()
    again = Harness(tmp_path, state=load_checkpoint(h.storage, MODEL))  # Ray restarted the actor
    healthy_fleet(again)
    again.observer.dead = {"SERVE_REPLICA::raymedic#mlp#a"}  # and Serve has not replaced the replica yet
    asyncio.run(again.step.resume())
    again.run(2)
    assert again.actuators.restarts == [] and len(again.policy.incidents) == 1


def test_a_controller_killed_mid_restart_finishes_it_once_on_resume(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.observer.dead = {"SERVE_REPLICA::raymedic#mlp#a"}
    h.run()
    # Crash between the intent and the outcome: the checkpoint on disk is the one the actuator saw.
    intent = h.actuators.checkpoints[0]
    again = Harness(tmp_path, state=json.loads(json.dumps(intent)))
    healthy_fleet(again)
    again.actuators.outcome = Outcome.done("ok: already gone")  # the kill had gone through before the crash
    asyncio.run(again.step.resume())
    assert [r[:2] for r in again.actuators.restarts] == [("mlp", "a")]
    again.observer.dead = {"SERVE_REPLICA::raymedic#mlp#a"}
    again.run(2)
    assert len(again.actuators.restarts) == 1
    assert again.policy.incidents[0].action_outcome == "ok: already gone"


def test_a_restart_whose_intent_could_not_be_checkpointed_runs_once_the_checkpoint_is_written(tmp_path, recorded):
    """The checkpoint before an action raising (a full disk) stops the step before the restart: it must
    not run with its intent undurable, and it must not be dropped either — it runs in the first step
    whose checkpoint is written, once, and is audited."""
    h = Harness(tmp_path)
    healthy_fleet(h)
    real_save = h.checkpoint.save
    failures = iter([OSError(28, "No space left on device")] * 2)

    def save() -> None:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        real_save()

    h.checkpoint.save = save
    h.observer.dead = {"SERVE_REPLICA::raymedic#mlp#a"}
    assert h.run(2) == [False, False]
    assert h.actuators.restarts == []  # never acted on an intent that was not durable
    assert h.run() == [True]
    assert [r[:2] for r in h.actuators.restarts] == [("mlp", "a")]
    inc = h.policy.incidents[0]
    assert inc.action_outcome == "ok" and load_checkpoint(h.storage, MODEL)["policy"]["incidents"][inc.id][
        "action_outcome"] == "ok"
    assert [r["outcome"] for r in h.records("restart")] == ["ok"]
    h.run(2)
    assert len(h.actuators.restarts) == 1


def test_consecutive_probe_timeouts_mean_hung_and_a_restart(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.prober.answer("b", "timeout")
    h.run()
    assert h.actuators.restarts == [] and h.policy.incidents == []  # one late probe is a blip
    h.prober.answer("b", "timeout")
    h.run()
    (inc,) = h.policy.incidents
    assert inc.kind == "hung" and inc.evidence["probe_timeouts"] == 2
    assert [r[:2] for r in h.actuators.restarts] == [("mlp", "b")]
    assert h.control.avoid["mlp"] == ("b",)  # routed around from the same step
    h.run()
    assert "b" in h.prober.skipped  # being replaced: not probed any more


def test_calls_that_die_at_the_gateways_mean_dead(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.prober.histories["c"] = []  # no probe has come back from it yet
    h.calls.ingest("gw1", now=h.clock.now, replicas={"lr/c": {"dead": 2}})
    h.run()
    (inc,) = h.policy.incidents
    assert (inc.kind, inc.replica, inc.evidence) == ("dead", "c", {"failed_calls": 2,
                                                                  "first_dead_call_at": h.clock.now - 1.0})
    assert inc.first_evidence_at == h.clock.now - 1.0 < inc.detected_at  # dated by the gateways' report
    assert [r[:2] for r in h.actuators.restarts] == [("lr", "c")]


def test_calls_that_raise_at_the_gateways_while_a_peer_answers_mean_failing(tmp_path, recorded):
    """The fault the gateway's retry hides: a live replica whose inference raises is restarted too."""
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.calls.ingest("gw1", now=h.clock.now, replicas={"mlp/a": {"error": 1}, "mlp/b": {"ok": 5}})
    h.calls.ingest("gw2", now=h.clock.now, replicas={"mlp/a": {"error": 1}})
    h.run()
    (inc,) = h.policy.incidents
    assert (inc.kind, inc.replica) == ("error", "a") and inc.evidence["call_errors"] == 2
    assert [r[:2] for r in h.actuators.restarts] == [("mlp", "a")]
    assert h.control.avoid["mlp"] == ("a",)
    assert h.kinds()[:2] == ["detected-error", "restart"]


def test_a_paused_controller_records_the_fault_and_acts_on_nothing(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.run()
    weights, epoch = dict(h.control.weights), h.control.epoch
    h.policy.paused = True
    h.prober.answer("a", "wrong")
    h.run(2)
    assert h.actuators.restarts == []
    assert h.kinds().count("suppressed") == 1 and "detected-wrong" in h.kinds()
    assert h.control.weights == weights and h.control.avoid == {}  # routing is left as the operator found it
    assert h.control.epoch == epoch + 1  # only the paused flag itself was published
    h.policy.paused = False
    h.run()
    assert [r[:2] for r in h.actuators.restarts] == [("mlp", "a")]


def test_approval_mode_proposes_and_restarts_only_once_approved(tmp_path, recorded):
    h = Harness(tmp_path, controller={"mode": "approve"})
    healthy_fleet(h)
    h.prober.answer("d", "wrong")
    h.run(2)
    assert h.actuators.restarts == [] and h.kinds().count("proposed") == 1
    (prop,) = h.policy.proposals()
    h.recorder.event(h.policy.decide(prop.id, True, "ops", h.clock.now))
    h.run()
    assert [r[:2] for r in h.actuators.restarts] == [("lr", "d")]
    kinds = [r["kind"] for r in read_audit(h.storage, MODEL) if r.get("incident") == prop.id]
    assert kinds == ["detected-wrong", "proposed", "approved", "restart"]
    assert [a["event"] for a in h.webhook.alerts] == ["detected-wrong", "proposed", "approved"]


def test_a_standby_takes_the_traffic_of_a_flagged_replica_in_the_same_step(tmp_path, recorded):
    h = Harness(tmp_path, members=[{"name": "mlp", "kind": "mlp", "replicas": 2, "standby": 1},
                                   {"name": "lr", "kind": "logistic", "replicas": 1, "fallback": True}])
    h.observer.view = view(mlp=[replica("a", "mlp"), replica("b", "mlp"), replica("c", "mlp")], lr=[replica("d", "lr")])
    for rid in "abcd":
        h.prober.answer(rid, "ok", "ok", "ok")
    h.run()
    (spare,) = h.control.standby["mlp"]
    serving = sorted(set("abc") - {spare})
    h.prober.answer(serving[0], "timeout", "timeout")
    h.run()
    assert h.control.standby == {} and h.control.avoid["mlp"] == (serving[0],)
    (released,) = h.records("standby-serves")
    assert released["evidence"] == {"replicas": [spare], "flagged": [serving[0]]}
    assert [r[:2] for r in h.actuators.restarts] == [("mlp", serving[0])]


def test_an_actuator_failure_is_recorded_as_an_outcome_and_the_loop_goes_on(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.actuators.outcome = Outcome.permanent("error: RayActorError: the actor is not reachable")
    h.prober.answer("a", "wrong")
    assert h.run() == [True]
    assert h.records("restart")[0]["outcome"] == "error: RayActorError: the actor is not reachable"
    assert h.policy.incidents[0].action_outcome == "error: RayActorError: the actor is not reachable"
    assert ("inc", "raymedic_healing_actions_total", 1.0,
            {"model": MODEL, "action": "restart", "outcome": "error"}) in recorded
    # One that raises (it must not) is still an outcome, with the same audit text format.
    h.actuators.raises = RuntimeError("boom")
    h.prober.answer("c", "wrong")
    assert h.run() == [True]
    assert h.records("restart")[-1]["outcome"] == "error: RuntimeError: boom"
    assert h.run(2) == [True, True]


def test_a_failing_phase_is_logged_with_its_traceback_and_the_next_step_runs(tmp_path, recorded, caplog):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.prober.fail = RuntimeError("probe scheduling broke")
    with caplog.at_level(logging.ERROR, logger="raymedic"):
        assert h.run() == [False]
    assert any("observe phase failed" in r.getMessage() and r.exc_info for r in caplog.records)
    assert not [g for g in recorded if g[1] == "raymedic_controller_last_success_timestamp_seconds"]
    h.prober.fail = None
    h.prober.answer("a", "wrong")
    assert h.run() == [True]
    assert [r[:2] for r in h.actuators.restarts] == [("mlp", "a")]
    assert ("gauge", "raymedic_controller_last_success_timestamp_seconds", h.clock.now, {"model": MODEL}) in recorded


def test_a_vanished_replica_whose_actor_crashed_opens_an_incident(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.run()
    # Serve dropped b from its view before any poll saw it die; its death record says why.
    h.observer.view = view(mlp=[replica("a", "mlp")], lr=[replica("c", "lr"), replica("d", "lr")])
    died_at = h.clock.now - 0.4  # what the death record's end_time_ms says
    h.observer.causes["id-b"] = VanishCause(VanishVerdict.CRASH, "WORKER_DIED: SIGKILL", died_at=died_at)
    h.run()
    (inc,) = h.policy.incidents
    assert (inc.kind, inc.replica, inc.action) == ("dead", "b", "await-replacement")  # Serve replaces it
    assert h.observer.asked == ["id-b"] and h.actuators.restarts == []
    kinds = [r["kind"] for r in read_audit(h.storage, MODEL) if r.get("incident") == inc.id]
    assert kinds == ["detected-dead", "await-replacement"]
    assert h.records("detected-dead")[0]["evidence"] == {"actor": "DEAD per Ray GCS", "died_at": round(died_at, 3)}
    # Its onset is the GCS's death time, not the step that read the record: the time to detect is honest.
    assert inc.first_evidence_at == died_at and inc.time_to_detect_s == pytest.approx(h.clock.now - died_at)


def test_a_replica_stopped_on_purpose_opens_nothing(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.run()
    h.observer.view = view(mlp=[replica("a", "mlp")], lr=[replica("c", "lr"), replica("d", "lr")])
    h.observer.causes["id-b"] = VanishCause(VanishVerdict.INTENDED, "RAY_KILL: scale-down")
    h.run(60)  # past the settle window
    assert h.policy.incidents == [] and len(h.observer.asked) > 1  # asked again until settled


def test_the_whole_step_and_each_phase_are_timed(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.prober.answer("a", "wrong")
    h.run()
    t = h.step.timings
    assert set(t) == {"observe", "decide", "act", "record", "step"}
    assert t["step"] > t["observe"] + t["decide"] + t["act"] + t["record"]  # the step covers every phase
    steps = [r for r in recorded if r[1] == "raymedic_controller_step_seconds"]
    assert steps == [("observe", "raymedic_controller_step_seconds", t["step"], {"model": MODEL})]
    phases = {r[3]["phase"]: r[2] for r in recorded if r[1] == "raymedic_controller_phase_seconds"}
    assert phases == {p: t[p] for p in ("observe", "decide", "act", "record")}
    assert len(h.step.step_ms) == 1  # the status's step_ms_p50 stays the decide phase's


def test_nothing_to_heal_before_the_application_is_deployed(tmp_path, recorded):
    h = Harness(tmp_path)
    assert h.run(2) == [True, True]
    assert h.step.timings.keys() == {"observe", "step"} and h.actuators.restarts == []


def test_a_checkpoint_written_by_the_old_controller_still_loads(tmp_path, recorded):
    old = {"policy": {"incidents": {"inc-000001": {
        "id": "inc-000001", "kind": "wrong", "member": "mlp", "replica": "a", "detected_at": 1.0,
        "first_evidence_at": 0.5, "evidence": {"probe": "x"}, "status": "open", "action": "restart",
        "action_at": 1.0, "action_outcome": "ok", "recovered_at": None, "suppressed": False, "approval": None}},
        "restarts": [1.0], "last_restart": {"mlp": 1.0}, "baseline_latency": {}, "quarantined": [],
        "standby": {}, "seq": 1, "paused": False, "approval": False},
        "weights": None, "epoch": 7, "data_alerts": {}, "performance": {}, "playbook": {}, "saved_at": 2.0}
    h = Harness(tmp_path, state=old)
    assert h.control.epoch == 8 and h.policy.incidents[0].status == "open"
    h.checkpoint.save()
    again = load_checkpoint(h.storage, MODEL)
    assert again["policy"]["incidents"] == old["policy"]["incidents"]  # the same words, byte for byte
    assert list(again) == ["policy", "weights", "epoch", "data_alerts", "performance", "playbook", "saved_at"]


def test_a_gateway_takes_the_published_state_once_per_epoch_and_its_calls_are_evidence(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    sync = GatewaySync(deployment=lambda: h.deployment, calls=h.calls, playbook=Playbook(h.cfg.retraining),
                       performance=PerformanceMonitor(2, h.cfg.performance), hedge=h.hedge, control=h.control,
                       checkpoint=h.checkpoint, clock=h.clock,
                       document=lambda: h.control.document(paused=h.policy.paused, trial=None,
                                                           versions=h.deployment.versions))
    assert sync.sync("gw1", {}, 0) is None  # nothing published yet: the gateway keeps what it has
    h.run()
    doc = sync.sync("gw1", {}, 0)
    assert doc == {"epoch": h.control.epoch, "weights": h.control.weights, "avoid": {"mlp": [], "lr": []},
                   "paused": False, "standby": {}, "trial": None, "versions": {"mlp": "v0001", "lr": "v0001"}}
    assert sync.sync("gw1", {}, doc["epoch"]) is None and sync.gateways == {"gw1": h.clock.now}
    # Losses of a version that no longer serves do not move the weights; the serving version's do.
    before = dict(h.hedge.weights(["mlp", "lr"]))
    sync.sync("gw1", label_batch("a", {"mlp@v0000": [1.0] * 50}), doc["epoch"])
    assert h.hedge.weights(["mlp", "lr"]) == before
    batch = label_batch("b", {"mlp@v0001": [1.0] * 50, "lr@v0001": [0.0] * 50})
    sync.sync("gw1", batch, doc["epoch"])
    moved = h.hedge.weights(["mlp", "lr"])
    assert moved["mlp"] < before["mlp"]
    # The same answers' labels through another gateway replica (a race both took, or a replay to every
    # replica) are counted once: they cannot steer the weights further.
    sync.sync("gw2", batch, doc["epoch"])
    assert h.hedge.weights(["mlp", "lr"]) == moved
    # A gateway's calls that died under replica c are evidence on the next step.
    h.prober.histories["c"] = []
    sync.sync("gw1", {"replicas": {"lr/c": {"dead": 3, "inflight": 1}}}, doc["epoch"])
    h.run()
    (inc,) = h.policy.incidents
    assert (inc.kind, inc.replica, inc.evidence["failed_calls"]) == ("dead", "c", 3)
    assert sync.sync("gw1", {}, doc["epoch"])["avoid"]["lr"] == ["c"]  # the new epoch reaches the gateway


def test_a_replayed_gateway_batch_is_taken_once_even_after_a_controller_restart(tmp_path, recorded):
    """Ray replays a sync call whose actor died mid-call on the restarted actor: a batch the old controller
    took (and checkpointed) must not move the weights again."""
    h = Harness(tmp_path)
    healthy_fleet(h)

    def gateway_sync(harness: Harness, state=None) -> GatewaySync:
        return GatewaySync(deployment=lambda: harness.deployment, calls=harness.calls,
                           playbook=Playbook(harness.cfg.retraining),
                           performance=PerformanceMonitor(2, harness.cfg.performance), hedge=harness.hedge,
                           control=harness.control, checkpoint=harness.checkpoint, clock=harness.clock,
                           document=lambda: {}, state=state)

    sync = gateway_sync(h)
    batch = label_batch("a", {"mlp@v0001": [1.0] * 3, "lr@v0001": [0.0] * 3}, seq=1)
    before = dict(h.hedge.weights(["mlp", "lr"]))
    sync.sync("gw1", batch, 0)
    once = dict(h.hedge.weights(["mlp", "lr"]))
    assert once["mlp"] < before["mlp"] and 2 * once["mlp"] > before["mlp"]  # moved, and not to a bound
    sync.sync("gw1", batch, 0)  # the same call again
    assert h.hedge.weights(["mlp", "lr"]) == once
    saved = json.loads(json.dumps({"weights": h.hedge.to_dict(), "sync": sync.to_dict()}))
    again = Harness(tmp_path, state=saved)  # Ray restarted the controller from that checkpoint
    replayed = gateway_sync(again, state=saved["sync"])
    replayed.sync("gw1", batch, 0)
    assert again.hedge.weights(["mlp", "lr"]) == once
    replayed.sync("gw1", label_batch("b", {"mlp@v0001": [0.0] * 50, "lr@v0001": [1.0] * 50}, seq=2), 0)
    assert again.hedge.weights(["mlp", "lr"])["mlp"] > once["mlp"]  # the gateway's next batch counts


# ---- scaling (Serve's autoscaler decides; the step audits it) -------------------------------------------


# ---- GPU faults --------------------------------------------------------------------------------------


def on(rid: str, member: str, node: str) -> ReplicaView:
    return ReplicaView(id=rid, state="RUNNING", actor_name=f"SERVE_REPLICA::raymedic#{member}#{rid}",
                       actor_id=f"id-{rid}", node_id=node)


def gpu_errors(h: Harness, rid: str, detail: str) -> None:
    """Two probes of ``rid`` that raised ``detail`` (the error rule's two witnesses)."""
    h.prober.histories.setdefault(rid, []).extend(
        Probe(h.clock.now + 0.5 * i, ProbeOutcome.ERROR, 0.01, detail=detail) for i in range(2))


def test_gpu_errors_restart_the_replica_as_a_gpu_incident_and_a_failing_device_is_proposed_for_a_drain(
        tmp_path, recorded):
    h = Harness(tmp_path, controller={"gpu_node_faults": 2, "gpu_node_window_s": 60, "gpu_node_cooldown_s": 600})
    h.observer.view = view(mlp=[on("a", "mlp", "n1"), on("b", "mlp", "n2")],
                           lr=[on("c", "lr", "n1"), on("d", "lr", "n2")])
    for rid in "bcd":
        h.prober.answer(rid, "ok", "ok", "ok")
    gpu_errors(h, "a", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    h.prober.gpu["a"] = {"member": "mlp", "health": "fault", "fault": "oom", "nvml": {"state": "ok"}}
    h.run()
    (inc,) = h.policy.incidents
    assert (inc.kind, inc.replica, inc.evidence["gpu_fault"]) == ("gpu", "a", "oom")
    assert [r[:2] for r in h.actuators.restarts] == [("mlp", "a")]  # the error path's restart
    assert h.kinds()[:2] == ["detected-gpu", "restart"] and h.actuators.drains == []  # one fault: no drain
    assert h.step.gpu_report(h.clock.now)["nodes"]["n1"]["faults_in_window"] == 1

    # Serve's replacement lands on the same node; its device now reports uncorrected ECC errors.
    h.observer.view = view(mlp=[on("e", "mlp", "n1"), on("b", "mlp", "n2")],
                           lr=[on("c", "lr", "n1"), on("d", "lr", "n2")])
    h.prober.histories.pop("a")
    gpu_errors(h, "e", "RuntimeError: CUDA error: uncorrectable ECC error encountered")
    h.prober.gpu = {"e": {"member": "mlp", "health": "fault", "fault": "ecc", "nvml": {"state": "ecc"}}}
    h.run(2, every_s=5.0)
    assert h.actuators.drains == [("n1", [("mlp", "e")])]  # decided once: the cooldown holds the next step
    (drain,) = h.records("gpu-node-drain")
    assert drain["target"] == "node/n1" and drain["action"] == "drain GPU members from node n1"
    assert drain["outcome"] == "proposed" and drain["evidence"]["faults"] == 2
    assert set(drain["evidence"]["kinds"]) == {"oom", "ecc"}
    report = h.step.gpu_report(h.clock.now)
    assert report["nodes"]["n1"]["state"] == "fault" and report["replicas"]["e"]["node"] == "n1"

    h.clock.advance(120)  # past the window: the node's count starts again
    h.prober.gpu = {}
    assert "n1" not in h.step.gpu_report(h.clock.now).get("nodes", {})


def test_a_paused_controller_audits_the_drain_decision_and_carries_out_nothing(tmp_path, recorded):
    h = Harness(tmp_path, controller={"gpu_node_faults": 1})
    h.observer.view = view(mlp=[on("a", "mlp", "n1"), on("b", "mlp", "n2")],
                           lr=[on("c", "lr", "n1"), on("d", "lr", "n2")])
    for rid in "bcd":
        h.prober.answer(rid, "ok", "ok", "ok")
    gpu_errors(h, "a", "RuntimeError: CUDA error: unspecified launch failure")
    h.policy.paused = True
    h.run()
    (drain,) = h.records("gpu-node-drain")
    assert drain["outcome"] == "suppressed: paused" and h.actuators.drains == [] and h.actuators.restarts == []


def test_in_approval_mode_the_drain_is_proposed_not_carried_out(tmp_path, recorded):
    h = Harness(tmp_path, controller={"gpu_node_faults": 1, "mode": "approve"})
    h.observer.view = view(mlp=[on("a", "mlp", "n1"), on("b", "mlp", "n2")],
                           lr=[on("c", "lr", "n1"), on("d", "lr", "n2")])
    for rid in "bcd":
        h.prober.answer(rid, "ok", "ok", "ok")
    gpu_errors(h, "a", "RuntimeError: CUDA error: unspecified launch failure")
    h.run()
    (drain,) = h.records("gpu-node-drain")
    assert drain["outcome"].startswith("proposed: approval mode") and h.actuators.drains == []


def test_a_fleet_without_gpus_reports_none(tmp_path, recorded):
    h = Harness(tmp_path)
    healthy_fleet(h)
    h.run()
    assert h.step.gpu_report(h.clock.now) == {"gpu": "none"} and h.records("gpu-node-drain") == []


def sized(target: int, **members: list[ReplicaView]) -> AppView:
    return AppView("raymedic", "RUNNING", deployments={
        m: DeploymentView(m, "HEALTHY", "", target if m == "mlp" else len(rs), tuple(rs)) for m, rs in members.items()})


def test_serve_scaling_a_member_out_and_in_is_audited_and_the_scale_in_opens_no_incident(tmp_path, recorded):
    h = Harness(tmp_path, members=[{"name": "mlp", "kind": "mlp", "replicas": 1, "standby": 1, "max_replicas": 3},
                                   {"name": "lr", "kind": "logistic", "replicas": 2, "fallback": True}])
    lr = [replica("c", "lr"), replica("d", "lr")]
    for rid in "abecd":
        h.prober.answer(rid, *["ok"] * 200)
    h.observer.view = sized(2, mlp=[replica("a", "mlp"), replica("b", "mlp")], lr=lr)
    h.run(2)
    h.observer.view = sized(3, mlp=[replica("a", "mlp"), replica("b", "mlp"), replica("e", "mlp", "STARTING")], lr=lr)
    h.run(2)
    h.observer.view = sized(3, mlp=[replica("a", "mlp"), replica("b", "mlp"), replica("e", "mlp")], lr=lr)
    h.run(2)
    assert len(h.step.last.healthy["mlp"]) == 3 and len(h.step.last.standby["mlp"]) == 1  # two serve, one stands by
    # Serve scales in: one replica drains (STOPPING), then leaves with an intended death record
    h.observer.view = sized(2, mlp=[replica("a", "mlp"), replica("b", "mlp", "STOPPING"), replica("e", "mlp")], lr=lr)
    h.run(2)
    h.observer.view = sized(2, mlp=[replica("a", "mlp"), replica("e", "mlp")], lr=lr)
    h.observer.causes["id-b"] = VanishCause(VanishVerdict.INTENDED, "INTENDED_USER_EXIT: scale-down")
    h.run(60)
    out, back = h.records("scale-out"), h.records("scale-in")
    assert [(r["target"], r["evidence"]["from"], r["evidence"]["to"]) for r in out] == [("mlp", 2, 3)]
    assert [(r["evidence"]["from"], r["evidence"]["to"]) for r in back] == [(3, 2)]
    assert len(h.records("scaled")) == 2 and h.records("scaled")[0]["evidence"]["replicas"] == 3
    assert h.policy.incidents == []  # a replica stopped by the autoscaler is not a fault
    assert len(h.step.last.standby["mlp"]) == 1 and len(h.step.last.healthy["mlp"]) == 2


def test_a_restart_runs_only_once_its_detection_is_in_the_audit_and_a_resume_audits_it_once(tmp_path, recorded):
    """The detection behind a restart is flushed to the audit before the restart runs: a controller killed
    right after deciding (``controller.after-detect``) finishes the restart on resume and its audit already
    says why, once. On the old code the audit was written after the restarts, and the kill lost it."""
    h = Harness(tmp_path)
    healthy_fleet(h)
    audited: list[list[str]] = []

    class Killed(BaseException):
        """The controller's process dies as the restart starts (a SIGKILL: nothing after it runs)."""

    async def killed_restarting(member: str, replica: str, *, actor_name: str | None = None) -> Outcome:
        audited.append(h.kinds())
        raise Killed

    h.actuators.restart_replica = killed_restarting
    h.observer.dead = {"SERVE_REPLICA::raymedic#mlp#a"}
    with pytest.raises(Killed):
        h.run()
    assert len(audited) == 1 and "detected-dead" in audited[0], audited
    again = Harness(tmp_path, state=load_checkpoint(h.storage, MODEL))
    healthy_fleet(again)
    asyncio.run(again.step.resume())
    again.run()
    assert [r[:2] for r in again.actuators.restarts] == [("mlp", "a")]
    kinds = [r["kind"] for r in read_audit(again.storage, MODEL) if r.get("incident") == "inc-000001"]
    assert kinds.count("detected-dead") == 1 and kinds.count("restart") == 1, kinds


def test_records_a_kill_lost_between_the_checkpoint_and_the_audit_are_written_on_resume(tmp_path, recorded):
    """A controller killed after its checkpoint and before its audit flush: the restarted one audits the
    open incidents' detections and done restarts the checkpoint holds and the audit lacks, once."""
    h = Harness(tmp_path / "before")
    healthy_fleet(h)
    h.observer.dead = {"SERVE_REPLICA::raymedic#mlp#a"}
    h.run()
    done = load_checkpoint(h.storage, MODEL)  # the restart done and checkpointed; say its audit never landed
    again = Harness(tmp_path / "after", state=json.loads(json.dumps(done)))
    healthy_fleet(again)
    asyncio.run(again.step.resume())
    again.run()
    asyncio.run(again.step.resume())  # a second restart of the controller adds nothing
    again.run()
    records = [r for r in read_audit(again.storage, MODEL) if r.get("incident") == "inc-000001"]
    assert [r["kind"] for r in records][:2] == ["detected-dead", "restart"], records
    assert sum(r["kind"] == "detected-dead" for r in records) == 1 and sum(r["kind"] == "restart" for r in records) == 1
    assert records[0]["ts"] == h.policy.incidents[0].detected_at and again.actuators.restarts == []
