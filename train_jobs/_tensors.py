"""Tensor-valued columns: Arrow ↔ the in-memory form every trainer sees (pure NumPy/pyarrow).

One in-memory representation, so that loading, preprocessing, the reference
summary, the retrain table and the stored training sample agree: **a pandas
column of dtype object whose cells are float32 ``numpy.ndarray`` of the feature's
shape** (``None`` for a missing tensor). On disk and on the wire to Arrow a
tensor column is a fixed-size list (nested fixed-size lists for 2-D and more,
e.g. ``fixed_size_list<fixed_size_list<float>[8]>[8]`` for 8x8 images, row-major);
pyarrow's ``fixed_shape_tensor`` extension type and plain (variable-length) list
columns whose rows all have one shape are read too.

Errors here are :class:`ValueError` with a short reason; :mod:`train_jobs.tables`
turns them into :class:`~raymedic.errors.DataError` naming the column and the fix.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["is_tensor_type", "arrow_to_arrays", "tensor_column", "as_tensor", "looks_like_tensor_cell",
           "frame_to_arrow", "TENSOR_DTYPE"]

TENSOR_DTYPE = "float32"
"""The one element type tensor features have for now (what every built-in and the contract compute in)."""


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def is_tensor_type(t: pa.DataType) -> bool:
    """An Arrow type that may hold a tensor column: (nested) lists or the fixed-shape tensor extension."""
    return isinstance(t, pa.FixedShapeTensorType) or _is_list(t)


def arrow_to_arrays(arr: pa.Array | pa.ChunkedArray) -> tuple[list[np.ndarray | None], tuple[int, ...]]:
    """An Arrow tensor column → (one float32 array of the common shape per row, None for a null row; the shape).

    Raises:
        ValueError: rows of different lengths at some depth (the message lists the lengths seen), null
            sub-lists, or elements that are not numbers.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=arr.type)
    perm: list[int] | None = None
    if isinstance(arr.type, pa.FixedShapeTensorType):
        # Arrow's `shape` is the stored (row-major) layout; `permutation` orders its dimensions into the
        # logical tensor, as pyarrow's own FixedShapeTensorArray.to_numpy_ndarray reads it.
        dims_fixed: tuple[int, ...] | None = tuple(int(d) for d in arr.type.shape)
        perm = list(arr.type.permutation or range(len(dims_fixed)))
        arr = arr.storage
    else:
        dims_fixed = None
    null_rows = arr.is_null().to_numpy(zero_copy_only=False)
    present = arr.filter(pc.invert(arr.is_null()))
    n = len(present)
    dims: list[int] = []
    level, depth = present, 0
    while _is_list(level.type):
        depth += 1
        if depth > 1 and level.null_count:
            raise ValueError(f"{level.null_count} null sub-list(s) at depth {depth}: every element must be present")
        if pa.types.is_fixed_size_list(level.type):
            dims.append(int(level.type.list_size))
        else:
            lengths = np.unique(pc.list_value_length(level).to_numpy(zero_copy_only=False))
            if len(lengths) > 1:
                shown = ", ".join(str(int(x)) for x in lengths[:8]) + (", ..." if len(lengths) > 8 else "")
                raise ValueError(f"variable-length lists: rows have {len(lengths)} different lengths at depth "
                                 f"{depth} ({shown})")
            dims.append(int(lengths[0]) if len(lengths) else 0)
        level = level.flatten()
    if not dims:
        raise ValueError(f"type {arr.type} is not a list")
    if not (pa.types.is_floating(level.type) or pa.types.is_integer(level.type)):
        raise ValueError(f"elements of type {level.type}; a tensor holds numbers")
    flat = level.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # null elements → NaN
    shape = tuple(dims)
    if dims_fixed is not None:
        block = flat.reshape((n, *dims_fixed)).transpose(0, *(int(i) + 1 for i in perm))
        shape = tuple(block.shape[1:])
    else:
        block = flat.reshape((n, *shape))
    block = np.ascontiguousarray(block)
    cells: list[np.ndarray | None] = [None] * len(null_rows)
    at = 0
    for i, is_null in enumerate(null_rows):
        if not is_null:
            cells[i] = block[at]
            at += 1
    return cells, shape


def tensor_column(arrays: Sequence[Any] | np.ndarray, *, shape: Sequence[int] | None = None) -> pa.Array:
    """Tensors → an Arrow fixed-size list column (nested for 2-D and more), float32, row-major.

    What a Parquet table with a tensor feature holds::

        images = np.random.rand(300, 8, 8).astype("float32")
        table = pa.table({"image": tensor_column(images), "label": labels})
        pq.write_table(table, "digits.parquet")

    Args:
        arrays: an ndarray ``[N, *shape]``, or a sequence of N arrays / nested lists of one shape
            (``None`` for a missing tensor, written as a null row).
        shape: the shape of one tensor; inferred from the first present row when not given.

    Raises:
        ValueError: rows of different shapes, or nothing to infer the shape from.
    """
    if isinstance(arrays, np.ndarray) and arrays.dtype != object:
        block = np.ascontiguousarray(arrays, dtype=np.float32)
        shape = tuple(block.shape[1:]) if shape is None else tuple(shape)
        mask = None
    else:
        cells = list(arrays)
        if shape is None:
            first = next((c for c in cells if c is not None), None)
            if first is None:
                raise ValueError("no present tensor to take the shape from: pass shape=")
            shape = np.asarray(first, dtype=np.float32).shape
        shape = tuple(int(d) for d in shape)
        block = np.zeros((len(cells), *shape), dtype=np.float32)
        mask = np.zeros(len(cells), dtype=bool)
        for i, c in enumerate(cells):
            if c is None:
                mask[i] = True
                continue
            block[i] = as_tensor(c, shape)
    if not shape:
        raise ValueError("a tensor column needs at least one dimension")
    out: pa.Array = pa.array(block.reshape(-1), type=pa.float32())
    for d in reversed(shape[1:]):
        out = pa.FixedSizeListArray.from_arrays(out, int(d))
    return pa.FixedSizeListArray.from_arrays(out, int(shape[0]), mask=None if mask is None else pa.array(mask))


def as_tensor(value: Any, shape: Sequence[int]) -> np.ndarray:
    """One cell (ndarray, nested lists, a flat row-major list, an object array of arrays) → float32 ``shape``.

    Raises:
        ValueError: it does not hold ``prod(shape)`` numbers in that shape (or flat).
    """
    shape = tuple(shape)
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = [as_tensor(v, shape[1:]) if len(shape) > 1 else v for v in value]
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape == shape:
        return arr
    if arr.ndim == 1 and arr.size == math.prod(shape):
        return arr.reshape(shape)
    raise ValueError(f"has shape {list(arr.shape)}; expected {list(shape)}")


def looks_like_tensor_cell(v: Any) -> bool:
    """A cell pandas or a user's code holds for a tensor: an ndarray or a (nested) list."""
    return isinstance(v, (np.ndarray, list, tuple))


def frame_to_arrow(df: pd.DataFrame) -> pa.Table:
    """``pa.Table.from_pandas``, with tensor columns (object columns of arrays / lists) as fixed-size lists.

    pyarrow converts 1-D ndarrays in an object column to variable-length lists and refuses 2-D ones; a
    fixed-size list keeps the shape, so what is written reads back as the same tensor feature.
    """
    tensors: dict[str, pa.Array] = {}
    for name in df.columns:
        col = df[name]
        if col.dtype == object:
            first = next((v for v in col if not _absent(v)), None)
            if first is not None and looks_like_tensor_cell(first):
                tensors[name] = tensor_column([None if _absent(v) else v for v in col])
    if not tensors:  # exactly what tables without tensors always gave (their fingerprints stay the same)
        return pa.Table.from_pandas(df, preserve_index=False)
    rest = pa.Table.from_pandas(df[[c for c in df.columns if c not in tensors]], preserve_index=False)
    arrays = [tensors[c] if c in tensors else rest.column(str(c)) for c in df.columns]
    return pa.table(arrays, names=[str(c) for c in df.columns])


def _absent(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
