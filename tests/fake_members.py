"""A hand-written member client for the gateway's unit tests: replicas that behave as scripted.

What a Serve deployment handle is to :class:`serve_apps.gateway.fanout.FanOut`: ``predict``
sends a call (awaitable, cancellable) to a replica chosen the way raymedic's router
chooses, and ``routed_replica`` says where a call went. Replica behaviours wait on
the event loop's clock, so they run on ``tests/virtual_time.py`` in no real time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

__all__ = ["Behaviour", "answers", "fails", "hangs", "Sent", "FakeCall", "FakeMember", "Steering"]

Behaviour = Callable[[list[list[Any]], str], Awaitable[dict[str, Any]]]


def answers(after_s: float = 0.01, version: str = "v1") -> Behaviour:
    """A replica that answers after ``after_s``: each row's first value as the probability of class 1."""
    async def behave(rows: list[list[Any]], replica: str) -> dict[str, Any]:
        await asyncio.sleep(after_s)
        return {"probabilities": [[1 - r[0], r[0]] for r in rows], "replica": replica, "version": version}
    return behave


def fails(exc: BaseException, after_s: float = 0.01) -> Behaviour:
    async def behave(rows: list[list[Any]], replica: str) -> dict[str, Any]:
        await asyncio.sleep(after_s)
        raise exc
    return behave


def hangs() -> Behaviour:
    return answers(after_s=1e6)


@dataclass
class Sent:
    """One call the fan-out made, as the fake member saw it."""

    rows: list[list[Any]]
    call_id: str
    avoid: list[str]
    standby: list[str] | None
    replica: str
    at: float
    task: asyncio.Task = field(repr=False)

    @property
    def cancelled(self) -> bool:
        return self.task.cancelled()


class FakeCall:
    """An awaitable, cancellable call in flight (what a Serve DeploymentResponse is to the fan-out)."""

    def __init__(self, task: asyncio.Task) -> None:
        self._task = task

    def __await__(self):
        return self._task.__await__()

    def cancel(self) -> None:
        self._task.cancel()


class FakeMember:
    """A member whose replicas behave as scripted; routes like raymedic's router would.

    A call goes to the first replica (by id) neither avoided nor a standby, else to
    the first not avoided, else to the first: :class:`serve_apps.routing.AvoidingRouter`'s
    rule without its random choice. With ``routed=False`` no call is ever reported
    routed (a call stuck in the gateway's own queue).
    """

    def __init__(self, replicas: dict[str, Behaviour], *, routed: bool = True) -> None:
        self.replicas = replicas
        self.sent: list[Sent] = []
        self._routed = routed
        self._route: dict[str, str] = {}

    def predict(self, rows, *, call_id, avoid, standby):
        keep = [r for r in sorted(self.replicas) if r not in avoid]
        active = [r for r in keep if r not in (standby or ())]
        replica = (active or keep or sorted(self.replicas))[0]
        if self._routed:
            self._route[call_id] = replica
        task = asyncio.ensure_future(self.replicas[replica](rows, replica))
        self.sent.append(Sent(rows, call_id, list(avoid), standby, replica, asyncio.get_running_loop().time(), task))
        return FakeCall(task)

    def routed_replica(self, call_id):
        return self._route.get(call_id)


@dataclass
class Steering:
    avoid: dict[str, list[str]] = field(default_factory=dict)
    standby: dict[str, list[str]] = field(default_factory=dict)
