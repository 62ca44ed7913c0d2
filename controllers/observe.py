"""Every read of Ray and Serve state goes through this module.

Serve's own view of replicas lags a SIGKILL by several seconds (see RAY_NOTES §2),
so the controller reads both Serve's per-replica state (from
:mod:`serve_apps.serve_state`) and each actor's liveness per Ray's GCS, and gets
them back as frozen snapshots of plain data that pure code can reason about. The
controller's step talks to the :class:`Observer` interface only, so a unit test
hands it a fake with a scripted cluster.

All of these calls block (they are HTTP or GCS requests): the loop runs them in a
worker thread. None of them make Serve handle calls, which must stay on the
actor's own event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import ray
from ray.util.state import get_actor, list_actors, list_nodes

from controllers.policies.vanish import VanishCause, VanishVerdict
from raymedic.keys import APP_NAME, SERVE_NAMESPACE
from raymedic.logs import get_logger
from serve_apps.serve_state import AppView, read_app_view

__all__ = ["ClusterState", "Observer", "RayObserver", "alive_replica_actors", "VanishCause", "vanish_cause",
           "INTENDED_EXITS"]

log = get_logger(__name__)

INTENDED_EXITS = ("RAY_KILL", "INTENDED_USER_EXIT", "INTENDED_SYSTEM_EXIT")
"""Death reasons of an actor stopped on purpose (by Serve, by raymedic, by its own exit)."""

_warned = False


@dataclass(frozen=True)
class ClusterState:
    """One read of the cluster: Serve's view of the application and the replica actors Ray reports alive.

    Attributes:
        view: Serve's view of the main application (None when it is not deployed).
        alive: Names of the ALIVE Serve replica actors (None when the state API is unavailable:
            liveness then comes from probes only).
    """

    view: AppView | None
    alive: frozenset[str] | None


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

    def read(self) -> ClusterState:
        """Serve's view first: a RUNNING replica in it is then in the live set unless it is dead.

        With ``deployments`` (member → its Serve deployment, read each time: a reload may change them) the
        view holds that model's members only, keyed by member name (:meth:`AppView.of_model`).
        """
        view = read_app_view(self.app)
        if view is not None and self._deployments is not None:
            view = view.of_model(self._deployments())
        alive = alive_replica_actors()
        return ClusterState(view, None if alive is None else frozenset(alive))

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
        if _node_dead(getattr(actor, "node_id", None)):
            return VanishCause(VanishVerdict.CRASH, f"NODE_DIED (stopped by Serve as unreachable): {detail[:120]}")
        return VanishCause(VanishVerdict.INTENDED, detail)
    return VanishCause(VanishVerdict.CRASH, detail)
