"""One ensemble member as a Serve deployment: a verified version per replica.

A replica of the main application loads the member's ``champion`` when it starts
(a canary replica loads the one version on trial), and a promotion or rollback
swaps the version in place on every running replica (:meth:`Member.load_version`,
called by the controller on each replica after it moved the alias): no process
restarts, so the new model serves within a second of the decision instead of
after a rolling redeploy, and a replica Serve starts later loads the alias's
current version. Every answer names the version that produced it, and the
controller's probes judge a replica against the golden outputs of that version.
The registry verifies the artifact's sha256 before anything is deserialised.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Sequence

from ray import serve

from raymedic.errors import InvalidRequest
from raymedic.logs import get_logger, use_serve_handlers
from raymedic.storage import Storage
from serve_apps.chaos import ReplicaFault
from serve_apps.gpu import gpu_reading
from serve_apps.memory import memory_reading
from serve_apps.vitals import ProcessVitals
from train_jobs.artifacts import unpack
from train_jobs.devices import serving_device
from train_jobs.registry import ModelRegistry

__all__ = ["Member"]

log = get_logger(__name__)


@serve.deployment
class Member:
    """Serves one member version; ``predict`` takes validated raw rows in schema order."""

    def __init__(self, *, model: str, member: str, version: str, storage_path: str, use_gpu: bool,
                 chaos: bool = False) -> None:
        use_serve_handlers()
        # Imported in the replica only: the gateway, the application builder and the CLI import this
        # module too, and loading torch costs them seconds and memory they never use.
        import torch

        torch.set_num_threads(1)  # many small replicas share few cores; intra-op threads only contend
        self._registry = ModelRegistry(Storage(storage_path))
        self._model_name, self._member = model, member
        # Weights go to the device once, here; each call's rows go there as one batched tensor
        # (MemberModel.predict_proba_matrix), and the log line below names the device.
        self._device, warning = serving_device(requested_gpu=use_gpu, cuda_available=torch.cuda.is_available())
        if warning:
            log.warning("member %s: %s", member, warning)
        self._model, self._version = self._load(version)
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._chaos = chaos
        self._fault = ReplicaFault()
        self._vitals = ProcessVitals()
        log.info("member %s replica %s serving %s on %s (pid %d)", member, self._replica, self._version,
                 self._device, os.getpid())

    async def predict(self, rows: Sequence[Sequence[Any]], call_id: str | None = None,
                      avoid: Sequence[str] | None = None, target: str | None = None,
                      standby: Sequence[str] | None = None, timed: bool = False) -> dict[str, Any]:
        """Class probabilities for ``rows``, naming the replica and the version that produced them (the
        gateway charges each answer to its replica and version); ``timed`` (a profiling gateway) adds how
        long this replica's inference took (``infer_s``).
        """
        # call_id, avoid, standby and target are read by serve_apps.routing.AvoidingRouter in the caller.
        if self._fault.mode:
            await self._fault.before_inference()
        t0 = time.perf_counter() if timed else 0.0
        probs = self._model.predict_proba(rows)
        infer_s = time.perf_counter() - t0 if timed else None
        if self._fault.mode:
            probs = self._fault.after_inference(probs)
        out = {"probabilities": probs, "replica": self._replica, "version": self._version, "member": self._member}
        if infer_s is not None:
            out["infer_s"] = infer_s
        if target is not None:  # a golden probe (only the controller targets a replica): the leak rule's sample
            out["memory"] = memory_reading()
            self._vitals.watch_loop()
            out["vitals"] = self._vitals.reading()
            gpu = gpu_reading(str(self._device), self._fault.gpu_kind)
            if gpu is not None:  # none on a replica without a GPU: status says "no GPU"
                out["gpu"] = gpu
        return out

    async def gpu_health(self, target: str | None = None) -> dict[str, Any]:
        """The replica's GPU health probe (None: no GPU), apart from inference: what the controller reads
        when a probe's inference raised a CUDA error, since that probe brought no reading back.
        ``target`` is honoured by raymedic's router."""
        return {"replica": self._replica, "member": self._member,
                "gpu": gpu_reading(str(self._device), self._fault.gpu_kind)}

    def _load(self, ref: str) -> tuple[Any, str]:
        loaded = self._registry.load(self._model_name, self._member, ref)
        model = unpack(loaded.files, device=self._device,
                       where=f"{self._model_name}/{self._member} {loaded.info.version}")
        if model.golden is not None and model.golden.rows:
            # Warm up before serving: PyTorch's first calls pick and initialise kernels (hundreds of
            # ms on a busy core), which a user's first request would otherwise pay past its deadline.
            model.predict_proba(model.golden.rows)
            model.predict_proba(model.golden.rows[:1])
        return model, loaded.info.version

    async def load_version(self, version: str, target: str | None = None) -> dict[str, Any]:
        """Serve another registered version of this member from now on (a promotion or rollback).

        The new model is read and verified off the event loop, then swapped in one
        assignment: a call in flight finishes on the model it started with, the next
        one gets the new model. ``target`` is honoured by raymedic's router.
        """
        model, loaded = await asyncio.to_thread(self._load, version)
        self._model, self._version = model, loaded
        log.info("member %s replica %s now serves %s", self._member, self._replica, loaded)
        return {"replica": self._replica, "version": loaded, "member": self._member, "pid": os.getpid()}

    async def chaos(self, mode: str | None, delay_ms: float | None = None, target: str | None = None,
                    only: str | None = None, mb_per_s: float | None = None,
                    cap_mb: float | None = None, gpu_kind: str | None = None) -> dict[str, Any]:
        """Inject (or clear, with ``mode=None``) a fault in this replica; see serve_apps.chaos.

        ``target`` is honoured by raymedic's router; ``only`` makes a replica reached
        through any router (the plain-Serve baseline) ignore a call meant for another.
        """
        if not self._chaos:
            raise InvalidRequest("chaos is disabled in this deployment's config (chaos.enabled: false)")
        if only is not None and only != self._replica:
            return {"applied": False, "replica": self._replica, "member": self._member}
        out = self._fault.set(mode, delay_ms, mb_per_s=mb_per_s, cap_mb=cap_mb, gpu_kind=gpu_kind)
        log.warning("chaos: member %s replica %s fault %s", self._member, self._replica, out)
        return {**out, "applied": True, "replica": self._replica, "member": self._member, "pid": os.getpid()}

    async def info(self) -> dict[str, Any]:
        """Which member, version, replica, process and device this is (for probes and debugging)."""
        return {"member": self._member, "version": self._version, "replica": self._replica,
                "pid": os.getpid(), "device": str(self._model.device)}
