"""A tensor model end to end on a real local Ray cluster (issue 17 item 3).

One cluster for the module: a generated table of 8x8 "images" (3 classes, a fixed-size list column in
Parquet) is trained with Ray Train — a built-in logistic fallback and mlp on the flattened tensor, and
a user's CNN (a module in a temporary directory, on PYTHONPATH only) on the tensor in its shape — then
deployed and asked over HTTP: V1 and V2 give the same predictions for the same images, the schema shows
the tensor, bad tensors get 422s, and labelled answers come back from the logs as a retrain table whose
tensors are the ones sent, and a retrain on them trains and gates every member.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import free_port, wait_for, write_config

pytestmark = pytest.mark.ray

SIDE = 8
CNN = '''
import torch
from torch import nn


class StripeCNN(nn.Module):
    """A user's own image model: forward takes [N, 8, 8]."""

    def __init__(self, input_shape, n_classes, channels=4):
        super().__init__()
        h, w = input_shape
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels * h * w, n_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x.unsqueeze(1))).flatten(1))
'''


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: a bright row band, 1: a bright column band, 2: the diagonal; plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0.0, 0.35, (n, SIDE, SIDE)).astype(np.float32)
    at = rng.integers(1, SIDE - 1, n)
    for i in range(n):
        if y[i] == 0:
            x[i, at[i], :] += 1.5
        elif y[i] == 1:
            x[i, :, at[i]] += 1.5
        else:
            x[i][np.eye(SIDE, dtype=bool)] += 1.5
    return x, y


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    import ray
    from ray import serve

    from cluster.connect import start_embedded
    from raymedic.app import service as svc
    from raymedic.config import load_config
    from train_jobs.tables import load_table, tensor_column
    from train_jobs.train import train_ensemble

    tmp = tmp_path_factory.mktemp("tensor")
    code = tmp / "code"
    (code / "imgnets").mkdir(parents=True)
    (code / "imgnets" / "__init__.py").write_text("")
    (code / "imgnets" / "cnn.py").write_text(textwrap.dedent(CNN))
    mp = pytest.MonkeyPatch()
    # Ray's processes inherit PYTHONPATH: the module is found there, never installed
    mp.setenv("PYTHONPATH", os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))
    mp.syspath_prepend(str(code))
    x, y = _images(360, seed=1)
    path = tmp / "tiles.parquet"
    pq.write_table(pa.table({"image": tensor_column(x), "label": y}), path)
    port = free_port()
    members = [{"name": "logistic", "kind": "logistic", "fallback": True, "replicas": 1, "num_cpus": 0.2},
               {"name": "mlp", "kind": "mlp", "replicas": 1, "num_cpus": 0.2},
               {"name": "cnn", "module": "imgnets.cnn:StripeCNN", "hyperparameters": {"channels": 4},
                "replicas": 1, "num_cpus": 0.2}]
    cfg = load_config(write_config(tmp / "raymedic.yaml", storage=tmp / "storage", port=port, model="tiles",
                                   members=members, training={"epochs": 25},
                                   # retrains by hand only (the last test), without a search after a reject
                                   retraining={"enabled": False, "min_labeled_rows": 40, "search_on_reject": False},
                                   gateway={"replicas": 1, "num_cpus": 0.2, "max_batch_size": 64,
                                            "min_members": 2})).config.resolved()
    start_embedded(log_to_driver=False)
    try:
        report = train_ensemble(cfg, load_table(path), target="label", model="tiles", progress=print)
        svc.deploy(cfg, host="127.0.0.1", port=port, progress=print)
        url = f"http://127.0.0.1:{port}"
        svc.wait_ready(url, cfg.model, timeout_s=240, progress=print)  # its probe is a mid-range tensor
        yield url, cfg, report
    finally:
        serve.shutdown()
        ray.shutdown()
        mp.undo()


def _post(url, body):
    from raymedic.app.http import request_json

    return request_json("POST", url, body, timeout_s=30)


def test_v1_and_v2_answer_the_same_images_the_same_and_the_schema_shows_the_tensor(service):
    from raymedic.app.http import request_json

    url, cfg, report = service
    assert all(m["val_accuracy"] > 0.6 for m in report.metrics.values()), report.metrics
    x, _ = _images(6, seed=7)
    v1 = _post(f"{url}/v1/models/tiles:predict", {"instances": [{"image": r.tolist()} for r in x]})
    assert v1.status == 200 and not v1.body["degraded"], v1.body
    assert {p.split(":")[0] for p in v1.body["model_version"].split(",")} == {"logistic", "mlp", "cnn"}
    v2 = _post(f"{url}/v2/models/tiles/infer", {"inputs": [{"name": "image", "shape": [6, SIDE, SIDE],
                                                             "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert v2.status == 200, v2.body
    out = {o["name"]: o for o in v2.body["outputs"]}
    assert out["predictions"]["data"] == v1.body["predictions"]
    np.testing.assert_allclose(np.reshape(out["probabilities"]["data"], (6, 3)), v1.body["probabilities"],
                               atol=1e-5)
    bare = _post(f"{url}/v1/models/tiles:predict", {"instances": x.tolist()})  # KServe's form: the tensors
    assert bare.status == 200 and bare.body["predictions"] == v1.body["predictions"], bare.body
    info = request_json("GET", f"{url}/v1/models/tiles").body
    feat = info["schema"]["features"][0]
    assert (feat["name"], feat["type"], feat["shape"], feat["dtype"]) == ("image", "tensor", [SIDE, SIDE], "float32")
    assert info["limits"]["max_tensor_elements"] == cfg.gateway.max_tensor_elements
    meta = request_json("GET", f"{url}/v2/models/tiles").body
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, SIDE, SIDE]}]


def test_a_wrong_shape_and_nan_get_422_naming_the_feature_and_the_shapes(service):
    url, _, _ = service
    predict = f"{url}/v1/models/tiles:predict"
    wrong = _post(predict, {"instances": [{"image": [[0.0] * 7] * SIDE}]})
    assert wrong.status == 422 and "feature 'image' has shape [8, 7]; expected [8, 8]" in wrong.body["error"]
    nan = _post(predict, {"instances": [{"image": [[float("nan")] + [0.0] * 7] + [[0.0] * 8] * 7}]})
    assert nan.status == 422 and "'image' holds 1 NaN/inf" in nan.body["error"], nan.body
    v2 = _post(f"{url}/v2/models/tiles/infer", {"inputs": [{"name": "image", "shape": [1, 8, 7],
                                                             "datatype": "FP32", "data": [0.0] * 56}]})
    assert v2.status == 422 and "expected [N, 8, 8]" in v2.body["error"], v2.body


def test_labelled_answers_come_back_as_a_retrain_table_with_the_tensors_sent(service):
    from raymedic.storage import Storage
    from train_jobs.labeled import recent_labeled
    from train_jobs.preprocess import Preprocessor
    from train_jobs.schema import ModelSchema

    url, cfg, report = service
    x, y = _images(10, seed=11)
    answer = _post(f"{url}/v1/models/tiles:predict", {"instances": [{"image": r.tolist()} for r in x]})
    assert answer.status == 200, answer.body
    fb = _post(f"{url}/v1/models/tiles:feedback", {"inference_ids": answer.body["inference_ids"],
                                                    "labels": [int(v) for v in y]})
    assert fb.status == 200, fb.body
    schema = ModelSchema.from_dict(report.versions["cnn"].metadata["schema"])
    storage = Storage(cfg.storage_path)
    ids = set(answer.body["inference_ids"])

    def table():  # predictions are flushed every gateway.log_flush_s
        t = recent_labeled(storage, "tiles", schema)
        return [t] if len(t) >= 10 else None  # (a DataFrame has no truth value)

    (got,) = wait_for(table, timeout_s=30, what="the labelled predictions in the logs")
    assert len(ids) == 10 and len(got) == 10
    np.testing.assert_allclose(np.stack(got["image"]), x, rtol=1e-6)
    assert got["label"].tolist() == [int(v) for v in y]
    assert Preprocessor.fit(got, schema).transform_frame(got).shape == (10, SIDE * SIDE)


def test_a_retrain_on_logged_tensors_trains_and_gates_every_member(service):
    from raymedic.storage import Storage
    from train_jobs.labeled import recent_labeled
    from train_jobs.registry import ModelRegistry
    from train_jobs.retrain import retrain
    from train_jobs.schema import ModelSchema

    url, cfg, _ = service
    x, y = _images(60, seed=13)
    answer = _post(f"{url}/v1/models/tiles:predict", {"instances": [{"image": r.tolist()} for r in x]})
    assert answer.status == 200, answer.body
    fb = _post(f"{url}/v1/models/tiles:feedback", {"inference_ids": answer.body["inference_ids"],
                                                    "labels": [int(v) for v in y]})
    assert fb.status == 200, fb.body
    registry = ModelRegistry(Storage(cfg.storage_path))
    schema = ModelSchema.from_dict(registry.info("tiles", "cnn", "champion").metadata["schema"])
    wait_for(lambda: len(recent_labeled(Storage(cfg.storage_path), "tiles", schema)) >= 60, timeout_s=30,
             what="the labelled predictions in the logs")
    outcome = retrain(cfg, reason="tensor test", progress=print)  # recent rows + the stored tensor sample
    assert set(outcome["members"]) == {"logistic", "mlp", "cnn"}, outcome
    for verdict in outcome["members"].values():  # each challenger was trained and measured on the holdout (3 separable classes: far above chance)
        assert verdict["challenger_version"] == "v0002" and 0.5 < verdict["challenger_metrics"]["accuracy"] <= 1
    # the champions' stored training sample (tensors as fixed-size lists) was read back and mixed in
    assert registry.info("tiles", "cnn", "v0002").metadata["retrain"]["reference_rows"] > 0
