"""Durability under kills and bad files.

Pure (real Parquet files, no Ray): a corrupt part in the prediction or the feedback log is skipped
with a warning naming it by every reader of the logs (a gateway's known ids, the retrain's join,
compaction), never a crash. On a real local Ray cluster: gateway replicas SIGKILLed within
milliseconds of a 2xx feedback, under prediction and feedback load, leave every acknowledged label
in the feedback log and joined to its answer by the retrain's own reader.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from raymedic.keys import feedback_prefix, predictions_prefix
from raymedic.storage import Storage
from serve_apps.predlog import FeedbackLog, KnownIds, PredictionLog, new_inference_id
from train_jobs.compaction import compact_log
from train_jobs.labeled import joined_labels, recent_labeled
from train_jobs.schema import ModelSchema

SCHEMA = ModelSchema.numeric(["a", "b"], target="y", classes=[0, 1], mins=[0, 0], maxs=[1, 1])


# ---- a corrupt Parquet part (no Ray) -------------------------------------------------------------------------


def _logged(storage: Storage, n: int, now: float) -> list[str]:
    """``n`` answers (one part each, from another replica's log) and a label for each."""
    ids = []
    log = PredictionLog(storage, "m", tag="other")
    for i in range(n):
        ids.append(new_inference_id(now - 30 + i))
        log.append([{"inference_id": ids[-1], "ts": now - 30 + i, "model": "m", "model_version": "v",
                     "features": json.dumps([0.1 * i, 0.5]), "member_outputs": "{}", "prediction": "0",
                     "probabilities": [0.5, 0.5], "degraded": False}])
        log.flush()
    FeedbackLog(storage, "m", tag="other").write(ids, [i % 2 for i in range(n)])
    return ids


def _corrupt_parts(storage: Storage, root: Path) -> list[str]:
    """Next to the good parts of each log: a truncated copy of a good part and a file of garbage, named
    as a gateway names its parts (what a bad copy or a disk fault leaves)."""
    bad = []
    for prefix in (predictions_prefix("m"), feedback_prefix("m")):
        good = storage.list_files(prefix, suffix=".parquet")[0]
        folder = good.rsplit("/", 1)[0]
        data = (root / good).read_bytes()
        for name, body in (("part-0000000000001-torn-00000000.parquet", data[: len(data) // 2]),
                           ("part-0000000000002-junk-00000000.parquet", b"PAR1 not parquet at all" * 3)):
            (root / folder / name).write_bytes(body)
            bad.append(f"{folder}/{name}")
    return bad


def _warned(caplog: pytest.LogCaptureFixture, keys: list[str]) -> set[str]:
    return {k for k in keys for r in caplog.records if r.levelno == logging.WARNING and k in r.getMessage()}


def test_a_corrupt_part_in_either_log_is_skipped_with_a_warning_by_known_ids_the_retrain_reader_and_compaction(
        tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="raymedic")
    storage = Storage(str(tmp_path))
    now = time.time()
    ids = _logged(storage, 6, now)
    bad = _corrupt_parts(storage, tmp_path)
    bad_predictions = [k for k in bad if k.startswith(predictions_prefix("m"))]

    # A gateway replica that did not issue the ids finds every one in the log past the bad parts.
    known = KnownIds(storage, "m")
    assert known.unknown(ids) == []
    assert _warned(caplog, bad) == set(bad_predictions)  # it reads the prediction log only
    assert all(known.answer(i) is not None for i in ids)
    caplog.clear()
    assert known.unknown([new_inference_id(now)]) != []  # a later lookup of the same hour ...
    assert not _warned(caplog, bad)  # ... does not read (or warn about) the bad parts again

    # The retrain's reader joins every label to its answer and says which files it skipped.
    caplog.clear()
    joined = joined_labels(storage, "m")
    assert sorted(joined["inference_id"]) == sorted(ids)
    assert len(recent_labeled(storage, "m", SCHEMA)) == len(ids)
    assert _warned(caplog, bad) == set(bad)

    # Compaction merges the readable parts and leaves the bad ones where they are.
    caplog.clear()
    report = compact_log(storage, "m", retention_s=None, now=now).to_dict()
    assert not report["failed"] and report["folders_compacted"] == 1, report  # predictions: 6 parts in one
    assert all(storage.exists(k) for k in bad)
    assert _warned(caplog, bad) == set(bad)
    assert sorted(joined_labels(storage, "m")["inference_id"]) == sorted(ids)
    again = compact_log(storage, "m", retention_s=None, now=now).to_dict()
    assert again["folders_compacted"] == 0 and not again["failed"], again  # nothing left to merge


def test_a_part_missing_a_column_is_skipped_like_a_torn_one(tmp_path, caplog):
    import pyarrow as pa

    caplog.set_level(logging.WARNING, logger="raymedic")
    storage = Storage(str(tmp_path))
    ids = _logged(storage, 3, time.time())
    folder = storage.list_files(feedback_prefix("m"), suffix=".parquet")[0].rsplit("/", 1)[0]
    odd = f"{folder}/part-0000000000003-odd-00000000.parquet"
    storage.write_parquet(odd, pa.table({"something": ["else"]}))
    assert sorted(joined_labels(storage, "m")["inference_id"]) == sorted(ids)
    assert _warned(caplog, [odd]) == {odd}


# ---- gateway replicas SIGKILLed right after a 2xx feedback (real local Ray cluster) ---------------------------

KILLS = 5
"""Gateway kills, one after another (each once Serve runs the replacement)."""
@pytest.mark.ray
@pytest.mark.slow
def test_gateways_sigkilled_right_after_a_2xx_feedback_under_load_lose_no_acknowledged_label_and_none_is_unjoined(
        tmp_path_factory):
    pytest.importorskip("ray")
    # lazy: the kill driver imports Ray and the bench's cluster helpers; the pure tests above need neither
    from raymedic.bench import durability
    from tests.conftest import ONE_REPLICA_MEMBERS, local_service
    from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

    df = SyntheticGenerator(SyntheticSpec(seed=0)).sample(200, seed=11)
    inputs = [{f"f{i}": float(r[f"f{i}"]) for i in range(10)} for _, r in df.iterrows()]
    with local_service(tmp_path_factory.mktemp("durability"), members=ONE_REPLICA_MEMBERS,
                       gateway={"replicas": 2, "num_cpus": 0.2, "max_batch_size": 64}) as (url, cfg):
        storage = Storage(cfg.storage_path)
        log = durability.kill_gateways(url, cfg.model, storage=storage, inputs=inputs, classes=[0, 1], gateways=2,
                            settings=durability.DurabilitySettings(kills=KILLS), progress=print)
        counts = durability.count_durability(storage, cfg.model, log.acked)
        same = durability.answered_by_the_killed(storage, cfg.model, log.kills)
    print(f"durability: {counts}, {same} kills on the replica that gave the answer, {log.failed} of "
          f"{log.requests} requests failed {dict(log.failures)}, {log.unknown} labels refused unknown, kills "
          f"{[(k['ms_after_ack'], k['replaced_s']) for k in log.kills]}")
    assert len(log.kills) == KILLS and len({k["replica"] for k in log.kills}) == KILLS  # each a different process
    assert counts["acknowledged"] > KILLS, counts  # the load's labels too, not only the killer's
    # The hole this guards: a label for an answer still in the acknowledging replica's buffer, that replica
    # killed before its next flush. The load's own pairs (a label sent the moment its answer came) hit it at
    # every kill: with the answer not written before the label, 5 kills left 28 of 1531 labels unjoined here.
    # `same` (the killer's own pair answered by the replica it killed: 2-5 of 5 here) is printed, not asserted:
    # Serve's router picks the replicas, so it may be 0 by chance.
    assert counts["acknowledged"] == counts["persisted"] == counts["joined"], counts
