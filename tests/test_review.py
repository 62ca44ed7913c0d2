"""The review queue without Ray: the decision, the bound and its policy, paging, clearing by labels, and the
durable log several gateway replicas share (a restarted replica rebuilds the queue; compaction keeps only what
still waits)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from raymedic.config import ReviewConfig, parse_config
from raymedic.errors import InvalidRequest
from raymedic.keys import review_prefix
from raymedic.storage import Storage
from serve_apps.predlog import FeedbackLog, PredictionLog, new_inference_id
from serve_apps.review import (
    MAX_PAGE,
    ReviewBook,
    ReviewItem,
    ReviewQueue,
    flag_unsure,
    page_query,
)

MODEL = "m"
FEATURES = ["f0", "f1"]


def item(ts: float, top: float = 0.55) -> ReviewItem:
    return ReviewItem(inference_id=new_inference_id(ts), ts=ts, model_version="a:v1,b:v1", prediction="1",
                      probabilities=(round(1 - top, 6), top), member_outputs=json.dumps({"a": {"probabilities": [0.4, 0.6]}}))


def book(storage: Storage, tag: str, *, max_items: int = 100, clock=time.time) -> ReviewBook:
    return ReviewBook(storage, MODEL, settings=ReviewConfig(threshold=0.7, max_items=max_items, refresh_s=0.01),
                      tag=tag, feature_names=FEATURES, clock=clock)


def ids(b: ReviewBook, **kw) -> list[str]:
    return [i["inference_id"] for i in b.page(after=None, limit=MAX_PAGE, **kw)["items"]]


# ---- the decision ----------------------------------------------------------------------------------

def test_only_answers_less_sure_than_the_threshold_are_flagged():
    probs = np.array([[0.5, 0.5], [0.31, 0.69], [0.3, 0.7], [0.05, 0.95]])
    assert flag_unsure(probs, 0.7) == [True, True, False, False]  # at the threshold is sure enough
    assert flag_unsure(probs, None) == [False] * 4
    assert flag_unsure(np.array([[0.2, 0.3, 0.5]]), 0.34) == [False]  # top ≥ 1/K: a threshold ≤ 1/K flags nothing


def test_the_config_is_off_by_default_and_refuses_a_bad_threshold_with_the_field_named():
    assert parse_config({}).review.threshold is None
    with pytest.raises(Exception, match="review.threshold"):
        parse_config({"review": {"threshold": 1.5}})
    with pytest.raises(Exception, match="review.max_items"):
        parse_config({"review": {"threshold": 0.6, "max_items": 0}})


# ---- the queue: bound, policy, paging ----------------------------------------------------------------

def test_a_full_queue_drops_its_oldest_and_never_takes_back_a_resolved_item():
    q = ReviewQueue(max_items=3)
    items = [item(1000.0 + k) for k in range(5)]
    added, dropped = q.offer(items[:4])
    assert len(added) == 4 and dropped == [items[0]] and len(q) == 3
    _, dropped = q.offer([items[4]])
    assert dropped == [items[1]] and q.oldest() == items[2]
    # an item older than all that waits, offered to a full queue, is itself the oldest: it goes at once
    late = item(999.0)
    added, dropped = q.offer([late])
    assert added == [late] and dropped == [late] and len(q) == 3
    assert q.resolve([items[3].inference_id, "x" * 32]) == [items[3].inference_id]
    assert q.offer([items[0], items[1], items[3], late]) == ([], [])  # dropped or labelled: gone for good


def test_pages_go_oldest_first_and_the_last_page_says_so():
    q = ReviewQueue(max_items=100)
    items = [item(2000.0 + k) for k in range(7)]
    q.offer(reversed(items))  # arrival order does not matter: the ids are time-ordered
    first, after = q.page(after=None, limit=3)
    second, after2 = q.page(after=after, limit=3)
    third, end = q.page(after=after2, limit=3)
    assert first + second + third == items and end is None
    assert q.page(after=items[-1].inference_id, limit=3) == ([], None)


@pytest.mark.parametrize(("params", "fragment"), [
    ({"limit": "0"}, "from 1 to 1000"), ({"limit": "1001"}, "from 1 to 1000"), ({"limit": "ten"}, "whole number"),
    ({"limit": "-1"}, "whole number"), ({"after": "abc"}, "not an inference id"),
    ({"offset": "10"}, "unknown query parameter"),
])
def test_bad_page_parameters_are_a_422_that_says_what_to_send(params, fragment):
    with pytest.raises(InvalidRequest, match=fragment) as err:
        page_query(params)
    assert err.value.http_status == 422


# ---- the durable log, shared by replicas -------------------------------------------------------------

def test_replicas_merge_their_queues_and_a_label_on_any_replica_clears_the_item_everywhere(tmp_path):
    storage = Storage(str(tmp_path))
    a, b = book(storage, "gwa"), book(storage, "gwb")
    now = time.time()
    mine, theirs = [item(now - 30 + k) for k in range(3)], [item(now - 20 + k) for k in range(2)]
    a.queue(mine)
    b.queue(theirs)
    a.flush()
    b.flush()
    a.refresh(force=True)
    b.refresh(force=True)
    every = sorted(i.inference_id for i in mine + theirs)
    assert ids(a) == ids(b) == every
    # b takes the label of one of a's items (the feedback log is written before its 2xx, then the item clears)
    FeedbackLog(storage, MODEL, tag="gwb").write([mine[1].inference_id], [1])
    assert b.clear([mine[1].inference_id]) == 1
    a.refresh(force=True)
    assert ids(a) == ids(b) == [i for i in every if i != mine[1].inference_id]
    assert a.health()["size"] == 4 and a.health()["cleared"] == 0 and b.health()["cleared"] == 1
    # a replica started afresh (a gateway restart) rebuilds the same queue from storage
    fresh = book(storage, "gwc")
    fresh.refresh(force=True)
    assert ids(fresh) == ids(a)
    assert fresh.health()["oldest_age_s"] == pytest.approx(time.time() - mine[0].ts, abs=2)


def test_a_label_that_reaches_a_replica_before_the_item_still_clears_it(tmp_path):
    storage = Storage(str(tmp_path))
    a, b = book(storage, "gwa"), book(storage, "gwb")
    it = item(time.time() - 1)
    a.queue([it])  # a answered; its queued row waits in a's buffer for the next flush
    FeedbackLog(storage, MODEL, tag="gwb").write([it.inference_id], [0])
    assert b.clear([it.inference_id]) == 0  # b took the label before it ever saw the item
    b.refresh(force=True)
    a.flush()
    b.refresh(force=True)  # now the queued row is on storage: the label already cleared it
    a.refresh(force=True)
    assert ids(a) == ids(b) == []


def test_an_item_labelled_before_its_flush_is_never_written(tmp_path):
    storage = Storage(str(tmp_path))
    a = book(storage, "gwa")
    it = item(time.time())
    a.queue([it])
    assert a.clear([it.inference_id]) == 1
    a.flush()
    assert storage.list_files(review_prefix(MODEL), suffix=".parquet") == []


def test_a_full_queue_drops_the_same_oldest_items_on_every_replica_and_after_a_restart(tmp_path):
    storage = Storage(str(tmp_path))
    a = book(storage, "gwa", max_items=3)
    now = time.time()
    items = [item(now - 50 + k) for k in range(5)]
    a.queue(items[:3])
    a.flush()  # the first three are on storage; the next two push the two oldest out
    a.queue(items[3:])
    a.flush()
    assert ids(a) == [i.inference_id for i in items[2:]] and a.health()["dropped"] == 2
    b = book(storage, "gwb", max_items=3)
    b.refresh(force=True)
    assert ids(b) == ids(a) and b.health()["dropped"] == 0  # read as dropped: a counted them


def test_pages_carry_each_answers_logged_inputs_and_members(tmp_path):
    storage = Storage(str(tmp_path))
    predlog = PredictionLog(storage, MODEL, tag="gwa")
    a = book(storage, "gwa")
    it = item(time.time())
    predlog.append([{"inference_id": it.inference_id, "ts": it.ts, "model": MODEL, "model_version": it.model_version,
                     "features": json.dumps([0.25, 3]), "member_outputs": it.member_outputs, "prediction": "1",
                     "probabilities": list(it.probabilities), "degraded": False}])
    predlog.flush()
    a.queue([it])
    a.flush()
    page = a.page(after=None, limit=10)
    assert page["size"] == 1 and page["next_after"] is None and page["threshold"] == 0.7
    got = page["items"][0]
    assert got["instance"] == {"f0": 0.25, "f1": 3} and got["prediction"] == 1
    assert got["top_probability"] == 0.55 and got["members"] == {"a": {"probabilities": [0.4, 0.6]}}


def test_compaction_keeps_only_what_still_waits_and_loses_nothing(tmp_path):
    storage = Storage(str(tmp_path))
    now = time.time()
    old = now - 3 * 3600  # an hour no replica can still queue into
    a, b = book(storage, "gwa", clock=lambda: now), book(storage, "gwb", clock=lambda: now)
    items = [item(old + k) for k in range(6)]
    a.queue(items[:3])
    b.queue(items[3:])
    a.flush()
    b.flush()
    a.refresh(force=True)
    FeedbackLog(storage, MODEL, tag="gwa").write([items[0].inference_id, items[4].inference_id], [1, 0])
    a.clear([items[0].inference_id])
    a.refresh(force=True)  # learns b's label; compaction is due (first refresh since start ran it already)
    a._compacted_at = float("-inf")
    a.refresh(force=True)
    parts = storage.list_files(review_prefix(MODEL), suffix=".parquet")
    assert len(parts) == 1 and "-compact-" in parts[0]
    waiting = [i.inference_id for i in items if i not in (items[0], items[4])]
    assert storage.read_parquet(parts[0]).column("inference_id").to_pylist() == waiting
    for who in (b, book(storage, "gwc", clock=lambda: now)):  # b read the old parts before; a fresh replica none
        who.refresh(force=True)
        assert ids(who) == waiting


def test_a_review_log_that_cannot_be_written_keeps_its_rows_for_the_next_flush(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path))
    a = book(storage, "gwa")
    it = item(time.time())
    write = storage.write_parquet

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "write_parquet", full)
    a.queue([it])  # answered and queued all the same
    assert a.flush() == 0 and ids(a) == [it.inference_id]
    monkeypatch.setattr(storage, "write_parquet", write)
    assert a.flush() == 1
    fresh = book(storage, "gwb")
    fresh.refresh(force=True)
    assert ids(fresh) == [it.inference_id]
