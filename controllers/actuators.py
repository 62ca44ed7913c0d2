"""Every side effect the controller's loop has on replicas, behind one small interface.

An actuator re-checks the world where it can (a replica already gone needs no
kill: ``"ok: already gone"``), never raises into the loop, and returns an
:class:`~controllers.outcome.Outcome` whose text is what the audit records.
Inside, a failure is raised as :class:`~raymedic.errors.TemporaryError` or
:class:`~raymedic.errors.PermanentError`; the edge of each public method turns
it into an outcome value. Blocking Ray calls run in a worker thread; Serve handle
calls (the swaps) stay on the actor's own event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Protocol

import ray
from ray.exceptions import GetTimeoutError, RaySystemError

from controllers.models.swap import Swapper
from controllers.nodes import drain_node
from controllers.outcome import Outcome, error_text
from raymedic.errors import PermanentError, TemporaryError
from raymedic.keys import APP_NAME, SERVE_NAMESPACE, replica_actor_name
from raymedic.logs import get_logger

__all__ = ["Actuators", "RayActuators", "kill_actor"]

log = get_logger(__name__)

RETRY_AFTER_S = 1.0
"""How long a kill that failed for a reason that may pass (the GCS busy or unreachable) should wait."""


class Actuators(Protocol):
    """What the controller's step does to replicas."""

    async def restart_replica(self, member: str, replica: str, *, actor_name: str | None = None) -> Outcome:
        """Kill the replica's actor so Serve replaces it."""
        ...

    def swap_stale(self, member: str, replica: str, *, served: str, champion: str) -> None:
        """Have a replica found serving another version swap to the champion (in the background)."""
        ...

    async def drain_gpu_node(self, node_id: str, replicas: list[tuple[str, str]]) -> Outcome:
        """Move the GPU members' ``replicas`` (member, replica) off ``node_id``, whose device keeps failing."""
        ...


def _is_head_node(node_id: str) -> bool:
    """Whether ``node_id`` is the cluster's head (blocking: reads Ray's node table)."""
    return any(n.get("NodeID") == node_id and "node:__internal_head__" in (n.get("Resources") or {})
               for n in ray.nodes())


def _kill(actor_name: str) -> Outcome:
    """Kill one replica actor by name (blocking). Serve then starts a replacement."""
    try:
        try:
            handle = ray.get_actor(actor_name, namespace=SERVE_NAMESPACE)
        except ValueError:
            return Outcome.done("ok: already gone")
        try:
            ray.kill(handle, no_restart=True)
        except (GetTimeoutError, RaySystemError, ConnectionError, TimeoutError) as exc:
            raise TemporaryError(error_text(exc), delay_s=RETRY_AFTER_S) from exc
        except Exception as exc:
            raise PermanentError(error_text(exc)) from exc
        return Outcome.done("ok")
    except Exception as exc:  # the edge: an outcome, never an exception
        return Outcome.from_error(exc)


async def kill_actor(actor_name: str) -> Outcome:
    """Kill a replica actor from the event loop (the blocking calls run in a worker thread)."""
    try:
        return await asyncio.to_thread(_kill, actor_name)
    except Exception as exc:  # e.g. the thread pool is shutting down
        return Outcome.from_error(exc)


class RayActuators:
    """The :class:`Actuators` over a live cluster.

    Args:
        swapper: Swaps versions in place (only :meth:`swap_stale` uses it).
        record: Audit one record: ``record(kind, target, evidence=..., action=..., outcome=...)``.
        app: The Serve application whose replicas are acted on.
        kill: Kills an actor by name (a fake in tests).
        deployment_of: A member's Serve deployment (``RaymedicConfig.deployment_of``: ``MODEL.MEMBER`` for a
            model served beside the first).
    """

    def __init__(self, *, swapper: Swapper | None = None, record: Callable[..., Any] | None = None,
                 app: str = APP_NAME, kill: Callable[[str], Awaitable[Outcome]] = kill_actor,
                 deployment_of: Callable[[str], str] = lambda member: member) -> None:
        self.swapper = swapper
        self._deployment_of = deployment_of
        self._record = record
        self._app = app
        self._kill = kill
        self._stale: dict[str, asyncio.Task] = {}  # replicas being swapped to the champion's version

    async def restart_replica(self, member: str, replica: str, *, actor_name: str | None = None) -> Outcome:
        """Kill the replica's actor (``actor_name`` from Serve's view, else Serve's naming rule)."""
        return await self._kill(actor_name or replica_actor_name(self._app, self._deployment_of(member), replica))

    async def drain_gpu_node(self, node_id: str, replicas: list[tuple[str, str]]) -> Outcome:
        """Move GPU members off ``node_id``, whose device keeps failing, by draining the node through Ray.

        Restarting the replicas would not help: Serve would place the replacements on the same node, on
        the same failing device, since a deployment cannot exclude one node without a redeploy (which
        restarts every replica). Ray drains nodes, not devices, so the whole node is drained — the
        node-pressure mechanism (:func:`controllers.nodes.drain_node`): Serve starts each replica's
        replacement on another node before it stops the old one. The head node is never drained (it
        holds the GCS, Serve's controller and this one): there the decision stays a proposal.
        """
        moved = ", ".join(f"{m}/{r}" for m, r in replicas) or "none running now"
        try:
            head = await asyncio.to_thread(_is_head_node, node_id)
        except Exception as exc:  # the edge: an outcome, never an exception
            return Outcome.from_error(exc)
        if head:
            return Outcome.done(f"proposed: node {node_id} is the head node, which is never drained; move its GPU "
                                f"replicas ({moved}) by hand, e.g. cordon the device")
        if not replicas:
            return Outcome.done(f"ok: no GPU replica on node {node_id} now; nothing to move")
        out = await asyncio.to_thread(drain_node, node_id, f"raymedic: its GPU keeps failing ({moved})")
        if out.text != "ok":
            return out
        return Outcome.done(f"ok: node {node_id} draining; Serve moves {moved} (and the node's other replicas) "
                            "to other nodes, replacement first")

    def swap_stale(self, member: str, replica: str, *, served: str, champion: str) -> None:
        """A replica serves another version than the champion outside a promotion (e.g. it read the
        alias just before it moved): have it swap, as a promotion would have. One swap per replica
        at a time; its outcome is audited as ``stale-version``."""
        if replica in self._stale or self.swapper is None:
            return
        swapper = self.swapper

        async def swap() -> None:
            try:
                done = await swapper.swap({member: champion}, only=replica)
                if self._record is not None:
                    self._record("stale-version", f"{member}/{replica}",
                                 evidence={"served": served, "champion": champion}, action="swap",
                                 outcome=json.dumps(done.get(f"{member}/{replica}")))
            except Exception:
                log.exception("could not swap stale replica %s/%s to %s; the next probe tries again",
                              member, replica, champion)
            finally:
                self._stale.pop(replica, None)

        self._stale[replica] = asyncio.get_running_loop().create_task(swap())
