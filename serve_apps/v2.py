"""Open Inference Protocol (V2) REST bodies ↔ raymedic's own rows (pure, no Ray).

Clients written for KServe, Triton or MLServer send typed tensors. The gateway
accepts the two layouts such clients use for tabular models and turns them into
the V1 ``{"instances": [...]}`` body, so validation, policies, fan-out and
logging are the very same code path:

- one tensor per feature, named after it, shape ``[N]`` or ``[N, 1]``;
- one 2-D tensor ``[N, F]`` (any name) with the features in schema order, when
  every feature is numeric;
- for a tensor feature of shape ``S``, one tensor named after it of shape
  ``[N, *S]`` (or ``[N, prod(S)]``), datatype ``FP32`` (``FP64``, ``INT32`` and
  ``INT64`` are taken too), ``data`` row-major, flat or nested. Each row becomes
  that instance's nested lists, so V1 and V2 give the same answers.

Answers carry three output tensors: ``predictions`` (the class labels, typed
like the labels), ``probabilities`` (``FP32 [N, C]``, columns in
``schema.classes`` order) and ``inference_ids`` (``BYTES [N]``, for feedback).
"""

from __future__ import annotations

from typing import Any, Sequence

import math

import numpy as np

from raymedic.config import DEFAULT_MAX_TENSOR_ELEMENTS
from raymedic.errors import InvalidRequest, PayloadTooLarge
from train_jobs.schema import Feature, FeatureType, Label, ModelSchema

__all__ = ["instances_from_v2", "answer_to_v2", "model_metadata", "DATATYPES"]

NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
DATATYPES = NUMERIC | {"BOOL", "BYTES"}
TENSOR_DATATYPES = ("FP32", "FP64", "INT32", "INT64")
"""Datatypes a tensor feature's input may have (FP32 is its own; the others convert exactly enough)."""


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for x in data:
        out.extend(_flatten(x) if isinstance(x, list) else [x])
    return out


def _feature_datatype(kind: FeatureType, levels: Sequence[Label] | None) -> str:
    if kind is FeatureType.TENSOR:
        return "FP32"
    if kind is FeatureType.FLOAT:
        return "FP64"
    if kind is FeatureType.INT:
        return "INT64"
    if levels and all(isinstance(v, bool) for v in levels):
        return "BOOL"
    return "BYTES"


def _label_datatype(classes: Sequence[Label]) -> str:
    if all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if all(isinstance(c, int) for c in classes):
        return "INT64"
    return "BYTES"


def _tensor(t: Any, i: int, tensors: dict[str, Feature], limit: int) -> tuple[str, list[int], str, Any]:
    if not isinstance(t, dict):
        raise InvalidRequest(f"inputs[{i}] must be an object with name, shape, datatype and data", status=400)
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in t]
    if missing:
        raise InvalidRequest(f"inputs[{i}] lacks {missing}; each input tensor needs name, shape, datatype, data",
                             status=400)
    name, shape, dtype = t["name"], t["shape"], t["datatype"]
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"inputs[{i}].name must be a non-empty string", status=400)
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidRequest(f"inputs[{i}] ({name!r}).shape must be a list of non-negative integers, e.g. [2, 10]",
                             status=400)
    if dtype not in DATATYPES:
        raise InvalidRequest(f"inputs[{i}] ({name!r}).datatype {dtype!r} is not one of {sorted(DATATYPES)}",
                             status=400)
    size = math.prod(shape)
    if name in tensors:  # a tensor feature: sized from its shape before a value is read, then read by NumPy
        if size > limit:
            raise PayloadTooLarge(f"input {name!r} has shape {shape}: {size} numbers, more than the "
                                  f"{limit} a request may hold (gateway.max_tensor_elements); send fewer rows")
        return name, shape, dtype, t["data"]
    data = _flatten(t["data"])
    if len(data) != size:
        raise InvalidRequest(f"inputs[{i}] ({name!r}) has {len(data)} values but shape {shape} needs {size}",
                             status=400)
    return name, shape, dtype, data


def _fits(dtype: str, v: Any) -> bool:
    """Whether one value is of ``dtype`` as the protocol's JSON encoding writes it (null: a missing value,
    left to the feature's missing-value policy)."""
    if v is None:
        return True
    if dtype == "BOOL":
        return isinstance(v, bool)
    if dtype == "BYTES":  # JSON has no bytes: a categorical level is text, or a number for numeric levels
        return isinstance(v, (str, int, float))
    if isinstance(v, bool):
        return False
    if dtype.startswith("FP"):
        return isinstance(v, (int, float))
    if dtype.startswith("UINT"):
        return isinstance(v, int) and v >= 0
    return isinstance(v, int)  # INT8..INT64


def _check_datatype(name: str, dtype: str, data: Sequence[Any]) -> None:
    """Refuse data that is not of its declared datatype (``INT64`` holding 1.5, ``FP32`` holding text): a
    client that mislabels its tensors would otherwise be answered as if it had sent what it meant."""
    bad = next((j for j, v in enumerate(data) if not _fits(dtype, v)), None)
    if bad is not None:
        v = data[bad]
        raise InvalidRequest(f"input {name!r} is {dtype} but data[{bad}] is {str(v)[:40]!r} "
                             f"({type(v).__name__}); send {dtype} values or declare the datatype they are",
                             status=422)


def _tensor_rows(feat: Feature, shape: list[int], dtype: str, data: Any) -> list[Any]:
    """A tensor feature's V2 input → one nested list of the feature's shape per row (values validated later)."""
    fshape = tuple(feat.shape or ())
    want = f"[N, {', '.join(map(str, fshape))}]"
    if dtype not in TENSOR_DATATYPES:
        raise InvalidRequest(f"input {feat.name!r} has datatype {dtype}; tensor feature {feat.name!r} takes "
                             f"{', '.join(TENSOR_DATATYPES)}", status=422)
    if len(shape) < 2 or (tuple(shape[1:]) != fshape and shape[1:] != [feat.size]):
        raise InvalidRequest(f"input {feat.name!r} has shape {shape}; expected {want} (N rows of the feature's "
                             f"shape {list(fshape)}, or [N, {feat.size}])", status=422)
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.dtype.kind not in "iuf":
        raise InvalidRequest(f"input {feat.name!r}: data must be numbers ({dtype}), flat or nested row-major, "
                             f"with no null, text or ragged rows", status=422)
    if dtype.startswith("INT") and arr.dtype.kind == "f":
        raise InvalidRequest(f"input {feat.name!r} is {dtype} but its data holds non-integer numbers; send "
                             "integers or declare FP32", status=422)
    if arr.size != math.prod(shape):
        raise InvalidRequest(f"input {feat.name!r} has {arr.size} values but shape {shape} needs "
                             f"{math.prod(shape)}", status=422)
    return list(arr.astype(np.float64, copy=False).reshape((shape[0], *fshape)).tolist())


def instances_from_v2(body: Any, schema: ModelSchema, *,
                      max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> dict[str, Any]:
    """A V2 inference request → a V1 body ``{"instances": [...]}`` (values still to be validated).

    Raises:
        InvalidRequest: 400 for a malformed body, 422 for inputs that do not fit the schema.
        PayloadTooLarge: 413 for tensor inputs holding more than ``max_tensor_elements`` numbers.
    """
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise InvalidRequest('the body must be a JSON object like {"inputs": [{"name": "<feature>", "shape": [N], '
                             '"datatype": "FP64", "data": [...]}, ...]}; GET /v2/models/{model} lists the inputs',
                             status=400)
    tensor_feats = {f.name: f for f in schema.features if f.tensor}
    tensors = [_tensor(t, i, tensor_feats, max_tensor_elements) for i, t in enumerate(body["inputs"])]
    if sum(math.prod(s) for n, s, _, _ in tensors if n in tensor_feats) > max_tensor_elements:
        raise PayloadTooLarge(f"the tensor inputs hold more than {max_tensor_elements} numbers together "
                              "(gateway.max_tensor_elements); send fewer rows")
    names = schema.feature_names
    if len(tensors) == 1 and len(tensors[0][1]) == 2 and tensors[0][0] not in names and not tensor_feats:
        name, shape, dtype, data = tensors[0]
        if shape[1] != len(names):
            raise InvalidRequest(f"input {name!r} has shape {shape} but the model has {len(names)} features "
                                 f"{names}: send [N, {len(names)}] or one tensor per feature", status=422)
        if any(f.type is FeatureType.CATEGORICAL for f in schema.features):
            raise InvalidRequest("this model has categorical features: send one tensor per feature (named after "
                                 "it) rather than one 2-D tensor", status=422)
        if dtype not in NUMERIC:
            raise InvalidRequest(f"input {name!r} must be numeric (FP32, FP64, INT64, ...), got {dtype}", status=422)
        _check_datatype(name, dtype, data)
        n = shape[0]
        return {"instances": [data[r * shape[1]:(r + 1) * shape[1]] for r in range(n)]}
    unknown = sorted({t[0] for t in tensors} - set(names))
    if unknown:
        raise InvalidRequest(f"unknown input(s) {unknown}; the model's inputs are {names}", status=422)
    by_name: dict[str, list[Any]] = {}
    rows = None
    for name, shape, dtype, data in tensors:
        if name in by_name:
            raise InvalidRequest(f"input {name!r} appears twice; send each feature once", status=400)
        if name in tensor_feats:
            data = _tensor_rows(tensor_feats[name], shape, dtype, data)
        elif len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise InvalidRequest(f"input {name!r} has shape {shape}; a per-feature tensor is [N] or [N, 1]",
                                 status=422)
        else:
            _check_datatype(name, dtype, data)
        if rows is not None and shape[0] != rows:
            raise InvalidRequest(f"input {name!r} has {shape[0]} rows but an earlier input has {rows}; send the "
                                 "same number of rows for every feature", status=422)
        rows = shape[0]
        by_name[name] = data
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise InvalidRequest(f"unknown input(s) {unknown}; the model's inputs are {names}", status=422)
    # Absent features become absent keys, so each feature's missing-value policy decides.
    return {"instances": [{n: by_name[n][r] for n in names if n in by_name} for r in range(rows or 0)]}


def answer_to_v2(answer: dict[str, Any], schema: ModelSchema, model: str, request_id: str | None) -> dict[str, Any]:
    """A V1 answer → a V2 inference response."""
    n = len(answer["predictions"])
    out: dict[str, Any] = {
        "model_name": model,
        "model_version": answer["model_version"],
        "outputs": [
            {"name": "predictions", "shape": [n], "datatype": _label_datatype(schema.classes),
             "data": answer["predictions"]},
            {"name": "probabilities", "shape": [n, len(schema.classes)], "datatype": "FP32",
             "data": [p for row in answer["probabilities"] for p in row]},
            {"name": "inference_ids", "shape": [n], "datatype": "BYTES", "data": answer["inference_ids"]},
        ],
        "parameters": {"degraded": answer["degraded"], "classes": [str(c) for c in schema.classes],
                       **({"warnings": answer["warnings"]} if answer.get("warnings") else {}),
                       # per answer, with review.threshold set (answers queued for a person's label)
                       **({"review": answer["review"]} if "review" in answer else {})},
    }
    if request_id is not None:
        out["id"] = request_id
    return out


def model_metadata(schema: ModelSchema, model: str, version: str) -> dict[str, Any]:
    """``GET /v2/models/{model}``: the inputs a client must send and the outputs it gets."""
    n_classes = len(schema.classes)
    return {
        "name": model,
        "versions": [version],
        "platform": "raymedic-ensemble",
        "inputs": [{"name": f.name, "datatype": _feature_datatype(f.type, f.levels),
                    "shape": [-1, *(f.shape or ())] if f.tensor else [-1]}
                   for f in schema.features],
        "outputs": [{"name": "predictions", "datatype": _label_datatype(schema.classes), "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, n_classes]},
                    {"name": "inference_ids", "datatype": "BYTES", "shape": [-1]}],
    }
