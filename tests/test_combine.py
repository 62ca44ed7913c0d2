"""Weighted soft voting and the degraded fallback."""

from __future__ import annotations

import numpy as np
import pytest

from serve_apps.combine import combine, equal_weights

A = np.array([[0.9, 0.1]])
B = np.array([[0.5, 0.5]])
C = np.array([[0.1, 0.9]])


def test_weighted_mean_of_probabilities():
    out = combine({"a": A, "b": B, "c": C}, {"a": 0.5, "b": 0.25, "c": 0.25}, fallback="a", min_members=2)
    assert out is not None and not out.degraded
    np.testing.assert_allclose(out.probabilities, [[0.6, 0.4]])
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0)


def test_weights_renormalise_over_members_that_answered():
    out = combine({"a": A, "c": C}, equal_weights(["a", "b", "c"]), fallback="a", min_members=2)
    np.testing.assert_allclose(out.probabilities, [[0.5, 0.5]])
    assert out.members_used == ("a", "c") and not out.degraded


def test_too_few_members_uses_the_fallback_alone_and_says_degraded():
    out = combine({"a": A, "c": C}, equal_weights(["a", "b", "c"]), fallback="a", min_members=3)
    assert out.degraded and out.members_used == ("a",)
    np.testing.assert_allclose(out.probabilities, A)


def test_without_the_fallback_whoever_answered_is_used_degraded():
    out = combine({"c": C}, equal_weights(["a", "b", "c"]), fallback="a", min_members=2)
    assert out.degraded and out.members_used == ("c",)


def test_zero_weight_members_are_ignored_unless_alone():
    w = {"a": 0.5, "b": 0.5, "c": 0.0}
    out = combine({"a": A, "b": B, "c": C}, w, fallback="a", min_members=2)
    assert out.members_used == ("a", "b")
    np.testing.assert_allclose(out.probabilities, [[0.7, 0.3]])


def test_nobody_answered():
    assert combine({}, {"a": 1.0}, fallback="a", min_members=1) is None


@pytest.mark.parametrize("n", [1, 3, 7])
def test_equal_weights_sum_to_one(n):
    assert sum(equal_weights([str(i) for i in range(n)]).values()) == pytest.approx(1.0)


def test_when_only_zero_weight_members_answer_they_are_averaged_equally():
    out = combine({"b": B, "c": C}, {"a": 1.0, "b": 0.0, "c": 0.0}, fallback="a", min_members=1)
    assert out.members_used == ("b", "c")
    np.testing.assert_allclose(out.probabilities, [[0.3, 0.7]])


def test_an_answer_from_quarantined_members_only_is_degraded():
    out = combine({"b": B, "c": C}, {"a": 1.0, "b": 0.0, "c": 0.0}, fallback="a", min_members=2)
    assert out.degraded


def test_the_fallback_stands_in_even_at_zero_weight():
    """Too few healthy members: the fallback's known, stable answer beats a thin weighted mean."""
    out = combine({"a": A, "b": B}, {"a": 0.0, "b": 1.0}, fallback="a", min_members=2)
    assert out.degraded and out.members_used == ("a",)
    np.testing.assert_allclose(out.probabilities, A)


def test_enough_healthy_members_is_not_degraded_even_without_the_fallback():
    out = combine({"b": B, "c": C}, equal_weights(["a", "b", "c"]), fallback="a", min_members=2)
    assert not out.degraded and out.members_used == ("b", "c")
