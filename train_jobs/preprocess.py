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
  with many levels at a fixed width); a missing value becomes the training mode;
- tensor: standardised with one mean and one std over all its training elements
  (per-element statistics would erase what a pixel's position means relative to
  its neighbours, and cost ``prod(shape)`` numbers), clipped like a numeric
  feature, flattened row-major into ``prod(shape)`` columns; a missing tensor
  becomes all-mean (zeros after standardisation). Built-in kinds therefore take a
  tensor flattened; a user's module gets it back in its shape (``ArchSpec.input_shape``).

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
from train_jobs._tensors import as_tensor
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
class _Tensor:
    mean: float
    std: float
    shape: tuple[int, ...]

    @property
    def width(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class _Categorical:
    levels: tuple[Label, ...]  # one-hot columns, then one "other" column

    @property
    def width(self) -> int:
        return len(self.levels) + 1


def _stack(values: Sequence[Any], shape: tuple[int, ...], name: str) -> np.ndarray:
    """Present tensor values → one float32 block ``[len(values), *shape]``."""
    try:
        return np.stack([as_tensor(v, shape) for v in values])
    except (ValueError, TypeError) as exc:
        raise DataError(f"tensor feature {name!r}: a value {exc}") from None


class Preprocessor:
    """Raw feature values → float32 model inputs; class labels ↔ indices."""

    def __init__(self, schema: ModelSchema, columns: Sequence[_Numeric | _Categorical | _Tensor]) -> None:
        self.schema = schema
        self._cols = list(columns)
        self._lookup = [
            {_key(level): i for i, level in enumerate(c.levels)} if isinstance(c, _Categorical) else None
            for c in self._cols
        ]
        self._class_lookup = {_key(c): i for i, c in enumerate(schema.classes)}
        self.output_dim = sum(1 if isinstance(c, _Numeric) else c.width for c in self._cols)
        self.names = tuple(f.name for f in schema.features)

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
        cols: list[_Numeric | _Categorical | _Tensor] = []
        for f in schema.features:
            if f.name not in df.columns:
                raise DataError(f"column {f.name!r} of the schema is not in the table")
            col = df[f.name]
            if f.type is FeatureType.TENSOR:
                shape = tuple(f.shape or ())
                present = [v for v in col if not _missing(v)]
                block = _stack(present, shape, f.name) if present else np.zeros((0, *shape), np.float32)
                x64 = block.astype(np.float64)
                finite = x64[np.isfinite(x64)]
                mean = float(finite.mean()) if finite.size else 0.0
                std = float(finite.std()) if finite.size else 1.0
                cols.append(_Tensor(mean=mean, std=std if std > 1e-12 else 1.0, shape=shape))
            elif f.type is FeatureType.CATEGORICAL:
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
                else {"tensor": {"mean": c.mean, "std": c.std, "shape": list(c.shape)}} if isinstance(c, _Tensor)
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
            cols: list[_Numeric | _Categorical | _Tensor] = []
            for c in data["columns"]:
                if "numeric" in c:
                    cols.append(_Numeric(mean=float(c["numeric"]["mean"]), std=float(c["numeric"]["std"])))
                elif "tensor" in c:
                    t = c["tensor"]
                    cols.append(_Tensor(mean=float(t["mean"]), std=float(t["std"]),
                                        shape=tuple(int(d) for d in t["shape"])))
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
        for name, spec, lookup, values in zip(self.names, self._cols, self._lookup, values_by_feature):
            if isinstance(spec, _Tensor):
                values = list(values)
                block = np.full((n, spec.width), spec.mean, dtype=np.float32)
                present = [i for i, v in enumerate(values) if not _missing(v)]
                if present:
                    block[present] = _stack([values[i] for i in present], spec.shape, name).reshape(len(present), -1)
                out[:, at:at + spec.width] = np.clip((block - spec.mean) / spec.std, -CLIP, CLIP)
                at += spec.width
            elif isinstance(spec, _Numeric):
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
        """Rows of raw values in schema order (the serving path) → model inputs.

        A tensor value may be nested lists of its shape, a flat row-major list, or a numpy array.
        """
        n = len(rows)
        return self._columns(([r[j] for r in rows] for j in range(len(self._cols))), n)

    def transform_frame(self, df: pd.DataFrame) -> np.ndarray:
        """A table with the schema's columns (others ignored) → model inputs."""
        missing = [f for f in self.schema.feature_names if f not in df.columns]
        if missing:
            raise DataError(f"the table lacks the feature column(s) {missing}")
        return self._columns((df[f].tolist() for f in self.schema.feature_names), len(df))

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor feature's shape, by name (what its flattened columns reshape to)."""
        return {n: c.shape for n, c in zip(self.names, self._cols) if isinstance(c, _Tensor)}

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
