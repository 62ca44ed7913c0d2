"""One ensemble member as a Serve deployment: a pinned, verified version per replica.

Every replica loads the same version id (resolved once by the app builder, not
the moving ``champion`` alias), so a promotion mid-rollout can never leave a
member's replicas serving two different models by accident. The registry verifies
the artifact's sha256 before anything is deserialised.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from ray import serve

from raymedic.errors import InvalidRequest
from raymedic.storage import Storage
from serve_apps.chaos import ReplicaFault
from train_jobs.artifacts import unpack
from train_jobs.registry import ModelRegistry

__all__ = ["Member"]

log = logging.getLogger("ray.serve")


@serve.deployment
class Member:
    """Serves one member version; ``predict`` takes validated raw rows in schema order."""

    def __init__(self, *, model: str, member: str, version: str, storage_path: str, use_gpu: bool,
                 chaos: bool = False) -> None:
        import torch

        torch.set_num_threads(1)  # many small replicas share few cores; intra-op threads only contend
        loaded = ModelRegistry(Storage(storage_path)).load(model, member, version)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self._model = unpack(loaded.files, device=device)
        self._member = member
        self._version = loaded.info.version
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._chaos = chaos
        self._fault = ReplicaFault()
        log.info("member %s replica %s serving %s on %s (pid %d)", member, self._replica, self._version,
                 device, os.getpid())

    async def predict(self, rows: Sequence[Sequence[Any]], call_id: str | None = None,
                      avoid: Sequence[str] | None = None, target: str | None = None,
                      standby: Sequence[str] | None = None) -> dict[str, Any]:
        # call_id, avoid, standby and target are read by serve_apps.routing.AvoidingRouter in the caller.
        if self._fault.mode:
            await self._fault.before_inference()
        probs = self._model.predict_proba(rows)
        if self._fault.mode:
            probs = self._fault.after_inference(probs)
        return {"probabilities": probs, "replica": self._replica, "version": self._version,
                "member": self._member}

    async def chaos(self, mode: str | None, delay_ms: float | None = None, target: str | None = None,
                    only: str | None = None) -> dict[str, Any]:
        """Inject (or clear, with ``mode=None``) a fault in this replica; see serve_apps.chaos.

        ``target`` is honoured by raymedic's router; ``only`` makes a replica reached
        through any router (the plain-Serve baseline) ignore a call meant for another.
        """
        if not self._chaos:
            raise InvalidRequest("chaos is disabled in this deployment's config (chaos.enabled: false)")
        if only is not None and only != self._replica:
            return {"applied": False, "replica": self._replica, "member": self._member}
        out = self._fault.set(mode, delay_ms)
        log.warning("chaos: member %s replica %s fault %s", self._member, self._replica, out)
        return {**out, "applied": True, "replica": self._replica, "member": self._member, "pid": os.getpid()}

    async def info(self) -> dict[str, Any]:
        return {"member": self._member, "version": self._version, "replica": self._replica,
                "pid": os.getpid(), "device": str(self._model.device)}
