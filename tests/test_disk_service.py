"""The disk keeper on a real local Ray cluster: a deployed service's prediction and feedback logs are
compacted by its controller under live traffic, and every acknowledged label stays joinable.

The rule is driven by the small-files threshold (set low here), not by free space, so the test
means the same on any disk: free space is whatever the machine has, while the gateway writes one
prediction part per flush and one feedback part per labelled request. A prediction-log retention of
a few seconds makes compaction also drop the unlabelled rows, which is where a label could be lost.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from raymedic.app.http import request_json
from raymedic.keys import ADMIN_TOKEN_ENV, predictions_prefix
from raymedic.storage import Storage
from tests.conftest import ONE_REPLICA_MEMBERS, local_service, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")

TOKEN = "test-admin-token"
SMALL_FILES = 12
"""Compact once the logs hold this many small parts (the shipped default is 500)."""
RETENTION_H = 0.002
"""Unlabelled prediction rows older than this (7.2 s) go at the next compaction; labelled ones never."""
MEMBERS = ONE_REPLICA_MEMBERS
"""This module heals no replica: one each."""
CONTROLLER = {"disk_period_s": 1.0, "disk_compact_small_files": SMALL_FILES, "disk_compact_cooldown_s": 2.0}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    old = os.environ.get(ADMIN_TOKEN_ENV)
    os.environ[ADMIN_TOKEN_ENV] = TOKEN
    try:
        with local_service(tmp_path_factory.mktemp("disk"), members=MEMBERS, controller=CONTROLLER,
                           data={"prediction_log_retention_h": RETENTION_H}) as (url, cfg):
            yield url, cfg
    finally:
        if old is None:
            os.environ.pop(ADMIN_TOKEN_ENV, None)
        else:
            os.environ[ADMIN_TOKEN_ENV] = old


def _status(url: str) -> dict:
    r = request_json("GET", f"{url}/v1/status", timeout_s=10)
    assert r.status == 200, r.body
    return r.body


def _compactions(storage: Storage, model: str) -> list[dict]:
    # lazy: the audit reader lives in the controller layer; only this helper needs it
    from controllers.audit import read_audit

    return [r for r in read_audit(storage, model) if r["kind"] in ("compact-started", "compact")]


def _logged_ids(storage: Storage, model: str) -> set[str]:
    return {i for key in storage.list_files(predictions_prefix(model), suffix=".parquet")
            for i in storage.read_parquet(key, columns=["inference_id"]).column("inference_id").to_pylist()}


def test_the_controller_compacts_the_logs_under_traffic_and_every_acknowledged_label_stays_joinable(svc):
    from train_jobs.labeled import recent_labeled
    from train_jobs.registry import ModelRegistry
    from train_jobs.schema import ModelSchema
    from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

    url, cfg = svc
    storage = Storage(cfg.storage_path)
    predict, feedback = f"{url}/v1/models/{cfg.model}:predict", f"{url}/v1/models/{cfg.model}:feedback"
    df = SyntheticGenerator(SyntheticSpec(seed=0)).sample(400, seed=5)
    rows = [{f"f{i}": float(r[f"f{i}"]) for i in range(10)} for _, r in df.iterrows()]
    labelled: dict[str, tuple[int, list[float]]] = {}  # acknowledged: id -> (label, features as sent)
    unlabelled: list[str] = []

    def send(k: int) -> None:
        """Four rows, three of them labelled at once (a part per feedback request, acknowledged or not)."""
        batch = [rows[(4 * k + j) % len(rows)] for j in range(4)]
        r = request_json("POST", predict, {"instances": batch}, timeout_s=30)
        assert r.status == 200, r.body
        ids = r.body["inference_ids"]
        labels = [int(x) for x in df["label"].iloc[[(4 * k + j) % len(rows) for j in range(3)]]]
        fb = request_json("POST", feedback, {"inference_ids": ids[:3], "labels": labels}, timeout_s=30)
        assert fb.status == 200 and fb.body["accepted"] == 3, fb.body
        for i, lab, row in zip(ids[:3], labels, batch[:3], strict=True):
            labelled[i] = (lab, [row[f"f{n}"] for n in range(10)])
        unlabelled.append(ids[3])

    first_wave = 2 * SMALL_FILES
    for k in range(first_wave):  # at least one compaction's worth of small parts
        send(k)
    first_unlabelled = list(unlabelled)
    # Traffic goes on until a compaction that *started* once every first-wave row was past its retention
    # has dropped expired rows (an earlier one may have found only the wave's oldest rows expired).
    all_expired_at = time.time() + RETENTION_H * 3600
    k = first_wave

    def dropped_expired() -> dict | None:
        nonlocal k
        send(k)
        k += 1
        records = _compactions(storage, cfg.model)
        started = {r["action_id"]: r["ts"] for r in records if r["kind"] == "compact-started"}
        return next((r for r in records if r["kind"] == "compact" and r["evidence"].get("rows_dropped_expired", 0) > 0
                     and started.get(r["action_id"], 0.0) >= all_expired_at), None)

    done = wait_for(dropped_expired, timeout_s=90, interval_s=0.3,
                    what="the controller to compact the logs and drop the expired unlabelled rows")

    # Paused, the keeper compacts nothing more while the logs are read below (it still observes).
    assert request_json("POST", f"{url}/v1/admin/pause", {}, headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout_s=30).body == {"paused": True}
    records = _compactions(storage, cfg.model)
    ev = done["evidence"]
    assert done["outcome"] == "ok" and ev["files_before"] > ev["files_after"], ev
    assert any("small parts" in reason for reason in ev["reasons"]), ev
    assert ev["rows_kept_labelled"] > 0 and not ev["failed"], ev
    intent = [r for r in records if r["kind"] == "compact-started" and r["action_id"] == done["action_id"]]
    assert len(intent) == 1 and intent[0]["ts"] <= done["ts"], records  # intent audited before the act

    # GET /v1/status shows the disk signal and the compaction.
    disk = _status(url)["controller"]["disk"]
    assert disk["storage"]["free_bytes"] > 0 and 0 < disk["storage"]["free_fraction"] <= 1, disk
    assert set(disk["prediction_log"]) == {"predictions", "feedback"}, disk
    assert disk["last_compaction"] is not None and disk["last_compaction"]["outcome"] == "ok", disk

    # The last requests' predictions reach the log at the gateway's next flush (log_flush_s), not at once.
    # (One gateway replica here, so its status speaks for every prediction sent.)
    log_health = wait_for(lambda: (p := _status(url)["prediction_log"])["pending_rows"] == 0 and p, timeout_s=30,
                          what="the gateway to flush the last predictions")
    assert log_health["writable"] and log_health["dropped_rows"] == 0, log_health
    # (pending_rows drops when a flush takes the rows, a few ms before its part is on disk.)
    wait_for(lambda: set(labelled) <= _logged_ids(storage, cfg.model), timeout_s=10,
             what="every labelled prediction to be in the log (compaction must never drop one)")
    # Every acknowledged label, through the retrain job's own reader, with the features it labels, once.
    schema = ModelSchema.from_dict(ModelRegistry(storage).info(cfg.model, cfg.members[0].name).metadata["schema"])
    joined = recent_labeled(storage, cfg.model, schema)
    got = Counter((int(lab), tuple(round(float(x), 9) for x in feats))
                  for lab, *feats in joined[[schema.target, *(f"f{j}" for j in range(10))]].itertuples(index=False))
    want = Counter((lab, tuple(round(x, 9) for x in feats)) for lab, feats in labelled.values())
    assert got == want, f"{sum((want - got).values())} acknowledged labels lost, {sum((got - want).values())} extra"
    # ... and the first wave's unlabelled rows, long past their retention, are gone from the log.
    assert not set(first_unlabelled) & _logged_ids(storage, cfg.model)
