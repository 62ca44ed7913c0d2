"""Model-level healing actions: Ray Jobs for retraining, registry moves, in-place version swaps.

The controller owns one :class:`ModelHealer`. Decisions come from
:class:`controllers.policies.playbook.Playbook`; this module only performs them:

- a retrain is a Ray job (``train_jobs.retrain``) submitted through
  ``JobSubmissionClient`` with a name and metadata an operator recognises in the
  dashboard's Jobs view, polled until it ends, its outcome read from storage;
- a challenger that passed the gate goes on a live trial first (``rollout.mode``
  canary/shadow): each is deployed as its own small Serve application, the
  gateways call it on a share of requests, and the playbook's verdict promotes or
  drops it; an operator can put any registered version on trial
  (``raymedic trial``);
- a promotion moves the ``champion`` alias of the members that passed the gate
  and has every running replica of those members swap to the new version in
  place (``Member.load_version``, addressed to each replica like a probe): no
  process restarts, so the new model serves within a second; a replica that
  cannot swap is restarted, and a new one loads the alias's version;
- a rollback moves ``champion`` back to ``previous`` and swaps the same way.
All blocking calls run in threads so the controller's loop keeps healing replicas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from controllers.policies.playbook import Playbook, Promote, RolloutDone, SubmitRetrain, Trigger
from raymedic.config import RaymedicConfig
from raymedic.keys import (APP_NAME, CANARY_APP_NAME, SERVE_NAMESPACE, canary_app_name, replica_actor_name,
                           retrain_job_id, retrain_record_key)
from raymedic.storage import Storage
from train_jobs.registry import ModelRegistry

__all__ = ["ModelHealer", "PROJECT_ROOT"]

log = logging.getLogger(__name__)

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
"""Where ``train_jobs`` lives on this node: the job's PYTHONPATH (same image/checkout on every node)."""

Record = Callable[..., None]  # (kind, target, evidence=..., action=..., outcome=...) → audit


class ModelHealer:
    def __init__(self, cfg: RaymedicConfig, storage: Storage, playbook: Playbook, record: Record, *,
                 on_new_versions: Callable[[dict[str, str]], None], replicas: Callable[[str], list[str]]) -> None:
        self.cfg, self.storage, self.playbook, self._record = cfg, storage, playbook, record
        self._on_new_versions = on_new_versions  # new versions serve: golden sets, windows, gateways
        self._replicas = replicas  # a member's RUNNING replica ids (the controller's Serve view)
        self._manual: str | None = None
        self._client: Any = None
        self._bg: asyncio.Task | None = None  # a promotion or rollback in progress
        self._changed = False
        self._trial_ready = False  # set once this controller has (re)deployed the trial's challengers
        self._warm: set[str] = set()  # members whose canary replica starts on the champion while a job runs
        self._warming: asyncio.Task | None = None  # starting them (in the background: healing goes on)
        self._started = False

    # ---- Ray Jobs ------------------------------------------------------------------

    def _jobs(self) -> Any:
        if self._client is None:
            import ray
            from ray.job_submission import JobSubmissionClient

            # The GCS address names this cluster's dashboard, even with other clusters on the host.
            self._client = JobSubmissionClient(ray.get_runtime_context().gcs_address)
        return self._client

    def _submit(self, sub: SubmitRetrain) -> str:
        model = self.cfg.model
        entry = " ".join(shlex.quote(a) for a in [
            sys.executable, "-m", "train_jobs.retrain", "--model", model, "--storage-path", self.cfg.storage_path,
            "--reason", sub.reason, "--record", sub.record] + (["--search-all"] if sub.search else [])
            + (["--since", repr(sub.since)] if sub.since is not None else []))
        return self._jobs().submit_job(
            entrypoint=entry,
            submission_id=retrain_job_id(model, sub.record),
            metadata={"app": "raymedic", "kind": "retrain+search" if sub.search else "retrain", "model": model,
                      "reason": sub.reason[:200],
                      "alerts": ",".join(sub.alerts)[:200]},
            runtime_env={"env_vars": {"PYTHONPATH": PROJECT_ROOT}},
        )

    def _poll(self, job_id: str) -> str | None:
        """The job's terminal status name, or None while it runs."""
        status = self._jobs().get_job_status(job_id)
        return status.value if status.is_terminal() else None

    def _outcome(self, record: str) -> dict[str, Any] | None:
        key = retrain_record_key(self.cfg.model, record)
        return json.loads(self.storage.read_text(key)) if self.storage.exists(key) else None

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
                   live: dict[str, tuple[float, int]]) -> bool:
        """Advance the playbook; True if anything changed (checkpoint it). Never blocks on a promotion
        or rollback: that runs as a background task so replica healing goes on meanwhile."""
        pb = self.playbook
        if self._bg is not None and not self._bg.done():
            return False
        if not self._started:
            self._started = True
            await asyncio.to_thread(self._adopt_canaries)
        if self._changed:
            self._changed = False
            return True
        job = pb.job
        if job is not None and job.get("job_id"):
            try:
                status = await asyncio.to_thread(self._poll, job["job_id"])
            except Exception as exc:  # the dashboard may be restarting: try again next step
                log.warning("could not poll retrain job %s: %r", job["job_id"], exc)
                return False
            if status is None and pb.timed_out(now):
                await asyncio.to_thread(self._stop, job["job_id"])
                status = "TIMEOUT"
            if status is None:
                return False
            outcome = await asyncio.to_thread(self._outcome, job["record"])
            promote = pb.finished(now, status, outcome)
            last = pb.history[-1]
            self._record("retrain-finished", self.cfg.model, evidence={
                "job_id": job["job_id"], "job_status": status, "result": last.get("result"),
                "gate": last.get("gate"), "error": last.get("error"), "retry_after_s": last.get("retry_after_s")},
                action="gate", outcome=last.get("result", "?"), incident=job["record"])
            await self._warmed()
            if promote is None or self.cfg.rollout.mode == "off":
                await asyncio.to_thread(self._cool_canaries, ())
            if promote is not None:
                if self.cfg.rollout.mode == "off":
                    self.spawn(self.promote(now, promote))
                else:
                    self.spawn(self.start_trial(now, promote, source="retrain"))
            return True
        if job is not None:
            return False
        if pb.rollout is not None:
            return self._judge_trial(now)
        manual, self._manual = self._manual, None
        sub = pb.step(now, triggers, labels, manual=manual)
        if sub is None:
            rb = pb.check_probation(live, self.cfg.performance.accuracy_drop)
            if rb is not None:
                self.spawn(self.rollback(list(rb.members), rb.reason))
                return True
            return False
        try:
            job_id = await asyncio.to_thread(self._submit, sub)
        except Exception as exc:
            pb.finished(now, "SUBMIT_FAILED", {"status": "failed", "error": f"submit failed: {exc!r}"})
            self._record("retrain-submit-failed", self.cfg.model, evidence={"error": repr(exc)[:500]},
                         action="retrain", outcome="failed", incident=sub.record)
            return True
        pb.submitted(job_id)
        if self.cfg.rollout.mode != "off":
            self._warming = asyncio.get_running_loop().create_task(asyncio.to_thread(self._warm_canaries))
        self._record("retrain-submitted", self.cfg.model, evidence={
            "job_id": job_id, "reason": sub.reason, "alerts": list(sub.alerts), "labels": labels},
            action="retrain", outcome="submitted", incident=sub.record)
        return True

    # ---- live trial ------------------------------------------------------------------

    def trial_view(self) -> dict[str, Any] | None:
        """What the gateways need: which members' challengers to call, on what share, in which mode."""
        r = self.playbook.rollout
        members = self.playbook.trial_members()
        if r is None or not members or not self._trial_ready:
            return None
        return {"record": r["record"], "mode": r["mode"], "share": r["share"], "members": members}

    def _canary_target(self, member: str, version: str) -> Any:
        """``member``'s canary application serving ``version`` (no HTTP route)."""
        from ray import serve

        from serve_apps.application import build_canary_app

        return serve.RunTarget(build_canary_app(self.cfg.model_dump(mode="json"), member, version),
                               name=canary_app_name(member), route_prefix=None)

    def _deploy_canary(self, member: str, version: str) -> None:
        """Deploy it and wait until it runs."""
        from ray import serve

        serve.run_many([self._canary_target(member, version)])

    # ---- warm canaries: started while the job trains, swapped to the challenger after the gate ----

    def _warm_canaries(self) -> None:
        """Start every member's canary replica on its champion now, without waiting for it.

        A retrain job takes tens of seconds; so does starting a replica (a worker process, PyTorch,
        the model) on a busy machine. Started side by side, a challenger that passes the gate goes on
        trial after an in-place swap of seconds instead of after a cold start. A member whose
        challenger fails the gate has its warm replica removed with the job's verdict.
        """
        from ray import serve

        registry = ModelRegistry(self.storage)
        try:
            targets = [self._canary_target(m.name, registry.resolve(self.cfg.model, m.name, "champion"))
                       for m in self.cfg.members]
            serve.run_many(targets, wait_for_applications_running=False)
            self._warm = {m.name for m in self.cfg.members}
        except Exception as exc:  # the trial will start its challengers cold
            log.warning("could not start warm canary replicas: %r", exc)

    async def _warmed(self) -> None:
        """Wait for the warm canaries' start to have been requested (a job outlasts it by far)."""
        if self._warming is not None:
            await asyncio.gather(self._warming, return_exceptions=True)
            self._warming = None

    def _cool_canaries(self, keep: Sequence[str]) -> None:
        """Remove the warm canary replicas of every member but ``keep``."""
        drop = sorted(self._warm - set(keep))
        self._warm &= set(keep)
        if drop:
            self._delete_canaries(drop)

    def _adopt_canaries(self) -> None:
        """After a controller restart: canary applications left by the one before are the running
        job's warm replicas, the running trial's challengers, or leftovers to remove."""
        from ray import serve

        try:
            present = {a[len(CANARY_APP_NAME) + 1:] for a in serve.status().applications
                       if a.startswith(CANARY_APP_NAME + "-")}
        except Exception as exc:
            log.warning("could not list canary applications: %r", exc)
            return
        if self.playbook.job is not None:
            self._warm = present & {m.name for m in self.cfg.members}
        elif self.playbook.rollout is None and present:
            self._delete_canaries(sorted(present))

    def _canary_running(self, member: str) -> None:
        """Wait (in a worker thread) until ``member``'s warm canary application is RUNNING."""
        from ray import serve

        name = canary_app_name(member)
        deadline = time.monotonic() + 180.0
        while True:
            app = serve.status().applications.get(name)
            state = str(getattr(app, "status", "")) if app is not None else "MISSING"
            if state.endswith("RUNNING"):
                return
            if state.endswith(("DEPLOY_FAILED", "MISSING", "DELETING")) or time.monotonic() > deadline:
                raise RuntimeError(f"warm canary of {member} is {state}")
            time.sleep(0.5)

    async def _start_canary(self, member: str, version: str) -> str:
        """The challenger on its own replica: the warm one swapped in place if there is one (the call
        goes through a handle on this event loop, as Serve's fast path requires), else a cold start."""
        from ray import serve

        if member in self._warm:
            try:
                await asyncio.to_thread(self._canary_running, member)
                handle = serve.get_deployment_handle(member, app_name=canary_app_name(member))
                out = await asyncio.wait_for(handle.load_version.remote(version),
                                             self.cfg.controller.swap_timeout_s)
                if out.get("version") != version:
                    raise RuntimeError(f"it serves {out.get('version')}, not {version}")
                return "swapped into the warm replica"
            except Exception as exc:
                log.warning("warm canary of %s not usable (%r): starting it cold", member, exc)
        await asyncio.to_thread(self._deploy_canary, member, version)
        return "started"

    def _delete_canaries(self, members: Sequence[str]) -> None:
        from ray import serve

        for m in members:
            try:
                serve.delete(canary_app_name(m), _blocking=False)
            except Exception as exc:
                log.warning("could not delete canary application of %s: %r", m, exc)

    async def start_trial(self, now: float, promote: Promote, *, source: str, mode: str | None = None) -> None:
        """Deploy each challenger on its own replica, then open the trial (gateways join on their next sync)."""
        t0 = time.monotonic()
        mode = mode or self.cfg.rollout.mode
        self.playbook.start_rollout(now, promote, mode=mode, share=self.cfg.rollout.share, source=source)
        self._trial_ready = False
        self._changed = True
        how: dict[str, str] = {}
        try:
            await asyncio.to_thread(self._cool_canaries, list(promote.versions))
            for member, version in promote.versions.items():
                how[member] = await self._start_canary(member, version)
        except Exception as exc:
            self._warm = set()
            self.playbook.abandon_rollout(f"could not deploy the challenger: {exc!r}"[:300])
            await asyncio.to_thread(self._delete_canaries, list(promote.versions))
            self._record("trial-started", self.cfg.model, evidence={"versions": promote.versions,
                                                                     "error": repr(exc)[:500]},
                         action="trial", outcome=f"failed: {exc}", incident=promote.record)
            return
        self._trial_ready = True
        self._warm = set()
        self._record("trial-started", self.cfg.model, evidence={
            "versions": promote.versions, "challengers": how, "mode": mode, "share": self.cfg.rollout.share,
            "source": source, "holdout_accuracy": promote.holdout_accuracy},
            action="trial", outcome="ok", incident=promote.record, duration_s=round(time.monotonic() - t0, 3))

    def _judge_trial(self, now: float) -> bool:
        if not self._trial_ready:  # deployed by a controller before a restart: deploy again (idempotent)
            r = self.playbook.rollout
            assert r is not None
            self.spawn(self._redeploy_trial(dict(r["versions"])))
            return False
        new, done = self.playbook.check_rollout(now, self.cfg.rollout)
        for m, (verdict, why) in new.items():
            self._record(f"trial-{verdict}", f"{self.cfg.model}/{m}", evidence={
                "reason": why, "live": (self.playbook.rollout or {}).get("tally", {}).get(m)},
                action="trial", outcome=verdict, incident=(self.playbook.rollout or {}).get("record"))
        if done is not None:
            self.spawn(self._finish_trial(now, done))
        return bool(new) or done is not None

    async def _redeploy_trial(self, versions: dict[str, str]) -> None:
        try:
            for member, version in versions.items():
                await asyncio.to_thread(self._deploy_canary, member, version)
            self._trial_ready = True
        except Exception as exc:
            r = self.playbook.abandon_rollout(f"could not redeploy the challenger: {exc!r}"[:300])
            self._changed = True
            self._record("trial-abandoned", self.cfg.model, evidence={"error": repr(exc)[:500]},
                         action="trial", outcome="failed", incident=(r or {}).get("record"))

    async def _finish_trial(self, now: float, done: RolloutDone) -> None:
        members = sorted(set(done.rejected) | set(done.promote.versions if done.promote else ()))
        self._record("trial-finished", self.cfg.model, evidence={
            "promote": done.promote.versions if done.promote else {}, "rejected": done.rejected},
            action="trial", outcome="promote" if done.promote else "rejected", incident=done.record)
        if done.promote is not None:
            await self.promote(now, done.promote, probation=False)
        await asyncio.to_thread(self._delete_canaries, members)
        self._changed = True

    def request_trial(self, member: str, ref: str, mode: str | None = None) -> dict[str, Any]:
        """An operator puts a registered version (default: the ``challenger`` alias) on live trial
        (``mode``: canary or shadow; default the config's)."""
        if mode not in (None, "canary", "shadow"):
            return {"error": f"mode must be 'canary' or 'shadow', got {mode!r}", "status": 400}
        if member not in {m.name for m in self.cfg.members}:
            return {"error": f"no member {member!r}; members: {[m.name for m in self.cfg.members]}",
                    "status": 404}
        # What is wrong with the request itself comes first (404/400): waiting would not fix it.
        registry = ModelRegistry(self.storage)
        try:
            info = registry.info(self.cfg.model, member, ref)
            champion = registry.info(self.cfg.model, member, "champion")
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
        record = f"t{int(time.time())}-{member}"
        acc = float((info.metadata.get("metrics") or {}).get("val_accuracy")
                    or (info.metadata.get("metrics") or {}).get("accuracy") or 0.0)
        self.spawn(self.start_trial(time.time(), Promote(record, {member: info.version}, {member: acc}),
                                    source="operator", mode=mode))
        return {"trial": record, "member": member, "version": info.version, "mode": mode,
                "share": self.cfg.rollout.share}

    def spawn(self, coro: Any) -> bool:
        """Run a promotion/rollback in the background; False if one is already running."""
        if self._bg is not None and not self._bg.done():
            coro.close()
            return False
        self._bg = asyncio.get_running_loop().create_task(coro)
        return True

    @property
    def deploying(self) -> bool:
        return self._bg is not None and not self._bg.done()

    def _stop(self, job_id: str) -> None:
        try:
            self._jobs().stop_job(job_id)
        except Exception as exc:
            log.warning("could not stop retrain job %s: %r", job_id, exc)

    # ---- promotion and rollback ------------------------------------------------------

    async def swap(self, versions: dict[str, str], *, only: str | None = None) -> dict[str, Any]:
        """Every RUNNING replica of each member in ``versions`` loads its version in place.

        Replicas are addressed one by one through the router's ``target`` (the same path as
        a probe), all at once. One that does not confirm within ``swap_timeout_s`` is
        restarted: Serve's replacement loads the champion alias, which already names the
        new version. ``only``: that replica alone (one found serving another version).
        Returns what each replica did, for the audit.
        """
        from ray import serve

        timeout = self.cfg.controller.swap_timeout_s
        calls: list[tuple[str, str, Any]] = []
        for member, version in versions.items():
            handle = serve.get_deployment_handle(member, app_name=APP_NAME)
            for rid in self._replicas(member):
                if only is not None and rid != only:
                    continue
                calls.append((member, rid, handle.load_version.remote(version, target=rid)))

        async def one(member: str, rid: str, response: Any) -> tuple[str, str]:
            try:
                out = await asyncio.wait_for(response, timeout)
                return out["version"], "ok"
            except Exception as exc:
                response.cancel()
                await asyncio.to_thread(self._restart, member, rid)
                return versions[member], f"restarted ({type(exc).__name__})"

        done = await asyncio.gather(*(one(m, r, resp) for m, r, resp in calls))
        return {f"{m}/{r}": {"version": v, "outcome": o} for (m, r, _), (v, o) in zip(calls, done)}

    @staticmethod
    def _restart(member: str, replica: str) -> None:
        import ray

        try:
            ray.kill(ray.get_actor(replica_actor_name(APP_NAME, member, replica), namespace=SERVE_NAMESPACE),
                     no_restart=True)
        except Exception as exc:
            log.warning("could not restart replica %s of %s after a failed swap: %r", replica, member, exc)

    async def promote(self, now: float, promote: Promote, *, probation: bool = True) -> None:
        registry = ModelRegistry(self.storage)
        t0 = time.monotonic()
        try:
            for member, version in promote.versions.items():
                await asyncio.to_thread(registry.promote, self.cfg.model, member, version)
            self._on_new_versions(dict(promote.versions))
            replicas = await self.swap(dict(promote.versions))
        except Exception as exc:
            self._record("promote", self.cfg.model, evidence={"versions": promote.versions, "error": repr(exc)[:500]},
                         action="promote", outcome=f"failed: {exc}", incident=promote.record)
            return
        if probation:  # a live trial already compared it with the champion on the same requests
            self.playbook.promoted(now, promote)
        self._changed = True
        self._record("promote", self.cfg.model, evidence={"versions": promote.versions, "replicas": replicas,
                                                            "holdout_accuracy": promote.holdout_accuracy},
                     action="promote", outcome="ok", incident=promote.record,
                     duration_s=round(time.monotonic() - t0, 3))

    async def rollback(self, members: Sequence[str] | None, reason: str) -> dict[str, Any]:
        r = self.playbook.rollout
        if r is not None:  # the champion never changed: rolling back a trial is ending it
            self.playbook.abandon_rollout(f"rollback: {reason}")
            self._changed = True
            await asyncio.to_thread(self._delete_canaries, list(r["versions"]))
            self._record("trial-abandoned", self.cfg.model, evidence={"reason": reason, "versions": r["versions"]},
                         action="rollback", outcome="ok", incident=r["record"])
            return {"abandoned_trial": r["record"], "champion_kept": True, "errors": {}}
        registry = ModelRegistry(self.storage)
        names = list(members) if members else [m.name for m in self.cfg.members]
        moved: dict[str, str] = {}
        errors: dict[str, str] = {}
        for m in names:
            try:
                aliases = await asyncio.to_thread(registry.rollback, self.cfg.model, m)
                moved[m] = aliases.get("champion", "?")
            except Exception as exc:
                errors[m] = str(exc)
        replicas: dict[str, Any] = {}
        if moved:
            try:
                self._on_new_versions(dict(moved))
                replicas = await self.swap(dict(moved))
            except Exception as exc:
                errors["swap"] = str(exc)
            self.playbook.rolled_back()
            self._changed = True
        self._record("rollback", self.cfg.model, evidence={"reason": reason, "champion_now": moved,
                                                             "replicas": replicas, "errors": errors},
                     action="rollback", outcome="ok" if moved and not errors else f"errors: {errors}")
        return {"rolled_back": moved, "errors": errors}

    def status(self) -> dict[str, Any]:
        pb = self.playbook
        return {"enabled": self.cfg.retraining.enabled, "job": pb.job, "probation": pb.probation,
                "trial": pb.rollout,
                "deploying": self.deploying,
                "history": pb.history[-5:], **pb.waiting()}
