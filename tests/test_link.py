"""The gateway's controller link with a hand-written controller (no Ray): it takes the controller's
state when it answers and keeps the last one when it does not."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from raymedic.errors import ServiceUnavailable
from serve_apps.gateway.link import ControllerLink, LinkState
from tests.virtual_time import run

ORDER = ["a", "b"]
REPLY = {"weights": {"a": 0.75, "b": 0.25, "gone": 1.0}, "avoid": {"a": ("r1",)}, "standby": {"b": ["r9"]},
         "paused": True, "trial": {"members": {"a": "v2"}, "share": 0.5, "mode": "shadow"},
         "versions": {"a": "v2"}, "epoch": 7}


class Method:
    """An actor method: ``.remote(*args)`` gives an awaitable, as a Ray ObjectRef does."""

    def __init__(self, answer: Callable[..., Any]) -> None:
        self.answer = answer
        self.args: list[tuple[Any, ...]] = []

    def remote(self, *args: Any, model: str | None = None):
        self.args.append(args)
        self.model = model  # the model the call names (a link of one model's lane)

        async def call() -> Any:
            return await self.answer(*args)
        return call()


class FakeController:
    """Answers ``reply`` to every method, unless it is ``away``: "failing" raises, "hung" never answers."""

    def __init__(self, reply: Any = REPLY, *, away: str | None = None) -> None:
        self.away = away

        async def answer(*args: Any) -> Any:
            if self.away == "hung":
                await asyncio.sleep(1e6)
            if self.away == "failing":
                raise RuntimeError("the controller is restarting")
            return reply
        self.sync = Method(answer)
        self.status = Method(answer)
        self.note = Method(answer)
        self.set_paused = Method(answer)


class Lookup:
    """Finds the controller each time it is asked (or raises, like ``ray.get_actor`` for a missing actor)."""

    def __init__(self, *controllers: FakeController | None) -> None:
        self._controllers = list(controllers)
        self.calls = 0

    def __call__(self) -> FakeController:
        self.calls += 1
        found = self._controllers.pop(0) if len(self._controllers) > 1 else self._controllers[0]
        if found is None:
            raise ValueError("Failed to look up actor")
        return found


def fresh_state() -> LinkState:
    return LinkState(weights={"a": 0.5, "b": 0.5}, versions={"a": "v1", "b": "v1"})


def link(lookup: Lookup, *, enabled: bool = True, state: LinkState | None = None) -> ControllerLink:
    return ControllerLink(state or fresh_state(), tag="gw1", order=ORDER, period_s=0.5, enabled=enabled,
                          lookup=lookup)


def test_a_reply_replaces_the_state_for_the_served_members():
    ctl = FakeController()
    lk = link(Lookup(ctl))
    run(lk.sync_once({"replicas": {}}))
    s = lk.state
    assert s.weights == {"a": 0.75, "b": 0.25} and s.avoid == {"a": ["r1"]} and s.standby == {"b": ["r9"]}
    assert s.paused and s.trial["share"] == 0.5 and s.epoch == 7 and s.seen_at is not None
    assert s.versions == {"a": "v2", "b": "v1"} and s.model_version(ORDER) == "a:v2,b:v1"
    assert ctl.sync.args == [("gw1", {"replicas": {}, "seq": 1}, -1)]  # the epoch it had, so the controller can tell
    run(lk.sync_once({"replicas": {}}))
    assert ctl.sync.args[1][1]["seq"] == 2  # each batch numbered: the controller takes a replayed call once


def test_every_call_of_a_models_link_names_that_model():
    """The one controller heals several models: a lane's sync, status and notes reach its model's loop."""
    ctl = FakeController()
    lk = ControllerLink(fresh_state(), tag="gw1", order=ORDER, period_s=0.5, enabled=True, lookup=Lookup(ctl),
                        model="cards")
    run(lk.sync_once({}))
    assert ctl.sync.model == "cards"
    run(lk.status())
    assert ctl.status.model == "cards"
    run(lk.note("chaos-injected", "mlp/r1", {}))
    assert ctl.note.model == "cards"


@pytest.mark.parametrize("away", ["failing", "hung", "gone"])
def test_while_the_controller_is_away_the_last_state_is_kept(away):
    ctl = FakeController()
    lookup = Lookup(ctl, None)  # after the first look-up the actor is gone (ray.get_actor raises)
    lk = link(lookup)
    run(lk.sync_once({}))
    before = (dict(lk.state.weights), dict(lk.state.avoid), lk.state.epoch, lk.state.seen_at)
    ctl.away = "hung" if away == "hung" else "failing"
    run(lk.sync_once({}))
    if away == "gone":
        run(lk.sync_once({}))  # the handle was dropped; the look-up finds nothing
        assert lookup.calls == 2
    assert (lk.state.weights, lk.state.avoid, lk.state.epoch, lk.state.seen_at) == before


def test_after_a_failed_sync_the_controller_is_looked_up_again():
    good = FakeController()
    lookup = Lookup(FakeController(away="failing"), good)
    lk = link(lookup)
    run(lk.sync_once({}))
    assert lk.state.epoch == -1
    run(lk.sync_once({}))
    assert lookup.calls == 2 and lk.state.epoch == 7


def test_an_empty_reply_only_marks_the_controller_seen():
    lk = link(Lookup(FakeController(reply=None)))
    run(lk.sync_once({}))
    assert lk.state.seen_at is not None and lk.state == LinkState(**{**fresh_state().__dict__,
                                                                    "seen_at": lk.state.seen_at})


def test_status_is_none_when_disabled_or_away_and_admin_calls_say_retry():
    assert run(link(Lookup(FakeController()), enabled=False).status()) is None
    assert run(link(Lookup(None)).status()) is None
    assert run(link(Lookup(FakeController(away="hung"))).status()) is None
    assert run(link(Lookup(FakeController(reply={"mode": "auto"}))).status()) == {"mode": "auto"}
    with pytest.raises(ServiceUnavailable, match="not reachable") as err:
        run(link(Lookup(None)).call("set_paused", True, "admin route"))
    assert err.value.retry_after_s == 2
    ctl = FakeController(reply={"paused": True})
    assert run(link(Lookup(ctl)).call("set_paused", True, "admin route")) == {"paused": True}
    assert ctl.set_paused.args == [(True, "admin route")]


def test_a_note_never_raises():
    run(link(Lookup(None)).note("chaos-injected", "a/r1", {}))
    ctl = FakeController()
    run(link(Lookup(ctl)).note("chaos-injected", "a/r1", {"fault": "kill"}))
    ((kind, target, evidence),) = ctl.note.args
    assert (kind, target, evidence["fault"]) == ("chaos-injected", "a/r1", "kill")
    assert len(evidence["note_id"]) == 32  # an id, so a replayed call is recorded once
