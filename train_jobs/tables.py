"""Load a user's table and infer the schema, refusing bad tables before training.

Every refusal is a :class:`DataError` that names the column and the fix, because
a training run that fails ten minutes in on a problem visible in the first
second wastes the user's time and the cluster's.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api import types as ptypes

from raymedic.errors import DataError
from train_jobs.schema import Feature, FeatureType, Label, ModelSchema

__all__ = ["load_table", "infer_schema", "fingerprint", "split"]

ID_LIKE_UNIQUE_SHARE = 0.9
"""A string column whose values are this unique looks like an id, not a category."""


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a Parquet or CSV table."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist: pass --data with a .parquet or .csv file")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(p).to_pandas()
        if suffix == ".csv":
            return pd.read_csv(p)
    except (pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            OSError) as exc:
        raise DataError(f"cannot read {str(p)!r}: {exc}") from None
    raise DataError(f"data file {str(p)!r} has suffix {suffix!r}; raymedic reads .parquet, .pq and .csv")


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _classes(y: pd.Series, target: str) -> tuple[Label, ...]:
    if y.isna().any():
        raise DataError(f"target column {target!r} is missing in {int(y.isna().sum())} row(s); "
                        "drop those rows or fill in their labels")
    if ptypes.is_bool_dtype(y):
        values = sorted({bool(v) for v in y})
    elif ptypes.is_integer_dtype(y):
        values = sorted({int(v) for v in y})
    elif ptypes.is_float_dtype(y):
        if not all(float(v).is_integer() for v in y.unique()):
            raise DataError(f"target column {target!r} holds non-integer numbers (e.g. "
                            f"{[_py(v) for v in y.unique()[:3]]}): regression targets are not supported; "
                            "raymedic serves classifiers, so give class labels")
        values = sorted({int(v) for v in y})
    else:
        kinds = {type(v).__name__ for v in y}
        if len(kinds) > 1:
            raise DataError(f"target column {target!r} mixes value types {sorted(kinds)}; use one type of label")
        values = sorted({str(v) for v in y})
    if len(values) < 2:
        raise DataError(f"target column {target!r} has a single class {values}: a classifier needs at least "
                        "two; check the column or add examples of the other classes")
    return tuple(values)


def _feature(col: pd.Series, name: str, max_levels: int) -> Feature:
    present = col.dropna()
    if present.empty:
        raise DataError(f"feature column {name!r} is empty (all values missing): drop it or fill it in")
    if ptypes.is_bool_dtype(col):
        return Feature(name, FeatureType.CATEGORICAL, levels=(False, True))
    if ptypes.is_integer_dtype(col):
        return Feature(name, FeatureType.INT, min=float(present.min()), max=float(present.max()))
    if ptypes.is_float_dtype(col):
        return Feature(name, FeatureType.FLOAT, min=float(present.min()), max=float(present.max()))
    kinds: dict[str, list[Any]] = {}
    for v in present:
        key = "bool" if isinstance(v, (bool, np.bool_)) else (
            "number" if isinstance(v, (int, float, np.number)) else "string" if isinstance(v, str) else type(v).__name__)
        kinds.setdefault(key, []).append(v)
    if len(kinds) > 1:
        examples = "; ".join(f"{k}: {[_py(v) for v in vals[:2]]}" for k, vals in sorted(kinds.items()))
        raise DataError(f"feature column {name!r} mixes value types ({examples}); make the column one type "
                        "(e.g. fix the stray values, or quote all of them as strings)")
    if "bool" in kinds:
        return Feature(name, FeatureType.CATEGORICAL, levels=(False, True))
    if "number" in kinds:  # an object column of numbers only
        nums = present.astype(float)
        return Feature(name, FeatureType.FLOAT, min=float(nums.min()), max=float(nums.max()))
    counts = present.astype(str).value_counts()
    if len(counts) > max_levels and len(counts) / len(present) > ID_LIKE_UNIQUE_SHARE:
        raise DataError(f"feature column {name!r} has {len(counts)} distinct values in {len(present)} rows: it "
                        "looks like an identifier, which cannot generalise; drop the column")
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_levels]
    return Feature(name, FeatureType.CATEGORICAL, levels=tuple(k for k, _ in ordered))


def infer_schema(df: pd.DataFrame, *, target: str, max_levels: int = 1000) -> ModelSchema:
    """The schema of ``df`` with ``target`` as the label column."""
    if target not in df.columns:
        raise DataError(f"target column {target!r} is not in the table; pass --target with one of "
                        f"{[str(c) for c in df.columns]}")
    if len(df) == 0:
        raise DataError("the table has no rows: give a table with labelled examples")
    names = [str(c) for c in df.columns if c != target]
    if not names:
        raise DataError(f"the table has only the target column {target!r}: add feature columns")
    classes = _classes(df[target], target)
    features = tuple(replace(_feature(df[c], str(c), max_levels), missing_share=round(float(df[c].isna().mean()), 6))
                     for c in df.columns if c != target)
    return ModelSchema(features=features, target=target, classes=classes)


def fingerprint(df: pd.DataFrame) -> str:
    """sha256 of the table's content (columns sorted), stored with each model version."""
    table = pa.Table.from_pandas(df[sorted(df.columns, key=str)], preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def split(df: pd.DataFrame, *, val_fraction: float = 0.2, seed: int = 0,
          stratify_col: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded train/validation split, stratified by ``stratify_col`` when given."""
    rng = np.random.default_rng(seed)
    groups = [df.index.to_numpy()] if stratify_col is None else [
        g.index.to_numpy() for _, g in df.groupby(df[stratify_col].astype(str), sort=True)]
    val_idx: list[Any] = []
    for idx in groups:
        idx = rng.permutation(idx)
        n_val = int(math.floor(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = max(1, min(n_val, len(idx) - 1))
        val_idx.extend(idx[:n_val])
    val_mask = df.index.isin(val_idx)
    return df[~val_mask].reset_index(drop=True), df[val_mask].reset_index(drop=True)
