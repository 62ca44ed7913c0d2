"""Two-sample drift statistics: a window of live values against a reference sample (pure: NumPy/SciPy).

A window test asks two questions, and a feature drifts only when both answers say so:
is the window's distribution *significantly* different from the reference's (a test's
p-value, which thousands of rows make tiny for a negligible shift), and is the
difference *large* enough to matter (an effect size, independent of the window's
size). Numeric features get the two-sample Kolmogorov–Smirnov test, the population
stability index (PSI) on the reference's deciles and the Wasserstein distance in
reference standard deviations; categorical features the chi-squared goodness of fit
(rare reference levels pooled) and the Jensen–Shannon distance. The tests themselves
are SciPy's.

The data monitor (:mod:`controllers.monitors.data`) runs them per feature; the
performance monitor (:mod:`controllers.monitors.performance`) on the ensemble's
outputs (prediction drift).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> reference = rng.normal(0.0, 1.0, 2_000)
>>> moved = numeric_drift(reference, rng.normal(0.5, 1.0, 500))
>>> moved["p_value"] < 1e-6, round(moved["psi"], 2), round(moved["wasserstein_sd"], 2)
(True, 0.23, 0.5)
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

__all__ = ["psi", "numeric_drift", "categorical_drift", "PSI_BINS", "MIN_EXPECTED"]

PSI_BINS = 10
"""PSI on the reference's deciles: the usual warn/act levels (0.1/0.25) are set for ten bins."""
MIN_EXPECTED = 5.0
"""Chi-squared needs expected counts of about 5 per cell; rarer training levels are pooled."""


def psi(reference_shares: np.ndarray, window_shares: np.ndarray) -> float:
    """Population stability index of two share vectors (no zero shares: smooth the counts first).

    A symmetric effect size (the Jeffreys divergence of the binned distributions): unlike a p-value it
    does not grow with the window, so it says whether a shift is large enough to act on.
    """
    return float(np.sum((window_shares - reference_shares) * np.log(window_shares / reference_shares)))


def numeric_drift(reference: np.ndarray, window: np.ndarray) -> dict[str, float]:
    """KS test, PSI on reference deciles and Wasserstein distance in reference sds.

    Returns the figures a check reports (``test``, ``statistic``, ``p_value``, ``psi``, ``wasserstein_sd``):
    KS for significance, PSI for the size that decides warn or act, Wasserstein for how far in the
    feature's own units (reference sds) the window moved.
    """
    ks = stats.ks_2samp(window, reference)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    ref_h = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) + 0.5
    win_h = np.bincount(np.searchsorted(edges, window, side="right"), minlength=len(edges) + 1) + 0.5
    p, q = ref_h / ref_h.sum(), win_h / win_h.sum()
    sd = float(np.std(reference)) or 1.0
    return {"test": "ks", "statistic": float(ks.statistic), "p_value": float(ks.pvalue),
            "psi": psi(p, q),
            "wasserstein_sd": float(stats.wasserstein_distance(window, reference) / sd)}


def categorical_drift(reference_shares: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Chi-squared goodness of fit (rare training levels pooled) and Jensen–Shannon distance.

    Args:
        reference_shares: Share of each level in the reference, smoothed so that none is zero (e.g.
            :attr:`train_jobs.reference.FeatureReference.probabilities`).
        counts: The window's count of each level, in the same order.

    Returns:
        ``test``, ``statistic``, ``p_value`` (chi-squared: significance) and ``js`` (the Jensen–Shannon
        distance, base 2, in ``[0, 1]``: the effect size that decides warn or act).
    """
    probs = reference_shares
    n = float(counts.sum())
    expected = probs * n
    keep = expected >= MIN_EXPECTED
    if not keep.all():  # pool cells too rare for the chi-squared approximation into one
        obs = np.append(counts[keep], counts[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
    else:
        obs, exp = counts.astype(float), expected
    if len(obs) < 2:
        chi = (0.0, 1.0)
    else:
        r = stats.chisquare(obs, exp * (obs.sum() / exp.sum()))
        chi = (float(r.statistic), float(r.pvalue))
    return {"test": "chi2", "statistic": chi[0], "p_value": chi[1],
            "js": float(jensenshannon(counts / n, probs, base=2))}
