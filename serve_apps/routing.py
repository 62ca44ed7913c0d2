"""Member request routing that can steer a retry away from a replica.

Serve's default router gives no way to say "not that replica again", so a retry
after a timeout may land on the very replica that hung. :class:`AvoidingRouter` is
Serve's power-of-two-choices router plus two things driven by keyword arguments of
the member call:

- ``avoid=[replica_id, ...]`` removes those replicas from the candidates (unless
  that would leave none);
- ``standby=[replica_id, ...]``: hot standbys, used only when every other
  candidate is avoided (a standby is healthier than a replica known to be bad);
- ``target="replica_id"`` sends the call to that replica only (the controller's
  golden probes and chaos injection address one replica through the same request
  path as user traffic; a call whose target is gone waits until its caller's
  deadline);
- ``call_id="..."`` records which replica the call was routed to, so the gateway
  can attribute a timeout to a replica even though the replica never answered.

The router runs in the caller's process (the gateway replica), so the record is a
process-local, bounded map, kept in :mod:`serve_apps.route_book` (not here: Serve ships this
module to the caller by value, see there) and read through its ``routed_replica``.
"""

from __future__ import annotations

import random
from typing import List, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

from serve_apps.route_book import record_route

__all__ = ["AvoidingRouter"]


class AvoidingRouter(PowerOfTwoChoicesRequestRouter):
    """Power of two choices over the candidates not named in the call's ``avoid``.

    A call without ``avoid`` or ``target`` is routed as Serve's default router does,
    with one difference that the keywords require: the replica chosen for a call is
    given to that call. (The default router hands a chosen replica to the oldest
    waiting call instead — fine when every call may go anywhere, wrong when a probe
    must reach one replica or a retry must not return to the one that failed.)
    """

    _fulfill_next_pending_request = RequestRouter._fulfill_next_pending_request

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        """The candidates for a call: the default router's choice for a plain call; else the target
        alone, or two random replicas neither avoided nor standby (standbys only when no other is left,
        avoided ones only when nothing else is).
        """
        kwargs = pending_request.kwargs if pending_request is not None else {}
        target = kwargs.get("target")
        avoid = kwargs.get("avoid") or ()
        standby = kwargs.get("standby") or ()
        if not target and not avoid and not standby:
            return await super().choose_replicas(candidate_replicas, pending_request)
        # Our own choice: make the base router sleep (back off) between attempts. Without
        # this, a target that is gone or full makes it retry in a tight loop that never
        # yields, freezing every handle in the process.
        pending_request.routing_context.should_backoff = True
        if target:
            return [[r for r in candidate_replicas if r.replica_id.unique_id == target]]
        keep = [r for r in candidate_replicas if r.replica_id.unique_id not in avoid]
        active = [r for r in keep if r.replica_id.unique_id not in standby]
        pool = active or keep or list(candidate_replicas)
        if not pool:
            return []
        return [random.sample(pool, k=min(2, len(pool)))]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        """Record where a call with a ``call_id`` went, so the caller can charge a timeout to that replica."""
        call_id = pending_request.kwargs.get("call_id")
        if call_id:
            record_route(call_id, replica_id.unique_id)
        super().on_request_routed(pending_request, replica_id, result)
