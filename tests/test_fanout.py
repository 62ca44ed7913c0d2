"""The member fan-out's rules on a virtual clock, with a hand-written member client (no Ray).

A failed call is retried once on another replica, a late one hedged within the
budget, a call past the deadline leaves its member out; each outcome is recorded
for the controller and ejects the replica locally. Times below are virtual
(``tests/virtual_time.py``): the rules are checked against each other and against
the configured delays, never against a wall clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorDiedError

from raymedic.config import GatewayConfig
from raymedic.protocol import CallOutcome
from serve_apps.gateway.coalesce import EagerCoalescer
from serve_apps.gateway.fanout import FanOut, MemberAnswer, serve_coalescer
from serve_apps.telemetry import CallRecorder, HedgeBudget, LocalEjector
from tests.fake_members import FakeMember, Steering, answers, fails, hangs
from tests.virtual_time import run

NOW = 1000.0
"""The wall clock the fan-out's ejections see (fixed: ejection windows are telemetry's own tests)."""

ROWS = [[0.25, 0.5]]


@dataclass
class Rig:
    fanout: FanOut
    calls: CallRecorder
    ejector: LocalEjector
    hedges: HedgeBudget
    settings: GatewayConfig

    def outcomes(self) -> dict[str, dict[str, int]]:
        """replica key → the non-zero outcome counts recorded."""
        return {key: {o: st[o] for o in CallOutcome if st[o]}
                for key, st in self.calls.drain()["replicas"].items()}


def rig(members: dict[str, FakeMember], *, steering: Steering | None = None, hedges: HedgeBudget | None = None,
        coalesce=None, **settings: Any) -> Rig:
    gw = GatewayConfig(**settings)
    calls, ejector = CallRecorder(), LocalEjector(gw.eject_s)
    hedges = hedges or HedgeBudget(gw.hedge_budget)
    fanout = FanOut(members, order=list(members), settings=gw, calls=calls, ejector=ejector, hedges=hedges,
                    steering=steering or Steering(), coalesce=coalesce, clock=lambda: NOW)
    return Rig(fanout, calls, ejector, hedges, gw)


def empty_budget() -> HedgeBudget:
    budget = HedgeBudget(ratio=0.0, burst=1.0)
    assert budget.try_hedge()  # spend the only token
    return budget


def test_a_failed_call_is_retried_once_on_another_replica_and_its_replica_ejected():
    member = FakeMember({"r1": fails(RuntimeError("boom")), "r2": answers()})
    r = rig({"m": member}, hedges=empty_budget())  # a retry is not a hedge: it needs no budget
    answer = run(r.fanout.call_member("m", ROWS))
    assert answer is not None and answer.replica == "r2" and answer.attempts == 2
    assert [s.replica for s in member.sent] == ["r1", "r2"] and member.sent[1].avoid == ["r1"]
    assert r.outcomes() == {"m/r1": {"error": 1}, "m/r2": {"ok": 1}}
    assert r.ejector.ejected("m", NOW) == ["r1"]


def test_a_dead_replica_is_recorded_as_dead_not_as_an_error():
    member = FakeMember({"r1": fails(ActorDiedError()), "r2": answers()})
    r = rig({"m": member})
    assert run(r.fanout.call_member("m", ROWS)).replica == "r2"
    assert r.outcomes()["m/r1"] == {"dead": 1}


def test_two_failures_leave_the_member_out_after_two_calls():
    member = FakeMember({"r1": fails(RuntimeError("a")), "r2": fails(RuntimeError("b")), "r3": answers()})
    r = rig({"m": member})
    assert run(r.fanout.call_member("m", ROWS)) is None
    assert len(member.sent) == 2  # at most two calls per member per request
    assert r.outcomes() == {"m/r1": {"error": 1}, "m/r2": {"error": 1}}
    assert r.ejector.ejected("m", NOW) == ["r1", "r2"]


def test_a_late_call_is_hedged_and_the_first_good_answer_wins():
    member = FakeMember({"r1": answers(after_s=5.0), "r2": answers(after_s=0.05)})
    r = rig({"m": member})
    answer = run(r.fanout.call_member("m", ROWS))
    assert answer.replica == "r2" and answer.attempts == 2
    first, hedge = member.sent
    assert hedge.at - first.at >= r.settings.hedge_after_s and hedge.avoid == ["r1"]
    assert first.cancelled  # the loser does not keep its replica busy
    assert r.outcomes() == {"m/r1": {"hedged": 1}, "m/r2": {"ok": 1}}
    assert r.ejector.ejected("m", NOW) == ["r1"]


def test_the_primary_still_wins_when_it_answers_before_its_hedge():
    hedge_after = GatewayConfig().hedge_after_s
    member = FakeMember({"r1": answers(after_s=hedge_after * 1.2), "r2": answers(after_s=hedge_after * 2)})
    r = rig({"m": member})
    answer = run(r.fanout.call_member("m", ROWS))
    assert answer.replica == "r1" and answer.attempts == 2
    assert member.sent[1].cancelled
    assert r.outcomes() == {"m/r1": {"ok": 1}, "m/r2": {"hedged": 1}}


def test_past_the_deadline_the_member_is_left_out_and_the_calls_recorded_as_timeouts():
    slow = FakeMember({"r1": hangs(), "r2": hangs()})
    fast = FakeMember({"a": answers()})
    r = rig({"slow": slow, "fast": fast})
    got = run(r.fanout.now(ROWS))
    assert set(got) == {"fast"}
    assert all(s.cancelled for s in slow.sent) and len(slow.sent) == 2  # the primary and its hedge
    outcomes = r.outcomes()
    assert outcomes["slow/r1"] == {"timeout": 1} and outcomes["slow/r2"] == {"timeout": 1}
    assert r.ejector.ejected("slow", NOW) == ["r1", "r2"]


def test_no_hedge_without_budget():
    member = FakeMember({"r1": answers(after_s=GatewayConfig().hedge_after_s * 2), "r2": answers()})
    r = rig({"m": member}, hedges=empty_budget())
    answer = run(r.fanout.call_member("m", ROWS))
    assert answer.replica == "r1" and answer.attempts == 1 and len(member.sent) == 1


def test_a_call_not_yet_routed_is_not_hedged():
    """Unrouted means stuck in the gateway's own queue (overload): a second call would deepen it."""
    member = FakeMember({"r1": answers(after_s=GatewayConfig().hedge_after_s * 2), "r2": answers()}, routed=False)
    r = rig({"m": member})
    assert run(r.fanout.call_member("m", ROWS)).attempts == 1 and len(member.sent) == 1


def test_the_avoid_and_standby_lists_reach_the_client():
    member = FakeMember({"r1": answers(), "r3": answers(), "r4": answers(), "r5": answers()})
    r = rig({"m": member}, steering=Steering(avoid={"m": ["r3"]}, standby={"m": ["r4"]}))
    r.ejector.eject("m", "r5", NOW)  # this gateway's own ejection joins the controller's avoid list
    run(r.fanout.call_member("m", ROWS))
    assert member.sent[0].avoid == ["r3", "r5"] and member.sent[0].standby == ["r4"]
    other = FakeMember({"r1": answers()})
    run(rig({"o": other}).fanout.call_member("o", ROWS))
    assert other.sent[0].avoid == [] and other.sent[0].standby is None


def test_requests_called_together_each_get_their_own_rows_back():
    member = FakeMember({"r1": answers()})
    r = rig({"m": member})
    groups = [[[0.1, 0.0]], [[0.2, 0.0], [0.3, 0.0]], [[0.4, 0.0]]]
    out = run(r.fanout.together(groups))
    assert len(member.sent) == 1 and len(member.sent[0].rows) == 4  # one call for the group
    for rows, answer in zip(groups, out):
        np.testing.assert_allclose(answer["m"].probabilities[:, 1], [row[0] for row in rows])


class TickCoalescer:
    """Groups the requests that arrive in one event-loop turn (what ``serve.batch`` does over a short wait)."""

    def __init__(self) -> None:
        self.groups: list[int] = []

    def __call__(self, group_call):
        pending: list[tuple[list[list[Any]], asyncio.Future]] = []

        async def flush() -> None:
            batch = list(pending)
            pending.clear()
            self.groups.append(len(batch))
            try:
                got = await group_call([rows for rows, _ in batch])
                if len(got) != len(batch):
                    raise RuntimeError(f"{len(batch)} requests grouped, {len(got)} answers")
            except Exception as exc:  # fail every waiting request rather than leave one waiting forever
                for _, fut in batch:
                    fut.set_exception(exc)
                return
            for (_, fut), answer in zip(batch, got):
                fut.set_result(answer)

        async def one(rows: list[list[Any]]) -> dict[str, MemberAnswer]:
            fut = asyncio.get_running_loop().create_future()
            pending.append((rows, fut))
            if len(pending) == 1:
                asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(flush()))
            return await fut

        return one


def test_small_requests_in_flight_together_are_coalesced_and_answered_each_with_its_rows():
    member = FakeMember({"r1": answers()})
    coalescer = TickCoalescer()
    r = rig({"m": member}, coalesce=coalescer, coalesce_requests=16, coalesce_rows=2)
    requests = [[[0.1, 0.0]], [[0.2, 0.0], [0.3, 0.0]], [[0.6, 0.0]] * 3]  # the last is too big to coalesce

    async def main():
        return await asyncio.gather(*(r.fanout.answers(rows) for rows in requests))

    out = run(main())
    assert coalescer.groups == [2] and len(member.sent) == 2  # the two small ones shared a call
    for rows, answer in zip(requests, out):
        np.testing.assert_allclose(answer["m"].probabilities[:, 1], [row[0] for row in rows])


@pytest.mark.parametrize("settings", [{"coalesce_requests": 1}, {}])
def test_without_coalescing_every_request_goes_out_alone(settings):
    member = FakeMember({"r1": answers()})
    coalescer = TickCoalescer()
    r = rig({"m": member}, coalesce=coalescer if settings else None, **settings)

    async def main():
        return await asyncio.gather(*(r.fanout.answers([[0.1 * k, 0.0]]) for k in range(3)))

    run(main())
    assert coalescer.groups == [] and len(member.sent) == 3


# ---- the eager coalescer (gateway.coalesce_wait_s 0, the default) ----------------------------------


class SlowGroups:
    """A group call that answers each request with its own rows after ``delay_s`` (virtual), recording
    when each group left and how many requests it carried."""

    def __init__(self, delay_s: float = 0.01, fail: bool = False) -> None:
        self.delay_s, self.fail = delay_s, fail
        self.sent: list[tuple[float, int]] = []

    async def __call__(self, groups):
        self.sent.append((asyncio.get_running_loop().time(), len(groups)))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("member group failed")
        return list(groups)


def test_an_eager_coalescer_sends_a_lone_request_at_once_and_groups_what_waits_for_a_busy_slot():
    group = SlowGroups(delay_s=0.01)
    one = EagerCoalescer(max_requests=3, max_concurrent=1)(group)

    async def main():
        first = asyncio.ensure_future(one([[1]]))
        await asyncio.sleep(0.001)  # the first is in flight: the next five wait for its slot
        rest = [asyncio.ensure_future(one([[k]])) for k in range(2, 7)]
        return await asyncio.gather(first, *rest)

    out = run(main())
    assert out == [[[k]] for k in range(1, 7)]  # every request gets its own rows back, in order
    assert group.sent[0] == (0.0, 1)  # no wait for company while a slot is free
    assert [n for _, n in group.sent] == [1, 3, 2]  # the waiting ones left together, at most 3 a call
    assert group.sent[1][0] == pytest.approx(0.01)  # ... the moment the slot freed


def test_an_eager_coalescer_fails_every_request_of_a_failed_group_and_drops_cancelled_ones():
    group = SlowGroups(fail=True)
    one = EagerCoalescer(max_requests=8, max_concurrent=1)(group)

    async def main():
        first = asyncio.ensure_future(one([[1]]))
        await asyncio.sleep(0.001)
        gone, kept = asyncio.ensure_future(one([[2]])), asyncio.ensure_future(one([[3]]))
        await asyncio.sleep(0)
        gone.cancel()  # its client went away while it waited
        return await asyncio.gather(first, kept, return_exceptions=True)

    out = run(main())
    assert all(isinstance(x, RuntimeError) for x in out)  # each request hears of the failure
    assert [n for _, n in group.sent] == [1, 1]  # the cancelled one was not sent


def test_the_default_coalescer_is_the_eager_one_and_a_wait_keeps_serves_batch():
    assert isinstance(serve_coalescer(GatewayConfig()), EagerCoalescer)
    assert not isinstance(serve_coalescer(GatewayConfig(coalesce_wait_s=0.002)), EagerCoalescer)
    with pytest.raises(ValueError, match="must be >= 1"):
        EagerCoalescer(max_requests=0, max_concurrent=1)
