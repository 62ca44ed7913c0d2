"""Model-level healing: retrain jobs, live trials, promotions and rollbacks, orchestrated.

The controller owns one :class:`ModelHealer`. Decisions come from
:class:`controllers.policies.playbook.Playbook`; the healer performs them through
three collaborators it is given, so it unit-tests with fakes and a fake clock:

- a retrain is a Ray job (:mod:`controllers.models.jobs`), polled until it ends,
  its outcome read from storage;
- a challenger that passed the gate goes on a live trial first (``rollout.mode``
  canary/shadow): each is deployed as its own small Serve application
  (:mod:`controllers.models.canaries`), the gateways call it on a share of
  requests, and the playbook's verdict promotes or drops it; an operator can put
  any registered version on trial (``raymedic trial``);
- a promotion moves the ``champion`` alias of the members that passed and has
  every running replica of those members swap to the new version in place
  (:mod:`controllers.models.swap`); a rollback moves ``champion`` back to
  ``previous`` and swaps the same way;
- a promoted version (after a trial too) is on probation against the champion it
  replaced (its live calls' baseline is taken just before the swap); one that
  regresses on any live signal is rolled back to the member's best recent healthy
  version (:func:`controllers.policies.probation.best_healthy_version` over the
  registry's versions and alias history), recorded there as ``probation-failed``;
- in approval mode each of these automatic actions (retrain, search, promote,
  rollback) is proposed first and runs once an operator approves it.

Blocking calls run in worker threads and a promotion or rollback runs as a
background task, so the controller's loop keeps healing replicas meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, Callable, Coroutine, Protocol, Sequence

from controllers.models.canaries import Canaries
from controllers.models.jobs import PROJECT_ROOT, Jobs
from controllers.models.swap import Swapper
from controllers.policies.playbook import (PROPOSAL_PREFIX, ModelAction, Playbook, Promote, Proposal, Rollback,
                                           RolloutDone, SubmitRetrain, Trigger)
from controllers.policies.probation import CallSample, best_healthy_version, version_records
from raymedic.config import RaymedicConfig
from raymedic.failpoints import Point, failpoint
from raymedic.logs import get_logger
from train_jobs.registry import AliasMove, LoadedVersion, VersionInfo

__all__ = ["ModelHealer", "Registry", "PROJECT_ROOT"]

log = get_logger(__name__)

Record = Callable[..., None]
"""``record(kind, target, evidence=..., action=..., outcome=..., incident=..., **extra)`` → audit (+ alert)."""

TRIAL_MODES = ("canary", "shadow")


class Registry(Protocol):
    """The registry calls the healer makes (:class:`train_jobs.registry.ModelRegistry`)."""

    def info(self, model: str, member: str, ref: str = "champion") -> VersionInfo:
        """A version's metadata (raises when there is no such version)."""
        ...

    def resolve(self, model: str, member: str, ref: str = "champion") -> str:
        """The version id a ref (alias or id) names."""
        ...

    def promote(self, model: str, member: str, version: str) -> dict[str, str]:
        """Make ``version`` the champion (the old one becomes ``previous``)."""
        ...

    def rollback(self, model: str, member: str) -> dict[str, str]:
        """Swap ``champion`` and ``previous``; the aliases after."""
        ...

    def aliases(self, model: str, member: str) -> dict[str, str]:
        """``{alias: version}``."""
        ...

    def versions(self, model: str, member: str) -> list[VersionInfo]:
        """Every complete version, oldest first."""
        ...

    def alias_history(self, model: str, member: str) -> list[AliasMove]:
        """Every alias move, oldest first."""
        ...

    def demote(self, model: str, member: str, to_version: str) -> dict[str, str]:
        """Champion back to ``to_version`` because the champion failed (recorded as ``probation-failed``)."""
        ...

    def load(self, model: str, member: str, ref: str = "champion") -> LoadedVersion:
        """A version's files (for golden sets)."""
        ...


class ModelHealer:
    """Advances the playbook one step at a time and carries out what it decides.

    Invariant: at most one promotion, rollback or trial start runs at a time (``_bg``);
    while it runs, :meth:`step` does nothing, and operator requests that would start
    another are refused (409).

    Args:
        cfg: The configuration (replaced on reload: assign ``healer.cfg``).
        playbook: The pure playbook; its state is checkpointed by the controller.
        record: Audits (and alerts on) a model-level action.
        on_new_versions: Called once new versions serve (golden sets, windows, gateways).
        jobs: Submits and polls retrain jobs.
        canaries: Deploys and removes the challengers' applications.
        swapper: Swaps versions in place on running replicas.
        registry: The model registry.
        clock: Wall-clock time (trial record ids and the playbook's times).
        save_intent: Flushes the audit and writes the controller's checkpoint (blocking).
        recorded: Whether the audit holds a record of a kind for a record id (a replayed action's outcome is
            recorded once).
        approval: Whether approval mode is on (the replica policy's mode: one switch for every action).
        baseline: The members' serving champions' recent calls (``members → {member: CallSample}``), taken
            just before a promotion swaps them out: the probation's baseline.
    """

    def __init__(self, cfg: RaymedicConfig, playbook: Playbook, record: Record, *,
                 on_new_versions: Callable[[dict[str, str]], None], jobs: Jobs, canaries: Canaries,
                 swapper: Swapper, registry: Registry, clock: Callable[[], float] = time.time,
                 save_intent: Callable[[], None] | None = None,
                 recorded: Callable[[str, str], bool] = lambda kind, record: False,
                 approval: Callable[[], bool] = lambda: False,
                 baseline: Callable[[Sequence[str]], dict[str, CallSample]] = lambda members: {}) -> None:
        self.cfg, self.playbook, self._record = cfg, playbook, record
        # Blocking: the audit flushed and the controller's checkpoint written, before and after an action
        # (a submit, a promotion), so a kill in between neither loses its record nor repeats it.
        self._save_intent = save_intent
        self._recorded = recorded  # whether the audit holds a record (kind, record id): a replay records once
        self._on_new_versions = on_new_versions
        self.jobs, self.canaries, self.swapper, self.registry = jobs, canaries, swapper, registry
        self._clock = clock
        self._approval = approval
        self._baseline = baseline
        self._label_rate: float | None = None
        self._manual: str | None = None
        self._bg: asyncio.Task | None = None  # a promotion, rollback or trial start in progress
        self._changed = False
        self._trial_ready = False  # set once this controller has (re)deployed the trial's challengers
        self._started = False

    # ---- one step ------------------------------------------------------------------

    def request(self, reason: str) -> dict[str, Any]:
        """An operator asks for a retrain now (runs on the next step if no job is running)."""
        if self.playbook.job is not None:
            return {"error": f"retrain {self.playbook.job['record']} is still running; one at a time",
                    "status": 409}
        if self.playbook.rollout is not None:
            return {"error": f"trial {self.playbook.rollout['record']} is running; wait for its verdict or end it "
                             "with `raymedic rollback`", "status": 409}
        self._manual = reason or "requested"
        return {"retrain": "requested", "reason": self._manual}

    async def step(self, now: float, triggers: Sequence[Trigger], labels: int,
                   live: dict[str, tuple[float, int]], *, label_rate: float | None = None) -> bool:
        """Advance the playbook; True if anything changed (checkpoint it). Never blocks on a promotion
        or rollback: that runs as a background task so replica healing goes on meanwhile.

        ``label_rate``: labels per second on the whole traffic (a trial's length follows it)."""
        pb = self.playbook
        if label_rate is not None:
            self._label_rate = label_rate
        if self.deploying:
            return False
        if not self._started:
            self._started = True
            await asyncio.to_thread(self.canaries.adopt, job_running=pb.job is not None,
                                    trial_running=pb.rollout is not None)
        if self._changed:
            self._changed = False
            return True
        pending = pb.promoting
        if pending is not None:  # decided before a controller restart (or its intent could not be written)
            self.spawn(self.promote(now, pending[0], probation=pending[1]))
            return False
        job = pb.job
        if job is not None and job.get("job_id"):
            return await self._follow_job(now, job)
        if job is not None:  # an intent checkpointed before a crash, maybe submitted: submit is idempotent
            return await self._submit(now, SubmitRetrain(job["record"], job.get("reason", ""),
                                                         tuple(job.get("alerts") or ()), bool(job.get("search")),
                                                         job.get("since")), labels)
        if pb.rollout is not None:
            return self._judge_trial(now)
        approved = pb.approved(approval=self._approval())
        if approved is not None:
            return await self._run_approved(now, approved, labels)
        manual, self._manual = self._manual, None
        sub = pb.step(now, triggers, labels, manual=manual, approval=self._approval())
        if isinstance(sub, Proposal):
            self._proposed(sub)
            return True
        if sub is None:
            if pb.proposal is not None:
                return False
            rb = pb.check_probation(live, self.cfg.performance.accuracy_drop, self.cfg.retraining.probation)
            if rb is not None:
                if self._approval():
                    self._proposed(pb.propose(ModelAction.ROLLBACK, f"{self.cfg.model}/{','.join(rb.members)}",
                                              rb.reason, {"members": list(rb.members), "reason": rb.reason,
                                                          "versions": rb.versions, "evidence": rb.evidence,
                                                          "record": rb.record}, now))
                else:
                    self.spawn(self.rollback_probation(rb))
                return True
            return False
        return await self._submit(now, sub, labels)

    # ---- approval mode -----------------------------------------------------------------

    def _proposed(self, p: Proposal) -> None:
        """Audit (and alert on) a proposal: what would run, why, and how to answer it."""
        self._record("proposed", p.target if "/" in p.target else self.cfg.model, evidence={
            "proposal": p.id, "reason": p.reason, **{k: v for k, v in p.payload.items() if k != "reason"}},
            action=str(p.action), outcome="awaiting approval", incident=p.id)

    async def _run_approved(self, now: float, p: Proposal, labels: int) -> bool:
        """Carry out an approved proposal (or a pending one once approval mode was switched off)."""
        d = p.payload
        if p.action in (ModelAction.RETRAIN, ModelAction.SEARCH):
            sub = self.playbook.start_job(now, d.get("reason", p.reason), d.get("alerts") or (),
                                          search=bool(d.get("search")), since=d.get("since"))
            return await self._submit(now, sub, labels)
        if p.action == ModelAction.PROMOTE:
            promote = Promote(**{k: v for k, v in d["promote"].items() if k in Promote.__dataclass_fields__})
            self.playbook.intend_promotion(promote, probation=bool(d.get("probation", True)))
            self.spawn(self.promote(now, promote, probation=bool(d.get("probation", True))))
            return True
        rb = Rollback(tuple(d.get("members") or ()), str(d.get("reason", p.reason)), dict(d.get("versions") or {}),
                      dict(d.get("evidence") or {}), str(d.get("record", "")))
        self.spawn(self.rollback_probation(rb))
        return True

    def owns(self, proposal_id: str) -> bool:
        """Whether ``proposal_id`` names one of this healer's proposals (``model-NNNNNN``)."""
        return proposal_id.startswith(PROPOSAL_PREFIX)

    def decide(self, proposal_id: str, approve: bool, who: str = "operator") -> dict[str, Any]:
        """An operator's answer to a proposed model action (``{"error", "status"}`` when there is none)."""
        try:
            p = self.playbook.decide(proposal_id, approve, self._clock())
        except KeyError:
            pending = self.playbook.proposal
            return {"error": f"no model proposal {proposal_id!r}; pending: {[pending.id] if pending else []}",
                    "status": 404}
        except ValueError as exc:
            return {"error": f"{exc}; `raymedic status` lists the pending proposals", "status": 409}
        verdict = "approved" if approve else "rejected"
        self._record(verdict, p.target if "/" in p.target else self.cfg.model,
                     evidence={"proposal": p.id, "by": who, "reason": p.reason}, action=str(p.action),
                     outcome=verdict, incident=p.id)
        self._changed = True
        return {"incident": proposal_id, "approval": verdict, "action": str(p.action)}

    def proposals(self) -> list[dict[str, Any]]:
        """The pending model proposal, in the status's ``proposals`` form."""
        p = self.playbook.proposal
        if p is None or str(p.approval) != "pending":
            return []
        return [{"incident": p.id, "target": p.target, "fault": p.reason[:200], "action": str(p.action),
                 "detected_at": p.proposed_at}]

    async def _submit(self, now: float, sub: SubmitRetrain, labels: int) -> bool:
        """Checkpoint the job's intent, then submit it under its record's id. A controller killed between
        the two finds the intent on restart and submits again: the id is the record's, so a job that did
        go out is adopted, never started twice."""
        pb = self.playbook
        try:
            if self._save_intent is not None:
                await asyncio.to_thread(self._save_intent)
        except Exception as exc:  # the intent is not durable: do not submit (the next step tries again)
            log.warning("could not checkpoint the retrain intent %s (%r); submitting it later", sub.record, exc)
            return False
        try:
            job_id = await asyncio.to_thread(self.jobs.submit, sub)
            failpoint(Point.AFTER_SUBMIT)  # kill tests: the job went out, its id is not checkpointed
        except Exception as exc:
            pb.finished(now, "SUBMIT_FAILED", {"status": "failed", "error": f"submit failed: {exc!r}"})
            self._record("retrain-submit-failed", self.cfg.model, evidence={"error": repr(exc)[:500]},
                         action="retrain", outcome="failed", incident=sub.record)
            return True
        pb.submitted(job_id)
        if self.cfg.rollout.mode != "off":
            self.canaries.warm_in_background(self._champions)
        if not self._recorded("retrain-submitted", sub.record):  # a replayed submit adopted the job: once
            self._record("retrain-submitted", self.cfg.model, evidence={
                "job_id": job_id, "reason": sub.reason, "alerts": list(sub.alerts), "labels": labels},
                action="retrain", outcome="submitted", incident=sub.record)
        await self._durable(f"the submission of retrain {sub.record}")
        return True

    async def _durable(self, what: str) -> bool:
        """Flush the audit and write the checkpoint now; False (logged) if that failed."""
        if self._save_intent is None:
            return True
        try:
            await asyncio.to_thread(self._save_intent)
            return True
        except Exception as exc:
            log.warning("could not make %s durable (%r); the next step's checkpoint tries again", what, exc)
            return False

    def _champions(self) -> dict[str, str]:
        """Every member's champion version (blocking: registry reads)."""
        return {m.name: self.registry.resolve(self.cfg.model, m.name, "champion") for m in self.cfg.members}

    async def _follow_job(self, now: float, job: dict[str, Any]) -> bool:
        """Poll the running job; once it ended, gate its outcome into a trial or a promotion."""
        pb = self.playbook
        try:
            status = await asyncio.to_thread(self.jobs.poll, job["job_id"])
        except Exception as exc:  # the dashboard may be restarting: try again next step
            log.warning("could not poll retrain job %s: %r", job["job_id"], exc)
            return False
        if status is None and pb.timed_out(now):
            await asyncio.to_thread(self.jobs.stop, job["job_id"])
            status = "TIMEOUT"
        if status is None:
            return False
        outcome = await asyncio.to_thread(self.jobs.outcome, job["record"])
        promote = pb.finished(now, status, outcome)
        last = pb.history[-1]
        self._record("retrain-finished", self.cfg.model, evidence={
            "job_id": job["job_id"], "job_status": status, "result": last.get("result"),
            "gate": last.get("gate"), "error": last.get("error"), "retry_after_s": last.get("retry_after_s")},
            action="gate", outcome=last.get("result", "?"), incident=job["record"])
        await self.canaries.warmed()
        if promote is None or self.cfg.rollout.mode == "off":
            await asyncio.to_thread(self.canaries.cool, ())
        if promote is not None:
            if self.cfg.rollout.mode == "off" and self._approval():
                self._proposed(pb.propose(ModelAction.PROMOTE, self.cfg.model, f"gate passed: {promote.versions}",
                                          {"promote": asdict(promote), "probation": True}, now))
            elif self.cfg.rollout.mode == "off":
                pb.intend_promotion(promote, probation=True)  # checkpointed with this step's
                self.spawn(self.promote(now, promote))
            else:
                self.spawn(self.start_trial(now, promote, source="retrain"))
        return True

    # ---- live trial ------------------------------------------------------------------

    def trial_view(self) -> dict[str, Any] | None:
        """What the gateways need: which members' challengers to call, on what share, in which mode."""
        r = self.playbook.rollout
        members = self.playbook.trial_members()
        if r is None or not members or not self._trial_ready:
            return None
        return {"record": r["record"], "mode": r["mode"], "share": r["share"], "members": members}

    async def start_trial(self, now: float, promote: Promote, *, source: str, mode: str | None = None) -> None:
        """Deploy each challenger on its own replica, then open the trial (gateways join on their next sync)."""
        t0 = time.monotonic()
        mode = mode or self.cfg.rollout.mode
        self.playbook.start_rollout(now, promote, mode=mode, share=self.cfg.rollout.share, source=source)
        self._trial_ready = False
        self._changed = True
        how: dict[str, str] = {}
        try:
            await asyncio.to_thread(self.canaries.cool, list(promote.versions))
            for member, version in promote.versions.items():
                how[member] = await self.canaries.start(member, version)
        except Exception as exc:
            self.canaries.forget_warm()
            self.playbook.abandon_rollout(f"could not deploy the challenger: {exc!r}"[:300])
            await asyncio.to_thread(self.canaries.delete, list(promote.versions))
            self._record("trial-started", self.cfg.model, evidence={"versions": promote.versions,
                                                                     "error": repr(exc)[:500]},
                         action="trial", outcome=f"failed: {exc}", incident=promote.record)
            return
        self._trial_ready = True
        self.canaries.forget_warm()
        self._record("trial-started", self.cfg.model, evidence={
            "versions": promote.versions, "challengers": how, "mode": mode, "share": self.cfg.rollout.share,
            "source": source, "holdout_accuracy": promote.holdout_accuracy},
            action="trial", outcome="ok", incident=promote.record, duration_s=round(time.monotonic() - t0, 3))

    def _judge_trial(self, now: float) -> bool:
        r = self.playbook.rollout
        if r is None:
            return False
        if not self._trial_ready:  # deployed by a controller before a restart: deploy again (idempotent)
            self.spawn(self._redeploy_trial(dict(r["versions"])))
            return False
        new, done = self.playbook.check_rollout(now, self.cfg.rollout, label_rate=self._label_rate,
                                                calls_cfg=self.cfg.retraining.probation)
        for m, (verdict, why) in new.items():
            self._record(f"trial-{verdict}", f"{self.cfg.model}/{m}", evidence={
                "reason": why, "live": (self.playbook.rollout or {}).get("tally", {}).get(m)},
                action="trial", outcome=verdict, incident=(self.playbook.rollout or {}).get("record"))
        if done is not None:
            promote_now = done.promote is not None and not self._approval()
            if done.promote is not None and not promote_now:
                self._proposed(self.playbook.propose(
                    ModelAction.PROMOTE, self.cfg.model, f"trial {done.record} passed: {done.promote.versions}",
                    {"promote": asdict(done.promote), "probation": True}, now))
            if promote_now:  # the trial is over in the playbook: its promotion must not be lost
                self.playbook.intend_promotion(done.promote, probation=True)
            self.spawn(self._finish_trial(now, done, promote_now=promote_now))
        return bool(new) or done is not None

    async def _redeploy_trial(self, versions: dict[str, str]) -> None:
        try:
            for member, version in versions.items():
                await asyncio.to_thread(self.canaries.deploy, member, version)
            self._trial_ready = True
        except Exception as exc:
            r = self.playbook.abandon_rollout(f"could not redeploy the challenger: {exc!r}"[:300])
            self._changed = True
            self._record("trial-abandoned", self.cfg.model, evidence={"error": repr(exc)[:500]},
                         action="trial", outcome="failed", incident=(r or {}).get("record"))

    async def _finish_trial(self, now: float, done: RolloutDone, *, promote_now: bool = True) -> None:
        members = sorted(set(done.rejected) | set(done.promote.versions if done.promote else ()))
        if not self._recorded("trial-finished", done.record):  # a trial judged again after a restart: once
            self._record("trial-finished", self.cfg.model, evidence={
                "promote": done.promote.versions if done.promote else {}, "rejected": done.rejected},
                action="trial", outcome="promote" if done.promote else "rejected", incident=done.record)
        if done.promote is not None and promote_now:  # on probation too: the trial saw a small share only
            await self.promote(now, done.promote, probation=True)
        await asyncio.to_thread(self.canaries.delete, members)
        self._changed = True

    def request_trial(self, member: str, ref: str, mode: str | None = None) -> dict[str, Any]:
        """An operator puts a registered version (default: the ``challenger`` alias) on live trial
        (``mode``: canary or shadow; default the config's)."""
        if mode is not None and mode not in TRIAL_MODES:
            return {"error": f"mode must be 'canary' or 'shadow', got {mode!r}", "status": 400}
        if member not in {m.name for m in self.cfg.members}:
            return {"error": f"no member {member!r}; members: {[m.name for m in self.cfg.members]}",
                    "status": 404}
        # What is wrong with the request itself comes first (404/400): waiting would not fix it.
        try:
            info = self.registry.info(self.cfg.model, member, ref)
            champion = self.registry.info(self.cfg.model, member, "champion")
        except Exception as exc:
            return {"error": f"{exc}", "status": 404}
        pb = self.playbook
        busy = ("a retrain job is running" if pb.job else "a trial is running" if pb.rollout else
                "a promotion or rollback is being deployed" if self.deploying else None)
        if busy:
            return {"error": f"{busy}; try again when it has finished (see `raymedic status`)", "status": 409}
        mode = mode or self.cfg.rollout.mode
        if mode == "off":
            return {"error": "rollout.mode is off in the config: set it to canary or shadow, or ask for a "
                             "mode (--mode shadow)", "status": 409}
        if info.version == champion.version:
            return {"error": f"{ref!r} is the champion of {member!r} already ({info.version})", "status": 409}
        if info.metadata.get("schema") != champion.metadata.get("schema"):
            return {"error": f"version {info.version} of {member!r} was trained on another schema than the "
                             "champion; retrain it on the served table", "status": 409}
        record = f"t{int(self._clock())}-{member}"
        acc = float((info.metadata.get("metrics") or {}).get("val_accuracy")
                    or (info.metadata.get("metrics") or {}).get("accuracy") or 0.0)
        self.spawn(self.start_trial(self._clock(), Promote(record, {member: info.version}, {member: acc}),
                                    source="operator", mode=mode))
        return {"trial": record, "member": member, "version": info.version, "mode": mode,
                "share": self.cfg.rollout.share}

    def request_promote(self, member: str, ref: str, *, reason: str = "", who: str = "operator") -> dict[str, Any]:
        """An operator makes a registered version (an id or an alias) the champion of ``member``: the same
        promotion as the controller's own (intent checkpointed, registry moved, every replica swapped in
        place, audited ``promote`` with who, why and the version replaced), with no probation — the
        operator chose it — and the member released from any probation running."""
        members = [m.name for m in self.cfg.members]
        if member not in members:
            return {"error": f"no member {member!r}; members: {members}", "status": 404}
        # What is wrong with the request itself comes first (404/409): waiting would not fix it.
        try:
            info = self.registry.info(self.cfg.model, member, ref)
            champion = self.registry.info(self.cfg.model, member, "champion")
        except Exception as exc:  # the registry's message names the aliases and versions there are
            return {"error": f"{exc}", "status": 404}
        if info.version == champion.version:
            return {"error": f"{ref!r} is the champion of {member!r} already ({info.version}): nothing to promote",
                    "status": 409}
        if info.metadata.get("schema") != champion.metadata.get("schema"):
            return {"error": f"version {info.version} of {member!r} was trained on another schema than the "
                             "champion and cannot serve this model's requests; retrain it on the served table",
                    "status": 409}
        pb = self.playbook
        if pb.rollout is not None:
            return {"error": f"trial {pb.rollout['record']} is running: wait for its verdict or end it with "
                             "`raymedic rollback`, then promote", "status": 409}
        record = f"op{int(self._clock() * 1000)}-{member}"
        metrics = info.metadata.get("metrics") or {}
        acc = float(metrics.get("val_accuracy") or metrics.get("accuracy") or 0.0)
        promote = Promote(record, {member: info.version}, {member: acc}, by=who, reason=reason,
                          previous={member: champion.version})
        if pb.promoting is not None or not self.spawn(self.promote(self._clock(), promote, probation=False)):
            return {"error": "a promotion or rollback is already being deployed; retry when `raymedic status` "
                             "shows it done", "status": 409}
        return {"promote": "started", "record": record, "member": member, "version": info.version,
                "previous": champion.version}

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> bool:
        """Run a promotion/rollback in the background; False if one is already running."""
        if self.deploying:
            coro.close()
            return False
        self._bg = asyncio.get_running_loop().create_task(coro)
        return True

    @property
    def deploying(self) -> bool:
        """Whether a promotion, rollback or trial start is being carried out now."""
        return self._bg is not None and not self._bg.done()

    async def settled(self) -> None:
        """Wait for the background deployment in progress, if any (tests, and an orderly shutdown)."""
        while self._bg is not None and not self._bg.done():
            await asyncio.gather(self._bg, return_exceptions=True)

    # ---- promotion and rollback ------------------------------------------------------

    async def swap(self, versions: dict[str, str], *, only: str | None = None) -> dict[str, Any]:
        """Every RUNNING replica of each member in ``versions`` loads its version in place (see
        :class:`controllers.models.swap.VersionSwapper`); what each did, for the audit."""
        return await self.swapper.swap(versions, only=only)

    async def promote(self, now: float, promote: Promote, *, probation: bool = True) -> None:
        """Move the champions, swap them in, and (after a retrain without a live trial) start probation.

        Exactly once across a controller kill: the intent (:meth:`Playbook.intend_promotion`) and the records
        before it are durable before the registry moves; a restarted controller that finds the intent does
        it all again — the registry's promote is idempotent, a swap to the serving version is a no-op — and
        records ``promote`` only if the audit does not hold it yet."""
        t0 = time.monotonic()
        pb = self.playbook
        if pb.promoting is None:
            pb.intend_promotion(promote, probation=probation)
        if not await self._durable(f"the promotion intent {promote.record}"):
            return  # the registry is untouched; the next step finds the intent and tries again
        # An operator's promotion (`raymedic promote`, one member) says who asked, why and what it replaced.
        target = f"{self.cfg.model}/{next(iter(promote.versions))}" if promote.by else self.cfg.model
        asked = {"by": promote.by, "reason": promote.reason, "previous": promote.previous} if promote.by else {}
        baseline = self._baseline(list(promote.versions)) if probation else {}  # the champions' calls, pre-swap
        try:
            for member, version in promote.versions.items():
                await asyncio.to_thread(self.registry.promote, self.cfg.model, member, version)
            failpoint(Point.MID_PROMOTION)  # kill tests: champions moved, not swapped in nor audited
            self._on_new_versions(dict(promote.versions))
            replicas = await self.swap(dict(promote.versions))
        except Exception as exc:
            pb.promotion_done()
            self._changed = True
            self._record("promote", target, evidence={"versions": promote.versions, **asked,
                                                      "error": repr(exc)[:500]},
                         action="promote", outcome=f"failed: {exc}", incident=promote.record)
            return
        if probation:
            pb.promoted(now, promote, baseline)
        elif promote.by:  # the operator chose these versions: a probation must not roll them back
            pb.release(list(promote.versions))
        pb.promotion_done()
        self._changed = True
        if not self._recorded("promote", promote.record):
            self._record("promote", target, evidence={"versions": promote.versions, **asked, "replicas": replicas,
                                                      "holdout_accuracy": promote.holdout_accuracy,
                                                      "probation": probation,
                                                      "baseline": {m: b.summary() for m, b in baseline.items()}},
                         action="promote", outcome="ok", incident=promote.record,
                         duration_s=round(time.monotonic() - t0, 3))
        await self._durable(f"the promotion {promote.record}")

    async def rollback(self, members: Sequence[str] | None, reason: str) -> dict[str, Any]:
        """Champion back to ``previous`` (all members, or ``members``) and swapped in; during a trial,
        rolling back ends the trial instead (the champion never changed)."""
        r = self.playbook.rollout
        if r is not None:
            self.playbook.abandon_rollout(f"rollback: {reason}")
            self._changed = True
            await asyncio.to_thread(self.canaries.delete, list(r["versions"]))
            self._record("trial-abandoned", self.cfg.model, evidence={"reason": reason, "versions": r["versions"]},
                         action="rollback", outcome="ok", incident=r["record"])
            return {"abandoned_trial": r["record"], "champion_kept": True, "errors": {}}
        names = list(members) if members else [m.name for m in self.cfg.members]
        moved: dict[str, str] = {}
        errors: dict[str, str] = {}
        for m in names:
            try:
                aliases = await asyncio.to_thread(self.registry.rollback, self.cfg.model, m)
                moved[m] = aliases.get("champion", "?")
            except Exception as exc:
                errors[m] = str(exc)
        replicas = await self._swap_in(moved, errors)
        if moved:
            self.playbook.rolled_back()
            self._changed = True
        self._record("rollback", self.cfg.model, evidence={"reason": reason, "champion_now": moved,
                                                             "replicas": replicas, "errors": errors},
                     action="rollback", outcome="ok" if moved and not errors else f"errors: {errors}")
        return {"rolled_back": moved, "errors": errors}

    async def _swap_in(self, moved: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
        """The versions the registry now names serve (adopted, swapped in on every replica); what each
        replica did. A failure lands in ``errors["swap"]`` (Serve's replacements load the champion anyway)."""
        if not moved:
            return {}
        try:
            self._on_new_versions(dict(moved))
            return await self.swap(dict(moved))
        except Exception as exc:
            errors["swap"] = str(exc)
            return {}

    def _rollback_target(self, member: str, failing: str) -> tuple[str | None, str]:
        """Where ``member``'s failing version goes back to, and why (blocking: registry reads)."""
        versions = self.registry.versions(self.cfg.model, member)
        moves = self.registry.alias_history(self.cfg.model, member)
        schema = next((v.metadata.get("schema") for v in versions if v.version == failing), None)
        records = version_records([{"version": v.version, "created_at": v.created_at, "metadata": v.metadata}
                                   for v in versions],
                                  [m if isinstance(m, dict) else asdict(m) for m in moves])
        best, why = best_healthy_version(records, failing=failing, history=self.cfg.retraining.probation.history,
                                         schema=schema)
        return (best.version if best is not None else None), why

    async def rollback_probation(self, rb: Rollback) -> dict[str, Any]:
        """A probation failed: each member back to its best recent healthy version (not blindly ``previous``),
        recorded in the registry as ``probation-failed`` so no later rollback picks the failed version, swapped
        in on every replica, and audited with the evidence (which signal, values, thresholds) and the choice.

        A member whose failing version is no longer its champion (an operator moved it meanwhile) is left
        alone; one with no healthy version to go to keeps serving and the record says so."""
        t0 = time.monotonic()
        moved: dict[str, str] = {}
        chosen: dict[str, str] = {}
        errors: dict[str, str] = {}
        for m in rb.members:
            failing = rb.versions.get(m)
            try:
                champion = await asyncio.to_thread(self.registry.resolve, self.cfg.model, m, "champion")
                if failing is not None and champion != failing:
                    chosen[m] = f"{failing} no longer serves (champion {champion}): nothing to roll back"
                    continue
                target, why = await asyncio.to_thread(self._rollback_target, m, champion)
                chosen[m] = why
                if target is None:
                    errors[m] = f"kept {champion}: {why}"
                    continue
                await asyncio.to_thread(self.registry.demote, self.cfg.model, m, target)
                moved[m] = target
            except Exception as exc:
                errors[m] = str(exc)
        replicas = await self._swap_in(moved, errors)
        self.playbook.rolled_back()
        self._changed = True
        self._record("rollback", self.cfg.model, evidence={
            "reason": rb.reason, "signals": rb.evidence, "failed": rb.versions, "champion_now": moved,
            "choice": chosen, "replicas": replicas, "errors": errors},
            action="rollback", outcome="ok" if moved and not errors else f"errors: {errors}",
            incident=rb.record or None, duration_s=round(time.monotonic() - t0, 3))
        await self._durable("the probation rollback")
        return {"rolled_back": moved, "errors": errors}

    def status(self) -> dict[str, Any]:
        """The retraining part of the controller's status: job, probation, trial, history, backoff."""
        pb = self.playbook
        p = pb.proposal
        return {"enabled": self.cfg.retraining.enabled, "job": pb.job, "probation": pb.probation_view(),
                "trial": pb.rollout, "proposal": p.to_dict() if p is not None else None,
                "deploying": self.deploying,
                "history": pb.history[-5:], **pb.waiting()}
