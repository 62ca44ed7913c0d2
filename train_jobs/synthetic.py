"""A seeded synthetic tabular classification stream with drift on demand.

The demo, the tests and the drift benchmarks need data whose truth is known:
inputs are independent standard normals, labels come from a fixed, mildly
nonlinear function of them (so an MLP has something to gain over a linear model),
and a :class:`Drift` changes exactly one thing at a time: the inputs (covariate
shift, variance change), the input→label function (concept drift, inputs
unchanged), or the class frequencies (label shift).

>>> gen = SyntheticGenerator(SyntheticSpec(seed=0))
>>> df = gen.sample(5, seed=1)
>>> df.shape, list(df.columns[:3])
((5, 11), ['f0', 'f1', 'f2'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raymedic.errors import ConfigError

__all__ = ["SyntheticSpec", "Drift", "SyntheticGenerator"]


@dataclass(frozen=True)
class SyntheticSpec:
    """What the stream looks like; ``seed`` fixes the concept (the true decision function)."""

    n_features: int = 10
    n_classes: int = 2
    seed: int = 0
    noise: float = 0.35
    """Scale of the logistic noise added to class scores: ~88% Bayes accuracy at the default."""
    target: str = "label"

    def __post_init__(self) -> None:
        if not 2 <= self.n_features <= 1000:
            raise ConfigError(f"n_features must be in [2, 1000], got {self.n_features}")
        if not 2 <= self.n_classes <= 5:
            raise ConfigError(f"n_classes must be in [2, 5], got {self.n_classes}")
        if self.noise < 0:
            raise ConfigError(f"noise must be >= 0, got {self.noise}")


@dataclass(frozen=True)
class Drift:
    """One change to the stream; the default is no change."""

    mean_shift: dict[str, float] = field(default_factory=dict)
    """Per feature, shift of the mean in standard deviations (covariate shift)."""
    scale: dict[str, float] = field(default_factory=dict)
    """Per feature, factor on the standard deviation (variance change)."""
    concept_rotation_deg: float = 0.0
    """Rotate the true decision directions; the input distribution is unchanged."""
    class_prior: tuple[float, ...] | None = None
    """Resample so class frequencies match (label shift)."""


class SyntheticGenerator:
    """Deterministic for (spec, seed, drift): the same call gives the same table."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        d, k = spec.n_features, spec.n_classes
        w = rng.normal(size=(d, k if k > 2 else 1))
        self._w = w / np.linalg.norm(w, axis=0, keepdims=True) * 1.6
        # A direction orthogonal to each decision direction, the plane of concept rotation.
        u = rng.normal(size=w.shape)
        u -= (u * self._w).sum(0, keepdims=True) / (self._w ** 2).sum(0, keepdims=True) * self._w
        self._u = u / np.linalg.norm(u, axis=0, keepdims=True) * np.linalg.norm(self._w, axis=0, keepdims=True)
        self.feature_names = [f"f{i}" for i in range(d)]

    def _scores(self, x: np.ndarray, rotation_deg: float) -> np.ndarray:
        a = math.radians(rotation_deg)
        w = math.cos(a) * self._w + math.sin(a) * self._u
        lin = x @ w
        nonlinear = 0.8 * x[:, [0]] * x[:, [1]] + 0.6 * np.sin(2.0 * x[:, [2]])
        return lin + nonlinear

    def _labels(self, x: np.ndarray, rng: np.random.Generator, rotation_deg: float) -> np.ndarray:
        s = self._scores(x, rotation_deg)
        if self.spec.n_classes == 2:
            noisy = s[:, 0] + rng.logistic(scale=self.spec.noise, size=len(x))
            return (noisy > 0).astype(np.int64)
        noisy = s + rng.logistic(scale=self.spec.noise, size=s.shape)
        return noisy.argmax(1).astype(np.int64)

    def _inputs(self, n: int, rng: np.random.Generator, drift: Drift) -> np.ndarray:
        x = rng.standard_normal((n, self.spec.n_features))
        for name, factor in drift.scale.items():
            x[:, self._col(name)] *= factor
        for name, shift in drift.mean_shift.items():
            x[:, self._col(name)] += shift
        return x

    def _col(self, name: str) -> int:
        try:
            return self.feature_names.index(name)
        except ValueError:
            raise ConfigError(f"drift names unknown feature {name!r}; features are {self.feature_names}") from None

    def sample(self, n_rows: int, *, seed: int, drift: Drift = Drift()) -> pd.DataFrame:
        """``n_rows`` labelled rows (float features ``f0..``, int target)."""
        if n_rows < 1:
            raise ConfigError(f"n_rows must be >= 1, got {n_rows}")
        rng = np.random.default_rng([self.spec.seed, seed])
        if drift.class_prior is None:
            x = self._inputs(n_rows, rng, drift)
            y = self._labels(x, rng, drift.concept_rotation_deg)
        else:
            prior = np.asarray(drift.class_prior, dtype=float)
            if len(prior) != self.spec.n_classes or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
                raise ConfigError(f"class_prior must be {self.spec.n_classes} non-negative numbers summing to 1, "
                                  f"got {drift.class_prior}")
            want = np.floor(prior * n_rows).astype(int)
            want[np.argmax(prior)] += n_rows - want.sum()
            xs, ys, have = [], [], np.zeros_like(want)
            while (have < want).any():  # rejection sampling keeps p(x | y) unchanged
                x = self._inputs(max(4 * n_rows, 256), rng, drift)
                y = self._labels(x, rng, drift.concept_rotation_deg)
                for c in range(self.spec.n_classes):
                    take = np.flatnonzero(y == c)[: max(0, want[c] - have[c])]
                    xs.append(x[take]); ys.append(y[take]); have[c] += len(take)
            x, y = np.concatenate(xs), np.concatenate(ys)
            order = rng.permutation(len(y))
            x, y = x[order], y[order]
        df = pd.DataFrame(x, columns=self.feature_names)
        df[self.spec.target] = y
        return df
