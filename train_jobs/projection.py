"""A fixed low-dimensional view of a tensor feature, fitted at training time, for drift tests (pure NumPy).

Per-feature tests do not apply to 784 pixels: thousands of strongly dependent
tests, each too weak alone, and a correction that kills what power is left.
Drift is tested instead on a few coordinates that summarise the training inputs:

- the first ``k`` principal components of the standardised, flattened rows, each
  divided by its training sd (so that every coordinate is on the same scale for the
  kernel of :mod:`train_jobs.mmd` and standardised for the per-component CUSUMs);
- one more coordinate, ``residual``: the log of the mean squared reconstruction
  error off those ``k`` components, standardised on the training rows (the
  squared prediction error of PCA process monitoring, Jackson & Mudholkar 1979).
  What the components leave out — noise, rotation, strokes where training had none —
  moves it, so a change outside the top ``k`` directions is not invisible.

Standardisation is the member preprocessor's for a tensor: one mean and one sd
over every element, so what is projected is what the model sees.

**How many components.** The smallest ``k`` that explains ``variance`` (90 %)
of the training variance, capped at ``max_components`` (8): the MMD's median
heuristic loses its contrast as dimensions grow (distances concentrate), each
per-component CUSUM takes a share of the false-alarm budget, and the residual
carries everything past ``k`` in one number. On 8×8 digits 8 components explain
about three quarters of the variance; the residual catches the rest.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((500, 4, 4)) * np.linspace(0.1, 3.0, 16).reshape(4, 4)
>>> p = Projection.fit(x, max_components=3)
>>> p.k, p.coordinate_names, p.transform(x[:2]).shape
(3, ['pc1', 'pc2', 'pc3', 'residual'], (2, 4))
>>> q = Projection.from_dict(p.to_dict())
>>> bool(np.allclose(q.transform(x[:5]), p.transform(x[:5])))
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymedic.errors import DataError, SchemaError

__all__ = ["EXPLAINED_VARIANCE", "MAX_COMPONENTS", "MIN_ROWS", "Projection"]

MAX_COMPONENTS = 8
"""Cap on ``k``: a kernel on more coordinates loses contrast, and each costs the CUSUMs budget."""
EXPLAINED_VARIANCE = 0.9
"""Stop adding components once they explain this share of the training variance (under the cap)."""
MIN_ROWS = 50
"""Rows a projection needs: fewer cannot place even the leading components."""
_EPS = 1e-6
"""Added to a mean squared residual before its log: an exact reconstruction is not minus infinity."""


@dataclass(frozen=True)
class Projection:
    """PCA of standardised, flattened tensors, plus the standardised log residual (see the module docstring).

    Attributes:
        shape: The feature's shape (one row), e.g. ``(8, 8)``.
        scale_mean: Mean over every element of the training rows (the preprocessor's standardisation).
        scale_sd: Sd over every element.
        mean: Per-element mean of the standardised flattened training rows, ``(D,)``.
        components: Principal axes, ``(k, D)``, orthonormal rows.
        sd: Training sd of each component's scores, ``(k,)``.
        explained_variance: Share of the training variance each component explains, ``(k,)``.
        residual_mean: Training mean of the log mean squared residual.
        residual_sd: ... and its sd.
    """

    shape: tuple[int, ...]
    scale_mean: float
    scale_sd: float
    mean: np.ndarray
    components: np.ndarray
    sd: np.ndarray
    explained_variance: np.ndarray
    residual_mean: float
    residual_sd: float

    @property
    def k(self) -> int:
        """Principal components kept."""
        return len(self.components)

    @property
    def dims(self) -> int:
        """Coordinates :meth:`transform` returns: ``k`` components and the residual."""
        return self.k + 1

    @property
    def coordinate_names(self) -> list[str]:
        """``pc1 … pck, residual``: the names findings and reports give the coordinates."""
        return [f"pc{i + 1}" for i in range(self.k)] + ["residual"]

    @classmethod
    def fit(cls, rows: np.ndarray, *, max_components: int = MAX_COMPONENTS,
            variance: float = EXPLAINED_VARIANCE) -> Projection:
        """Fit on training rows ``[N, *shape]`` (the rows the model was fitted on, or a sample of them).

        Raises:
            DataError: Too few rows, values that are not finite, or rows that are all the same.
        """
        if not 1 <= max_components <= 64:
            raise DataError(f"max_components must be in [1, 64], got {max_components}")
        if not 0 < variance <= 1:
            raise DataError(f"variance must be in (0, 1], got {variance}: the share of training variance to explain")
        x = np.asarray(rows, dtype=float)
        if x.ndim < 2 or len(x) < MIN_ROWS:
            raise DataError(f"a tensor projection needs >= {MIN_ROWS} rows of shape [N, *shape], got array shape "
                            f"{x.shape}")
        if not np.isfinite(x).all():
            raise DataError("the tensor rows hold NaN or infinite values: drop or repair those rows before "
                            "fitting the drift projection")
        shape = tuple(int(s) for s in x.shape[1:])
        flat = x.reshape(len(x), -1)
        scale_mean, scale_sd = float(flat.mean()), float(flat.std())
        if scale_sd <= 0:
            raise DataError(f"every element of every training row is {scale_mean:g}: a constant tensor "
                            f"carries nothing to monitor")
        z = (flat - scale_mean) / scale_sd
        mean = z.mean(axis=0)
        centred = z - mean
        _u, s, vt = np.linalg.svd(centred, full_matrices=False)
        var = s ** 2 / (len(z) - 1)
        share = var / var.sum()
        rank = int(np.sum(s > s[0] * 1e-9))
        k = int(np.searchsorted(np.cumsum(share), variance - 1e-12) + 1)
        k = max(1, min(k, max_components, rank))
        components = vt[:k]
        scores = centred @ components.T
        sd = scores.std(axis=0, ddof=1)
        q = cls._log_residual(centred, scores, components)
        residual_sd = float(q.std(ddof=1))
        return cls(shape=shape, scale_mean=scale_mean, scale_sd=scale_sd, mean=mean, components=components,
                   sd=sd, explained_variance=share[:k], residual_mean=float(q.mean()),
                   residual_sd=residual_sd if residual_sd > 0 else 1.0)

    @staticmethod
    def _log_residual(centred: np.ndarray, scores: np.ndarray, components: np.ndarray) -> np.ndarray:
        r = centred - scores @ components
        return np.log(np.mean(r * r, axis=1) + _EPS)

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``[N, *shape]`` (or one row of ``shape``) → coordinates ``[N, k + 1]`` (components, residual).

        Raises:
            DataError: The rows do not have the fitted shape, or hold NaN/inf.
        """
        x = np.asarray(rows, dtype=float)
        if x.shape == self.shape:
            x = x[None]
        if x.shape[1:] != self.shape:
            raise DataError(f"expected tensor rows of shape {list(self.shape)} (the training shape), got array "
                            f"shape {list(x.shape)}")
        if not np.isfinite(x).all():
            raise DataError("the tensor rows hold NaN or infinite values: the drift projection needs finite values")
        centred = (x.reshape(len(x), -1) - self.scale_mean) / self.scale_sd - self.mean
        scores = centred @ self.components.T
        q = (self._log_residual(centred, scores, self.components) - self.residual_mean) / self.residual_sd
        return np.column_stack([scores / self.sd, q])

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON (lists and floats) for the version's reference document."""
        return {"shape": list(self.shape), "scale_mean": self.scale_mean, "scale_sd": self.scale_sd,
                "mean": self.mean.tolist(), "components": self.components.tolist(), "sd": self.sd.tolist(),
                "explained_variance": self.explained_variance.tolist(), "residual_mean": self.residual_mean,
                "residual_sd": self.residual_sd}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Projection:
        """Read back what :meth:`to_dict` stored.

        Raises:
            SchemaError: The stored projection is malformed (sizes that do not fit each other).
        """
        try:
            p = cls(shape=tuple(int(s) for s in d["shape"]), scale_mean=float(d["scale_mean"]),
                    scale_sd=float(d["scale_sd"]), mean=np.asarray(d["mean"], dtype=float),
                    components=np.asarray(d["components"], dtype=float), sd=np.asarray(d["sd"], dtype=float),
                    explained_variance=np.asarray(d["explained_variance"], dtype=float),
                    residual_mean=float(d["residual_mean"]), residual_sd=float(d["residual_sd"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed tensor projection in the reference: {exc}") from exc
        width = int(np.prod(p.shape))
        if p.components.ndim != 2 or p.components.shape[1] != width or p.mean.shape != (width,) \
                or p.sd.shape != (p.k,) or p.explained_variance.shape != (p.k,):
            raise SchemaError(f"malformed tensor projection in the reference: shape {list(p.shape)} with "
                              f"components {list(p.components.shape)}, mean {list(p.mean.shape)}, sd "
                              f"{list(p.sd.shape)}")
        return p
