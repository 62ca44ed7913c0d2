"""Hypothesis strategies for hostile, broken and valid requests to the gateway, built from a model's own
metadata (``GET /v1/models/<model>``'s ``schema``: features with their types, ranges, levels and shapes,
and the classes), so a generated request is as close to valid as the model allows and then wrong in one
place — which is where validation code breaks.

Each strategy draws a :class:`FuzzRequest`: the raw bytes sent (so invalid UTF-8, raw surrogates and
other encodings can be sent, not only what ``json.dumps`` writes), what the request is (``kind``) and, for
a request that must be answered, how many rows its answer carries. Feedback for ids the service really
issued is drawn with placeholders (:data:`REAL_ID`) that the sender replaces with an id it was given.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

__all__ = ["JSON_TYPE", "REAL_ID", "FuzzRequest", "Model", "requests"]

REAL_ID = "@@real-inference-id@@"
"""Stands for an inference id the service issued; the sender substitutes one (each used once)."""
JSON_TYPE = (("Content-Type", "application/json"),)
V2_DATATYPES = ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                "UINT64", "BOOL", "BYTES")


@dataclass(frozen=True)
class FuzzRequest:
    """One generated request.

    Attributes:
        kind: what it is, e.g. ``predict/valid``, ``v2/near``, ``feedback/real``, ``raw`` (for the report).
        method: the HTTP method.
        path: the path (the model's routes, or a wrong one).
        body: the raw body.
        headers: extra request headers.
        rows: for a request that must be answered 2xx, the rows of its answer; None where a 4xx is allowed.
        real_ids: how many :data:`REAL_ID` placeholders the body holds.
    """

    kind: str
    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = JSON_TYPE
    rows: int | None = None
    real_ids: int = 0

    def show(self, limit: int = 600) -> str:
        """The request as a failure report prints it (the body cut at ``limit`` bytes)."""
        body = self.body if len(self.body) <= limit else self.body[:limit] + b"...(%d bytes)" % len(self.body)
        return f"{self.kind}: {self.method} {self.path} headers={list(self.headers)} body={body!r}"


@dataclass(frozen=True)
class Model:
    """What the strategies need of a model: its name and ``GET /v1/models/<model>``'s ``schema`` and limits."""

    name: str
    features: tuple[dict[str, Any], ...]
    classes: tuple[Any, ...]
    max_batch: int = 1024
    pool: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.pool:
            object.__setattr__(self, "pool", tuple(valid_rows(self)))

    def __hash__(self) -> int:  # strategies are built once per model (functools.cache)
        return hash(self.name)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Model:
        """From the model-info document a client reads."""
        return cls(name=info["name"], features=tuple(info["schema"]["features"]),
                   classes=tuple(info["schema"]["classes"]), max_batch=info["limits"]["max_batch_size"])

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.features]

    @property
    def all_numeric(self) -> bool:
        return all(f["type"] in ("float", "int") for f in self.features)


def _dump(value: Any, encoding: str = "ascii") -> bytes:
    """``value`` as JSON bytes: escaped ASCII, or raw text in UTF-8 (BOM or not), UTF-16 or UTF-32, a lone
    surrogate written as its bytes (``surrogatepass``), which no escape check sees.

    Python's json writes NaN/Infinity for non-finite floats, which the gateway's parser reads back:
    exactly the tokens a hostile client sends.
    """
    if encoding == "ascii":
        return json.dumps(value).encode()
    return json.dumps(value, ensure_ascii=False).encode(encoding, "surrogatepass")


ENCODINGS = st.sampled_from(["ascii"] * 6 + ["utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32"])


# ---- values ------------------------------------------------------------------------------------------

def _bounds(f: dict[str, Any]) -> tuple[float, float]:
    lo, hi = f.get("min"), f.get("max")
    return (float(lo) if lo is not None else -3.0), (float(hi) if hi is not None else 3.0)


def _nested(values: list[Any], shape: Sequence[int]) -> Any:
    if len(shape) <= 1:
        return values
    step = math.prod(shape[1:])
    return [_nested(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def valid_value(f: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value the feature takes: in its training range, one of its levels, a tensor of its shape."""
    lo, hi = _bounds(f)
    if f["type"] == "float":
        return st.floats(lo, hi, allow_nan=False)
    if f["type"] == "int":
        return st.integers(math.ceil(lo), math.floor(hi)) if math.ceil(lo) <= math.floor(hi) else st.just(int(lo))
    if f["type"] == "categorical":
        return st.sampled_from(list(f["levels"]))
    shape = list(f["shape"])
    n = math.prod(shape)
    flat = st.lists(st.floats(lo, hi, allow_nan=False, width=32), min_size=n, max_size=n)
    return st.one_of(flat.map(lambda v: _nested(v, shape)), flat) if len(shape) > 1 else flat


_HUGE_INT = st.one_of(st.integers(10 ** 309, 10 ** 330), st.integers(-(10 ** 330), -(10 ** 309)))
_TEXT = st.one_of(st.text(max_size=12), st.text(st.one_of(st.characters(categories=["Cs"]), st.characters()),
                                                  min_size=1, max_size=6))
"""Text, often holding lone surrogates (Hypothesis leaves them out of ``text()`` by default)."""
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT)
RANDOM_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)), max_leaves=12)
"""Structurally random JSON (NaN and infinities included)."""


def _long_text(lo: int = 257, hi: int = 4000) -> st.SearchStrategy[str]:
    return st.tuples(st.integers(lo, hi), st.characters(codec="utf-8")).map(lambda t: t[1] * t[0])


def bad_value(f: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value one step from what the feature takes: wrong type, non-finite, huge, unknown, oversized."""
    lo, hi = _bounds(f)
    common = [st.none(), st.booleans(), st.text(max_size=20),
              st.sampled_from(["NaN", "nan", "inf", "-Infinity", "1e999", "", " ", "0x10", "1_000"]),
              st.sampled_from([math.nan, math.inf, -math.inf]), _HUGE_INT, _long_text(),
              st.lists(st.floats(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
              st.floats(1e300, 1.7e308), st.floats(-1.7e308, -1e300), st.integers(10 ** 17, 10 ** 300),
              st.floats(hi + 1, hi + 1e6), st.floats(lo - 1e6, lo - 1)]
    if f["type"] == "int":
        common.append(st.floats(lo, hi).filter(lambda x: not float(x).is_integer()))
    if f["type"] == "categorical":
        common += [st.text(min_size=1, max_size=30).filter(lambda s: s not in f["levels"]), st.floats(),
                   st.integers()]
    if f["type"] == "tensor":
        shape = list(f["shape"])
        n = math.prod(shape)
        common += [st.lists(st.floats(), min_size=n, max_size=n),  # NaN/inf inside
                   st.lists(st.floats(lo, hi), min_size=0, max_size=max(0, n - 1)),
                   st.integers(n + 1, n + 64).map(lambda k: [0.5] * k),
                   st.lists(st.booleans(), min_size=n, max_size=n),
                   st.lists(st.text(max_size=3), min_size=n, max_size=n),
                   st.lists(_HUGE_INT, min_size=n, max_size=n),
                   st.just([[0.1] * n, [0.2] * (n + 1)]),  # ragged
                   st.integers(10 ** 5, 3 * 10 ** 5).map(lambda k: [0.0] * k)]  # oversized
    return st.one_of(*common)


# ---- V1 predict ------------------------------------------------------------------------------------

def valid_rows(m: Model, n: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` valid rows: the range's ends, its middle, -0.0, then seeded values inside it. Drawn from a pool,
    a valid row costs one Hypothesis draw instead of one per feature (generation, not the service, would
    otherwise bound how many requests a run sends)."""
    rng = random.Random(seed)

    def one(f: dict[str, Any], k: int) -> Any:
        lo, hi = _bounds(f)
        if f["type"] == "categorical":
            return f["levels"][k % len(f["levels"])]
        if f["type"] == "tensor":
            size = math.prod(f["shape"])
            flat = [rng.uniform(lo, hi) for _ in range(size)]
            return _nested(flat, f["shape"]) if k % 2 else flat
        x = [lo, hi, (lo + hi) / 2, -0.0 if lo <= 0 <= hi else lo][k] if k < 4 else rng.uniform(lo, hi)
        if f["type"] == "int":
            return min(max(math.ceil(lo), round(x)), math.floor(hi)) if math.ceil(lo) <= math.floor(hi) else int(lo)
        return x

    return [{f["name"]: one(f, k) for f in m.features} for k in range(n)]


@functools.cache
def _bad(m: Model) -> tuple[st.SearchStrategy[Any], ...]:
    return tuple(bad_value(f) for f in m.features)


@functools.cache
def _row(m: Model) -> st.SearchStrategy[dict[str, Any]]:
    # a fresh copy each time: the near-valid strategies change the row they draw
    return st.sampled_from(m.pool).map(copy.deepcopy)


@functools.cache
def valid_instance(m: Model) -> st.SearchStrategy[Any]:
    """An instance keyed by feature name, or its values in schema order."""
    return st.one_of(_row(m), _row(m).map(lambda r: [r[n] for n in m.names]))


@functools.cache
def valid_instances(m: Model) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"instances": st.lists(valid_instance(m), min_size=1, max_size=4)})


@st.composite
def near_instances(draw: st.DrawFn, m: Model) -> Any:
    """A valid predict body with exactly one thing wrong."""
    body = draw(valid_instances(m))
    rows = body["instances"]
    i = draw(st.integers(0, len(rows) - 1))
    inst = rows[i]
    names = m.names
    what = draw(st.sampled_from(["value", "value", "value", "drop", "extra", "top", "shape", "instances",
                                 "batch", "scalar", "length"]))
    j = draw(st.integers(0, len(names) - 1))
    if what == "value":
        v = draw(_bad(m)[j])
        if isinstance(inst, dict):
            inst[names[j]] = v
        else:
            inst[j] = v
    elif what == "drop":
        if isinstance(inst, dict):
            del inst[names[j]]
        else:
            del inst[j]
    elif what == "extra":
        key = draw(st.one_of(_TEXT, _long_text(100, 2000)).filter(lambda k: k not in names))
        if isinstance(inst, dict):
            inst[key] = draw(_SCALARS)
        else:
            inst.append(draw(_SCALARS))
    elif what == "top":
        body[draw(st.text(max_size=10).filter(lambda k: k not in ("instances", "parameters")))] = 1
    elif what == "shape":
        rows[i] = draw(st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3)))
    elif what == "instances":
        body["instances"] = draw(st.one_of(_SCALARS, st.just([]), st.dictionaries(st.text(max_size=4), _SCALARS,
                                                                                  max_size=2)))
    elif what == "batch":  # past max_batch_size: 413
        body["instances"] = rows[:1] * (m.max_batch + draw(st.integers(1, 40)))
    elif what == "scalar":
        body = draw(st.one_of(_SCALARS, st.lists(valid_instance(m), max_size=2)))
    else:  # list form of the wrong length
        rows[i] = [inst[n] for n in names] + [0.0] * draw(st.integers(1, 3)) if isinstance(inst, dict) else \
            inst[:draw(st.integers(0, len(inst) - 1))]
    return body


# ---- V2 infer --------------------------------------------------------------------------------------

def _v2_datatype(f: dict[str, Any]) -> str:
    if f["type"] == "float":
        return "FP64"
    if f["type"] == "int":
        return "INT64"
    if f["type"] == "tensor":
        return "FP32"
    return "BOOL" if all(isinstance(v, bool) for v in f["levels"]) else "BYTES"


@st.composite
def valid_v2(draw: st.DrawFn, m: Model) -> dict[str, Any]:
    """A V2 body: one tensor per feature (or, for an all-numeric model, one ``[N, F]`` tensor)."""
    n = draw(st.integers(1, 4))
    rows = [draw(_row(m)) for _ in range(n)]
    body: dict[str, Any]
    if m.all_numeric and draw(st.booleans()):
        body = {"inputs": [{"name": draw(st.sampled_from(["input-0", "x"])), "shape": [n, len(m.names)],
                            "datatype": draw(st.sampled_from(["FP32", "FP64"])),
                            "data": [r[k] for r in rows for k in m.names]}]}
    else:
        inputs = []
        for f in m.features:
            col = [r[f["name"]] for r in rows]
            if f["type"] == "tensor":
                flat = [x for v in col for x in (v if not v or not isinstance(v[0], list) else [x for r in v for x in r])]
                inputs.append({"name": f["name"], "shape": [n, *f["shape"]], "datatype": "FP32", "data": flat})
            else:
                shape = draw(st.sampled_from([[n], [n, 1]]))
                inputs.append({"name": f["name"], "shape": shape, "datatype": _v2_datatype(f), "data": col})
        body = {"inputs": draw(st.permutations(inputs))}
    if draw(st.booleans()):
        body["id"] = draw(st.text(max_size=20))
    return body


@st.composite
def near_v2(draw: st.DrawFn, m: Model) -> Any:
    """A valid V2 body with one thing wrong: datatype, shape, data length, names, keys, id."""
    body = draw(valid_v2(m))
    inputs = body["inputs"]
    t = inputs[draw(st.integers(0, len(inputs) - 1))]
    what = draw(st.sampled_from(["datatype", "shape", "shape", "data", "data", "value", "name", "drop", "extra",
                                 "dup", "id", "inputs", "huge"]))
    if what == "datatype":
        t["datatype"] = draw(st.one_of(st.sampled_from(V2_DATATYPES), st.text(max_size=8), _SCALARS))
    elif what == "shape":
        t["shape"] = draw(st.one_of(
            st.lists(st.integers(-3, 10), max_size=3), st.lists(st.booleans(), min_size=1, max_size=2),
            st.lists(st.floats(0, 4), min_size=1, max_size=2), st.just([]), _SCALARS,
            st.lists(st.integers(10 ** 9, 10 ** 30), min_size=1, max_size=3),
            st.lists(_HUGE_INT, min_size=1, max_size=2)))
    elif what == "data":
        t["data"] = draw(st.one_of(
            st.just(t["data"][:-1]), st.just(t["data"] + t["data"][:1]), st.just([]), _SCALARS,
            st.just([t["data"]] * 2), st.lists(RANDOM_JSON, max_size=4)))
    elif what == "value":
        if t["data"]:
            k = draw(st.integers(0, len(t["data"]) - 1))
            t["data"][k] = draw(st.one_of(_SCALARS, _HUGE_INT, _long_text(), st.sampled_from([math.nan, math.inf]),
                                          st.floats(1e300, 1.7e308)))
    elif what == "name":
        t["name"] = draw(st.one_of(st.text(max_size=10), _SCALARS, st.just("")))
    elif what == "drop":
        del t[draw(st.sampled_from(["name", "shape", "datatype", "data"]))]
    elif what == "extra":
        t[draw(_TEXT)] = draw(_SCALARS)
        body[draw(_TEXT)] = draw(_SCALARS)
    elif what == "dup":
        inputs.append(dict(t))
    elif what == "id":
        body["id"] = draw(st.one_of(_SCALARS, _long_text(1000, 20000), st.lists(st.text(max_size=3))))
    elif what == "inputs":
        body["inputs"] = draw(st.one_of(_SCALARS, st.just([]), st.lists(_SCALARS, max_size=3)))
    else:  # rows past the batch limit, the data to match
        n = m.max_batch + draw(st.integers(1, 20))
        body["inputs"] = [{"name": f["name"], "shape": [n], "datatype": _v2_datatype(f),
                           "data": [m.pool[0][f["name"]]] * n} for f in m.features if f["type"] != "tensor"]
        if not body["inputs"]:
            body["inputs"] = [{"name": "x", "shape": [n], "datatype": "FP32", "data": [0.0] * n}]
    return body


# ---- feedback --------------------------------------------------------------------------------------

def _hex_id(ms: int, tail: str) -> str:
    return f"{ms:012x}{tail}"[:32].rjust(32, "0")


@st.composite
def forged_id(draw: st.DrawFn) -> Any:
    """An id raymedic never issued: well-formed ones dated now, long ago or in the future, and junk."""
    # Times are offsets from the moment of drawing (a strategy's bounds must not move between runs).
    now = lambda off: int(time.time() * 1000) + off
    tail = draw(st.text("0123456789abcdef", min_size=20, max_size=20))
    return draw(st.one_of(
        st.integers(-5_000, 1_000).map(lambda off: _hex_id(now(off), tail)),
        st.integers(-(10 ** 12), -10_000).map(lambda off: _hex_id(max(0, now(off)), tail)),
        st.integers(10 ** 6, 10 ** 13).map(lambda off: _hex_id(now(off), tail)),
        st.sampled_from(["-" + "f" * 31, "0x" + "f" * 30, "f_" * 16, " " + "a" * 31, "١" * 32, "\x00" * 32]),
        _TEXT, st.text(max_size=40), _long_text(33, 3000)))


@st.composite
def feedback(draw: st.DrawFn, m: Model) -> tuple[str, Any, int, bool]:
    """(kind, body, placeholders, must be answered 2xx): valid labels for real and forged ids, or one
    thing wrong."""
    n = draw(st.integers(1, 4))
    real = draw(st.integers(0, n))
    ids = [REAL_ID] * real + [draw(forged_id()) for _ in range(n - real)]
    labels = [draw(st.one_of(st.sampled_from(list(m.classes)), st.sampled_from([str(c) for c in m.classes])))
              for _ in range(n)]
    body: Any = {"inference_ids": ids, "labels": labels}
    well_formed = all(isinstance(i, str) and i for i in ids) and len(set(ids) - {REAL_ID}) == n - real
    if draw(st.integers(0, 2)) > 0:
        return ("feedback/real" if real else "feedback/forged"), body, real, well_formed
    what = draw(st.sampled_from(["label", "label", "id", "length", "drop", "extra", "dup", "type", "batch",
                                 "random"]))
    k = draw(st.integers(0, n - 1))
    if what == "label":
        labels[k] = draw(st.one_of(_SCALARS, _HUGE_INT, st.lists(st.integers(), max_size=2),
                                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=1)))
    elif what == "id":
        ids[k] = draw(st.one_of(_SCALARS, st.lists(st.text(max_size=3), max_size=2), st.just("")))
    elif what == "length":
        body["labels"] = labels + labels[:1] if draw(st.booleans()) else labels[1:]
    elif what == "drop":
        del body[draw(st.sampled_from(["inference_ids", "labels"]))]
    elif what == "extra":
        body[draw(st.text(max_size=8))] = draw(_SCALARS)
    elif what == "dup":
        ids.append(ids[0])
        labels.append(labels[0])
    elif what == "type":
        body[draw(st.sampled_from(["inference_ids", "labels"]))] = draw(
            st.one_of(_SCALARS, st.dictionaries(st.text(max_size=3), _SCALARS, max_size=2)))
    elif what == "batch":
        extra = m.max_batch + draw(st.integers(1, 10))
        body = {"inference_ids": [_hex_id(i, "0" * 20) for i in range(extra)], "labels": [m.classes[0]] * extra}
    else:
        body = draw(RANDOM_JSON)
    placeholders = json.dumps(body).count(REAL_ID)
    return "feedback/near", body, placeholders, False


# ---- lone surrogates --------------------------------------------------------------------------------

_SURROGATE_TEXT = st.tuples(st.text(max_size=4), st.characters(categories=["Cs"]), st.text(max_size=4)).map(
    "".join)


@st.composite
def unicode_body(draw: st.DrawFn, m: Model) -> tuple[str, Any]:
    """(route, body): a valid body with a lone surrogate in one string the service echoes or logs — a
    feedback id, a V2 request id or input name, a feature key or value."""
    bad = draw(_SURROGATE_TEXT)
    where = draw(st.sampled_from(["feedback", "v2-id", "v2-name", "key", "value"]))
    if where == "feedback":
        return "feedback", {"inference_ids": [bad], "labels": [m.classes[0]]}
    if where.startswith("v2"):
        body = draw(valid_v2(m))
        if where == "v2-id":
            body["id"] = bad
        else:
            body["inputs"][0]["name"] = bad
        return "infer", body
    body = draw(valid_instances(m))
    inst = body["instances"][0]
    if isinstance(inst, dict) and where == "key":
        inst[bad] = 1.0
    elif isinstance(inst, dict):
        inst[m.names[0]] = bad
    else:
        inst[0] = bad
    return "predict", body


# ---- raw bytes -------------------------------------------------------------------------------------

_RAW_CASES = (
    b'{"instances": [{"f0": "\xed\xa0\x80"}]}',             # a surrogate in (CESU-8) bytes, not an escape
    b'{"inference_ids": ["\xed\xb0\x80"], "labels": [0]}',
    b'{"instances": [{"f0": "\\ud800"}]}',                    # the escape (refused since issue 19)
    b'{"inference_ids": ["\\udc00x"], "labels": [1]}',
    b'{"instances": [[1, 2, 3', b'{"instances": [NaN, Infinity, -Infinity]}',
    b'\xff\xfe{\x00}\x00', b'\xef\xbb\xbf{"instances": []}', b'null', b'[]', b'""', b'0', b'{}',
    b'{"instances": [' + b'[' * 3000 + b']' * 3000 + b']}',
    b'{"instances": [[' + b'9' * 5001 + b']]}',
    b'{"instances": [[' + b'9' * 400 + b']]}',
    b'{"a": 1, "a": 2}', b'\x00\x01\x02', b'{"instances": [{"\xc3\x28": 1}]}',
)


@st.composite
def raw_body(draw: st.DrawFn) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """Bytes that are not (good) JSON, JSON in other encodings, with right or wrong Content-Type."""
    ctype = draw(st.sampled_from([JSON_TYPE, (("Content-Type", "text/plain"),),
                                  (("Content-Type", "application/x-www-form-urlencoded"),), (),
                                  (("Content-Type", "application/json; charset=latin-1"),)]))
    value = draw(RANDOM_JSON)
    body = draw(st.one_of(
        st.sampled_from(_RAW_CASES), st.binary(max_size=64),
        _TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig"]).map(
            lambda enc: json.dumps(value, ensure_ascii=False).encode(enc, "surrogatepass")),
        st.just(json.dumps(value).encode()[:-1] if json.dumps(value) else b"{")))
    return body, ctype


# ---- everything --------------------------------------------------------------------------------------

@st.composite
def requests(draw: st.DrawFn, m: Model) -> FuzzRequest:
    """One request of the mix: about a fifth fully valid, the rest near-valid, random or raw."""
    predict = f"/v1/models/{m.name}:predict"
    infer = f"/v2/models/{m.name}/infer"
    fb = f"/v1/models/{m.name}:feedback"
    kind = draw(st.sampled_from(["predict/valid", "predict/valid", "predict/near", "predict/near", "predict/near",
                                 "v2/valid", "v2/near", "v2/near", "v2/near", "feedback", "feedback", "feedback",
                                 "random", "raw", "raw", "route", "unicode"]))
    if kind == "predict/valid":
        body = draw(valid_instances(m))
        return FuzzRequest(kind, "POST", predict, _dump(body), rows=len(body["instances"]))
    if kind == "predict/near":
        return FuzzRequest(kind, "POST", predict, _dump(draw(near_instances(m)), draw(ENCODINGS)))
    if kind == "v2/valid":
        body = draw(valid_v2(m))
        return FuzzRequest(kind, "POST", infer, _dump(body), rows=body["inputs"][0]["shape"][0])
    if kind == "v2/near":
        return FuzzRequest(kind, "POST", infer, _dump(draw(near_v2(m)), draw(ENCODINGS)))
    if kind == "feedback":
        sub, body, real, ok = draw(feedback(m))
        encoding = draw(ENCODINGS) if sub == "feedback/near" else "ascii"
        return FuzzRequest(sub, "POST", fb, _dump(body, encoding), rows=len(body["inference_ids"]) if ok else None,
                           real_ids=real)
    if kind == "unicode":  # escaped (json's default) or raw in the text's bytes, which no escape check sees
        route, body = draw(unicode_body(m))
        encoding = draw(st.sampled_from(["ascii", "utf-8", "utf-8", "utf-16", "utf-32", "utf-8-sig"]))
        return FuzzRequest(kind, "POST", {"feedback": fb, "infer": infer, "predict": predict}[route],
                           _dump(body, encoding))
    path = draw(st.sampled_from([predict, infer, fb]))
    if kind == "random":
        return FuzzRequest(kind, "POST", path, _dump(draw(RANDOM_JSON), draw(ENCODINGS)))
    if kind == "raw":
        body, headers = draw(raw_body())
        return FuzzRequest(kind, "POST", path, body, headers=headers)
    # wrong routes and methods: 404 / 405 with the same error shape
    other = quote(draw(_TEXT).encode("utf-8", "surrogatepass"), safe="")  # a model name: any bytes, escaped
    wrong = draw(st.sampled_from([f"/v1/models/{m.name}x:predict", "/v2/models/nope/infer",
                                  f"/v1/models/{m.name}:explain", f"/v1/models/{m.name}/predict",
                                  f"/v1/models/{other}:predict", f"/v2/models/{other}/infer",
                                  f"/v1/models/{other}:feedback", f"/v1/models/{m.name}:predict?model={other}"]))
    method, where = draw(st.sampled_from([("POST", wrong), ("PUT", path), ("DELETE", path), ("GET", path)]))
    return FuzzRequest("route", method, where, _dump(draw(valid_instances(m))))
