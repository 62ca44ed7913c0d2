"""In-place version swaps: every running replica of a member loads another version without a restart.

A promotion or rollback moves the registry's ``champion`` alias, then asks each
RUNNING replica to load the new version (``Member.load_version``), addressed one
by one through the router's ``target`` keyword, the same path as a probe. No
process restarts, so the new version serves within a second. A replica that does
not confirm within ``swap_timeout_s`` is restarted instead: Serve's replacement
loads the champion alias, which already names the new version.

Serve's constraint: handle calls go through handles on the controller actor's own
event loop (Serve's fast path), never from a worker thread, so the calls here are
awaited on the loop and only the restart (a blocking kill) runs in a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Protocol

from ray import serve

from controllers.outcome import Outcome
from raymedic.keys import APP_NAME
from raymedic.logs import get_logger

__all__ = ["Swapper", "VersionSwapper"]

log = get_logger(__name__)


class Swapper(Protocol):
    """What callers need of a swapper (a fake in tests)."""

    async def swap(self, versions: dict[str, str], *, only: str | None = None) -> dict[str, Any]:
        """Have running replicas load these versions in place; what each replica did."""
        ...


class VersionSwapper:
    """Swaps versions in place on a member's running replicas, restarting those that fail to.

    Args:
        replicas: A member's RUNNING replica ids (the controller's latest Serve view).
        restart: Restarts one replica (``(member, replica) → Outcome``); see
            :meth:`controllers.actuators.RayActuators.restart_replica`.
        timeout_s: The current ``controller.swap_timeout_s``.
        handle_of: A member's deployment handle in the main application (a fake in tests).
    """

    def __init__(self, *, replicas: Callable[[str], list[str]],
                 restart: Callable[[str, str], Awaitable[Outcome]], timeout_s: Callable[[], float],
                 handle_of: Callable[[str], Any] | None = None) -> None:
        self._replicas = replicas
        self._restart = restart
        self._timeout_s = timeout_s
        self._handle_of = handle_of or (lambda member: serve.get_deployment_handle(member, app_name=APP_NAME))

    async def swap(self, versions: dict[str, str], *, only: str | None = None) -> dict[str, Any]:
        """Every RUNNING replica of each member in ``versions`` loads its version in place, all at once.

        ``only``: that replica alone (one found serving another version). Returns what each
        replica did, ``{"member/replica": {"version", "outcome"}}``, for the audit.
        """
        timeout = self._timeout_s()
        calls: list[tuple[str, str, Any]] = []
        for member, version in versions.items():
            handle = self._handle_of(member)
            for rid in self._replicas(member):
                if only is not None and rid != only:
                    continue
                calls.append((member, rid, handle.load_version.remote(version, target=rid)))

        async def one(member: str, rid: str, response: Any) -> tuple[str, str]:
            try:
                out = await asyncio.wait_for(response, timeout)
                return out["version"], "ok"
            except Exception as exc:
                response.cancel()
                outcome = await self._restart(member, rid)
                if not outcome.ok:
                    log.warning("could not restart replica %s of %s after a failed swap: %s", rid, member, outcome)
                return versions[member], f"restarted ({type(exc).__name__})"

        done = await asyncio.gather(*(one(m, r, resp) for m, r, resp in calls))
        return {f"{m}/{r}": {"version": v, "outcome": o} for (m, r, _), (v, o) in zip(calls, done)}
