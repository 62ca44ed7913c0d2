"""How good a model's class probabilities are on labelled rows: the figures training, the gate and the
live performance monitor all report, computed one way.

Pure NumPy/SciPy. Training records them with each version, the champion/challenger
gate compares them on a holdout, and the healing controller computes them on live
labels: if the three computed them differently, a challenger could pass a gate on
figures the monitor would never reproduce.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

__all__ = ["CAL_BINS", "classification_metrics", "expected_calibration_error"]

CAL_BINS = 10
"""Equal-width confidence bins of the calibration error (the usual choice; fewer hide miscalibration)."""


def _auc_ovr(y: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC from ranks (Mann–Whitney U); None if no class has both outcomes."""
    aucs = []
    for k in range(probs.shape[1]):
        pos = y == k
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = stats.rankdata(probs[:, k])
        aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else None


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins."""
    bins = np.minimum((confidence * CAL_BINS).astype(int), CAL_BINS - 1)
    total = 0.0
    for b in range(CAL_BINS):
        m = bins == b
        if m.any():
            total += m.sum() * abs(correct[m].mean() - confidence[m].mean())
    return float(total / len(correct))


def classification_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro F1, macro OvR ROC AUC and ECE for labels ``y`` and probability rows ``probs``."""
    pred = probs.argmax(axis=1)
    correct = (pred == y).astype(float)
    f1s = []
    for k in range(probs.shape[1]):
        tp = float(((pred == k) & (y == k)).sum())
        fp = float(((pred == k) & (y != k)).sum())
        fn = float(((pred != k) & (y == k)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"labels": int(len(y)), "accuracy": float(correct.mean()), "f1_macro": float(np.mean(f1s)) if f1s else 0.0,
            "roc_auc": _auc_ovr(y, probs), "ece": expected_calibration_error(correct, probs.max(axis=1))}
