"""Every read of Ray and Serve state goes through this module.

Serve's own view of replicas (``serve.status()``) lags a SIGKILL by several
seconds (see RAY_NOTES §2), so callers get both Serve's per-replica state and the
actor's liveness, as frozen snapshots of plain data that pure code can reason about.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["alive_replica_actors", "VanishCause", "vanish_cause"]

log = logging.getLogger(__name__)


_warned = False


def _state_address() -> str:
    """This cluster's GCS address, named explicitly: left to itself the state API looks for "the"
    local cluster (RAY_ADDRESS, ``/tmp/ray/ray_current_cluster``), which can be another cluster on
    the same host or a stale file from one that is gone (and then hangs on connection retries)."""
    import ray

    return ray.get_runtime_context().gcs_address


def alive_replica_actors() -> set[str] | None:
    """Names of the Serve replica actors Ray's GCS reports ALIVE (None if the state API is unavailable).

    A SIGKILLed replica is DEAD here within a fraction of a second, while Serve
    keeps reporting it RUNNING until its next health check.
    """
    from ray.util.state import list_actors

    try:
        actors = list_actors(address=_state_address(), filters=[("ray_namespace", "=", "serve"),
                                                                ("state", "=", "ALIVE")], limit=10_000,
                             raise_on_missing_output=False, timeout=5)
    except Exception as exc:
        global _warned
        if not _warned:
            _warned = True
            log.warning("Ray state API unavailable (%r); replica liveness comes from probes only", exc)
        return None
    return {a.name for a in actors if a.name}


INTENDED_EXITS = ("RAY_KILL", "INTENDED_USER_EXIT", "INTENDED_SYSTEM_EXIT")


@dataclass(frozen=True)
class VanishCause:
    """Why a replica actor left Serve's view: ``crash``, ``intended`` (stopped on purpose) or ``unknown``.

    ``unknown`` means "ask again": right after a node is lost, Serve may drop its
    replicas before the GCS has declared the node (and so the actors) dead.
    """

    verdict: str
    reason: str = ""


def _node_dead(node_id: str | None) -> bool:
    from ray.util.state import list_nodes

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
    from ray.util.state import get_actor

    try:
        actor = get_actor(id=actor_id, address=_state_address(), timeout=5)
    except Exception as exc:
        return VanishCause("unknown", f"actor lookup failed: {type(exc).__name__}")
    if actor is None or actor.state != "DEAD":
        return VanishCause("unknown", f"actor is {getattr(actor, 'state', 'not found')}")
    ctx = (actor.death_cause or {}).get("actor_died_error_context") or {}
    reason = str(ctx.get("reason", "UNKNOWN"))
    detail = f"{reason}: {str(ctx.get('error_message', ''))[:160]}"
    if reason in INTENDED_EXITS:
        if _node_dead(getattr(actor, "node_id", None)):
            return VanishCause("crash", f"NODE_DIED (stopped by Serve as unreachable): {detail[:120]}")
        return VanishCause("intended", detail)
    return VanishCause("crash", detail)
