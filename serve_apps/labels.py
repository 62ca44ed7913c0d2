"""A label is final: which answers already have one, across every gateway replica.

Feedback steers the ensemble (weights), the accuracy windows, the drift detectors
and a challenger's trial. Were a repeated label counted again, anyone could steer
all of them by replaying one request; and a client retrying after a lost response
would count its labels twice. So the first label of an answer stands: the same
label again is a no-op (a retry), a different one is refused (409), and only the
first is counted live. Retraining joins the first label too
(:func:`train_jobs.labeled.recent_labeled`).

Labels reach whichever gateway replica the load balancer picks, so the book also
learns the others' labels from the durable feedback log (new parts only, at most
once per ``refresh_s``; the read runs in a worker thread, the book is changed on the
event loop only). Two replicas labelling one answer within that moment may
both write; the controller counts an answer once whatever the gateways do
(:class:`controllers.gateway_sync.GatewaySync`).

Memory is bounded two ways: only answers younger than ``horizon_s`` are judged
(and counted live; older labels are still written, for retraining), and past
``capacity`` the oldest entries go, raising the floor below which an answer is
treated as too old to judge. Never a wrong "already labelled"; at worst an old
label is kept for retraining only.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa

from raymedic.keys import feedback_prefix
from raymedic.storage import Storage
from serve_apps.predlog import HourParts, hours_since, inference_time

__all__ = ["LabelBook", "LabelSort"]


@dataclass
class LabelSort:
    """Labels of one request against those already acknowledged.

    Attributes:
        new: positions (into the request's ids) of answers labelled for the first time.
        repeated: ids that already had this very label (a retry: nothing to do).
        conflicts: ``(id, label it has, label sent)`` for ids labelled otherwise before.
        counted: positions among ``new`` young enough to count live (weights, windows, trials).
    """

    new: list[int] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, Any, Any]] = field(default_factory=list)
    counted: list[int] = field(default_factory=list)


class LabelBook:
    """The labels of recent answers, this replica's and (from the feedback log) the others'.

    Args:
        storage: where the feedback log lives (None: this replica's labels only, for tests).
        model: whose feedback log.
        horizon_s: answers younger than this are judged and counted live.
        capacity: most labels remembered.
        refresh_s: how often the log is read for other replicas' labels, at most.
        clock: wall-clock time.
    """

    def __init__(self, storage: Storage | None, model: str, *, horizon_s: float = 86_400.0,
                 capacity: int = 200_000, refresh_s: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self._parts = HourParts(storage, feedback_prefix(model), ["inference_id", "label"]) if storage else None
        self._labels: "OrderedDict[str, str]" = OrderedDict()  # id → its label as the log holds it (JSON)
        self._horizon_s = horizon_s
        self._capacity = capacity
        self._refresh_s = refresh_s
        self._clock = clock
        self._floor = 0.0  # answers given at or before this are too old to judge (evicted, or never read)
        self._refreshed_at = float("-inf")

    def _judged(self, inference_id: str, now: float) -> bool:
        t = inference_time(inference_id)
        return t is not None and t > max(self._floor, now - self._horizon_s)

    def due(self) -> bool:
        """Whether the log is to be read for other replicas' labels now (event loop; claims the read, so
        requests arriving meanwhile do not read it again; no thread hop when it is not due)."""
        now = self._clock()
        if self._parts is None or now - self._refreshed_at < self._refresh_s:
            return False
        self._refreshed_at = now
        return True

    def fetch(self) -> list[pa.Table]:
        """Read the labels other replicas wrote since the last read (worker thread: storage I/O only; the
        book itself is changed by :meth:`learn`, on the event loop, never from a thread)."""
        if self._parts is None:
            return []
        now = self._clock()
        # A label is received after its answer, so the hours of the horizon hold every label it judges.
        return self._parts.read_new(hours_since(now - self._horizon_s, now))

    def learn(self, tables: Sequence[pa.Table]) -> None:
        """Take the labels :meth:`fetch` read (event loop): an answer's first label stands."""
        now = self._clock()
        for table in tables:
            ids, labels = table.column("inference_id").to_pylist(), table.column("label").to_pylist()
            for i, lab in zip(ids, labels):
                if i is not None and lab is not None and self._judged(i, now):
                    self._labels.setdefault(i, lab)  # the first label stands
        self._bound()

    def _bound(self) -> None:
        while len(self._labels) > self._capacity:
            evicted, _ = self._labels.popitem(last=False)
            self._floor = max(self._floor, inference_time(evicted) or 0.0)

    def sort(self, ids: Sequence[str], labels: Sequence[Any]) -> LabelSort:
        """Which of ``ids`` (labelled ``labels``, in the schema's own form) are new, repeated or conflicting.

        Pure apart from the book it reads; :meth:`reserve` the new ones before writing them.
        """
        now = self._clock()
        out = LabelSort()
        for k, (i, lab) in enumerate(zip(ids, labels)):
            had = self._labels.get(i)
            if had is None:
                out.new.append(k)
                if self._judged(i, now):
                    out.counted.append(k)
            elif had == json.dumps(lab):
                out.repeated.append(i)
            else:
                out.conflicts.append((i, json.loads(had), lab))
        return out

    def reserve(self, ids: Sequence[str], labels: Sequence[Any]) -> None:
        """Take these labels as given (before their write: a concurrent request sees them at once)."""
        now = self._clock()
        for i, lab in zip(ids, labels):
            if self._judged(i, now):
                self._labels[i] = json.dumps(lab)
        self._bound()

    def release(self, ids: Sequence[str]) -> None:
        """Their write failed: they were never acknowledged."""
        for i in ids:
            self._labels.pop(i, None)

    def __len__(self) -> int:
        return len(self._labels)
