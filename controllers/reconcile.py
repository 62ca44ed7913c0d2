"""The controller's reconcile step: observe → decide → act → record, each phase timed.

:class:`Reconciler` holds the step's logic and takes every collaborator as a
constructor argument (the observer of the cluster, the prober, the actuators,
the clock, the checkpoint, the audit trail, the recorder of metrics and alerts),
so a unit test builds it with hand-written fakes and a fake clock and calls
:meth:`Reconciler.step`. The actor (:mod:`controllers.loop`) only wires it and
runs it every ``controller.tick_s``.

One step:

- **model** (every ``data.check_period_s``): data-quality, drift and performance
  checks, and the model playbook (:mod:`controllers.checks`);
- **observe**: Serve's view and the actors' liveness (every ``view_period_s``),
  replicas that vanished from the view and why, the due golden probes sent, and
  a frozen :class:`~controllers.policies.replica.Observation` of every replica's
  probes, calls, liveness and memory samples;
- **decide**: the pure healing policy, the bounded Hedge weights, and the state
  to publish to the gateways;
- **act**: the checkpoint written (the intent of every restart is durable before
  it runs, so a controller killed mid-step never repeats it), then the restarts,
  each returning an :class:`~controllers.outcome.Outcome`;
- **record**: the decided events and the actions' outcomes to the audit trail,
  metrics and webhook; the audit flushed.

Each phase is timed (``raymedic_controller_phase_seconds``) and so is the whole
step (``raymedic_controller_step_seconds``); a phase that fails is logged with
its traceback and the loop goes on (a failed observe or decide skips the rest of
that step; a failed act still records what was decided). A step in which every
phase succeeded sets ``raymedic_controller_last_success_timestamp_seconds``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from controllers.actuators import Actuators
from controllers.audit import AuditLog
from controllers.checkpoint import Checkpoint
from controllers.checks import ModelChecks
from controllers.deployment import Deployment
from controllers.observe import Observer
from controllers.outcome import Outcome
from controllers.policies.calls import CallLog
from controllers.policies.gpu import DrainGpuNode, GpuFault, GpuNodeWatch, reading_fault
from controllers.policies.leak import MemorySeries, ray_memory_threshold
from controllers.policies.replica import (AuditEvent, ControlMode, HealingPolicy, Incident, IncidentStatus, Observation,
                                          ReplicaSnapshot, RestartReplica, StepResult)
from controllers.policies.scaling import ScaleWatch, Size
from controllers.policies.vanish import VanishWatch
from controllers.policies.weights import HedgeWeights
from controllers.probes import Prober
from controllers.publish import ControlState
from controllers.recorder import Recorder
from raymedic import metrics
from raymedic.enums import StrEnum
from raymedic.failpoints import Point, failpoint
from raymedic.keys import APP_NAME, GATEWAY_DEPLOYMENT, replica_actor_name
from raymedic.logs import get_logger
from serve_apps.serve_state import AppView

__all__ = ["Phase", "Decision", "ActionDone", "Reconciler", "STEP_TIMES_KEPT"]

log = get_logger(__name__)

STEP_TIMES_KEPT = 200
"""Decide-phase durations kept for the status's ``step_ms_p50``."""

REPLICA_NODES_KEPT_S = 300.0
"""How long a replica's node is remembered after it was last seen in Serve's view: longer than a vanished
replica takes to settle (:data:`controllers.policies.vanish.VANISH_SETTLE_S`)."""

T = TypeVar("T")


class Phase(StrEnum):
    """The phases of one step (the ``phase`` label of ``raymedic_controller_phase_seconds``)."""

    MODEL = "model"
    OBSERVE = "observe"
    DECIDE = "decide"
    ACT = "act"
    RECORD = "record"


class _Failed:
    """A phase raised (it was logged); the step goes on without its result."""


_FAILED = _Failed()


@dataclass(frozen=True)
class Decision:
    """What the decide phase produced: the policy's result and the state published to the gateways.

    Attributes:
        result: The policy step's actions, events and routing.
        weights: The ensemble weights published (the previous ones while paused).
        avoid: member → replicas gateways route around.
        published: Whether the published state changed (a new epoch).
        announce: Whether that change may be audited (every change but the first after a start; the weights
            audit records the material ones).
        decided_at: Wall-clock time of the decision: the audit time of its events.
    """

    result: StepResult
    weights: dict[str, float]
    avoid: dict[str, tuple[str, ...]]
    published: bool
    announce: bool
    decided_at: float


@dataclass(frozen=True)
class ActionDone:
    """One action carried out: its outcome and the audit event the policy made of it."""

    action: RestartReplica
    outcome: Outcome
    event: AuditEvent | None
    duration_s: float


class Reconciler:
    """One model's reconcile step over injected collaborators.

    Invariant: only :meth:`step` (and :meth:`resume`, before the first step) advances the
    policy's memory; operator calls change it only through the policy's own methods.

    Args:
        model: The model healed (metric labels).
        deployment: The deployment now (members, controller config, serving versions).
        policy: The pure replica healing policy.
        hedge: The ensemble weights.
        observer: Reads Serve's view, actor liveness and death causes (blocking; run in threads).
        prober: Sends golden probes and keeps their outcomes.
        actuators: Restarts replicas; returns outcomes, never raises.
        recorder: Audit, metrics and alerts of events.
        checkpoint: The controller's checkpoint (written before acting).
        audit: The audit trail (flushed at the end of a step).
        control: The state published to the gateways.
        calls: The gateways' call reports.
        trial_view: The live trial as gateways need it (part of the published state).
        checks: The model phase (None: no data or model checks).
        memory: The replicas' memory samples (None: no leak rule).
        memory_threshold: Ray's memory-monitor threshold (default: what this process's environment says).
        latency: gateway → its latest predict-latency report, and which gateways are connected (None: no SLO
            audit).
        watch_gateway: Whether this model's controller also audits the gateway's scaling (the first model's:
            the gateway is shared).
        evicting: Replica ids on nodes the node keeper moves work off (:mod:`controllers.nodes`): avoided.
        clock: Wall-clock time (``now`` of every observation).
        timer: A monotonic timer for durations.
    """

    def __init__(self, *, model: str, deployment: Callable[[], Deployment], policy: HealingPolicy,
                 hedge: HedgeWeights, observer: Observer, prober: Prober, actuators: Actuators, recorder: Recorder,
                 checkpoint: Checkpoint, audit: AuditLog, control: ControlState, calls: CallLog,
                 trial_view: Callable[[], dict[str, Any] | None], checks: ModelChecks | None = None,
                 memory: MemorySeries | None = None, memory_threshold: float | None = None,
                 latency: Callable[[], tuple[Mapping[str, Mapping[str, Any]], Sequence[str]]] | None = None,
                 watch_gateway: bool = False, evicting: Callable[[], frozenset[str]] | None = None, clock: Callable[[], float] = time.time, timer: Callable[[], float] = time.perf_counter) -> None:
        self.model = model
        self._deployment = deployment
        self._policy = policy
        self._hedge = hedge
        self._observer = observer
        self._prober = prober
        self._actuators = actuators
        self._recorder = recorder
        self._checkpoint = checkpoint
        self._audit = audit
        self._control = control
        self._calls = calls
        self._trial_view = trial_view
        self._checks = checks
        self._memory = memory
        self._memory_threshold = ray_memory_threshold() if memory_threshold is None else memory_threshold
        self._clock = clock
        self._timer = timer
        self.view: AppView | None = None
        self._alive: frozenset[str] | None = None
        self._died_at: Mapping[str, float] = {}  # actor name → GCS death time, of the last read's dead replicas
        self._view_at = -math.inf
        self._vanish = VanishWatch()
        self._scale = ScaleWatch()
        self._latency = latency
        self._watch_gateway = watch_gateway
        self._evicting = evicting
        self._scale_events: list[tuple[float, AuditEvent]] = []  # observed, recorded by the next record phase
        ccfg = deployment().cfg.controller
        self._gpu_nodes = GpuNodeWatch(faults=ccfg.gpu_node_faults, window_s=ccfg.gpu_node_window_s,
                                       cooldown_s=ccfg.gpu_node_cooldown_s)
        self._gpu_drains: list[DrainGpuNode] = []  # decided, carried out by the next act phase
        self._gpu_done: list[tuple[DrainGpuNode, str]] = []  # carried out, recorded by the record phase
        self._dead_since: dict[str, float] = {}
        self._replica_nodes: dict[str, tuple[str, float]] = {}  # replica → (its node, last seen there)
        self._decided: Decision | None = None  # the last decision whose events were recorded
        self.last: StepResult | None = None
        self.step_ms: deque[float] = deque(maxlen=STEP_TIMES_KEPT)
        self.last_success: float | None = None
        self.timings: dict[str, float] = {}
        """Seconds each phase of the last step took, and the whole ``step`` (what the metrics observed)."""

    # ---- the step -------------------------------------------------------------------------

    async def step(self) -> bool:
        """One observe → decide → act → record step; True if every phase that ran succeeded."""
        t0 = self._timer()
        now = self._clock()
        ok = True
        self.timings = {}
        if self._checks is not None and self._checks.due(now):
            ok &= await self._timed(Phase.MODEL, self._checks.run(now)) is not _FAILED
        obs = await self._timed(Phase.OBSERVE, self._observe(now))
        if obs is _FAILED:
            ok = False
        elif obs is not None:
            decision = await self._timed(Phase.DECIDE, self._decide_async(obs))
            if decision is _FAILED:
                ok = False
            else:
                done: list[ActionDone] = []
                ok &= await self._timed(Phase.ACT, self._act(decision, done)) is not _FAILED
                ok &= await self._timed(Phase.RECORD, self._record(decision, done)) is not _FAILED
        self.timings["step"] = self._timer() - t0
        metrics.observe("raymedic_controller_step_seconds", self.timings["step"], model=self.model)
        if ok:
            self.last_success = self._clock()
            metrics.set_gauge("raymedic_controller_last_success_timestamp_seconds", self.last_success,
                              model=self.model)
        return ok

    async def _timed(self, phase: Phase, work: Awaitable[T]) -> T | _Failed:
        t0 = self._timer()
        try:
            return await work
        except Exception:
            log.exception("controller %s phase failed for model %s; the loop goes on with the next step",
                          phase, self.model)
            return _FAILED
        finally:
            self.timings[str(phase)] = self._timer() - t0
            metrics.observe("raymedic_controller_phase_seconds", self.timings[str(phase)], model=self.model,
                            phase=phase)

    async def resume(self) -> None:
        """Restarts requested before a crash and never confirmed: finish them (idempotently: one
        already gone is ``ok: already gone``). Run once, before the first step.

        First the records a kill lost: an open incident the checkpoint holds whose detection (or whose
        done restart) the audit does not — the controller died between its checkpoint and its audit
        flush — is audited now, as it was decided, so every action has its detection and outcome."""
        for ev, ts in self._unaudited():
            self._recorder.event(ev, ts=ts, restored=True)
        for act in self._policy.pending_actions():
            done = await self._execute(act)
            if done.event is not None:
                self._recorder.event(done.event, duration_s=done.duration_s, action_id=act.action_id)

    def _unaudited(self) -> list[tuple[AuditEvent, float]]:
        """Records of open incidents the checkpoint holds and the audit (as far as its tail reaches) lacks."""
        out: list[tuple[AuditEvent, float]] = []
        for inc in self._policy.incidents:
            if inc.status != IncidentStatus.OPEN or not self._audit.reaches(inc.detected_at):
                continue
            target = f"{inc.member}/{inc.replica}"
            if not self._audit.has(f"detected-{inc.kind}", inc.id):
                out.append((AuditEvent(f"detected-{inc.kind}", target, inc.evidence, "avoid", "ok", inc.id),
                            inc.detected_at))
            if inc.action and inc.action_outcome is not None and not self._audit.has(inc.action, inc.id):
                out.append((AuditEvent(inc.action, target, {"incident": inc.kind}, inc.action, inc.action_outcome,
                                       inc.id), inc.action_at or inc.detected_at))
        return out

    # ---- observe ----------------------------------------------------------------------------

    async def _observe(self, now: float) -> Observation | None:
        cfg = self._deployment().cfg.controller
        if now - self._view_at >= cfg.view_period_s:
            try:
                state = await asyncio.to_thread(self._observer.read)
                self.view, self._alive, self._died_at = state.view, state.alive, state.died_at
                if state.view is not None:
                    await self._find_vanished(now, state.view)
                    self._watch_scaling(now, state.view)
                    # Call evidence of replicas Serve no longer lists goes once it is a minute old (bounded
                    # memory over months of replicas coming and going).
                    self._calls.retain(self._call_keys(state.view), now=now, idle_s=max(60.0, 12 * cfg.window_s))
            except Exception:
                log.exception("could not read Serve state for model %s; keeping the last view", self.model)
            self._view_at = now
        view = self.view
        if view is None:
            return None  # not deployed (yet): nothing to heal
        live = self._prober.schedule(now, view, being_replaced=self._being_replaced)
        for rid in [k for k in self._dead_since if k not in live]:
            del self._dead_since[rid]
        return self._observation(now, view)

    def _watch_scaling(self, now: float, view: AppView) -> None:
        """Serve's scaling decisions in this view, and the gateways' latency against the SLO, as audit
        events (:mod:`controllers.policies.scaling`); each deployment's sizes as gauges."""
        cfg = self._deployment().cfg
        sizes: dict[str, Size] = {}
        for m in cfg.members:
            d = view.deployments.get(m.name)
            if d is not None:
                sizes[m.name] = _size(d, low=m.min_serve_replicas, high=m.max_serve_replicas)
        gw = view.deployments.get(GATEWAY_DEPLOYMENT)
        if self._watch_gateway and gw is not None:
            sizes[GATEWAY_DEPLOYMENT] = _size(gw, low=cfg.gateway.replicas,
                                              high=cfg.gateway.max_replicas or cfg.gateway.replicas)
        for name, size in sizes.items():
            metrics.set_gauge("raymedic_replicas", size.running, model=self.model, deployment=name, kind="running")
            metrics.set_gauge("raymedic_replicas", size.target, model=self.model, deployment=name, kind="target")
        events = self._scale.observe(now=now, sizes=sizes)
        if self._latency is not None:
            reports, live = self._latency()
            events += self._scale.latency(reports=reports, slo_ms=cfg.gateway.latency_slo_ms, gateways=live,
                                          now=now)
        self._scale_events.extend((now, ev) for ev in events)

    @property
    def slo_breached(self) -> list[str]:
        """Gateways whose p99 is above ``gateway.latency_slo_ms`` now (for status)."""
        return self._scale.breached

    def _being_replaced(self, replica: str) -> bool:
        inc = self._policy.open_incident(replica)
        return inc is not None and inc.action is not None

    def _handled(self, replica: str) -> bool:
        return any(i.replica == replica for i in self._policy.incidents)

    async def _find_vanished(self, now: float, view: AppView) -> None:
        """Replicas that were RUNNING and left Serve's view because their process (or node) died
        (:mod:`controllers.policies.vanish` decides; the observer reads each death record)."""
        running: dict[str, tuple[str, str | None]] = {}
        present: set[str] = set()
        for member in self._deployment().members:
            dep = view.deployments.get(member)
            for r in (dep.replicas if dep else ()):
                present.add(r.id)
                if r.state == "RUNNING":
                    running[r.id] = (member, r.actor_id)
        self._vanish.track(now=now, running=running, present=present, last_probe=self._prober.last_outcomes())
        for pending in self._vanish.due(now=now, present=present, handled=self._handled):
            cause = await asyncio.to_thread(self._observer.vanish_cause, pending.actor_id)
            self._vanish.settle(pending.replica, cause, now=now)

    def _call_keys(self, view: AppView) -> list[str]:
        """``"member/replica"`` of every replica in ``view`` (the keys the gateways report calls under)."""
        return [f"{name}/{r.id}" for name, d in view.deployments.items() for r in d.replicas]

    def _observation(self, now: float, view: AppView) -> Observation:
        dep = self._deployment()
        window = dep.cfg.controller.window_s
        leak_window = dep.cfg.controller.leak_window_s
        memory = self._memory
        snaps = []
        targets: dict[str, int] = {}
        for m in dep.cfg.members:
            d = view.deployments.get(m.name)
            if d is None:
                continue
            # Serve's target counts the hot standbys too; the policy's target is what serves traffic.
            targets[m.name] = max(1, int(d.target_replicas or m.replicas + m.standby) - m.standby)
            for r in d.replicas:
                if r.node_id:  # remembered past the replica's end: a vanished replica's incident names its node
                    self._replica_nodes[r.id] = (r.node_id, now)
                alive = None
                if self._alive is not None and r.actor_name and r.state == "RUNNING":
                    alive = r.actor_name in self._alive
                    if not alive:
                        self._dead_since.setdefault(r.id, now)
                snaps.append(ReplicaSnapshot(
                    member=m.name, replica=r.id, state=r.state, alive=alive,
                    seen_dead_at=self._dead_since.get(r.id),
                    died_at=self._died_at.get(r.actor_name) if alive is False and r.actor_name else None,
                    probes=self._prober.history(r.id),
                    calls=self._calls.stats(f"{m.name}/{r.id}", now=now, window_s=window),
                    memory=memory.window(r.id, now=now, window_s=leak_window) if memory is not None else (),
                    memory_limit_mb=m.memory_limit_mb, node_id=r.node_id or None))
        for v in self._vanish.take():  # one observation is enough to open the incident
            snaps.append(ReplicaSnapshot(member=v.member, replica=v.replica, state="GONE", alive=False,
                                         node_id=(self._replica_nodes.get(v.replica) or (None,))[0], death=v.reason,
                                         seen_dead_at=v.seen_at if v.missed_at is None else min(v.seen_at, v.missed_at),
                                         died_at=v.died_at,
                                         probes=self._prober.history(v.replica)))
        for rid in [rid for rid, (_, seen) in self._replica_nodes.items() if now - seen > REPLICA_NODES_KEPT_S]:
            del self._replica_nodes[rid]
        return Observation(now=now, replicas=tuple(snaps), targets=targets,
                           standby={m.name: m.standby for m in dep.cfg.members if m.standby},
                           memory_threshold=self._memory_threshold,
                           evicting=self._evicting() if self._evicting is not None else frozenset())

    # ---- decide -----------------------------------------------------------------------------

    async def _decide_async(self, obs: Observation) -> Decision:
        return self.decide(obs)

    def decide(self, obs: Observation) -> Decision:
        """The policy's decisions on ``obs`` and the state to publish (pure but for the policy's memory,
        the published state and the checkpoint's dirty mark)."""
        dep = self._deployment()
        t0 = self._timer()
        result = self._policy.step(obs)
        members = dep.members
        healthy = [m for m in members if result.healthy.get(m)] if self._prober.probed else members
        weights = self._hedge.weights(healthy)
        avoid, standby = result.avoid, result.standby
        if self._policy.paused:  # an operator holds the wheel: keep routing and weights as they are
            weights, avoid, standby = self._control.weights, {}, self._control.standby
        self._watch_gpu(obs.now, result)
        self.step_ms.append((self._timer() - t0) * 1000)
        self.last = result
        published, announce = self._control.offer(weights=weights, avoid=avoid, paused=self._policy.paused,
                                                  trial=self._trial_view(), standby=standby,
                                                  versions=dep.versions)
        if published:
            self._checkpoint.mark_dirty()
        return Decision(result, dict(weights), dict(avoid), published, announce, self._clock())

    def _node_of(self, replica: str) -> str | None:
        view = self.view
        for d in (view.deployments.values() if view is not None else ()):
            for r in d.replicas:
                if r.id == replica:
                    return r.node_id
        return None

    def _watch_gpu(self, now: float, result: StepResult) -> None:
        """Count this step's GPU faults against their nodes (a replica's ``gpu`` incident; a replica's GPU
        reading whose NVML read failed or counts ECC errors, the device's trouble rather than one process's
        out-of-memory) and queue the drain decisions (:mod:`controllers.policies.gpu`)."""
        for ev in result.events:
            if ev.kind == "detected-gpu":
                self._gpu_nodes.record(node=self._node_of(ev.target.split("/", 1)[1]), now=now,
                                       kind=ev.evidence.get("gpu_fault", "device-lost"), source=ev.target)
        for replica, reading in self._prober.gpu.items():
            kind = reading_fault(reading)
            if kind in (GpuFault.DEVICE_LOST, GpuFault.ECC):
                self._gpu_nodes.record(node=self._node_of(replica), now=now, kind=kind,
                                       source=f"{reading.get('member')}/{replica}")
        self._gpu_drains += self._gpu_nodes.decide(now=now)

    def _gpu_replicas_on(self, node_id: str) -> list[tuple[str, str]]:
        """(member, replica) of the GPU replicas on ``node_id``: members with ``num_gpus``, and any replica
        that reported a GPU reading (the fault double's, on a machine without GPUs)."""
        view = self.view
        if view is None:
            return []
        out = []
        for m in self._deployment().cfg.members:
            d = view.deployments.get(m.name)
            out += [(m.name, r.id) for r in (d.replicas if d is not None else ())
                    if r.node_id == node_id and (m.num_gpus > 0 or r.id in self._prober.gpu)]
        return out

    def gpu_report(self, now: float) -> dict[str, Any]:
        """The GPU signals for status: per replica with a GPU its latest reading, per node its health
        (from its replicas' readings) and the faults counted against it; ``{"gpu": "none"}`` with none."""
        replicas = {rid: dict(r) for rid, r in self._prober.gpu.items()}
        counted = self._gpu_nodes.report(now=now)
        nodes: dict[str, dict[str, Any]] = {}
        for rid, r in replicas.items():
            node = self._node_of(rid) or "unknown"
            r["node"] = node
            n = nodes.setdefault(node, {"state": "ok", "replicas": []})
            n["replicas"].append(rid)
            nvml = r.get("nvml") or {}
            if r.get("health") != "ok":
                n["state"] = "fault"
                if nvml.get("error"):
                    n["nvml_error"] = nvml["error"]
        for node, c in counted.items():
            nodes.setdefault(node, {"state": "fault", "replicas": []}).update(c)
        for node, n in nodes.items():
            metrics.set_gauge("raymedic_gpu_node_healthy", 1.0 if n["state"] == "ok" else 0.0, model=self.model,
                              node=node)
            metrics.set_gauge("raymedic_gpu_node_faults", n.get("faults_in_window", 0), model=self.model, node=node)
        if not replicas and not nodes:
            return {"gpu": "none"}
        return {"replicas": replicas, "nodes": nodes}

    # ---- act --------------------------------------------------------------------------------

    async def _act(self, decision: Decision, done: list[ActionDone]) -> None:
        result = decision.result
        # A restart decided in an earlier step whose checkpoint could not be written never ran (the save
        # raised, so the phase stopped before it): it runs now, once its intent is durable — it must not
        # wait for a controller restart, nor hold its member's one restart in flight forever.
        decided = {a.incident_id for a in result.actions}
        actions = list(result.actions) + [a for a in self._policy.pending_actions() if a.incident_id not in decided]
        if result.events or actions or self._checkpoint.dirty:
            await asyncio.to_thread(self._checkpoint.save)  # intent is durable before any action runs
        if actions:
            # What the restarts act on (the detections, the decisions) is audited before they run: a
            # controller killed from here on finishes them on restart (resume) and its audit says why.
            self._record_decided(decision)
            await asyncio.to_thread(self._audit.flush)
            failpoint(Point.AFTER_DETECT)  # kill tests: decided, checkpointed and audited, not yet done
        for act in actions:
            done.append(await self._execute(act))
        if actions:
            await asyncio.to_thread(self._checkpoint.save)
        drains, self._gpu_drains = self._gpu_drains, []
        for drain in drains:
            if self._policy.paused:  # decided and audited, never carried out while an operator holds the wheel
                self._gpu_done.append((drain, "suppressed: paused"))
                continue
            if self._policy.mode == ControlMode.APPROVE:  # a node drain moves every replica on it: an operator's call
                self._gpu_done.append((drain, f"proposed: approval mode; drain it with `ray drain-node` or move "
                                              f"the GPU members off {drain.node_id} by hand"))
                continue
            try:
                outcome = await self._actuators.drain_gpu_node(drain.node_id, self._gpu_replicas_on(drain.node_id))
            except Exception as exc:  # an actuator must not raise; if one does, it is still an outcome
                log.exception("actuator raised draining GPU node %s", drain.node_id)
                outcome = Outcome.from_error(exc)
            self._gpu_done.append((drain, outcome.text))

    def actor_name(self, member: str, replica: str) -> str:
        """The replica's actor name: from Serve's view when it lists it, else Serve's naming rule."""
        view = self.view
        if view is not None and member in view.deployments:
            for r in view.deployments[member].replicas:
                if r.id == replica and r.actor_name:
                    return r.actor_name
        return replica_actor_name(APP_NAME, self._deployment().cfg.deployment_of(member), replica)

    async def _execute(self, act: RestartReplica) -> ActionDone:
        t0 = self._timer()
        try:
            outcome = await self._actuators.restart_replica(act.member, act.replica,
                                                            actor_name=self.actor_name(act.member, act.replica))
        except Exception as exc:  # an actuator must not raise; if one does, it is still an outcome
            log.exception("actuator raised restarting %s/%s", act.member, act.replica)
            outcome = Outcome.from_error(exc)
        event = self._policy.action_done(act.incident_id, outcome.text)
        self._checkpoint.mark_dirty()
        return ActionDone(act, outcome, event, round(self._timer() - t0, 4))

    # ---- record -----------------------------------------------------------------------------

    def _record_decided(self, decision: Decision) -> None:
        """The scaling seen and the events decided, recorded once per decision (before its restarts when
        it has any, else in the record phase)."""
        if self._decided is decision:
            return
        self._decided = decision
        scaled, self._scale_events = self._scale_events, []
        for seen_at, ev in scaled:
            self._recorder.event(ev, ts=seen_at)
        for ev in decision.result.events:
            self._recorder.event(ev, ts=decision.decided_at)

    async def _record(self, decision: Decision, done: Sequence[ActionDone]) -> None:
        ts = decision.decided_at
        self._record_decided(decision)
        gpu_done, self._gpu_done = self._gpu_done, []
        for drain, text in gpu_done:
            self._recorder.event(AuditEvent("gpu-node-drain", drain.target, drain.evidence, drain.action, text), ts=ts)
        if decision.published:
            self._recorder.published(decision.weights, decision.avoid, epoch=self._control.epoch,
                                     announce=decision.announce, ts=ts)
        else:
            self._recorder.weights_due(ts)
        for d in done:
            if d.event is not None:
                self._recorder.event(d.event, duration_s=d.duration_s, action_id=d.action.action_id)
        await asyncio.to_thread(self._audit.flush)

    # ---- reads for the actor ----------------------------------------------------------------

    def running_replicas(self, member: str) -> list[str]:
        """Ids of the member's RUNNING replicas in the last Serve view."""
        view = self.view
        dep = view.deployments.get(member) if view is not None else None
        return [r.id for r in (dep.replicas if dep else ()) if r.state == "RUNNING"]

    def incident(self, incident_id: str) -> Incident | None:
        """The policy's incident with this id (None if it is unknown or was forgotten)."""
        return next((i for i in self._policy.incidents if i.id == incident_id), None)


def _size(d: Any, *, low: int, high: int) -> Size:
    """A deployment view's :class:`Size` (Serve's target, its RUNNING replicas, the bounds)."""
    running = sum(1 for r in d.replicas if r.state == "RUNNING")
    return Size(target=int(d.target_replicas if d.target_replicas is not None else low), running=running,
                low=low, high=high)
