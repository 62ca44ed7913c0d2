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

from raymedic.storage import Storage
from train_jobs.artifacts import unpack
from train_jobs.registry import ModelRegistry

__all__ = ["Member"]

log = logging.getLogger("ray.serve")


@serve.deployment
class Member:
    """Serves one member version; ``predict`` takes validated raw rows in schema order."""

    def __init__(self, *, model: str, member: str, version: str, storage_path: str, use_gpu: bool) -> None:
        import torch

        torch.set_num_threads(1)  # many small replicas share few cores; intra-op threads only contend
        loaded = ModelRegistry(Storage(storage_path)).load(model, member, version)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self._model = unpack(loaded.files, device=device)
        self._member = member
        self._version = loaded.info.version
        self._replica = serve.get_replica_context().replica_id.unique_id
        log.info("member %s replica %s serving %s on %s (pid %d)", member, self._replica, self._version,
                 device, os.getpid())

    async def predict(self, rows: Sequence[Sequence[Any]], call_id: str | None = None,
                      avoid: Sequence[str] | None = None) -> dict[str, Any]:
        # call_id and avoid are read by serve_apps.routing.AvoidingRouter in the caller.
        probs = self._model.predict_proba(rows)
        return {"probabilities": probs, "replica": self._replica, "version": self._version,
                "member": self._member}

    async def info(self) -> dict[str, Any]:
        return {"member": self._member, "version": self._version, "replica": self._replica,
                "pid": os.getpid(), "device": str(self._model.device)}
