"""Member calls: a per-member deadline, retry, hedging, local ejection, coalescing.

Every ensemble member is asked for every request. One member's call carries a
deadline (``gateway.member_timeout_s``); a call that fails is retried at once on
another replica, and a call that reached a replica but is still unanswered after
``gateway.hedge_after_s`` is hedged on another replica (within the hedge budget, so
an overloaded service is not asked twice for everything), the first good answer
winning. So one bad replica costs a little latency, not a failed request. A
replica that failed, timed out or lost a hedge is ejected locally for
``gateway.eject_s``; together with the controller's avoid list it is routed
around (see :mod:`serve_apps.routing`). At most two calls per member per request.

The rules here see members only through :class:`MemberClient` (send a call, cancel
it, ask which replica it was routed to), so they unit-test on a virtual clock with
a hand-written fake; :class:`ServeMemberClient` is the Ray Serve implementation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

import numpy as np
from ray import serve

from raymedic.config import GatewayConfig
from raymedic.logs import get_logger
from raymedic.protocol import CallOutcome, actor_died
from serve_apps.gateway.coalesce import EagerCoalescer
from serve_apps.route_book import routed_replica
from serve_apps.telemetry import CallRecorder, HedgeBudget, LocalEjector

__all__ = ["MemberCall", "MemberClient", "ServeMemberClient", "ReplicaSteering", "MemberAnswer", "FanOut",
           "Coalescer", "serve_coalescer"]

log = get_logger(__name__)

Rows = list[list[Any]]


class MemberCall(Protocol):
    """One call in flight to a member: awaited for the member's answer, cancelled when it lost or is late."""

    def __await__(self) -> Any:
        """Wait for the answer: ``{"probabilities", "replica", "version", ...}``, or raise the call's error."""

    def cancel(self) -> None:
        """Give up on the call (a late or losing call must not keep a replica busy)."""


class MemberClient(Protocol):
    """How the fan-out reaches one member: the one place that knows it is a Ray Serve handle."""

    def predict(self, rows: Rows, *, call_id: str, avoid: list[str], standby: list[str] | None) -> MemberCall:
        """Send ``rows`` to a replica not in ``avoid`` (a ``standby`` replica only when no other is
        left), remembering under ``call_id`` which replica the call went to."""

    def routed_replica(self, call_id: str) -> str | None:
        """The replica the call ``call_id`` was routed to, or None while it waits to be routed."""


class ServeMemberClient:
    """A member's Serve deployment handle as a :class:`MemberClient`.

    raymedic's router (:class:`serve_apps.routing.AvoidingRouter`) reads ``call_id``,
    ``avoid`` and ``standby`` from the call's keyword arguments in this process and
    records the routing decision, so a timeout can be charged to the replica that
    never answered.
    """

    def __init__(self, handle: Any, *, timed: bool = False) -> None:
        self._handle = handle
        self._timed = timed

    def predict(self, rows: Rows, *, call_id: str, avoid: list[str], standby: list[str] | None) -> MemberCall:
        """Send ``rows`` through the member handle (a Serve ``DeploymentResponse``: awaitable, cancellable);
        ``timed`` (``gateway.profile``) asks the replica for its inference time too."""
        if self._timed:
            return self._handle.predict.remote(rows, call_id=call_id, avoid=avoid, standby=standby, timed=True)
        return self._handle.predict.remote(rows, call_id=call_id, avoid=avoid, standby=standby)

    def routed_replica(self, call_id: str) -> str | None:
        """The replica raymedic's router chose for ``call_id`` in this process, if it chose one yet."""
        return routed_replica(call_id)


class ReplicaSteering(Protocol):
    """The controller's last word on replicas: which to avoid and which it holds out of traffic."""

    avoid: Mapping[str, Sequence[str]]
    """member → replicas the controller flagged (routed around unless nothing else is left)."""
    standby: Mapping[str, Sequence[str]]
    """member → healthy replicas held out of traffic (used only when every other one is avoided)."""


@dataclass
class MemberAnswer:
    """One member's answer to one request (or to a coalesced group of requests).

    Attributes:
        probabilities: one row of class probabilities per request row.
        replica: the replica that answered.
        version: the member version that answered (each answer names its own: a
            promotion swaps replicas one by one).
        latency_s: how long the winning call took.
        attempts: calls made for it (1, or 2 after a retry or hedge).
        infer_s: the replica's own inference time, when it was asked for it (``gateway.profile``).
        call_s: the winning call's round trip on ``time.perf_counter`` (``gateway.profile``: the event
            loop's clock, which ``latency_s`` reads, ticks in whole milliseconds under uvloop).
    """

    probabilities: np.ndarray
    replica: str
    version: str
    latency_s: float
    attempts: int
    infer_s: float | None = None
    call_s: float | None = None

    def rows(self, start: int, stop: int) -> "MemberAnswer":
        """This answer for rows ``start:stop`` of a coalesced call (each request gets its own rows)."""
        return MemberAnswer(self.probabilities[start:stop], self.replica, self.version, self.latency_s,
                            self.attempts, self.infer_s, self.call_s)


GroupCall = Callable[[list[Rows]], Awaitable[list[dict[str, MemberAnswer]]]]
"""Several requests' rows in, each request's member answers out (in order)."""

Coalescer = Callable[[GroupCall], Callable[[Rows], Awaitable[dict[str, MemberAnswer]]]]
"""Turns a group call into a per-request call that groups requests in flight together (``serve.batch``)."""


def serve_coalescer(settings: GatewayConfig) -> Coalescer:
    """The gateway's :data:`Coalescer` for its ``coalesce_*`` settings: with ``coalesce_wait_s`` 0 (the
    default) an :class:`~serve_apps.gateway.coalesce.EagerCoalescer` (no request waits while a call slot is
    free), else Serve's ``@serve.batch``, which holds each group that long for company.

    Args:
        settings: the gateway config (``coalesce_requests``, ``coalesce_wait_s``, ``coalesce_concurrency``).
    """
    if settings.coalesce_wait_s == 0:
        return EagerCoalescer(max_requests=settings.coalesce_requests,
                              max_concurrent=settings.coalesce_concurrency)
    return serve.batch(max_batch_size=settings.coalesce_requests, batch_wait_timeout_s=settings.coalesce_wait_s,
                       max_concurrent_batches=settings.coalesce_concurrency)


async def _await(call: Any) -> Any:
    return await call


class FanOut:
    """Asks every member for an answer within its deadline; only the event loop mutates its state.

    Args:
        clients: member name → its client.
        order: the members, in the ensemble's order.
        settings: the gateway config (deadline, hedge delay, coalescing).
        calls: where each call's outcome is recorded for the controller.
        ejector: this gateway's local ejections (a bad call ejects its replica for a while).
        hedges: the hedge budget.
        steering: the controller's avoid and standby lists, read at each call.
        coalesce: groups small requests in flight together (None: every request goes out alone).
        clock: wall-clock time for ejections (``time.time``).
    """

    def __init__(self, clients: Mapping[str, MemberClient], *, order: Sequence[str], settings: GatewayConfig,
                 calls: CallRecorder, ejector: LocalEjector, hedges: HedgeBudget, steering: ReplicaSteering,
                 coalesce: Coalescer | None = None, clock: Callable[[], float] = time.time) -> None:
        self._clients = dict(clients)
        self._order = list(order)
        self._settings = settings
        self._calls = calls
        self._ejector = ejector
        self._hedges = hedges
        self._steering = steering
        self._clock = clock

        async def coalesced(groups: list[Rows]) -> list[dict[str, MemberAnswer]]:
            return await self.together(groups)  # called with one request's rows; the coalescer groups them

        self._coalesced = coalesce(coalesced) if coalesce is not None else None

    async def answers(self, rows: Rows) -> dict[str, MemberAnswer]:
        """Every member's answer for ``rows`` (members that did not answer in time are left out).

        Small requests in flight together are coalesced into one call per member (see
        ``gateway.coalesce_*``): per-call costs (routing, serialisation, a task on the replica)
        are paid once per group instead of once per request, so the ensemble keeps up with
        the request rate on few cores.
        """
        gw = self._settings
        if self._coalesced is not None and gw.coalesce_requests > 1 and len(rows) <= gw.coalesce_rows:
            return await self._coalesced(rows)
        return await self.now(rows)

    async def now(self, rows: Rows) -> dict[str, MemberAnswer]:
        """Every member's answer for ``rows``, called at once without coalescing."""
        results = await asyncio.gather(*(self.call_member(m, rows) for m in self._order))
        return {m: r for m, r in zip(self._order, results) if r is not None}

    async def together(self, groups: list[Rows]) -> list[dict[str, MemberAnswer]]:
        """One call per member for several requests' rows; each request gets its own rows back."""
        if len(groups) == 1:
            return [await self.now(groups[0])]
        answers = await self.now([row for rows in groups for row in rows])
        out, start = [], 0
        for rows in groups:
            out.append({m: a.rows(start, start + len(rows)) for m, a in answers.items()})
            start += len(rows)
        return out

    def avoid_for(self, name: str, now: float) -> list[str]:
        """The replicas of member ``name`` to route around now: the controller's and this gateway's own."""
        return sorted(set(self._steering.avoid.get(name, ())) | set(self._ejector.ejected(name, now)))

    async def call_member(self, name: str, rows: Rows) -> MemberAnswer | None:
        """One member's answer within its deadline, or None past it.

        A failed call is retried at once on another replica; a call still unanswered
        after ``hedge_after_s`` is hedged on another replica and the first good answer
        wins. At most two calls per member per request.
        """
        client = self._clients[name]
        gw = self._settings
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + gw.member_timeout_s
        avoid = self.avoid_for(name, self._clock())
        # Standbys: the router uses them only when nothing else is left.
        standby = list(self._steering.standby.get(name) or ()) or None
        attempts: dict[asyncio.Future, tuple[str, float, MemberCall]] = {}
        sent: dict[asyncio.Future, float] = {}  # perf_counter at each send, for gateway.profile only

        def launch(extra: list[str]) -> None:
            call_id = uuid.uuid4().hex
            call = client.predict(rows, call_id=call_id, avoid=sorted(set(avoid) | set(extra)), standby=standby)
            fut = asyncio.ensure_future(_await(call))
            attempts[fut] = (call_id, loop.time(), call)
            if gw.profile:
                sent[fut] = time.perf_counter()

        def replica_of(fut: asyncio.Future) -> str | None:
            return client.routed_replica(attempts[fut][0])

        launch([])
        self._hedges.on_call()
        pending = set(attempts)
        tried: list[str] = []
        failed = False
        while pending:
            now = loop.time()
            if now >= deadline:
                break
            hedge_at = start + gw.hedge_after_s
            wait_until = deadline if len(attempts) >= 2 or now >= hedge_at else min(deadline, hedge_at)
            done, pending = await asyncio.wait(pending, timeout=max(0.0, wait_until - now),
                                               return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                call_id, t0, _ = attempts[fut]
                exc = fut.exception()
                if exc is None:
                    out = fut.result()
                    latency = loop.time() - t0
                    self._calls.finished(name, out["replica"], CallOutcome.OK, latency, was_started=False)
                    for other in pending:  # the hedge lost: that replica was slower than this one
                        other.cancel()
                        attempts[other][2].cancel()
                        slow = replica_of(other)
                        if slow and slow != out["replica"]:
                            self._calls.finished(name, slow, CallOutcome.HEDGED, loop.time() - attempts[other][1],
                                                 was_started=False)
                            self._ejector.eject(name, slow, self._clock())
                    return MemberAnswer(np.asarray(out["probabilities"]), out["replica"], out["version"],
                                        latency, len(attempts), out.get("infer_s"),
                                        time.perf_counter() - sent[fut] if fut in sent else None)
                failed = True
                replica = replica_of(fut)
                outcome = CallOutcome.DEAD if actor_died(exc) else CallOutcome.ERROR
                if replica:
                    tried.append(replica)
                    self._calls.finished(name, replica, outcome, loop.time() - t0, was_started=False)
                    self._ejector.eject(name, replica, self._clock())
                log.warning("member %s replica %s failed: %s: %s", name, replica or "?", type(exc).__name__,
                            str(exc)[:200])
            first = replica_of(next(iter(attempts)))
            # Hedge only a call that reached a replica: one not yet routed is stuck in this
            # process's own queue (overload), and a second call would only deepen it.
            if len(attempts) < 2 and loop.time() < deadline and (
                    failed or (first is not None and self._hedges.try_hedge())):
                launch([r for r in tried + ([first] if first else []) if r])
                pending = {f for f in attempts if not f.done()}
        for fut in pending:  # past the deadline
            fut.cancel()
            attempts[fut][2].cancel()
            replica = replica_of(fut)
            if replica:
                self._calls.finished(name, replica, CallOutcome.TIMEOUT, gw.member_timeout_s, was_started=False)
                self._ejector.eject(name, replica, self._clock())
            log.warning("member %s replica %s timed out after %.2f s", name, replica or "?", gw.member_timeout_s)
        return None
