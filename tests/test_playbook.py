"""The model-level playbook and the champion/challenger gate: pure decisions, no Ray."""

from __future__ import annotations

import numpy as np

from controllers.detectors.intervals import wilson_lower, wilson_upper
from controllers.policies.playbook import Playbook, Promote, SubmitRetrain, Trigger
from raymedic.config import RetrainingConfig
from train_jobs.gate import judge, measure

CFG = RetrainingConfig(min_labeled_rows=100, cooldown_s=60, backoff_s=10, max_backoff_s=40, probation_labels=50)
DRIFT_ACT = Trigger("d0001", "drift", "f0", "act")
DRIFT_WARN = Trigger("d0002", "drift", "f1", "warn")
DECAY = Trigger("d0003", "accuracy_decay", "ensemble")


def m(acc, ece=0.05, lat=1.0):
    return {"accuracy": acc, "ece": ece, "latency_ms": lat}


def gated(passed: dict[str, bool], acc: float = 0.9) -> dict:
    return {"status": "gated", "members": {
        k: {"passed": ok, "reasons": [] if ok else ["too weak"], "champion_version": "v0001",
            "challenger_version": "v0002", "champion_metrics": m(0.7),
            "challenger_metrics": m(acc if ok else 0.6) | {"labels": 400}}
        for k, ok in passed.items()}}


# ---- gate ------------------------------------------------------------------------------

def test_gate_needs_the_margin_and_both_guardrails():
    ok = judge(m(0.70), m(0.75), CFG)
    assert ok.passed and ok.reasons == ()
    v = judge(m(0.70), m(0.705), CFG)
    assert not v.passed and v.reasons == (
        "holdout accuracy 0.705 vs champion 0.700: gain +0.005 is below the margin 0.010",)
    v = judge(m(0.70, ece=0.02), m(0.80, ece=0.20), CFG)
    assert not v.passed and v.reasons == ("calibration regressed: ECE 0.200 vs 0.020 (allowed +0.050)",)
    v = judge(m(0.70, lat=2.0), m(0.80, lat=9.0), CFG)
    assert not v.passed and v.reasons == ("latency regressed: 9.00 ms vs 2.00 ms per batch (allowed 4.50 ms)",)
    both = judge(m(0.70, ece=0.02, lat=2.0), m(0.70, ece=0.20, lat=9.0), CFG)
    assert [r.split(" ")[0] for r in both.reasons] == ["holdout", "calibration", "latency"]  # every reason, in order
    noise = judge(m(0.70, lat=0.1), m(0.80, lat=0.5), CFG)
    assert noise.passed and noise.reasons == ()  # sub-ms noise is not a regression


class _Fixed:
    """A 'model' whose answers are known: class 1 with probability p for every row."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, rows):
        return np.tile([1 - self.p, self.p], (len(rows), 1))


def test_measure_scores_a_model_on_the_holdout():
    y = np.array([1] * 80 + [0] * 20)
    out = measure(_Fixed(0.8), [[0.0]] * 100, y, batch=16)
    assert out["accuracy"] == 0.8 and out["labels"] == 100
    assert abs(out["ece"]) < 1e-9  # confidence 0.8, right 80 % of the time: calibrated
    assert out["latency_ms"] >= 0


# ---- playbook --------------------------------------------------------------------------

def test_minor_drift_only_warns_and_material_drift_waits_for_labels():
    pb = Playbook(CFG)
    assert pb.step(0, [DRIFT_WARN], labels=1000) is None
    assert pb.step(0, [DRIFT_ACT], labels=50) is None  # not enough labels to learn from yet
    sub = pb.step(0, [DRIFT_ACT, DRIFT_WARN], labels=150)
    assert isinstance(sub, SubmitRetrain) and sub.alerts == ("d0001",) and "drift on f0" in sub.reason


def test_one_job_at_a_time_and_a_passing_gate_promotes_only_the_winners():
    pb = Playbook(CFG)
    sub = pb.step(0, [DECAY], labels=500)
    pb.submitted("raymedic-retrain-x")
    assert pb.step(1, [DECAY], labels=500) is None
    assert pb.step(2, [], labels=0, manual="op") is None  # even an operator waits for the running job
    promote = pb.finished(100, "SUCCEEDED", gated({"mlp": True, "logistic": False}))
    assert isinstance(promote, Promote) and promote.versions == {"mlp": "v0002"} and promote.record == sub.record
    last = pb.history[-1]
    assert last["result"] == "promoted" and last["gate"]["logistic"]["reasons"] == ["too weak"]
    pb.promoted(101, promote)
    assert pb.step(500, [DECAY], labels=500) is None  # on probation: no new retrain


def test_rejected_challengers_keep_the_champion_and_cool_down():
    pb = Playbook(CFG)
    pb.step(0, [DECAY], labels=500)
    assert pb.finished(10, "SUCCEEDED", gated({"mlp": False})) is None  # nothing to promote
    last = pb.history[-1]
    assert last["result"] == "rejected" and last["gate"]["mlp"]["passed"] is False
    assert last["gate"]["mlp"]["reasons"] == ["too weak"] and last["gate"]["mlp"]["challenger_accuracy"] == 0.6
    assert pb.probation is None and pb.waiting() == {"not_before": 70, "failures": 0}  # a verdict, not a failure
    assert pb.step(30, [DECAY], labels=500) is None  # cooldown (60 s)
    again = pb.step(71, [DECAY], labels=500)
    assert again.reason == "accuracy_decay on ensemble" and again.alerts == ("d0003",) and not again.search


def test_failed_jobs_back_off_exponentially_up_to_the_cap():
    pb = Playbook(CFG)
    waits = []
    t = 0.0
    for n in range(1, 5):
        sub = pb.step(t, [DECAY], labels=500)
        assert isinstance(sub, SubmitRetrain) and sub.reason == "accuracy_decay on ensemble"
        assert pb.finished(t, "FAILED", None) is None
        last = pb.history[-1]
        assert last["result"] == "failed" and last["job_status"] == "FAILED" and last["outcome"] == "none"
        waits.append(last["retry_after_s"])
        assert pb.waiting() == {"not_before": t + waits[-1], "failures": n}
        assert pb.step(t + waits[-1] - 1, [DECAY], labels=500) is None
        t += waits[-1]
    assert waits == [10, 20, 40, 40]
    assert pb.step(t, [DECAY], labels=500) is not None
    promote = pb.finished(t, "SUCCEEDED", gated({"mlp": True}))
    assert promote.versions == {"mlp": "v0002"}
    assert pb.waiting() == {"not_before": t + 60, "failures": 0}  # a job that ran resets the backoff


def test_a_skipped_job_is_not_a_failure():
    pb = Playbook(CFG)
    pb.step(0, [DECAY], labels=500)
    assert pb.finished(5, "FAILED", {"status": "skipped", "error": "20 labelled rows"}) is None
    last = pb.history[-1]
    assert last["result"] == "skipped: 20 labelled rows" and last["outcome"] == "skipped"
    assert "retry_after_s" not in last  # no backoff: the usual cooldown
    assert pb.waiting() == {"not_before": 65, "failures": 0} and pb.job is None


def test_job_timeout_and_restart_from_memory():
    pb = Playbook(CFG.model_copy(update={"job_timeout_s": 100}))
    pb.step(0, [DECAY], labels=500)
    pb.submitted("j1")
    again = Playbook(pb.cfg, pb.to_dict())  # the controller restarted mid-job: it keeps polling the same job
    assert again.job["job_id"] == "j1" and not again.timed_out(50) and again.timed_out(101)


def test_a_scheduled_search_runs_every_period_alerts_or_not_and_waits_for_labels_and_jobs():
    pb = Playbook(CFG.model_copy(update={"search_every_s": 1000}))
    assert pb.step(0, [], labels=500) is None  # the clock starts now: the first search is due at 1000
    assert pb.step(999, [], labels=500) is None
    assert pb.step(1000, [], labels=50) is None  # due, but too few recent labels to search on
    sub = pb.step(1001, [], labels=500)
    assert sub.search and sub.alerts == () and "scheduled search (every 1000 s)" in sub.reason
    assert pb.job["search"] is True
    pb.finished(1100, "SUCCEEDED", gated({"mlp": False}))
    assert pb.step(1200, [], labels=500) is None  # next one due at 2001
    decay = pb.step(1300, [DECAY], labels=500)  # an alert still retrains in between, without a search
    assert decay is not None and not decay.search
    pb.finished(1400, "SUCCEEDED", gated({"mlp": False}))
    again = Playbook(pb.cfg, pb.to_dict())  # the schedule survives a controller restart
    assert again.step(2000, [], labels=500) is None
    both = again.step(2001, [DECAY], labels=500)
    assert both.search and both.alerts == ("d0003",) and "accuracy_decay" in both.reason
    assert Playbook(CFG).step(10 ** 9, [], labels=10 ** 6) is None  # no schedule configured: nothing


def test_probation_confirms_or_rolls_back():
    pb = Playbook(CFG)
    pb.step(0, [DECAY], labels=500)
    pb.promoted(1, pb.finished(1, "SUCCEEDED", gated({"mlp": True, "tabresnet": True}, acc=0.9)))
    assert pb.check_probation({"mlp": (0.5, 10)}, 0.05) is None  # too few labels to judge
    # Below the bar (0.85) but within noise on 60 labels: no flapping.
    assert pb.check_probation({"mlp": (0.80, 60), "tabresnet": (0.89, 30)}, 0.05) is None
    assert pb.probation is not None  # tabresnet not judged yet
    bar = pb.bar("mlp", 0.05)
    assert 0.80 < bar < 0.85  # the 400-row holdout's lower bound on 0.9, less the drop
    rb = pb.check_probation({"mlp": (0.60, 60), "tabresnet": (0.89, 60)}, 0.05)
    assert rb is not None and rb.members == ("mlp",)
    assert rb.reason == f"probation failed: live accuracy mlp 0.600 on 60 labels vs bar {bar:.3f}"
    assert pb.probation is None

    pb2 = Playbook(CFG)
    pb2.step(0, [DECAY], labels=500)
    pb2.promoted(1, pb2.finished(1, "SUCCEEDED", gated({"mlp": True}, acc=0.9)))
    assert pb2.check_probation({"mlp": (0.88, 60)}, 0.05) is None
    assert pb2.probation is None and pb2.history[-1]["result"] == "confirmed"


def test_probation_bar_is_never_below_the_replaced_version():
    pb = Playbook(CFG)
    pb.step(0, [DECAY], labels=500)
    pb.promoted(1, pb.finished(1, "SUCCEEDED", gated({"mlp": True}, acc=0.72)))  # champion scored 0.70
    assert pb.bar("mlp", 0.05) == 0.70
    manual = pb.step(2, [], 0, manual="operator")  # an operator may retrain during probation
    assert manual.reason == "operator: operator" and manual.alerts == () and manual.since is None
    pb.promoted(3, pb.finished(3, "SUCCEEDED", gated({"mlp": True}, acc=0.95)))
    assert 0.85 < pb.bar("mlp", 0.05) < 0.90  # the holdout's lower bound (400 rows), less the drop
    assert 0.80 < wilson_upper(0.75, 100) < 0.85 and wilson_upper(0.0, 0) == 1.0
    assert 0.65 < wilson_lower(0.75, 100) < 0.70


# ---- recent labelled data (the retrain job's input) ------------------------------------

def test_recent_labeled_joins_logs_and_reads_only_recent_hours(tmp_path):
    import json
    import time

    from raymedic.storage import Storage
    from serve_apps.predlog import FeedbackLog, PredictionLog, new_inference_id
    from train_jobs.labeled import TS_COLUMN, recent_labeled
    from train_jobs.schema import ModelSchema

    storage = Storage(str(tmp_path))
    schema = ModelSchema.numeric(["a", "b"], target="y", classes=[0, 1], mins=[0, 0], maxs=[1, 1])
    now = time.time()  # feedback is stamped with the real clock
    preds, ids = PredictionLog(storage, "m", tag="t"), []
    for i, ts in enumerate([now - 7200, now - 30, now - 20, now - 10, now - 5]):  # the first: 2 hours ago
        ids.append(new_inference_id(ts))
        preds.append([{"inference_id": ids[-1], "ts": ts, "model": "m", "model_version": "v", "features":
                       json.dumps([0.1 * i, None if i == 3 else 0.5]), "member_outputs": "{}",
                       "prediction": "0", "probabilities": [0.5, 0.5], "degraded": False}])
    preds.flush()
    feedback = FeedbackLog(storage, "m", tag="t")
    feedback.write(ids[:3], [1, 0, 1])
    feedback.write([ids[2], ids[3], ids[4]], ["0", 1, 7])  # id 2 again (a race of two gateways); 7 is no class
    rows = recent_labeled(storage, "m", schema, since=now - 60)
    assert list(rows.columns) == ["a", "b", "y", TS_COLUMN]
    assert rows["y"].tolist() == [0, 1, 1]  # oldest first; id 2's first label stands; the unknown class dropped
    assert rows[TS_COLUMN].tolist() == [now - 30, now - 20, now - 10]
    assert rows["b"].isna().tolist() == [False, False, True] and rows["a"].dtype.kind == "f"
    assert len(recent_labeled(storage, "m", schema)) == 4  # no bound: the old hour too


def test_the_better_of_a_retrained_and_a_searched_challenger_stands():
    from train_jobs.retrain import _better

    def verdict(version: str, passed: bool, acc: float, **search) -> dict:
        return {"challenger_version": version, "passed": passed, "reasons": [] if passed else ["weak"],
                "challenger_metrics": {"accuracy": acc}, **({"search": search} if search else {})}

    retrained_ok, retrained_bad = verdict("v2", True, 0.80), verdict("v2", False, 0.60)
    better = verdict("v3", True, 0.85, best_config={"lr": 0.01})
    worse = verdict("v3", True, 0.78, best_config={"lr": 0.1})
    failed_search = {**retrained_ok, "search": {"error": "every trial failed"}}
    assert _better(retrained_ok, better) is better
    kept = _better(retrained_ok, worse)
    assert kept["challenger_version"] == "v2" and kept["search"]["kept"] == "retrained"
    assert kept["search"]["version"] == "v3" and kept["search"]["accuracy"] == 0.78
    assert _better(retrained_bad, verdict("v3", False, 0.65, best_config={}))["challenger_version"] == "v3"
    assert _better(retrained_ok, failed_search) is failed_search


def test_a_retrain_learns_from_the_change_estimate_on_topped_up_to_the_minimum():
    import pandas as pd

    from train_jobs.labeled import TS_COLUMN
    from train_jobs.retrain import since_change

    recent = pd.DataFrame({"x": range(1000), TS_COLUMN: [1000.0 + i for i in range(1000)]})
    assert since_change(recent, None, 300) is recent
    assert list(since_change(recent, 1400.0, 300)["x"]) == list(range(400, 1000))  # 600 rows since the change
    assert list(since_change(recent, 1900.0, 300)["x"]) == list(range(700, 1000))  # 100 since: topped up to 300
    pb = Playbook(CFG)
    sub = pb.step(0, [Trigger("d1", "concept_drift", "ensemble", since=1234.5), Trigger("d2", "accuracy_decay",
                                                                                        "ensemble", since=1200.0)],
                  labels=500)
    assert sub.since == 1234.5 and pb.job["since"] == 1234.5  # the latest change estimate
    assert Playbook(CFG).step(0, [DECAY], labels=500).since is None
