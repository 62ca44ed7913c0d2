"""Model-level healing actions: Ray Jobs for retraining, registry moves and redeploys.

The controller owns one :class:`ModelHealer`. Decisions come from
:class:`controllers.playbook.Playbook`; this module only performs them:

- a retrain is a Ray job (``train_jobs.retrain``) submitted through
  ``JobSubmissionClient`` with a name and metadata an operator recognises in the
  dashboard's Jobs view, polled until it ends, its outcome read from storage;
- a promotion moves the ``champion`` alias of the members that passed the gate
  and redeploys the Serve application (a rolling update: the builder resolves
  the new champions, old replicas serve until new ones are up);
- a rollback moves ``champion`` back to ``previous`` and redeploys.
All blocking calls run in threads so the controller's loop keeps healing replicas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from controllers.playbook import Playbook, Promote, SubmitRetrain, Trigger
from raymedic.config import ADMIN_TOKEN_SHA_ENV, APP_NAME, RaymedicConfig
from raymedic.storage import Storage
from train_jobs.registry import ModelRegistry
from train_jobs.retrain import record_key

__all__ = ["ModelHealer", "PROJECT_ROOT"]

log = logging.getLogger(__name__)

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
"""Where ``train_jobs`` lives on this node: the job's PYTHONPATH (same image/checkout on every node)."""

Record = Callable[..., None]  # (kind, target, evidence=..., action=..., outcome=...) → audit


class ModelHealer:
    def __init__(self, cfg: RaymedicConfig, storage: Storage, playbook: Playbook, record: Record,
                 admin_sha: str | None, on_new_versions: Callable[[], None]) -> None:
        self.cfg, self.storage, self.playbook, self._record = cfg, storage, playbook, record
        self._on_new_versions = on_new_versions  # new versions serve: start their performance windows afresh
        self.admin_sha = admin_sha
        self._manual: str | None = None
        self._client: Any = None
        self._bg: asyncio.Task | None = None  # a promotion or rollback (a redeploy takes tens of seconds)
        self._changed = False

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
            "--reason", sub.reason, "--record", sub.record])
        return self._jobs().submit_job(
            entrypoint=entry,
            submission_id=f"raymedic-retrain-{model}-{sub.record}",
            metadata={"app": "raymedic", "kind": "retrain", "model": model, "reason": sub.reason[:200],
                      "alerts": ",".join(sub.alerts)[:200]},
            runtime_env={"env_vars": {"PYTHONPATH": PROJECT_ROOT}},
        )

    def _poll(self, job_id: str) -> str | None:
        """The job's terminal status name, or None while it runs."""
        status = self._jobs().get_job_status(job_id)
        return status.value if status.is_terminal() else None

    def _outcome(self, record: str) -> dict[str, Any] | None:
        key = record_key(self.cfg.model, record)
        return json.loads(self.storage.read_text(key)) if self.storage.exists(key) else None

    # ---- one step ------------------------------------------------------------------

    def request(self, reason: str) -> dict[str, Any]:
        """An operator asks for a retrain now (runs on the next step if no job is running)."""
        if self.playbook.job is not None:
            return {"error": f"retrain {self.playbook.job['record']} is still running; one at a time",
                    "status": 409}
        self._manual = reason or "requested"
        return {"retrain": "requested", "reason": self._manual}

    async def step(self, now: float, triggers: Sequence[Trigger], labels: int,
                   live: dict[str, tuple[float, int]]) -> bool:
        """Advance the playbook; True if anything changed (checkpoint it). Never blocks on a redeploy:
        that runs as a background task so replica healing goes on meanwhile."""
        pb = self.playbook
        if self._bg is not None and not self._bg.done():
            return False
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
            if promote is not None:
                self.spawn(self.promote(now, promote))
            return True
        if job is not None:
            return False
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
        self._record("retrain-submitted", self.cfg.model, evidence={
            "job_id": job_id, "reason": sub.reason, "alerts": list(sub.alerts), "labels": labels},
            action="retrain", outcome="submitted", incident=sub.record)
        return True

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

    def _redeploy(self) -> None:
        """Deploy the application again: the builder resolves the (moved) champions."""
        from ray import serve

        from serve_apps.app import build_app

        if self.admin_sha:  # the admin routes keep the operator's token across the redeploy
            os.environ[ADMIN_TOKEN_SHA_ENV] = self.admin_sha
        serve.run(build_app(self.cfg.model_dump(mode="json")), name=APP_NAME, route_prefix="/", blocking=False)

    async def promote(self, now: float, promote: Promote) -> None:
        registry = ModelRegistry(self.storage)
        t0 = time.monotonic()
        try:
            for member, version in promote.versions.items():
                await asyncio.to_thread(registry.promote, self.cfg.model, member, version)
            await self._deploy()
        except Exception as exc:
            self._record("promote", self.cfg.model, evidence={"versions": promote.versions, "error": repr(exc)[:500]},
                         action="promote", outcome=f"failed: {exc}", incident=promote.record)
            return
        self.playbook.promoted(now, promote)
        self._changed = True
        self._on_new_versions()
        self._record("promote", self.cfg.model, evidence={"versions": promote.versions,
                                                            "holdout_accuracy": promote.holdout_accuracy},
                     action="promote", outcome="ok", incident=promote.record,
                     duration_s=round(time.monotonic() - t0, 3))

    async def rollback(self, members: Sequence[str] | None, reason: str) -> dict[str, Any]:
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
        if moved:
            try:
                await self._deploy()
            except Exception as exc:
                errors["redeploy"] = str(exc)
            self.playbook.rolled_back()
            self._changed = True
            self._on_new_versions()
        self._record("rollback", self.cfg.model, evidence={"reason": reason, "champion_now": moved,
                                                             "errors": errors},
                     action="rollback", outcome="ok" if moved and not errors else f"errors: {errors}")
        return {"rolled_back": moved, "errors": errors}

    async def _deploy(self) -> None:
        await asyncio.to_thread(self._redeploy)

    def status(self) -> dict[str, Any]:
        pb = self.playbook
        return {"enabled": self.cfg.retraining.enabled, "job": pb.job, "probation": pb.probation,
                "deploying": self.deploying,
                "history": pb.history[-5:], **pb.waiting()}
