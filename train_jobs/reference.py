"""The reference data a model version is monitored against.

Drift and data-quality checks compare live inputs with what the model learnt
from. Shipping the training table to the controller would be heavy (and leak
data), so each version stores a compact summary, checksummed with its weights:
per numeric feature a seeded sample of its training values (enough for a
two-sample KS test and quantile bins) and the mean, sd and count of *all* of
them (the sequential CUSUM reads only those, and its delay shrinks with the
rows they were measured on), per categorical feature the training count
of every level plus an "other" bucket, and every feature's missing share.

A tensor feature keeps only its missing share here (``tensor=True``, neither a
sample nor counts): per-element tests do not apply to hundreds of pixels, and
tensor drift works on a projection of the whole tensor instead (issue 17 item 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from raymedic.errors import SchemaError
from train_jobs.schema import ModelSchema, is_missing

__all__ = ["FeatureReference", "Reference", "REFERENCE_SAMPLE"]

REFERENCE_SAMPLE = 2000
"""Numeric values kept per feature: KS and PSI on a window of hundreds of rows gain nothing from more."""


@dataclass(frozen=True)
class FeatureReference:
    """One feature's training distribution.

    Attributes:
        name: Feature name.
        numeric: True for float/int features (``sample`` set), False for categorical (``counts`` set) and tensor.
        missing_share: Share of training rows with no value.
        tensor: A tensor feature: neither ``sample`` nor ``counts`` (missing share only).
        sample: Sorted training values (numeric).
        counts: Training count per schema level, then one "other" count (categorical).
        moments: ``(mean, sd, count)`` of every finite training value (numeric), not just the sample's:
            what the sequential CUSUM standardizes by. None in documents written before they were kept.
    """

    name: str
    numeric: bool
    missing_share: float
    sample: np.ndarray | None = None
    counts: np.ndarray | None = None
    tensor: bool = False
    moments: tuple[float, float, int] | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """Level shares (categorical), smoothed so a level absent in training has a tiny, not zero, share."""
        c = np.asarray(self.counts, dtype=float) + 0.5
        return c / c.sum()

    def to_dict(self) -> dict[str, Any]:
        """As JSON (plain lists) for the version's metadata."""
        out: dict[str, Any] = {"name": self.name, "numeric": self.numeric, "missing_share": self.missing_share}
        if self.tensor:
            out["tensor"] = True
        elif self.numeric:
            out["sample"] = [float(x) for x in self.sample]
            if self.moments is not None:
                mean, sd, count = self.moments
                out["moments"] = {"mean": float(mean), "sd": float(sd), "count": int(count)}
        else:
            out["counts"] = [int(x) for x in self.counts]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureReference":
        """Read back what :meth:`to_dict` stored."""
        numeric, tensor = bool(d["numeric"]), bool(d.get("tensor", False))
        if tensor:
            return cls(name=str(d["name"]), numeric=False, missing_share=float(d["missing_share"]), tensor=True)
        m = d.get("moments") if numeric else None
        return cls(name=str(d["name"]), numeric=numeric, missing_share=float(d["missing_share"]),
                   sample=np.asarray(d["sample"], dtype=float) if numeric else None,
                   counts=None if numeric else np.asarray(d["counts"], dtype=float),
                   moments=None if m is None else (float(m["mean"]), float(m["sd"]), int(m["count"])))


@dataclass(frozen=True)
class Reference:
    """Per-feature training distributions, in schema order."""

    rows: int
    features: tuple[FeatureReference, ...]

    @classmethod
    def build(cls, df: pd.DataFrame, schema: ModelSchema, *, sample: int = REFERENCE_SAMPLE,
              seed: int = 0) -> "Reference":
        """Summarise the training split ``df`` (the rows the preprocessor was fitted on)."""
        rng = np.random.default_rng(seed)
        feats = []
        for f in schema.features:
            col = df[f.name]
            missing = col.map(is_missing).to_numpy(dtype=bool)
            share = float(missing.mean()) if len(col) else 0.0
            present = col[~missing]
            if f.tensor:  # no per-element summary: tensor drift uses its own projection (see the module doc)
                feats.append(FeatureReference(f.name, False, share, tensor=True))
            elif f.numeric:
                x = pd.to_numeric(present, errors="coerce").to_numpy(dtype=float)
                x = x[np.isfinite(x)]
                moments = (float(x.mean()), float(x.std(ddof=1)), len(x)) if len(x) > 1 else None
                if len(x) > sample:
                    x = rng.choice(x, sample, replace=False)
                feats.append(FeatureReference(f.name, True, share, sample=np.sort(x), moments=moments))
            else:
                counts = np.zeros(len(f.levels or ()) + 1)
                for v in present:
                    i = f.level_index(v)
                    counts[len(counts) - 1 if i is None else i] += 1
                feats.append(FeatureReference(f.name, False, share, counts=counts))
        return cls(rows=len(df), features=tuple(feats))

    def to_dict(self) -> dict[str, Any]:
        """As JSON for the version's metadata, where the controller's data monitor reads it."""
        return {"rows": self.rows, "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Reference":
        """Read back what :meth:`to_dict` stored.

        Raises:
            SchemaError: The stored document is malformed.
        """
        try:
            return cls(rows=int(d["rows"]), features=tuple(FeatureReference.from_dict(f) for f in d["features"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed reference data: {exc}") from exc
