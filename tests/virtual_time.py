"""An asyncio event loop on a virtual clock, for unit tests of timing rules (deadlines, hedges, periods).

Code under test keeps using ``asyncio.sleep``, ``asyncio.wait(timeout=...)`` and
``loop.time()``; on this loop, whenever nothing is ready to run, the clock jumps
straight to the next scheduled timer instead of waiting for it. A test of "a call
still unanswered after 0.25 s is hedged, one unanswered after 1 s times out" then
runs in microseconds, the same way every time, whatever else the machine is doing.

Only for code that waits on timers and futures: real I/O or threads
(``asyncio.to_thread``) would see the clock run ahead of them.

>>> async def late():
...     loop = asyncio.get_running_loop()
...     t0 = loop.time()
...     await asyncio.sleep(30)
...     return loop.time() - t0
>>> run(late())
30.0
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any, Awaitable, TypeVar

__all__ = ["VirtualTimeLoop", "run"]

T = TypeVar("T")


class _InstantSelector(selectors.DefaultSelector):
    """A selector that never blocks and tells the loop how long it would have waited."""

    def __init__(self, loop: "VirtualTimeLoop") -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self._loop.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` advances only when every task waits on a timer."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(selector=_InstantSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the loop does this itself when it would otherwise sleep)."""
        self._now += seconds


def run(coro: Awaitable[T]) -> T:
    """Run ``coro`` to completion on a fresh virtual-time loop (like ``asyncio.run``)."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
