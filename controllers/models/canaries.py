"""Canary applications: each challenger on trial serves from a small Serve application of its own.

Deploying or deleting ``raymedic-canary-<member>`` never touches the main
application, so a trial cannot disturb the champions. A retrain job takes tens of
seconds and so does starting a replica on a busy machine, so while the job trains
each member's canary starts *warm* on its champion; a challenger that passes the
gate is then swapped into its warm replica in seconds instead of starting cold. A
controller restarted mid-job or mid-trial adopts the canaries its predecessor
left, or removes them.

Serve's constraint: handle calls go through handles on the controller actor's own
event loop (Serve's fast path), never from a worker thread. The blocking Serve
API calls here (``run_many``, ``status``, ``delete``) run in worker threads; the
one handle call (the swap into a warm replica) is awaited on the loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Protocol, Sequence

from ray import serve

from raymedic.config import RaymedicConfig
from raymedic.errors import PermanentError, TemporaryError
from raymedic.keys import canary_app_name
from raymedic.logs import get_logger
from serve_apps.application import build_canary_app

__all__ = ["Canaries", "ServeCanaries", "WARM_START_TIMEOUT_S", "SWAPPED_WARM", "STARTED_COLD"]

log = get_logger(__name__)

WARM_START_TIMEOUT_S = 180.0
"""How long a warm canary may take to be RUNNING before the challenger starts cold instead."""
SWAPPED_WARM = "swapped into the warm replica"
STARTED_COLD = "started"
"""How a challenger got its replica (the ``trial-started`` audit record's ``challengers``)."""


class Canaries(Protocol):
    """What the model healer does with canary applications."""

    def warm(self, members_versions: dict[str, str]) -> None:
        """Start each member's canary on the given (champion) version, without waiting (blocking call)."""
        ...

    def warm_in_background(self, champions: Callable[[], dict[str, str]]) -> None:
        """:meth:`warm` in a worker thread, started from the event loop (healing goes on meanwhile)."""
        ...

    async def warmed(self) -> None:
        """Wait until the background warm start has been requested."""
        ...

    def cool(self, keep: Sequence[str]) -> None:
        """Remove the warm canaries of every member but ``keep`` (blocking call)."""
        ...

    def forget_warm(self) -> None:
        """No warm canary is usable any more (a trial took them, or failed)."""
        ...

    def adopt(self, *, job_running: bool, trial_running: bool) -> None:
        """After a controller restart: keep what the job or trial in progress uses, remove the rest."""
        ...

    async def start(self, member: str, version: str) -> str:
        """Put ``version`` on ``member``'s canary: swapped into the warm replica, or started cold."""
        ...

    def deploy(self, member: str, version: str) -> None:
        """Deploy ``member``'s canary serving ``version`` and wait until it runs (blocking call)."""
        ...

    def delete(self, members: Sequence[str]) -> None:
        """Remove these members' canary applications (blocking call; best effort)."""
        ...


class ServeCanaries:
    """:class:`Canaries` as Serve applications on this cluster.

    Args:
        cfg: The current configuration (members, model, the swap timeout).
        handle_of: A canary application's deployment handle (``(member, app) → handle``; a fake in tests).
    """

    def __init__(self, *, cfg: Callable[[], RaymedicConfig],
                 handle_of: Callable[[str, str], Any] | None = None) -> None:
        self._cfg = cfg
        self._handle_of = handle_of or (lambda member, app: serve.get_deployment_handle(member, app_name=app))
        self._warm: set[str] = set()  # members whose canary replica starts on the champion while a job runs
        self._warming: asyncio.Task | None = None  # starting them (in the background: healing goes on)

    def _app(self, member: str) -> str:
        """``member``'s canary application, named after its deployment: two models' members of one name
        never share one."""
        return canary_app_name(self._cfg().deployment_of(member))

    def _target(self, member: str, version: str) -> Any:
        """``member``'s canary application serving ``version`` (no HTTP route)."""
        return serve.RunTarget(build_canary_app(self._cfg().model_dump(mode="json"), member, version),
                               name=self._app(member), route_prefix=None)

    def deploy(self, member: str, version: str) -> None:
        """Deploy it and wait until it runs."""
        serve.run_many([self._target(member, version)])

    def warm(self, members_versions: dict[str, str]) -> None:
        """Start every member's canary replica on its champion now, without waiting for it.

        A member whose challenger fails the gate has its warm replica removed with the job's verdict.
        """
        try:
            targets = [self._target(m, v) for m, v in members_versions.items()]
            serve.run_many(targets, wait_for_applications_running=False)
            self._warm = set(members_versions)
        except Exception as exc:  # the trial will start its challengers cold
            log.warning("could not start warm canary replicas: %r", exc)

    def warm_in_background(self, champions: Callable[[], dict[str, str]]) -> None:
        """Resolve the champions and start their warm canaries in a worker thread."""
        def run() -> None:
            try:
                versions = champions()
            except Exception as exc:  # the trial will start its challengers cold
                log.warning("could not start warm canary replicas: %r", exc)
                return
            self.warm(versions)

        self._warming = asyncio.get_running_loop().create_task(asyncio.to_thread(run))

    async def warmed(self) -> None:
        """Wait for the warm canaries' start to have been requested (a job outlasts it by far)."""
        if self._warming is not None:
            await asyncio.gather(self._warming, return_exceptions=True)
            self._warming = None

    def cool(self, keep: Sequence[str]) -> None:
        """Remove the warm canary replicas of every member but ``keep``."""
        drop = sorted(self._warm - set(keep))
        self._warm &= set(keep)
        if drop:
            self.delete(drop)

    def forget_warm(self) -> None:
        """The warm replicas were taken by a trial (or the trial failed): none is warm any more."""
        self._warm = set()

    def adopt(self, *, job_running: bool, trial_running: bool) -> None:
        """Canary applications left by the controller before are the running job's warm replicas,
        the running trial's challengers, or leftovers to remove."""
        try:
            apps = set(serve.status().applications)
        except Exception as exc:
            log.warning("could not list canary applications: %r", exc)
            return
        # this model's only: another model's canaries belong to its own controller
        present = {m.name for m in self._cfg().members if self._app(m.name) in apps}
        if job_running:
            self._warm = present
        elif not trial_running and present:
            self.delete(sorted(present))

    def _wait_running(self, member: str) -> None:
        """Wait (in a worker thread) until ``member``'s warm canary application is RUNNING.

        Raises:
            PermanentError: it failed to deploy, is gone or being deleted.
            TemporaryError: it is not running after ``WARM_START_TIMEOUT_S``.
        """
        name = self._app(member)
        deadline = time.monotonic() + WARM_START_TIMEOUT_S
        while True:
            app = serve.status().applications.get(name)
            state = str(getattr(app, "status", "")) if app is not None else "MISSING"
            if state.endswith("RUNNING"):
                return
            if state.endswith(("DEPLOY_FAILED", "MISSING", "DELETING")):
                raise PermanentError(f"warm canary of {member} is {state}")
            if time.monotonic() > deadline:
                raise TemporaryError(f"warm canary of {member} is {state}", delay_s=0.0)
            time.sleep(0.5)

    async def start(self, member: str, version: str) -> str:
        """The challenger on its own replica: the warm one swapped in place if there is one (the call
        goes through a handle on this event loop, as Serve's fast path requires), else a cold start."""
        if member in self._warm:
            try:
                await asyncio.to_thread(self._wait_running, member)
                handle = self._handle_of(member, self._app(member))
                out = await asyncio.wait_for(handle.load_version.remote(version),
                                             self._cfg().controller.swap_timeout_s)
                if out.get("version") != version:
                    raise PermanentError(f"it serves {out.get('version')}, not {version}")
                return SWAPPED_WARM
            except Exception as exc:
                log.warning("warm canary of %s not usable (%r): starting it cold", member, exc)
        await asyncio.to_thread(self.deploy, member, version)
        return STARTED_COLD

    def delete(self, members: Sequence[str]) -> None:
        """Remove each member's canary application without waiting; a failure is logged."""
        for m in members:
            try:
                serve.delete(self._app(m), _blocking=False)
            except Exception as exc:
                log.warning("could not delete canary application of %s: %r", m, exc)
