"""The one prediction path (validate → fan out → combine → log → answer) over fake members (no Ray)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from raymedic.config import parse_config
from raymedic.errors import InvalidRequest, ServiceUnavailable
from raymedic.storage import Storage
from serve_apps.combine import equal_weights
from serve_apps.gateway.api import profiled_response
from serve_apps.gateway.fanout import FanOut
from serve_apps.gateway.link import LinkState
from serve_apps.gateway.predict import Predictor
from serve_apps.gateway.trial import Trials
from serve_apps.predlog import KnownIds
from serve_apps.quality import InputTally
from serve_apps.review import ReviewBook
from serve_apps.stages import HEADER, STAGES, TOTAL, StageTimer, parse_server_timing
from serve_apps.telemetry import CallRecorder, HedgeBudget, LocalEjector, RecentOutputs
from serve_apps.validation import input_policies
from tests.fake_members import FakeMember, answers, hangs
from tests.virtual_time import run
from train_jobs.schema import ModelSchema

SCHEMA = ModelSchema.numeric(["f0", "f1"], target="y", classes=(0, 1), mins=[0, 0], maxs=[1, 1])
BODY = {"instances": [[0.2, 0.5], [0.9, 0.1]]}


class Challenger:
    """A challenger's handle: ``predict.remote(rows)`` answers as version ``version``."""

    def __init__(self, version: str, p1: float, *, after_s: float = 0.01) -> None:
        self.version, self.p1, self.after_s = version, p1, after_s
        self.predict = self

    def remote(self, rows: list[list[Any]]):
        async def answer() -> dict[str, Any]:
            await asyncio.sleep(self.after_s)
            return {"probabilities": [[1 - self.p1, self.p1] for _ in rows], "version": self.version}
        return answer()


class RecordingLog:
    """The prediction log's buffer, kept in memory (the Parquet writes are predlog's own tests)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def append(self, rows) -> None:
        self.rows.extend(rows)


class Service:
    """A Predictor wired as the gateway wires it, over fake members and a temporary storage."""

    def __init__(self, tmp_path, members: dict[str, FakeMember], *, trial: dict[str, Any] | None = None,
                 challengers: dict[str, Challenger] | None = None, review: dict[str, Any] | None = None) -> None:
        self.cfg = parse_config({"storage_path": str(tmp_path), **({"review": review} if review else {})})
        gw = self.cfg.gateway
        order = [m.name for m in self.cfg.members]
        self.state = LinkState(weights=equal_weights(order), versions={m: "v1" for m in order}, trial=trial)
        storage = Storage(self.cfg.storage_path)
        self.calls, recent = CallRecorder(), RecentOutputs()
        self.predlog = RecordingLog()
        self.known = KnownIds(storage, self.cfg.model)
        fanout = FanOut(members, order=order, settings=gw, calls=self.calls, ejector=LocalEjector(gw.eject_s),
                        hedges=HedgeBudget(gw.hedge_budget), steering=self.state)
        self.trials = Trials(calls=self.calls, recent=recent, member_timeout_s=gw.member_timeout_s,
                             handle_for=(challengers or {}).__getitem__)
        self.review = ReviewBook(storage, self.cfg.model, settings=self.cfg.review, tag="gw",
                                 feature_names=[f.name for f in SCHEMA.features])
        self.predictor = Predictor(config=self.cfg, schema=SCHEMA, policies=input_policies(SCHEMA, self.cfg.data),
                                   fanout=fanout, trials=self.trials, state=self.state, predlog=self.predlog,
                                   known=self.known, recent=recent, calls=self.calls, tally=InputTally(SCHEMA),
                                   review=self.review)

    def logged(self) -> list[dict[str, Any]]:
        return list(self.predlog.rows)


def members(**behaviours) -> dict[str, FakeMember]:
    return {name: FakeMember({f"{name}-r1": b, f"{name}-r2": b}) for name, b in behaviours.items()}


def test_every_member_answers_a_combined_logged_answer(tmp_path):
    svc = Service(tmp_path, members(logistic=answers(), mlp=answers(), tabresnet=answers()))
    out = run(svc.predictor.answer(BODY))
    assert out["predictions"] == [0, 1] and out["degraded"] is False
    np.testing.assert_allclose(out["probabilities"], [[0.8, 0.2], [0.1, 0.9]])
    assert out["model_version"] == "logistic:v1,mlp:v1,tabresnet:v1" and len(set(out["inference_ids"])) == 2
    records = svc.logged()
    assert [r["inference_id"] for r in records] == out["inference_ids"]
    assert set(json.loads(records[0]["member_outputs"])) == {"logistic", "mlp", "tabresnet"}
    assert svc.known.unknown(out["inference_ids"]) == []  # feedback for them is accepted
    assert len(svc.calls.drain()["confidence"]) == 2


def test_an_unsure_answer_is_still_answered_flagged_for_review_and_queued(tmp_path):
    svc = Service(tmp_path, members(logistic=answers(), mlp=answers(), tabresnet=answers()),
                  review={"threshold": 0.85})
    out = run(svc.predictor.answer(BODY))  # top-class probabilities 0.8 and 0.9
    assert out["predictions"] == [0, 1] and out["review"] == [True, False]
    page = svc.review.page(after=None, limit=10)
    assert [i["inference_id"] for i in page["items"]] == out["inference_ids"][:1]
    queued = page["items"][0]
    assert queued["probabilities"] == [0.8, 0.2] and queued["prediction"] == 0
    assert set(queued["members"]) == {"logistic", "mlp", "tabresnet"}
    assert svc.review.health()["queued"] == 1
    # without review.threshold (the default) the answer has no such field: existing clients see no change
    plain = Service(tmp_path, members(logistic=answers(), mlp=answers(), tabresnet=answers()))
    assert "review" not in run(plain.predictor.answer(BODY))


def test_one_member_late_still_answers_whole_but_two_late_is_degraded_to_the_fallback(tmp_path):
    one = Service(tmp_path, members(logistic=answers(), mlp=hangs(), tabresnet=answers()))
    out = run(one.predictor.answer(BODY))
    assert out["degraded"] is False and out["model_version"] == "logistic:v1,tabresnet:v1"
    two = Service(tmp_path, members(logistic=answers(), mlp=hangs(), tabresnet=hangs()))
    out = run(two.predictor.answer(BODY))
    assert out["degraded"] is True and out["model_version"] == "logistic:v1"
    assert two.logged()[0]["degraded"] is True


def test_no_member_in_time_is_a_503_to_retry(tmp_path):
    svc = Service(tmp_path, members(logistic=hangs(), mlp=hangs(), tabresnet=hangs()))
    with pytest.raises(ServiceUnavailable, match="no ensemble member answered") as err:
        run(svc.predictor.answer(BODY))
    assert err.value.retry_after_s == 1 and svc.logged() == []


def test_an_invalid_body_is_refused_before_any_member_call(tmp_path):
    fakes = members(logistic=answers(), mlp=answers(), tabresnet=answers())
    svc = Service(tmp_path, fakes)
    with pytest.raises(InvalidRequest):
        run(svc.predictor.answer({"instances": [[0.1]]}))
    assert all(not m.sent for m in fakes.values())


def test_a_canary_answers_in_its_champions_place_and_the_champion_is_kept(tmp_path):
    trial = {"members": {"mlp": "v9"}, "share": 1.0, "mode": "canary", "record": "t1"}
    svc = Service(tmp_path, members(logistic=answers(), mlp=answers(), tabresnet=answers()), trial=trial,
                  challengers={"mlp": Challenger("v9", p1=1.0)})
    out = run(svc.predictor.answer(BODY))
    assert out["model_version"] == "logistic:v1,mlp:v9,tabresnet:v1"
    mlp = json.loads(svc.logged()[0]["member_outputs"])["mlp"]
    assert mlp["replica"] == "challenger" and mlp["version"] == "v9" and mlp["champion"]["version"] == "v1"
    calls = svc.calls.drain()["challenger_calls"]["mlp"]
    assert (calls["ok"], calls["failed"], len(calls["latencies"])) == (1, 0, 1)  # its latency, against the champion's


def shadow_service(tmp_path, *, challenger_after_s: float = 0.01) -> Service:
    trial = {"members": {"mlp": "v9"}, "share": 1.0, "mode": "shadow", "record": "t1"}
    challenger = Challenger("v9", p1=1.0, after_s=challenger_after_s)
    return Service(tmp_path, members(logistic=answers(), mlp=answers(), tabresnet=answers()), trial=trial,
                   challengers={"mlp": challenger})


def test_a_shadow_never_changes_the_answer_and_is_logged_once_it_answered(tmp_path):
    svc = shadow_service(tmp_path)

    async def main():
        out = await svc.predictor.answer(BODY)
        logged_at_answer = len(svc.logged())
        await asyncio.sleep(svc.cfg.gateway.member_timeout_s + 2)  # the shadow's longest wait
        return out, logged_at_answer

    out, logged_at_answer = run(main())
    assert out["model_version"] == "logistic:v1,mlp:v1,tabresnet:v1" and logged_at_answer == 0
    records = svc.logged()
    assert len(records) == 2
    assert json.loads(records[0]["member_outputs"])["mlp"]["challenger"]["version"] == "v9"


def test_at_shutdown_a_shadowed_request_still_waiting_logs_what_it_has(tmp_path):
    svc = shadow_service(tmp_path, challenger_after_s=0.5)

    async def main():
        await svc.predictor.answer(BODY)
        await asyncio.sleep(0.1)  # the shadow waits for its challenger
        await svc.trials.close()

    run(main())
    records = svc.logged()
    assert len(records) == 2 and "challenger" not in json.loads(records[0]["member_outputs"])["mlp"]


def test_at_shutdown_a_shadowed_request_not_yet_started_is_still_logged(tmp_path):
    svc = shadow_service(tmp_path)

    async def main():
        await svc.predictor.answer(BODY)
        await svc.trials.close()  # in the same loop turn: the shadow task has not run yet

    run(main())
    assert len(svc.logged()) == 2


def test_a_challenger_of_another_version_is_ignored(tmp_path):
    trial = {"members": {"mlp": "v9"}, "share": 1.0, "mode": "canary", "record": "t1"}
    svc = Service(tmp_path, members(logistic=answers(), mlp=answers(), tabresnet=answers()), trial=trial,
                  challengers={"mlp": Challenger("v8", p1=1.0)})  # an older trial's replica still answering
    assert run(svc.predictor.answer(BODY))["model_version"] == "logistic:v1,mlp:v1,tabresnet:v1"


def test_a_profiled_answer_is_the_same_answer_with_every_stage_timed(tmp_path):
    svc = Service(tmp_path, members(logistic=answers(), mlp=answers(), tabresnet=answers()))
    unprofiled = run(svc.predictor.answer(BODY))
    timer = StageTimer()
    timer.mark("parse")  # the route's own stage, before the predictor's
    out = run(svc.predictor.answer(BODY, timer=timer))
    response = profiled_response(out, timer)
    same = ("predictions", "probabilities", "model_version", "degraded")
    assert json.loads(response.body) == out and {k: out[k] for k in same} == {k: unprofiled[k] for k in same}
    spans = parse_server_timing(response.headers[HEADER])
    assert set(STAGES) | {"member_call", TOTAL} <= set(spans)
    assert sum(spans[s] for s in STAGES) <= spans[TOTAL] + 0.001  # the stages share the total (µs rounding)
