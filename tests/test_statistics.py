"""Two-sample drift statistics and Wilson bounds (controllers.detectors.two_sample, .intervals): pure.

Checked against SciPy where SciPy has the same statistic, and for the properties the monitors rely on
(an effect size that does not grow with the window; bounds that bracket the estimate and narrow with n).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from controllers.detectors.intervals import wilson_lower, wilson_upper
from controllers.detectors.two_sample import MIN_EXPECTED, categorical_drift, numeric_drift, psi


@pytest.mark.parametrize(("p", "n"), [(0.85, 100), (0.5, 40), (0.02, 300), (0.97, 1_000), (0.0, 25), (1.0, 25)])
def test_wilson_bounds_are_scipys_wilson_interval(p: float, n: int) -> None:
    ci = stats.binomtest(round(p * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_lower(p, n) == pytest.approx(ci.low, abs=1e-4)
    assert wilson_upper(p, n) == pytest.approx(ci.high, abs=1e-4)


def test_wilson_bounds_bracket_the_share_narrow_with_more_trials_and_widen_with_z() -> None:
    widths = []
    for n in (20, 100, 500, 5_000):
        lo, hi = wilson_lower(0.8, n), wilson_upper(0.8, n)
        assert 0.0 <= lo < 0.8 < hi <= 1.0
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)
    assert wilson_upper(0.8, 100, z=2.576) > wilson_upper(0.8, 100)
    assert wilson_upper(0.8, 0) == 1.0 and wilson_lower(0.8, 0) == 0.0  # no trials: nothing ruled out


def test_psi_is_zero_for_equal_shares_symmetric_and_positive_otherwise() -> None:
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.4, 0.4, 0.2])
    assert psi(p, p) == 0.0
    assert psi(p, q) == pytest.approx(psi(q, p)) and psi(p, q) > 0
    # The sum of both Kullback-Leibler divergences.
    assert psi(p, q) == pytest.approx(stats.entropy(p, q) + stats.entropy(q, p))


def test_numeric_drift_is_scipys_ks_and_wasserstein() -> None:
    rng = np.random.default_rng(1)
    ref, win = rng.normal(0, 2, 5_000), rng.normal(0.6, 2, 2_000)
    out = numeric_drift(ref, win)
    ks = stats.ks_2samp(win, ref)
    assert out["test"] == "ks"
    assert (out["statistic"], out["p_value"]) == (pytest.approx(ks.statistic), pytest.approx(ks.pvalue))
    assert out["wasserstein_sd"] == pytest.approx(stats.wasserstein_distance(win, ref) / np.std(ref))
    assert out["wasserstein_sd"] == pytest.approx(0.3, abs=0.1)  # 0.6 in units of the reference's sd of 2


def test_numeric_drift_psi_measures_the_shift_not_the_window_size() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, 5_000)
    small, large = numeric_drift(ref, rng.normal(0.3, 1, 500)), numeric_drift(ref, rng.normal(0.3, 1, 5_000))
    assert large["p_value"] < small["p_value"]  # significance grows with the window...
    assert large["psi"] == pytest.approx(small["psi"], rel=0.5)  # ...the effect size does not
    assert numeric_drift(ref, rng.normal(1.0, 1, 500))["psi"] > 2 * small["psi"]


def test_categorical_drift_is_scipys_chi_squared_and_js_distance() -> None:
    shares = np.array([0.5, 0.3, 0.2])
    counts = np.array([200.0, 200.0, 100.0])
    out = categorical_drift(shares, counts)
    chi = stats.chisquare(counts, shares * counts.sum())
    assert out["test"] == "chi2"
    assert (out["statistic"], out["p_value"]) == (pytest.approx(chi.statistic), pytest.approx(chi.pvalue))
    m = (counts / counts.sum() + shares) / 2
    js = math.sqrt((stats.entropy(counts / counts.sum(), m, base=2) + stats.entropy(shares, m, base=2)) / 2)
    assert out["js"] == pytest.approx(js)
    same = categorical_drift(shares, shares * 500)
    assert same["p_value"] == pytest.approx(1.0) and same["js"] == pytest.approx(0.0, abs=1e-7)


def test_categorical_drift_pools_levels_too_rare_for_chi_squared() -> None:
    shares = np.array([0.6, 0.39, 0.005, 0.005])  # two levels expect 1 row each in 200
    counts = np.array([120.0, 76.0, 2.0, 2.0])
    assert (shares * counts.sum() < MIN_EXPECTED).sum() == 2
    pooled = stats.chisquare([120.0, 76.0, 4.0], np.array([0.6, 0.39, 0.01]) * 200)
    assert categorical_drift(shares, counts)["p_value"] == pytest.approx(pooled.pvalue)
    # Every cell too rare, so one pooled cell: no test is possible, and none is claimed.
    lone = categorical_drift(np.array([0.98, 0.01, 0.01]), np.array([4.0, 0.0, 0.0]))
    assert (lone["statistic"], lone["p_value"]) == (0.0, 1.0)
