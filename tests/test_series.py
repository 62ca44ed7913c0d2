"""The report's time series (pure: no Ray): buckets, drift distributions, hour files, retention, reading back."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from controllers.checks import ModelChecks
from controllers.monitors.data import DataAlert
from controllers.series import SeriesBuckets, SeriesLog, drift_distribution, read_series
from raymedic.keys import series_prefix
from raymedic.storage import Storage
from serve_apps.telemetry import CallRecorder
from train_jobs.reference import FeatureReference, Reference

HOUR = 3600.0
T0 = 1_800_000_000.0  # on an hour boundary (UTC)


def _batch(answered: int, *, degraded: int = 0, failed: int = 0, p99: float = 20.0, labels: int = 0,
           right: int = 0) -> dict:
    labelled = ([{"labelled": {"y": 1, "p": {"ensemble": [0.1, 0.9]}}}] * right
                + [{"labelled": {"y": 0, "p": {"ensemble": [0.1, 0.9]}}}] * (labels - right))
    return {"requests": {"answered": answered, "degraded": degraded, "failed": failed},
            "latency": {"requests": answered, "p50_ms": 5.0, "p99_ms": p99},
            "replicas": {"mlp/r1": {"ok": answered, "error": failed, "dead": 0, "timeout": 1, "hedged": 2}},
            "labels": labelled}


def test_buckets_sum_gateways_take_the_worst_p99_and_carry_weights_into_quiet_buckets():
    b = SeriesBuckets(bucket_s=5.0)
    b.add_batch("g1", _batch(10, degraded=2, p99=30.0, labels=4, right=3), now=T0 + 1)
    b.add_batch("g2", _batch(30, failed=1, p99=90.0), now=T0 + 2)
    b.add_batch("g1", _batch(5, p99=40.0), now=T0 + 3)  # g1's later report replaces its earlier one
    b.sample(now=T0 + 4, weights={"mlp": 0.7, "lr": 0.3}, window_accuracy=0.81234, estimate=0.8)
    b.add_batch("g1", _batch(7), now=T0 + 11)  # a bucket with no sample of its own
    assert b.drain(now=T0 + 4.9) == []  # the bucket is still open
    first, = b.drain(now=T0 + 5)
    assert (first["ts"], first["requests"], first["degraded"], first["failed"]) == (T0, 45, 2, 1)
    assert (first["labels"], first["correct"], first["p99_ms"]) == (4, 3, 90.0)
    assert first["p50_ms"] == 5.0 and first["member_errors"] == 1 + 3  # an error and three timeouts, no hedge
    assert first["weights"] == {"mlp": 0.7, "lr": 0.3} and first["window_accuracy"] == 0.8123
    second, = b.drain(now=T0 + 20)
    assert second["ts"] == T0 + 10 and second["requests"] == 7
    assert second["weights"] == {"mlp": 0.7, "lr": 0.3} and second["estimate"] == 0.8  # carried over
    assert b.drain(now=T0 + 100) == []


def test_a_gateway_without_request_counters_counts_its_answers_confidences():
    b = SeriesBuckets(bucket_s=1.0)
    b.add_batch("old", {"confidence": [0.9, 0.8, 0.7]}, now=T0)
    assert b.drain(now=T0 + 1)[0]["requests"] == 3
    with pytest.raises(ValueError, match="bucket_s"):
        SeriesBuckets(bucket_s=0)


def test_the_gateway_counts_answered_degraded_and_failed_requests_per_batch():
    rec = CallRecorder()
    rec.request_answered(degraded=False)
    rec.request_answered(degraded=True)
    rec.request_failed()
    assert rec.drain()["requests"] == {"answered": 2, "degraded": 1, "failed": 1}
    assert rec.drain()["requests"] == {"answered": 0, "degraded": 0, "failed": 0}


def test_drift_distribution_puts_training_and_window_on_the_same_bins_numeric_and_categorical():
    num = drift_distribution(feature="f0", at=T0, reference=[0.0, 1, 2, 3, float("nan")], window=[3.0, 4, 5, 6],
                             bins=6, evidence={"psi": 1.2})
    assert num["edges"][0] == 0.0 and num["edges"][-1] == 6.0 and len(num["reference"]) == 6
    assert sum(num["reference"]) == pytest.approx(1) and sum(num["window"]) == pytest.approx(1)
    assert (num["reference_n"], num["window_n"], num["evidence"]) == (4, 4, {"psi": 1.2})
    cat = drift_distribution(feature="plan", at=T0, levels=["a", "b"], reference_probabilities=[0.5, 0.4, 0.1],
                             window_counts=[1, 1, 8])
    assert cat["levels"] == ["a", "b", "(unseen)"] and cat["window"] == [0.1, 0.1, 0.8]
    assert drift_distribution(feature="f0", at=T0, reference=[1.0], window=[]) is None
    assert drift_distribution(feature="f0", at=T0) is None


def test_series_log_writes_one_file_per_hour_rewrites_it_whole_and_prunes_past_retention(tmp_path):
    storage = Storage(str(tmp_path))
    log = SeriesLog(storage, "m", writer="ctl1", retention_h=2.0)
    log.add([{"kind": "bucket", "ts": T0 + 10}, {"kind": "bucket", "ts": T0 + 15}])
    assert log.flush(now=T0 + 20) == 1
    log.add([{"kind": "bucket", "ts": T0 + 20}])
    assert log.flush(now=T0 + 25) == 1  # the same hour's file, rewritten with all three rows
    log.add([{"kind": "bucket", "ts": T0 + HOUR + 1}])
    log.flush(now=T0 + HOUR + 2)
    files = storage.list_files(series_prefix("m"))
    assert [f.rsplit("/", 1)[-1] for f in files] == ["20270115T08-ctl1.jsonl", "20270115T09-ctl1.jsonl"]
    assert [r["ts"] for r in read_series(storage, "m")] == [T0 + 10, T0 + 15, T0 + 20, T0 + HOUR + 1]
    assert log.flush(now=T0 + HOUR + 3) == 0  # nothing new: nothing written
    # Another writer (a restarted controller) in the same hour has its own file; both are read.
    other = SeriesLog(storage, "m", writer="ctl2")
    other.add([{"kind": "bucket", "ts": T0 + HOUR + 5}])
    other.flush(now=T0 + HOUR + 6)
    assert [r["ts"] for r in read_series(storage, "m", since=T0 + HOUR)] == [T0 + HOUR + 1, T0 + HOUR + 5]
    assert [r["ts"] for r in read_series(storage, "m", since=T0 + 12, until=T0 + 20)] == [T0 + 15, T0 + 20]
    assert log.prune(now=T0 + 3 * HOUR + 1) == 1  # the first hour is past 2 h
    assert read_series(storage, "m")[0]["ts"] == T0 + HOUR + 1


def test_read_series_skips_torn_lines_and_foreign_rows(tmp_path):
    storage = Storage(str(tmp_path))
    good = json.dumps({"kind": "bucket", "ts": T0})
    storage.write_text(f"{series_prefix('m')}/20270115T08-x.jsonl", f"{good}\n{{torn\n[1, 2]\n{{\"ts\": \"no\"}}\n")
    assert read_series(storage, "m") == [{"kind": "bucket", "ts": T0}]
    assert read_series(storage, "absent") == []


def test_a_drift_alert_that_opens_records_the_features_training_and_window_distributions():
    rows: list[dict] = []
    checks = ModelChecks(deployment=lambda: None, policy=None, data_alerts=None, performance=None, healer=None,
                         recorder=None, checkpoint=None, audit=None, on_drift=rows.extend)
    ref = Reference(rows=100, features=(
        FeatureReference("f0", True, 0.0, sample=np.linspace(-1, 1, 100)),
        FeatureReference("plan", False, 0.0, counts=np.array([60.0, 40.0, 0.0]))))
    monitor = SimpleNamespace(reference=ref, schema=SimpleNamespace(features=[
        SimpleNamespace(name="f0", levels=None), SimpleNamespace(name="plan", levels=["a", "b"])]))
    batches = [{"features": {"f0": {"values": [0.5, 0.9, 1.5]}, "plan": {"counts": [1, 3, 0]}}},
               {"features": {"f0": {"values": [2.0]}, "plan": {"counts": [0, 4, 0]}}}]
    alert = lambda kind, feature: DataAlert(id=f"d-{feature}", kind=kind, feature=feature, detected_at=T0,
                                            evidence={"psi": 0.5})
    events = [("opened", alert("drift", "f0")), ("opened", alert("drift", "plan")),
              ("cleared", alert("drift", "f0")), ("opened", alert("missing_values", "f0"))]
    checks._record_drift(monitor, batches, events, T0)
    assert [(r["feature"], r["numeric"]) for r in rows] == [("f0", True), ("plan", False)]
    assert rows[0]["window_n"] == 4 and rows[0]["evidence"] == {"alert": "d-f0", "event": "opened", "psi": 0.5}
    assert rows[1]["window"] == [0.125, 0.875, 0.0] and rows[1]["levels"] == ["a", "b", "(unseen)"]
