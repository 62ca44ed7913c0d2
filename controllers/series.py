"""A compact time series of what the controller saw, for post-mortem plots (``raymedic report``).

The audit says what was decided; a report also needs the picture around it: the
request rate, p50/p99 latency, failed and degraded answers, each member's weight,
live labelled accuracy beside the label-free estimate, and the drifting features'
distributions. The controller already sees all of it every period (the gateways'
telemetry batches, its weights, its performance report), so it keeps it here.

Two parts, kept apart so the aggregation unit-tests without storage or Ray:

- :class:`SeriesBuckets` (pure): folds gateway batches and the controller's own
  figures into fixed buckets of ``bucket_s`` seconds (5 s by default) and hands
  out the closed ones as plain rows;
  :func:`drift_distribution` turns a feature's training reference and its window
  into two histograms on shared bins (recorded when a drift alert opens).
- :class:`SeriesLog`: writes the rows under ``series/<model>/`` as one JSONL file
  per hour and writer, rewritten whole (atomic, private, durable through
  :class:`raymedic.storage.Storage`) at most every ``flush_s``: a crash loses at
  most one flush period, object stores need no append, and the file count stays
  24 a day. Files older than ``retention_h`` are deleted.

Bounded: a bucket row is a few hundred bytes; at 5 s buckets an hour file holds
at most 720 of them (about 0.25 MB with three members: 330 bytes a row), so the default
retention of 7 days keeps about 40 MB per model.

:func:`read_series` reads them back (no cluster needed: the report runs after
``raymedic down``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from raymedic.enums import StrEnum
from raymedic.keys import series_prefix
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = ["DRIFT_BINS", "RowKind", "SeriesBuckets", "SeriesLog", "drift_distribution", "read_series"]

log = get_logger(__name__)

DRIFT_BINS = 20
"""Bins of a numeric feature's before/after histograms: enough to see a shift, small in a record."""
MAX_DRIFT_ROWS_PER_HOUR = 200
"""Drift distributions kept per hour file (an alert opens once per feature; a bound all the same)."""
FAILED_OUTCOMES = ("error", "dead", "timeout")
"""Member call outcomes counted as member errors (a hedge is a slower replica, not a failure)."""


class RowKind(StrEnum):
    """What a row of the series holds."""

    BUCKET = "bucket"
    """The figures of one bucket of ``bucket_s`` seconds."""
    DRIFT = "drift"
    """A feature's training distribution against its window, when a drift alert opened."""


class _Bucket:
    """One bucket being filled (only :class:`SeriesBuckets` touches it)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.requests = 0
        self.degraded = 0
        self.failed = 0
        self.member_calls = 0
        self.member_errors = 0
        self.labels = 0
        self.correct = 0
        self.latency: dict[str, tuple[float | None, float | None, int]] = {}  # gateway → (p50, p99, requests)
        self.weights: dict[str, float] = {}
        self.window_accuracy: float | None = None
        self.estimate: float | None = None

    def row(self, bucket_s: float) -> dict[str, Any]:
        p50s = [(p50, n) for p50, _, n in self.latency.values() if p50 is not None]
        p99s = [p99 for _, p99, _ in self.latency.values() if p99 is not None]
        weight_sum = sum(n for _, n in p50s)
        p50 = (sum(p * n for p, n in p50s) / weight_sum if weight_sum else
               (sum(p for p, _ in p50s) / len(p50s) if p50s else None))
        return {"kind": RowKind.BUCKET.value, "ts": self.start, "bucket_s": bucket_s,
                "requests": self.requests, "degraded": self.degraded, "failed": self.failed,
                "member_calls": self.member_calls, "member_errors": self.member_errors,
                "p50_ms": None if p50 is None else round(p50, 2), "p99_ms": max(p99s) if p99s else None,
                "labels": self.labels, "correct": self.correct,
                "weights": {m: round(float(w), 4) for m, w in self.weights.items()},
                "window_accuracy": self.window_accuracy, "estimate": self.estimate}


class SeriesBuckets:
    """Folds what the controller sees into buckets of ``bucket_s`` seconds (pure: plain data and ``now``).

    Gateway batches (:meth:`add_batch`) add counts: requests answered, degraded and failed (the
    gateway's ``requests`` counters; a gateway without them counts its answers' confidences), member
    calls and their failures, labelled answers and how many the ensemble got right; their latency
    reports (each gateway's p50/p99 over its last 10 s) are kept per gateway, the latest wins, and a
    bucket shows the request-weighted p50 and the worst p99. The controller's period (:meth:`sample`)
    sets the weights and accuracies the bucket ends with. Only the caller's thread touches it.

    >>> b = SeriesBuckets(bucket_s=5.0)
    >>> b.add_batch("g1", {"requests": {"answered": 8, "degraded": 1, "failed": 0},
    ...                    "latency": {"requests": 8, "p50_ms": 4.0, "p99_ms": 9.0},
    ...                    "replicas": {"mlp/r1": {"ok": 7, "error": 1, "dead": 0, "timeout": 0, "hedged": 0}},
    ...                    "labels": [{"labelled": {"y": 1, "p": {"ensemble": [0.2, 0.8]}}}]}, now=101.0)
    >>> b.sample(now=102.0, weights={"mlp": 1.0}, window_accuracy=0.9, estimate=0.85)
    >>> b.drain(now=104.0)
    []
    >>> row = b.drain(now=105.0)[0]
    >>> row["ts"], row["requests"], row["degraded"], row["member_errors"], row["correct"], row["p99_ms"]
    (100.0, 8, 1, 1, 1, 9.0)
    """

    def __init__(self, bucket_s: float = 5.0) -> None:
        if not bucket_s > 0:
            raise ValueError(f"bucket_s ({bucket_s}) must be > 0")
        self.bucket_s = float(bucket_s)
        self._open: dict[float, _Bucket] = {}
        self._last: _Bucket | None = None  # the figures a bucket with no sample of its own carries over

    def _bucket(self, now: float) -> _Bucket:
        start = math.floor(now / self.bucket_s) * self.bucket_s
        b = self._open.get(start)
        if b is None:
            b = self._open[start] = _Bucket(start)
            if self._last is not None:
                b.weights = dict(self._last.weights)
                b.window_accuracy, b.estimate = self._last.window_accuracy, self._last.estimate
        return b

    def add_batch(self, gateway: str, batch: Mapping[str, Any], *, now: float) -> None:
        """One gateway's telemetry batch, taken at ``now``."""
        b = self._bucket(now)
        req = batch.get("requests")
        if isinstance(req, Mapping):
            b.requests += int(req.get("answered", 0))
            b.degraded += int(req.get("degraded", 0))
            b.failed += int(req.get("failed", 0))
        else:  # a gateway from before the counters: its answers' confidences (bounded per batch)
            b.requests += len(batch.get("confidence") or ())
        for slot in (batch.get("replicas") or {}).values():
            errors = sum(int(slot.get(o, 0)) for o in FAILED_OUTCOMES)
            b.member_errors += errors
            b.member_calls += errors + int(slot.get("ok", 0))
        for rec in batch.get("labels") or ():
            lab = rec.get("labelled") or {}
            ens = (lab.get("p") or {}).get("ensemble")
            if ens is None or lab.get("y") is None:
                continue
            b.labels += 1
            b.correct += int(int(np.argmax(ens)) == int(lab["y"]))
        lat = batch.get("latency")
        if isinstance(lat, Mapping) and lat.get("requests"):
            b.latency[gateway] = (lat.get("p50_ms"), lat.get("p99_ms"), int(lat["requests"]))

    def sample(self, *, now: float, weights: Mapping[str, float] | None = None,
               window_accuracy: float | None = None, estimate: float | None = None) -> None:
        """The controller's figures at ``now`` (once per period): the bucket ends with the latest."""
        b = self._bucket(now)
        if weights is not None:
            b.weights = {str(m): float(w) for m, w in weights.items()}
        if window_accuracy is not None:
            b.window_accuracy = round(float(window_accuracy), 4)
        if estimate is not None:
            b.estimate = round(float(estimate), 4)
        self._last = b

    def drain(self, *, now: float) -> list[dict[str, Any]]:
        """The rows of every bucket that ended by ``now``, oldest first; they are forgotten here."""
        closed = sorted(s for s in self._open if s + self.bucket_s <= now)
        return [self._open.pop(s).row(self.bucket_s) for s in closed]


def drift_distribution(*, feature: str, at: float, reference: Sequence[float] | None = None,
                       window: Sequence[float] | None = None, levels: Sequence[str] | None = None,
                       reference_probabilities: Sequence[float] | None = None,
                       window_counts: Sequence[float] | None = None, bins: int = DRIFT_BINS,
                       evidence: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """A drift row: a feature's training distribution and its window's, as shares on the same bins.

    Numeric: ``reference`` (the training sample) and ``window`` values on ``bins`` equal bins spanning
    both. Categorical: ``levels`` (plus ``"(unseen)"``) with the reference's probabilities and the
    window's counts. None when there is nothing to compare.

    >>> d = drift_distribution(feature="f0", at=5.0, reference=[0, 1, 2, 3], window=[2, 3, 3, 3], bins=3)
    >>> d["edges"], d["reference"], d["window"]
    ([0.0, 1.0, 2.0, 3.0], [0.25, 0.25, 0.5], [0.0, 0.0, 1.0])
    """
    row: dict[str, Any] = {"kind": RowKind.DRIFT.value, "ts": at, "feature": feature,
                           "evidence": dict(evidence or {})}
    if reference is not None and window is not None:
        ref = np.asarray(reference, dtype=float)
        win = np.asarray(window, dtype=float)
        ref, win = ref[np.isfinite(ref)], win[np.isfinite(win)]
        if not len(ref) or not len(win):
            return None
        lo, hi = float(min(ref.min(), win.min())), float(max(ref.max(), win.max()))
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, bins + 1)
        r, _ = np.histogram(ref, bins=edges)
        w, _ = np.histogram(win, bins=edges)
        return {**row, "numeric": True, "edges": [round(float(e), 6) for e in edges],
                "reference": [round(float(x), 4) for x in r / r.sum()],
                "window": [round(float(x), 4) for x in w / w.sum()],
                "reference_n": len(ref), "window_n": len(win)}
    if levels is not None and reference_probabilities is not None and window_counts is not None:
        counts = np.asarray(window_counts, dtype=float)
        if counts.sum() <= 0:
            return None
        names = [str(x) for x in levels] + ["(unseen)"]
        probs = list(reference_probabilities)[:len(names)]
        return {**row, "numeric": False, "levels": names[:len(probs)],
                "reference": [round(float(x), 4) for x in probs],
                "window": [round(float(x), 4) for x in (counts / counts.sum())[:len(probs)]],
                "window_n": int(counts.sum())}
    return None


def _hour_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y%m%dT%H")


class SeriesLog:
    """Writes rows under ``series/<model>/`` (one JSONL file per UTC hour and writer) and prunes old files.

    ``writer`` names this process in the file names (as the audit's), so a restarted controller writes
    its own file for the hour and never overwrites the old one's.
    """

    def __init__(self, storage: Storage, model: str, *, writer: str, retention_h: float = 168.0) -> None:
        self._storage = storage
        self._model = model
        self._writer = writer
        self.retention_h = retention_h
        self._hours: dict[str, list[dict[str, Any]]] = {}  # hour → its rows (this writer's), until written
        self._dirty: set[str] = set()
        self._pruned_at = -math.inf

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows to write at the next :meth:`flush`."""
        for r in rows:
            hour = _hour_of(float(r["ts"]))
            kept = self._hours.setdefault(hour, [])
            if r.get("kind") == RowKind.DRIFT.value and \
                    sum(x.get("kind") == RowKind.DRIFT.value for x in kept) >= MAX_DRIFT_ROWS_PER_HOUR:
                continue
            kept.append(r)
            self._dirty.add(hour)

    def pending(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """(key, rows) of every hour file with rows not written yet (a copy of the list: rows are never changed
        once added, so a worker thread may serialise them); older hours are forgotten once taken (rows arrive
        in time order, so an hour before the newest one is complete)."""
        out = []
        for hour in sorted(self._dirty):
            out.append((f"{series_prefix(self._model)}/{hour}-{self._writer}.jsonl", list(self._hours[hour])))
        newest = max(self._hours, default=None)
        self._hours = {h: rows for h, rows in self._hours.items() if h == newest}
        self._dirty = set()
        return out

    def flush(self, *, now: float | None = None) -> int:
        """Write what is pending and prune once an hour (blocking); files written. On an event loop whose
        thread also adds rows, take :meth:`pending` there and :meth:`write` it in a worker thread."""
        return self.write(self.pending(), now=now)

    def write(self, pending: Sequence[tuple[str, Sequence[dict[str, Any]]]], *, now: float | None = None) -> int:
        """Write the files :meth:`pending` gave (blocking) and prune once an hour; files written. A file that
        fails to write is lost to the report only (its rows are not kept for another try)."""
        written = 0
        for key, rows in pending:
            self._storage.write_text(key, "".join(json.dumps(r, default=str) + "\n" for r in rows))
            written += 1
        now = time.time() if now is None else now
        if now - self._pruned_at >= 3600.0:
            self._pruned_at = now
            self.prune(now=now)
        return written

    def prune(self, *, now: float) -> int:
        """Delete hour files older than ``retention_h``; how many."""
        cutoff = _hour_of(now - self.retention_h * 3600.0)
        gone = 0
        for key in self._storage.list_files(series_prefix(self._model), suffix=".jsonl"):
            name = key.rsplit("/", 1)[-1]
            if name[:11] < cutoff:
                self._storage.delete(key)
                gone += 1
        return gone


def read_series(storage: Storage, model: str, *, since: float | None = None, until: float | None = None
                ) -> list[dict[str, Any]]:
    """Every row of ``model`` between ``since`` and ``until`` (either open), oldest first; a torn line or an
    unreadable file is skipped with a warning (the series is for pictures, not decisions)."""
    lo = _hour_of(since) if since is not None else ""
    hi = _hour_of(until) if until is not None else "~"
    rows: list[dict[str, Any]] = []
    for key in storage.list_files(series_prefix(model), suffix=".jsonl"):
        hour = key.rsplit("/", 1)[-1][:11]
        if not lo <= hour <= hi:
            continue
        try:
            text = storage.read_text(key)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("series file %s could not be read (%s); skipping it", key, exc)
            continue
        for line in text.splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if not isinstance(r, dict) or not isinstance(r.get("ts"), (int, float)):
                continue
            if (since is None or r["ts"] >= since) and (until is None or r["ts"] <= until):
                rows.append(r)
    rows.sort(key=lambda r: r["ts"])
    return rows
