"""Every read of Ray and Serve state goes through this module.

Serve's own view of replicas lags a SIGKILL by several seconds (see RAY_NOTES §2),
so the controller reads both Serve's per-replica state (from
:mod:`serve_apps.serve_state`) and each actor's liveness per Ray's GCS, and gets
them back as frozen snapshots of plain data that pure code can reason about. A
replica Serve still lists RUNNING whose actor that read shows dead has its death
time read once (:func:`death_time`: the incident's onset), so a step pays for it only
when a replica has just died, never as a second poll. The
controller's step talks to the :class:`Observer` interface only, so a unit test
hands it a fake with a scripted cluster.

All of these calls block (they are HTTP or GCS requests): the loop runs them in a
worker thread. None of them make Serve handle calls, which must stay on the
actor's own event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import ray
from ray.util.state import get_actor, list_actors, list_nodes, list_workers

from controllers.policies.vanish import VanishCause, VanishVerdict
from raymedic.keys import APP_NAME, SERVE_NAMESPACE
from raymedic.logs import get_logger
from serve_apps.serve_state import AppView, read_app_view

__all__ = ["ClusterState", "Observer", "RayObserver", "alive_replica_actors", "VanishCause", "vanish_cause",
           "death_time", "INTENDED_EXITS"]

log = get_logger(__name__)

INTENDED_EXITS = ("RAY_KILL", "INTENDED_USER_EXIT", "INTENDED_SYSTEM_EXIT")
"""Death reasons of an actor stopped on purpose (by Serve, by raymedic, by its own exit)."""
DEATHS_KEPT = 256
"""Death times remembered per observer (actor id → time): each dead actor's record is read once, and a
controller that runs for months sees thousands of replicas die."""
DEATH_READ_TIMEOUT_S = 2
"""A death record's read, at most: the observation waits for it (the crash is detected meanwhile by the
liveness read either way), and the onset falls back to when the death was seen if the GCS is slow."""

_warned = False


@dataclass(frozen=True)
class ClusterState:
    """One read of the cluster: Serve's view of the application and the replica actors Ray reports alive.

    Attributes:
        view: Serve's view of the main application (None when it is not deployed).
        alive: Names of the ALIVE Serve replica actors (None when the state API is unavailable:
            liveness then comes from probes only).
        died_at: Actor name → when Ray's GCS says it died (Unix seconds), for the replicas Serve lists
            RUNNING that are not alive, where their death record was read.
    """

    view: AppView | None
    alive: frozenset[str] | None
    died_at: Mapping[str, float] = field(default_factory=dict)


class Observer(Protocol):
    """What the controller's step reads from the cluster (blocking calls; run them in a thread)."""

    def read(self) -> ClusterState:
        """Serve's view and the actors' liveness, read now."""
        ...

    def vanish_cause(self, actor_id: str) -> VanishCause:
        """Why the actor of a replica that left Serve's view died (or ``unknown``: ask again)."""
        ...


class RayObserver:
    """The :class:`Observer` over a live Ray cluster (the controller actor's own)."""

    def __init__(self, app: str = APP_NAME, *, deployments: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.app = app
        self._deployments = deployments
        self._died: OrderedDict[str, float | None] = OrderedDict()  # actor id → its GCS death time (None: unread)

    def read(self) -> ClusterState:
        """Serve's view first: a RUNNING replica in it is then in the live set unless it is dead.

        With ``deployments`` (member → its Serve deployment, read each time: a reload may change them) the
        view holds that model's members only, keyed by member name (:meth:`AppView.of_model`).
        """
        view = read_app_view(self.app)
        if view is not None and self._deployments is not None:
            view = view.of_model(self._deployments())
        alive = alive_replica_actors()
        if alive is None:
            return ClusterState(view, None)
        return ClusterState(view, frozenset(alive), self._death_times(view, alive))

    def _death_times(self, view: AppView | None, alive: set[str]) -> dict[str, float]:
        """Actor name → GCS death time of the replicas ``view`` lists RUNNING that are not in ``alive``;
        each actor's record is read once (a failed read is not retried: the onset is then when it was seen)."""
        out: dict[str, float] = {}
        for d in (view.deployments.values() if view is not None else ()):
            for r in d.replicas:
                if r.state != "RUNNING" or not r.actor_name or not r.actor_id or r.actor_name in alive:
                    continue
                if r.actor_id not in self._died:
                    self._died[r.actor_id] = death_time(r.actor_id)
                    while len(self._died) > DEATHS_KEPT:
                        self._died.popitem(last=False)
                at = self._died[r.actor_id]
                if at is not None:
                    out[r.actor_name] = at
        return out

    def vanish_cause(self, actor_id: str) -> VanishCause:
        """See :func:`vanish_cause`."""
        return vanish_cause(actor_id)


def _state_address() -> str:
    """This cluster's GCS address, named explicitly: left to itself the state API looks for "the"
    local cluster (RAY_ADDRESS, ``/tmp/ray/ray_current_cluster``), which can be another cluster on
    the same host or a stale file from one that is gone (and then hangs on connection retries)."""
    return ray.get_runtime_context().gcs_address


def alive_replica_actors() -> set[str] | None:
    """Names of the Serve replica actors Ray's GCS reports ALIVE (None if the state API is unavailable).

    A SIGKILLed replica is DEAD here within a fraction of a second, while Serve
    keeps reporting it RUNNING until its next health check.
    """
    try:
        actors = list_actors(address=_state_address(), filters=[("ray_namespace", "=", SERVE_NAMESPACE),
                                                                ("state", "=", "ALIVE")], limit=10_000,
                             raise_on_missing_output=False, timeout=5)
    except Exception as exc:
        global _warned
        if not _warned:
            _warned = True
            log.warning("Ray state API unavailable (%r); replica liveness comes from probes only", exc)
        return None
    return {a.name for a in actors if a.name}


def _node_dead(node_id: str | None) -> bool:
    if not node_id:
        return False
    try:
        nodes = list_nodes(address=_state_address(), filters=[("node_id", "=", node_id)],
                           raise_on_missing_output=False, timeout=5)
    except Exception:
        return False
    return any(n.state == "DEAD" for n in nodes)


def _actor_end(actor_id: str) -> float | None:
    """When the GCS marked the actor dead (its actor table's ``end_time``, Unix seconds), or None.

    Ray 2.x's public state API gives an actor no death time (``ActorState`` has no ``end_time_ms``), but the
    GCS's actor table holds it, set the moment the GCS declares the actor DEAD — the moment it leaves the
    ALIVE set :func:`alive_replica_actors` reads, so it is never later than the controller's detection.
    ``ray._private.state.actors`` reads it in one GCS call (a DeveloperAPI-level module: if a Ray upgrade moves
    it, this returns None and :func:`_worker_end` dates the crash instead)."""
    try:
        from ray._private import state as ray_state  # lazy: private, and only on a death

        info = ray_state.actors(actor_id=actor_id)
    except Exception:
        return None
    end = info.get("EndTime") if isinstance(info, dict) and info.get("State") == "DEAD" else None
    return end / 1000.0 if isinstance(end, (int, float)) and end > 0 else None


def _worker_end(actor: object) -> float | None:
    """When the worker process of a dead actor exited, per Ray's GCS (Unix seconds), or None.

    The public fallback for :func:`_actor_end`: ``list_workers(detail=True)`` reports each dead worker's
    ``end_time_ms``, written when its raylet reported the process gone (a SIGKILL: tens of milliseconds
    after the GCS marked the actor dead, so it can be later than a fast detection; the caller caps it at
    ``now``). The actor's pid and node find its worker; the newest dead one with that pid is it (a pid
    reused later on the node belongs to a live worker, or a later death)."""
    pid, node_id = getattr(actor, "pid", None), getattr(actor, "node_id", None)
    if not pid:
        return None
    filters = [("pid", "=", pid)] + ([("node_id", "=", node_id)] if node_id else [])
    try:
        workers = list_workers(address=_state_address(), filters=filters, detail=True,
                               timeout=DEATH_READ_TIMEOUT_S, raise_on_missing_output=False)
    except Exception:
        return None
    ends = [w.end_time_ms for w in workers
            if not w.is_alive and isinstance(w.end_time_ms, (int, float)) and w.end_time_ms > 0]
    return max(ends) / 1000.0 if ends else None


def death_time(actor_id: str) -> float | None:
    """When Ray's GCS says the actor died (Unix seconds: :func:`_actor_end`, else its worker's exit,
    :func:`_worker_end`), or None: not dead (yet), or not readable."""
    at = _actor_end(actor_id)
    if at is not None:
        return at
    try:
        actor = get_actor(id=actor_id, address=_state_address(), timeout=DEATH_READ_TIMEOUT_S)
    except Exception:
        return None
    return _worker_end(actor) if actor is not None and actor.state == "DEAD" else None


def vanish_cause(actor_id: str) -> VanishCause:
    """Tell a crashed replica from one stopped on purpose, from its actor's death cause.

    Serve drops a replica whose process died from its view within a second, often
    before a poll sees it; the actor's death cause tells a crash (e.g. SIGKILL,
    "WORKER_DIED", "NODE_DIED") from a replica Serve or raymedic stopped on purpose
    ("RAY_KILL"). A replica killed on purpose whose node is dead counts as lost with
    its node: Serve kills the replicas on an unreachable node before the GCS marks
    the node dead, so the death cause alone would call the loss intended.
    """
    try:
        actor = get_actor(id=actor_id, address=_state_address(), timeout=5)
    except Exception as exc:
        return VanishCause(VanishVerdict.UNKNOWN, f"actor lookup failed: {type(exc).__name__}")
    if actor is None or actor.state != "DEAD":
        return VanishCause(VanishVerdict.UNKNOWN, f"actor is {getattr(actor, 'state', 'not found')}")
    ctx = (actor.death_cause or {}).get("actor_died_error_context") or {}
    reason = str(ctx.get("reason", "UNKNOWN"))
    detail = f"{reason}: {str(ctx.get('error_message', ''))[:160]}"
    if reason in INTENDED_EXITS:
        if not _node_dead(getattr(actor, "node_id", None)):
            return VanishCause(VanishVerdict.INTENDED, detail)  # stopped on purpose: no incident to date
        detail = f"NODE_DIED (stopped by Serve as unreachable): {detail[:120]}"
    # A crash: its death time dates the incident (read only now, not for every replica stopped on purpose).
    return VanishCause(VanishVerdict.CRASH, detail, _actor_end(actor_id) or _worker_end(actor))
