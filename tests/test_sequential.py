"""Sequential change detectors (controllers.detectors.cusum, .calibration): pure NumPy, seeded streams, no Ray.

Calibration tests use a high false-alarm target (10 per 10,000 rows) so that a few
hundred thousand seeded rows hold enough false alarms to compare with the target;
the calibration code is the same at the production target of 0.05.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from controllers.detectors import cusum as sequential
from controllers.detectors.calibration import Calibration, calibrate_errors, calibrate_features
from controllers.detectors.cusum import ErrorCusum, ErrorCusumConfig, FeatureCusum, FeatureCusumConfig
from raymedic.config import PerformanceSettings
from raymedic.errors import ConfigError, DataError

FAST = FeatureCusumConfig(false_alarms_per_10k=10.0, calibration_paths=200, calibration_rows=2_000)
UNBINNED = {"odds_ratios": (1.3, 3.0), "flip_shares": (), "confidence_bins": 1}
"""Two odds-ratio designs on one error rate: the detector's original design (the shipped one bins by
confidence, see BINNED), whose delays these tests were written for."""
FAST_ERRORS = ErrorCusumConfig(**UNBINNED, false_alarms_per_10k=10.0, calibration_paths=200, calibration_rows=2_000)
STRICT = FeatureCusumConfig(false_alarms_per_10k=0.5, calibration_paths=200, calibration_rows=5_000)


def first_after(alarms, row):
    return next((a for a in alarms if a.index >= row), None)


def naive_alarms(inc: np.ndarray, h: np.ndarray, n_ref: int) -> list[tuple[int, int, int]]:
    """Row-by-row CUSUMs with the reference-size discount; every statistic restarts after an alarm."""
    s = np.zeros(inc.shape[1])
    run = np.zeros(inc.shape[1], dtype=int)
    out = []
    for t, x in enumerate(inc):
        s = np.maximum(0.0, s + x)
        run = np.where(s > 0, run + 1, 0)
        score = s / (h * (1 + run / n_ref))
        if (score > 1).any():
            c = int(np.argmax(score))
            out.append((t, c, t - int(run[c]) + 1))
            s[:] = 0
            run[:] = 0
    return out


def test_module_doctest() -> None:
    result = doctest.testmod(sequential)
    assert result.attempted > 0 and result.failed == 0


def test_vectorized_cusum_matches_the_row_by_row_recursion() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((500, 2))
    # Low thresholds so that alarms (and the restarts after them) are frequent.
    cal = Calibration(thresholds={"mean": 4.0, "variance": 3.0}, false_alarms_per_10k=0, method="test",
                      paths=0, rows_per_path=0)
    x = rng.standard_normal((5_000, 2)) * 1.1 + 0.1
    det = FeatureCusum(ref, FAST, calibration=cal)
    for part in np.array_split(x, 7):  # batch boundaries must not matter
        det.update(part)
    z = (x - ref.mean(0)) / ref.std(0, ddof=1)
    k, ku, kd = FAST.k_mean, FAST.k_var_up, FAST.k_var_down
    inc = np.hstack([z - k, -z - k, z * z - ku, kd - z * z])
    want = naive_alarms(inc, np.array([4.0] * 4 + [3.0] * 4), len(ref))
    assert len(want) > 50
    assert [(a.index, a.feature + 2 * ["mean_up", "mean_down", "var_up", "var_down"].index(a.statistic),
             a.change_index) for a in det.alarms] == want


def test_null_false_alarm_rate_matches_the_calibrated_target() -> None:
    rng = np.random.default_rng(11)
    alarms = rows = 0
    for _ in range(10):  # fresh references: their sampling error is part of what the target covers
        det = FeatureCusum(rng.standard_normal((2_000, 5)), FAST)
        det.update(rng.standard_normal((20_000, 5)))
        alarms, rows = alarms + len(det.alarms), rows + 20_000
    per_10k = alarms / rows * 10_000
    assert 0.6 * FAST.false_alarms_per_10k < per_10k < 1.5 * FAST.false_alarms_per_10k, per_10k


def test_error_cusum_null_false_alarm_rate_matches_the_target() -> None:
    rng = np.random.default_rng(12)
    alarms = labels = 0
    for _ in range(10):
        det = ErrorCusum((rng.random(2_000) < 0.2).astype(float), FAST_ERRORS)
        det.update((rng.random(20_000) < 0.2).astype(float))
        alarms, labels = alarms + len(det.alarms), labels + 20_000
    per_10k = alarms / labels * 10_000
    assert 0.6 * FAST_ERRORS.false_alarms_per_10k < per_10k < 1.5 * FAST_ERRORS.false_alarms_per_10k, per_10k


def test_mean_shift_alarms_soon_on_the_right_feature_and_direction() -> None:
    rng = np.random.default_rng(5)
    det = FeatureCusum(rng.standard_normal((2_000, 4)), STRICT)
    x = rng.standard_normal((1_500, 4))
    x[1_000:, 2] -= 1.0
    alarm = first_after(det.update(x).alarms, 1_000)
    assert alarm is not None
    assert (alarm.statistic, alarm.feature) == ("mean_down", 2)
    assert alarm.index - 1_000 < 150  # ~h / (1 - k) rows at 1 sd
    assert abs(alarm.change_index - 1_000) < 60
    assert alarm.score > 1


def test_larger_shifts_are_detected_sooner() -> None:
    rng = np.random.default_rng(6)
    delays = {}
    for shift in (0.5, 1.0, 2.0):
        d = []
        for _ in range(5):
            det = FeatureCusum(rng.standard_normal((2_000, 3)), STRICT)
            x = rng.standard_normal((3_000, 3))
            x[500:, 0] += shift
            a = first_after(det.update(x).alarms, 500)
            d.append(math.inf if a is None else a.index - 500)
        delays[shift] = float(np.median(d))
    assert delays[2.0] < delays[1.0] < delays[0.5] < math.inf


@pytest.mark.parametrize("factor, statistic", [(2.0, "var_up"), (0.4, "var_down")])
def test_variance_change_is_detected_by_the_variance_statistics(factor: float, statistic: str) -> None:
    rng = np.random.default_rng(8)
    det = FeatureCusum(rng.standard_normal((2_000, 4)), STRICT)
    x = rng.standard_normal((1_500, 4))
    x[1_000:, 1] *= factor
    alarm = first_after(det.update(x).alarms, 1_000)
    assert alarm is not None and (alarm.statistic, alarm.feature) == (statistic, 1)
    assert alarm.index - 1_000 < 200


def test_statistics_restart_after_an_alarm_and_rebase_adopts_the_new_data() -> None:
    rng = np.random.default_rng(9)
    det = FeatureCusum(rng.standard_normal((2_000, 3)), STRICT)
    x = rng.standard_normal((3_000, 3)) + np.array([0.0, 0.0, 1.0])
    det.update(x)
    assert det.alarm and len(det.alarms) > 5  # the change persists: it keeps alarming, each time from zero
    gaps = np.diff([a.index for a in det.alarms])
    assert (gaps > 0).all()
    det.rebase(x[det.alarms[0].change_index:])
    assert det.rows_seen == 0 and det.score == 0.0
    assert not det.update(rng.standard_normal((2_000, 3)) + np.array([0.0, 0.0, 1.0])).alarm


def test_error_cusum_catches_a_rise_in_the_error_rate_and_not_a_fall() -> None:
    rng = np.random.default_rng(10)
    cfg = ErrorCusumConfig(**UNBINNED, false_alarms_per_10k=0.5, calibration_paths=200, calibration_rows=5_000)
    det = ErrorCusum((rng.random(2_000) < 0.17).astype(float), cfg)
    det.update((rng.random(1_000) < 0.17).astype(float))
    det.update((rng.random(1_000) < 0.05).astype(float))  # a better model is no alarm
    assert not det.alarms
    det.update((rng.random(1_000) < 0.40).astype(float))
    alarm = first_after(det.alarms, 2_000)
    assert alarm is not None and alarm.feature is None and alarm.index - 2_000 < 150
    assert alarm.statistic == "error_x3"  # the large design wins on a large rise


BINNED = ErrorCusumConfig(odds_ratios=(), flip_shares=(0.05, 0.2), confidence_bins=4, false_alarms_per_10k=10.0,
                          calibration_paths=200, calibration_rows=2_000)


def calibrated_errors(rng: np.random.Generator, n: int, flip: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Errors and confidences of a calibrated binary model (right with probability its confidence); ``flip``:
    the share of labels a concept change turned over, wherever the model was."""
    conf = rng.uniform(0.5, 1.0, n)
    p_error = (1.0 - conf) * (1.0 - flip) + conf * flip
    return (rng.random(n) < p_error).astype(float), conf


def test_confidence_bins_hold_the_false_alarm_budget() -> None:
    """30 baselines of 2,000 labels, 5,000 unchanged labels each: alarms per 10,000 near the target
    (expected ~150; the bounds are ±50 %, far outside Poisson noise of ±8 %, inside a wrong calibration)."""
    rng = np.random.default_rng(21)
    alarms = 0
    for _ in range(30):
        errors, conf = calibrated_errors(rng, 2_000)
        det = ErrorCusum(errors, BINNED, baseline_confidence=conf)
        alarms += len(det.update(*calibrated_errors(rng, 5_000)).alarms)
    rate = alarms / (30 * 5_000) * 10_000
    assert 0.5 * BINNED.false_alarms_per_10k < rate < 1.5 * BINNED.false_alarms_per_10k, rate


def test_confidence_bins_catch_flipped_labels_sooner_than_one_error_rate() -> None:
    """Turned-over labels where the model was sure are strong evidence; one pooled error rate dilutes them."""
    strict = ErrorCusumConfig(odds_ratios=(), flip_shares=(0.05, 0.2), confidence_bins=4, false_alarms_per_10k=0.5,
                              calibration_paths=200, calibration_rows=5_000)
    delays: dict[int, list[int]] = {1: [], 4: []}
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        base_e, base_c = calibrated_errors(rng, 2_000)
        pre_e, pre_c = calibrated_errors(rng, 1_000)
        post_e, post_c = calibrated_errors(rng, 2_000, flip=0.15)
        for bins in delays:
            cfg = ErrorCusumConfig(**{**strict.__dict__, "confidence_bins": bins})
            det = ErrorCusum(base_e, cfg, baseline_confidence=base_c)
            det.update(np.concatenate([pre_e, post_e]), np.concatenate([pre_c, post_c]))
            alarm = first_after(det.alarms, 1_000)
            delays[bins].append(2_000 if alarm is None else alarm.index - 1_000)
    assert np.median(delays[4]) < 0.75 * np.median(delays[1]), delays


def test_confidence_bins_merge_on_ties_and_need_a_confidence_per_error() -> None:
    rng = np.random.default_rng(3)
    errors = (rng.random(1_000) < 0.2).astype(float)
    det = ErrorCusum(errors, BINNED, baseline_confidence=np.full(1_000, 0.8))  # one distinct confidence
    assert len(det.bin_rates) == 1 and det.bin_rates[0] == pytest.approx(errors.mean())
    conf = rng.uniform(0.5, 1.0, 1_000)
    det = ErrorCusum(errors, BINNED, baseline_confidence=conf)
    assert len(det.bin_rates) == 4
    with pytest.raises(DataError, match="give each error's confidence"):
        det.update(errors[:10])
    with pytest.raises(DataError, match="one finite confidence per error"):
        det.update(errors[:10], conf[:9])
    with pytest.raises(DataError, match="give each error's confidence"):
        ErrorCusum(errors, BINNED)
    det.update(errors[:500], conf[:500])
    again = ErrorCusum(errors, BINNED, baseline_confidence=conf)
    again.restore(det.state())
    assert again.score == pytest.approx(det.score)


def test_bootstrap_calibration_agrees_with_the_gaussian_one_on_gaussian_data() -> None:
    rng = np.random.default_rng(13)
    ref = rng.standard_normal((2_000, 5))
    gauss = calibrate_features(2_000, 5, FAST)
    boot = calibrate_features(2_000, 5, FeatureCusumConfig(false_alarms_per_10k=10.0, calibration_paths=200,
                                                           calibration_rows=2_000, calibration="bootstrap"),
                              reference=ref)
    for family in ("mean", "variance"):
        assert boot.thresholds[family] == pytest.approx(gauss.thresholds[family], rel=0.15)
    assert calibrate_features(2_000, 5, FAST) is gauss  # pivotal: computed once per size


def test_stricter_targets_give_higher_thresholds() -> None:
    loose, strict = calibrate_errors(0.2, 2_000, FAST_ERRORS), calibrate_errors(
        0.2, 2_000, ErrorCusumConfig(**UNBINNED, false_alarms_per_10k=0.5, calibration_paths=200,
                                     calibration_rows=2_000))
    assert all(strict.thresholds[k] > loose.thresholds[k] for k in loose.thresholds)


def test_the_shipped_error_design_is_the_configs_and_has_no_second_default() -> None:
    settings = PerformanceSettings()
    design = ErrorCusumConfig.from_settings(settings)
    assert (design.odds_ratios, design.flip_shares, design.confidence_bins, design.false_alarms_per_10k) == (
        tuple(settings.error_odds_ratios), tuple(settings.error_flip_shares), settings.error_confidence_bins,
        settings.error_false_alarms_per_10k)
    custom = PerformanceSettings(error_odds_ratios=(2.0,), error_flip_shares=(), error_confidence_bins=2,
                                 error_false_alarms_per_10k=1.0)
    assert ErrorCusumConfig.from_settings(custom, calibration_paths=100) == ErrorCusumConfig(
        odds_ratios=(2.0,), flip_shares=(), confidence_bins=2, false_alarms_per_10k=1.0, calibration_paths=100)
    with pytest.raises(TypeError):  # the designs and the budget are the config's to say
        ErrorCusumConfig()  # type: ignore[call-arg]


@pytest.mark.parametrize("kwargs, match", [
    ({"shift_sd": 0.0}, "shift_sd"),
    ({"scale_ratio": 1.0}, "scale_ratio"),
    ({"mean_share": 1.0}, "mean_share"),
    ({"calibration": "exact"}, "calibration must be"),
    ({"false_alarms_per_10k": 0.0}, "false_alarms_per_10k"),
    ({"calibration_paths": 10}, "calibration_paths"),
    ({"calibration_rows": 100}, "calibration_rows"),
])
def test_feature_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FeatureCusumConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"odds_ratios": ()}, "odds_ratios"),
    ({"odds_ratios": (1.0, 3.0)}, "odds_ratios"),
    ({"odds_ratios": (), "flip_shares": ()}, "at least one error-CUSUM design"),
    ({"flip_shares": (1.2,)}, "flip_shares"),
    ({"confidence_bins": 0}, "confidence_bins"),
    ({"shrink_labels": -1.0}, "shrink_labels"),
    ({"false_alarms_per_10k": 5_000.0}, "false_alarms_per_10k"),
])
def test_error_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ErrorCusumConfig(**{**UNBINNED, "false_alarms_per_10k": 0.05, **kwargs})


def test_detectors_reject_unusable_data() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((200, 3))
    with pytest.raises(DataError, match="2-D array"):
        FeatureCusum(ref[:, 0], FAST)
    with pytest.raises(DataError, match=">= 50 rows"):
        FeatureCusum(ref[:10], FAST)
    bad = ref.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="missing"):
        FeatureCusum(bad, FAST)
    flat = ref.copy()
    flat[:, 2] = 1.0
    with pytest.raises(DataError, match=r"features \[2\] are constant"):
        FeatureCusum(flat, FAST)
    det = FeatureCusum(ref, FAST)
    with pytest.raises(DataError, match="rows of 3 features"):
        det.update(rng.standard_normal((5, 4)))
    with pytest.raises(DataError, match="missing"):
        det.update(np.full((2, 3), np.nan))
    with pytest.raises(ConfigError, match="pass reference="):
        calibrate_features(200, 3, FeatureCusumConfig(calibration="bootstrap"))
    with pytest.raises(DataError, match="0 \\(right\\) or 1"):
        ErrorCusum(np.full(200, 0.5), FAST_ERRORS)
    with pytest.raises(DataError, match="both errors and successes"):
        ErrorCusum(np.zeros(500), FAST_ERRORS)
    with pytest.raises(DataError, match=">= 100"):
        ErrorCusum(np.array([0.0, 1.0] * 20), FAST_ERRORS)


def test_a_reference_given_by_its_moments_is_the_same_detector() -> None:
    """Only the reference's mean, sd and size enter the detector: a training split known by its moments
    (train_jobs.reference keeps them) runs exactly what its rows would."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((1_500, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -2.0]
    stream = rng.standard_normal((1_200, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -2.0]
    stream[400:, 2] += 0.5
    rows = FeatureCusum(ref, FAST).update(stream)
    moments = FeatureCusum.from_moments(ref.mean(axis=0), ref.std(axis=0, ddof=1), len(ref), FAST).update(stream)
    assert moments.n_reference == rows.n_reference == 1_500 and rows.alarms
    assert moments.alarms == rows.alarms
    with pytest.raises(ConfigError, match="calibration='gaussian'"):
        FeatureCusum.from_moments(np.zeros(3), np.ones(3), 1_500, FeatureCusumConfig(calibration="bootstrap"))
    with pytest.raises(DataError, match=">= 50 rows"):
        FeatureCusum.from_moments(np.zeros(3), np.ones(3), 20, FAST)
    with pytest.raises(DataError, match="one finite mean and sd"):
        FeatureCusum.from_moments(np.zeros(3), np.ones(2), 1_500, FAST)
    with pytest.raises(DataError, match=r"features \[1\] are constant"):
        FeatureCusum.from_moments(np.zeros(3), np.array([1.0, 0.0, 1.0]), 1_500, FAST)


def test_a_larger_reference_catches_a_small_shift_sooner() -> None:
    """The reference-size discount and the threshold shrink with the rows the reference was measured on:
    the reason the data monitor standardizes by the whole training split, not its 2,000-row sample."""
    rng = np.random.default_rng(5)
    delays = {2_000: [], 20_000: []}
    for _ in range(6):
        stream = rng.standard_normal((3_000, 2))
        stream[:, 0] += 0.25
        for n, found in delays.items():
            det = FeatureCusum.from_moments(np.zeros(2), np.ones(2), n, STRICT).update(stream)
            found.append(det.alarms[0].index if det.alarms else 3_000)
    assert np.median(delays[20_000]) < np.median(delays[2_000])
