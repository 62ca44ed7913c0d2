"""Retraining as Ray Jobs: submit, poll, stop, and read back what the job recorded.

A retrain is ``python -m train_jobs.retrain`` submitted through the Jobs API with
a submission id and metadata an operator recognises in the dashboard's Jobs view.
The job writes its outcome (the gate's verdict per member) to storage under a
record key the controller chose; the controller polls the job's status and, once
it is terminal, reads that record. Every call here blocks (HTTP to the dashboard,
storage reads): the healer runs them in worker threads.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Protocol

import ray
from ray.job_submission import JobSubmissionClient

from controllers.policies.playbook import SubmitRetrain
from raymedic.keys import retrain_job_id, retrain_record_key
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = ["PROJECT_ROOT", "Jobs", "RayJobs", "entrypoint", "job_pythonpath", "job_runtime_env",
           "current_runtime_env"]

log = get_logger(__name__)

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
"""Where ``train_jobs`` lives on this node (the checkout holding ``controllers/``): the job's
PYTHONPATH (same image/checkout on every node)."""


def job_pythonpath(environ: Mapping[str, str] | None = None) -> str:
    """The retrain job's PYTHONPATH: raymedic's checkout first, then whatever this process had, so a
    member's own module that Ray's processes find on PYTHONPATH is importable in the job too (a job's
    runtime_env replaces the variable, it does not extend it)."""
    inherited = (os.environ if environ is None else environ).get("PYTHONPATH", "")
    parts = [PROJECT_ROOT] + [p for p in inherited.split(os.pathsep) if p and p != PROJECT_ROOT]
    return os.pathsep.join(parts)


def current_runtime_env() -> dict[str, Any]:
    """The runtime_env this process runs in, as Ray holds it (local paths already uploaded: ``gcs://``
    URIs any process of the cluster can fetch). In the controller it is the application's."""
    return dict(ray.get_runtime_context().runtime_env)


def job_runtime_env(app_env: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The retrain job's runtime_env: the application's (``py_modules`` / ``working_dir`` as Ray uploaded
    them, ``pip``, its ``env_vars``), so a member's own module is importable in the job's driver and in its
    Ray Train workers and Tune trials exactly as in the Serve replicas, merged with raymedic's PYTHONPATH
    (:func:`job_pythonpath`, then the application's own PYTHONPATH entries), never replacing either."""
    env = {k: v for k, v in dict(app_env or {}).items()}
    env_vars = dict(env.get("env_vars") or {})
    own = [p for p in env_vars.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = [p for p in job_pythonpath(environ).split(os.pathsep) if p]
    env_vars["PYTHONPATH"] = os.pathsep.join(path + [p for p in own if p not in path])
    env["env_vars"] = env_vars
    return env


class Jobs(Protocol):
    """What the model healer needs from a job runner (blocking calls)."""

    def submit(self, sub: SubmitRetrain) -> str:
        """Start the retrain; its job id. Raises what the Jobs API raises (recorded as a failed submit)."""
        ...

    def poll(self, job_id: str) -> str | None:
        """The job's terminal status name (SUCCEEDED, FAILED, STOPPED), or None while it runs."""
        ...

    def stop(self, job_id: str) -> None:
        """Stop a job that ran past its timeout (best effort: never raises)."""
        ...

    def outcome(self, record: str) -> dict[str, Any] | None:
        """What the job recorded under ``record`` (None if it wrote nothing)."""
        ...


def entrypoint(model: str, storage_path: str, sub: SubmitRetrain) -> str:
    """The retrain job's shell command line (each argument quoted)."""
    return " ".join(shlex.quote(a) for a in [
        sys.executable, "-m", "train_jobs.retrain", "--model", model, "--storage-path", storage_path,
        "--reason", sub.reason, "--record", sub.record] + (["--search-all"] if sub.search else [])
        + (["--since", repr(sub.since)] if sub.since is not None else []))


class RayJobs:
    """:class:`Jobs` over this cluster's Ray Jobs API.

    Args:
        model: The model retrained.
        storage_path: Where the job reads and writes (the controller's storage).
        storage: The same storage, to read the job's record back.
        runtime_env: The application's runtime_env (the controller's own: it was created with it), which
            every job gets with raymedic's PYTHONPATH (:func:`job_runtime_env`).
    """

    def __init__(self, *, model: str, storage_path: str, storage: Storage,
                 runtime_env: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.storage_path = storage_path
        self._storage = storage
        self.runtime_env = dict(runtime_env or {})
        self._client: Any = None

    def _jobs(self) -> JobSubmissionClient:
        if self._client is None:
            # The GCS address names this cluster's dashboard, even with other clusters on the host.
            self._client = JobSubmissionClient(ray.get_runtime_context().gcs_address)
        return self._client

    def submit(self, sub: SubmitRetrain) -> str:
        """Submit ``train_jobs.retrain`` with a recognisable id and metadata; its job id. Idempotent: the
        id is the record's, and a job already submitted under it (by a controller killed before it could
        checkpoint the id) is adopted, not submitted twice."""
        client = self._jobs()
        job_id = retrain_job_id(self.model, sub.record)
        try:
            client.get_job_info(job_id)
            log.info("retrain job %s was already submitted (before a controller restart): following it", job_id)
            return job_id
        except RuntimeError as exc:  # the Jobs API answers 404 for an id it does not know
            if "404" not in str(exc) and "does not exist" not in str(exc):
                raise
        return client.submit_job(
            entrypoint=entrypoint(self.model, self.storage_path, sub),
            submission_id=job_id,
            metadata={"app": "raymedic", "kind": "retrain+search" if sub.search else "retrain", "model": self.model,
                      "reason": sub.reason[:200],
                      "alerts": ",".join(sub.alerts)[:200]},
            runtime_env=job_runtime_env(self.runtime_env),
        )

    def poll(self, job_id: str) -> str | None:
        """The job's terminal status name, or None while it runs."""
        status = self._jobs().get_job_status(job_id)
        return status.value if status.is_terminal() else None

    def stop(self, job_id: str) -> None:
        """Stop the job; a failure is logged (the job's own timeout still ends it)."""
        try:
            self._jobs().stop_job(job_id)
        except Exception as exc:
            log.warning("could not stop retrain job %s: %r", job_id, exc)

    def outcome(self, record: str) -> dict[str, Any] | None:
        """The job's record file, read back."""
        key = retrain_record_key(self.model, record)
        return json.loads(self._storage.read_text(key)) if self._storage.exists(key) else None
