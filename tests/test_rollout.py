"""The live trial's verdicts (pure: no Ray): paired comparison, error rate, timeout, playbook wiring."""

from __future__ import annotations

import numpy as np
import pytest

from controllers.policies.playbook import Playbook, Promote, Trigger
from controllers.policies.rollout import PairTally, judge_member
from raymedic.config import RetrainingConfig, RolloutConfig

CFG = RolloutConfig(min_labels=100, max_labels=400, alpha=0.05, timeout_s=600)


def _tally(champion_acc: float, challenger_acc: float, n: int, seed: int = 0) -> PairTally:
    """n paired labels from independent Bernoulli outcomes with the given accuracies."""
    rng = np.random.default_rng(seed)
    t = PairTally()
    for a, b in zip(rng.random(n) < champion_acc, rng.random(n) < challenger_acc):
        t.add(champion_correct=bool(a), challenger_correct=bool(b))
    return t


def test_a_clearly_worse_challenger_is_rejected_before_min_labels():
    t = _tally(0.85, 0.35, 60)
    verdict, why = judge_member(t, CFG, elapsed_s=10)
    assert verdict == "reject" and "worse than the champion" in why


def test_a_better_challenger_is_promoted_once_min_labels_are_in():
    assert judge_member(_tally(0.6, 0.9, 99), CFG, elapsed_s=10) is None  # not yet
    verdict, why = judge_member(_tally(0.6, 0.9, 100), CFG, elapsed_s=10)
    assert verdict == "promote" and "/100 paired labels" in why


def test_a_tie_waits_then_a_loss_without_significance_is_rejected_at_max_labels():
    t = PairTally(both=300, challenger_only=40, champion_only=45, neither=15)  # 400 labels, slightly worse
    assert t.p_worse() > CFG.alpha
    verdict, why = judge_member(t, CFG, elapsed_s=10)
    assert verdict == "reject" and "no live win" in why
    assert judge_member(PairTally(both=100, challenger_only=8, champion_only=10, neither=2), CFG,
                        elapsed_s=10) is None


def test_failing_challenger_calls_and_timeouts_end_the_trial():
    verdict, why = judge_member(PairTally(calls_ok=10, calls_failed=15), CFG, elapsed_s=10)
    assert verdict == "reject" and "calls failing" in why
    assert judge_member(PairTally(calls_ok=10, calls_failed=1), CFG, elapsed_s=10) is None
    verdict, why = judge_member(PairTally(both=5), CFG, elapsed_s=601)
    assert verdict == "reject" and "timed out" in why


def test_the_same_accuracy_rarely_looks_worse():
    """Under the null (equal accuracies) the exact test rejects about alpha of the time, not more."""
    rejected = sum(_tally(0.8, 0.8, 200, seed=s).p_worse() < CFG.alpha for s in range(400))
    assert rejected / 400 <= 0.08


def test_rollout_config_rejects_max_below_min():
    with pytest.raises(ValueError, match="max_labels"):
        RolloutConfig(min_labels=200, max_labels=100)


def _playbook_on_trial() -> Playbook:
    pb = Playbook(RetrainingConfig(min_labeled_rows=20, cooldown_s=0))
    pb.start_rollout(100.0, Promote("r0001-1", {"mlp": "v2", "tabresnet": "v3"}, {"mlp": 0.9, "tabresnet": 0.88},
                                    {"mlp": 0.5, "tabresnet": 0.5}, 120), mode="canary", share=0.5)
    return pb


def test_playbook_promotes_only_members_that_hold_up_live_and_blocks_retrains_meanwhile():
    pb = _playbook_on_trial()
    assert pb.step(101.0, [Trigger("a1", "accuracy_decay", "ensemble")], labels=500) is None  # one thing at a time
    for _ in range(70):
        pb.observe_rollout("tabresnet", champion_correct=True, challenger_correct=False)
    new, done = pb.check_rollout(110.0, CFG)
    assert new["tabresnet"][0] == "reject" and done is None
    assert pb.trial_members() == {"mlp": "v2"}  # the gateways stop calling the rejected one
    pb.observe_rollout("tabresnet", champion_correct=True, challenger_correct=True)  # ignored: decided
    for i in range(100):
        pb.observe_rollout("mlp", champion_correct=i % 2 == 0, challenger_correct=True, calls_ok=1)
    new, done = pb.check_rollout(120.0, CFG)
    assert new["mlp"][0] == "promote"
    assert done is not None and done.promote is not None and done.promote.versions == {"mlp": "v2"}
    assert set(done.rejected) == {"tabresnet"} and pb.rollout is None
    assert pb.history[-1]["result"] == "trial: promoted"
    assert pb.history[-1]["live"]["mlp"]["challenger_accuracy"] == 1.0


def test_playbook_trial_survives_a_restart_and_can_be_abandoned():
    pb = _playbook_on_trial()
    pb.observe_rollout("mlp", champion_correct=False, challenger_correct=True)
    again = Playbook(pb.cfg, pb.to_dict())
    assert again.rollout["tally"]["mlp"]["challenger_only"] == 1
    assert again.abandon_rollout("operator rollback")["record"] == "r0001-1"
    assert again.rollout is None and again.history[-1]["result"] == "trial: abandoned"
