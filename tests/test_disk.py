"""Disk under storage_path: the pure rule (fake clock), compaction on real Parquet files, the bounded
prediction-log buffer, disk-fill's bounds and the keeper's act/record wiring (no Ray cluster)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from controllers.audit import AuditLog, read_audit
from controllers.disk import DiskKeeper
from controllers.monitors.data import DataAlerts
from controllers.policies.disk import (DiskAssessment, DiskObservation, DiskSample, DiskSettings, DiskVerdict,
                                       DiskWatch, assess_disk, time_to_floor)
from controllers.policies.replica import HealingPolicy
from controllers.recorder import Recorder
from raymedic.config import ControllerConfig, RaymedicConfig, parse_config
from raymedic.errors import ConfigError, InvalidRequest
from raymedic.keys import predictions_prefix
from raymedic.storage import Storage
from serve_apps.chaos import DISK_FILL_DIR, clear_disk_fill, disk_fill, disk_fill_limit_mb
from serve_apps.predlog import FeedbackLog, PredictionLog, new_inference_id
from train_jobs.compaction import COMPACT_TAG, compact_log, log_stats
from train_jobs.labeled import recent_labeled
from train_jobs.schema import ModelSchema

GB = 1e9
S = DiskSettings(compact_free_fraction=0.15, alert_free_fraction=0.05, horizon_s=600.0, window_s=300.0,
                 min_samples=5, compact_small_files=100, cooldown_s=60.0)


def series(free_at, *, t0: float = 0.0, n: int = 10, dt: float = 30.0, total: float = 1000 * GB):
    return [DiskSample(t0 + i * dt, free_at(i), total) for i in range(n)]


# ---- the pure rule ---------------------------------------------------------------------------------------


def test_plenty_of_space_and_few_files_is_ok():
    s = series(lambda i: 500 * GB)
    a = assess_disk(DiskObservation(now=s[-1].ts, storage=s[-1], log_small_files=10), s, (), S)
    assert a.verdict == DiskVerdict.OK and not a.compact_reasons and not a.alert_reasons


def test_many_small_files_call_for_compaction_only():
    s = series(lambda i: 500 * GB)
    a = assess_disk(DiskObservation(now=s[-1].ts, storage=s[-1], log_small_files=100), s, (), S)
    assert a.verdict == DiskVerdict.COMPACT and "100 small parts" in a.compact_reasons[0]


def test_free_space_under_the_compact_threshold_compacts_and_under_the_floor_alerts():
    s = series(lambda i: 100 * GB)  # 10 % free, steady
    a = assess_disk(DiskObservation(now=s[-1].ts, storage=s[-1]), s, (), S)
    assert a.verdict == DiskVerdict.COMPACT and not a.alert_reasons
    s = series(lambda i: 40 * GB)  # 4 %: under the hard floor
    a = assess_disk(DiskObservation(now=s[-1].ts, storage=s[-1]), s, (), S)
    assert a.verdict == DiskVerdict.ALERT and "under the floor" in a.alert_reasons["storage"] and a.compact_reasons


def test_a_steady_fall_forecast_to_reach_the_floor_within_the_horizon_alerts_before_it_is_low():
    s = series(lambda i: 300 * GB - i * 30 * 0.9 * GB)  # 0.9 GB/s down from 30 % free
    a = assess_disk(DiskObservation(now=s[-1].ts, storage=s[-1]), s, (), S)
    assert a.verdict == DiskVerdict.ALERT and "forecast" in a.alert_reasons["storage"]
    assert 0 < a.storage_time_to_floor_s <= S.horizon_s
    slow = series(lambda i: 300 * GB - i * 30 * 0.001 * GB)  # 1 MB/s: the floor is days away
    assert assess_disk(DiskObservation(now=slow[-1].ts, storage=slow[-1]), slow, (), S).verdict == DiskVerdict.OK


def test_one_big_write_is_a_step_not_a_trend_and_noise_is_not_a_fall():
    step = series(lambda i: 300 * GB if i < 8 else 250 * GB)
    assert time_to_floor(step, floor_bytes=50 * GB, min_samples=5) is None
    noise = series(lambda i: 300 * GB + (1 if i % 2 else -1) * 5 * GB)
    assert time_to_floor(noise, floor_bytes=50 * GB, min_samples=5) is None
    assert time_to_floor(series(lambda i: 300 * GB - i * GB, n=3), floor_bytes=50 * GB, min_samples=5) is None


def test_ray_dir_is_alerted_on_but_never_compacted_for_and_unknown_storage_never_fails():
    ray = series(lambda i: 10 * GB)  # 1 %
    a = assess_disk(DiskObservation(now=ray[-1].ts, storage=None, ray_dir=ray[-1]), (), ray, S)
    assert a.verdict == DiskVerdict.ALERT and set(a.alert_reasons) == {"ray_dir"} and not a.compact_reasons
    a = assess_disk(DiskObservation(now=0.0), (), (), S)
    assert a.verdict == DiskVerdict.OK and a.storage_time_to_floor_s is None


def test_config_refuses_an_alert_floor_above_the_compaction_threshold():
    with pytest.raises(ValueError, match="disk_alert_free_fraction"):
        ControllerConfig(disk_alert_free_fraction=0.3, disk_compact_free_fraction=0.1)


# ---- the watch: one at a time, cooldown, pause, approval ---------------------------------------------------

COMPACT = DiskAssessment(DiskVerdict.COMPACT, ("many small parts",))
OK = DiskAssessment(DiskVerdict.OK)


def test_watch_compacts_once_then_waits_out_its_cooldown():
    w = DiskWatch(S)
    first = w.step(COMPACT, now=100.0, paused=False, approval=False)
    assert first.compact is not None and first.compact.action_id == "compact-000001"
    assert w.step(COMPACT, now=101.0, paused=False, approval=False).compact is None  # still running
    w.done(first.compact.action_id)
    assert w.step(COMPACT, now=150.0, paused=False, approval=False).compact is None  # cooldown (60 s)
    again = w.step(COMPACT, now=161.0, paused=False, approval=False)
    assert again.compact is not None and again.compact.action_id == "compact-000002"
    restored = DiskWatch(S, w.to_dict())  # a restarted controller keeps the cooldown
    assert restored.step(COMPACT, now=170.0, paused=False, approval=False).compact is None


def test_paused_watch_records_once_and_compacts_nothing():
    w = DiskWatch(S)
    one = w.step(COMPACT, now=0.0, paused=True, approval=False)
    assert one.compact is None and [e[0] for e in one.events] == ["suppressed"]
    assert w.step(COMPACT, now=1.0, paused=True, approval=False).events == ()
    assert w.step(COMPACT, now=2.0, paused=False, approval=False).compact is not None


def test_approval_mode_proposes_and_runs_only_once_approved():
    w = DiskWatch(S)
    proposed = w.step(COMPACT, now=0.0, paused=False, approval=True)
    assert proposed.compact is None and proposed.events[0][0] == "proposed"
    pid = w.pending()["id"]
    assert pid.startswith("disk-") and w.step(COMPACT, now=1.0, paused=False, approval=True).compact is None
    with pytest.raises(KeyError):
        w.decide("disk-999999", True, "op", 2.0)
    assert w.decide(pid, True, "op", 2.0)[0] == "approved"
    run = w.step(COMPACT, now=3.0, paused=False, approval=True)
    assert run.compact is not None and w.pending() is None


def test_a_rejected_proposal_is_not_asked_again_before_the_cooldown_and_one_no_longer_needed_is_withdrawn():
    w = DiskWatch(S)
    w.step(COMPACT, now=0.0, paused=False, approval=True)
    assert w.decide(w.pending()["id"], False, "op", 1.0)[0] == "rejected"
    assert w.step(COMPACT, now=30.0, paused=False, approval=True).events == ()
    assert w.step(COMPACT, now=62.0, paused=False, approval=True).events[0][0] == "proposed"
    assert w.step(OK, now=63.0, paused=False, approval=True).events[0][0] == "disk-proposal-withdrawn"
    assert w.pending() is None


# ---- compaction on real Parquet files -----------------------------------------------------------------------

HOUR = 3600.0
SCHEMA = ModelSchema.numeric(["a", "b"], target="y", classes=[0, 1], mins=[0, 0], maxs=[1, 1])


def _write_log(storage: Storage, now: float, *, old_rows: int = 30, new_rows: int = 30) -> dict[str, list[str]]:
    """Prediction parts (one row each, so many small files) 40 h ago and now; labels for some of each."""
    ids: dict[str, list[str]] = {"old": [], "new": []}
    for key, n, base in (("old", old_rows, now - 40 * HOUR), ("new", new_rows, now - 60)):
        log = PredictionLog(storage, "m", tag=f"g{key}")
        for i in range(n):
            ts = base + i
            ids[key].append(new_inference_id(ts))
            log.append([{"inference_id": ids[key][-1], "ts": ts, "model": "m", "model_version": "v",
                         "features": json.dumps([0.01 * i, 0.5]), "member_outputs": "{}", "prediction": "0",
                         "probabilities": [0.5, 0.5], "degraded": False}])
            log.flush()
    fb = FeedbackLog(storage, "m", tag="f")
    for i in ids["old"][:5] + ids["new"][:5]:  # one label per request: many small feedback parts too
        fb.write([i], [1])
    return ids


def _parts(storage: Storage, prefix: str) -> list[str]:
    return storage.list_files(prefix, suffix=".parquet")


def test_compaction_merges_small_files_drops_expired_unlabelled_rows_and_keeps_every_label_joinable(tmp_path):
    storage = Storage(str(tmp_path))
    now = 1_800_000_000.0
    ids = _write_log(storage, now)
    before = recent_labeled(storage, "m", SCHEMA)
    assert len(before) == 10 and len(_parts(storage, predictions_prefix("m"))) == 60
    stats = log_stats(storage, "m")
    assert stats["predictions"].files == 60 and stats["predictions"].small_files == 60
    assert stats["feedback"].files == 10

    report = compact_log(storage, "m", retention_s=24 * HOUR, now=now).to_dict()

    parts = _parts(storage, predictions_prefix("m"))
    assert len(parts) == len({p.rsplit("/", 1)[0] for p in parts}) and all(COMPACT_TAG in p for p in parts)
    rows = storage.read_parquet(predictions_prefix("m"), columns=["inference_id"]).column("inference_id").to_pylist()
    assert sorted(rows) == sorted(ids["old"][:5] + ids["new"])  # expired rows gone but the 5 labelled ones
    assert report["rows_dropped_expired"] == 25 and report["rows_kept_labelled"] == 5
    assert report["files_before"] == 70 and report["files_after"] == len(parts) + 1
    after = recent_labeled(storage, "m", SCHEMA)  # the retrain job's own reader: every label still joined
    assert after.reset_index(drop=True).equals(before.reset_index(drop=True))
    assert len(_parts(storage, "logs/m/feedback")) == 1


def test_labelled_rows_past_their_retention_lose_their_raw_features_too(tmp_path):
    """data.labelled_retention_days: a label keeps a row past prediction_log_retention_h only until then
    (a data-retention policy), and a label arriving for a row past it does not write the row back."""
    storage = Storage(str(tmp_path))
    now = 1_800_000_000.0
    ids = _write_log(storage, now)
    cfg = parse_config({"data": {"prediction_log_retention_h": 24, "labelled_retention_days": 1.5}})
    report = compact_log(storage, "m", retention_s=cfg.data.prediction_log_retention_h * HOUR, now=now,
                         labelled_retention_s=cfg.data.labelled_retention_days * 24 * HOUR).to_dict()
    rows = storage.read_parquet(predictions_prefix("m"), columns=["inference_id"]).column("inference_id").to_pylist()
    assert sorted(rows) == sorted(ids["new"])  # the 40 h old rows are gone, labelled or not
    assert report["rows_dropped_expired"] == 30 and report["rows_kept_labelled"] == 0
    assert len(recent_labeled(storage, "m", SCHEMA)) == 5  # the recent labels still join
    assert len(storage.read_parquet("logs/m/feedback")) == 10  # label rows stay (no raw features in them)
    with pytest.raises(ConfigError, match=r"labelled_retention_days \(0.5 d\) must be at least"):
        parse_config({"data": {"prediction_log_retention_h": 24, "labelled_retention_days": 0.5}})
    assert parse_config({}).data.labelled_retention_days is None  # labelled rows kept forever by default


def test_compaction_is_idempotent(tmp_path):
    storage = Storage(str(tmp_path))
    now = 1_800_000_000.0
    _write_log(storage, now)
    compact_log(storage, "m", retention_s=24 * HOUR, now=now)
    files = _parts(storage, "logs/m")
    table = storage.read_parquet(predictions_prefix("m"))
    second = compact_log(storage, "m", retention_s=24 * HOUR, now=now)
    assert second.folders == [] and _parts(storage, "logs/m") == files
    assert storage.read_parquet(predictions_prefix("m")).equals(table)


class _CrashOnDelete(Storage):
    """A storage whose process 'dies' at the first delete: the merged file is written, no old part removed."""

    def delete(self, key: str) -> None:
        raise KeyboardInterrupt("crash between the write and the deletes")


def test_a_crash_between_write_and_delete_loses_nothing_and_the_next_run_leaves_no_duplicate(tmp_path):
    storage = Storage(str(tmp_path))
    now = 1_800_000_000.0
    ids = _write_log(storage, now)
    before = recent_labeled(storage, "m", SCHEMA)
    with pytest.raises(KeyboardInterrupt):
        compact_log(_CrashOnDelete(str(tmp_path)), "m", retention_s=24 * HOUR, now=now)
    # Both the merged file and the old parts exist: the reader dedupes, so nothing is lost or doubled.
    assert any(COMPACT_TAG in p for p in _parts(storage, "logs/m"))
    assert recent_labeled(storage, "m", SCHEMA).reset_index(drop=True).equals(before.reset_index(drop=True))
    compact_log(storage, "m", retention_s=24 * HOUR, now=now)
    rows = storage.read_parquet(predictions_prefix("m"), columns=["inference_id"]).column("inference_id").to_pylist()
    assert len(rows) == len(set(rows)) and set(ids["old"][:5] + ids["new"]) == set(rows)
    labels = storage.read_parquet("logs/m/feedback", columns=["inference_id"]).column("inference_id").to_pylist()
    assert sorted(labels) == sorted(ids["old"][:5] + ids["new"][:5])
    assert recent_labeled(storage, "m", SCHEMA).reset_index(drop=True).equals(before.reset_index(drop=True))


def test_a_label_that_arrives_during_compaction_keeps_its_prediction(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path))
    now = 1_800_000_000.0
    ids = _write_log(storage, now)
    late = ids["old"][10]
    real = storage.write_parquet
    calls = {"n": 0}

    def write_then_label(key, table, *, durable=True):
        real(key, table, durable=durable)
        if "predictions" in key and calls["n"] == 0:  # the first merged prediction file is down: a label lands
            calls["n"] += 1
            FeedbackLog(storage, "m", tag="late").write([late], [0])

    monkeypatch.setattr(storage, "write_parquet", write_then_label)
    compact_log(storage, "m", retention_s=24 * HOUR, now=now)
    rows = storage.read_parquet(predictions_prefix("m"), columns=["inference_id"]).column("inference_id").to_pylist()
    assert late in rows
    assert late in set(storage.read_parquet("logs/m/feedback", columns=["inference_id"])
                       .column("inference_id").to_pylist())


# ---- the prediction log when the disk is full --------------------------------------------------------------


class _FullDisk(Storage):
    full = True

    def write_parquet(self, key, table, *, durable=True):
        if self.full:
            raise OSError(28, "No space left on device")
        super().write_parquet(key, table, durable=durable)


def _row(i: int) -> dict:
    return {"inference_id": new_inference_id(), "ts": 1_800_000_000.0 + i, "model": "m", "model_version": "v",
            "features": "[0, 0]", "member_outputs": "{}", "prediction": "0", "probabilities": [1.0, 0.0],
            "degraded": False}


def test_a_full_disk_never_raises_keeps_a_bounded_buffer_counts_drops_and_recovers(tmp_path):
    storage = _FullDisk(str(tmp_path))
    log = PredictionLog(storage, "m", tag="g", max_pending=100)
    for i in range(250):
        log.append([_row(i)])
        if i % 50 == 0:
            assert log.flush() == 0  # no exception reaches the caller
    h = log.health()
    assert h["writable"] is False and h["pending_rows"] == 100 and h["dropped_rows"] == 150
    assert "No space left" in h["last_error"]
    storage.full = False
    assert log.flush() == 100 and log.health()["writable"] is True and log.pending() == 0


# ---- chaos disk-fill's bounds --------------------------------------------------------------------------------


def test_disk_fill_is_bounded_lives_in_its_folder_and_clear_removes_it(tmp_path):
    storage = Storage(str(tmp_path))
    assert disk_fill_limit_mb(1e9, 100e9) == 0.0 and disk_fill_limit_mb(1e12, 2e12) == 4096
    with pytest.raises(InvalidRequest, match="at most"):
        disk_fill(storage, 10_000)
    with pytest.raises(InvalidRequest, match="positive"):
        disk_fill(storage, -1)
    out = disk_fill(storage, 2)
    path = Path(out["path"])
    assert path.stat().st_size == 2_000_000 and path.parent == tmp_path / DISK_FILL_DIR
    assert clear_disk_fill(storage) == [str(path)] and not (tmp_path / DISK_FILL_DIR).exists()
    with pytest.raises(InvalidRequest, match="local storage_path"):
        disk_fill(Storage("mock://"), 1)


# ---- the keeper: observe → decide → act → record, on a fake observer --------------------------------------


class _FakeObserver:
    """Disk readings the test sets; the logs' size from the real listing."""

    def __init__(self, storage: Storage, free: float) -> None:
        self._storage = storage
        self.free = free
        self.logs = {}
        self.storage_path = str(storage.local_path(""))

    def read(self, now: float) -> DiskObservation:
        self.logs = log_stats(self._storage, "m")
        return DiskObservation(now=now, storage=DiskSample(now, self.free, 1000 * GB),
                               log_files=sum(s.files for s in self.logs.values()),
                               log_small_files=sum(s.small_files for s in self.logs.values()))


def _keeper(tmp_path, *, free: float, mode: str = "auto"):
    storage = Storage(str(tmp_path))
    cfg = RaymedicConfig(storage_path=str(tmp_path), controller={"disk_compact_small_files": 20, "mode": mode},
                         data={"clear_after": 1})
    clock = {"now": 1_800_000_000.0}
    audit = AuditLog(storage, "m", writer="t")
    alerts = DataAlerts(cfg.data)
    policy = HealingPolicy(cfg.controller)
    keeper = DiskKeeper(storage=storage, model="m", cfg=lambda: cfg, policy=policy, data_alerts=alerts,
                        recorder=Recorder(audit, "m", incident_of=lambda _: None), audit=audit,
                        observer=_FakeObserver(storage, free), clock=lambda: clock["now"])
    return storage, keeper, audit, alerts, policy, clock


def test_keeper_compacts_audited_and_alerts_on_a_full_disk_then_clears(tmp_path):
    storage, keeper, audit, alerts, _, clock = _keeper(tmp_path, free=30 * GB)  # 3 %: under the floor
    _write_log(storage, clock["now"], old_rows=0, new_rows=30)
    a = asyncio.run(keeper.check())
    assert a.verdict == DiskVerdict.ALERT
    kinds = [r["kind"] for r in audit.tail(50)]
    assert "compact-started" in kinds and "compact" in kinds and "data-disk_space" in kinds
    done = next(r for r in audit.tail(50) if r["kind"] == "compact")
    assert done["outcome"] == "ok" and done["evidence"]["files_before"] == 35 and done["action_id"]
    assert [x.kind for x in alerts.open()] == ["disk_space"]
    assert len(_parts(storage, predictions_prefix("m"))) == 1
    rep = keeper.report()
    assert rep["verdict"] == "alert" and rep["storage"]["free_fraction"] == 0.03
    assert rep["prediction_log"]["predictions"]["files"] == 1 and rep["last_compaction"]["outcome"] == "ok"
    keeper._observer.free = 500 * GB
    clock["now"] += 30
    assert asyncio.run(keeper.check()).verdict == DiskVerdict.OK and alerts.open() == []


def test_keeper_proposes_in_approval_mode_and_compacts_nothing_while_paused(tmp_path):
    storage, keeper, _, _, _, clock = _keeper(tmp_path, free=500 * GB, mode="approve")
    _write_log(storage, clock["now"], old_rows=0, new_rows=30)
    asyncio.run(keeper.check())
    (proposal,) = keeper.proposals()
    assert proposal["action"] == "compact" and len(_parts(storage, predictions_prefix("m"))) == 30

    async def approve_and_wait():
        out = await keeper.decide(proposal["incident"], True, "op")
        while keeper.last_compaction is None:
            await asyncio.sleep(0.01)
        return out

    assert asyncio.run(approve_and_wait())["approval"] == "approved"
    assert len(_parts(storage, predictions_prefix("m"))) == 1 and keeper.proposals() == []
    storage2, paused_keeper, audit2, _, policy2, clock2 = _keeper(tmp_path / "p", free=500 * GB)
    policy2.paused = True
    _write_log(storage2, clock2["now"], old_rows=0, new_rows=30)
    asyncio.run(paused_keeper.check())
    assert len(_parts(storage2, predictions_prefix("m"))) == 30
    assert [r["kind"] for r in audit2.tail(10)] == ["suppressed"]


def test_the_keeper_merges_old_audit_files_once_an_hour_and_audits_it(tmp_path):
    """The audit's one-file-per-step growth is the disk keeper's too: once an hour (not while paused) old
    files are merged, and the merge is itself a record."""
    storage, keeper, audit, _, policy, clock = _keeper(tmp_path, free=500 * GB)
    for i in range(120):
        audit.record("restart", f"mlp/r{i}", evidence={}, action="restart", outcome="ok", ts=clock["now"] - 7200 + i)
        audit.flush()
    policy.paused = True
    asyncio.run(keeper.check())
    assert len(storage.list_files("audit/m", suffix=".jsonl")) == 120  # paused: nothing done
    policy.paused = False
    asyncio.run(keeper.check())
    merged = [r for r in audit.tail(200) if r["kind"] == "audit-compacted"]
    assert len(merged) == 1 and merged[0]["evidence"]["merged_files"] == 120
    assert len(storage.list_files("audit/m", suffix=".jsonl")) == 2  # the merged file and the record of it
    assert len([r for r in read_audit(storage, "m") if r["kind"] == "restart"]) == 120
    clock["now"] += 60
    asyncio.run(keeper.check())  # within the hour: not again
    assert len([r for r in audit.tail(200) if r["kind"] == "audit-compacted"]) == 1
