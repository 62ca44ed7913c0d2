"""Pure data logic, no Ray: the synthetic stream and its drifts, table loading and
schema inference (every refusal names the fix), and the preprocessing that ships
with a model version."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from raymedic.errors import ConfigError, DataError
from train_jobs.preprocess import CLIP, Preprocessor
from train_jobs.schema import FeatureType
from train_jobs.synthetic import Drift, SyntheticGenerator, SyntheticSpec
from train_jobs.tables import fingerprint, infer_schema, load_table, split

GEN = SyntheticGenerator(SyntheticSpec(seed=3))


# ---- synthetic stream ----------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed_and_differs_across_seeds():
    a, b, c = GEN.sample(500, seed=1), GEN.sample(500, seed=1), GEN.sample(500, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["f0"], c["f0"])
    assert set(a["label"]) == {0, 1} and 0.3 < a["label"].mean() < 0.7


def test_covariate_shift_moves_inputs_only_where_asked():
    base = GEN.sample(4000, seed=1)
    moved = GEN.sample(4000, seed=1, drift=Drift(mean_shift={"f3": 2.0}, scale={"f4": 3.0}))
    assert moved["f3"].mean() - base["f3"].mean() == pytest.approx(2.0, abs=1e-9)
    assert moved["f4"].std() / base["f4"].std() == pytest.approx(3.0, rel=1e-6)
    pd.testing.assert_series_equal(moved["f0"], base["f0"])


def test_concept_drift_keeps_inputs_and_changes_labels():
    base = GEN.sample(4000, seed=1)
    rotated = GEN.sample(4000, seed=1, drift=Drift(concept_rotation_deg=90))
    features = [c for c in base.columns if c != "label"]
    pd.testing.assert_frame_equal(base[features], rotated[features])
    agreement = (base["label"] == rotated["label"]).mean()
    assert agreement < 0.8, agreement  # a 90° turn of the decision direction relabels many rows


def test_label_shift_hits_the_prior_and_keeps_the_concept():
    shifted = GEN.sample(2000, seed=4, drift=Drift(class_prior=(0.9, 0.1)))
    assert len(shifted) == 2000 and shifted["label"].mean() == pytest.approx(0.1, abs=0.001)


@pytest.mark.parametrize("bad", [Drift(class_prior=(0.5, 0.6)), Drift(class_prior=(1.0,)),
                                 Drift(mean_shift={"nope": 1.0})])
def test_bad_drift_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        GEN.sample(10, seed=0, drift=bad)


def test_bad_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="n_classes"):
        SyntheticSpec(n_classes=9)


def test_multiclass_stream_has_every_class():
    gen = SyntheticGenerator(SyntheticSpec(n_classes=3, seed=1))
    assert set(gen.sample(3000, seed=0)["label"]) == {0, 1, 2}


# ---- tables and schemas --------------------------------------------------------------


def mixed(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "amount": rng.normal(50, 10, n).round(2),
        "visits": rng.integers(0, 9, n),
        "channel": rng.choice(["web", "store", "app"], n),
        "member": rng.random(n) < 0.5,
        "label": rng.choice(["churn", "stay"], n),
    })


def test_schema_inference_types_ranges_levels_and_classes():
    df = mixed()
    schema = infer_schema(df, target="label")
    kinds = {f.name: f.type for f in schema.features}
    assert kinds == {"amount": FeatureType.FLOAT, "visits": FeatureType.INT,
                     "channel": FeatureType.CATEGORICAL, "member": FeatureType.CATEGORICAL}
    amount = schema.features[0]
    assert (amount.min, amount.max) == (df["amount"].min(), df["amount"].max())
    assert set(schema.features[2].levels) == {"web", "store", "app"}
    assert schema.classes == ("churn", "stay") and schema.target == "label"


@pytest.mark.parametrize("frame, target, fix", [
    (pd.DataFrame({"x": [1.0, 2.0], "y": [1, 1]}), "y", "single class"),
    (pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]}), "label", "pass --target with one of ['x', 'y']"),
    (pd.DataFrame({"x": [1.0, 2.0], "y": [0.5, 1.5]}), "y", "regression targets are not supported"),
    (pd.DataFrame({"x": [1.0, 2.0], "y": [0, None]}), "y", "fill in their labels"),
    (pd.DataFrame({"x": [None, None], "y": [0, 1]}), "y", "'x' is empty"),
    (pd.DataFrame({"x": ["a", 2], "y": [0, 1]}), "y", "mixes value types"),
    (pd.DataFrame({"y": [0, 1]}), "y", "add feature columns"),
    (pd.DataFrame({"x": pd.Series([], dtype=float), "y": pd.Series([], dtype=int)}), "y", "no rows"),
])
def test_bad_tables_are_refused_with_the_fix(frame, target, fix):
    with pytest.raises(DataError, match=None) as info:
        infer_schema(frame, target=target)
    assert fix in str(info.value)


def test_identifier_like_column_is_refused():
    df = pd.DataFrame({"id": [f"u{i}" for i in range(200)], "y": [0, 1] * 100})
    with pytest.raises(DataError, match="looks like an identifier"):
        infer_schema(df, target="y", max_levels=50)


def test_csv_and_parquet_load_the_same_table(tmp_path):
    df = mixed()
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet", index=False)
    a, b = load_table(tmp_path / "t.csv"), load_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert infer_schema(a, target="label") == infer_schema(b, target="label")


@pytest.mark.parametrize("name, content, fix", [
    ("missing.csv", None, "does not exist"),
    ("t.json", "{}", "reads .parquet, .pq and .csv"),
    ("broken.parquet", "not parquet", "cannot read"),
    ("empty.csv", "", "cannot read"),
])
def test_unreadable_files_are_refused(tmp_path, name, content, fix):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as info:
        load_table(tmp_path / name)
    assert fix in str(info.value)


def test_fingerprint_tracks_content_not_column_order():
    df = mixed()
    assert fingerprint(df) == fingerprint(df[list(reversed(df.columns))])
    changed = df.copy()
    changed.loc[0, "amount"] += 1
    assert fingerprint(changed) != fingerprint(df)


def test_split_is_seeded_disjoint_and_stratified():
    df = GEN.sample(1000, seed=0)
    train, val = split(df, val_fraction=0.2, seed=1, stratify_col="label")
    train2, _ = split(df, val_fraction=0.2, seed=1, stratify_col="label")
    pd.testing.assert_frame_equal(train, train2)
    assert len(train) + len(val) == 1000 and abs(len(val) - 200) <= 2
    assert val["label"].mean() == pytest.approx(df["label"].mean(), abs=0.01)
    merged = pd.concat([train, val]).sort_values("f0").reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, df.sort_values("f0").reset_index(drop=True))


# ---- preprocessing -------------------------------------------------------------------


def fitted() -> tuple[Preprocessor, pd.DataFrame]:
    df = mixed(200)
    return Preprocessor.fit(df, infer_schema(df, target="label")), df


def test_rows_and_frames_encode_identically_and_survive_json():
    pre, df = fitted()
    rows = df[pre.schema.feature_names].values.tolist()
    x = pre.transform_frame(df)
    np.testing.assert_array_equal(x, pre.transform_rows(rows))
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.transform_rows(rows), x)
    # amount standardised, visits standardised, 3+1 channel columns, 2+1 member columns
    assert pre.output_dim == 1 + 1 + 4 + 3 and x.dtype == np.float32
    assert abs(x[:, 0].mean()) < 1e-5 and x[:, 0].std() == pytest.approx(1.0, abs=1e-4)


def test_unseen_level_uses_the_other_bucket_and_missing_values_the_training_statistic():
    pre, df = fitted()
    x = pre.transform_rows([[None, float("nan"), "kiosk", None]])
    assert x[0, 0] == 0.0 and x[0, 1] == 0.0  # the training mean standardises to 0
    assert x[0, 2:6].tolist() == [0, 0, 0, 1]  # unseen "kiosk" → other
    mode = df["member"].value_counts().idxmax()
    assert x[0, 6:9].tolist() == pre.transform_rows([[50.0, 3, "web", mode]])[0, 6:9].tolist()  # missing → mode


def test_schema_records_the_training_missing_share():
    df = mixed(100)
    df.loc[:9, "amount"] = np.nan
    df["channel"] = df["channel"].astype(object)
    df.loc[:4, "channel"] = None
    schema = infer_schema(df, target="label")
    share = {f.name: f.missing_share for f in schema.features}
    assert share == {"amount": 0.1, "visits": 0.0, "channel": 0.05, "member": 0.0}
    again = type(schema).from_dict(json.loads(json.dumps(schema.to_dict())))
    assert [f.missing_share for f in again.features] == [0.1, 0.0, 0.05, 0.0]


def test_absurd_numbers_are_clipped():
    pre, _ = fitted()
    x = pre.transform_rows([[1e12, -1e12, "web", True]])
    assert x[0, 0] == CLIP and x[0, 1] == -CLIP


def test_labels_round_trip_and_unknown_label_is_refused():
    pre, _ = fitted()
    idx = pre.encode_labels(["stay", "churn", np.str_("stay")])
    assert idx.tolist() == [1, 0, 1] and pre.decode_labels(idx) == ["stay", "churn", "stay"]
    with pytest.raises(DataError, match="not one of the model's classes"):
        pre.encode_labels(["maybe"])


def test_categorical_keys_keep_bool_apart_from_ints():
    df = pd.DataFrame({"flag": [True, False, True, False], "code": [1, 2, 1, 2], "y": [0, 1, 0, 1]})
    pre = Preprocessor.fit(df, infer_schema(df.astype({"code": str}), target="y"))
    x = pre.transform_rows([[1, "1"]])  # 1 is not True; "1" equals the code 1
    flag_cols, code_cols = x[0, :3], x[0, 3:]
    assert flag_cols[-1] == 1.0 and code_cols[:2].sum() == 1.0


@pytest.mark.parametrize(("labels", "classes"), [
    ([True, False] * 20, (False, True)),
    ([3, 1, 2, 1] * 10, (1, 2, 3)),
    (["prepaid_card", "wire", "cash", "wire"] * 10, ("cash", "prepaid_card", "wire")),
])
def test_boolean_integer_and_string_targets_keep_their_own_labels(labels, classes):
    df = pd.DataFrame({"x": np.arange(len(labels), dtype=float), "y": labels})
    schema = infer_schema(df, target="y")
    assert schema.classes == classes and all(type(c) is type(classes[0]) for c in schema.classes)
    pre = Preprocessor.fit(df, schema)
    idx = pre.encode_labels(df["y"])
    assert pre.decode_labels(idx) == list(labels)
