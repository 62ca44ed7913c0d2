"""Tensor input drift (pure, no Ray): the projection, the windowed MMD and its calibration, the monitor, and
the data monitor's seam.

Synthetic images: a few smooth 8×8 "strokes" mixed with random weights plus pixel
noise, so that the leading principal components carry structure. Fixed seeds; sizes
small enough for seconds, false-alarm checks at a budget high enough to count on a
moderate stream.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from controllers.detectors.calibration import calibrate_features_given
from controllers.detectors.cusum import FeatureCusumConfig
from controllers.detectors.tensor_drift import (
    TensorDriftMonitor,
    TensorState,
    TensorTest,
    tensor_monitors,
)
from controllers.monitors.data import AlertKind, DataAlerts, DataMonitor, FeatureKind
from raymedic.config import DataConfig
from raymedic.errors import ConfigError, DataError, SchemaError
from train_jobs.mmd import WindowMmd, calibrate_mmd, gaussian_kernel, median_bandwidth
from train_jobs.projection import Projection
from train_jobs.reference import FeatureReference, Reference
from train_jobs.schema import Feature, FeatureType, ModelSchema
from train_jobs.tensor_reference import (
    TENSORS_KEY,
    TensorDriftSettings,
    tensor_entry,
    with_tensors,
)

SHAPE = (8, 8)


def images(n: int, rng: np.random.Generator, *, weights: np.ndarray | None = None) -> np.ndarray:
    """``n`` images from 5 fixed smooth patterns, mixed at random, plus noise."""
    yy, xx = np.mgrid[0:8, 0:8] / 7.0
    patterns = np.stack([np.sin(np.pi * (i + 1) * xx) * np.cos(np.pi * i * yy) for i in range(5)])
    scale = np.array([3.0, 2.0, 1.5, 1.0, 0.7]) if weights is None else weights
    mix = rng.standard_normal((n, 5)) * scale
    return 8.0 + np.einsum("nk,kyx->nyx", mix, patterns) + rng.normal(0.0, 0.3, (n, *SHAPE))


FAST = TensorDriftSettings(reference_rows=400, held_out_rows=600, window=100, step=10, false_alarms_per_10k=5.0,
                           calibration_paths=200, calibration_rows=1000)
"""5 false alarms per 10k: a 40,000-row control holds ~20, enough to see the rate in a few seconds."""


@pytest.fixture(scope="module")
def entry() -> dict:
    return tensor_entry(images(2000, np.random.default_rng(0)), FAST)


# ---- projection ---------------------------------------------------------------------------------


def test_projection_round_trips_through_json_and_whitens_the_training_rows() -> None:
    x = images(800, np.random.default_rng(1))
    p = Projection.fit(x, max_components=4, variance=1.0)
    q = Projection.from_dict(json.loads(json.dumps(p.to_dict())))
    z = p.transform(x)
    assert z.shape == (800, 5) and q.coordinate_names == ["pc1", "pc2", "pc3", "pc4", "residual"]
    np.testing.assert_allclose(q.transform(x[:20]), z[:20])
    np.testing.assert_allclose(z[:, :4].std(axis=0, ddof=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    assert np.all(np.diff(p.explained_variance) <= 0) and p.explained_variance.sum() > 0.9


def test_projection_keeps_few_components_when_they_explain_the_variance() -> None:
    p = Projection.fit(images(800, np.random.default_rng(2)), variance=0.9)
    assert 1 <= p.k <= 5  # five patterns make the images; noise is the rest
    assert Projection.fit(images(800, np.random.default_rng(2)), variance=1.0).k == 8  # the cap


def test_projection_refuses_wrong_shapes_and_bad_values_with_the_fix() -> None:
    p = Projection.fit(images(200, np.random.default_rng(3)))
    with pytest.raises(DataError, match=r"expected tensor rows of shape \[8, 8\].*got array shape \[2, 64\]"):
        p.transform(np.zeros((2, 64)))
    bad = images(100, np.random.default_rng(3))
    bad[3, 2, 2] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        Projection.fit(bad)
    with pytest.raises(DataError, match="constant tensor"):
        Projection.fit(np.ones((100, 4, 4)))
    with pytest.raises(SchemaError, match="malformed tensor projection"):
        Projection.from_dict({**p.to_dict(), "mean": [0.0]})


# ---- the MMD statistic --------------------------------------------------------------------------


def test_window_mmd_matches_the_textbook_unbiased_estimate_whatever_the_batches() -> None:
    rng = np.random.default_rng(4)
    ref, x = rng.standard_normal((150, 3)), rng.standard_normal((700, 3))
    bw = median_bandwidth(ref)
    det = WindowMmd(ref, bandwidth=bw, window=40, step=9)
    rows, stat = zip(*(det.feed(part) for part in np.array_split(x, [1, 38, 39, 500])))
    rows, stat = np.concatenate(rows), np.concatenate(stat)
    assert rows[0] == 44 and np.all((rows + 1) % 9 == 0)

    def unbiased(w: np.ndarray) -> float:
        kww, krr = gaussian_kernel(w, w, bw), gaussian_kernel(ref, ref, bw)
        n, m = len(w), len(ref)
        return (kww.sum() - n) / (n * (n - 1)) + (krr.sum() - m) / (m * (m - 1)) - 2 * gaussian_kernel(w, ref, bw).mean()

    np.testing.assert_allclose(stat, [unbiased(x[r - 39:r + 1]) for r in rows], atol=1e-6)  # float32 cross kernel


def test_mmd_is_near_zero_without_change_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((300, 2))
    bw = median_bandwidth(ref)
    means = []
    for shift in (0.0, 0.5, 1.0):
        det = WindowMmd(ref, bandwidth=bw, window=100, step=100)
        means.append(float(det.feed(rng.standard_normal((2000, 2)) + [shift, 0.0])[1].mean()))
    assert abs(means[0]) < 0.01 < means[1] < means[2]


def test_calibration_is_seeded_and_refuses_too_few_held_out_rows() -> None:
    rng = np.random.default_rng(6)
    ref, pool = rng.standard_normal((200, 3)), rng.standard_normal((300, 3))
    a = calibrate_mmd(ref, pool, window=50, step=10, false_alarms_per_10k=5.0, paths=60, rows_per_path=500)
    b = calibrate_mmd(ref, pool, window=50, step=10, false_alarms_per_10k=5.0, paths=60, rows_per_path=500)
    assert a.threshold == b.threshold > 0
    with pytest.raises(DataError, match="held-out rows"):
        calibrate_mmd(ref, pool[:20], window=50, step=10, false_alarms_per_10k=5.0)


# ---- the monitor --------------------------------------------------------------------------------


def test_reference_entry_is_plain_json_and_tabular_documents_stay_as_they_were(entry: dict) -> None:
    assert json.loads(json.dumps(entry)) == entry
    assert entry["coordinates"][-1] == "residual" and len(entry["sample"]) == FAST.reference_rows
    tabular = Reference(rows=10, features=(FeatureReference("a", True, 0.0, sample=np.arange(3.0)),)).to_dict()
    assert with_tensors(tabular, {}) == tabular
    assert set(with_tensors(tabular, {"img": images(900, np.random.default_rng(7))}, FAST)) == {
        "rows", "features", TENSORS_KEY}
    with pytest.raises(DataError, match="tensor feature 'img'.*needs >= 300 training rows"):
        with_tensors(tabular, {"img": images(100, np.random.default_rng(7))}, FAST)


def test_no_drift_stream_stays_within_the_false_alarm_budget(entry: dict) -> None:
    monitor = TensorDriftMonitor("img", entry)
    rng = np.random.default_rng(8)
    rows = 40_000
    for _ in range(rows // 500):
        monitor.update(images(500, rng))
    alarms = len(monitor.findings)
    # Budget 5 per 10k for both detectors: ~20 expected; 2.5x leaves room for one unlucky seed, not a bias.
    assert alarms <= 2.5 * FAST.false_alarms_per_10k * rows / 10_000, monitor.findings[:5]
    assert monitor.state in (TensorState.WATCHING, TensorState.DRIFTING)


@pytest.mark.parametrize("change", ["noise", "mix", "rotate"])
def test_a_strong_change_is_detected_soon_after_it(entry: dict, change: str) -> None:
    rng = np.random.default_rng(9)
    monitor = TensorDriftMonitor("img", entry)
    assert monitor.update(images(600, rng)) is None
    assert monitor.state == TensorState.WATCHING
    if change == "noise":
        post = images(400, rng) + rng.normal(0.0, 1.5, (400, *SHAPE))
    elif change == "mix":
        post = images(400, rng, weights=np.array([1.0, 3.0, 1.5, 1.0, 0.7]))
    else:
        post = np.rot90(images(400, rng), axes=(1, 2))
    finding = monitor.update(post)
    assert finding is not None and 600 <= finding.row < 800
    assert finding.feature == "img" and finding.value > finding.threshold and finding.rows_seen == 1000
    assert finding.test in (TensorTest.MMD, TensorTest.CUSUM)
    assert monitor.state == TensorState.DRIFTING
    assert json.loads(json.dumps(finding.to_dict()))["test"] == str(finding.test)


def test_the_monitor_refuses_a_malformed_entry_naming_the_feature(entry: dict) -> None:
    with pytest.raises(SchemaError, match="feature 'img'"):
        TensorDriftMonitor("img", {**entry, "mmd": {}})
    assert tensor_monitors(None) == {} and tensor_monitors({}) == {}


# ---- the data monitor's seam --------------------------------------------------------------------


def schema() -> ModelSchema:
    return ModelSchema(features=(Feature(name="x", type=FeatureType.FLOAT, min=-5.0, max=5.0),), classes=(0, 1),
                       target="y")


def tally(n: int, rng: np.random.Generator, tensors: dict | None = None) -> dict:
    out = {"rows": n, "features": {"x": {"missing": 0, "out_of_range": 0,
                                         "values": rng.standard_normal(n).tolist()}}}
    if tensors is not None:
        out["tensors"] = tensors
    return out


def test_data_monitor_without_a_tensors_section_runs_no_tensor_monitor() -> None:
    rng = np.random.default_rng(10)
    ref = Reference(rows=2000, features=(FeatureReference("x", True, 0.0, sample=np.sort(rng.standard_normal(2000))),))
    monitor = DataMonitor(schema(), ref, DataConfig(min_rows=50))
    assert monitor.tensor_monitors == {}
    monitor.add(tally(300, rng, {"img": images(300, rng).tolist()}))  # rows of a feature it has no entry for
    report = monitor.check()
    assert report is not None and [f.name for f in report.features] == ["x"]
    assert all(f.kind != FeatureKind.TENSOR for f in report.features)


def test_a_drifted_tensor_stream_opens_a_drift_incident_and_an_undrifted_one_does_not(entry: dict) -> None:
    rng = np.random.default_rng(11)
    ref = Reference(rows=2000, features=(FeatureReference("x", True, 0.0, sample=np.sort(rng.standard_normal(2000))),))
    cfg = DataConfig(min_rows=50)
    doc = {**ref.to_dict(), TENSORS_KEY: {"img": entry}}
    calm, drifted = (DataMonitor(schema(), ref, cfg, tensors=doc[TENSORS_KEY]) for _ in range(2))
    for _ in range(4):
        calm.add(tally(200, rng, {"img": images(200, rng).tolist()}))
        drifted.add(tally(200, rng, {"img": (images(200, rng) + rng.normal(0, 2.0, (200, *SHAPE))).tolist()}))
    alerts_calm, alerts_drift = DataAlerts(cfg), DataAlerts(cfg)
    events_calm = alerts_calm.update(calm.check(now=1.0))
    events = alerts_drift.update(drifted.check(now=1.0))
    assert not [a for _e, a in events_calm if a.feature == "img"]
    opened = [a for e, a in events if e == "opened" and a.feature == "img"]
    assert len(opened) == 1 and opened[0].kind == AlertKind.DRIFT
    ev = opened[0].evidence
    assert ev["test"] in ("mmd", "cusum") and ev["statistic"] > ev["threshold"] and ev["sequential"]


def test_rows_that_do_not_fit_are_dropped_not_raised(entry: dict) -> None:
    monitor = DataMonitor(schema(), None, DataConfig(min_rows=50), tensors={"img": entry})
    assert monitor.add_tensor_rows("img", np.zeros((3, 4, 4))) is None
    assert monitor.tensor_monitors["img"].rows_seen == 0


def test_cusum_thresholds_given_the_reference_cover_what_sets_held_out_rows_apart() -> None:
    rng = np.random.default_rng(12)
    ref = rng.standard_normal((300, 3))
    config = FeatureCusumConfig(false_alarms_per_10k=5.0, calibration_paths=60, calibration_rows=2000)
    pool = rng.standard_normal((600, 3))
    same = calibrate_features_given(ref, pool, config)
    apart = calibrate_features_given(ref, pool + [0.1, 0.0, 0.0], config)
    assert same.method == "held-out" and same.thresholds == calibrate_features_given(ref, pool, config).thresholds
    assert apart.thresholds["mean"] > same.thresholds["mean"]
    with pytest.raises(ConfigError, match="same columns"):
        calibrate_features_given(ref, rng.standard_normal((600, 2)), config)
