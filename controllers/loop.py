"""The healing controller: a detached, named, self-restarting Ray actor.

Its loop is observe → decide → act → record, every ``controller.tick_s``:

- **observe**: Serve's replica list (:mod:`controllers.observe`), golden-input
  probes sent to each replica through the member's real inference path (the
  router's ``target`` keyword), and the gateways' batched call statistics and
  feedback losses (pushed by :meth:`sync`, one call per gateway per period);
- **decide**: :class:`controllers.policies.replica.HealingPolicy` (pure) and the bounded
  Hedge weights (:mod:`controllers.policies.weights`);
- **act**: kill a faulty replica's actor so Serve replaces it; the avoid list and
  weights travel back to the gateways on their next sync (within 1 s);
- **record**: the audit trail (:mod:`controllers.audit`) and a checkpoint of the
  policy memory, weights and action ledger written *before* any action runs, so a
  controller killed mid-step is restarted by Ray, reloads the checkpoint and does
  not repeat what it already did.

Gateways keep serving with the last weights they received if this actor is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from typing import Any

import numpy as np

from controllers.audit import AuditLog
from controllers.monitors.data import MODEL_KINDS, PREDICTION_KINDS, DataAlerts, DataMonitor, DataReport
from controllers.models.healer import ModelHealer
from controllers.monitors.performance import PerformanceMonitor, PerformanceReport
from controllers.policies.playbook import Playbook, Trigger
from controllers.observe import alive_replica_actors, vanish_cause
from serve_apps.serve_state import AppView, read_app_view
from controllers.policies.replica import (CallStats, HealingPolicy, Observation, Probe, ReplicaSnapshot, RestartReplica,
                                StepResult)
from controllers.alerts import WebhookNotifier
from controllers.policies.weights import HedgeWeights, WeightingConfig
from raymedic import metrics
from raymedic.config import RaymedicConfig
from raymedic.keys import (APP_NAME, CHALLENGER_SUFFIX, SERVE_NAMESPACE, challenger_source,
                           controller_config_key, controller_state_key, replica_actor_name)
from raymedic.storage import Storage
from train_jobs.artifacts import GOLDEN, PREPROCESS, REFERENCE, GoldenSet
from train_jobs.reference import Reference
from train_jobs.registry import ModelRegistry
from train_jobs.schema import ModelSchema

__all__ = ["HealingController"]

log = logging.getLogger(__name__)

PROBES_KEPT = 12
VANISH_SETTLE_S = 45.0  # how long a replica that left Serve's view may take to show why (a lost
# node is declared dead after the GCS's health checks give up on its raylet: ~15-30 s)
VANISH_RECHECK_S = 3.0  # between two looks at one such replica's death record


def _dead_error(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError))


class HealingController:
    """One per model; created by :func:`controllers.client.ensure_controller`."""

    def __init__(self, storage_path: str, model: str) -> None:
        self._storage = Storage(storage_path)
        self._model = model
        self._started_at = time.time()
        self._task: asyncio.Task | None = None
        self._load_config()
        state = self._load_state()
        self._resumed = state is not None
        state = state or {}
        self._policy = HealingPolicy(self.cfg.controller, state.get("policy"))
        self._hedge = self._new_hedge(state.get("weights"))
        self._trial_losses: dict[str, list[float]] = {}  # "member@version" on trial → [loss sum, labels]
        self._data_alerts = DataAlerts(self.cfg.data, state.get("data_alerts"))
        self._playbook = Playbook(self.cfg.retraining, state.get("playbook"))
        self._healer = ModelHealer(self.cfg, self._storage, self._playbook, self._record_model,
                                   on_new_versions=self._adopt_versions, replicas=self._running_replicas)
        url = self.cfg.controller.webhook_url
        self._webhook = WebhookNotifier(url) if url else None
        self._data_report: DataReport | None = None
        self._perf = PerformanceMonitor(self._n_classes or 2, self.cfg.performance,
                                        reference_accuracy=self._reference_accuracy, state=state.get("performance"))
        self._perf_report: PerformanceReport | None = None
        self._data_at = 0.0
        self._epoch = int(state.get("epoch", 0)) + 1  # a new epoch so every gateway takes our state
        self._audit = AuditLog(self._storage, model, writer=f"ctl{os.getpid()}")
        self._probes: dict[str, deque[Probe]] = {}
        self._probe_task: dict[str, asyncio.Task] = {}
        self._last_probe: dict[str, float] = {}
        self._calls: dict[str, deque[tuple[float, str, float]]] = {}
        self._inflight: dict[str, dict[str, int]] = {}  # gateway → "member/replica" → calls
        self._gateways: dict[str, float] = {}
        self._view: AppView | None = None
        self._alive: set[str] | None = None
        self._dead_since: dict[str, float] = {}
        self._was_running: dict[str, tuple[str, str | None]] = {}
        self._vanished: dict[str, tuple[str, float, str]] = {}
        # Replicas that left Serve's view while their cause is not known yet:
        # rid → (member, actor id, first missed at, last probe outcome before it left).
        self._vanish_pending: dict[str, tuple[str, str, float, str | None]] = {}
        self._vanish_next: dict[str, float] = {}
        self._view_at = 0.0
        self._handles: dict[str, Any] = {}
        self._stale: dict[str, asyncio.Task] = {}  # replicas being swapped to the champion's version
        self._last: StepResult | None = None
        self._published: tuple[Any, ...] | None = None
        self._step_ms: deque[float] = deque(maxlen=200)
        self._dirty = True
        self._published_before = False
        self._avoid_now: dict[str, tuple[str, ...]] = {}
        self._standby_now: dict[str, tuple[str, ...]] = {}
        self._weights_now: dict[str, float] = self._hedge.weights([m.name for m in self.cfg.members])
        self._audit.record("controller-started", self._model,
                           evidence={"pid": os.getpid(), "resumed_from_checkpoint": self._resumed,
                                     "open_incidents": [i.id for i in self._policy.incidents if i.status == "open"]},
                           action="resume" if self._resumed else "start", outcome="ok")
        self._ensure_running()

    # ---- configuration and persistence ---------------------------------------------------

    def _load_config(self) -> None:
        doc = json.loads(self._storage.read_text(controller_config_key(self._model)))
        self.cfg = RaymedicConfig.model_validate(doc["config"])
        self._versions: dict[str, str] = dict(doc["versions"])
        self._golden: dict[str, GoldenSet] = {}
        self._golden_other: dict[str, GoldenSet | None] = {}  # "member@version" → its golden set
        registry = ModelRegistry(self._storage)
        schema, reference = None, None
        val_acc: list[float] = []
        for member, version in self._versions.items():
            loaded = registry.load(self._model, member, version)
            files = loaded.files
            acc = (loaded.info.metadata.get("metrics") or {}).get("val_accuracy")
            if acc is not None:
                val_acc.append(float(acc))
            if GOLDEN in files:
                self._golden[member] = GoldenSet.from_dict(json.loads(files[GOLDEN]))
            if schema is None and PREPROCESS in files:
                schema = ModelSchema.from_dict(json.loads(files[PREPROCESS])["schema"])
            if reference is None and REFERENCE in files:  # members share one training split
                reference = Reference.from_dict(json.loads(files[REFERENCE]))
        # Versions trained before references existed still get data-quality checks, just no drift tests.
        self._monitor = DataMonitor(schema, reference, self.cfg.data) if schema is not None else None
        # The ensemble should do at least as well live as its best member did on held-out data.
        self._reference_accuracy = max(val_acc) if val_acc else None
        self._n_classes = len(schema.classes) if schema is not None else None
        self._handles = {}

    def _new_hedge(self, data: dict[str, Any] | None) -> HedgeWeights:
        wc = WeightingConfig.from_settings(self.cfg.controller)
        members = [m.name for m in self.cfg.members]
        if data:
            try:
                hw = HedgeWeights.from_dict(data, wc)
                if sorted(hw.weights(members)) == sorted(members):
                    return hw
            except Exception:
                log.exception("ignoring an unreadable weights checkpoint")
        return HedgeWeights(members, wc)

    def _load_state(self) -> dict[str, Any] | None:
        try:
            if self._storage.exists(controller_state_key(self._model)):
                return json.loads(self._storage.read_text(controller_state_key(self._model)))
        except Exception:
            log.exception("controller checkpoint unreadable; starting fresh")
        return None

    def _checkpoint(self) -> None:
        state = {"policy": self._policy.to_dict(), "weights": self._hedge.to_dict(), "epoch": self._epoch,
                 "data_alerts": self._data_alerts.to_dict(), "performance": self._perf.to_dict(),
                 "playbook": self._playbook.to_dict(),
                 "saved_at": time.time()}
        self._storage.write_text(controller_state_key(self._model), json.dumps(state))
        self._dirty = False

    # ---- the loop ------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not inside the actor's event loop yet: the next call starts it
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        # Restarts requested before a crash and never confirmed: finish them (idempotently).
        for act in self._policy.pending_actions():
            await self._execute(act)
        while True:
            t0 = time.monotonic()
            try:
                await self._tick()
            except Exception:
                log.exception("controller step failed; continuing")
            elapsed = time.monotonic() - t0
            await asyncio.sleep(max(0.0, self.cfg.controller.tick_s - elapsed))

    async def _check_data(self, now: float) -> None:
        """Data quality, drift and model performance; alerts are recorded, not acted on (yet)."""
        events = []
        if self._monitor is not None:
            batches, rows = self._monitor.window()
            report = await asyncio.to_thread(self._monitor.check_window, batches, rows, now,
                                             self._monitor.sequential_hits())
            if report is not None:
                self._data_report = report
                events += self._data_alerts.update(report)
        perf = await asyncio.to_thread(self._perf.check, now)
        self._perf_report = perf
        events += self._data_alerts.apply(perf.breaches, now, kinds=MODEL_KINDS | PREDICTION_KINDS)
        self._export_checks()
        self._record_alerts(events)
        if await self._heal_model(now) or events:
            await asyncio.to_thread(self._checkpoint)
            await asyncio.to_thread(self._audit.flush)

    def _record_alerts(self, events: list[tuple[str, Any]]) -> None:
        for what, alert in events:
            self._alert(f"data-{alert.kind}-{what}", alert.feature, alert.id, alert.evidence,
                        severity=alert.severity)
            if what == "opened":
                metrics.inc("raymedic_incidents_total", model=self._model, kind=alert.kind)
            self._audit.record(f"data-{alert.kind}", alert.feature, evidence=alert.evidence, action="warn",
                               outcome=what, incident=alert.id, severity=alert.severity,
                               detected_at=alert.detected_at, recovered_at=alert.recovered_at)

    async def _heal_model(self, now: float) -> bool:
        """The model-level playbook: retrain on material drift or decay, promote what passes the gate."""
        if self._policy.paused:
            return False
        triggers = [Trigger(a.id, a.kind, a.feature, a.severity, since=(a.evidence or {}).get("change_at"))
                    for a in self._data_alerts.open() if a.kind == "drift" or a.kind in MODEL_KINDS]
        sources = (self._perf_report.sources if self._perf_report else {})
        live = {m: (float(v["accuracy"]), int(v["labels"])) for m, v in sources.items()}
        # After a dated change, only the labels since then count towards a retrain worth running.
        since = max((t.since for t in triggers if t.since is not None), default=None)
        labels = self._perf.labels() if since is None else self._perf.labels_since(since)
        return await self._healer.step(now, triggers, labels, live)

    def _record_model(self, kind: str, target: str, *, evidence: Any, action: str, outcome: str,
                      incident: str | None = None, **extra: Any) -> None:
        """Audit (and alert on) a model-level action."""
        self._audit.record(kind, target, evidence=evidence, action=action, outcome=outcome, incident=incident,
                           **extra)
        metrics.inc("raymedic_healing_actions_total", model=self._model, action=kind,
                    outcome=metrics.outcome_label(outcome))
        self._alert(kind, target, incident, evidence, outcome=outcome)

    def _export_checks(self) -> None:
        """Gauges for dashboards: drift and quality per feature, accuracy per source, open incidents."""
        m = self._model
        if self._data_report is not None:
            for f in self._data_report.features:
                metrics.set_gauge("raymedic_feature_missing_rate", f.missing_rate, model=m, feature=f.name)
                if f.psi is not None:
                    metrics.set_gauge("raymedic_drift_psi", f.psi, model=m, feature=f.name)
                if f.js is not None:
                    metrics.set_gauge("raymedic_drift_js", f.js, model=m, feature=f.name)
                if f.p_adjusted is not None:
                    metrics.set_gauge("raymedic_drift_p_adjusted", f.p_adjusted, model=m, feature=f.name)
        if self._perf_report is not None:
            for source, v in self._perf_report.sources.items():
                metrics.set_gauge("raymedic_accuracy", v["accuracy"], model=m, source=source)
            if self._perf_report.estimate:
                metrics.set_gauge("raymedic_estimated_accuracy", self._perf_report.estimate["accuracy"], model=m)
            for output, check in ((self._perf_report.prediction or {}).get("outputs") or {}).items():
                metrics.set_gauge("raymedic_prediction_psi", check["psi"], model=m, output=output)
        open_now = sum(i.status == "open" for i in self._policy.incidents) + len(self._data_alerts.open())
        metrics.set_gauge("raymedic_open_incidents", open_now, model=m)

    async def _tick(self) -> None:
        now = time.time()
        if now - self._data_at >= self.cfg.data.check_period_s:
            self._data_at = now
            try:
                await self._check_data(now)
            except Exception:
                log.exception("data check failed; continuing")
        if now - self._view_at >= self.cfg.controller.view_period_s:
            try:
                self._view, self._alive = await asyncio.to_thread(self._read_state)
                await self._find_vanished(now)
            except Exception:
                log.exception("could not read Serve state")
            self._view_at = now
        if self._view is None:
            return
        self._schedule_probes(now)
        t0 = time.perf_counter()
        obs = self._observation(now)
        result = self._policy.step(obs)
        weights = self._weights(result)
        avoid, standby = result.avoid, result.standby
        if self._policy.paused:  # an operator holds the wheel: keep routing and weights as they are
            weights, avoid, standby = self._weights_now, {}, self._standby_now
        self._step_ms.append((time.perf_counter() - t0) * 1000)
        metrics.observe("raymedic_controller_step_seconds", time.perf_counter() - t0, model=self._model)
        self._last = result
        for ev in result.events:
            self._record_event(ev)
        published = (tuple(sorted((k, round(v, 4)) for k, v in weights.items())),
                     tuple(sorted(avoid.items())), self._policy.paused,
                     json.dumps(self._healer.trial_view(), sort_keys=True), tuple(sorted(standby.items())),
                     tuple(sorted(self._versions.items())))
        if published != self._published:
            self._published = published
            self._epoch += 1
            self._weights_now = weights
            self._avoid_now = avoid
            self._standby_now = standby
            for member, w in weights.items():
                metrics.set_gauge("raymedic_member_weight", w, model=self._model, member=member)
            self._dirty = True
            if self._published_before:
                self._audit.record("weights", self._model, evidence={"avoid": avoid},
                                   action="publish", outcome="ok", weights=weights, epoch=self._epoch)
            self._published_before = True
        if result.events or result.actions or self._dirty:
            await asyncio.to_thread(self._checkpoint)  # intent is durable before any action runs
        for act in result.actions:
            await self._execute(act)
        if result.actions:
            await asyncio.to_thread(self._checkpoint)
        await asyncio.to_thread(self._audit.flush)

    async def _find_vanished(self, now: float) -> None:
        """Replicas that were RUNNING and left Serve's view because their process (or node) died.

        The cause comes from the actor's death record; while the GCS has not settled it
        (a lost node is declared dead seconds after Serve gives up on its replicas), the
        replica is asked about again every few seconds for a while; one whose death is
        never recorded but whose last probe failed is a fault too.
        """
        assert self._view is not None
        running: dict[str, tuple[str, str | None]] = {}
        present = set()
        for m in self.cfg.members:
            dep = self._view.deployments.get(m.name)
            for r in (dep.replicas if dep else ()):
                present.add(r.id)
                if r.state == "RUNNING":
                    running[r.id] = (m.name, r.actor_id)
        for rid, (member, actor_id) in self._was_running.items():
            if rid not in present and actor_id and rid not in self._vanish_pending:
                last = self._probes.get(rid)
                self._vanish_pending[rid] = (member, actor_id, now, last[-1].outcome if last else None)
        # A replica stays tracked through STOPPING until it is gone: Serve stops one whose health
        # checks fail (or whose node is unreachable) before it leaves the view.
        self._was_running = {rid: v for rid, v in self._was_running.items() if rid in present} | running
        for rid, (member, actor_id, since, last_probe) in list(self._vanish_pending.items()):
            if rid in present or self._policy.open_incident(rid) or any(
                    i.replica == rid for i in self._policy.incidents):
                del self._vanish_pending[rid]  # back, or already handled (e.g. we restarted it ourselves)
                continue
            if now < self._vanish_next.get(rid, 0.0):
                continue
            self._vanish_next[rid] = now + VANISH_RECHECK_S
            cause = await asyncio.to_thread(vanish_cause, actor_id)
            failing = last_probe not in (None, "ok", "wrong")
            if cause.verdict == "crash":
                reason = cause.reason
            elif now - since < VANISH_SETTLE_S:
                continue  # ask again later: the GCS may not have declared its node dead yet
            elif failing and cause.verdict == "unknown":
                reason = f"gone from Serve after a failed probe ({last_probe}); {cause.reason}"
            else:
                del self._vanish_pending[rid]  # stopped on purpose (scale-down, redeploy, our restart)
                continue
            del self._vanish_pending[rid]
            self._vanished[rid] = (member, now, reason)
        for rid in [k for k in self._vanish_next if k not in self._vanish_pending]:
            del self._vanish_next[rid]

    @staticmethod
    def _read_state() -> tuple[AppView | None, set[str] | None]:
        view = read_app_view(APP_NAME)  # first: a RUNNING replica in it is then in the live set unless dead
        return view, alive_replica_actors()

    def _observation(self, now: float) -> Observation:
        assert self._view is not None
        window = self.cfg.controller.window_s
        snaps = []
        targets: dict[str, int] = {}
        for m in self.cfg.members:
            dep = self._view.deployments.get(m.name)
            if dep is None:
                continue
            # Serve's target counts the hot standbys too; the policy's target is what serves traffic.
            targets[m.name] = max(1, int(dep.target_replicas or m.replicas + m.standby) - m.standby)
            for r in dep.replicas:
                key = f"{m.name}/{r.id}"
                events = self._calls.get(key, ())
                recent = [e for e in events if now - e[0] <= window]
                alive = None
                if self._alive is not None and r.actor_name and r.state == "RUNNING":
                    alive = r.actor_name in self._alive
                    if not alive:
                        self._dead_since.setdefault(r.id, now)
                snaps.append(ReplicaSnapshot(
                    member=m.name, replica=r.id, state=r.state, alive=alive,
                    seen_dead_at=self._dead_since.get(r.id),
                    probes=tuple(self._probes.get(r.id, ())),
                    calls=CallStats(
                        ok=sum(1 for e in recent if e[1] == "ok"),
                        errors=sum(1 for e in recent if e[1] == "error"),
                        dead=sum(1 for e in recent if e[1] == "dead"),
                        timeouts=sum(1 for e in recent if e[1] in ("timeout", "hedged")),
                        latencies_s=tuple(e[2] for e in recent if e[1] == "ok"),
                        inflight=sum(g.get(key, 0) for g in self._inflight.values()),
                    )))
        for rid, (member, seen, reason) in list(self._vanished.items()):
            del self._vanished[rid]  # one observation is enough to open the incident
            snaps.append(ReplicaSnapshot(member=member, replica=rid, state="GONE", alive=False, seen_dead_at=seen,
                                         probes=tuple(self._probes.get(rid, ()))))
        return Observation(now=now, replicas=tuple(snaps), targets=targets,
                           standby={m.name: m.standby for m in self.cfg.members if m.standby})

    def _weights(self, result: StepResult) -> dict[str, float]:
        members = [m.name for m in self.cfg.members]
        probed = any(self._probes.values())
        healthy = [m for m in members if result.healthy.get(m)] if probed else members
        return self._hedge.weights(healthy)

    # ---- probes --------------------------------------------------------------------------

    def _handle(self, member: str):
        if member not in self._handles:
            from ray import serve

            self._handles[member] = serve.get_deployment_handle(member, app_name=APP_NAME)
        return self._handles[member]

    def _schedule_probes(self, now: float) -> None:
        assert self._view is not None
        live = set()
        for m in self.cfg.members:
            dep = self._view.deployments.get(m.name)
            if dep is None or m.name not in self._golden:
                continue
            for r in dep.replicas:
                live.add(r.id)
                if r.state != "RUNNING":
                    continue
                task = self._probe_task.get(r.id)
                if task is not None and not task.done():
                    continue
                last = self._probes.get(r.id)
                retry = bool(last) and last[-1].outcome == "timeout"  # confirm a possible hang at once
                if not retry and now - self._last_probe.get(r.id, 0.0) < self.cfg.controller.probe_interval_s:
                    continue
                inc = self._policy.open_incident(r.id)
                if inc is not None and inc.action is not None:
                    continue  # being replaced: no point probing it
                self._last_probe[r.id] = now
                self._probe_task[r.id] = asyncio.get_running_loop().create_task(self._probe(m.name, r.id))
        for rid in [k for k in self._dead_since if k not in live]:
            del self._dead_since[rid]
        for rid in [k for k in self._probes if k not in live]:  # forget replicas Serve dropped
            self._probes.pop(rid, None)
            self._last_probe.pop(rid, None)
            self._probe_task.pop(rid, None)

    def _running_replicas(self, member: str) -> list[str]:
        """Ids of the member's RUNNING replicas in the last Serve view."""
        dep = self._view.deployments.get(member) if self._view is not None else None
        return [r.id for r in (dep.replicas if dep else ()) if r.state == "RUNNING"]

    def _adopt_versions(self, versions: dict[str, str]) -> None:
        """New champions serve (a promotion or rollback swapped them in): remember them durably,
        probe against their golden outputs, start their data and performance windows afresh,
        and tell the gateways (the versions are part of the published state)."""
        doc = json.loads(self._storage.read_text(controller_config_key(self._model)))
        doc["versions"] = {**doc["versions"], **versions}
        self._storage.write_text(controller_config_key(self._model), json.dumps(doc))
        self._load_config()
        self._perf.reference_accuracy = self._reference_accuracy
        self._perf.reset(since=time.time())
        # The ensemble weights judged the old versions: a promoted one starts from its trial's record.
        for member, version in versions.items():
            tally = self._trial_losses.get(f"{member}@{version}")
            self._hedge.restart(member, tally[0] / tally[1] if tally and tally[1] else None)
        self._trial_losses = {}
        self._record_alerts(self._data_alerts.supersede(MODEL_KINDS | PREDICTION_KINDS | {"drift"}, time.time(),
                                                        f"new versions {versions}"))

    async def _golden_for(self, member: str, version: str | None) -> GoldenSet:
        """The golden set of the version a replica answered with (one mid-swap may still serve the
        previous champion: judge it against what that version should answer, not the new one's)."""
        if version is None or version == self._versions.get(member):
            return self._golden[member]
        key = f"{member}@{version}"
        if key not in self._golden_other:
            def load() -> GoldenSet | None:
                files = ModelRegistry(self._storage).load(self._model, member, version).files
                return GoldenSet.from_dict(json.loads(files[GOLDEN])) if GOLDEN in files else None

            try:
                self._golden_other[key] = await asyncio.to_thread(load)
            except Exception as exc:  # not a registered version: judged against the champion's
                log.warning("no golden set for %s %s: %r", member, version, exc)
                self._golden_other[key] = None
        return self._golden_other[key] or self._golden[member]

    def _swap_stale(self, member: str, replica: str, served: str) -> None:
        """A replica serves another version than the champion outside a promotion (e.g. it read
        the alias just before it moved): have it swap, as a promotion would have."""
        if replica in self._stale:
            return
        want = self._versions[member]

        async def swap() -> None:
            try:
                done = await self._healer.swap({member: want}, only=replica)
                self._audit.record("stale-version", f"{member}/{replica}", evidence={"served": served, "champion": want},
                                   action="swap", outcome=json.dumps(done.get(f"{member}/{replica}")))
            finally:
                self._stale.pop(replica, None)

        self._stale[replica] = asyncio.get_running_loop().create_task(swap())

    async def _probe(self, member: str, replica: str) -> None:
        sent = self._golden[member]
        timeout = self.cfg.controller.probe_timeout_s
        ts = time.time()
        t0 = time.monotonic()
        response = self._handle(member).predict.remote(sent.rows, target=replica)
        detail = ""
        try:
            out = await asyncio.wait_for(response, timeout)
            golden = await self._golden_for(member, out.get("version"))
            if golden.rows != sent.rows:  # the probe raced a version swap: its rows fit neither answer; ask again
                self._last_probe.pop(replica, None)
                return
            got = np.asarray(out["probabilities"], dtype=float)
            want = np.asarray(golden.probabilities, dtype=float)
            diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
            outcome = "ok" if diff <= self.cfg.controller.wrong_tolerance else "wrong"
            served = out.get("version")
            if served and served != self._versions.get(member) and not self._healer.deploying:
                self._swap_stale(member, replica, served)
            if outcome == "wrong":
                flipped = int((got.argmax(1) != want.argmax(1)).sum()) if got.shape == want.shape else len(want)
                detail = f"max |Δp| {diff:.3f} on {len(want)} golden rows, {flipped} predictions differ"
        except asyncio.TimeoutError:
            response.cancel()
            outcome, detail = "timeout", f"no answer within {timeout:.2f} s"
        except Exception as exc:
            outcome = "dead" if _dead_error(exc) else "error"
            detail = f"{type(exc).__name__}: {str(exc)[:160]}"
        probe = Probe(ts=ts, outcome=outcome, latency_s=time.monotonic() - t0, detail=detail)
        self._probes.setdefault(replica, deque(maxlen=PROBES_KEPT)).append(probe)

    # ---- actions -------------------------------------------------------------------------

    def _actor_name(self, member: str, replica: str) -> str:
        if self._view is not None and member in self._view.deployments:
            for r in self._view.deployments[member].replicas:
                if r.id == replica and r.actor_name:
                    return r.actor_name
        return replica_actor_name(APP_NAME, member, replica)

    async def _execute(self, act: RestartReplica) -> None:
        t0 = time.monotonic()
        name = self._actor_name(act.member, act.replica)

        def kill() -> str:
            import ray

            try:
                handle = ray.get_actor(name, namespace=SERVE_NAMESPACE)
            except ValueError:
                return "ok: already gone"
            ray.kill(handle, no_restart=True)
            return "ok"

        try:
            outcome = await asyncio.to_thread(kill)
        except Exception as exc:
            outcome = f"error: {type(exc).__name__}: {exc}"
        ev = self._policy.action_done(act.incident_id, outcome)
        if ev is not None:
            self._record_event(ev, duration_s=round(time.monotonic() - t0, 4), action_id=act.action_id)
        self._dirty = True

    ALERTED = ("proposed", "approved", "rejected", "recovered", "recovery-failed")

    def _alert(self, event: str, target: str, incident: str | None, evidence: Any, **extra: Any) -> None:
        """One webhook alert (if configured); never blocks or raises into the loop."""
        if self._webhook is None:
            return
        try:
            self._webhook.notify({"source": "raymedic", "model": self._model, "event": event, "target": target,
                                  "incident": incident, "evidence": evidence, "ts": time.time(), **extra})
        except Exception:
            log.exception("could not queue a webhook alert")

    def _record_event(self, ev: Any, **extra: Any) -> None:
        fields: dict[str, Any] = {"incident": ev.incident, **extra}
        if ev.kind.startswith("detected-") or ev.kind in self.ALERTED:
            self._alert(ev.kind, ev.target, ev.incident, ev.evidence, outcome=ev.outcome)
        if ev.action:
            metrics.inc("raymedic_healing_actions_total", model=self._model, action=ev.kind,
                        outcome=metrics.outcome_label(ev.outcome))
        if ev.incident:
            inc = next((i for i in self._policy.incidents if i.id == ev.incident), None)
            if inc is not None:
                if ev.kind.startswith("detected-"):
                    metrics.inc("raymedic_incidents_total", model=self._model, kind=inc.kind)
                    metrics.observe("raymedic_incident_detect_seconds", inc.time_to_detect_s, model=self._model,
                                    kind=inc.kind)
                elif ev.kind == "recovered" and inc.time_to_recover_s is not None:
                    metrics.observe("raymedic_incident_recover_seconds", inc.time_to_recover_s,
                                    model=self._model, kind=inc.kind)
                fields.update(detected_at=inc.detected_at, recovered_at=inc.recovered_at,
                              first_evidence_at=inc.first_evidence_at, fault=inc.kind)
        self._audit.record(ev.kind, ev.target, evidence=ev.evidence, action=ev.action, outcome=ev.outcome,
                           **fields)

    # ---- the actor's API ------------------------------------------------------------------

    async def sync(self, gateway: str, batch: dict[str, Any], epoch: int) -> dict[str, Any] | None:
        """A gateway's period: take its telemetry, answer with weights/avoid if they changed."""
        self._ensure_running()
        now = time.time()
        self._gateways[gateway] = now
        inflight = {}
        for key, s in (batch.get("replicas") or {}).items():
            events = self._calls.setdefault(key, deque(maxlen=2000))
            for outcome in ("error", "dead", "timeout", "hedged"):
                events.extend((now, outcome, 0.0) for _ in range(int(s.get(outcome, 0))))
            lat = s.get("latencies") or []
            events.extend((now, "ok", float(x)) for x in lat)
            events.extend((now, "ok", 0.0) for _ in range(max(0, int(s.get("ok", 0)) - len(lat))))
            if s.get("inflight"):
                inflight[key] = int(s["inflight"])
        self._inflight[gateway] = inflight
        if batch.get("data") and self._monitor is not None:
            self._monitor.add(batch["data"])
        trial = self._playbook.trial_members()
        for member, calls in (batch.get("challenger_calls") or {}).items():
            if member in trial:
                self._playbook.observe_rollout(member, calls_ok=int(calls.get("ok", 0)),
                                               calls_failed=int(calls.get("failed", 0)))
        if batch.get("labelled") and self._n_classes:
            labelled = self._trial_pairs(batch["labelled"], trial)
            if self._perf.add_labelled(labelled, now):
                self._dirty = True  # the error-stream test fired: its state goes into the next checkpoint
        if batch.get("confidence"):
            self._perf.add_confidence(batch["confidence"], batch.get("predicted"))
        losses = batch.get("losses") or {}
        if losses:
            self._hedge.update(self._serving_losses(losses))
            for member, version in trial.items():
                tally = self._trial_losses.setdefault(f"{member}@{version}", [0.0, 0])
                values = losses.get(challenger_source(member)) or ()
                tally[0] += float(sum(values))
                tally[1] += len(values)
        if epoch == self._epoch or self._published is None:
            return None
        return self.control_state()

    def _serving_losses(self, losses: dict[str, list[float]]) -> dict[str, list[float]]:
        """The losses of answers given by the versions serving now (``member@version`` keys from the
        gateways; a plain ``member`` key is taken as it is). Labels arrive late: those for answers of
        a version a promotion replaced would charge the new one for its predecessor's mistakes."""
        out: dict[str, list[float]] = {}
        for key, values in losses.items():
            member, _, version = key.partition("@")
            if not version or version == self._versions.get(member):
                out.setdefault(member, []).extend(values)
        return out

    def _trial_pairs(self, labelled: list[dict[str, Any]], trial: dict[str, str]) -> list[dict[str, Any]]:
        """Feed paired answers (champion and challenger on one labelled request) to the trial; return
        the pairs without the challengers' answers, which are not ensemble sources."""
        out = []
        for pair in labelled:
            p = pair.get("p") or {}
            y = int(pair["y"])
            for member in trial:
                chal = p.get(challenger_source(member))
                if chal is not None and p.get(member) is not None:
                    self._playbook.observe_rollout(member, champion_correct=int(np.argmax(p[member])) == y,
                                                   challenger_correct=int(np.argmax(chal)) == y)
            out.append({"y": y, "p": {k: v for k, v in p.items() if CHALLENGER_SUFFIX not in k}, "ts": pair.get("ts")})
        return out

    def control_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "weights": dict(self._weights_now),
                "avoid": {k: list(v) for k, v in self._avoid_now.items()}, "paused": self._policy.paused,
                "standby": {k: list(v) for k, v in self._standby_now.items()},
                "trial": self._healer.trial_view(), "versions": dict(self._versions)}

    async def status(self) -> dict[str, Any]:
        self._ensure_running()
        incidents = sorted([i.to_dict() for i in self._policy.incidents][-50:]
                           + [a.to_dict() for a in self._data_alerts.alerts][-50:], key=lambda d: d["detected_at"])
        actions = [r for r in self._audit.tail(200) if r.get("kind") in (
            "restart", "standby-serves", "quarantine", "unquarantine", "suppressed", "pause", "resume", "proposed", "approved",
            "rejected", "mode", "retrain-submitted", "retrain-submit-failed", "retrain-finished", "promote",
            "rollback", "trial-started", "trial-promote", "trial-reject", "trial-finished", "trial-abandoned",
            "trial-requested")][-50:]
        steps = sorted(self._step_ms)
        return {
            "state": "paused" if self._policy.paused else "running",
            "mode": "approve" if self._policy.approval else "auto",
            "retraining": self._healer.status(),
            "proposals": [{"incident": i.id, "target": f"{i.member}/{i.replica}", "fault": i.kind,
                           "action": "restart", "detected_at": i.detected_at} for i in self._policy.proposals()],
            "webhook": self._webhook.stats() if self._webhook else None,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "resumed_from_checkpoint": self._resumed,
            "epoch": self._epoch,
            "weights": dict(self._weights_now),
            "quarantined": self._policy.quarantined,
            "avoid": {k: list(v) for k, v in self._avoid_now.items()},
            "standby": {k: list(v) for k, v in self._standby_now.items()},
            "healthy": {k: list(v) for k, v in (self._last.healthy if self._last else {}).items()},
            "gateways": sorted(self._gateways),
            "step_ms_p50": round(steps[len(steps) // 2], 3) if steps else None,
            "incidents": incidents,
            "actions": actions,
            "data": {**(self._data_report.to_dict() if self._data_report else
                        {"window_rows": self._monitor.rows if self._monitor else 0,
                         "note": f"no verdict before {self.cfg.data.min_rows} rows"}),
                     "drift_tests": self._monitor is not None and self._monitor.reference is not None,
                     "alerts": [a.to_dict() for a in self._data_alerts.open()]},
            "performance": {**(self._perf_report.to_dict() if self._perf_report else {}),
                            "reference_accuracy": self._reference_accuracy},
        }

    async def set_paused(self, paused: bool, who: str = "operator") -> dict[str, Any]:
        self._ensure_running()
        if self._policy.paused != paused:
            self._policy.paused = paused
            self._audit.record("pause" if paused else "resume", self._model, evidence={"by": who},
                               action="pause" if paused else "resume", outcome="ok")
            await asyncio.to_thread(self._checkpoint)
            await asyncio.to_thread(self._audit.flush)
        return {"paused": self._policy.paused}

    async def decide(self, incident_id: str, approve: bool, who: str = "operator") -> dict[str, Any]:
        """Approve or reject a proposed restart (approval mode). Errors come back as {"error": ...}."""
        self._ensure_running()
        try:
            ev = self._policy.decide(incident_id, approve, who, time.time())
        except KeyError:
            pending = [i.id for i in self._policy.proposals()]
            return {"error": f"no incident {incident_id!r}; pending proposals: {pending}", "status": 404}
        except ValueError as exc:
            return {"error": f"{exc}; `raymedic status` lists the pending proposals", "status": 409}
        self._record_event(ev)
        await asyncio.to_thread(self._checkpoint)
        await asyncio.to_thread(self._audit.flush)
        return {"incident": incident_id, "approval": "approved" if approve else "rejected"}

    async def set_mode(self, mode: str, who: str = "operator") -> dict[str, Any]:
        """auto: heal on its own; approve: propose restarts and wait for an operator."""
        self._ensure_running()
        if mode not in ("auto", "approve"):
            return {"error": f"mode must be 'auto' or 'approve', got {mode!r}", "status": 422}
        if self._policy.approval != (mode == "approve"):
            self._policy.approval = mode == "approve"
            self._audit.record("mode", self._model, evidence={"by": who}, action=mode, outcome="ok")
            await asyncio.to_thread(self._checkpoint)
            await asyncio.to_thread(self._audit.flush)
        return {"mode": mode}

    async def request_retrain(self, reason: str = "", who: str = "operator") -> dict[str, Any]:
        """Retrain now (gated like an automatic one); answered at once, the job runs in the background."""
        self._ensure_running()
        out = self._healer.request(f"{reason} (by {who})" if reason else f"requested by {who}")
        if "error" not in out:
            self._data_at = 0.0  # the next step runs the playbook
        return out

    async def rollback(self, members: list[str] | None = None, who: str = "operator") -> dict[str, Any]:
        """Champion back to the previous version (all members, or ``members``), swapped in on every replica."""
        self._ensure_running()
        known = [m.name for m in self.cfg.members]
        bad = [m for m in members or () if m not in known]
        if bad:
            return {"error": f"unknown member(s) {bad}; members are {known}", "status": 404}
        trial = self._playbook.rollout
        if trial is not None:  # a challenger on trial: rolling back ends the trial, the champion stays
            if not self._healer.spawn(self._healer.rollback(members, f"operator: {who}")):
                return {"error": "a deployment is in progress; retry when `raymedic status` shows it done",
                        "status": 409}
            return {"rollback": "trial ended", "trial": trial["record"], "champion_kept": True,
                    "members": sorted(trial["versions"])}
        registry = ModelRegistry(self._storage)
        names = members or known
        missing = [m for m in names if "previous" not in registry.aliases(self._model, m)]
        if missing:
            return {"error": f"no previous version to roll back to for {missing}", "status": 409}
        if not self._healer.spawn(self._healer.rollback(names, f"operator: {who}")):
            return {"error": "a promotion or rollback is already being deployed; retry when `raymedic status` "
                             "shows it done", "status": 409}
        return {"rollback": "started", "members": names,
                "champion_now": {m: registry.aliases(self._model, m)["previous"] for m in names}}

    async def trial(self, member: str, version: str = "challenger", who: str = "operator",
                    mode: str | None = None) -> dict[str, Any]:
        """Put a registered version of a member on live trial (canary/shadow) next to its champion."""
        self._ensure_running()
        out = self._healer.request_trial(member, version, mode)
        if "error" not in out:
            self._audit.record("trial-requested", f"{self._model}/{member}", evidence={"by": who, "ref": version},
                               action="trial", outcome="ok")
        return out

    async def note(self, kind: str, target: str, evidence: dict[str, Any]) -> None:
        """Record something done to the service from outside (e.g. an injected fault)."""
        self._audit.record(kind, target, evidence=evidence, action="external", outcome="ok")
        await asyncio.to_thread(self._audit.flush)

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and versions (after ``raymedic up`` redeploys)."""
        self._load_config()
        self._perf.reference_accuracy = self._reference_accuracy
        self._healer.cfg = self.cfg
        self._playbook.cfg = self.cfg.retraining
        url = self.cfg.controller.webhook_url
        if (self._webhook.url if self._webhook else None) != url:
            self._webhook = WebhookNotifier(url) if url else None
        self._ensure_running()
        return {"model": self._model, "versions": self._versions}

    async def ping(self) -> dict[str, Any]:
        self._ensure_running()
        return {"pid": os.getpid(), "epoch": self._epoch, "model": self._model,
                "storage_path": self.cfg.storage_path,
                "running": self._task is not None and not self._task.done()}

    async def flush(self) -> int:
        return await asyncio.to_thread(self._audit.flush)
