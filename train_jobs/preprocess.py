"""Preprocessing that belongs to a model version.

Fitted on the training split, stored as JSON with the weights (and checksummed
with them), and applied by the very same code in training, serving and
retraining, so a served model never sees inputs encoded differently from the
ones it learnt on.

- numeric (float, int): standardised with the training mean and std; missing
  values become the training mean; clipped to ±``CLIP`` so an absurd input
  cannot blow up activations;
- categorical: one-hot over the ``max_onehot`` most frequent training levels plus
  one "other" column for rarer levels and levels never seen in training (copes
  with many levels at a fixed width); a missing value becomes the training mode.

Missing values are imputed here with the training statistic (mean, mode) so that
training, serving and retraining agree; whether the gateway lets a missing value
through at all is its per-feature policy (``data.missing`` in the config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from raymedic.errors import DataError, SchemaError
from train_jobs.schema import FeatureType, Label, ModelSchema, is_missing, level_key

__all__ = ["Preprocessor"]

CLIP = 10.0


_key = level_key
_missing = is_missing


@dataclass(frozen=True)
class _Numeric:
    mean: float
    std: float


@dataclass(frozen=True)
class _Categorical:
    levels: tuple[Label, ...]  # one-hot columns, then one "other" column

    @property
    def width(self) -> int:
        return len(self.levels) + 1


class Preprocessor:
    """Raw feature values → float32 model inputs; class labels ↔ indices."""

    def __init__(self, schema: ModelSchema, columns: Sequence[_Numeric | _Categorical]) -> None:
        self.schema = schema
        self._cols = list(columns)
        self._lookup = [
            {_key(level): i for i, level in enumerate(c.levels)} if isinstance(c, _Categorical) else None
            for c in self._cols
        ]
        self._class_lookup = {_key(c): i for i, c in enumerate(schema.classes)}
        self.output_dim = sum(1 if isinstance(c, _Numeric) else c.width for c in self._cols)

    # ---- fitting and persistence -------------------------------------------------------

    @classmethod
    def fit(cls, df: pd.DataFrame, schema: ModelSchema, *, max_onehot: int = 32) -> "Preprocessor":
        """Fit on the training split: per numeric feature its mean and sd, per categorical one its
        ``max_onehot`` most frequent levels (the rest share one "other" column).

        Fitted on the training split only, so validation and live rows are encoded with
        what training saw.

        Raises:
            DataError: A schema feature is not a column of ``df``.
        """
        cols: list[_Numeric | _Categorical] = []
        for f in schema.features:
            if f.name not in df.columns:
                raise DataError(f"column {f.name!r} of the schema is not in the table")
            col = df[f.name]
            if f.type is FeatureType.CATEGORICAL:
                counts: dict[tuple[str, Any], int] = {}
                first: dict[tuple[str, Any], Any] = {}
                for v in col:
                    if _missing(v):
                        continue
                    k = _key(v)
                    counts[k] = counts.get(k, 0) + 1
                    first.setdefault(k, v.item() if isinstance(v, np.generic) else v)
                top = sorted(counts, key=lambda k: (-counts[k], k))[:max_onehot]
                cols.append(_Categorical(levels=tuple(first[k] for k in top)))
            else:
                x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
                mean = float(np.nanmean(x)) if np.isfinite(x).any() else 0.0
                std = float(np.nanstd(x)) if np.isfinite(x).any() else 1.0
                cols.append(_Numeric(mean=mean, std=std if std > 1e-12 else 1.0))
        return cls(schema, cols)

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored with each version, so a replica encodes requests exactly as training did."""
        return {
            "schema": self.schema.to_dict(),
            "columns": [
                {"numeric": {"mean": c.mean, "std": c.std}} if isinstance(c, _Numeric)
                else {"categorical": {"levels": list(c.levels)}}
                for c in self._cols
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessor":
        """Read back what :meth:`to_dict` stored.

        Raises:
            SchemaError: The stored document is malformed or disagrees with its schema.
        """
        try:
            schema = ModelSchema.from_dict(data["schema"])
            cols: list[_Numeric | _Categorical] = []
            for c in data["columns"]:
                if "numeric" in c:
                    cols.append(_Numeric(mean=float(c["numeric"]["mean"]), std=float(c["numeric"]["std"])))
                else:
                    cols.append(_Categorical(levels=tuple(c["categorical"]["levels"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed preprocessor: {exc}") from exc
        if len(cols) != len(schema.features):
            raise SchemaError("preprocessor and schema disagree on the number of features")
        return cls(schema, cols)

    # ---- transforms ----------------------------------------------------------------------

    def _columns(self, values_by_feature: Iterable[Sequence[Any]], n: int) -> np.ndarray:
        out = np.zeros((n, self.output_dim), dtype=np.float32)
        at = 0
        for spec, lookup, values in zip(self._cols, self._lookup, values_by_feature):
            if isinstance(spec, _Numeric):
                x = np.array([spec.mean if _missing(v) else v for v in values], dtype=np.float64)
                out[:, at] = np.clip((x - spec.mean) / spec.std, -CLIP, CLIP)
                at += 1
            else:
                other = len(spec.levels)
                # Levels are ordered by training frequency: index 0 is the mode.
                idx = [0 if _missing(v) else lookup.get(_key(v), other) for v in values]
                out[np.arange(n), at + np.asarray(idx, dtype=np.int64)] = 1.0
                at += spec.width
        return out

    def transform_rows(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """Rows of raw values in schema order (the serving path) → model inputs."""
        n = len(rows)
        return self._columns(([r[j] for r in rows] for j in range(len(self._cols))), n)

    def transform_frame(self, df: pd.DataFrame) -> np.ndarray:
        """A table with the schema's columns (others ignored) → model inputs."""
        missing = [f for f in self.schema.feature_names if f not in df.columns]
        if missing:
            raise DataError(f"the table lacks the feature column(s) {missing}")
        return self._columns((df[f].tolist() for f in self.schema.feature_names), len(df))

    def encode_labels(self, values: Iterable[Any]) -> np.ndarray:
        """Class labels → class indices (the probability columns' order).

        Raises:
            DataError: A label is not one of the schema's classes.
        """
        out = []
        for v in values:
            i = self._class_lookup.get(_key(v.item() if isinstance(v, np.generic) else v))
            if i is None:
                raise DataError(f"label {v!r} is not one of the model's classes {list(self.schema.classes)}")
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    def decode_labels(self, indices: Iterable[int]) -> list[Label]:
        """Class indices → the schema's class labels (as the training table had them)."""
        return [self.schema.classes[int(i)] for i in indices]
