"""Unit tests for the ensemble re-weighting rule (pure logic, no Ray, no sleeping)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from controllers.policies.weights import HedgeWeights, WeightingConfig, bound_weights
from raymedic.config import ControllerConfig
from raymedic.errors import ConfigError

TOL = 1e-9
MEMBERS = ["logistic", "mlp", "tabresnet"]
SHIPPED = WeightingConfig.from_settings(ControllerConfig())
"""The rule as configured by default (``controller.weight_*``)."""


def config(**overrides: float) -> WeightingConfig:
    """The shipped rule with some hyperparameters changed (validated like any other)."""
    return dataclasses.replace(SHIPPED, **overrides)


def _names(n: int) -> list[str]:
    return [f"m{i}" for i in range(n)]


def _assert_water_filled(raw: dict[str, float], w: dict[str, float], *, floor: float, cap: float) -> None:
    """The properties that define the bounded weights when the bounds are feasible."""
    assert list(w) == list(raw)
    assert sum(w.values()) == pytest.approx(1.0, abs=TOL)
    for name, value in w.items():
        assert floor - TOL <= value <= cap + TOL, (name, value, floor, cap)
    # Order of the raw weights is kept.
    for a in raw:
        for b in raw:
            if raw[a] > raw[b]:
                assert w[a] >= w[b] - TOL
    # Members strictly inside the bounds share the remaining mass in proportion to raw.
    free = [m for m in raw if floor + 1e-7 < w[m] < cap - 1e-7]
    ratios = [w[m] / raw[m] for m in free]
    if ratios:
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-6)
        # A member at the cap would have got more than the cap, one at the floor less.
        for m in raw:
            if w[m] >= cap - 1e-7:
                assert raw[m] * ratios[0] >= cap - 1e-7
            elif w[m] <= floor + 1e-7:
                assert raw[m] * ratios[0] <= floor + 1e-7


# --------------------------------------------------------------------------- bound_weights


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("n", range(2, 9))
def test_bound_weights_hold_bounds_and_sum_to_one_on_random_inputs(seed: int, n: int) -> None:
    rng = np.random.default_rng(1000 * n + seed)
    # Heavy-tailed raw weights so that both bounds bind often; some exact zeros.
    raw_values = rng.lognormal(mean=0.0, sigma=2.0, size=n)
    raw_values[rng.random(n) < 0.15] = 0.0
    if raw_values.sum() == 0:
        raw_values[0] = 1.0
    raw = {name: float(v) for name, v in zip(_names(n), raw_values)}
    floor = float(rng.uniform(0.0, 1.0 / n))
    cap = float(rng.uniform(max(floor, 1.0 / n), 1.0))

    w = bound_weights(raw, floor=floor, cap=cap)

    assert sum(w.values()) == pytest.approx(1.0, abs=TOL)
    assert all(floor - TOL <= v <= cap + TOL for v in w.values())
    if all(v > 0 for v in raw.values()):
        _assert_water_filled(raw, w, floor=floor, cap=cap)


@pytest.mark.parametrize("n", range(2, 9))
def test_bound_weights_only_normalise_when_bounds_do_not_bind(n: int) -> None:
    raw = {name: 1.0 + 0.1 * i for i, name in enumerate(_names(n))}
    total = sum(raw.values())
    w = bound_weights(raw, floor=0.0, cap=1.0)
    assert w == pytest.approx({m: v / total for m, v in raw.items()})


def test_bound_weights_cap_and_floor_redistribute_in_proportion() -> None:
    w = bound_weights({"a": 8.0, "b": 1.0, "c": 1.0}, floor=0.1, cap=0.6)
    assert w == pytest.approx({"a": 0.6, "b": 0.2, "c": 0.2})
    w = bound_weights({"a": 100.0, "b": 3.0, "c": 1.0}, floor=0.1, cap=0.7)
    # a is capped; c would get 0.3/4 < 0.1, so it is floored and b takes the rest.
    assert w == pytest.approx({"a": 0.7, "b": 0.2, "c": 0.1})


def test_bound_weights_do_not_overshoot_when_both_bounds_bind() -> None:
    # Fixing every violator in one pass would give 0.5 + 0.3 + 0.3 = 1.1.
    w = bound_weights({"a": 100.0, "b": 1.0, "c": 1.0}, floor=0.3, cap=0.5)
    assert w == pytest.approx({"a": 0.4, "b": 0.3, "c": 0.3})


def test_bound_weights_empty_input() -> None:
    assert bound_weights({}, floor=0.05, cap=0.7) == {}


def test_bound_weights_single_member_gets_everything_despite_cap() -> None:
    assert bound_weights({"a": 0.3}, floor=0.05, cap=0.7) == {"a": 1.0}
    assert bound_weights({"a": 0.0}, floor=0.05, cap=0.7) == {"a": 1.0}


def test_bound_weights_cap_too_low_gives_equal_weights() -> None:
    assert bound_weights({"a": 9.0, "b": 1.0}, floor=0.05, cap=0.4) == {"a": 0.5, "b": 0.5}
    w = bound_weights({"a": 9.0, "b": 1.0, "c": 0.5}, floor=0.0, cap=0.3)
    assert w == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_bound_weights_floor_too_high_gives_equal_weights() -> None:
    w = bound_weights({"a": 9.0, "b": 1.0, "c": 0.5}, floor=0.4, cap=0.9)
    assert w == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_bound_weights_exactly_feasible_edges() -> None:
    # n * floor == 1: everyone at the floor; n * cap == 1: everyone at the cap.
    assert bound_weights({"a": 9.0, "b": 1.0}, floor=0.5, cap=0.9) == pytest.approx({"a": 0.5, "b": 0.5})
    assert bound_weights({"a": 9.0, "b": 1.0}, floor=0.0, cap=0.5) == pytest.approx({"a": 0.5, "b": 0.5})


def test_bound_weights_all_zero_raw_gives_equal_weights() -> None:
    w = bound_weights({"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}, floor=0.05, cap=0.7)
    assert w == {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}


def test_bound_weights_zero_raw_members_take_mass_left_by_capped_ones() -> None:
    assert bound_weights({"a": 1.0, "b": 0.0}, floor=0.05, cap=0.7) == pytest.approx({"a": 0.7, "b": 0.3})
    w = bound_weights({"a": 1.0, "b": 0.0, "c": 0.0}, floor=0.05, cap=0.7)
    assert w == pytest.approx({"a": 0.7, "b": 0.15, "c": 0.15})
    # When there is no mass left over, zero-raw members sit at the floor.
    w = bound_weights({"a": 1.0, "b": 1.0, "c": 0.0}, floor=0.1, cap=0.7)
    assert w == pytest.approx({"a": 0.45, "b": 0.45, "c": 0.1})


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bound_weights_reject_invalid_raw_weights(bad: float) -> None:
    with pytest.raises(ValueError, match="raw weights"):
        bound_weights({"a": 1.0, "b": bad}, floor=0.05, cap=0.7)


@pytest.mark.parametrize(("floor", "cap"), [(0.6, 0.4), (-0.1, 0.7), (0.05, math.nan)])
def test_bound_weights_reject_malformed_bounds(floor: float, cap: float) -> None:
    with pytest.raises(ValueError, match="floor"):
        bound_weights({"a": 1.0, "b": 1.0}, floor=floor, cap=cap)


# --------------------------------------------------------------------------- WeightingConfig


def test_the_rule_takes_its_hyperparameters_from_the_controller_config() -> None:
    shipped = ControllerConfig()
    assert (SHIPPED.eta, SHIPPED.decay, SHIPPED.min_weight, SHIPPED.max_weight) == (
        shipped.weight_eta, shipped.weight_decay, shipped.min_weight, shipped.max_weight)
    custom = ControllerConfig(weight_eta=1.5, weight_decay=0.9, min_weight=0.1, max_weight=0.6)
    cfg = WeightingConfig.from_settings(custom)
    assert (cfg.eta, cfg.decay, cfg.min_weight, cfg.max_weight) == (1.5, 0.9, 0.1, 0.6)
    # No second set of defaults: a rule built without the config must say every value.
    with pytest.raises(TypeError):
        WeightingConfig()  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eta = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "n"),
    [
        ({"decay": 1.0}, 3),
        ({"min_weight": 0.0}, 3),
        ({"min_weight": 0.5, "max_weight": 0.5}, 2),
        ({"max_weight": 1.0}, 3),
        ({"max_weight": 0.3}, 4),  # feasible with >= 4 healthy members...
        ({"max_weight": 0.3}, 3),  # ...relaxed to equal weights with fewer
        ({"eta": 1e-6}, 3),
    ],
)
def test_edge_values_are_accepted_and_give_weights_that_sum_to_one_within_the_bounds(
        kwargs: dict[str, float], n: int) -> None:
    cfg = config(**kwargs)
    names = _names(n)
    hedge = HedgeWeights(names, cfg)
    rng = np.random.default_rng(n)
    for _ in range(20):
        hedge.update({m: (rng.random(5) < 0.1 + 0.2 * i).astype(float) for i, m in enumerate(names)})
    w = hedge.weights(names)
    assert sum(w.values()) == pytest.approx(1.0, abs=TOL)
    if n * cfg.min_weight <= 1 <= n * cfg.max_weight:
        assert all(cfg.min_weight - TOL <= v <= cfg.max_weight + TOL for v in w.values())
    else:  # bounds no weight vector can meet: the one that is relaxed gives equal weights
        assert w == pytest.approx({m: 1 / n for m in names})
    # Order follows the decayed losses: less loss, at least as much weight.
    for a in names:
        for b in names:
            if hedge.loss(a) < hedge.loss(b):
                assert w[a] >= w[b] - TOL


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eta": 0.0}, r"`eta`.*> 0"),
        ({"eta": -1.0}, r"`eta`.*> 0"),
        ({"eta": math.inf}, r"`eta`.*finite"),
        ({"eta": math.nan}, r"`eta`"),
        ({"decay": 0.0}, r"`decay`.*\(0, 1\]"),
        ({"decay": 1.01}, r"`decay`.*\(0, 1\]"),
        ({"decay": math.nan}, r"`decay`"),
        ({"min_weight": -0.01}, r"`min_weight`.*>= 0"),
        ({"min_weight": 0.6, "max_weight": 0.9}, r"`min_weight` \(0.6\) must be <= 0.5"),
        ({"min_weight": 0.3, "max_weight": 0.2}, r"`min_weight` \(0.3\) must be <= `max_weight` \(0.2\)"),
        ({"max_weight": 0.0}, r"`max_weight`.*\(0, 1\]"),
        ({"max_weight": 1.5}, r"`max_weight`.*\(0, 1\]"),
    ],
)
def test_config_rejects_invalid_values_with_a_clear_message(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config(**kwargs)


def test_duplicate_members_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unique"):
        HedgeWeights(["a", "b", "a"], SHIPPED)


# --------------------------------------------------------------------------- HedgeWeights


def test_fresh_weights_are_equal() -> None:
    hedge = HedgeWeights(MEMBERS, SHIPPED)
    assert hedge.weights(MEMBERS) == pytest.approx({m: 1 / 3 for m in MEMBERS})
    assert all(hedge.samples(m) == 0.0 for m in MEMBERS)


def test_one_loss_lowers_that_members_weight_and_a_correct_answer_raises_it() -> None:
    hedge = HedgeWeights(MEMBERS, SHIPPED)
    hedge.update({"logistic": [0.0, 1.0, 0.0], "mlp": [1.0, 0.0, 0.0], "tabresnet": [0.0, 0.0, 1.0]})
    before = hedge.weights(MEMBERS)
    hedge.update({"mlp": [1.0]})
    after = hedge.weights(MEMBERS)
    assert after["mlp"] < before["mlp"]
    assert after["logistic"] > before["logistic"] and after["tabresnet"] > before["tabresnet"]
    assert sum(after.values()) == pytest.approx(1.0, abs=TOL)
    hedge.update({"mlp": [0.0]})  # right this time: its old losses fade by one step of decay
    assert hedge.weights(MEMBERS)["mlp"] > after["mlp"]


@pytest.mark.parametrize("seed", range(8))
def test_weights_on_random_histories_sum_to_one_respect_bounds_and_follow_the_losses(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = _names(5)
    hedge = HedgeWeights(names, SHIPPED)
    for _ in range(30):
        hedge.update({m: rng.random(int(rng.integers(0, 6))) * (0.5 + i / 8)
                      for i, m in enumerate(names) if rng.random() < 0.8})
    healthy = [m for m in names if rng.random() < 0.8] or names[:1]
    w = hedge.weights(healthy)
    assert set(w) == set(names)
    assert all(w[m] == 0.0 for m in names if m not in healthy)  # unhealthy members get nothing
    assert sum(w.values()) == pytest.approx(1.0, abs=TOL)
    if len(healthy) > 1:
        assert all(SHIPPED.min_weight - TOL <= w[m] <= SHIPPED.max_weight + TOL for m in healthy)
    for a in healthy:
        for b in healthy:
            if hedge.loss(a) < hedge.loss(b):
                assert w[a] >= w[b] - TOL


def test_consistently_worse_member_loses_weight_monotonically_down_to_the_floor() -> None:
    cfg = SHIPPED
    hedge = HedgeWeights(MEMBERS, cfg)
    rng = np.random.default_rng(7)
    history = []
    for _ in range(40):
        batch = 5
        hedge.update(
            {
                "logistic": (rng.random(batch) < 0.2).astype(float),
                "mlp": (rng.random(batch) < 0.2).astype(float),
                "tabresnet": np.ones(batch),  # wrong on every sample
            }
        )
        w = hedge.weights(MEMBERS)
        assert sum(w.values()) == pytest.approx(1.0)
        assert w["tabresnet"] >= cfg.min_weight - TOL  # never starved while healthy
        history.append(w["tabresnet"])
    assert all(later <= earlier + TOL for earlier, later in zip(history, history[1:]))
    assert history[0] < 1 / 3
    assert history[-1] == pytest.approx(cfg.min_weight)


def test_better_member_is_capped_while_others_are_healthy() -> None:
    cfg = config(max_weight=0.7)
    hedge = HedgeWeights(MEMBERS, cfg)
    for _ in range(20):
        hedge.update({"logistic": [0.0] * 5, "mlp": [1.0] * 5, "tabresnet": [1.0, 1.0, 1.0, 0.0, 1.0]})
    w = hedge.weights(MEMBERS)
    assert w["logistic"] == pytest.approx(0.7)
    assert w["mlp"] + w["tabresnet"] == pytest.approx(0.3)
    assert w["tabresnet"] >= w["mlp"]
    # Still capped when only one other member is healthy.
    w = hedge.weights(["logistic", "mlp"])
    assert w == pytest.approx({"logistic": 0.7, "mlp": 0.3, "tabresnet": 0.0})


def test_lower_loss_gets_more_weight_by_the_hedge_ratio_when_unbounded() -> None:
    cfg = config(eta=0.5, decay=1.0, min_weight=0.0, max_weight=1.0)
    hedge = HedgeWeights(["a", "b"], cfg)
    hedge.update({"a": [0.0, 1.0], "b": [1.0, 1.0, 1.0]})
    w = hedge.weights(["a", "b"])
    assert w["a"] / w["b"] == pytest.approx(math.exp(0.5 * (3.0 - 1.0)))


def test_unhealthy_members_get_zero_and_the_rest_are_renormalised() -> None:
    cfg = config(decay=1.0, min_weight=0.05, max_weight=0.9)
    hedge = HedgeWeights(MEMBERS, cfg)
    hedge.update({"logistic": [0.0, 0.0], "mlp": [1.0, 0.0], "tabresnet": [0.0, 0.0]})
    w = hedge.weights(["logistic", "mlp"])
    assert w["tabresnet"] == 0.0
    assert w["logistic"] + w["mlp"] == pytest.approx(1.0)
    # Raw Hedge ratio is kept between the healthy members (bounds do not bind here).
    assert w["logistic"] / w["mlp"] == pytest.approx(math.exp(cfg.eta))
    assert set(w) == set(MEMBERS)


def test_single_healthy_member_gets_all_weight_even_if_worst() -> None:
    hedge = HedgeWeights(MEMBERS, SHIPPED)
    hedge.update({"logistic": [0.0] * 10, "mlp": [0.0] * 10, "tabresnet": [1.0] * 10})
    assert hedge.weights(["tabresnet"]) == {"logistic": 0.0, "mlp": 0.0, "tabresnet": 1.0}


def test_no_healthy_member_gives_all_zero_and_unknown_names_are_ignored() -> None:
    hedge = HedgeWeights(MEMBERS, SHIPPED)
    assert hedge.weights([]) == {m: 0.0 for m in MEMBERS}
    assert hedge.weights(["ghost"]) == {m: 0.0 for m in MEMBERS}
    assert hedge.weights({"mlp", "ghost"}) == {"logistic": 0.0, "mlp": 1.0, "tabresnet": 0.0}


def _recovery_weight(decay: float, *, bad: int, good: int) -> float:
    """Weight of a member wrong on ``bad`` samples then right on ``good`` ones, vs the opposite."""
    cfg = config(decay=decay)
    hedge = HedgeWeights(["recovering", "degrading"], cfg)
    hedge.update({"recovering": np.ones(bad), "degrading": np.zeros(bad)})
    hedge.update({"recovering": np.zeros(good), "degrading": np.ones(good)})
    return hedge.weights(["recovering", "degrading"])["recovering"]


def test_decay_lets_a_recovered_member_regain_weight() -> None:
    cfg = SHIPPED
    # With two members the cap binds first: the loser gets 1 - max_weight, not the floor.
    bottom, top = 1 - cfg.max_weight, cfg.max_weight
    # After a long bad spell the member is at the bottom...
    assert _recovery_weight(0.99, bad=300, good=0) == pytest.approx(bottom)
    # ...and with forgetting, enough good samples bring it back up to the cap,
    assert _recovery_weight(0.99, bad=300, good=150) == pytest.approx(top)
    # whereas without forgetting the same evidence is not enough (it would need > 300).
    assert _recovery_weight(1.0, bad=300, good=150) == pytest.approx(bottom)
    # Its weight rises monotonically as the good samples accumulate.
    curve = [_recovery_weight(0.99, bad=300, good=g) for g in range(0, 160, 10)]
    assert all(later >= earlier - TOL for earlier, later in zip(curve, curve[1:]))
    assert curve[0] < 0.5 < curve[-1]


def test_decay_lets_a_recovered_member_leave_the_floor() -> None:
    cfg = SHIPPED
    hedge = HedgeWeights(MEMBERS, cfg)
    hedge.update({"logistic": np.zeros(300), "mlp": np.zeros(300), "tabresnet": np.ones(300)})
    assert hedge.weights(MEMBERS)["tabresnet"] == pytest.approx(cfg.min_weight)
    # Drift: now the other two are wrong half the time and tabresnet is right.
    for _ in range(30):
        hedge.update({"logistic": [1.0, 0.0] * 5, "mlp": [0.0, 1.0] * 5, "tabresnet": np.zeros(10)})
    w = hedge.weights(MEMBERS)
    assert w["tabresnet"] == pytest.approx(cfg.max_weight)
    assert w["logistic"] + w["mlp"] == pytest.approx(1 - cfg.max_weight)
    # Same error rate, but mlp's errors are the more recent ones, so they weigh more.
    assert w["logistic"] > w["mlp"] > cfg.min_weight


def test_a_restarted_member_starts_from_its_new_versions_evidence_not_its_old_losses() -> None:
    cfg = SHIPPED
    hedge = HedgeWeights(MEMBERS, cfg)
    # The world changed: every member is mostly wrong, then two are retrained.
    hedge.update({"logistic": np.full(200, 0.8), "mlp": np.full(200, 0.7), "tabresnet": np.full(200, 0.75)})
    samples = hedge.samples("mlp")
    # On its live trial mlp's new version lost 0.2 per sample: it takes the lead at once...
    hedge.restart("mlp", 0.2)
    assert hedge.loss("mlp") == pytest.approx(0.2 * samples) and hedge.samples("mlp") == samples
    assert hedge.weights(MEMBERS)["mlp"] == pytest.approx(cfg.max_weight)
    # ...and tabresnet's, promoted with no live evidence, starts in the middle of the pack.
    hedge.restart("tabresnet")
    assert hedge.loss("tabresnet") / samples == pytest.approx(np.median([0.8, 0.2]))
    w = hedge.weights(MEMBERS)
    assert w["mlp"] > w["tabresnet"] > w["logistic"]
    # Fresh losses count from there as usual.
    hedge.update({"tabresnet": np.zeros(50)})
    assert hedge.loss("tabresnet") < 0.5 * samples
    with pytest.raises(ValueError, match="loss_rate"):
        hedge.restart("mlp", float("nan"))
    with pytest.raises(KeyError, match="not an ensemble member"):
        hedge.restart("xgboost", 0.1)


def test_restart_of_a_member_never_scored_keeps_it_unscored() -> None:
    hedge = HedgeWeights(MEMBERS, SHIPPED)
    hedge.restart("mlp", 0.3)
    assert hedge.loss("mlp") == 0.0 and hedge.weights(MEMBERS) == pytest.approx({m: 1 / 3 for m in MEMBERS})


def test_update_decays_then_adds_per_sample() -> None:
    d = 0.9
    hedge = HedgeWeights(["a", "b"], config(decay=d))
    hedge.update({"a": [1.0, 0.0, 1.0]})
    assert hedge.loss("a") == pytest.approx(d**2 + 1.0)
    assert hedge.samples("a") == pytest.approx(1.0 + d + d**2)
    # Members that did not answer are untouched.
    assert hedge.loss("b") == 0.0 and hedge.samples("b") == 0.0
    hedge.update({"a": [0.5]})
    assert hedge.loss("a") == pytest.approx((d**2 + 1.0) * d + 0.5)


def test_batched_update_equals_sample_by_sample() -> None:
    rng = np.random.default_rng(3)
    losses = {m: rng.random(25) for m in MEMBERS}
    batched = HedgeWeights(MEMBERS, SHIPPED)
    batched.update(losses)
    one_by_one = HedgeWeights(MEMBERS, SHIPPED)
    for i in range(25):
        one_by_one.update({m: [float(losses[m][i])] for m in MEMBERS})
    for m in MEMBERS:
        assert batched.loss(m) == pytest.approx(one_by_one.loss(m), rel=1e-12)
        assert batched.samples(m) == pytest.approx(one_by_one.samples(m), rel=1e-12)


def test_update_ignores_unknown_names_and_nan_and_clips() -> None:
    reference = HedgeWeights(MEMBERS, SHIPPED)
    reference.update({"logistic": [1.0, 0.0, 0.25]})

    hedge = HedgeWeights(MEMBERS, SHIPPED)
    hedge.update({"logistic": [7.0, math.nan, -3.0, 0.25], "ghost": [1.0, 1.0], "mlp": [math.nan]})

    assert hedge.to_dict() == reference.to_dict()
    assert hedge.samples("mlp") == 0.0  # an all-NaN batch is no evidence at all
    with pytest.raises(KeyError, match="ghost"):
        hedge.samples("ghost")


def test_empty_update_is_a_no_op() -> None:
    hedge = HedgeWeights(MEMBERS, SHIPPED)
    hedge.update({"logistic": [0.0, 1.0]})
    before = hedge.to_dict()
    hedge.update({})
    hedge.update({"logistic": [], "mlp": np.array([])})
    assert hedge.to_dict() == before


def test_to_dict_from_dict_round_trip_through_json_gives_identical_weights() -> None:
    cfg = config(eta=0.8, decay=0.97, min_weight=0.02, max_weight=0.8)
    rng = np.random.default_rng(11)
    hedge = HedgeWeights(MEMBERS, cfg)
    for _ in range(10):
        hedge.update({m: (rng.random(8) < p).astype(float) for m, p in zip(MEMBERS, (0.1, 0.25, 0.4))})

    restored = HedgeWeights.from_dict(json.loads(json.dumps(hedge.to_dict())), cfg)

    for healthy in (MEMBERS, MEMBERS[:2], MEMBERS[1:], ["mlp"], []):
        assert restored.weights(healthy) == hedge.weights(healthy)
    for m in MEMBERS:
        assert restored.samples(m) == hedge.samples(m)
    # And the two evolve identically afterwards.
    more = {m: rng.random(5) for m in MEMBERS}
    hedge.update(more)
    restored.update(more)
    assert restored.weights(MEMBERS) == hedge.weights(MEMBERS)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 99, "members": ["a"], "loss": {"a": 0.0}, "samples": {"a": 0.0}},
        {"version": 1, "members": ["a"], "loss": {}, "samples": {"a": 0.0}},
        {"version": 1, "members": ["a"], "loss": {"a": -1.0}, "samples": {"a": 0.0}},
        {"version": 1, "members": ["a"], "loss": {"a": "x"}, "samples": {"a": 0.0}},
    ],
)
def test_from_dict_rejects_malformed_state(data: dict) -> None:
    with pytest.raises(ValueError, match="not a HedgeWeights state"):
        HedgeWeights.from_dict(data, SHIPPED)

