"""Request validation: every error class gets a 4xx whose message names the fix."""

from __future__ import annotations

import math

import pytest

from raymedic.config import DataConfig
from raymedic.errors import ConfigError, InvalidRequest, PayloadTooLarge
from serve_apps.validation import input_policies, parse_feedback, parse_instances
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
    return parse_instances(body, SCHEMA, max_batch=kw.pop("max_batch", 4), **kw).rows


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


# ---- missing values and unseen levels, by policy -----------------------------------------

HOLEY = ModelSchema(
    features=(
        Feature("amount", FeatureType.FLOAT, min=0.0, max=100.0, missing_share=0.1),  # had holes in training
        Feature("count", FeatureType.INT, min=0, max=10),
        Feature("channel", FeatureType.CATEGORICAL, levels=("web", "store")),
    ),
    target="label",
    classes=("no", "yes"),
)


def holey(body, **data):
    return parse_instances(body, HOLEY, max_batch=8, policies=input_policies(HOLEY, DataConfig(**data)))


def test_auto_imputes_features_that_had_holes_in_training_and_rejects_the_others():
    assert [p.missing for p in input_policies(HOLEY, DataConfig())] == ["impute", "reject", "reject"]
    out = holey({"instances": [{"amount": None, "count": 1, "channel": "web"}, {"count": 2, "channel": "store"}]})
    assert out.rows == [[None, 1, "web"], [None, 2, "store"]]  # None: the members' preprocessor fills the mean
    assert out.warnings == ["feature 'amount' was missing; imputed with its training mean/mode in 2 instance(s) "
                            "[0, 1]"]
    with pytest.raises(InvalidRequest, match="'count' is null; send a value") as err:
        holey({"instances": [{"amount": 1.0, "count": None, "channel": "web"}]})
    assert err.value.http_status == 422
    with pytest.raises(InvalidRequest, match=r"missing feature\(s\) \['count'\]"):
        holey({"instances": [{"amount": 1.0, "channel": "web"}]})


def test_per_feature_overrides_win_over_the_default():
    out = holey({"instances": [[1.0, None, None]]}, missing="reject",
                features={"count": {"missing": "impute"}, "channel": {"missing": "impute"}})
    assert out.rows == [[1.0, None, None]] and len(out.warnings) == 2
    with pytest.raises(InvalidRequest, match="'amount' is null"):
        holey({"instances": [[None, 1, "web"]]}, missing="reject")
    assert holey({"instances": [[None, None, None]]}, missing="impute").rows == [[None, None, None]]


def test_unseen_level_is_bucketed_with_a_warning_or_rejected_with_the_known_levels():
    out = holey({"instances": [[1.0, 1, "kiosk"], [1.0, 1, "web"]]})
    assert out.rows[0][2] == "kiosk" and out.warnings == [
        "feature 'channel' has a level never seen in training; encoded as 'other' in 1 instance(s) [0]"]
    with pytest.raises(InvalidRequest, match=r"'channel' = 'kiosk' was never seen in training; send one of "
                                              r"\['web', 'store'\]") as err:
        holey({"instances": [[1.0, 1, "kiosk"]]}, features={"channel": {"unseen": "reject"}})
    assert err.value.http_status == 422


@pytest.mark.parametrize(("data", "fragment"), [
    ({"features": {"zip": {"missing": "impute"}}}, "names ['zip'], which the model does not have"),
    ({"features": {"amount": {"unseen": "reject"}}}, "'amount' is numeric"),
])
def test_policy_overrides_that_do_not_fit_the_model_are_config_errors(data, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        input_policies(HOLEY, DataConfig(**data))


def test_an_integer_past_float_range_is_a_422_not_an_overflow_in_every_member():
    huge = 10 ** 309  # valid JSON; float(huge) raises OverflowError in preprocessing
    with pytest.raises(InvalidRequest, match="over 300 digits.*finite number") as e:
        parse({"instances": [[huge, 1, "web"]]})
    assert e.value.http_status == 422
    with pytest.raises(InvalidRequest, match="over 300 digits.*one of its levels"):
        parse({"instances": [[1.0, 1, -huge]]})
    assert parse({"instances": [[1e300, 1, "web"]]}) == [[1e300, 1, "web"]]  # large but a float: the model clips


def test_a_categorical_string_has_a_length_limit():
    from serve_apps.validation import MAX_LEVEL_CHARS

    assert parse({"instances": [[1.0, 1, "x" * MAX_LEVEL_CHARS]]})[0][2] == "x" * MAX_LEVEL_CHARS  # unseen: kept
    with pytest.raises(InvalidRequest, match=f"{MAX_LEVEL_CHARS + 1}-character string") as e:
        parse({"instances": [[1.0, 1, "x" * (MAX_LEVEL_CHARS + 1)]]})
    assert e.value.http_status == 422
