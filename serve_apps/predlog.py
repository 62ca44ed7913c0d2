"""Durable prediction and feedback logs (Parquet under ``storage_path``).

Layout: ``logs/<model>/{predictions,feedback}/hour=YYYYMMDDHH/part-*.parquet``.
Hour partitions keep lookups of an id cheap: inference ids are time-ordered, so an
id names the partition its prediction lives in.

Durability contract:
- feedback is written (and fsynced on local disks) *before* the 2xx is sent, so a
  label that was acknowledged is never lost;
- predictions are buffered and flushed every ``flush_s`` and on shutdown, because
  a write per request would cost more than the inference itself; a crash can lose
  at most the last ``flush_s`` of prediction records, never a client's answer.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa

from raymedic import metrics
from raymedic.keys import feedback_prefix, predictions_prefix
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = [
    "CLOSED_AFTER_S",
    "MAX_CLOCK_SKEW_S",
    "FeedbackLog",
    "HourParts",
    "HourPartsNotWritten",
    "KnownIds",
    "PredictionLog",
    "hour_of",
    "hours_since",
    "inference_time",
    "new_inference_id",
    "part_name",
    "part_writer",
    "rows_by_hour",
    "write_hour_parts",
]

log = get_logger(__name__)

_ID_LEN = 32


CLOSED_AFTER_S = 300.0
"""After its hour ended, how long until no gateway replica can still flush an answer of that hour into its
folder (a flush period, a slow write, a retried flush); compaction rewrites only ids already read."""
MAX_CLOCK_SKEW_S = 5.0
"""How far in the future an inference id's time may be (another node's clock) and still be one we issued."""


def new_inference_id(now: float | None = None) -> str:
    """A 32-hex id whose first 12 digits are the creation time in ms (sortable, partitionable)."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{secrets.token_hex(10)}"


def inference_time(inference_id: str) -> float | None:
    """Creation time (Unix s) encoded in an id, or None if it is not one of ours."""
    if len(inference_id) != _ID_LEN:
        return None
    try:
        int(inference_id, 16)
        return int(inference_id[:12], 16) / 1000.0
    except ValueError:
        return None


def hour_of(ts: float) -> str:
    """The ``YYYYMMDDHH`` (UTC) name of the hour folder that holds time ``ts``."""
    return time.strftime("%Y%m%d%H", time.gmtime(ts))


def hours_since(since: float, now: float) -> list[str]:
    """The ``YYYYMMDDHH`` name of every hour from the one holding ``since`` to the one holding ``now``.

    >>> hours_since(7200.0, 10799.0), len(hours_since(0.0, 86400.0))
    (['1970010102'], 25)
    """
    return [hour_of(t) for t in range(int(since // 3600) * 3600, int(now) + 1, 3600)]


def rows_by_hour(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Log rows grouped by the hour folder of their ``ts`` (each hour's rows are one part), in order.

    >>> {h: len(r) for h, r in rows_by_hour([{"ts": 0.0}, {"ts": 3600.0}, {"ts": 1.0}]).items()}
    {'1970010100': 2, '1970010101': 1}
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(hour_of(r["ts"]), []).append(r)
    return out


class HourPartsNotWritten(Exception):
    """:func:`write_hour_parts` stopped at a failed write (the cause): ``written`` rows are on storage, ``left``
    (the hours not written, in order) are for the caller to keep for its next flush."""

    def __init__(self, written: int, left: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(left)} rows not written")
        self.written, self.left = written, left


def write_hour_parts(storage: Storage, prefix: str, tag: str, rows: Iterable[dict[str, Any]], schema: pa.Schema, *,
                     durable: bool, on_part: Callable[[str, list[dict[str, Any]]], None] | None = None) -> int:
    """Write log rows as one new part per hour folder (``prefix/hour=H/<part>``); returns the rows written.
    ``on_part(key, rows)`` follows each part written.

    Raises:
        HourPartsNotWritten: a write failed (the storage error is its cause); hours already written stay written.
    """
    by_hour = rows_by_hour(rows)
    written = 0
    try:
        for hour, part in by_hour.items():
            key = f"{prefix}/hour={hour}/{part_name(tag)}"
            storage.write_parquet(key, pa.Table.from_pylist(part, schema=schema), durable=durable)
            written += len(part)
            if on_part is not None:
                on_part(key, part)
    except Exception as exc:
        raise HourPartsNotWritten(written, [r for part in by_hour.values() for r in part][written:]) from exc
    return written


def part_name(tag: str) -> str:
    """A new part's file name: its write time, its writer's tag (:func:`part_writer` reads it back), a random
    suffix so two writes never collide."""
    return f"part-{int(time.time() * 1000):013d}-{tag}-{secrets.token_hex(4)}.parquet"


def part_writer(key: str) -> str | None:
    """The tag (a gateway replica's id) of the writer of a log part, from its name; None for a name
    that is not a gateway's part (a compaction's merged file is tagged ``compact``).

    >>> part_writer("logs/m/feedback/hour=2026010100/part-1767225600000-x1ab2cd3-0f0f0f0f.parquet")
    'x1ab2cd3'
    >>> part_writer("logs/m/feedback/hour=2026010100/junk.parquet") is None
    True
    """
    name = key.rsplit("/", 1)[-1]
    head, suffix = "part-", ".parquet"
    if not (name.startswith(head) and name.endswith(suffix)):
        return None
    fields = name[len(head):-len(suffix)].split("-")
    return "-".join(fields[1:-1]) if len(fields) >= 3 else None


PREDICTION_SCHEMA = pa.schema([
    ("inference_id", pa.string()),
    ("ts", pa.float64()),
    ("model", pa.string()),
    ("model_version", pa.string()),
    ("features", pa.string()),        # JSON list in schema order
    ("member_outputs", pa.string()),  # JSON {member: {"probabilities": [...], "replica": id, "version": v}}
    ("prediction", pa.string()),      # JSON label
    ("probabilities", pa.list_(pa.float64())),
    ("degraded", pa.bool_()),
])

FEEDBACK_SCHEMA = pa.schema([
    ("inference_id", pa.string()),
    ("label", pa.string()),           # JSON label, in the schema's own form
    ("received_at", pa.float64()),
])


class PredictionLog:
    """Buffers prediction records and writes them as Parquet parts, one per flush.

    A write that fails (a full disk: ENOSPC, a read-only or vanished mount) never fails a
    request: the records stay buffered for the next flush, up to ``max_pending`` of them; past
    that the oldest are dropped and counted, so a disk that stays full costs a bounded amount
    of memory, and :meth:`health` (the gateway's ``/v1/status``) says the log is not writable
    and how many rows it lost.
    """

    def __init__(self, storage: Storage, model: str, *, tag: str, max_pending: int = 100_000) -> None:
        self._storage = storage
        self._model = model
        self._prefix = predictions_prefix(model)
        self._tag = tag
        self._max_pending = max_pending
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        # One flush at a time, and the ids a flush took but has not written yet: a label for an answer that a
        # periodic flush is still writing must wait for that write, or a SIGKILL right after the label's 2xx
        # leaves a label no answer ever joins (the answer was neither buffered nor on storage).
        self._flush_lock = threading.Lock()
        self._writing: set[str] = set()
        self.writable = True
        self.dropped_rows = 0
        self.failed_flushes = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def _bound(self) -> None:
        """Drop the oldest buffered rows past ``max_pending`` (the lock is held)."""
        extra = len(self._rows) - self._max_pending
        if extra > 0:
            del self._rows[:extra]
            self.dropped_rows += extra
            metrics.inc("raymedic_prediction_log_dropped_rows_total", extra, model=self._model, replica=self._tag)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Buffer records until the next flush (a write per request would cost more than the inference)."""
        with self._lock:
            self._rows.extend(rows)
            if len(self._rows) > self._max_pending:
                self._bound()

    def pending(self) -> int:
        """Records buffered and not yet written."""
        return len(self._rows)

    def holds(self, inference_ids: Iterable[str]) -> bool:
        """Whether a record of one of ``inference_ids`` is not written yet (buffered, or in a flush still
        writing it): :meth:`flush` then writes or waits for it."""
        wanted = set(inference_ids)
        with self._lock:
            return not wanted.isdisjoint(self._writing) or any(r.get("inference_id") in wanted for r in self._rows)

    def health(self) -> dict[str, Any]:
        """Whether the last flush could write, rows lost to a full buffer, and the last error."""
        return {"writable": self.writable, "pending_rows": len(self._rows), "dropped_rows": self.dropped_rows,
                "failed_flushes": self.failed_flushes, "last_error": self.last_error,
                "last_error_at": self.last_error_at}

    def flush(self, *, durable: bool = False) -> int:
        """Write buffered records; returns how many. Records stay buffered (bounded) if the write fails.
        ``durable``: fsync them (a label about to be acknowledged must find its answer after a crash).
        A flush in progress (another thread's) is waited for first: its rows are written when this returns."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
                self._writing = {r.get("inference_id") for r in rows}
            try:
                return self._write(rows, durable=durable)
            finally:
                with self._lock:
                    self._writing = set()

    def _write(self, rows: list[dict[str, Any]], *, durable: bool) -> int:
        if not rows:
            return 0
        try:
            written = write_hour_parts(self._storage, self._prefix, self._tag, rows, PREDICTION_SCHEMA,
                                       durable=durable)
        except HourPartsNotWritten as failed:
            exc, left, written = failed.__cause__, failed.left, failed.written
            self.failed_flushes += 1
            self.last_error, self.last_error_at = f"{type(exc).__name__}: {exc}"[:300], time.time()
            if self.writable:  # one traceback per outage, not one per flush period
                log.exception("prediction log flush failed; keeping up to %d records for the next flush "
                              "(requests are still answered)", self._max_pending)
            self.writable = False
            # Hours written before the failure are not rewritten; the rest go back in front, bounded.
            with self._lock:
                self._rows[:0] = left
                self._bound()
        else:
            if not self.writable:
                log.info("prediction log writable again after %d failed flushes", self.failed_flushes)
            self.writable = True
        metrics.set_gauge("raymedic_prediction_log_writable", 1.0 if self.writable else 0.0, model=self._model,
                          replica=self._tag)
        return written


class FeedbackLog:
    """Writes each accepted batch of labels durably before the request is acknowledged."""

    def __init__(self, storage: Storage, model: str, *, tag: str) -> None:
        self._storage = storage
        self._prefix = feedback_prefix(model)
        self._tag = tag

    def write(self, inference_ids: Sequence[str], labels: Sequence[Any]) -> None:
        """Write one batch of labels durably, before the request is acknowledged (an acknowledged label is
        never lost).
        """
        now = time.time()
        table = pa.Table.from_pylist(
            [{"inference_id": i, "label": json.dumps(label), "received_at": now}
             for i, label in zip(inference_ids, labels)],
            schema=FEEDBACK_SCHEMA,
        )
        self._storage.write_parquet(f"{self._prefix}/hour={hour_of(now)}/{part_name(self._tag)}", table,
                                    durable=True)


class HourParts:
    """The part files of a log's ``hour=`` folders that were not read yet, each read once.

    Every gateway replica learns what the others wrote (answers, labels) from the
    durable logs alone. An hour folder no replica can still write into (its hour
    ended :data:`CLOSED_AFTER_S` ago) is listed at most once, so ids naming many old
    hours (forged, or a day of labels) cost one listing per hour per replica, not one
    per request, and the names of its parts need not be kept (bounded memory).
    A part that cannot be read (torn, or not Parquet) is skipped with a warning.
    """

    def __init__(self, storage: Storage, prefix: str, columns: Sequence[str]) -> None:
        self._storage = storage
        self._prefix = prefix
        self._columns = list(columns)
        self._read: set[str] = set()
        self._closed: set[str] = set()
        self._lock = threading.Lock()  # scans run in worker threads: one at a time

    def read_new(self, hours: Iterable[str]) -> list[pa.Table]:
        """The tables of the parts of ``hours`` (``YYYYMMDDHH``) not read before."""
        with self._lock:
            closed_before = hour_of(time.time() - 3600 - CLOSED_AFTER_S)
            tables = []
            for hour in sorted(set(hours) - self._closed):
                closed = hour <= closed_before
                if closed:
                    self._closed.add(hour)
                folder = f"{self._prefix}/hour={hour}"
                if closed:
                    self._read = {k for k in self._read if not k.startswith(folder + "/")}
                new = [k for k in self._storage.list_files(folder, suffix=".parquet") if k not in self._read]
                if not closed:
                    # An unreadable part counts as read too: writes are whole or absent, so a visible part
                    # that does not read never will, and reading it again would warn on every lookup.
                    self._read.update(new)
                tables.extend(table for _, table in self._storage.read_parquet_parts(new, columns=self._columns))
            return tables


class KnownIds:
    """Which inference ids exist, across every gateway replica, and what the others answered.

    Ids this replica issued are remembered in memory; others are found in the
    flushed prediction log, reading only new part files of the hours the ids name.
    Those other replicas' answers (when, each member's output, the ensemble's) are
    kept too, bounded: feedback reaches whichever replica the load balancer picks,
    and a label joined only where its answer was given would lose every other one
    for the monitors, the weights and a challenger's trial.
    """

    def __init__(self, storage: Storage, model: str, *, capacity: int = 500_000,
                 answers_capacity: int = 50_000) -> None:
        self._storage = storage
        self._prefix = predictions_prefix(model)
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._answers: OrderedDict[str, tuple[float, str, list[float]]] = OrderedDict()
        self._answers_capacity = answers_capacity
        self._parts = HourParts(storage, self._prefix, ["inference_id", "ts", "member_outputs", "probabilities"])
        self._lock = threading.Lock()

    def answer(self, inference_id: str) -> tuple[float, dict[str, Any], list[float]] | None:
        """Another replica's logged answer: (when, ``member_outputs``, ensemble probabilities), or None."""
        with self._lock:
            got = self._answers.get(inference_id)
        if got is None:
            return None
        ts, outputs, ensemble = got
        return ts, json.loads(outputs), ensemble

    def _remember_answers(self, table: pa.Table) -> None:
        cols = [table.column(c).to_pylist() for c in ("inference_id", "ts", "member_outputs", "probabilities")]
        with self._lock:
            for i, ts, outputs, probs in zip(*cols):
                if i in self._ids or outputs is None:  # ours: the gateway keeps its own answers
                    continue
                self._answers[i] = (float(ts), outputs, list(probs or ()))
            while len(self._answers) > self._answers_capacity:
                self._answers.popitem(last=False)

    def add(self, ids: Iterable[str]) -> None:
        """Remember ids this replica issued, so feedback for them is accepted without reading the log."""
        with self._lock:
            for i in ids:
                self._ids[i] = None
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids among ``ids`` this replica does not know yet (memory only: cheap on the event loop);
        :meth:`unknown` then looks for them in the log."""
        with self._lock:
            return [i for i in ids if i not in self._ids]

    def _scan(self, hours: set[str]) -> None:
        for table in self._parts.read_new(hours):
            self._remember_answers(table)
            self.add(table.column("inference_id").to_pylist())

    def unknown(self, ids: Sequence[str]) -> list[str]:
        """The ids among ``ids`` that were never issued (as far as the durable log shows)."""
        missing = self.missing(ids)
        if not missing:
            return []
        hours = {hour_of(t) for t in (inference_time(i) for i in missing) if t is not None}
        if hours:
            self._scan(hours)
        return self.missing(missing)
