"""Which replica each member call was routed to: written by the router, read by the gateway's fan-out.

A module of its own, apart from :mod:`serve_apps.routing`, because Serve ships a custom
request router to the caller's process *by value*: ``RequestRouterConfig`` registers the
router's module with cloudpickle's ``register_pickle_by_value``, so the router that runs in
a gateway replica is a copy of :class:`~serve_apps.routing.AvoidingRouter` whose module
globals are copies too. A map kept in the router's own module was therefore written in the
copy and read, always empty, in the real module: the gateway never learned where a failed,
timed-out or hedged call had gone, so it could neither charge the call to its replica nor
eject it. Functions of this module are pickled by reference, so the copy's calls land here,
in the one map of the process.

Bounded: the newest :data:`MAX_TRACKED` routes are kept (a call needs its route for at most
its deadline).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["MAX_TRACKED", "record_route", "routed_replica"]

MAX_TRACKED = 10_000
"""Routes remembered per process: far more than the calls in flight within a deadline at any rate."""

_routed: "OrderedDict[str, str]" = OrderedDict()
_lock = threading.Lock()  # Serve may run routers on their own event-loop thread.


def record_route(call_id: str, replica: str) -> None:
    """Remember that the call ``call_id`` went to ``replica`` (a replica's ``unique_id``)."""
    with _lock:
        _routed[call_id] = replica
        while len(_routed) > MAX_TRACKED:
            _routed.popitem(last=False)


def routed_replica(call_id: str) -> str | None:
    """The replica the call ``call_id`` was routed to, or None if it was not routed (yet)."""
    with _lock:
        return _routed.get(call_id)
