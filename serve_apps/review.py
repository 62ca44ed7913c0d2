"""The review queue: answers the ensemble was unsure of, waiting for a person's label.

With ``review.threshold`` set, an answer whose top-class probability is below it is
still answered (flagged ``"review": true``) and queued; ``GET /v1/models/<model>/review``
lists the queue oldest first, and a reviewer's label sent through the ordinary
``:feedback`` route clears the item (and counts like any label).

Design, and why:

- **Labels are the "cleared" records.** The feedback log is already durable (written
  before its 2xx), shared by every gateway replica and never filtered, so an item is
  cleared once its answer has a label there: no second record to write, and a label
  taken by any replica clears the item for all of them.
- **The queue's own log holds only what feedback cannot say**: ``queued`` rows (id,
  time, version, the ensemble's and each member's answer) and ``dropped`` rows (an
  item evicted because the queue was full), under ``logs/<model>/review/hour=H/`` in
  the hour of the *answer*, so one hour folder says everything about its items. The
  inputs are not copied: a page's inputs are read from the prediction log by id (a
  replica writes its queued rows right after its prediction log, so an item on
  storage finds its answer there).
- **Every replica merges the others' from storage** (new parts, every ``refresh_s``,
  and before answering a GET), so each holds the whole queue, bounded by
  ``max_items``. Consistency: a replica sees another's items within one log flush and
  one refresh; a label within one refresh; two replicas that drop for room pick the
  same (oldest) item, so a drop is agreed, only counted twice.
- **Bounded**: at most ``max_items`` items wait; when full the oldest is dropped
  (:class:`ReviewQueue`) — newer answers say more about the model as it is now, and
  queueing never fails or slows an answer. A closed hour folder (no replica can still
  queue into it) is **compacted** by whichever replica sees resolved rows in it: the
  rows still waiting are written to one part first, then only the parts it read are
  deleted; readers dedupe on the id, so two replicas compacting at once lose nothing.
  The log therefore holds about the waiting items and the last hour's.
- **Durable like the prediction log**: queued rows are buffered and written each log
  flush, so a replica SIGKILLed loses at most its last flush of queued items (their
  answers were given and logged the same way); a restarted replica rebuilds the queue
  from storage.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pyarrow as pa

from raymedic import metrics
from raymedic.config import ReviewConfig
from raymedic.errors import InvalidRequest
from raymedic.keys import feedback_prefix, predictions_prefix, review_prefix
from raymedic.logs import get_logger
from raymedic.storage import Storage
from serve_apps.predlog import (
    CLOSED_AFTER_S,
    HourParts,
    HourPartsNotWritten,
    hour_of,
    hours_since,
    inference_time,
    part_name,
    write_hour_parts,
)

__all__ = ["MAX_PAGE", "ReviewBook", "ReviewItem", "ReviewQueue", "RowKind", "flag_unsure", "page_query"]

log = get_logger(__name__)

MAX_PAGE = 1000
"""Most items one GET returns (``?limit=``): a page is read with its inputs from the prediction log."""
DEFAULT_PAGE = 100
LATE_LABEL_S = 600.0
"""Labels of answers younger than this are remembered even when their item is not known here yet: another
replica's queued row reaches storage up to a log flush after its answer, and its label may come first."""
COMPACT_EVERY_S = 60.0
"""How often a replica looks for closed hour folders of the review log with resolved rows to compact."""
_RESOLVED_CAPACITY = 200_000


class RowKind(str, Enum):
    """What one row of the review log records."""

    QUEUED = "queued"
    DROPPED = "dropped"


REVIEW_SCHEMA = pa.schema([
    ("inference_id", pa.string()),
    ("kind", pa.string()),             # RowKind
    ("ts", pa.float64()),              # when the answer was given (its hour names the folder)
    ("recorded_at", pa.float64()),
    ("model_version", pa.string()),
    ("prediction", pa.string()),       # JSON label
    ("probabilities", pa.list_(pa.float64())),
    ("member_outputs", pa.string()),   # JSON, as in the prediction log
])


def flag_unsure(probabilities: np.ndarray, threshold: float | None) -> list[bool]:
    """Which answers go to review: top-class probability below ``threshold`` (None: none).

    >>> flag_unsure(np.array([[0.55, 0.45], [0.1, 0.9], [0.3, 0.7]]), 0.7)
    [True, False, False]
    >>> flag_unsure(np.array([[0.5, 0.5]]), None)
    [False]
    """
    if threshold is None:
        return [False] * len(probabilities)
    return [bool(p < threshold) for p in np.asarray(probabilities).max(axis=1)]


@dataclass(frozen=True)
class ReviewItem:
    """One answer waiting for review (JSON fields kept as the log holds them: parsed only for a page).

    Attributes:
        inference_id: the answer's id (time-ordered: sorting by it is oldest first).
        ts: when it was answered (Unix s).
        model_version: the versions that answered.
        prediction: the label answered, as JSON.
        probabilities: the ensemble's probabilities.
        member_outputs: each member's answer, as JSON (the prediction log's ``member_outputs``).
    """

    inference_id: str
    ts: float
    model_version: str
    prediction: str
    probabilities: tuple[float, ...]
    member_outputs: str

    def row(self, *, now: float) -> dict[str, Any]:
        """Its ``queued`` row of the review log."""
        return {"inference_id": self.inference_id, "kind": RowKind.QUEUED.value, "ts": self.ts, "recorded_at": now,
                "model_version": self.model_version, "prediction": self.prediction,
                "probabilities": list(self.probabilities), "member_outputs": self.member_outputs}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ReviewItem:
        """Back from a ``queued`` row."""
        return cls(inference_id=row["inference_id"], ts=float(row["ts"]), model_version=row["model_version"] or "",
                   prediction=row["prediction"] or "null", probabilities=tuple(row["probabilities"] or ()),
                   member_outputs=row["member_outputs"] or "{}")


def drop_row(item: ReviewItem, *, now: float) -> dict[str, Any]:
    """The ``dropped`` row of an item evicted for room (in its answer's hour, like its queued row)."""
    return {"inference_id": item.inference_id, "kind": RowKind.DROPPED.value, "ts": item.ts, "recorded_at": now,
            "model_version": None, "prediction": None, "probabilities": None, "member_outputs": None}


class ReviewQueue:
    """The waiting items, oldest first, at most ``max_items`` (pure: no storage, no clock).

    An item leaves by being resolved — labelled, or dropped for room — and a resolved id is
    remembered (bounded), so the same queued row read again (another replica's part, a
    compaction's) never brings it back.

    >>> q = ReviewQueue(max_items=2)
    >>> item = lambda i: ReviewItem(f"{i:032x}", float(i), "v1", "1", (0.4, 0.6), "{}")
    >>> added, dropped = q.offer([item(1), item(2), item(3)])
    >>> [len(added), [d.inference_id[-1] for d in dropped], len(q)]
    [3, ['1'], 2]
    >>> q.resolve([item(2).inference_id]) == [item(2).inference_id], q.offer([item(1), item(2)])
    (True, ([], []))

    Args:
        max_items: most items waiting; past it the oldest is dropped.
        resolved_capacity: most resolved ids remembered.
    """

    def __init__(self, *, max_items: int, resolved_capacity: int = _RESOLVED_CAPACITY) -> None:
        if max_items < 1:
            raise ValueError(f"max_items ({max_items}) must be at least 1")
        self._max = max_items
        self._items: dict[str, ReviewItem] = {}
        self._order: list[str] = []  # the ids of _items, sorted: oldest first
        self._resolved: OrderedDict[str, None] = OrderedDict()
        self._resolved_capacity = resolved_capacity

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, inference_id: object) -> bool:
        return inference_id in self._items

    def oldest(self) -> ReviewItem | None:
        """The item waiting longest, or None."""
        return self._items[self._order[0]] if self._order else None

    def is_resolved(self, inference_id: str) -> bool:
        """Whether the id was labelled or dropped (as far as the bounded memory of resolved ids goes)."""
        return inference_id in self._resolved

    def _mark(self, inference_id: str) -> None:
        self._resolved[inference_id] = None
        self._resolved.move_to_end(inference_id)
        while len(self._resolved) > self._resolved_capacity:
            self._resolved.popitem(last=False)

    def _remove(self, inference_id: str) -> ReviewItem:
        item = self._items.pop(inference_id)
        k = bisect.bisect_left(self._order, inference_id)
        del self._order[k]
        return item

    def offer(self, items: Iterable[ReviewItem]) -> tuple[list[ReviewItem], list[ReviewItem]]:
        """Queue the items not waiting or resolved already; returns (those queued, those dropped for room:
        the oldest waiting, possibly one just offered)."""
        added: list[ReviewItem] = []
        for item in items:
            i = item.inference_id
            if i in self._items or i in self._resolved:
                continue
            self._items[i] = item
            if not self._order or i > self._order[-1]:
                self._order.append(i)  # the usual case: answers arrive in time order
            else:
                bisect.insort(self._order, i)
            added.append(item)
        dropped = []
        while len(self._items) > self._max:
            oldest = self._order[0]
            self._mark(oldest)
            dropped.append(self._remove(oldest))
        return added, dropped

    def resolve(self, ids: Iterable[str]) -> list[str]:
        """These ids are labelled (or dropped elsewhere): remove them; returns those that were waiting."""
        out = []
        for i in ids:
            if i in self._items:
                self._remove(i)
                out.append(i)
            self._mark(i)
        return out

    def page(self, *, after: str | None, limit: int) -> tuple[list[ReviewItem], str | None]:
        """Up to ``limit`` items, oldest first, after the id ``after``; and the ``after`` of the next page
        (None when this one reaches the end)."""
        start = 0 if after is None else bisect.bisect_right(self._order, after)
        ids = self._order[start:start + limit]
        more = start + limit < len(self._order)
        return [self._items[i] for i in ids], (ids[-1] if more and ids else None)


def page_query(params: Mapping[str, str]) -> tuple[str | None, int]:
    """``?limit=&after=`` of ``GET .../review`` checked: (after, limit), or a 422 naming the fix.

    >>> page_query({}), page_query({"limit": "5", "after": "0" * 32})
    ((None, 100), ('00000000000000000000000000000000', 5))
    """
    unknown = sorted(set(params) - {"limit", "after"})
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s) {unknown}: the review queue pages with ?limit=N (1-"
                             f"{MAX_PAGE}) and ?after=<the next_after of the previous page>")
    raw = params.get("limit")
    limit = DEFAULT_PAGE
    if raw is not None:
        if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_PAGE:
            raise InvalidRequest(f"limit {raw[:40]!r} is not a whole number from 1 to {MAX_PAGE}: send e.g. "
                                 f"?limit={DEFAULT_PAGE}")
        limit = int(raw)
    after = params.get("after")
    if after is not None and inference_time(after) is None:
        raise InvalidRequest(f"after {after[:40]!r} is not an inference id (32 hex digits): send the previous "
                             "page's next_after, or leave it out for the first page")
    return after, limit


class ReviewBook:
    """One model's review queue in one gateway replica: what it queues, what the others queued, the labels.

    The event loop queues (:meth:`queue`) and clears (:meth:`clear`); worker threads write
    (:meth:`flush`), read the others' rows and labels (:meth:`refresh`) and page (:meth:`page`).
    ``_lock`` guards the in-memory state; ``_io`` lets one refresh run at a time.

    Args:
        storage: the service's storage.
        model: whose queue.
        settings: ``review`` of the config.
        tag: this gateway replica's id (names its parts).
        feature_names: the schema's features, in order (a page's inputs are keyed by them).
        clock: wall-clock time.
    """

    def __init__(self, storage: Storage, model: str, *, settings: ReviewConfig, tag: str,
                 feature_names: Sequence[str], clock: Callable[[], float] = time.time) -> None:
        self.enabled = settings.threshold is not None
        self._settings = settings
        self._storage = storage
        self._model = model
        self._tag = tag
        self._features = list(feature_names)
        self._clock = clock
        self._prefix = review_prefix(model)
        self._queue = ReviewQueue(max_items=settings.max_items)
        self._labels = HourParts(storage, feedback_prefix(model), ["inference_id"])
        self._rows: list[dict[str, Any]] = []  # to write at the next flush
        self._read: set[str] = set()           # review parts read (or written) here
        self._stored: dict[str, set[str]] = {}  # hour folder → ids its rows name (what compaction may resolve)
        self._lock = threading.Lock()
        self._io = threading.Lock()
        self._refreshed_at = float("-inf")
        self._compacted_at = float("-inf")
        self._writable = True
        self._exported_at = float("-inf")
        self.queued = self.cleared = self.dropped = 0  # this replica's, since it started

    # ---- the event loop's side ------------------------------------------------------------

    def flags(self, probabilities: np.ndarray) -> list[bool]:
        """Which answers of a batch go to review (:func:`flag_unsure` at ``review.threshold``)."""
        return flag_unsure(probabilities, self._settings.threshold)

    def queue(self, items: Sequence[ReviewItem]) -> None:
        """Queue this replica's unsure answers (written at the next flush); drops for room are recorded."""
        if not items:
            return
        now = self._clock()
        with self._lock:
            added, dropped = self._queue.offer(items)
            self._rows.extend(item.row(now=now) for item in added)
            self._note_dropped(dropped, now)
            self.queued += len(added)
        metrics.inc("raymedic_review_queued_total", len(added), model=self._model)
        if now - self._exported_at >= 1.0:  # the gauges, at most once a second from the request path
            self._export(now)

    def _note_dropped(self, dropped: list[ReviewItem], now: float) -> None:
        """Record drops this replica decided (``_lock`` held): a queued row not written yet is just not written."""
        if not dropped:
            return
        gone = {d.inference_id for d in dropped}
        buffered = {r["inference_id"] for r in self._rows if r["kind"] == RowKind.QUEUED.value}
        self._rows = [r for r in self._rows if r["inference_id"] not in gone]
        self._rows.extend(drop_row(d, now=now) for d in dropped if d.inference_id not in buffered)
        self.dropped += len(dropped)
        metrics.inc("raymedic_review_dropped_total", len(dropped), model=self._model)

    def clear(self, inference_ids: Sequence[str]) -> int:
        """These answers were just labelled (durably) here: their items are cleared; returns how many were
        waiting. Other replicas learn it from the feedback log."""
        with self._lock:
            cleared = self._queue.resolve(inference_ids)
            if cleared:  # a queued row not written yet need never be
                gone = set(cleared)
                self._rows = [r for r in self._rows if r["inference_id"] not in gone]
            self.cleared += len(cleared)
        metrics.inc("raymedic_review_cleared_total", len(cleared), model=self._model)
        return len(cleared)

    def _export(self, now: float) -> None:
        self._exported_at = now
        with self._lock:
            size, oldest = len(self._queue), self._queue.oldest()
        metrics.set_gauge("raymedic_review_queue_size", size, model=self._model, replica=self._tag)
        metrics.set_gauge("raymedic_review_oldest_age_seconds", max(0.0, now - oldest.ts) if oldest else 0.0,
                          model=self._model, replica=self._tag)

    def health(self) -> dict[str, Any]:
        """The queue as this replica sees it, for ``GET /v1/status``."""
        now = self._clock()
        with self._lock:
            size, oldest = len(self._queue), self._queue.oldest()
        return {"enabled": self.enabled, "threshold": self._settings.threshold, "max_items": self._settings.max_items,
                "size": size, "oldest_age_s": round(now - oldest.ts, 3) if oldest else None,
                "replica": self._tag, "queued": self.queued, "cleared": self.cleared, "dropped": self.dropped}

    # ---- worker threads -------------------------------------------------------------------

    def flush(self) -> int:
        """Write the rows buffered since the last flush (after the prediction log's, so a queued item on
        storage finds its answer there); returns how many. A failed write keeps them for the next flush."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        def stored(key: str, part: list[dict[str, Any]]) -> None:
            with self._lock:
                self._read.add(key)
                self._stored.setdefault(hour_of(part[0]["ts"]), set()).update(r["inference_id"] for r in part)

        try:
            written = write_hour_parts(self._storage, self._prefix, self._tag, rows, REVIEW_SCHEMA, durable=False,
                                       on_part=stored)
        except HourPartsNotWritten as failed:
            written = failed.written
            if self._writable:  # one traceback per outage (a full disk), not one per flush period
                log.exception("review log write of %s failed; keeping its rows for the next flush (answers are "
                              "still given and flagged)", self._model)
            self._writable = False
            with self._lock:
                # Bounded like the queue itself (a disk that stays full): the oldest rows go first.
                self._rows[:0] = failed.left
                del self._rows[:max(0, len(self._rows) - 2 * self._settings.max_items)]
        else:
            self._writable = True
        return written

    def refresh(self, *, force: bool = False) -> None:
        """Learn what other replicas queued and dropped and which items were labelled; at most once per
        ``refresh_s`` unless ``force``; compact closed hour folders now and then."""
        now = self._clock()
        if not force and now - self._refreshed_at < self._settings.refresh_s:
            return
        with self._io:
            self._refreshed_at = now
            listed = self._storage.list_files(self._prefix, suffix=".parquet")
            with self._lock:
                new = [k for k in listed if k not in self._read]
                oldest = self._queue.oldest()
            queued, drops, stored = self._read_parts(new)
            # Labels come after their answers: the hours since the oldest item (known or new) hold every label
            # that clears one. They are applied before the new items are offered, so the bound never drops
            # an item for room that a label had already cleared.
            starts = [now - LATE_LABEL_S, *([oldest.ts] if oldest else []), *(q.ts for q in queued[:1])]
            since = min(starts)
            labelled = [i for table in self._labels.read_new(hours_since(since, now))
                        for i in table.column("inference_id").to_pylist() if i is not None]
            fresh = {q.inference_id for q in queued}
            with self._lock:
                self._read = (self._read & set(listed)) | set(new)
                folders = {_folder_hour(k) for k in listed}
                self._stored = {h: ids for h, ids in self._stored.items() if h in folders}
                for hour, ids in stored.items():
                    self._stored.setdefault(hour, set()).update(ids)
                self._queue.resolve(drops)
                self._queue.resolve(i for i in labelled if i in self._queue or i in fresh
                                    or (inference_time(i) or 0.0) > now - LATE_LABEL_S)
                _, dropped = self._queue.offer(queued)
                self._note_dropped(dropped, now)
            if now - self._compacted_at >= COMPACT_EVERY_S:
                self._compacted_at = now
                self.compact(listed, now=now)
        self._export(now)

    def _read_parts(self, keys: Sequence[str]) -> tuple[list[ReviewItem], list[str], dict[str, set[str]]]:
        """The rows of these review parts: (queued items oldest first, dropped ids, ids per hour folder)."""
        queued: list[ReviewItem] = []
        drops: list[str] = []
        stored: dict[str, set[str]] = {}
        for key, table in self._storage.read_parquet_parts(keys):
            ids = stored.setdefault(_folder_hour(key), set())
            for r in table.to_pylist():
                i = r.get("inference_id")
                if i is None:
                    continue
                ids.add(i)
                if r.get("kind") == RowKind.QUEUED.value:
                    queued.append(ReviewItem.from_row(r))
                elif r.get("kind") == RowKind.DROPPED.value:
                    drops.append(i)
        queued.sort(key=lambda item: item.inference_id)
        return queued, drops, stored

    def compact(self, listed: Sequence[str], *, now: float) -> int:
        """Rewrite each closed hour folder that holds resolved rows (or several parts) as one part of the
        rows still waiting; returns how many folders changed. Only parts read here are deleted, after the
        merged part is written, so a concurrent compaction or a drop row written meanwhile is never lost."""
        closed_before = hour_of(now - 3600 - CLOSED_AFTER_S)
        folders: dict[str, list[str]] = {}
        for key in listed:
            folders.setdefault(_folder_hour(key), []).append(key)
        changed = 0
        for hour, keys in sorted(folders.items()):
            if hour > closed_before:
                continue
            with self._lock:
                resolved = any(self._queue.is_resolved(i) for i in self._stored.get(hour, ()))
            if len(keys) < 2 and not resolved:
                continue
            try:
                changed += self._compact_folder(hour, keys, now=now)
            except Exception:
                log.exception("compaction of review folder %s of %s failed; it is left as it was", hour, self._model)
        return changed

    def _compact_folder(self, hour: str, keys: list[str], *, now: float) -> int:
        tables = [t for _, t in self._storage.read_parquet_parts(keys)]
        if len(tables) != len(keys):  # a part vanished (another replica compacting) or is unreadable: later
            return 0
        rows = [r for t in tables for r in t.to_pylist()]
        dropped = {r["inference_id"] for r in rows if r.get("kind") == RowKind.DROPPED.value}
        keep: dict[str, dict[str, Any]] = {}
        with self._lock:
            for r in rows:
                i = r.get("inference_id")
                if (r.get("kind") == RowKind.QUEUED.value and i is not None and i not in dropped
                        and not self._queue.is_resolved(i)):
                    keep.setdefault(i, r)
        if len(keys) == 1 and len(keep) == len(rows):
            with self._lock:
                self._stored[hour] = set(keep)  # what another replica's compaction left: nothing to do here
            return 0
        folder = f"{self._prefix}/hour={hour}"
        merged = None
        if keep:
            merged = f"{folder}/{part_name('compact')}"
            self._storage.write_parquet(merged, pa.Table.from_pylist(list(keep.values()), schema=REVIEW_SCHEMA))
        for key in keys:
            self._storage.delete(key)
        with self._lock:
            self._read.difference_update(keys)
            if merged is not None:
                self._read.add(merged)
            self._stored[hour] = set(keep)
        log.info("review log %s hour %s compacted: %d rows in %d parts → %d rows", self._model, hour, len(rows),
                 len(keys), len(keep))
        return 1

    def page(self, *, after: str | None, limit: int) -> dict[str, Any]:
        """One page of the queue, oldest first, each item with its inputs from the prediction log
        (``instance`` None while its answer is not written yet)."""
        now = self._clock()
        with self._lock:
            items, next_after = self._queue.page(after=after, limit=limit)
            size, oldest = len(self._queue), self._queue.oldest()
        inputs = self._instances([i.inference_id for i in items])
        return {
            "model": self._model, "threshold": self._settings.threshold, "max_items": self._settings.max_items,
            "size": size, "oldest_age_s": round(now - oldest.ts, 3) if oldest else None,
            "items": [{"inference_id": i.inference_id, "ts": i.ts, "age_s": round(now - i.ts, 3),
                       "model_version": i.model_version, "prediction": json.loads(i.prediction),
                       "probabilities": list(i.probabilities),
                       "top_probability": max(i.probabilities) if i.probabilities else None,
                       "members": json.loads(i.member_outputs), "instance": inputs.get(i.inference_id)}
                      for i in items],
            "next_after": next_after,
        }

    def _instances(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The logged inputs of ``ids``, keyed by feature name (read from the prediction log's hours)."""
        wanted = set(ids)
        hours = sorted({hour_of(t) for t in (inference_time(i) for i in ids) if t is not None})
        out: dict[str, dict[str, Any]] = {}
        for hour in hours:
            keys = self._storage.list_files(f"{predictions_prefix(self._model)}/hour={hour}", suffix=".parquet")
            for _, table in self._storage.read_parquet_parts(keys, columns=["inference_id", "features"]):
                for i, feats in zip(table.column("inference_id").to_pylist(), table.column("features").to_pylist()):
                    if i in wanted and feats is not None and i not in out:
                        values = json.loads(feats)
                        out[i] = dict(zip(self._features, values)) if isinstance(values, list) else values
        return out


def _folder_hour(key: str) -> str:
    """``YYYYMMDDHH`` of a part key's ``hour=`` folder.

    >>> _folder_hour("logs/m/review/hour=2026010100/part-1-x-0.parquet")
    '2026010100'
    """
    folder = key.rsplit("/", 2)[-2]
    return folder.removeprefix("hour=")
