"""Performance from labels, the error-stream change detector and the label-free estimate (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from controllers.detectors.page_hinkley import PageHinkley
from controllers.monitors.performance import PerformanceMonitor
from raymedic.keys import ENSEMBLE
from train_jobs.evaluation import classification_metrics
from raymedic.config import PerformanceSettings
from serve_apps.telemetry import CallRecorder, RecentOutputs


def calibrated_stream(n: int, accuracy: float, seed: int, classes: int = 2):
    """Answers whose top probability equals their chance of being right (a calibrated model)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    conf = np.clip(rng.normal(accuracy, 0.05, n), 1 / classes + 0.01, 0.999)
    right = rng.random(n) < conf
    pred = np.where(right, y, (y + rng.integers(1, classes, n)) % classes)
    probs = np.full((n, classes), 0.0)
    probs[np.arange(n), pred] = conf
    rest = (1 - conf) / (classes - 1)
    for k in range(classes):
        probs[:, k] = np.where(pred == k, conf, rest)
    return y, probs


def test_metrics_on_known_answers():
    y = np.array([0, 0, 1, 1])
    perfect = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    m = classification_metrics(y, perfect)
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0 and m["roc_auc"] == 1.0
    assert m["ece"] == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.1]))
    flipped = classification_metrics(y, perfect[:, ::-1])
    assert flipped["accuracy"] == 0.0 and flipped["roc_auc"] == 0.0
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    m3 = classification_metrics(y3, p3)
    assert m3["accuracy"] == 0.75 and m3["f1_macro"] == pytest.approx(np.mean([2 / 3, 1.0, 2 / 3]))


def test_page_hinkley_is_quiet_on_a_steady_error_rate_and_fires_soon_after_a_rise():
    rng = np.random.default_rng(0)
    cfg = PerformanceSettings()
    ph = PageHinkley.from_settings(cfg)
    assert not any(ph.update(float(x)) for x in rng.random(5000) < 0.12)  # steady 12 % errors
    fired_after = next(i for i, x in enumerate(rng.random(2000) < 0.45, 1) if ph.update(float(x)))
    assert fired_after < 150  # 12 % → 45 %: about threshold / (0.33 - delta) ≈ 55 labels


def feed(mon: PerformanceMonitor, y, probs, member_probs=None):
    pairs = [{"y": int(k), "p": {ENSEMBLE: p.tolist(), **({"mlp": member_probs[i].tolist()} if member_probs is not None
                                                          else {})}} for i, (k, p) in enumerate(zip(y, probs))]
    return mon.add_labelled(pairs, now=100.0)


@pytest.mark.parametrize("error_test", ["cusum", "page-hinkley"])
def test_accuracy_decay_and_concept_drift_raise_breaches_and_healthy_labels_do_not(error_test):
    cfg = PerformanceSettings(label_window=300, min_labels=100, error_test=error_test)
    mon = PerformanceMonitor(2, cfg, reference_accuracy=0.9)
    y, p = calibrated_stream(300, 0.9, seed=1)
    assert not feed(mon, y, p)
    report = mon.check(now=101.0)
    assert report.breaches == {} and report.sources[ENSEMBLE]["accuracy"] == pytest.approx(0.9, abs=0.05)
    y, p = calibrated_stream(300, 0.9, seed=2)
    p = p[:, ::-1]  # the concept flipped: same confidence, now mostly wrong
    # Page-Hinkley fires as the labels arrive; the CUSUM is fed by check(), off the event loop.
    assert feed(mon, y, p) == (error_test == "page-hinkley")
    report = mon.check(now=102.0)
    assert set(report.breaches) == {("accuracy_decay", ENSEMBLE), ("concept_drift", ENSEMBLE)}
    assert report.breaches[("accuracy_decay", ENSEMBLE)][1]["accuracy"] < 0.5
    assert report.breaches[("concept_drift", ENSEMBLE)][1]["test"] == error_test
    state = mon.to_dict()
    again = PerformanceMonitor(2, cfg, reference_accuracy=0.9, state=state)
    assert again.check(now=103.0).concept_drift_at == 100.0  # survives a controller restart


def _errors_as_pairs(errors, seed, answered_at=None):
    """Labelled ensemble answers that are wrong exactly where ``errors`` is 1."""
    y = np.random.default_rng(seed).integers(0, 2, len(errors))
    pred = np.where(np.asarray(errors) > 0, 1 - y, y)
    return [{"y": int(k), "p": {ENSEMBLE: [0.8, 0.2] if c == 0 else [0.2, 0.8]},
             **({"ts": answered_at} if answered_at is not None else {})} for k, c in zip(y, pred)]


def test_error_cusum_baselines_on_the_first_live_labels_then_catches_a_rise_and_resumes_from_a_checkpoint():
    cfg = PerformanceSettings(error_baseline_labels=200)
    rng = np.random.default_rng(5)
    steady = (rng.random(5000) < 0.15).astype(int)  # the serving versions' own 15 % error rate
    worse = (rng.random(400) < 0.40).astype(int)  # then the concept moves: 40 %
    mon = PerformanceMonitor(2, cfg, reference_accuracy=0.85)
    for i in range(0, 5000, 250):  # labels arrive in gateway batches between checks
        mon.add_labelled(_errors_as_pairs(steady[i:i + 250], i), now=float(i))
        assert mon.check(now=float(i)).concept_drift_at is None, f"false alarm by label {i + 250}"
    half = mon.to_dict()
    assert len(half["error_baseline"]) == 200 and half["error_cusum"]["seen"] == 4800

    def first_alarm(monitor: PerformanceMonitor) -> dict:
        for i in range(0, 400, 10):
            monitor.add_labelled(_errors_as_pairs(worse[i:i + 10], i, answered_at=9_990.0 + i), now=10_000.0 + i)
            report = monitor.check(now=10_000.0 + i)
            if report.concept_drift_at is not None:
                evidence = dict(report.breaches[("concept_drift", ENSEMBLE)][1])
                evidence.pop("accuracy")  # of the labelled window, which a checkpoint does not keep
                return {"at": report.concept_drift_at, **evidence}
        pytest.fail("the CUSUM missed a rise from 15 % to 40 % errors over 400 labels")

    straight = first_alarm(mon)
    resumed = first_alarm(PerformanceMonitor(2, cfg, reference_accuracy=0.85, state=half))
    assert straight == resumed  # a restarted controller continues the same statistics
    assert straight["test"] == "cusum" and straight["at"] < 10_000.0 + 150
    assert straight["baseline_labels"] == 200 and 0.08 < straight["baseline_error_rate"] < 0.25
    assert 0 < straight["labels_since_change"] <= 150
    # Dated by when the rows that began the rise were answered (each batch's answers carry a time).
    assert 9_000.0 <= straight["change_at"] <= straight["at"] - 5, straight
    # What a retrain since the change could learn from: the labels of answers given since then.
    assert mon.labels_since(straight["change_at"]) == straight["at"] - straight["change_at"]  # 10 rows per 10 s

    mon.reset()  # new versions serve: a new baseline from their own labels
    assert mon.to_dict()["error_baseline"] == [] and mon.to_dict()["error_cusum"] is None
    mon.add_labelled(_errors_as_pairs(np.zeros(300, dtype=int), 0), now=1.0)
    mon.check(now=1.0)
    assert len(mon.to_dict()["error_baseline"]) == 300  # no error yet: no rate to test against, still waiting


def test_an_accuracy_decay_is_dated_by_the_cusums_running_excursion():
    """The labelled window's accuracy test often fires before the CUSUM crosses; the retrain it starts must
    still learn from the rows since the change, so the decay carries the excursion's start when it has weight."""
    cfg = PerformanceSettings(error_baseline_labels=200, min_labels=100, label_window=300)
    rng = np.random.default_rng(8)
    mon = PerformanceMonitor(2, cfg, reference_accuracy=0.99)  # any window decays: what matters is the date
    steady = (rng.random(400) < 0.15).astype(int)
    for i in range(0, 400, 50):
        mon.add_labelled(_errors_as_pairs(steady[i:i + 50], i, answered_at=1_000.0 + i), now=2_000.0)
    quiet = mon.check(now=2_000.0).breaches[("accuracy_decay", ENSEMBLE)][1]
    assert mon._cusum is not None and not mon._cusum.alarms
    assert "change_at" not in quiet  # steady errors: no excursion worth dating a change by
    burst = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0])
    for k, e in enumerate(burst):
        mon.add_labelled(_errors_as_pairs([e], 500 + k, answered_at=5_000.0 + k), now=6_000.0)
    report = mon.check(now=6_000.0)
    assert report.concept_drift_at is None, "the burst was meant to stay under the CUSUM's threshold"
    dated = report.breaches[("accuracy_decay", ENSEMBLE)][1]
    assert 0.5 <= dated["change_score"] < 1.0
    assert 5_000.0 <= dated["change_at"] <= 5_002.0, dated  # the burst's first answers, not the steady ones


def test_labels_for_answers_of_replaced_versions_do_not_count_after_a_promotion():
    """Promotions swap versions within a second; feedback for answers the old champions gave keeps
    arriving after it and must not read as a decay of the new ones."""
    mon = PerformanceMonitor(2, PerformanceSettings(min_labels=50))
    mon.reset(since=1_000.0)
    mon.add_labelled(_errors_as_pairs(np.ones(200, dtype=int), 1, answered_at=990.0), now=1_005.0)  # old answers
    assert mon.labels() == 0
    mon.add_labelled(_errors_as_pairs(np.zeros(80, dtype=int), 2, answered_at=1_001.0), now=1_006.0)
    assert mon.labels() == 80
    report = mon.check(now=1_006.0)
    assert ("accuracy_decay", ENSEMBLE) not in report.breaches
    restarted = PerformanceMonitor(2, PerformanceSettings(min_labels=50), state=mon.to_dict())
    restarted.add_labelled(_errors_as_pairs(np.ones(10, dtype=int), 3, answered_at=999.0), now=1_010.0)
    assert restarted.labels() == 0  # the cut survives a controller restart


def test_label_free_estimate_tracks_accuracy_and_says_how_reliable_it_is():
    cfg = PerformanceSettings(min_labels=100)
    mon = PerformanceMonitor(2, cfg)
    y, p = calibrated_stream(1000, 0.8, seed=3)
    mon.add_confidence(p.max(axis=1))
    est = mon.check(now=1.0).estimate
    assert est["reliability"].startswith("uncalibrated") and est["accuracy"] == pytest.approx(0.8, abs=0.02)
    # An overconfident model: says 0.95, is right 70 % of the time; labels recalibrate the estimate.
    y, p = calibrated_stream(400, 0.7, seed=4)
    over = np.where(p == p.max(axis=1, keepdims=True), 0.95, 0.05)
    feed(mon, y, over)
    mon.add_confidence(np.full(2000, 0.95))
    est = mon.check(now=2.0).estimate
    assert est["raw_confidence"] == pytest.approx(0.95)
    assert est["accuracy"] == pytest.approx(0.7, abs=0.06) and est["reliability"] == "calibrated on labels"
    assert est["calibration"]["ece_before"] > 0.2 and est["stderr"] < 0.02


def test_gateway_joins_labels_to_every_member_and_the_ensemble():
    recent, calls = RecentOutputs(), CallRecorder()
    recent.add(["a", "b"], {"mlp": np.array([[0.9, 0.1], [0.2, 0.8]])}, ensemble=np.array([[0.7, 0.3], [0.4, 0.6]]),
               at=50.0)
    pairs = recent.labelled(["a", "b", "unknown"], [0, 0])
    assert pairs == [{"y": 0, "p": {"mlp": [0.9, 0.1], "ensemble": [0.7, 0.3]}, "ts": 50.0},
                     {"y": 0, "p": {"mlp": [0.2, 0.8], "ensemble": [0.4, 0.6]}, "ts": 50.0}]
    assert set(recent.losses(["a"], [0])) == {"mlp"}  # the ensemble is not a member to weight
    recent.add_source(["a"], "mlp@challenger", np.array([[0.6, 0.4]]))
    # A challenger on trial is scored too: a promoted version starts from that record.
    assert recent.losses(["a"], [0])["mlp@challenger"] == [pytest.approx(0.16)]  # Brier: (0.4² + 0.4²) / 2
    records = recent.label_records(["a", "unknown", "b"], [0, 0, 0])  # one per known answer, with its id
    assert [(r["id"], r["labelled"]) for r in records] == list(zip("ab", recent.labelled(["a", "b"], [0, 0])))
    assert records[0]["losses"] == {"mlp": pytest.approx(0.01), "mlp@challenger": pytest.approx(0.16)}
    calls.add_labels(records)
    calls.add_confidence([0.7, 0.6])
    batch = calls.drain()
    assert batch["labels"] == records and batch["confidence"] == [0.7, 0.6]
    assert calls.drain()["labels"] == []


def test_prediction_drift_compares_the_latest_outputs_with_the_first_ones_and_only_warns():
    cfg = PerformanceSettings(prediction_reference=1000, prediction_window=500)
    mon = PerformanceMonitor(2, cfg)
    rng = np.random.default_rng(4)

    def answers(n: int, share_of_1: float, confidence: float) -> tuple[list[float], list[int]]:
        return (np.clip(rng.normal(confidence, 0.1, n), 0.5, 1.0).tolist(),
                (rng.random(n) < share_of_1).astype(int).tolist())

    assert not mon.check(now=0.0).prediction["outputs"]  # nothing to compare yet
    for _ in range(6):  # 1,500 answers in gateway batches: the reference, then a full window, unchanged
        mon.add_confidence(*answers(250, 0.5, 0.8))
    quiet = mon.check(now=1.0)
    assert set(quiet.prediction["outputs"]) == {"confidence", "predicted_class"}
    assert not quiet.prediction["drifted"] and ("prediction_drift", ENSEMBLE) not in quiet.breaches
    mon.add_confidence(*answers(500, 0.8, 0.65))  # the inputs moved: more of class 1, and less sure
    report = mon.check(now=2.0)
    severity, evidence = report.breaches[("prediction_drift", ENSEMBLE)]
    assert severity == "warn" and set(evidence["outputs"]) == {"confidence", "predicted_class"}
    assert evidence["outputs"]["predicted_class"]["shares"][1] > 0.7 and report.to_dict()["prediction_drift"]["drifted"]
    resumed = PerformanceMonitor(2, cfg, state=mon.to_dict())  # the reference survives a controller restart
    assert resumed.to_dict()["prediction_reference"] == mon.to_dict()["prediction_reference"]
    mon.reset()  # new versions: their own first answers become the reference
    assert mon.check(now=3.0).prediction["reference_answers"] == 0


def test_status_prints_performance_and_prediction_drift_on_one_line():
    from raymedic.app.cli.status import performance_line as _performance_line

    assert _performance_line({}) == ""  # before the controller's first check
    line = _performance_line({
        "labelled": {"ensemble": {"accuracy": 0.83, "labels": 300}},
        "estimated": {"accuracy": 0.81, "reliability": "calibrated on labels"},
        "prediction_drift": {"reference_answers": 1000, "window_answers": 500, "drifted": True,
                             "drifted_outputs": ["predicted_class"],
                             "outputs": {"confidence": {"psi": 0.02}, "predicted_class": {"psi": 0.4}}}})
    assert line == ("performance: ensemble accuracy 0.830 on 300 labels; estimated 0.810 (calibrated on labels); "
                    "prediction drift in predicted_class (confidence PSI 0.020, predicted_class PSI 0.400)")
    waiting = _performance_line({"prediction_drift": {"reference_answers": 10, "window_answers": 0, "outputs": {}}})
    assert waiting == "performance: prediction drift: collecting (10 reference answers, 0 in the window)"
