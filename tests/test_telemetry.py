"""Gateway-side healing bookkeeping and the audit trail, as pure code (no Ray)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from controllers.audit import AuditLog, read_audit
from raymedic.storage import Storage
from serve_apps.telemetry import CallRecorder, LocalEjector, RecentOutputs


def test_call_recorder_batches_per_replica_and_resets():
    rec = CallRecorder()
    rec.started("mlp", "a")
    rec.finished("mlp", "a", "ok", 0.01)
    rec.finished("mlp", "a", "timeout", 1.0, was_started=False)
    rec.finished("mlp", "b", "dead", 0.0, was_started=False)
    rec.started("lr", "c")  # still in flight at drain time
    labels = [{"id": "i1", "losses": {"mlp": 0.1}, "labelled": {"y": 0}}]
    rec.add_labels(labels)
    batch = rec.drain()
    assert batch["replicas"]["mlp/a"]["ok"] == 1 and batch["replicas"]["mlp/a"]["timeout"] == 1
    assert batch["replicas"]["mlp/a"]["latencies"] == [0.01] and batch["replicas"]["mlp/b"]["dead"] == 1
    assert batch["replicas"]["lr/c"]["inflight"] == 1 and batch["labels"] == labels
    again = rec.drain()
    assert again["labels"] == [] and set(again["replicas"]) == {"lr/c"}  # only the call still in flight
    with pytest.raises(ValueError):
        rec.finished("mlp", "a", "exploded", 0.0)
    json.dumps(batch)  # it crosses a Ray call: plain data only


def test_latencies_per_batch_are_bounded():
    rec = CallRecorder()
    for _ in range(10_000):
        rec.finished("mlp", "a", "ok", 0.01, was_started=False)
    slot = rec.drain()["replicas"]["mlp/a"]
    assert slot["ok"] == 10_000 and len(slot["latencies"]) <= 256


def test_local_ejection_expires():
    ej = LocalEjector(eject_s=3.0)
    ej.eject("mlp", "a", now=100.0)
    assert ej.ejected("mlp", now=101.0) == ["a"] and ej.ejected("lr", now=101.0) == []
    assert ej.ejected("mlp", now=103.5) == []
    off = LocalEjector(eject_s=0)
    off.eject("mlp", "a", now=100.0)
    assert off.ejected("mlp", now=100.0) == []


def test_recent_outputs_turn_labels_into_bounded_member_losses():
    ro = RecentOutputs(capacity=2)
    ro.add(["i1", "i2"], {"good": np.array([[0.9, 0.1], [0.2, 0.8]]), "bad": np.array([[0.1, 0.9], [0.99, 0.01]])})
    losses = ro.losses(["i1", "i2", "unknown"], [0, 1, 0])
    assert losses["good"][0] == pytest.approx(0.01)  # Brier: (0.1² + 0.1²) / 2
    assert all(0 <= x <= 1 for v in losses.values() for x in v) and len(losses["bad"]) == 2
    assert sum(losses["bad"]) > sum(losses["good"])
    ro.add(["i3"], {"good": np.array([[0.5, 0.5]])})
    assert "i1" not in ro.losses(["i1"], [0]).get("good", [])  # evicted beyond capacity
    assert ro.losses(["i1"], [0]) == {}


def test_audit_log_appends_files_and_reads_back_in_order(tmp_path):
    storage = Storage(str(tmp_path))
    log = AuditLog(storage, "m", writer="t")
    log.record("detected-hung", "mlp/a", evidence={"probe_timeouts": 2}, action="avoid", outcome="ok", ts=10.0,
               incident="inc-1", detected_at=10.0)
    log.record("restart", "mlp/a", action="restart", outcome="ok", ts=10.5, incident="inc-1")
    assert log.flush() == 2 and log.flush() == 0
    log.record("recovered", "mlp/a", action="restart", outcome="ok", ts=12.0, incident="inc-1", recovered_at=12.0)
    log.flush()
    recs = read_audit(storage, "m")
    assert [r["kind"] for r in recs] == ["detected-hung", "restart", "recovered"]
    assert {"ts", "kind", "target", "evidence", "action", "outcome"} <= set(recs[0])
    assert len(storage.list_files("audit/m")) == 2  # one new file per flush, never rewritten
    assert [r["kind"] for r in read_audit(storage, "m", since=11.0)] == ["recovered"]
    reopened = AuditLog(storage, "m", writer="t2")
    assert [r["kind"] for r in reopened.tail()] == ["detected-hung", "restart", "recovered"]


def test_audit_records_survive_a_failed_flush(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path))
    log = AuditLog(storage, "m", writer="t")
    log.record("restart", "mlp/a", ts=1.0)
    monkeypatch.setattr(storage, "write_text", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        log.flush()
    monkeypatch.undo()
    assert log.flush() == 1 and [r["kind"] for r in read_audit(storage, "m")] == ["restart"]


def test_hedge_budget_caps_extra_load_under_overload():
    from serve_apps.telemetry import HedgeBudget

    b = HedgeBudget(ratio=0.1, burst=5)
    granted = 0
    for _ in range(1000):  # everything is late: every call asks to hedge
        b.on_call()
        granted += b.try_hedge()
    assert 95 <= granted <= 105 + 5  # about 10% extra load, plus the initial burst
    with pytest.raises(ValueError):
        HedgeBudget(ratio=2)


def test_admission_sheds_past_the_limit_with_a_retry_after_and_recovers():
    from raymedic.errors import ServiceUnavailable
    from serve_apps.telemetry import Admission

    adm = Admission(2)
    with adm.enter(), adm.enter():
        with pytest.raises(ServiceUnavailable, match=r"overloaded: 2 predictions in flight .*limit 2") as err:
            with adm.enter():
                pass
        assert err.value.http_status == 503 and err.value.retry_after_s == 1
    assert adm.inflight == 0 and adm.shed == 1
    with pytest.raises(RuntimeError):
        with adm.enter():
            raise RuntimeError("a failing request still leaves")
    assert adm.inflight == 0
    with adm.enter():
        assert adm.inflight == 1


def test_losses_rank_an_accurate_confident_member_above_a_hedging_less_accurate_one():
    """After a concept change a linear member may answer near 0.5 and be right 54 % of the time while
    a network is right 74 % of the time with confident answers: the weights must prefer the network
    (log-loss would not: each confident miss costs it ~3 nats)."""
    n = 100
    ro = RecentOutputs(capacity=n)
    ids = [f"i{i}" for i in range(n)]
    hedger_right, confident_right = np.arange(n) < 54, np.arange(n) < 74
    ro.add(ids, {"hedger": np.array([[0.55, 0.45] if r else [0.45, 0.55] for r in hedger_right]),
                 "confident": np.array([[0.95, 0.05] if r else [0.05, 0.95] for r in confident_right])})
    losses = ro.losses(ids, [0] * n)
    assert np.mean(losses["confident"]) < np.mean(losses["hedger"])


def test_losses_name_the_version_that_answered():
    ro = RecentOutputs()
    ro.add(["old"], {"mlp": np.array([[0.1, 0.9]]), "lr": np.array([[0.6, 0.4]])}, at=10.0,
           versions={"mlp": "v0001", "lr": "v0001"})
    ro.add(["new"], {"mlp": np.array([[0.8, 0.2]]), "lr": np.array([[0.6, 0.4]])}, at=30.0,
           versions={"mlp": "v0002", "lr": "v0001"})
    ro.add_source(["new"], "mlp@challenger", np.array([[0.7, 0.3]]))
    losses = ro.losses(["old", "new"], [0, 0])
    # The controller charges a member only for answers of the version it serves now.
    assert losses == {"mlp@v0001": [pytest.approx(0.81)], "mlp@v0002": [pytest.approx(0.04)],
                      "lr@v0001": [pytest.approx(0.16), pytest.approx(0.16)],
                      "mlp@challenger": [pytest.approx(0.09)]}


def test_a_label_joins_an_answer_another_gateway_replica_logged(tmp_path):
    """Feedback lands on whichever replica the load balancer picks: one that did not answer finds the
    answer in the prediction log (a canary's champion included) and joins the label as the answering one
    would, so no accepted label is lost to the monitors, the weights or a trial."""
    from serve_apps.predlog import KnownIds, PredictionLog, new_inference_id

    storage = Storage(str(tmp_path))
    other = PredictionLog(storage, "m", tag="other")
    now = time.time()
    plain, canary, shadow = new_inference_id(now), new_inference_id(now + 1), new_inference_id(now + 2)
    def logged(inference_id: str, ts: float, lr: dict, mlp: list, ensemble: list) -> dict:
        """A prediction log record as another replica writes it (lr's output as given, mlp a plain answer)."""
        return {"inference_id": inference_id, "ts": ts, "model": "m", "model_version": "lr,mlp", "features": "[1.0]",
                "member_outputs": json.dumps({"lr": {"replica": "a", "version": "v1", **lr},
                                              "mlp": {"probabilities": mlp, "replica": "b", "version": "v1"}}),
                "prediction": json.dumps(int(np.argmax(ensemble))), "probabilities": ensemble, "degraded": False}

    other.append([
        logged(plain, now, {"probabilities": [0.9, 0.1]}, [0.6, 0.4], [0.8, 0.2]),
        logged(canary, now + 1, {"probabilities": [0.3, 0.7], "replica": "challenger", "version": "v2",
                                 "champion": {"probabilities": [0.8, 0.2], "version": "v1"}}, [0.4, 0.6], [0.35, 0.65]),
        logged(shadow, now + 2, {"probabilities": [0.7, 0.3], "challenger": {"probabilities": [0.2, 0.8],
                                                                            "version": "v2"}}, [0.5, 0.5], [0.6, 0.4]),
    ])
    other.flush()
    known = KnownIds(storage, "m")
    mine = new_inference_id()
    known.add([mine])
    assert known.unknown([plain, canary, mine]) == []
    assert known.answer(mine) is None  # this replica's own answers live in its RecentOutputs
    recent = RecentOutputs()
    for i in (plain, canary, shadow):
        recent.add_logged(i, *known.answer(i))
    pairs = recent.labelled([plain, canary, shadow], [0, 1, 1])
    assert pairs[0] == {"y": 0, "p": {"lr": [0.9, 0.1], "mlp": [0.6, 0.4], "ensemble": [0.8, 0.2]}, "ts": now}
    assert pairs[1]["p"] == {"lr": [0.8, 0.2], "lr@challenger": [0.3, 0.7], "mlp": [0.4, 0.6],
                             "ensemble": [0.35, 0.65]}
    assert pairs[2]["p"] == {"lr": [0.7, 0.3], "lr@challenger": [0.2, 0.8], "mlp": [0.5, 0.5],
                             "ensemble": [0.6, 0.4]}  # a shadow's answer beside the champion's
    losses = recent.losses([canary], [1])
    assert set(losses) == {"lr@v1", "lr@challenger", "mlp@v1"}  # the champion charged as its own version
    assert losses["lr@challenger"][0] == pytest.approx(0.09)


class CountingStorage(Storage):
    """A real local storage that counts the folders listed (the work a feedback request costs)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    def list_files(self, key: str, *, suffix: str = "") -> list[str]:
        self.listed.append(key)
        return super().list_files(key, suffix=suffix)


def test_forged_feedback_ids_cost_no_wait_and_old_hours_are_listed_once(tmp_path, monkeypatch):
    """A well-formed id dated in the future is unknown at once (no wait for a flush, no listing), and ids
    naming many past hours list each closed hour folder once per replica, not once per request."""
    import asyncio

    from raymedic.config import GatewayConfig
    from serve_apps.gateway.feedback import FeedbackIntake
    from serve_apps.predlog import FeedbackLog, KnownIds, new_inference_id
    from train_jobs.schema import ModelSchema

    storage = CountingStorage(str(tmp_path))
    known = KnownIds(storage, "m")
    intake = FeedbackIntake(schema=ModelSchema.numeric(["f0"], target="y", classes=(0, 1), mins=[0], maxs=[1]),
                            settings=GatewayConfig(), feedback=FeedbackLog(storage, "m", tag="g"), known=known,
                            recent=RecentOutputs(), calls=CallRecorder())
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    future = new_inference_id(time.time() + 3600)
    out = asyncio.run(intake.accept({"inference_ids": [future, "not-an-id"], "labels": [0, 1]}))
    assert out == {"accepted": 0, "unknown_ids": [future, "not-an-id"], "repeated_ids": []}
    assert storage.listed == [] and slept == []  # no log read, no wait for another replica's flush
    recent = new_inference_id(time.time())  # unknown but fresh: worth one wait for another replica's flush
    assert asyncio.run(intake.accept({"inference_ids": [recent], "labels": [1]}))["unknown_ids"] == [recent]
    assert len(slept) == 1 and 0 < slept[0] <= GatewayConfig().log_flush_s + 0.5
    storage.listed.clear()
    old = [new_inference_id(time.time() - 3600 * h) for h in range(2, 30)]  # 28 hours, all closed
    for _ in range(3):
        out = asyncio.run(intake.accept({"inference_ids": old, "labels": [0] * len(old)}))
        assert out == {"accepted": 0, "unknown_ids": old, "repeated_ids": []}
    assert len(storage.listed) == len(old) == len(set(storage.listed)), storage.listed


def test_a_torn_audit_line_is_skipped_not_a_crash_loop(tmp_path, caplog):
    """The controller re-reads its audit at start: a torn line (a foreign write, a store without atomic
    puts) or a line that is not a record is skipped with a warning, and every good record is read."""
    from raymedic.keys import audit_prefix

    storage = Storage(str(tmp_path))
    audit = AuditLog(storage, "m", writer="w")
    audit.record("restart", "mlp/r1", evidence={}, action="restart", outcome="ok", ts=10.0)
    audit.flush()
    good = '{"ts": 20.0, "kind": "recovered", "target": "mlp/r1"}'
    storage.write_bytes(f"{audit_prefix('m')}/00000000000000000020-x-000001.jsonl",
                        (good + '\n{"ts": 21.0, "kind": "resta\n[1, 2]\n{"ts": "late"}\n\xff\xfe\n').encode("latin-1"))
    with caplog.at_level("WARNING"):
        records = read_audit(storage, "m")
    assert [(r["ts"], r["kind"]) for r in records] == [(10.0, "restart"), (20.0, "recovered")]
    assert any("not records" in m for m in caplog.messages), caplog.messages


def test_a_replayed_note_is_recorded_once_also_by_a_restarted_controller(tmp_path):
    """A gateway's note (a chaos injection) carries an id: the same call replayed by Ray on a restarted
    controller, which reloads its audit tail, is not recorded twice."""
    import asyncio

    from controllers.operator import Operator

    storage = Storage(str(tmp_path))

    def operator() -> Operator:
        # note() uses the audit only; the other parts are never touched by it
        return Operator(model="m", policy=None, playbook=None, healer=None, checks=None, recorder=None,
                        audit=AuditLog(storage, "m", writer="w"), checkpoint=None, registry=None,
                        members=list, clock=time.time)

    evidence = {"fault": "hang", "note_id": "n-1"}
    first = operator()
    asyncio.run(first.note("chaos-injected", "mlp/r1", evidence))
    asyncio.run(first.note("chaos-injected", "mlp/r1", evidence))
    asyncio.run(operator().note("chaos-injected", "mlp/r1", evidence))  # after a restart
    asyncio.run(operator().note("chaos-injected", "mlp/r1", {**evidence, "note_id": "n-2"}))  # a new note
    assert [r["evidence"]["note_id"] for r in read_audit(storage, "m")] == ["n-1", "n-2"]


def test_a_label_for_an_answer_still_in_the_buffer_writes_the_answer_first(tmp_path):
    """An id is accepted while its answer sits in this replica's 0.5 s buffer: the answer is written
    (fsynced) before the label, so a SIGKILL of the replica after the 2xx leaves no label without its
    answer; a label for an answer already written costs no flush."""
    import asyncio

    from raymedic.config import GatewayConfig
    from serve_apps.gateway.feedback import FeedbackIntake
    from serve_apps.predlog import FeedbackLog, KnownIds, PredictionLog, new_inference_id
    from train_jobs.schema import ModelSchema

    storage = Storage(str(tmp_path))
    predlog = PredictionLog(storage, "m", tag="g")
    known = KnownIds(storage, "m")
    intake = FeedbackIntake(schema=ModelSchema.numeric(["f0"], target="y", classes=(0, 1), mins=[0], maxs=[1]),
                            settings=GatewayConfig(), feedback=FeedbackLog(storage, "m", tag="g"), known=known,
                            recent=RecentOutputs(), calls=CallRecorder(), predictions=predlog)
    iid = new_inference_id()
    predlog.append([{"inference_id": iid, "ts": time.time(), "model": "m", "model_version": "lr:v1",
                     "features": "[0.5]", "member_outputs": "{}", "prediction": "1", "probabilities": [0.2, 0.8],
                     "degraded": False}])
    known.add([iid])
    assert predlog.holds([iid])
    assert asyncio.run(intake.accept({"inference_ids": [iid], "labels": [1]})) == {"accepted": 1, "unknown_ids": [],
                                                                                  "repeated_ids": []}
    assert not predlog.holds([iid]) and predlog.pending() == 0  # written before the label was acknowledged
    fresh = KnownIds(storage, "m")  # what another replica (or a restarted one) finds on storage
    assert fresh.unknown([iid]) == []


def test_a_label_for_an_answer_a_shadow_trial_holds_back_waits_for_that_answer_to_be_logged(tmp_path):
    """In a shadow trial the answer is logged only once the challenger answered, but the client has its id
    at once: a label acknowledged before that (the answer not even buffered yet) named, after a SIGKILL of
    the replica, an answer no log holds. The label now waits for the shadowed answer (bounded by the
    challenger's deadline), which is then written before the label, its challenger's answer included."""
    import asyncio

    from raymedic.config import GatewayConfig
    from serve_apps.gateway.feedback import FeedbackIntake
    from serve_apps.gateway.trial import Trials
    from serve_apps.predlog import FeedbackLog, KnownIds, PredictionLog, new_inference_id
    from train_jobs.schema import ModelSchema

    storage = Storage(str(tmp_path))
    seen_at_write: list[list[str]] = []

    class CheckedFeedback(FeedbackLog):
        def write(self, inference_ids, labels):  # what another replica (or a restarted one) finds right then
            seen_at_write.append(KnownIds(storage, "m").unknown(list(inference_ids)))
            super().write(inference_ids, labels)

    async def scenario() -> dict:
        gate = asyncio.Event()

        class Challenger:
            class predict:
                @staticmethod
                async def remote(rows):
                    await gate.wait()
                    return {"version": "v2", "probabilities": [[0.3, 0.7]] * len(rows)}

        calls, recent = CallRecorder(), RecentOutputs()
        trials = Trials(calls=calls, recent=recent, member_timeout_s=30.0, handle_for=lambda m: Challenger)
        predlog, known = PredictionLog(storage, "m", tag="g"), KnownIds(storage, "m")
        intake = FeedbackIntake(schema=ModelSchema.numeric(["f0"], target="y", classes=(0, 1), mins=[0], maxs=[1]),
                                settings=GatewayConfig(), feedback=CheckedFeedback(storage, "m", tag="g"),
                                known=known, recent=recent, calls=calls, predictions=predlog, shadowed=trials.settle)
        iid = new_inference_id()
        known.add([iid])
        recent.add([iid], {"lr": np.array([[0.4, 0.6]])}, ensemble=np.array([[0.4, 0.6]]), versions={"lr": "v1"})
        records = [{"inference_id": iid, "ts": time.time(), "model": "m", "model_version": "lr:v1",
                    "features": "[0.5]", "member_outputs": {"lr": {"probabilities": [0.4, 0.6]}},
                    "prediction": "1", "probabilities": [0.4, 0.6], "degraded": False}]
        challengers = {"lr": asyncio.ensure_future(trials.call("lr", [[0.5]], "v2"))}
        trials.shadow(records, challengers, {"lr": "v2"},
                      log_records=lambda rs: predlog.append([{**r, "member_outputs": json.dumps(r["member_outputs"])}
                                                             for r in rs]))
        label = asyncio.ensure_future(intake.accept({"inference_ids": [iid], "labels": [1]}))
        for _ in range(20):  # the label gets as far as it can while the challenger has not answered
            await asyncio.sleep(0)
        assert not label.done() and seen_at_write == []
        gate.set()
        out = await label
        assert seen_at_write == [[]]  # the answer was on storage before the label was written
        logged = KnownIds(storage, "m")
        assert logged.unknown([iid]) == [] and logged.answer(iid)[1]["lr"]["challenger"]["version"] == "v2"
        return out

    assert asyncio.run(scenario()) == {"accepted": 1, "unknown_ids": [], "repeated_ids": []}


def test_a_label_for_an_own_answer_costs_one_thread_hop_the_write(tmp_path, monkeypatch):
    """The event loop hopped to a worker thread three times per feedback request (the known-ids lookup, the
    label book's refresh, the write), even for this replica's own answers and a refresh not due: only the
    durable write hops now, and the book is changed on the loop, never from a thread."""
    import asyncio

    from raymedic.config import GatewayConfig
    from serve_apps.gateway.feedback import FeedbackIntake
    from serve_apps.labels import LabelBook
    from serve_apps.predlog import FeedbackLog, KnownIds, new_inference_id
    from train_jobs.schema import ModelSchema

    storage = Storage(str(tmp_path))
    hops: list[str] = []
    real_to_thread = asyncio.to_thread

    async def to_thread(fn, *args, **kwargs):
        hops.append(getattr(fn, "__qualname__", repr(fn)))
        return await real_to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    known = KnownIds(storage, "m")
    book = LabelBook(storage, "m", refresh_s=3600.0)
    intake = FeedbackIntake(schema=ModelSchema.numeric(["f0"], target="y", classes=(0, 1), mins=[0], maxs=[1]),
                            settings=GatewayConfig(), feedback=FeedbackLog(storage, "m", tag="g"), known=known,
                            recent=RecentOutputs(), calls=CallRecorder(), labels=book)
    ids = [new_inference_id() for _ in range(3)]
    known.add(ids)
    assert asyncio.run(intake.accept({"inference_ids": ids[:1], "labels": [1]}))["accepted"] == 1
    assert hops == ["LabelBook.fetch", "FeedbackLog.write"]  # the first request reads the log once
    hops.clear()
    assert asyncio.run(intake.accept({"inference_ids": ids[1:], "labels": [0, 1]}))["accepted"] == 2
    assert hops == ["FeedbackLog.write"]


def test_a_label_is_final_a_retry_is_a_no_op_and_another_label_a_409_on_every_replica(tmp_path):
    """Feedback for an answer already labelled was written and counted again (weights, accuracy windows,
    drift): anyone could steer the ensemble by replaying one request. The same label again is a no-op, a
    different one a 409 that writes nothing, and a replica the first label never reached knows it too."""
    import asyncio

    import pyarrow.parquet as pq

    from raymedic.config import GatewayConfig
    from raymedic.errors import LabelConflict
    from serve_apps.gateway.feedback import FeedbackIntake
    from serve_apps.labels import LabelBook
    from serve_apps.predlog import FeedbackLog, KnownIds, new_inference_id
    from train_jobs.schema import ModelSchema

    storage = Storage(str(tmp_path))
    schema = ModelSchema.numeric(["f0"], target="y", classes=("no", "yes"), mins=[0], maxs=[1])
    ids = [new_inference_id() for _ in range(3)]

    def replica(tag: str) -> tuple[FeedbackIntake, RecentOutputs, CallRecorder]:
        known, recent, calls = KnownIds(storage, "m"), RecentOutputs(), CallRecorder()
        known.add(ids)
        recent.add(ids, {"lr": np.array([[0.3, 0.7]] * 3)}, ensemble=np.array([[0.3, 0.7]] * 3), at=time.time())
        return FeedbackIntake(schema=schema, settings=GatewayConfig(), feedback=FeedbackLog(storage, "m", tag=tag),
                              known=known, recent=recent, calls=calls,
                              labels=LabelBook(storage, "m", refresh_s=0.0)), recent, calls

    def logged() -> list[tuple[str, str]]:
        rows = [r for f in sorted(tmp_path.rglob("*.parquet")) if "/feedback/" in str(f)
                for r in pq.read_table(f).to_pylist()]
        return sorted((r["inference_id"], r["label"]) for r in rows)

    a, _, calls_a = replica("a")
    assert asyncio.run(a.accept({"inference_ids": ids[:2], "labels": ["yes", "no"]}))["accepted"] == 2
    assert len(calls_a.drain()["labels"]) == 2
    # A client retrying after a lost response: nothing written twice, nothing counted twice.
    again = asyncio.run(a.accept({"inference_ids": ids[:2], "labels": ["yes", "no"]}))
    assert again == {"accepted": 0, "unknown_ids": [], "repeated_ids": ids[:2]}
    assert calls_a.drain()["labels"] == [] and len(logged()) == 2
    # Another label for one of them: refused, and the valid new label beside it is not written either.
    with pytest.raises(LabelConflict) as err:
        asyncio.run(a.accept({"inference_ids": [ids[2], ids[0]], "labels": ["no", "no"]}))
    assert err.value.http_status == 409 and ids[0] in str(err.value) and "'yes'" in str(err.value)
    assert len(logged()) == 2
    # A replica the first labels never reached (or one restarted since) reads them from the durable log.
    b, _, calls_b = replica("b")
    out = asyncio.run(b.accept({"inference_ids": [ids[1], ids[2]], "labels": ["no", "yes"]}))
    assert out == {"accepted": 1, "unknown_ids": [], "repeated_ids": [ids[1]]}
    assert [r["id"] for r in calls_b.drain()["labels"]] == [ids[2]]
    with pytest.raises(LabelConflict):
        asyncio.run(b.accept({"inference_ids": [ids[0]], "labels": ["no"]}))
    assert logged() == sorted([(ids[0], '"yes"'), (ids[1], '"no"'), (ids[2], '"yes"')])


def test_the_label_book_judges_only_answers_within_its_horizon_and_memory():
    """Bounded two ways: answers older than the horizon are not judged (written, not counted live), and past
    its capacity the oldest entries go and the floor rises: never a wrong "already labelled"."""
    from serve_apps.labels import LabelBook
    from serve_apps.predlog import new_inference_id

    now = [1_000_000.0]
    book = LabelBook(None, "m", horizon_s=3600, capacity=2, clock=lambda: now[0])
    old, a, b, c = (new_inference_id(now[0] - s) for s in (7200, 30, 20, 10))
    found = book.sort([old, a], [1, 0])
    assert found.new == [0, 1] and found.counted == [1]  # the old answer's label is kept, not counted live
    book.reserve([old, a], [1, 0])
    assert book.sort([old], [0]).conflicts == [] and book.sort([a], [1]).conflicts == [(a, 0, 1)]
    book.reserve([b, c], [1, 1])  # past capacity: a goes, and answers as old as it are no longer judged
    assert len(book) == 2 and book.sort([a], [1]).counted == [] and book.sort([b], [1]).repeated == [b]
    book.release([b])
    assert book.sort([b], [0]).new == [0]  # its write failed: a retry may give it


def test_old_audit_files_are_merged_and_every_record_is_read_once_even_mid_merge(tmp_path, monkeypatch):
    """One audit file per step that recorded something grew without bound, and a restarted controller reads
    them all. Old ones are merged into one file naming its sources; a reader skips the sources, so a listing
    taken after the merged file is written and before the sources are deleted reads each record once."""
    from controllers.audit import compact_audit
    from raymedic.keys import audit_prefix

    storage = Storage(str(tmp_path))
    now = 1_000_000.0
    audit = AuditLog(storage, "m", writer="w")
    for i in range(150):  # 150 steps two hours ago, one file each
        audit.record("restart", f"mlp/r{i}", evidence={}, action="restart", outcome="ok", ts=now - 7200 + i)
        audit.flush()
    audit.record("recovered", "mlp/r0", ts=now - 10)  # recent: left alone
    audit.flush()
    storage.write_bytes(f"{audit_prefix('m')}/{int((now - 7000) * 1e6):020d}-x-000001.jsonl", b'{"ts": 1.5, "ki\n')
    before = read_audit(storage, "m")
    assert compact_audit(storage, "m", now=now, min_files=200).merged_files == 0  # too few to be worth it
    # Mid-merge: the merged file is written, the sources not yet deleted.
    deleted: list[str] = []
    monkeypatch.setattr(Storage, "delete", lambda self, key: deleted.append(key))
    done = compact_audit(storage, "m", now=now)
    assert done.merged_files == 151 and done.records == 150 and len(deleted) == 151
    assert read_audit(storage, "m") == before  # nothing read twice
    monkeypatch.undo()
    for key in deleted:
        storage.delete(key)
    files = storage.list_files(audit_prefix("m"), suffix=".jsonl")
    assert len(files) == 2 and read_audit(storage, "m") == before
    # A merge merges earlier merges too (once enough old files gathered again).
    assert compact_audit(storage, "m", now=now + 7200, min_files=2).merged_files == 2
    assert len(storage.list_files(audit_prefix("m"), suffix=".jsonl")) == 1 and read_audit(storage, "m") == before


def test_a_label_for_an_answer_a_periodic_flush_is_still_writing_waits_for_that_write(tmp_path):
    """The periodic flush (a worker thread) takes the buffered answers, then writes them: an answer it holds
    is neither buffered nor on storage. A label for it was written and acknowledged at once, and a SIGKILL
    then left a label no answer joins (CI: 3 of 1,581). Now the answer counts as held and the label's flush
    waits for the write in progress."""
    import threading

    from serve_apps.predlog import KnownIds, PredictionLog, new_inference_id

    release, writing = threading.Event(), threading.Event()

    class SlowStorage(Storage):
        def write_parquet(self, key, table, *, durable=True):
            writing.set()
            assert release.wait(30)
            super().write_parquet(key, table, durable=durable)

    predlog = PredictionLog(SlowStorage(str(tmp_path)), "m", tag="g")
    iid = new_inference_id()
    predlog.append([{"inference_id": iid, "ts": time.time(), "model": "m", "model_version": "lr:v1",
                     "features": "[0.5]", "member_outputs": "{}", "prediction": "1", "probabilities": [0.2, 0.8],
                     "degraded": False}])
    periodic = threading.Thread(target=predlog.flush)
    periodic.start()
    assert writing.wait(30) and predlog.pending() == 0
    assert predlog.holds([iid])  # taken by the flush, not written yet
    label_flush = threading.Thread(target=predlog.flush, kwargs={"durable": True})
    label_flush.start()
    label_flush.join(timeout=0.5)
    assert label_flush.is_alive()  # it waits for the write in progress
    release.set()
    periodic.join(timeout=30)
    label_flush.join(timeout=30)
    assert not label_flush.is_alive() and not predlog.holds([iid])
    assert KnownIds(Storage(str(tmp_path)), "m").unknown([iid]) == []  # on storage before the label's turn
