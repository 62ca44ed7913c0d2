"""The feature schema stored with every model version.

A schema is what a client needs to build a valid request (names, kinds, the range
seen in training, categorical levels) and what the gateway validates against. It
is plain data: JSON in, JSON out, so it can be checksummed with the artifact and
served from ``GET /v1/models/{model}`` unchanged.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from raymedic.errors import SchemaError

__all__ = ["FeatureType", "Feature", "ModelSchema", "Label", "level_key", "is_missing", "TENSOR_DTYPES"]

Label = int | str | bool
"""A class label in the user's own form (``0``, ``"prepaid_card"``, ``True``)."""


def level_key(v: Any) -> tuple[str, Any]:
    """Comparison key for categorical values: True never equals 1; 3, 3.0 and "3" are one level.

    JSON and CSV blur ints and strings, so a level is matched by its text; booleans
    stay apart because ``True == 1`` in Python but not in the user's data.
    """
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalar
        v = v.item()
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return ("s", str(v))


def is_missing(v: Any) -> bool:
    """None, NaN, pandas' NA/NaT: what a table or a JSON null means by "no value"."""
    if v is None:
        return True
    if isinstance(v, float):
        return math.isnan(v)
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT
    except ImportError:  # pragma: no cover
        return False


class FeatureType(str, enum.Enum):
    """The kinds of feature the gateway accepts (the HTTP contract's ``type``)."""

    FLOAT = "float"
    INT = "int"
    CATEGORICAL = "categorical"
    TENSOR = "tensor"
    """A fixed-shape array of numbers per row (an image, a signal): ``Feature.shape`` and ``Feature.dtype``."""


TENSOR_DTYPES = ("float32",)
"""Element types a tensor feature may have (every built-in and the module contract compute in float32)."""


@dataclass(frozen=True)
class Feature:
    """One input column.

    Attributes:
        name: Column name, as the client sends it.
        type: Kind of values accepted.
        min: Smallest value seen in training (numeric kinds only).
        max: Largest value seen in training (numeric kinds only).
        levels: Values seen in training (categorical only), in a stable order.
        missing_share: Share of training rows where the value was missing; the
            ``auto`` missing-value policy imputes only features that had holes in
            training, and data-quality monitoring compares live rates with it.
        shape: One value's shape (tensor only), e.g. ``(64,)`` or ``(8, 8)``; row-major.
        dtype: The element type (tensor only): ``"float32"``. For a tensor, ``min`` and
            ``max`` are the range of its elements seen in training.
    """

    name: str
    type: FeatureType
    min: float | None = None
    max: float | None = None
    levels: tuple[Label, ...] | None = None
    missing_share: float = 0.0
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    _levels: dict[tuple[str, Any], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise SchemaError("a feature has an empty name: give every column a name")
        if self.type is FeatureType.TENSOR:
            if not self.shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                         for d in self.shape):
                raise SchemaError(f"tensor feature {self.name!r} needs a shape of positive integers, got "
                                  f"{self.shape!r}")
            if self.dtype not in TENSOR_DTYPES:
                raise SchemaError(f"tensor feature {self.name!r} has dtype {self.dtype!r}; supported: "
                                  f"{list(TENSOR_DTYPES)}")
        elif self.shape is not None or self.dtype is not None:
            raise SchemaError(f"feature {self.name!r} is {self.type.value}: only a tensor feature has a shape "
                              "and a dtype")
        if self.type is FeatureType.CATEGORICAL:
            if not self.levels:
                raise SchemaError(f"categorical feature {self.name!r} has no levels")
        else:
            for bound in (self.min, self.max):
                if bound is not None and not math.isfinite(bound):
                    raise SchemaError(f"feature {self.name!r} has a non-finite bound {bound!r}")
        if not 0.0 <= self.missing_share <= 1.0:
            raise SchemaError(f"feature {self.name!r} has missing_share {self.missing_share!r} outside [0, 1]")
        object.__setattr__(self, "_levels", {level_key(v): i for i, v in enumerate(self.levels or ())})

    @property
    def numeric(self) -> bool:
        """A scalar float or int (range-checked, standardised, KS-tested); False for categorical and tensor."""
        return self.type is FeatureType.FLOAT or self.type is FeatureType.INT

    @property
    def categorical(self) -> bool:
        """Levels (one-hot, unseen-level policy, chi-squared tests)."""
        return self.type is FeatureType.CATEGORICAL

    @property
    def tensor(self) -> bool:
        """A fixed-shape array per row (:attr:`shape`, :attr:`dtype`)."""
        return self.type is FeatureType.TENSOR

    @property
    def size(self) -> int:
        """Numbers one value holds: ``prod(shape)`` for a tensor, 1 for a scalar feature."""
        return math.prod(self.shape) if self.shape else 1

    def level_index(self, value: Any) -> int | None:
        """Position of ``value`` among the training levels, None if never seen."""
        return self._levels.get(level_key(value))

    def to_dict(self) -> dict[str, Any]:
        """As served in ``GET /v1/models/{model}``: a client builds valid requests from this alone."""
        out: dict[str, Any] = {"name": self.name, "type": self.type.value}
        if self.type is FeatureType.CATEGORICAL:
            out["levels"] = list(self.levels or ())
        else:
            if self.type is FeatureType.TENSOR:
                out["shape"] = list(self.shape or ())
                out["dtype"] = self.dtype
            out["min"] = self.min
            out["max"] = self.max
        out["missing_share"] = self.missing_share
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Feature":
        """Read back what :meth:`to_dict` stored (``missing_share`` defaults to 0 for old versions; ``shape``
        and ``dtype`` exist only for tensors, so entries written before tensors existed load unchanged).

        Raises:
            SchemaError: The entry is malformed.
        """
        try:
            ftype = FeatureType(data["type"])
            levels = data.get("levels")
            shape = data.get("shape")
            return cls(
                name=str(data["name"]),
                type=ftype,
                min=None if data.get("min") is None else float(data["min"]),
                max=None if data.get("max") is None else float(data["max"]),
                levels=None if levels is None else tuple(levels),
                missing_share=float(data.get("missing_share", 0.0)),
                shape=None if shape is None else tuple(int(d) for d in shape),
                dtype=None if data.get("dtype") is None else str(data["dtype"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise SchemaError(f"malformed feature entry {dict(data)!r}: {exc}") from exc


@dataclass(frozen=True)
class ModelSchema:
    """Features in request order, the target's name and the class labels.

    Invariant: ``classes`` is in the order of the model's probability columns, so
    ``probabilities[i][k]`` is the probability of ``classes[k]``.
    """

    features: tuple[Feature, ...]
    target: str
    classes: tuple[Label, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if not names:
            raise SchemaError("a schema needs at least one feature")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"duplicate feature names {dupes}: rename the columns")
        if len(self.classes) < 2:
            raise SchemaError(f"a classifier needs at least two classes, got {list(self.classes)}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})

    @property
    def feature_names(self) -> list[str]:
        """Feature names in request order."""
        return [f.name for f in self.features]

    @property
    def only_tensor(self) -> Feature | None:
        """The feature when the schema is exactly one tensor (a user's module then takes its shape), else None."""
        return self.features[0] if len(self.features) == 1 and self.features[0].tensor else None

    def index_of(self, name: str) -> int | None:
        """Position of feature ``name`` in request order, or None if unknown."""
        return self._index.get(name)

    def class_index(self, label: Any) -> int | None:
        """Column of ``label`` in the probabilities, tolerant of JSON's int/str mix-ups.

        A label that was an int in training may come back from a client as ``"1"``;
        a label ``True`` must not match ``1``. Exact matches win over string matches.
        """
        for i, c in enumerate(self.classes):
            if type(c) is type(label) and c == label:
                return i
        text = str(label)
        for i, c in enumerate(self.classes):
            if str(c) == text and not isinstance(label, bool) and not isinstance(c, bool):
                return i
        return None

    def to_dict(self) -> dict[str, Any]:
        """As stored with each version and served to clients."""
        return {
            "features": [f.to_dict() for f in self.features],
            "target": self.target,
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSchema":
        """Read back what :meth:`to_dict` stored.

        Raises:
            SchemaError: A key is missing or an entry is malformed.
        """
        try:
            return cls(
                features=tuple(Feature.from_dict(f) for f in data["features"]),
                target=str(data["target"]),
                classes=tuple(data["classes"]),
            )
        except KeyError as exc:
            raise SchemaError(f"schema is missing the key {exc}") from exc

    @classmethod
    def numeric(cls, names: Sequence[str], *, target: str, classes: Sequence[Label],
                mins: Sequence[float], maxs: Sequence[float]) -> "ModelSchema":
        """Shorthand for an all-float schema (synthetic data, tests)."""
        feats = tuple(
            Feature(name=n, type=FeatureType.FLOAT, min=float(lo), max=float(hi))
            for n, lo, hi in zip(names, mins, maxs, strict=True)
        )
        return cls(features=feats, target=target, classes=tuple(classes))
