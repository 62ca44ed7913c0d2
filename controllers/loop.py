"""The healing of one model: :class:`ModelController`, one per model the controller actor serves.

The controller actor (:class:`controllers.host.HealingController`: detached, named,
self-restarting) runs one :class:`ModelController` per model of the service. A
ModelController is thin wiring: it reads what is deployed for its model and its
own checkpoint, builds the controller's parts, runs the reconcile step
(:class:`controllers.reconcile.Reconciler`: observe → decide → act → record)
every ``controller.tick_s``, and answers the calls gateways, the CLI and tests
make for its model. Each part has its own module:

- :mod:`controllers.observe`: every read of Ray and Serve state;
- :mod:`controllers.probes`: golden probes through each replica's real inference path;
- :mod:`controllers.policies`: the pure decisions (replica health, vanished replicas,
  call statistics, ensemble weights, the retraining playbook, live trials);
- :mod:`controllers.actuators`: replica restarts and stale-version swaps;
- :mod:`controllers.models`: retrain jobs, canary applications, in-place swaps;
- :mod:`controllers.checks`: the data and model checks;
- :mod:`controllers.recorder`, :mod:`controllers.audit`, :mod:`controllers.alerts`: the record;
- :mod:`controllers.checkpoint`: the memory written *before* any action runs, so a
  controller killed mid-step is restarted by Ray, reloads it and does not repeat
  what it already did;
- :mod:`controllers.gateway_sync`, :mod:`controllers.publish`: telemetry in, weights
  and the avoid list out (within a sync period);
- :mod:`controllers.operator`, :mod:`controllers.status`: the operator's API.

Everything a ModelController keeps (state, checkpoint, audit, prediction logs,
retrain records) is stored under its model's name, and everything it acts on in
Serve is its own members' deployments, so two models never share a decision.
Gateways keep serving with the last weights they received if the actor is down.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any, Callable

from ray import serve

from controllers.actuators import RayActuators
from controllers.alerts import WebhookNotifier
from controllers.audit import AuditLog
from controllers.checkpoint import Checkpoint, load_checkpoint
from controllers.checks import RETRAIN_KINDS, ModelChecks
from controllers.deployment import Deployment, load_deployment, load_golden, record_versions
from controllers.diagnostician import Diagnostician
from controllers.disk import DiskKeeper
from controllers.gateway_sync import GatewaySync
from controllers.models.canaries import ServeCanaries
from controllers.models.healer import ModelHealer
from controllers.models.jobs import RayJobs, current_runtime_env
from controllers.models.swap import VersionSwapper
from controllers.monitors.data import MODEL_KINDS, PREDICTION_KINDS, DataAlerts
from controllers.monitors.performance import PerformanceMonitor
from controllers.monitors.vitals import VitalsBoard
from controllers.nodes import NodeKeeper
from controllers.observe import RayObserver
from controllers.operator import Operator
from controllers.outcome import Outcome
from controllers.policies.calls import CallLog
from controllers.policies.leak import MemorySeries
from controllers.policies.group_audit import GroupAudit
from controllers.policies.playbook import Playbook
from controllers.policies.probation import ChampionWindow
from controllers.policies.replica import ControlMode, HealingPolicy, Incident, IncidentStatus
from controllers.policies.weights import HedgeWeights, WeightingConfig
from controllers.policies.weights_audit import WeightsAudit, WeightsAuditConfig
from controllers.probes import GoldenProber
from controllers.publish import ControlState
from controllers.reconcile import Reconciler
from controllers.recorder import Recorder
from controllers.series import SeriesBuckets, SeriesLog
from controllers.status import status_document
from raymedic.config import RaymedicConfig
from raymedic.keys import APP_NAME
from raymedic.logs import get_logger
from raymedic.storage import Storage
from train_jobs.registry import ModelRegistry

__all__ = ["ModelController", "new_hedge"]

log = get_logger(__name__)

GROUPS_CHECK_S = 1.0
"""Between two looks for incident groups that formed or grew: a group record within a second of the
detection or signal that made it, and one diagnosis per second at most (not one per 0.25 s step)."""


def new_hedge(cfg: RaymedicConfig, data: dict[str, Any] | None) -> HedgeWeights:
    """The ensemble weights from the checkpoint, or fresh ones if it holds none for these members."""
    wc = WeightingConfig.from_settings(cfg.controller)
    members = [m.name for m in cfg.members]
    if data:
        try:
            hw = HedgeWeights.from_dict(data, wc)
            if sorted(hw.weights(members)) == sorted(members):
                return hw
        except Exception:
            log.exception("ignoring an unreadable weights checkpoint")
    return HedgeWeights(members, wc)


class ModelController:
    """The healing of one model: the controller actor (:class:`controllers.host.HealingController`) runs one
    per model it serves, each with its own state, checkpoint, audit log and loop, so a fault or a retrain
    of one model never acts on another's members.

    Args:
        storage_path: The service's storage (config, registry, checkpoint, audit).
        model: The model it heals.
        evicting: The replicas the node keeper moves off a node (every model's policy avoids them). None: this
            model's controller runs the node keeper (the service's first model: nodes are shared).
        nodes: The service's node keeper when another model's controller runs it (its nodes' health and the
            lost nodes diagnose this model's incidents too).
    """

    def __init__(self, storage_path: str, model: str, evicting: Callable[[], frozenset[str]] | None = None,
                 nodes: Callable[[], NodeKeeper | None] | None = None) -> None:
        self._storage = storage = Storage(storage_path)
        self._model = model
        self._started_at = time.time()
        self._task: asyncio.Task | None = None
        self._deployment = load_deployment(storage, model)
        state = load_checkpoint(storage, model)
        self._resumed = state is not None
        state = state or {}
        cfg = self.cfg
        self._policy = HealingPolicy(cfg.controller, state.get("policy"))
        self._hedge = new_hedge(cfg, state.get("weights"))
        self._data_alerts = DataAlerts(cfg.data, state.get("data_alerts"))
        self._playbook = Playbook(cfg.retraining, state.get("playbook"))
        self._audit = AuditLog(storage, model, writer=f"ctl{os.getpid()}")
        self._group_audit = GroupAudit(state.get("groups"))
        self._groups_at = -math.inf  # when the groups were last checked for a record (monotonic)
        # The report's pictures: what each period saw, in buckets, written apart from the audit.
        self._series_buckets = SeriesBuckets(cfg.controller.series_bucket_s)
        self._series = SeriesLog(storage, model, writer=f"ctl{os.getpid()}",
                                 retention_h=cfg.controller.series_retention_h)
        self._series_flushed = time.monotonic()
        url = cfg.controller.webhook_url
        self._recorder = Recorder(self._audit, model, incident_of=self._incident,
                                  webhook=WebhookNotifier(url) if url else None,
                                  weights_audit=WeightsAudit(WeightsAuditConfig.from_settings(cfg.controller)))
        dep = self._deployment
        self._perf = PerformanceMonitor(dep.n_classes or 2, cfg.performance,
                                        reference_accuracy=dep.reference_accuracy, state=state.get("performance"))
        # A new epoch, so every gateway takes this controller's state.
        self._control = ControlState(epoch=int(state.get("epoch", 0)) + 1,
                                     weights=self._hedge.weights([m.name for m in cfg.members]))
        self._checkpoint = Checkpoint(storage, model, policy=self._policy.to_dict, weights=self._hedge.to_dict,
                                      epoch=lambda: self._control.epoch, data_alerts=self._data_alerts.to_dict,
                                      performance=self._perf.to_dict, playbook=self._playbook.to_dict,
                                      disk=lambda: self._disk.to_dict(),
                                      nodes=None if evicting is not None else lambda: self.node_keeper.to_dict(),
                                      sync=lambda: self._sync.to_dict(), groups=self._group_audit.to_dict)
        self._disk = DiskKeeper(storage=storage, model=model, cfg=lambda: self.cfg, policy=self._policy,
                                data_alerts=self._data_alerts, recorder=self._recorder, audit=self._audit,
                                checkpoint=self._checkpoint, memory=state.get("disk"))
        self.node_keeper: NodeKeeper | None = None
        if evicting is None:
            self.node_keeper = NodeKeeper(model=model, cfg=lambda: self.cfg, policy=self._policy,
                                          data_alerts=self._data_alerts, recorder=self._recorder, audit=self._audit,
                                          checkpoint=self._checkpoint, memory=state.get("nodes"))
            evicting = self.node_keeper.evicting
        self._actuators = RayActuators(record=self._audit.record, deployment_of=self._deployment_of)
        swapper = VersionSwapper(replicas=self._running_replicas, restart=self._restart,
                                 timeout_s=lambda: self.cfg.controller.swap_timeout_s,
                                 handle_of=lambda member: serve.get_deployment_handle(self._deployment_of(member),
                                                                                      app_name=APP_NAME))
        self._actuators.swapper = swapper
        registry = ModelRegistry(storage)
        # Each member's recent calls of its serving version: a promotion's probation baseline (not checkpointed)
        champion_calls = ChampionWindow(window_s=cfg.retraining.probation.baseline_window_s)
        self._healer = ModelHealer(cfg, self._playbook, self._recorder.model_action,
                                   on_new_versions=self._adopt_versions,
                                   # The controller runs in the application's runtime_env (ensure_controller);
                                   # its retrain jobs get the same, so they import the members' own modules
                                   jobs=RayJobs(model=model, storage_path=cfg.storage_path, storage=storage,
                                                runtime_env=current_runtime_env()),
                                   canaries=ServeCanaries(cfg=lambda: self.cfg), swapper=swapper, registry=registry,
                                   save_intent=self._durable,
                                   recorded=self._audit.has,
                                   approval=lambda: self._policy.mode == ControlMode.APPROVE,
                                   baseline=lambda members: {m: champion_calls.baseline(m, now=time.time())
                                                             for m in members})
        memory = MemorySeries()
        self._vitals = VitalsBoard()
        self._prober = GoldenProber(deployment=self._current,
                                    load_golden=lambda member, version: load_golden(storage, model, member, version),
                                    deploying=lambda: self._healer.deploying, on_stale=self._on_stale,
                                    memory=memory, vitals=self._vitals)
        calls = CallLog()
        self._checks = ModelChecks(deployment=self._current, policy=self._policy, data_alerts=self._data_alerts,
                                   performance=self._perf, healer=self._healer, recorder=self._recorder,
                                   checkpoint=self._checkpoint, audit=self._audit, on_drift=self._series.add)
        self._step = Reconciler(model=model, deployment=self._current, policy=self._policy, hedge=self._hedge,
                                observer=RayObserver(deployments=self._deployments), prober=self._prober, actuators=self._actuators,
                                recorder=self._recorder, checkpoint=self._checkpoint, audit=self._audit,
                                control=self._control, calls=calls, trial_view=self._healer.trial_view,
                                checks=self._checks, memory=memory,
                                latency=lambda: (self._sync.latency, self._live_gateways()),
                                watch_gateway=not cfg.serve_prefix,  # the first model's loop: one gateway
                                evicting=evicting)
        self._sync = GatewaySync(deployment=self._current, calls=calls, playbook=self._playbook,
                                 performance=self._perf, hedge=self._hedge, control=self._control,
                                 checkpoint=self._checkpoint, document=self.control_state,
                                 state=state.get("sync"), champion_calls=champion_calls)
        self._diagnostician = Diagnostician(policy=self._policy, data_alerts=self._data_alerts, audit=self._audit,
                                            cfg=lambda: self.cfg.controller,
                                            performance=lambda: self._checks.performance_report,
                                            nodes=lambda: self.node_keeper or (nodes() if nodes else None))
        self._recorder.diagnosis = self._diagnostician.fields
        self._operator = Operator(model=model, policy=self._policy, playbook=self._playbook, healer=self._healer,
                                  checks=self._checks, recorder=self._recorder, audit=self._audit,
                                  checkpoint=self._checkpoint, registry=registry,
                                  members=lambda: self._current().members, clock=time.time)
        self._audit.record("controller-started", self._model,
                           evidence={"pid": os.getpid(), "resumed_from_checkpoint": self._resumed,
                                     "open_incidents": [i.id for i in self._policy.incidents
                                                        if i.status == IncidentStatus.OPEN]},
                           action="resume" if self._resumed else "start", outcome="ok")
        self._ensure_running()

    # ---- wiring --------------------------------------------------------------------------

    @property
    def cfg(self) -> RaymedicConfig:
        """The deployed configuration."""
        return self._deployment.cfg

    def _current(self) -> Deployment:
        return self._deployment

    def _deployment_of(self, member: str) -> str:
        return self.cfg.deployment_of(member)

    def _deployments(self) -> dict[str, str]:
        """member → its Serve deployment (``MODEL.MEMBER`` for a model served beside the first)."""
        return {m.name: self.cfg.deployment_of(m.name) for m in self.cfg.members}

    def _live_gateways(self) -> list[str]:
        """Gateways that synced within a few periods (a stopped one — scaled in — no longer counts)."""
        horizon = time.time() - 5 * self.cfg.gateway.sync_period_s - 2.0
        return [g for g, at in self._sync.gateways.items() if at >= horizon]

    def _incident(self, incident_id: str) -> Incident | None:
        return next((i for i in self._policy.incidents if i.id == incident_id), None)

    def _running_replicas(self, member: str) -> list[str]:
        return self._step.running_replicas(member)

    async def _restart(self, member: str, replica: str) -> Outcome:
        return await self._actuators.restart_replica(member, replica)

    def _on_stale(self, member: str, replica: str, served: str) -> None:
        self._actuators.swap_stale(member, replica, served=served, champion=self._deployment.versions[member])

    def _durable(self) -> None:
        """The audit, then the checkpoint, written now (blocking): a model action's records and memory are
        durable before and after it runs."""
        self._audit.flush()
        self._checkpoint.save()

    def _reload_deployment(self) -> None:
        self._deployment = load_deployment(self._storage, self._model)
        self._prober.reset()
        self._perf.reference_accuracy = self._deployment.reference_accuracy

    def _adopt_versions(self, versions: dict[str, str]) -> None:
        """New champions serve (a promotion or rollback swapped them in): remember them durably,
        probe against their golden outputs, start their data and performance windows afresh,
        and tell the gateways (the versions are part of the published state)."""
        record_versions(self._storage, self._model, versions)
        self._reload_deployment()
        self._perf.reset(since=time.time())
        # The ensemble weights judged the old versions: a promoted one starts from its trial's record.
        for member, version in versions.items():
            tally = self._sync.trial_losses.get(f"{member}@{version}")
            self._hedge.restart(member, tally[0] / tally[1] if tally and tally[1] else None)
        self._sync.trial_losses = {}
        self._recorder.data_alerts(self._data_alerts.supersede(MODEL_KINDS | PREDICTION_KINDS | RETRAIN_KINDS,
                                                               time.time(), f"new versions {versions}"))

    # ---- the loop ------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not inside the actor's event loop yet: the next call starts it
        self._task = loop.create_task(self._run())
        self._disk.ensure_running()  # its own period: a listing or a compaction never delays a step
        if self.node_keeper is not None:
            self.node_keeper.ensure_running()

    def stop(self) -> None:
        """Stop healing this model (it is no longer served); what it recorded stays in storage."""
        if self._task is not None:
            self._task.cancel()
        self._disk.stop()
        if self.node_keeper is not None:
            self.node_keeper.stop()
        self._audit.flush()
        self._series.add(self._series_buckets.drain(now=float("inf")))
        self._series.flush()

    async def _run(self) -> None:
        try:
            await self._step.resume()
        except Exception:
            log.exception("could not finish the actions of the controller before this one; they stay pending")
        while True:
            t0 = time.monotonic()
            try:
                await self._step.step()
            except Exception:  # the step catches its phases' failures; this is the last line
                log.exception("controller step failed; continuing")
            try:
                self._record_groups()
            except Exception:  # an audit extra: the incidents' own records carry their group anyway
                log.exception("controller: recording the incident groups failed; the next period tries again")
            try:
                await self._record_series()
            except Exception:  # pictures for reports: never worth stopping the loop for
                log.exception("controller: recording the report's time series failed; the next period tries again")
            elapsed = time.monotonic() - t0
            await asyncio.sleep(max(0.0, self.cfg.controller.tick_s - elapsed))

    def _record_groups(self) -> None:
        """An ``incident-group`` record for each group of incidents that formed or grew since the last check
        (every :data:`GROUPS_CHECK_S`: a group forms from detections and from signals, such as a node declared
        lost, that arrive between steps); written with the next step's audit flush."""
        if time.monotonic() - self._groups_at < GROUPS_CHECK_S:
            return
        self._groups_at = time.monotonic()
        now = time.time()
        records = self._group_audit.offer(self._diagnostician.recent_groups(now))
        for rec in records:
            self._recorder.group(rec, ts=now)
        if records:
            self._checkpoint.mark_dirty()

    async def _record_series(self) -> None:
        """Close this period's bucket figures (weights, accuracy, estimate) and write the series when due."""
        now = time.time()
        perf = self._checks.performance_report
        ens = (perf.sources.get("ensemble") if perf else None) or {}
        self._series_buckets.sample(now=now, weights=self._control.weights, window_accuracy=ens.get("accuracy"),
                                    estimate=((perf.estimate or {}).get("accuracy") if perf else None))
        self._series.add(self._series_buckets.drain(now=now))
        if time.monotonic() - self._series_flushed >= self.cfg.controller.series_flush_s:
            self._series_flushed = time.monotonic()
            await asyncio.to_thread(self._series.write, self._series.pending(), now=now)

    # ---- the actor's API ------------------------------------------------------------------

    async def sync(self, gateway: str, batch: dict[str, Any], epoch: int) -> dict[str, Any] | None:
        """A gateway's period: take its telemetry, answer with weights/avoid if they changed."""
        self._ensure_running()
        seq = batch.get("seq")
        try:  # a batch Ray replays on a restarted controller (one already taken) is not counted twice
            if not isinstance(seq, int) or seq > int(self._sync.to_dict()["last_seq"].get(gateway, 0)):
                self._series_buckets.add_batch(gateway, batch, now=time.time())
        except Exception:  # a batch the series cannot read must not cost the gateway its sync
            log.exception("controller: gateway %s's batch could not be added to the report's series", gateway)
        return self._sync.sync(gateway, batch, epoch)

    def control_state(self) -> dict[str, Any]:
        """The published state as the gateways take it (weights, avoid list, standbys, trial, versions)."""
        return self._control.document(paused=self._policy.paused, trial=self._healer.trial_view(),
                                      versions=self._deployment.versions)

    async def status(self) -> dict[str, Any]:
        """The controller's part of ``/v1/status`` (and ``raymedic status``)."""
        self._ensure_running()
        return status_document(policy=self._policy, healer=self._healer, data_alerts=self._data_alerts,
                               audit=self._audit, control=self._control, deployment=self._deployment,
                               webhook=self._recorder.webhook, last=self._step.last,
                               gateways=self._sync.gateways, step_ms=self._step.step_ms,
                               data_report=self._checks.data_report,
                               performance_report=self._checks.performance_report,
                               process={"pid": os.getpid(), "started_at": self._started_at,
                                        "resumed_from_checkpoint": self._resumed},
                               disk=self._disk.report(),
                               disk_proposals=self._disk.proposals() + (self.node_keeper.proposals()
                                                                        if self.node_keeper else [])
                               + self._healer.proposals(),
                               nodes=self.node_keeper.report() if self.node_keeper else None,
                               slo_breached=self._step.slo_breached, vitals=self._vitals.report(),
                               gpu=self._step.gpu_report(time.time()), diagnostician=self._diagnostician)

    async def set_paused(self, paused: bool, who: str = "operator") -> dict[str, Any]:
        """Pause or resume healing (an operator holds the wheel)."""
        self._ensure_running()
        return await self._operator.set_paused(paused, who)

    async def decide(self, incident_id: str, approve: bool, who: str = "operator") -> dict[str, Any]:
        """Approve or reject a proposed restart or compaction (approval mode). Errors come back as {"error": ...}."""
        self._ensure_running()
        if self._disk.owns(incident_id):
            return await self._disk.decide(incident_id, approve, who)
        if self._healer.owns(incident_id):
            return await self._operator.decide_model(incident_id, approve, who)
        if self.node_keeper is not None and self.node_keeper.owns(incident_id):
            return await self.node_keeper.decide(incident_id, approve, who)
        return await self._operator.decide(incident_id, approve, who)

    async def set_mode(self, mode: str, who: str = "operator") -> dict[str, Any]:
        """auto: heal on its own; approve: propose restarts and wait for an operator."""
        self._ensure_running()
        return await self._operator.set_mode(mode, who)

    async def request_retrain(self, reason: str = "", who: str = "operator") -> dict[str, Any]:
        """Retrain now (gated like an automatic one); answered at once, the job runs in the background."""
        self._ensure_running()
        return self._operator.request_retrain(reason, who)

    async def rollback(self, members: list[str] | None = None, who: str = "operator") -> dict[str, Any]:
        """Champion back to the previous version (all members, or ``members``), swapped in on every replica."""
        self._ensure_running()
        return self._operator.rollback(members, who)

    async def promote(self, member: str, version: str, reason: str = "", who: str = "operator") -> dict[str, Any]:
        """Make a registered version the champion of ``member``, swapped in on every replica."""
        self._ensure_running()
        return self._operator.promote(member, version, reason, who)

    async def trial(self, member: str, version: str = "challenger", who: str = "operator",
                    mode: str | None = None) -> dict[str, Any]:
        """Put a registered version of a member on live trial (canary/shadow) next to its champion."""
        self._ensure_running()
        return self._operator.trial(member, version, who, mode)

    async def note(self, kind: str, target: str, evidence: dict[str, Any]) -> None:
        """Record something done to the service from outside (e.g. an injected fault)."""
        await self._operator.note(kind, target, evidence)

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and versions (after ``raymedic up`` redeploys)."""
        self._reload_deployment()
        self._healer.cfg = self.cfg
        self._playbook.cfg = self.cfg.retraining
        url = self.cfg.controller.webhook_url
        if (self._recorder.webhook.url if self._recorder.webhook else None) != url:
            self._recorder.webhook = WebhookNotifier(url) if url else None
        self._recorder.weights_audit.cfg = WeightsAuditConfig.from_settings(self.cfg.controller)
        self._ensure_running()
        return {"model": self._model, "versions": dict(self._deployment.versions)}

    async def ping(self) -> dict[str, Any]:
        """Liveness and identity: ``ensure_controller`` checks it heals the model it should."""
        self._ensure_running()
        return {"pid": os.getpid(), "epoch": self._control.epoch, "model": self._model,
                "storage_path": self.cfg.storage_path, "runtime_env": current_runtime_env(),
                "running": self._task is not None and not self._task.done()}

    async def flush(self) -> int:
        """Write the buffered audit records now (and the report's series, its closed buckets); how many records."""
        self._series.add(self._series_buckets.drain(now=time.time()))
        await asyncio.to_thread(self._series.write, self._series.pending())
        return await asyncio.to_thread(self._audit.flush)
