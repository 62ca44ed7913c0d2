"""One piece of controller work run every period on the actor's event loop, apart from the healing step.

The disk keeper and the node keeper each read slow things (file listings, one agent per
node) on their own period: run inside the reconcile step they would delay replica healing.
Each runs as its own task; a failed period is logged with its traceback and the next one
runs (a keeper that raised once must not stop watching for good).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from raymedic.logs import get_logger

__all__ = ["Periodic"]

log = get_logger(__name__)


class Periodic:
    """``work()`` every ``period_s()`` seconds (read each time: a reloaded config applies at once).

    >>> async def demo():
    ...     runs = []
    ...     async def work():
    ...         runs.append(len(runs))
    ...         if len(runs) == 1:
    ...             raise RuntimeError("a bad period")  # logged; the next period runs
    ...     p = Periodic(work, lambda: 0.001, what="demo")
    ...     p.ensure_running(); p.ensure_running()  # one task
    ...     while len(runs) < 3:
    ...         await asyncio.sleep(0.001)
    ...     p.stop()
    ...     return runs[:3]
    >>> asyncio.run(demo())
    [0, 1, 2]
    """

    def __init__(self, work: Callable[[], Awaitable[Any]], period_s: Callable[[], float], *, what: str) -> None:
        self._work = work
        self._period_s = period_s
        self._what = what
        self._task: asyncio.Task | None = None

    def ensure_running(self) -> None:
        """Start the task on the running event loop (no-op outside one, or while it runs)."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        """Stop running it (the model is no longer served, the controller stops)."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                await self._work()
            except Exception:
                log.exception("%s failed; trying again next period", self._what)
            await asyncio.sleep(self._period_s())
