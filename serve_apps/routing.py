"""Member request routing that can steer a retry away from a replica.

Serve's default router gives no way to say "not that replica again", so a retry
after a timeout may land on the very replica that hung. :class:`AvoidingRouter` is
Serve's power-of-two-choices router plus two things driven by keyword arguments of
the member call:

- ``avoid=[replica_id, ...]`` removes those replicas from the candidates (unless
  that would leave none);
- ``call_id="..."`` records which replica the call was routed to, so the gateway
  can attribute a timeout to a replica even though the replica never answered.

The router runs in the caller's process (the gateway replica), so the record is a
process-local, bounded map read through :func:`routed_replica`.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from typing import List, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

__all__ = ["AvoidingRouter", "routed_replica"]

_MAX_TRACKED = 10_000
_routed: "OrderedDict[str, str]" = OrderedDict()
_lock = threading.Lock()  # Serve may run routers on their own event-loop thread.


def routed_replica(call_id: str) -> str | None:
    """The replica id a call with ``call_id`` was routed to, if it was routed."""
    with _lock:
        return _routed.get(call_id)


def _record(call_id: str, replica: str) -> None:
    with _lock:
        _routed[call_id] = replica
        while len(_routed) > _MAX_TRACKED:
            _routed.popitem(last=False)


class AvoidingRouter(PowerOfTwoChoicesRequestRouter):
    """Power of two choices over the candidates not named in the call's ``avoid``."""

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        avoid = (pending_request.kwargs.get("avoid") if pending_request is not None else None) or ()
        if not avoid:
            return await super().choose_replicas(candidate_replicas, pending_request)
        keep = [r for r in candidate_replicas if r.replica_id.unique_id not in avoid]
        pool = keep or list(candidate_replicas)
        if not pool:
            return []
        return [random.sample(pool, k=min(2, len(pool)))]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        call_id = pending_request.kwargs.get("call_id")
        if call_id:
            _record(call_id, replica_id.unique_id)
        super().on_request_routed(pending_request, replica_id, result)
