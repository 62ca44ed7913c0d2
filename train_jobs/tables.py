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
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api import types as ptypes

from raymedic.errors import DataError
from train_jobs._tensors import (TENSOR_DTYPE, arrow_to_arrays, as_tensor, frame_to_arrow, is_tensor_type,
                                 looks_like_tensor_cell, tensor_column)
from train_jobs.schema import Feature, FeatureType, Label, ModelSchema

__all__ = ["load_table", "infer_schema", "fingerprint", "split", "json_row", "tensor_column", "frame_from_arrow",
           "frame_to_arrow", "PARQUET_TENSOR_HOWTO"]

PARQUET_TENSOR_HOWTO = (
    "write a Parquet file with a fixed-size list column, e.g. `from train_jobs.tables import tensor_column; "
    "pq.write_table(pa.table({'image': tensor_column(images), 'label': labels}), 'table.parquet')` "
    "(images: a float32 array [N, *shape]), or with plain pyarrow "
    "`pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 64)` for 64 numbers per row "
    "(nest a FixedSizeListArray per extra dimension, or use pa.FixedShapeTensorArray.from_numpy_ndarray(images))")
"""How to write a tensor column: the fix named by the errors that refuse a CSV or a ragged list column."""

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
            return frame_from_arrow(pq.read_table(p), where=str(p))
        if suffix == ".csv":
            df = pd.read_csv(p)
            _refuse_csv_tensors(df, str(p))
            return df
    except (pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            OSError) as exc:
        raise DataError(f"cannot read {str(p)!r}: {exc}") from None
    raise DataError(f"data file {str(p)!r} has suffix {suffix!r}; raymedic reads .parquet, .pq and .csv")


def frame_from_arrow(table: pa.Table, *, where: str = "the table") -> pd.DataFrame:
    """An Arrow table → pandas, each tensor column (fixed-size lists, nested, the fixed-shape tensor type, or
    lists of one length) as a column of float32 arrays of its shape (``None`` where the row has none).

    The one in-memory form of a tensor feature (:mod:`train_jobs._tensors`): the training table, the stored
    training sample a retrain reads back, and the retrain table all look the same to the preprocessor.

    Raises:
        DataError: a list column whose rows have different lengths, or that holds no numbers.
    """
    tensors: dict[str, list[Any]] = {}
    for name, col in zip(table.column_names, table.columns):
        if not is_tensor_type(col.type):
            continue
        try:
            tensors[name], _ = arrow_to_arrays(col)
        except ValueError as exc:
            raise DataError(f"column {name!r} of {where} is a list column raymedic cannot read as a tensor "
                            f"feature: {exc}. A tensor feature needs one shape in every row: pad or crop the "
                            f"rows to one length, then {PARQUET_TENSOR_HOWTO}") from None
    if not tensors:
        return table.to_pandas()
    df = table.drop_columns(list(tensors)).to_pandas()
    out = pd.DataFrame({c: (pd.Series(tensors[c], dtype=object, index=df.index) if c in tensors else df[c])
                        for c in table.column_names}, index=df.index)
    return out


def _refuse_csv_tensors(df: pd.DataFrame, where: str) -> None:
    """A CSV column of "[0.1, 0.2, ...]" strings is a tensor that CSV cannot hold: say how to write Parquet."""
    for name in df.columns:
        col = df[name]
        if ptypes.is_numeric_dtype(col) or ptypes.is_bool_dtype(col):
            continue
        head = [v for v in col.dropna().head(20)]
        if head and all(isinstance(v, str) and v.strip().startswith("[") and v.strip().endswith("]")
                        for v in head):
            raise DataError(f"column {name!r} of {where} holds list-looking strings (e.g. {head[0][:40]!r}): a CSV "
                            "cannot hold tensor features (every cell is text). To train on tensors, "
                            f"{PARQUET_TENSOR_HOWTO}")


def _tensor_feature(col: pd.Series, name: str) -> Feature:
    """A column of arrays or nested lists: one shape in every present row, finite numbers only."""
    cells = [v for v in col if v is not None and not (isinstance(v, float) and math.isnan(v))]
    first = np.asarray(cells[0], dtype=np.float32) if not isinstance(cells[0], np.ndarray) else cells[0]
    shape = tuple(int(d) for d in first.shape)
    try:
        block = np.stack([as_tensor(v, shape) for v in cells])
    except ValueError as exc:
        shapes = sorted({tuple(np.shape(v)) for v in cells[:1000]}, key=str)[:5]
        raise DataError(f"tensor column {name!r} has rows of different shapes (e.g. {[list(s) for s in shapes]}; "
                        f"{exc}): a tensor feature has one shape in every row; pad or crop them to one") from None
    if not shape:
        raise DataError(f"column {name!r} holds scalars inside arrays: store plain numbers instead")
    finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
    if not finite.all():
        raise DataError(f"tensor column {name!r} holds NaN or inf in {int((~finite).sum())} of {len(block)} row(s): "
                        "fix or drop those rows (a missing tensor is a null row, not NaN inside it)")
    return Feature(name, FeatureType.TENSOR, min=float(block.min()), max=float(block.max()), shape=shape,
                   dtype=TENSOR_DTYPE)


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
    if col.dtype == object and looks_like_tensor_cell(present.iloc[0]):
        return _tensor_feature(col, name)
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
    """sha256 of the table's content (columns sorted), stored with each model version.

    Tensor columns hash as their fixed-size lists (float32, row-major), whatever form the cells have."""
    table = frame_to_arrow(df[sorted(df.columns, key=str)])
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


def json_row(values: Sequence[Any]) -> list[Any]:
    """A table row's cells as a JSON client sends them: numpy scalars as Python numbers, NaN as null, a
    tensor as nested lists (the golden probes' rows, the benches' requests)."""
    out = []
    for v in values:
        if isinstance(v, np.ndarray):
            v = v.astype(np.float64).tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            v = None
        out.append(v)
    return out
