"""Coalescing small requests into shared member calls without making any of them wait for company.

Serve's ``@serve.batch`` holds the first request of a batch for ``batch_wait_timeout_s``
hoping others arrive, and forms batches before it takes a concurrency slot: at a low
rate every request pays the whole wait alone (2 ms of a 17 ms answer on the 2-core
bench machine, ``raymedic bench saturation --profile``), and under load each
lonely batch then queues for a slot anyway. :class:`EagerCoalescer` turns that
around: a request leaves at once (at the end of the event loop's current tick, so
requests that arrived together leave together) while fewer than ``max_concurrent``
group calls are in flight; requests arriving while every slot is busy wait, and all
of them (up to ``max_requests``) leave in one call the moment a slot frees. So the
member calls per second stop growing with the rate exactly when the machine is
busy, and an idle gateway adds no wait at all. Pure asyncio: no Ray.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["EagerCoalescer"]

Rows = list[list[Any]]


class EagerCoalescer:
    """A :data:`serve_apps.gateway.fanout.Coalescer`: call it with a group call to get a per-request call.

    Args:
        max_requests: the most requests one group call carries (``gateway.coalesce_requests``).
        max_concurrent: group calls in flight at once (``gateway.coalesce_concurrency``).

    Raises:
        ValueError: a bound below 1.
    """

    def __init__(self, *, max_requests: int, max_concurrent: int) -> None:
        if max_requests < 1 or max_concurrent < 1:
            raise ValueError(f"max_requests ({max_requests}) and max_concurrent ({max_concurrent}) must be >= 1")
        self.max_requests = max_requests
        self.max_concurrent = max_concurrent

    def __call__(self, group_call: Callable[[list[Rows]], Awaitable[list[Any]]]
                 ) -> Callable[[Rows], Awaitable[Any]]:
        return _Queue(group_call, self.max_requests, self.max_concurrent).submit


class _Queue:
    """One group call's waiting requests and calls in flight; only its event loop uses it."""

    def __init__(self, group_call: Callable[[list[Rows]], Awaitable[list[Any]]], max_requests: int,
                 max_concurrent: int) -> None:
        self._call = group_call
        self._max_requests = max_requests
        self._max_concurrent = max_concurrent
        self._waiting: deque[tuple[Rows, asyncio.Future]] = deque()
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    async def submit(self, rows: Rows) -> Any:
        """This request's share of the group call it leaves in."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiting.append((rows, fut))
        self._schedule(loop)
        return await fut

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._inflight < self._max_concurrent:
            self._scheduled = True
            loop.call_soon(self._depart, loop)

    def _depart(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a group call per free slot with the requests waiting (cancelled ones are dropped)."""
        self._scheduled = False
        while self._waiting and self._inflight < self._max_concurrent:
            group = []
            while self._waiting and len(group) < self._max_requests:
                rows, fut = self._waiting.popleft()
                if not fut.done():
                    group.append((rows, fut))
            if not group:
                break
            self._inflight += 1
            # A fresh context: the call must not carry the first request's Serve request context
            # (its id, route) for the whole group, as @serve.batch also unsets it.
            task = loop.create_task(self._run(group, loop), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[tuple[Rows, asyncio.Future]], loop: asyncio.AbstractEventLoop) -> None:
        try:
            got = await self._call([rows for rows, _ in group])
            if len(got) != len(group):
                raise RuntimeError(f"{len(group)} requests grouped, {len(got)} answers")
        except BaseException as exc:  # every waiting request gets the failure; none is left waiting forever
            for _, fut in group:
                if fut.done():
                    continue
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                else:
                    fut.cancel()
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, fut), answer in zip(group, got, strict=True):
                if not fut.done():
                    fut.set_result(answer)
        finally:
            self._inflight -= 1
            if self._waiting:
                self._schedule(loop)
