"""Turn a client's JSON into rows the members can trust, or say exactly what to fix.

Pure functions over plain data (no Ray, no FastAPI), so every error class is unit
tested in milliseconds. Errors are collected per request rather than stopping at
the first, because a client fixing a batch wants to see all of its problems.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from raymedic.config import DEFAULT_MAX_TENSOR_ELEMENTS
from raymedic.errors import ConfigError, InvalidRequest, PayloadTooLarge
from train_jobs.schema import Feature, FeatureType, Label, ModelSchema, is_missing

__all__ = ["parse_instances", "parse_feedback", "Feedback", "Instances", "InputPolicy", "input_policies"]

MAX_REPORTED = 10
"""Problems listed in one error message; the rest are counted."""
MAX_LEVEL_CHARS = 256
"""The longest categorical value accepted: levels are names, and every value is logged with its prediction,
so a megabyte "level" would be stored (and shipped to the drift monitor) verbatim."""
_FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True)
class InputPolicy:
    """One feature's effective policies (``auto`` already resolved)."""

    missing: str  # "impute" | "reject"
    unseen: str  # "unknown" | "reject" (categorical features only)

    def to_dict(self) -> dict[str, str]:
        """The policy as shown in ``GET /v1/models/{model}``."""
        return {"missing": self.missing, "unseen": self.unseen}


def input_policies(schema: ModelSchema, data: Any) -> tuple[InputPolicy, ...]:
    """Resolve ``data`` (a :class:`raymedic.config.DataConfig`) against ``schema``, in feature order.

    Raises:
        ConfigError: an override names a feature the model does not have, or sets
            an unseen-level policy on a numeric feature.
    """
    unknown = sorted(set(data.features) - set(schema.feature_names))
    if unknown:
        raise ConfigError(f"data.features names {unknown}, which the model does not have; its features are "
                          f"{schema.feature_names}: fix or remove those entries")
    out = []
    for f in schema.features:
        over = data.policy(f.name)
        if over.unseen is not None and not f.categorical:
            raise ConfigError(f"data.features.{f.name}.unseen is set but {f.name!r} is "
                              f"{'numeric' if f.numeric else 'a tensor'}: unseen-level "
                              "policies apply to categorical features only; remove it")
        missing = over.missing or data.missing
        if missing == "auto":
            missing = "impute" if f.missing_share > 0 else "reject"
        out.append(InputPolicy(missing=missing, unseen=over.unseen or data.unseen))
    return tuple(out)


@dataclass
class Instances:
    """Validated rows in schema order, and what was done to them on the client's behalf."""

    rows: list[list[Any]]
    warnings: list[str]


class _Warnings:
    """Warnings grouped per (feature, kind) so a big batch gets a short answer."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, str], list[int]] = {}

    def add(self, feature: str, kind: str, instance: int) -> None:
        self._by.setdefault((feature, kind), []).append(instance)

    def render(self) -> list[str]:
        out = []
        for (feature, kind), idx in self._by.items():
            shown = ", ".join(map(str, idx[:MAX_REPORTED])) + (", ..." if len(idx) > MAX_REPORTED else "")
            what = ("was missing; imputed with its training mean/mode" if kind == "missing"
                    else "has a level never seen in training; encoded as 'other'")
            out.append(f"feature {feature!r} {what} in {len(idx)} instance(s) [{shown}]")
        return out


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.extra = 0

    def add(self, msg: str) -> None:
        if len(self.items) < MAX_REPORTED:
            self.items.append(msg)
        else:
            self.extra += 1

    def raise_if_any(self, hint: str) -> None:
        if not self.items:
            return
        more = f"; and {self.extra} more problem(s)" if self.extra else ""
        raise InvalidRequest("; ".join(self.items) + more + f". {hint}")


def _describe(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(feat: Feature, v: Any, where: str, problems: _Problems, *, reject_out_of_range: bool) -> Any:
    """Validate one value; returns it normalised (integral floats → int for INT features)."""
    if feat.type is FeatureType.CATEGORICAL:
        if isinstance(v, str) and len(v) > MAX_LEVEL_CHARS:
            problems.add(f"{where}: feature {feat.name!r} got a {len(v)}-character string; levels are at most "
                         f"{MAX_LEVEL_CHARS} characters, e.g. {_describe(list((feat.levels or ())[:5]))}")
            return None
        if isinstance(v, int) and not isinstance(v, bool) and not -_FLOAT_MAX <= v <= _FLOAT_MAX:
            problems.add(f"{where}: feature {feat.name!r} got an integer of over 300 digits; send one of "
                         f"its levels, e.g. {_describe(list((feat.levels or ())[:5]))}")
            return None
        if isinstance(v, (str, int, bool)) or (isinstance(v, float) and math.isfinite(v)):
            return v
        problems.add(f"{where}: feature {feat.name!r} is categorical and got {_describe(v)}; "
                     f"send one of its levels, e.g. {_describe(list((feat.levels or ())[:5]))}")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        kind = "an integer" if feat.type is FeatureType.INT else "a number"
        problems.add(f"{where}: feature {feat.name!r} must be {kind}, got {_describe(v)}")
        return None
    if isinstance(v, float) and not math.isfinite(v):
        problems.add(f"{where}: feature {feat.name!r} is {v}; send a finite number")
        return None
    if isinstance(v, int) and not -_FLOAT_MAX <= v <= _FLOAT_MAX:  # float(v) would raise OverflowError
        problems.add(f"{where}: feature {feat.name!r} got an integer of over 300 digits, past the "
                     f"largest number a model takes (~1.8e308); send a finite number in range")
        return None
    if feat.type is FeatureType.INT and isinstance(v, float):
        if not v.is_integer():
            problems.add(f"{where}: feature {feat.name!r} must be an integer, got {v}")
            return None
        v = int(v)
    if reject_out_of_range and feat.min is not None and feat.max is not None and not feat.min <= v <= feat.max:
        problems.add(f"{where}: feature {feat.name!r} = {v} is outside the training range "
                     f"[{feat.min:g}, {feat.max:g}]")
        return None
    return v


def _dims(v: list[Any]) -> list[int]:
    """The shape a nested list claims, read along its first elements only (cheap, whatever its size)."""
    dims, x = [], v
    while isinstance(x, list):
        dims.append(len(x))
        if not x:
            break
        x = x[0]
    return dims


def _has_bool(v: list[Any], depth: int) -> bool:
    # JSON true/false would pass numpy as 1.0/0.0: a tensor holds numbers, so look for them
    if depth <= 1:
        return any(type(x) is bool for x in v)
    return any(_has_bool(x, depth - 1) for x in v if isinstance(x, list))


class _TensorBudget:
    """Numbers the request's tensors may still hold (``gateway.max_tensor_elements``)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int, where: str, feat: Feature) -> None:
        self.used += n
        if self.used > self.limit:
            raise PayloadTooLarge(
                f"{where}: feature {feat.name!r} brings the request's tensors past {self.limit} numbers "
                f"(gateway.max_tensor_elements; one {_shape_text(feat.shape)} tensor holds {feat.size}): send fewer "
                "instances per request")


def _shape_text(shape: Sequence[int] | None) -> str:
    return "[" + ", ".join(str(d) for d in (shape or ())) + "]"


def _check_tensor(feat: Feature, v: Any, where: str, problems: _Problems, budget: _TensorBudget, *,
                  reject_out_of_range: bool) -> Any:
    """Validate one tensor value: nested lists of exactly the feature's shape, or a flat row-major list of
    ``prod(shape)`` numbers. Returns it as nested lists of floats in the feature's shape (plain JSON, so the
    prediction log and the members take it as it is), or None after recording the problem."""
    shape = tuple(feat.shape or ())
    expected = (f"expected {_shape_text(shape)} (nested lists of that shape"
                + (f", or a flat row-major list of {feat.size} numbers)" if len(shape) > 1 else ")"))
    if not isinstance(v, list):
        problems.add(f"{where}: feature {feat.name!r} is a tensor and got {_describe(v)}; {expected}")
        return None
    dims = _dims(v)  # before reading the values: an oversized or misshapen tensor is refused cheaply
    budget.take(math.prod(dims), where, feat)
    if tuple(dims) != shape and dims != [feat.size]:
        problems.add(f"{where}: feature {feat.name!r} has shape {_shape_text(dims)}; {expected}")
        return None
    try:
        arr = np.asarray(v)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.shape != tuple(dims):
        problems.add(f"{where}: feature {feat.name!r} is ragged (rows of different lengths; its first "
                     f"elements suggest {_shape_text(dims)}); {expected}")
        return None
    if arr.dtype.kind not in "iuf" or _has_bool(v, len(dims)):
        what = "booleans" if arr.dtype.kind in "iufb" else "strings" if arr.dtype.kind in "US" else \
            "values that are not numbers (null, text, objects)"
        problems.add(f"{where}: feature {feat.name!r} holds {what}; a tensor holds numbers only "
                     f"({feat.dtype}), {expected}")
        return None
    arr = arr.astype(np.float64, copy=False)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        problems.add(f"{where}: feature {feat.name!r} holds {bad} NaN/inf value(s) in its {_shape_text(shape)} "
                     "tensor; send finite numbers")
        return None
    if reject_out_of_range and feat.min is not None and feat.max is not None:
        out = int(np.count_nonzero((arr < feat.min) | (arr > feat.max)))
        if out:
            problems.add(f"{where}: feature {feat.name!r} has {out} element(s) outside the training range "
                         f"[{feat.min:g}, {feat.max:g}]")
            return None
    return arr.reshape(shape).tolist()


def parse_instances(body: Any, schema: ModelSchema, *, max_batch: int, reject_out_of_range: bool = False,
                    policies: Sequence[InputPolicy] | None = None,
                    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> Instances:
    """Validate a ``{"instances": [...]}`` body; returns rows in schema feature order.

    A missing value (JSON null, or an absent key) and an unseen categorical level
    follow each feature's :class:`InputPolicy` (default: reject missing, accept
    unseen): accepted ones stay ``None`` / as sent for the members' preprocessor
    and are listed in ``warnings``. A tensor value is nested lists of exactly the
    feature's shape or a flat row-major list of ``prod(shape)`` numbers (ints are
    taken as floats; booleans, strings, NaN and inf are refused); it comes back as
    nested lists of floats in the feature's shape. For a model of exactly one tensor
    feature an instance may also be the tensor itself (KServe's form for tensor
    models), told apart from a list-form row by its shape.

    Raises:
        InvalidRequest: 400 for a malformed body, 422 for values that do not fit the schema.
        PayloadTooLarge: 413 for more than ``max_batch`` instances, or tensors holding more than
            ``max_tensor_elements`` numbers in all.
    """
    names = schema.feature_names
    example = "{" + ", ".join(f'"{n}": ...' for n in names[:3]) + (", ..." if len(names) > 3 else "") + "}"
    if not isinstance(body, dict) or "instances" not in body:
        raise InvalidRequest(f'the body must be a JSON object like {{"instances": [{example}]}}', status=400)
    extra_keys = sorted(set(body) - {"instances", "parameters"})
    if extra_keys:
        raise InvalidRequest(f"unknown top-level keys {extra_keys}; send only \"instances\"", status=400)
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidRequest(f'"instances" must be a list of objects like {example}', status=400)
    if not instances:
        raise InvalidRequest('"instances" is empty; send at least one instance', status=400)
    if len(instances) > max_batch:
        raise PayloadTooLarge(f"{len(instances)} instances in one request; the limit is {max_batch}: "
                              "split the batch into smaller requests")
    pols = tuple(policies) if policies is not None else tuple(
        InputPolicy(missing="reject", unseen="unknown") for _ in names)
    problems = _Problems()
    warnings = _Warnings()
    budget = _TensorBudget(max_tensor_elements)
    only = schema.only_tensor
    bare = [list(only.shape or ()), [only.size]] if only is not None else []
    rows: list[list[Any]] = []
    for i, inst in enumerate(instances):
        where = f"instance {i}"
        if isinstance(inst, dict):
            absent = [n for n, p in zip(names, pols) if n not in inst and p.missing == "reject"]
            unknown = sorted(k for k in inst if schema.index_of(k) is None)
            if absent:
                problems.add(f"{where}: missing feature(s) {absent}; send a value for each "
                             "(their missing-value policy is reject)")
            if unknown:
                problems.add(f"{where}: unknown feature(s) {unknown}; the model's features are {names}")
            if absent or unknown:
                continue
            values = [inst.get(n) for n in names]
        elif isinstance(inst, list):
            if only is not None and _dims(inst) in bare:  # KServe's form for tensor models: the tensor itself
                values = [inst]
            elif len(inst) != len(names):
                problems.add(f"{where}: has {len(inst)} values but the schema has {len(names)} features "
                             f"in this order: {names}" + (f" (or send the tensor itself, of shape "
                                                           f"{_shape_text(only.shape)})" if only else ""))
                continue
            else:
                values = inst
        else:
            problems.add(f"{where}: must be an object keyed by feature name or a list of "
                         f"{len(names)} values in schema order, got {_describe(inst)}")
            continue
        row: list[Any] = []
        for f, p, v in zip(schema.features, pols, values):
            if v is None or (is_missing(v) and f.categorical):
                if p.missing == "reject":
                    problems.add(f"{where}: feature {f.name!r} is null; send a value (its missing-value policy "
                                 "is reject)")
                else:
                    warnings.add(f.name, "missing", i)
                row.append(None)
                continue
            if f.tensor:
                row.append(_check_tensor(f, v, where, problems, budget, reject_out_of_range=reject_out_of_range))
                continue
            v = _check_value(f, v, where, problems, reject_out_of_range=reject_out_of_range)
            if v is not None and f.categorical and f.level_index(v) is None:
                if p.unseen == "reject":
                    known = list((f.levels or ())[:20])
                    problems.add(f"{where}: feature {f.name!r} = {_describe(v)} was never seen in training; "
                                 f"send one of {known}" + (" ..." if len(f.levels or ()) > 20 else ""))
                else:
                    warnings.add(f.name, "unseen", i)
            row.append(v)
        rows.append(row)
    problems.raise_if_any("GET /v1/models/{model} shows the schema and each feature's policy")
    return Instances(rows=rows, warnings=warnings.render())


@dataclass(frozen=True)
class Feedback:
    """Validated labels for earlier predictions, labels in the schema's own form."""

    inference_ids: list[str]
    labels: list[Label]


def parse_feedback(body: Any, schema: ModelSchema, *, max_batch: int) -> Feedback:
    """Validate a ``{"inference_ids": [...], "labels": [...]}`` body."""
    shape = '{"inference_ids": ["..."], "labels": [...]}'
    if not isinstance(body, dict) or "inference_ids" not in body or "labels" not in body:
        raise InvalidRequest(f"the body must be a JSON object like {shape}", status=400)
    ids, labels = body["inference_ids"], body["labels"]
    if not isinstance(ids, list) or not isinstance(labels, list):
        raise InvalidRequest(f'"inference_ids" and "labels" must both be lists: {shape}', status=400)
    if not ids:
        raise InvalidRequest('"inference_ids" is empty; send at least one id with its label', status=400)
    if len(ids) != len(labels):
        raise InvalidRequest(f"{len(ids)} inference_ids but {len(labels)} labels; send one label per id",
                             status=400)
    if len(ids) > max_batch:
        raise PayloadTooLarge(f"{len(ids)} labels in one request; the limit is {max_batch}: split it")
    problems = _Problems()
    out_labels: list[Label] = []
    for i, (iid, label) in enumerate(zip(ids, labels)):
        if not isinstance(iid, str) or not iid:
            problems.add(f"inference_ids[{i}] must be a non-empty string, got {_describe(iid)}")
        k = schema.class_index(label) if isinstance(label, (str, int, bool)) else None
        if k is None:
            problems.add(f"labels[{i}] = {_describe(label)} is not a class of this model; "
                         f"use one of {list(schema.classes)}")
        else:
            out_labels.append(schema.classes[k])
    problems.raise_if_any("Send the ids returned by :predict with the true labels")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InvalidRequest(f"inference_ids {dupes[:5]} appear more than once; send each id once", status=400)
    return Feedback(inference_ids=list(ids), labels=out_labels)
