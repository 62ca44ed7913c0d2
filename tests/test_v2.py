"""Open Inference Protocol (V2) bodies ↔ raymedic rows (pure)."""

from __future__ import annotations

import pytest

from raymedic.errors import InvalidRequest
from serve_apps.v2 import answer_to_v2, instances_from_v2, model_metadata
from train_jobs.schema import Feature, FeatureType, ModelSchema

MIXED = ModelSchema(features=(Feature("amount", FeatureType.FLOAT, min=0.0, max=9.0),
                              Feature("visits", FeatureType.INT, min=0, max=9),
                              Feature("channel", FeatureType.CATEGORICAL, levels=("web", "app")),
                              Feature("member", FeatureType.CATEGORICAL, levels=(False, True))),
                    target="label", classes=("churn", "stay"))
NUMERIC = ModelSchema.numeric(["f0", "f1"], target="y", classes=(0, 1), mins=[0, 0], maxs=[1, 1])


def tensor(name, data, datatype="FP64", shape=None):
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


def test_one_tensor_per_feature_becomes_instances_by_name():
    body = {"inputs": [tensor("amount", [1.5, 2.0]), tensor("visits", [3, 4], "INT64", [2, 1]),
                       tensor("channel", ["web", "app"], "BYTES"), tensor("member", [True, False], "BOOL")]}
    assert instances_from_v2(body, MIXED) == {"instances": [
        {"amount": 1.5, "visits": 3, "channel": "web", "member": True},
        {"amount": 2.0, "visits": 4, "channel": "app", "member": False}]}
    partial = instances_from_v2({"inputs": [tensor("amount", [1.0])]}, MIXED)
    assert partial == {"instances": [{"amount": 1.0}]}  # absent features: the missing-value policy decides


def test_one_2d_tensor_in_schema_order_for_numeric_models():
    body = {"inputs": [tensor("input-0", [[0.1, 0.2], [0.3, 0.4]], "FP32", [2, 2])]}
    assert instances_from_v2(body, NUMERIC) == {"instances": [[0.1, 0.2], [0.3, 0.4]]}


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"instances": []}, 400, '{"inputs": [{"name"'),
    ({"inputs": [{"name": "f0"}]}, 400, "lacks ['shape', 'datatype', 'data']"),
    ({"inputs": [tensor("f0", [1.0, 2.0], shape=[3])]}, 400, "has 2 values but shape [3] needs 3"),
    ({"inputs": [tensor("f0", [1.0], "FP128")]}, 400, "datatype 'FP128' is not one of"),
    ({"inputs": [tensor("x", [1.0, 2.0, 3.0], shape=[1, 3])]}, 422, "has shape [1, 3] but the model has 2"),
    ({"inputs": [tensor("f0", [1.0]), tensor("f1", [1.0, 2.0])]}, 422, "has 2 rows but an earlier input has 1"),
    ({"inputs": [tensor("zip", [1.0])]}, 422, "unknown input(s) ['zip']"),
])
def test_malformed_v2_bodies_say_what_to_fix(body, status, fragment):
    with pytest.raises(InvalidRequest) as err:
        instances_from_v2(body, NUMERIC)
    assert err.value.http_status == status and fragment in str(err.value)


def test_2d_tensor_is_refused_for_categorical_models():
    with pytest.raises(InvalidRequest, match="one tensor per feature"):
        instances_from_v2({"inputs": [tensor("x", [1.0, 2, "web", True], "BYTES", [1, 4])]}, MIXED)


def test_answer_and_metadata_are_typed_tensors():
    answer = {"predictions": ["stay", "churn"], "probabilities": [[0.2, 0.8], [0.9, 0.1]],
              "inference_ids": ["a", "b"], "model_version": "logistic:v0001", "degraded": False}
    out = answer_to_v2(answer, MIXED, "churn", "req-1")
    assert out["id"] == "req-1" and out["model_name"] == "churn"
    preds, probs, ids = out["outputs"]
    assert preds == {"name": "predictions", "shape": [2], "datatype": "BYTES", "data": ["stay", "churn"]}
    assert probs["shape"] == [2, 2] and probs["data"] == [0.2, 0.8, 0.9, 0.1] and ids["data"] == ["a", "b"]
    assert "review" not in out["parameters"]  # review.threshold off: the answer is as it always was
    flagged = answer_to_v2({**answer, "review": [True, False]}, MIXED, "churn", None)
    assert flagged["parameters"]["review"] == [True, False] and "id" not in flagged
    meta = model_metadata(MIXED, "churn", "v")
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("amount", "FP64"), ("visits", "INT64"), ("channel", "BYTES"), ("member", "BOOL")]
    assert model_metadata(NUMERIC, "m", "v")["outputs"][0]["datatype"] == "INT64"


@pytest.mark.parametrize(("datatype", "data", "fragment"), [
    ("INT64", [1.5, 2], "is INT64 but data\\[0\\] is '1.5'"),
    ("INT32", [True, 2], "is INT32 but data\\[0\\] is 'True'"),
    ("UINT8", [-1, 2], "is UINT8 but data\\[0\\] is '-1'"),
    ("FP32", [1.0, "2"], "is FP32 but data\\[1\\] is '2'"),
    ("BOOL", [1, 0], "is BOOL but data\\[0\\]"),
])
def test_data_must_be_of_its_declared_datatype(datatype, data, fragment):
    with pytest.raises(InvalidRequest, match=fragment) as e:
        instances_from_v2({"inputs": [tensor("amount", data, datatype, [2])]}, MIXED)
    assert e.value.http_status == 422


def test_a_declared_datatype_that_fits_passes_and_null_is_a_missing_value():
    for datatype, data in (("INT64", [1, 2]), ("FP32", [1, 2.5]), ("FP64", [None, 2.0]), ("UINT16", [0, 7])):
        out = instances_from_v2({"inputs": [tensor("amount", data, datatype, [2])]}, MIXED)
        assert [r["amount"] for r in out["instances"]] == data


@pytest.mark.parametrize("shape", [[True], [2, False], [1.0]])
def test_a_shape_must_hold_integers_not_booleans(shape):
    with pytest.raises(InvalidRequest, match="shape must be a list of non-negative integers") as e:
        instances_from_v2({"inputs": [tensor("amount", [1.0], "FP64", shape)]}, MIXED)
    assert e.value.http_status == 400
