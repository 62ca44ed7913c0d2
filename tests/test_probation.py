"""Probation on every live signal, where a rollback goes, a trial's length and approval of model actions.

Pure (no Ray): the decisions of :mod:`controllers.policies.probation`, the playbook's probation and
proposals with a fake clock (plain numbers), and the registry's alias history on a real local Storage.
"""

from __future__ import annotations

import numpy as np
import pytest

from controllers.policies.playbook import ModelAction, Playbook, Promote, Proposal, SubmitRetrain, Trigger
from controllers.policies.probation import (CallSample, ChampionWindow, Signal, VersionRecord, best_healthy_version,
                                            error_regression, latency_regression, trial_length_s, version_records)
from controllers.policies.replica import Approval
from controllers.policies.rollout import PairTally, judge_member
from raymedic.config import ProbationConfig, RetrainingConfig, RolloutConfig
from raymedic.storage import Storage
from train_jobs.registry import ModelRegistry

CFG = ProbationConfig()  # min_calls 200, error_alpha 0.01, margin 2 %, p99 ×1.5 and +10 ms
RETRAIN = RetrainingConfig(min_labeled_rows=100, cooldown_s=60, probation_labels=50)
DECAY = Trigger("d0001", "accuracy_decay", "ensemble")
RNG = np.random.default_rng(7)


def calls(n: int, *, error_rate: float, latency_ms: float, seed: int = 0) -> CallSample:
    """``n`` calls failing at ``error_rate``, successes around ``latency_ms`` (gamma-distributed, seeded)."""
    rng = np.random.default_rng(seed)
    failed = int(rng.binomial(n, error_rate))
    lat = rng.gamma(4.0, latency_ms / 4.0 / 1000, size=n - failed)
    return CallSample(ok=n - failed, failed=failed, latencies=lat.tolist())


# ---- the verdict per signal --------------------------------------------------------------------------------

def test_error_rate_regression_is_a_one_sided_test_with_a_margin():
    champion = calls(2000, error_rate=0.01, latency_ms=10, seed=1)
    assert error_regression(calls(199, error_rate=0.5, latency_ms=10), champion, CFG) is None  # too few calls
    r = error_regression(calls(400, error_rate=0.10, latency_ms=10, seed=2), champion, CFG)
    assert r is not None and r.signal == Signal.ERROR_RATE and r.p_value < CFG.error_alpha
    assert r.threshold == pytest.approx(r.baseline + CFG.error_rate_margin) and r.n == 400
    # The same failure rate as the champion's, and a significant but tiny rise, are not regressions.
    assert error_regression(calls(400, error_rate=0.01, latency_ms=10, seed=3), champion, CFG) is None
    tiny = CallSample(ok=19_400, failed=600)  # 3 % vs 1 %: significant on 20,000 calls, within the margin
    assert error_regression(tiny, champion, ProbationConfig(error_rate_margin=0.025)) is None
    # A champion with no failure at all is smoothed (Laplace): one failure in 300 is no regression.
    assert error_regression(CallSample(ok=299, failed=1), CallSample(ok=300), CFG) is None


def test_same_error_rate_rarely_looks_worse():
    """The false-alarm rate of the error test at the champion's own rate stays under its alpha."""
    champion = CallSample(ok=1960, failed=40)
    alarms = sum(error_regression(CallSample(ok=int(300 - k), failed=int(k)), champion, CFG) is not None
                 for k in RNG.binomial(300, 0.02, size=400))
    assert alarms / 400 <= CFG.error_alpha * 2


def test_p99_latency_regression_needs_the_ratio_and_the_absolute_increase():
    champion = calls(2000, error_rate=0.0, latency_ms=20, seed=4)
    slow = calls(400, error_rate=0.0, latency_ms=40, seed=5)
    r = latency_regression(slow, champion, CFG)
    assert r is not None and r.signal == Signal.LATENCY_P99 and r.value > r.threshold > r.baseline
    assert "p99" in r.detail and "limit ×1.5" in r.detail
    assert latency_regression(calls(400, error_rate=0.0, latency_ms=21, seed=6), champion, CFG) is None
    assert latency_regression(calls(150, error_rate=0.0, latency_ms=80, seed=7), champion, CFG) is None  # few
    # Doubling a 2 ms model harms no one: under latency_min_increase_ms.
    fast = calls(2000, error_rate=0.0, latency_ms=2, seed=8)
    assert latency_regression(calls(400, error_rate=0.0, latency_ms=4, seed=9), fast, CFG) is None


def test_the_champion_window_is_the_serving_versions_recent_calls():
    w = ChampionWindow(window_s=60.0)
    w.add("mlp", "v1", CallSample(ok=100, failed=5, latencies=[0.01] * 100), now=0.0)
    w.add("mlp", "v1", CallSample(ok=50, latencies=[0.02] * 50), now=40.0)
    assert w.baseline("mlp", now=50.0).calls == 155
    assert w.baseline("mlp", now=90.0).calls == 50  # the first batch is older than the window
    w.add("mlp", "v2", CallSample(ok=7), now=91.0)  # a new version: its predecessor's calls are not its own
    assert w.baseline("mlp", now=91.0).calls == 7 and w.baseline("lr", now=91.0).calls == 0


def _on_probation(baseline: dict[str, CallSample] | None) -> Playbook:
    pb = Playbook(RETRAIN)
    pb.step(0, [DECAY], labels=500)
    pb.finished(1, "SUCCEEDED", {"status": "gated", "members": {"mlp": {
        "passed": True, "challenger_version": "v0002", "champion_metrics": {"accuracy": 0.7},
        "challenger_metrics": {"accuracy": 0.9, "labels": 400}}}})
    pb.promoted(2, Promote("r0001-0", {"mlp": "v0002"}, {"mlp": 0.9}, {"mlp": 0.7}, 400), baseline)
    return pb


def test_probation_rolls_back_on_failing_calls_with_the_evidence():
    """On the old code only accuracy was judged: a version whose calls fail went on serving until its labels."""
    pb = _on_probation({"mlp": calls(2000, error_rate=0.01, latency_ms=10, seed=10)})
    pb.observe_probation("mlp", "v0001", calls(500, error_rate=0.5, latency_ms=10))  # the old version: not counted
    assert pb.check_probation({}, 0.05) is None
    pb.observe_probation("mlp", "v0002", calls(300, error_rate=0.15, latency_ms=10, seed=11))
    rb = pb.check_probation({"mlp": (0.9, 10)}, 0.05)  # ten labels: accuracy not judged yet, calls are
    assert rb is not None and rb.members == ("mlp",) and rb.versions == {"mlp": "v0002"}
    (ev,) = rb.evidence["mlp"]
    assert ev["signal"] == "error_rate" and ev["value"] > ev["threshold"] and ev["n"] == 300
    assert rb.reason.startswith("probation failed: mlp error_rate: failed calls")
    assert pb.probation is None and pb.history[-1]["signals"] == {"mlp": ["error_rate"]}


def test_probation_rolls_back_on_latency_and_reports_every_signal_that_regressed():
    pb = _on_probation({"mlp": calls(2000, error_rate=0.0, latency_ms=10, seed=12)})
    pb.observe_probation("mlp", "v0002", calls(300, error_rate=0.0, latency_ms=40, seed=13))
    rb = pb.check_probation({"mlp": (0.5, 60)}, 0.05)
    assert rb is not None and [e["signal"] for e in rb.evidence["mlp"]] == ["accuracy", "latency_p99"]
    assert "live accuracy mlp 0.500 on 60 labels" in rb.reason and "latency_p99" in rb.reason


def test_probation_without_a_baseline_judges_accuracy_alone_and_confirms():
    pb = _on_probation(None)  # e.g. a controller restarted just before the promotion
    pb.observe_probation("mlp", "v0002", calls(300, error_rate=0.3, latency_ms=10))
    assert pb.check_probation({"mlp": (0.9, 60)}, 0.05) is None
    assert pb.probation is None and pb.history[-1]["result"] == "confirmed"
    healthy = _on_probation({"mlp": calls(2000, error_rate=0.01, latency_ms=10, seed=14)})
    healthy.observe_probation("mlp", "v0002", calls(300, error_rate=0.01, latency_ms=10, seed=15))
    assert healthy.check_probation({"mlp": (0.9, 40)}, 0.05) is None and healthy.probation is not None
    view = healthy.probation_view()["signals"]["mlp"]
    assert view["calls"]["calls"] == 300 and view["baseline"]["calls"] == 2000 and view["baseline"]["p99_ms"]


# ---- where a rollback goes ---------------------------------------------------------------------------------

def test_the_best_recent_healthy_version_never_one_that_failed_probation():
    rs = [VersionRecord("v1", 1, 0.80, 1.0), VersionRecord("v2", 2, 0.97, 2.0, failed_probation=True),
          VersionRecord("v3", 3, 0.85, 3.0, rolled_back=True), VersionRecord("v4", 4, 0.82, 4.0),
          VersionRecord("v5", 5, 0.99, None),  # never champion: a challenger nobody vetted live
          VersionRecord("v6", 6, 0.90, 6.0)]
    best, why = best_healthy_version(rs, failing="v6", history=5)
    assert best.version == "v4" and "v2 failed probation" in why and "v3 was rolled back" in why
    best, _ = best_healthy_version(rs, failing="v6", history=1)  # only the newest champion before it
    assert best.version == "v4"
    tie = [VersionRecord("a", 1, 0.8, 1.0), VersionRecord("b", 2, 0.8, 2.0)]
    assert best_healthy_version(tie, failing="x", history=5)[0].version == "b"  # the newest on a tie
    other = [VersionRecord("a", 1, 0.8, 1.0, schema="s0")]
    assert best_healthy_version(other, failing="x", history=5, schema="s1")[0] is None
    assert best_healthy_version([], failing="x", history=5) == (None, "no healthy recent champion among 0")


def test_the_registry_history_marks_a_failed_probation_for_good(tmp_path):
    reg = ModelRegistry(Storage(str(tmp_path / "store")), clock=iter(range(1, 100)).__next__)
    files = {"weights.safetensors": b"w", "architecture.json": b"{}"}
    for acc in (0.80, 0.90, 0.85):
        reg.register("m", "mlp", files=files, metadata={"metrics": {"accuracy": acc}})
    for v in ("v0001", "v0002", "v0003"):
        reg.promote("m", "mlp", v)

    def records() -> list[VersionRecord]:
        return version_records([{"version": v.version, "created_at": v.created_at, "metadata": v.metadata}
                                for v in reg.versions("m", "mlp")],
                               [vars(m) for m in reg.alias_history("m", "mlp")])

    best, _ = best_healthy_version(records(), failing="v0003", history=5)
    assert best.version == "v0002"  # the best score among v0001 and v0002
    reg.demote("m", "mlp", "v0002")
    assert reg.aliases("m", "mlp") == {"champion": "v0002", "previous": "v0003"}  # rollback can undo it
    assert reg.demote("m", "mlp", "v0002") == {"champion": "v0002", "previous": "v0003"}  # idempotent
    assert [r.version for r in records() if r.failed_probation] == ["v0003"]
    reg.rollback("m", "mlp")  # an operator brings v0003 back: it still failed its probation once
    best, why = best_healthy_version(records(), failing="v0002", history=5)
    assert best.version == "v0001" and "v0003 failed probation" in why  # not blindly previous (v0003)


# ---- the canary's verdict and the trial's length -----------------------------------------------------------

def test_a_canary_with_a_slower_or_failing_challenger_is_rejected_before_its_labels():
    rollout = RolloutConfig(min_labels=100)
    t = PairTally()
    t.add_calls(challenger=calls(300, error_rate=0.0, latency_ms=40, seed=16),
                champion=calls(3000, error_rate=0.0, latency_ms=10, seed=17))
    verdict, why = judge_member(t, rollout, elapsed_s=10)
    assert verdict == "reject" and "latency_p99" in why  # on the old code: None (accuracy alone, no labels)
    t2 = PairTally()
    t2.add_calls(challenger=calls(300, error_rate=0.12, latency_ms=10, seed=18),
                 champion=calls(3000, error_rate=0.01, latency_ms=10, seed=19))
    assert judge_member(t2, rollout, elapsed_s=10)[1].startswith("worse than the champion live: error_rate")
    same = PairTally()
    same.add_calls(challenger=calls(300, error_rate=0.01, latency_ms=10, seed=20),
                   champion=calls(3000, error_rate=0.01, latency_ms=10, seed=21))
    assert judge_member(same, rollout, elapsed_s=10) is None
    again = PairTally.from_dict(t.to_dict())  # checkpointed and read back
    assert len(again.challenger_latencies) == 300 and again.to_dict()["calls"]["challenger"]["p99_ms"] > 0


def test_the_trial_length_follows_the_share_and_the_label_rate():
    cfg = RolloutConfig()  # share 0.05, min_labels 100, ×3, within [120, 1800] s
    assert cfg.share == 0.05
    assert trial_length_s(cfg, share=0.05, label_rate=20.0) == 300.0  # 100 / (0.05 × 20) = 100 s, × 3
    assert trial_length_s(cfg, share=0.5, label_rate=20.0) == 120.0  # the floor
    assert trial_length_s(cfg, share=0.05, label_rate=0.5) == 1800.0  # the cap
    assert trial_length_s(cfg, share=0.05, label_rate=None) == 1800.0
    pb = Playbook(RETRAIN)
    pb.start_rollout(100.0, Promote("t1", {"mlp": "v2"}, {"mlp": 0.9}), mode="canary", share=0.05)
    new, done = pb.check_rollout(200.0, cfg, label_rate=20.0)
    assert (new, done) == ({}, None) and pb.rollout["length_s"] == 300.0 and pb.rollout["label_rate"] == 20.0
    new, done = pb.check_rollout(401.0, cfg)  # past its length with no label: the champion stays
    assert new["mlp"][0] == "reject" and "length 300 s" in new["mlp"][1] and done.promote is None


# ---- approval mode -----------------------------------------------------------------------------------------

def test_approval_mode_proposes_a_retrain_once_and_runs_it_when_approved():
    pb = Playbook(RETRAIN)
    p = pb.step(10, [DECAY], labels=500, approval=True)
    assert isinstance(p, Proposal) and p.id == "model-000001" and p.action == ModelAction.RETRAIN
    assert p.approval == Approval.PENDING and pb.job is None
    assert pb.step(11, [DECAY], labels=500, approval=True) is None  # pending: not proposed again
    assert pb.approved(approval=True) is None
    with pytest.raises(KeyError):
        pb.decide("model-000009", True, 12)
    assert pb.decide(p.id, True, 12).approval == Approval.APPROVED
    with pytest.raises(ValueError):
        pb.decide(p.id, True, 12)
    again = Playbook(RETRAIN, pb.to_dict())  # checkpointed: a restarted controller keeps the approval
    taken = again.approved(approval=True)
    assert taken.id == p.id and again.proposal is None
    sub = again.start_job(13, taken.payload["reason"], taken.payload["alerts"])
    assert isinstance(sub, SubmitRetrain) and sub.alerts == ("d0001",) and again.job["record"] == sub.record


def test_a_rejected_retrain_waits_out_the_cooldown_and_auto_mode_takes_a_pending_proposal():
    pb = Playbook(RETRAIN)
    p = pb.step(10, [DECAY], labels=500, approval=True)
    assert pb.decide(p.id, False, 20).approval == Approval.REJECTED and pb.proposal is None
    assert pb.history[-1]["result"] == "retrain rejected by an operator"
    assert pb.step(50, [DECAY], labels=500, approval=True) is None  # cooldown (60 s) from the rejection
    p2 = pb.step(81, [DECAY], labels=500, approval=True)
    assert p2.id == "model-000002"
    assert pb.approved(approval=False).id == p2.id  # mode auto again: the controller decides on its own
