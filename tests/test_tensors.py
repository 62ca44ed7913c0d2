"""Tensor features (issue 17 item 3), the pure parts: schema, tables, preprocessing, a module's input
shape, V1/V2 validation with every error, the prediction log → retrain table round trip, monitoring.

The real-cluster path (train, deploy, answer over HTTP) is tests/test_tensor_serving.py.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymedic.config import DataConfig, parse_config
from raymedic.errors import DataError, InvalidRequest, PayloadTooLarge, SchemaError
from raymedic.storage import Storage
from serve_apps.predlog import FeedbackLog, PredictionLog, new_inference_id
from serve_apps.quality import InputTally
from serve_apps.v2 import instances_from_v2, model_metadata
from serve_apps.validation import InputPolicy, parse_instances
from train_jobs import artifacts
from train_jobs._fit import prepare_data
from train_jobs.labeled import recent_labeled
from train_jobs.models import build_model
from train_jobs.preprocess import CLIP, Preprocessor
from train_jobs.reference import Reference
from train_jobs.schema import Feature, FeatureType, ModelSchema
from train_jobs.tables import fingerprint, frame_from_arrow, frame_to_arrow, infer_schema, load_table, split, \
    tensor_column

SHAPE = (4, 4)


def _images(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image-like rows: class k has a bright row k (3 classes), plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0.0, 0.3, (n, *SHAPE)).astype(np.float32)
    x[np.arange(n), y, :] += 2.0
    return x, y


def _parquet(tmp_path, column: pa.Array, name: str = "t.parquet", n: int | None = None) -> str:
    n = len(column) if n is None else n
    path = tmp_path / name
    pq.write_table(pa.table({"image": column, "label": np.arange(n) % 3}), path)
    return str(path)


def _schema(shape=SHAPE, *more: Feature) -> ModelSchema:
    return ModelSchema(features=(Feature("image", FeatureType.TENSOR, min=-1.0, max=3.0, shape=tuple(shape),
                                         dtype="float32"), *more), target="label", classes=(0, 1, 2))


# ---- schema ---------------------------------------------------------------------------------------


def test_a_tensor_feature_round_trips_and_old_entries_still_load():
    f = Feature("signal", FeatureType.TENSOR, min=-1.0, max=2.0, shape=(64,), dtype="float32")
    d = f.to_dict()
    assert d == {"name": "signal", "type": "tensor", "shape": [64], "dtype": "float32", "min": -1.0, "max": 2.0,
                 "missing_share": 0.0}
    assert Feature.from_dict(json.loads(json.dumps(d))) == f and f.size == 64 and f.tensor and not f.numeric
    old = Feature.from_dict({"name": "x", "type": "float", "min": 0, "max": 1})  # written before tensors
    assert old.shape is None and old.dtype is None and old.numeric and "shape" not in old.to_dict()
    schema = _schema()
    assert ModelSchema.from_dict(schema.to_dict()) == schema and schema.only_tensor.name == "image"


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": None, "dtype": "float32"}, "needs a shape"),
    ({"shape": (0, 3), "dtype": "float32"}, "needs a shape"),
    ({"shape": (3,), "dtype": "int8"}, "dtype 'int8'"),
])
def test_a_malformed_tensor_entry_is_a_schema_error(kwargs, match):
    with pytest.raises(SchemaError, match=match):
        Feature("t", FeatureType.TENSOR, **kwargs)
    with pytest.raises(SchemaError, match="only a tensor feature has a shape"):
        Feature("x", FeatureType.FLOAT, shape=(3,))


# ---- tables ---------------------------------------------------------------------------------------


def test_fixed_size_lists_load_as_arrays_of_the_feature_shape(tmp_path):
    x, _ = _images(30)
    df = load_table(_parquet(tmp_path, tensor_column(x)))
    assert df["image"].dtype == object and df["image"].iloc[0].shape == SHAPE
    np.testing.assert_array_equal(np.stack(df["image"]), x)
    f = infer_schema(df, target="label").features[0]
    assert (f.type, f.shape, f.dtype) == (FeatureType.TENSOR, SHAPE, "float32")
    assert f.min == pytest.approx(float(x.min())) and f.max == pytest.approx(float(x.max()))
    flat = load_table(_parquet(tmp_path, tensor_column(x.reshape(30, 16)), "flat.parquet"))
    assert infer_schema(flat, target="label").features[0].shape == (16,)


def test_the_fixed_shape_tensor_type_and_one_length_lists_load_too(tmp_path):
    x, _ = _images(20)
    ext = load_table(_parquet(tmp_path, pa.FixedShapeTensorArray.from_numpy_ndarray(x), "ext.parquet"))
    np.testing.assert_array_equal(np.stack(ext["image"]), x)
    lists = load_table(_parquet(tmp_path, pa.array([r.ravel().tolist() for r in x]), "lists.parquet"))
    assert infer_schema(lists, target="label").features[0].shape == (16,)


def test_a_missing_tensor_is_a_null_row(tmp_path):
    x, _ = _images(10)
    cells = [None if i == 3 else x[i] for i in range(10)]
    df = load_table(_parquet(tmp_path, tensor_column(cells), n=10))
    assert df["image"].iloc[3] is None
    assert infer_schema(df, target="label").features[0].missing_share == pytest.approx(0.1)


def test_a_variable_length_list_column_is_refused_naming_the_lengths_and_the_fix(tmp_path):
    path = _parquet(tmp_path, pa.array([[1.0, 2.0], [3.0], [1.0, 2.0, 3.0]]))
    with pytest.raises(DataError, match=r"column 'image'.*3 different lengths.*\(1, 2, 3\).*fixed-size list"):
        load_table(path)


def test_nan_inside_a_training_tensor_is_refused_with_the_row_count(tmp_path):
    x, _ = _images(12)
    x[2, 0, 0] = np.nan
    x[5, 1, 1] = np.inf
    df = load_table(_parquet(tmp_path, tensor_column(x)))
    with pytest.raises(DataError, match=r"tensor column 'image' holds NaN or inf in 2 of 12 row\(s\)"):
        infer_schema(df, target="label")


def test_a_csv_of_list_looking_strings_says_csv_cannot_hold_tensors(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"image": ["[0.1, 0.2]", "[0.3, 0.4]"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'image'.*CSV cannot hold tensor features.*tensor_column"):
        load_table(path)


def test_fingerprint_split_and_the_stored_sample_work_with_tensor_columns(tmp_path):
    x, y = _images(40)
    df = frame_from_arrow(pa.table({"image": tensor_column(x), "label": y}))
    as_lists = df.assign(image=[r.tolist() for r in x])  # another cell form, the same content
    assert fingerprint(df) == fingerprint(as_lists) != fingerprint(df.assign(image=list(x + 1)))
    train, val = split(df, val_fraction=0.25, stratify_col="label")
    assert len(train) + len(val) == 40 and train["image"].iloc[0].shape == SHAPE
    back = frame_from_arrow(frame_to_arrow(train))
    np.testing.assert_array_equal(np.stack(back["image"]), np.stack(train["image"]))


# ---- preprocessing and a module's input shape ------------------------------------------------------


def test_a_tensor_is_standardised_with_one_mean_and_std_flattened_and_clipped():
    x, y = _images(60)
    df = pd.DataFrame({"image": list(x), "w": np.linspace(0, 1, 60), "label": y})
    schema = infer_schema(df, target="label")
    pre = Preprocessor.fit(df, schema)
    assert pre.output_dim == 17 and pre.tensor_shapes() == {"image": SHAPE}
    col = pre.to_dict()["columns"][0]["tensor"]
    assert col["mean"] == pytest.approx(float(x.mean()), rel=1e-5) and col["shape"] == [4, 4]
    out = pre.transform_frame(df)
    np.testing.assert_allclose(out[:, :16], ((x - col["mean"]) / col["std"]).reshape(60, 16), rtol=1e-5)
    rows = [[x[i].tolist(), 0.5] for i in range(3)]
    flat = [[x[i].ravel().tolist(), 0.5] for i in range(3)]
    arrays = [[x[i], 0.5] for i in range(3)]
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    for form in (flat, arrays):
        np.testing.assert_array_equal(pre.transform_rows(form), pre.transform_rows(rows))
    np.testing.assert_array_equal(again.transform_rows(rows), pre.transform_rows(rows))
    assert not pre.transform_rows([[None, 0.5]])[0, :16].any()  # missing → the training mean
    assert pre.transform_rows([[np.full(SHAPE, 1e9).tolist(), 0.5]])[0, :16].max() == CLIP
    with pytest.raises(DataError, match="tensor feature 'image'"):
        pre.transform_rows([[[1.0, 2.0], 0.5]])


CNN = '''
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, input_shape, n_classes, channels=4):
        super().__init__()
        assert len(input_shape) == 2, input_shape
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels * input_shape[0] * input_shape[1], n_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x.unsqueeze(1))).flatten(1))
'''


@pytest.fixture()
def cnn_module(tmp_path, monkeypatch):
    pkg = tmp_path / "tensornets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cnn.py").write_text(textwrap.dedent(CNN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tensornets.cnn:TinyCNN"
    for name in [m for m in sys.modules if m.startswith("tensornets")]:
        del sys.modules[name]


def test_a_module_on_one_tensor_feature_gets_its_shape_and_the_builtins_the_flat_row(cnn_module):
    x, y = _images(60)
    cfg = parse_config({"members": [{"name": "cnn", "module": cnn_module},
                                    {"name": "lr", "kind": "logistic", "fallback": True}],
                        "gateway": {"min_members": 1}})
    data = prepare_data(cfg, pd.DataFrame({"image": list(x), "label": y}), target="label")
    spec = data.member_spec(cfg.member("cnn"))  # check_contract ran it on [2, 4, 4]
    assert spec.input_shape == SHAPE and spec.input_dim == 16 and spec.reshapes
    assert data.member_spec(cfg.member("lr")).input_dim == 16 and not data.member_spec(cfg.member("lr")).reshapes
    member = artifacts.MemberModel(spec=spec, preprocessor=data.preprocessor, network=build_model(spec), golden=None)
    probs = member.predict_proba(data.golden_rows)
    assert probs.shape == (len(data.golden_rows), 3) and np.allclose(probs.sum(1), 1)
    assert isinstance(data.golden_rows[0][0], list)  # plain JSON nested lists in the stored golden set
    files = artifacts.pack(network=member.network, spec=spec, preprocessor=data.preprocessor,
                           golden=artifacts.GoldenSet(rows=data.golden_rows, probabilities=probs.tolist()))
    loaded = artifacts.unpack(files)
    np.testing.assert_allclose(loaded.predict_proba(data.golden_rows), probs, rtol=1e-6)


# ---- V1 and V2 validation ---------------------------------------------------------------------------


GOOD = [[0.0, 1.0, 2.0, 1.0]] * 4


def _v1(value, schema=None, **kw):
    return parse_instances({"instances": [{"image": value}]}, schema or _schema(), max_batch=8, **kw)


def test_v1_takes_nested_lists_a_flat_list_and_ints():
    assert _v1(GOOD).rows == [[GOOD]]
    assert _v1([v for row in GOOD for v in row]).rows == [[GOOD]]
    got = _v1([[0, 1, 2, 1]] * 4).rows[0][0]
    assert got == GOOD and type(got[0][0]) is float
    listed = parse_instances({"instances": [[GOOD]]}, _schema(), max_batch=8)  # list form, schema order
    assert listed.rows == [[GOOD]]
    bare = parse_instances({"instances": [GOOD, [v for r in GOOD for v in r]]}, _schema(), max_batch=8)
    assert bare.rows == [[GOOD], [GOOD]]  # KServe's form for a one-tensor model: the tensor itself
    one = _schema((1, 4))  # where a list-form row and a bare tensor nest alike, the shape decides
    assert parse_instances({"instances": [[[1, 2, 3, 4]], [[[1, 2, 3, 4]]]]}, one, max_batch=8).rows == \
        [[[[1.0, 2.0, 3.0, 4.0]]]] * 2
    with pytest.raises(InvalidRequest, match=r"has 3 values but the schema has 1 features.*the tensor itself, "
                                             r"of shape \[4, 4\]"):
        parse_instances({"instances": [[1, 2, 3]]}, _schema(), max_batch=8)


@pytest.mark.parametrize("value, match", [
    ([[0.0] * 3] * 4, r"feature 'image' has shape \[4, 3\]; expected \[4, 4\] \(nested lists of that shape, or a "
                      r"flat row-major list of 16 numbers\)"),
    ([0.0] * 15, r"has shape \[15\]; expected \[4, 4\]"),
    ([[0.0] * 4] * 3 + [[0.0] * 5], r"ragged"),
    ([[0.0] * 4] * 3 + [[0.0, 1.0, "a", 2.0]], r"holds strings"),
    ([[0.0] * 4] * 3 + [[0.0, 1.0, True, 2.0]], r"holds booleans"),
    ([[0.0] * 4] * 3 + [[0.0, 1.0, None, 2.0]], r"not numbers"),
    ([[0.0] * 4] * 3 + [[0.0, float("nan"), float("inf"), 2.0]], r"holds 2 NaN/inf value\(s\) in its \[4, 4\]"),
    ("abc", r"is a tensor and got 'abc'"),
    (1.5, r"is a tensor and got 1.5"),
])
def test_v1_refuses_a_bad_tensor_naming_the_feature_and_both_shapes(value, match):
    with pytest.raises(InvalidRequest, match=match) as err:
        _v1(value)
    assert err.value.http_status == 422 and "'image'" in str(err.value)


def test_a_null_tensor_follows_the_missing_value_policy():
    with pytest.raises(InvalidRequest, match="feature 'image' is null"):
        _v1(None)
    got = _v1(None, policies=[InputPolicy(missing="impute", unseen="unknown")])
    assert got.rows == [[None]] and "imputed" in got.warnings[0]


def test_an_oversized_request_is_refused_from_the_shapes_before_the_values_are_read():
    huge = [[0.0] * 4] * 4
    body = {"instances": [{"image": huge}] * 4}
    assert len(parse_instances(body, _schema(), max_batch=8, max_tensor_elements=64).rows) == 4
    with pytest.raises(PayloadTooLarge, match=r"instance 3: feature 'image'.*past 48 numbers.*max_tensor_elements"):
        parse_instances(body, _schema(), max_batch=8, max_tensor_elements=48)
    # one absurd row: its claimed size decides without walking its (here shared, cheap) values
    with pytest.raises(PayloadTooLarge):
        _v1([[0.0] * 10_000] * 10_000, max_tensor_elements=1_000_000)


def test_out_of_range_elements_are_refused_when_the_config_says_so():
    bad = [[0.0] * 4] * 3 + [[9.0, 0.0, 0.0, 0.0]]
    assert _v1(bad).rows
    with pytest.raises(InvalidRequest, match=r"1 element\(s\) outside the training range \[-1, 3\]"):
        _v1(bad, reject_out_of_range=True)


def _v2(shape, data, datatype="FP32", name="image", **kw):
    return instances_from_v2({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]},
                             _schema(), **kw)


def test_v2_takes_n_by_shape_flat_or_nested_and_gives_v1_the_same_rows():
    x, _ = _images(3)
    flat = _v2([3, 4, 4], x.ravel().tolist())
    assert flat == _v2([3, 4, 4], x.tolist()) == _v2([3, 16], x.reshape(3, 16).tolist(), datatype="FP64")
    v1 = parse_instances({"instances": [{"image": r.tolist()} for r in x]}, _schema(), max_batch=8)
    assert parse_instances(flat, _schema(), max_batch=8).rows == v1.rows
    assert _v2([1, 4, 4], [[1] * 4] * 4, datatype="INT32")["instances"][0]["image"][0] == [1.0] * 4
    meta = model_metadata(_schema(), "m", "v1")["inputs"]
    assert meta == [{"name": "image", "datatype": "FP32", "shape": [-1, 4, 4]}]


@pytest.mark.parametrize("args, match, status", [
    (([2, 4, 3], [0.0] * 24), r"input 'image' has shape \[2, 4, 3\]; expected \[N, 4, 4\]", 422),
    (([2, 4, 4], [0.0] * 31), r"31 values but shape \[2, 4, 4\] needs 32", 422),
    (([1, 4, 4], ["a"] * 16), r"data must be numbers", 422),
    (([1, 4, 4], [0.0] * 16, "BYTES"), r"datatype BYTES; tensor feature 'image' takes FP32, FP64, INT32, INT64",
     422),
    (([1, 16], [0.0] * 16, "FP32", "img"), r"unknown input\(s\) \['img'\]", 422),
])
def test_v2_refuses_a_bad_tensor_input(args, match, status):
    with pytest.raises(InvalidRequest, match=match) as err:
        _v2(*args)
    assert err.value.http_status == status


def test_v2_nan_and_oversized_inputs():
    body = _v2([1, 4, 4], [float("nan")] + [0.0] * 15)
    with pytest.raises(InvalidRequest, match="NaN/inf"):
        parse_instances(body, _schema(), max_batch=8)
    with pytest.raises(PayloadTooLarge, match=r"shape \[100000, 4, 4\].*max_tensor_elements"):
        _v2([100_000, 4, 4], [], max_tensor_elements=1_000_000)


# ---- logs, retrain table, monitoring ----------------------------------------------------------------


def test_predictions_with_tensors_are_logged_and_come_back_as_a_retrain_table(tmp_path):
    storage = Storage(str(tmp_path / "storage"))
    schema = _schema()
    x, y = _images(6)
    rows = parse_instances({"instances": [{"image": r.tolist()} for r in x]}, schema, max_batch=8).rows
    log, now = PredictionLog(storage, "m", tag="t"), time.time()
    ids = [new_inference_id(now) for _ in rows]
    log.append({"inference_id": i, "ts": now, "model": "m", "model_version": "a:v1", "features": json.dumps(r),
                "member_outputs": "{}", "prediction": "0", "probabilities": [1.0, 0.0, 0.0], "degraded": False}
               for i, r in zip(ids, rows))
    assert log.flush() == 6
    FeedbackLog(storage, "m", tag="t").write(ids, [int(v) for v in y])
    table = recent_labeled(storage, "m", schema)
    assert len(table) == 6 and table["image"].iloc[0].shape == SHAPE
    np.testing.assert_allclose(np.stack(table["image"]), x, rtol=1e-6)
    assert table["label"].tolist() == [int(v) for v in y]
    pre = Preprocessor.fit(table, schema)  # what a retrain does with it
    assert pre.transform_frame(table).shape == (6, 16)


def test_monitoring_keeps_a_tensors_missing_rate_and_skips_its_per_element_tests():
    from controllers.monitors.data import DataMonitor, FeatureKind

    x, y = _images(200)
    df = pd.DataFrame({"image": list(x), "w": np.linspace(0, 1, 200), "label": y})
    schema = infer_schema(df, target="label")
    ref = Reference.from_dict(json.loads(json.dumps(Reference.build(df, schema).to_dict())))
    assert ref.features[0].tensor and ref.features[0].sample is None and ref.features[1].numeric
    tally = InputTally(schema, seed=0)
    tally.add([[r.tolist(), 0.5] for r in x[:150]] + [[None, 0.5]] * 50)
    batch = tally.drain()
    assert batch["features"]["image"] == {"missing": 50}
    cfg = DataConfig(min_rows=50, window_rows=500, sequential=False)  # no CUSUM calibration: not under test
    monitor = DataMonitor(schema, ref, cfg)
    monitor.add(batch)
    report = monitor.check()
    image = next(f for f in report.features if f.name == "image")
    assert image.kind == FeatureKind.TENSOR and image.missing_rate == pytest.approx(0.25)
    assert image.p_value is None and "missing_values" in [str(b) for b in image.breaches]


def test_the_gateway_ships_whole_tensors_in_arrival_order_for_the_tensor_drift_monitor():
    x, y = _images(200)
    df = pd.DataFrame({"image": list(x), "w": np.linspace(0, 1, 200), "label": y})
    schema = infer_schema(df, target="label")
    shape = schema.features[0].shape
    tally = InputTally(schema, tensor_rows_per_batch=16, seed=0)
    tally.add([[r.tolist(), 0.5] for r in x[:10]] + [[None, 0.5]])  # under the cap: every tensor, in order
    batch = tally.drain()
    assert batch["tensors"]["image"].dtype == np.float32 and batch["tensors"]["image"].shape == (10, *shape)
    np.testing.assert_array_equal(batch["tensors"]["image"], x[:10])
    tally.add([[r.reshape(-1).tolist(), 0.5] for r in x])  # a flat row-major tensor is one too; past the cap:
    sample = tally.drain()["tensors"]["image"]               # a uniform sample, still in arrival order
    at = [int(np.flatnonzero((x.reshape(len(x), -1) == r.reshape(-1)).all(axis=1))[0]) for r in sample]
    assert len(at) == 16 and at == sorted(at) and at[-1] > 16
    tally.add([[None, 0.5]])
    assert "tensors" not in tally.drain()  # no tensor sent: nothing to ship
    tabular = InputTally(infer_schema(df.drop(columns=["image"]), target="label"))
    tabular.add([[0.5]])
    assert "tensors" not in tabular.drain()


def test_the_readiness_probe_builds_a_valid_tensor_row():
    from raymedic.app.service import _example_row

    schema = _schema((2, 3), Feature("w", FeatureType.FLOAT, min=0.0, max=1.0))
    row = _example_row(schema.to_dict())
    assert row["image"] == [[1.0] * 3] * 2 and row["w"] == 0.5
    assert parse_instances({"instances": [row]}, schema, max_batch=1).rows


def test_the_bench_builds_valid_tensor_instances_from_the_schema():
    from raymedic.bench.loadgen import instances_for_schema

    schema = _schema((2, 3), Feature("w", FeatureType.FLOAT, min=0.0, max=1.0))
    rows = instances_for_schema(schema.to_dict(), 5, seed=1)
    assert rows == instances_for_schema(schema.to_dict(), 5, seed=1) and len(rows) == 5
    assert len(parse_instances({"instances": rows}, schema, max_batch=5, reject_out_of_range=True).rows) == 5


def test_a_permuted_fixed_shape_tensor_reads_in_its_logical_shape():
    from train_jobs._tensors import arrow_to_arrays

    stored = np.arange(2 * 3 * 4, dtype=np.float32)  # two rows stored as [3, 4], read as [4, 3]
    typ = pa.fixed_shape_tensor(pa.float32(), (3, 4), permutation=[1, 0])
    arr = pa.ExtensionArray.from_storage(typ, pa.FixedSizeListArray.from_arrays(pa.array(stored), 12))
    cells, shape = arrow_to_arrays(arr)
    assert shape == (4, 3)
    np.testing.assert_array_equal(np.stack(cells), arr.to_numpy_ndarray())  # as pyarrow reads it
    np.testing.assert_array_equal(cells[1], stored[12:].reshape(3, 4).T)


def test_a_retrain_table_mixes_logged_rows_with_the_stored_training_sample(tmp_path):
    """What train_jobs.retrain does: labelled rows (from JSON) + the champion's sample (from Parquet)."""
    x, y = _images(80)
    table = pd.DataFrame({"image": list(x), "label": y})
    cfg = parse_config({"members": [{"name": "lr", "kind": "logistic", "fallback": True}],
                        "gateway": {"min_members": 1}})
    schema = prepare_data(cfg, table, target="label").schema
    storage = Storage(str(tmp_path))
    storage.write_parquet("samples/s.parquet", frame_to_arrow(table))
    sample = frame_from_arrow(storage.read_parquet("samples/s.parquet"))
    logged = pd.DataFrame({"image": [r.tolist() for r in x[:20]], "label": y[:20]})  # nested lists, as JSON gives
    data = prepare_data(cfg, pd.concat([logged, sample], ignore_index=True), target="label", schema=schema)
    assert data.x_train.shape[1] == 16 and len(data.train_df) + len(data.val_df) == 100


def test_a_small_tensor_table_trains_with_its_drift_unwatched_and_says_so(caplog):
    """Tensor drift needs a few hundred training rows to fit and calibrate on; fewer must not stop a model
    from training, only leave that drift unwatched, with a warning that says how to change it."""
    from raymedic.config import parse_config
    from train_jobs._fit import prepare_data

    x, y = _images(300)
    data = prepare_data(parse_config({}), pd.DataFrame({"image": list(x), "label": y}), target="label")
    with caplog.at_level("WARNING"):
        doc = data.reference
    assert "tensors" not in doc and doc["features"]
    assert "its input drift is not monitored; train on more rows" in caplog.text
    x, y = _images(1000)
    assert list(prepare_data(parse_config({}), pd.DataFrame({"image": list(x), "label": y}),
                             target="label").reference["tensors"]) == ["image"]
