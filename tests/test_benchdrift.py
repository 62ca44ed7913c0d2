"""`raymedic bench drift` (raymedic.bench.drift): a small seeded run, checked for structure and relations.

Never absolute figures: only that larger shifts are caught sooner, that the matched
reference detectors really raise no more false alarms than the CUSUMs, that the fixed
model loses accuracy under concept drift while the healed one gets it back. The
KS window test is checked against SciPy's; the Page–Hinkley test is the
controller's own class (tests/test_page_hinkley.py checks its batch form).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from controllers.detectors.page_hinkley import page_hinkley_alarms
from raymedic.app import cli
from raymedic.bench import drift as benchdrift
from raymedic.bench.drift import DriftBenchSettings, SCENARIOS
from raymedic.config import PerformanceSettings, TrainingConfig
from raymedic.errors import RaymedicError

SMALL = DriftBenchSettings(seeds=3, control_rows=30_000, false_alarms_per_10k=2.0, calibration_paths=150,
                           feature_calibration_paths=150)
"""2 false alarms per 10k so that 90,000 control rows hold ~18: enough to see the rate, in a few seconds."""


@pytest.fixture(scope="module")
def report() -> dict:
    return benchdrift.run_drift_bench(SMALL)


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["scenario"]: r for r in rows}


def test_ks_window_scores_match_scipy() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((700, 3))
    stream = rng.standard_normal((900, 3))
    stream[400:, 1] += 0.4
    ends, d = benchdrift.ks_window_scores(ref, stream, window=200, step=50)
    assert ends.tolist() == list(range(199, 900, 50))
    for i, end in enumerate(ends):
        for j in range(3):
            want = stats.ks_2samp(stream[end - 199:end + 1, j], ref[:, j]).statistic
            assert d[i, j] == pytest.approx(want, abs=1e-5)


def test_the_bench_runs_the_shipped_error_detector_by_default() -> None:
    shipped, bench = PerformanceSettings(), DriftBenchSettings()
    assert (bench.error_odds_ratios, bench.error_flip_shares, bench.error_confidence_bins) == (
        shipped.error_odds_ratios, shipped.error_flip_shares, shipped.error_confidence_bins)
    assert benchdrift.page_hinkley_alarms is page_hinkley_alarms  # the controller's test, not a copy


def test_the_bench_reference_is_the_shipped_synthetic_models_training_split() -> None:
    """The data monitor's feature CUSUM stands on every training value (train_jobs.reference keeps their
    moments): the bench's reference is as large as what the shipped synthetic model trains on."""
    training = TrainingConfig()
    assert DriftBenchSettings().reference_rows == round(training.synthetic_rows * (1 - training.val_fraction))


def test_report_has_every_scenario_and_is_json(report: dict) -> None:
    assert json.loads(benchdrift.dumps(report))["bench"] == "drift"
    names = [s.name for s in SCENARIOS]
    assert [r["scenario"] for r in report["detection"]] == names
    assert [r["scenario"] for r in report["accuracy"]] == names
    for r in report["detection"]:
        assert r["cusum"]["runs"] == r["baseline"]["runs"] == SMALL.seeds
        assert r["target"] == pytest.approx(0.7 * r["reference"], abs=0.1)
    for a in report["accuracy"]:
        assert set(a["models"]) == {"fixed", "healed_cusum", "healed_baseline", "oracle"}
    table = benchdrift.format_table(report)
    assert all(n in table for n in names) and "false alarms on the no-drift control" in table
    goals = {r["scenario"]: r["goal"] for r in report["detection"] if r["goal"] is not None}
    assert goals == {"mean +0.25 sd": 347, "concept 20 deg": 1390, "concept 60 deg": 46}  # issue 21's
    assert "CUSUM/goal" in table


def test_larger_shifts_are_caught_sooner_and_sooner_than_the_window_test(report: dict) -> None:
    det = by_name(report["detection"])
    small, mid, large = (det[f"mean +{s} sd"]["cusum"]["median"] for s in ("0.25", "0.5", "1"))
    assert large < mid < small
    for name in ("mean +1 sd", "sd x2"):
        assert det[name]["cusum"]["median"] < det[name]["baseline"]["median"]
    assert det["concept 60 deg"]["cusum"]["median"] is not None
    assert det["concept 60 deg"]["unit"] == "labels"


def test_the_told_cusum_is_the_limit_for_abrupt_changes(report: dict) -> None:
    """Told the feature, direction, size and true law, the CUSUM is optimal: it must not trail ours."""
    det = by_name(report["detection"])
    for name in ("mean +0.5 sd", "mean +1 sd", "sd x2", "concept 60 deg"):
        limit, ours = det[name]["limit"], det[name]["cusum"]
        assert limit["runs"] == SMALL.seeds and limit["median"] is not None
        assert limit["median"] <= ours["median"], name
    for name in ("gradual to +1 sd", "incremental to +1 sd"):
        assert det[name]["limit"] is None  # no single change to be told
    assert "limit (told)" in benchdrift.format_table(report)


def test_false_alarms_are_matched_and_near_the_target(report: dict) -> None:
    ctl = report["control"]
    assert ctl["rows"] == SMALL.seeds * SMALL.control_rows
    assert ctl["ks"]["alarms"] <= ctl["feature_cusum"]["alarms"]
    assert ctl["page_hinkley"]["alarms"] <= ctl["error_cusum"]["alarms"]
    for det in ("feature_cusum", "error_cusum"):
        assert 0.3 * SMALL.false_alarms_per_10k <= ctl[det]["per_10k"] <= 2.5 * SMALL.false_alarms_per_10k


def test_fixed_model_degrades_under_concept_drift_and_healing_recovers(report: dict) -> None:
    m = by_name(report["accuracy"])["concept 60 deg"]["models"]
    assert m["fixed"]["after"] < m["fixed"]["before"] - 0.1
    assert m["healed_cusum"]["after"] > m["fixed"]["after"] + 0.1
    assert m["fixed"]["recovery_rows"] is None
    assert m["healed_cusum"]["recovery_rows"] is not None
    assert m["healed_cusum"]["recovery_s"] == pytest.approx(m["healed_cusum"]["recovery_rows"] / SMALL.rows_per_s)
    assert m["oracle"]["after"] > m["fixed"]["after"]


def test_cli_dispatches_bench_drift_to_the_drift_bench(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    seen = {}

    def fake_bench(settings: DriftBenchSettings, *, progress=None) -> dict:
        seen["settings"] = settings
        return {"bench": "drift", "seeds": settings.seeds}

    monkeypatch.setattr(benchdrift, "run_drift_bench", fake_bench)
    args = cli._parser().parse_args(["bench", "drift", "--seeds", "4", "--rps", "25", "--json"])
    assert args.fn(args) == 0
    assert json.loads(capsys.readouterr().out) == {"bench": "drift", "seeds": 4}
    assert seen["settings"].rows_per_s == 25 and not math.isnan(seen["settings"].within)
    assert seen["settings"].reference_rows == DriftBenchSettings().reference_rows
    args = cli._parser().parse_args(["bench", "drift", "--reference-rows", "2000", "--json"])
    assert args.fn(args) == 0 and seen["settings"].reference_rows == 2000
    with pytest.raises(RaymedicError, match="reference_rows"):
        DriftBenchSettings(reference_rows=100)


@pytest.mark.parametrize("scenario", ["drift", "replica-faults"])
def test_bench_rejects_a_rate_that_is_not_positive_with_the_fix(scenario: str) -> None:
    args = cli._parser().parse_args(["bench", scenario, "--rps", "-5"])
    with pytest.raises(RaymedicError, match="--rps -5: give a positive rate"):
        args.fn(args)
