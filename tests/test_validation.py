"""Request validation: every error class gets a 4xx whose message names the fix."""

from __future__ import annotations

import math

import pytest

from raymedic.errors import InvalidRequest, PayloadTooLarge
from serve_apps.validation import parse_feedback, parse_instances
from train_jobs.schema import Feature, FeatureType, ModelSchema

SCHEMA = ModelSchema(
    features=(
        Feature("amount", FeatureType.FLOAT, min=0.0, max=100.0),
        Feature("count", FeatureType.INT, min=0, max=10),
        Feature("channel", FeatureType.CATEGORICAL, levels=("web", "store")),
    ),
    target="label",
    classes=("no", "yes"),
)


def parse(body, **kw):
    return parse_instances(body, SCHEMA, max_batch=kw.pop("max_batch", 4), **kw)


def test_objects_and_lists_give_rows_in_schema_order():
    rows = parse({"instances": [{"channel": "web", "count": 3, "amount": 1.5}, [2.0, 4.0, "store"]]})
    assert rows == [[1.5, 3, "web"], [2.0, 4, "store"]]
    assert isinstance(rows[1][1], int)  # integral float normalised for an int feature


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ([1, 2], 400, 'like {"instances"'),
        ({"rows": []}, 400, 'like {"instances"'),
        ({"instances": {}}, 400, "must be a list"),
        ({"instances": []}, 400, "is empty"),
        ({"instances": [], "extra": 1}, 400, "unknown top-level keys ['extra']"),
        ({"instances": ["x"]}, 422, "must be an object keyed by feature name"),
        ({"instances": [{"amount": 1.0, "count": 1}]}, 422, "missing feature(s) ['channel']"),
        ({"instances": [{"amount": 1.0, "count": 1, "channel": "web", "zip": 1}]}, 422,
         "unknown feature(s) ['zip']"),
        ({"instances": [[1.0, 2]]}, 422, "has 2 values but the schema has 3 features"),
        ({"instances": [{"amount": "12", "count": 1, "channel": "web"}]}, 422, "'amount' must be a number"),
        ({"instances": [{"amount": True, "count": 1, "channel": "web"}]}, 422, "'amount' must be a number"),
        ({"instances": [{"amount": 1.0, "count": 1.5, "channel": "web"}]}, 422, "'count' must be an integer"),
        ({"instances": [{"amount": math.nan, "count": 1, "channel": "web"}]}, 422, "send a finite number"),
        ({"instances": [{"amount": math.inf, "count": 1, "channel": "web"}]}, 422, "send a finite number"),
        ({"instances": [{"amount": None, "count": 1, "channel": "web"}]}, 422, "'amount' is null"),
        ({"instances": [{"amount": 1.0, "count": 1, "channel": ["web"]}]}, 422, "'channel' is categorical"),
    ],
)
def test_each_error_class(body, status, fragment):
    with pytest.raises(InvalidRequest) as err:
        parse(body)
    assert err.value.http_status == status
    assert fragment in str(err.value)


def test_oversized_batch_is_413_with_the_limit():
    with pytest.raises(PayloadTooLarge) as err:
        parse({"instances": [[1.0, 1, "web"]] * 5}, max_batch=4)
    assert err.value.http_status == 413
    assert "limit is 4" in str(err.value)


def test_out_of_range_only_when_configured():
    body = {"instances": [[500.0, 1, "web"]]}
    assert parse(body) == [[500.0, 1, "web"]]
    with pytest.raises(InvalidRequest, match=r"outside the training range \[0, 100\]"):
        parse(body, reject_out_of_range=True)


def test_unseen_category_is_accepted_for_the_unknown_bucket():
    assert parse({"instances": [[1.0, 1, "kiosk"]]}) == [[1.0, 1, "kiosk"]]


def test_all_problems_of_a_batch_are_reported_together():
    with pytest.raises(InvalidRequest) as err:
        parse({"instances": [{"amount": "x", "count": 1, "channel": "web"}, [1.0]]})
    msg = str(err.value)
    assert "instance 0" in msg and "instance 1" in msg


def test_feedback_maps_labels_and_rejects_bad_ones():
    fb = parse_feedback({"inference_ids": ["a", "b"], "labels": ["yes", "no"]}, SCHEMA, max_batch=10)
    assert fb.labels == ["yes", "no"]
    with pytest.raises(InvalidRequest, match=r"not a class of this model; use one of \['no', 'yes'\]"):
        parse_feedback({"inference_ids": ["a"], "labels": ["maybe"]}, SCHEMA, max_batch=10)
    with pytest.raises(InvalidRequest, match="2 inference_ids but 1 labels"):
        parse_feedback({"inference_ids": ["a", "b"], "labels": ["yes"]}, SCHEMA, max_batch=10)
    with pytest.raises(InvalidRequest, match="appear more than once"):
        parse_feedback({"inference_ids": ["a", "a"], "labels": ["yes", "no"]}, SCHEMA, max_batch=10)


def test_feedback_accepts_json_forms_of_int_labels():
    schema = ModelSchema.numeric(["x"], target="y", classes=[0, 1], mins=[0], maxs=[1])
    fb = parse_feedback({"inference_ids": ["a", "b"], "labels": [1, "0"]}, schema, max_batch=10)
    assert fb.labels == [1, 0]
    with pytest.raises(InvalidRequest):
        parse_feedback({"inference_ids": ["a"], "labels": [True]}, schema, max_batch=10)
