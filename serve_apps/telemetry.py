"""Gateway-side bookkeeping for healing: call outcomes, local ejection, feedback joins.

Nothing here talks to Ray. The gateway records every member call's outcome per
replica and ships the batch to the controller once per sync period (never one RPC
per request); it ejects a replica that just failed, timed out or lost a hedge for
a few seconds on its own, so it reacts within one request even while the
controller is away; and it remembers each recent answer's member probabilities so
feedback labels turn into per-member losses for the ensemble weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict, defaultdict, deque
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from raymedic.errors import ServiceUnavailable
from raymedic.keys import challenger_source
from raymedic.protocol import CallOutcome

__all__ = ["CallRecorder", "LocalEjector", "RecentOutputs", "HedgeBudget", "Admission", "LatencyWindow", "OUTCOMES",
           "LATENCY_WINDOW_S"]

OUTCOMES = tuple(o.value for o in CallOutcome)
"""The outcome counters of each replica's slot, as plain strings (they cross a Ray call)."""
MAX_LATENCIES = 256
"""Per replica per batch: enough for percentiles, bounded under any load."""
MAX_LABELS = 10_000
"""Labels counted live per batch (more in one sync period are still written, for retraining)."""
MAX_CONFIDENCE = 512
"""Answer confidences per batch: the controller's windows need no more."""
LATENCY_WINDOW_S = 10.0
"""The answered predictions a gateway replica's p50/p99 are read over: recent enough to show a spike while
it happens, long enough for a p99 of a few hundred requests at tens of requests per second."""
LATENCY_KEPT = 4096
"""At most this many latencies in the window (a bound under any load; the newest are kept)."""
ENSEMBLE_KEY = "__ensemble__"  # not a valid member name, so it cannot collide with one


class CallRecorder:
    """Counts per (member, replica) since the last :meth:`drain`, plus in-flight calls."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], dict[str, Any]] = {}
        self._inflight: dict[tuple[str, str], int] = defaultdict(int)
        self._labels: list[dict[str, Any]] = []
        self._confidence: list[float] = []
        self._predicted: list[int] = []
        self._challenger: dict[str, dict[str, int]] = {}
        self._requests = {"answered": 0, "degraded": 0, "failed": 0}

    def request_answered(self, *, degraded: bool) -> None:
        """One predict request answered (degraded: the fallback stood in, or too few members did)."""
        self._requests["answered"] += 1
        self._requests["degraded"] += int(degraded)

    def request_failed(self) -> None:
        """One predict request no member answered in time (a 503): the report's error curve."""
        self._requests["failed"] += 1

    def challenger_call(self, member: str, ok: bool, latency_s: float | None = None) -> None:
        """One call to a member's challenger on trial (its failures, and the latencies of its good calls
        against the champion's, can end the trial)."""
        slot = self._challenger.setdefault(member, {"ok": 0, "failed": 0, "latencies": []})
        slot["ok" if ok else "failed"] += 1
        if ok and latency_s is not None and len(slot["latencies"]) < MAX_LATENCIES:
            slot["latencies"].append(round(latency_s, 5))

    def add_labels(self, records: Sequence[dict[str, Any]]) -> None:
        """Labels to count, one record per answer (:meth:`RecentOutputs.label_records`), bounded per batch.

        Each keeps its inference id: the controller counts an answer once, whichever gateway replicas its
        label reached."""
        room = MAX_LABELS - len(self._labels)
        self._labels.extend(records[:max(room, 0)])

    def add_confidence(self, values: Sequence[float], predicted: Sequence[int] | None = None) -> None:
        """Each answer's top-class confidence and, aligned with it, its predicted class."""
        room = max(MAX_CONFIDENCE - len(self._confidence), 0)
        self._confidence.extend(round(float(v), 5) for v in values[:room])
        if predicted is not None:
            self._predicted.extend(int(k) for k in predicted[:room])

    def _slot(self, member: str, replica: str) -> dict[str, Any]:
        return self._stats.setdefault((member, replica), {**{o: 0 for o in OUTCOMES}, "latencies": []})

    def started(self, member: str, replica: str) -> None:
        """A call to ``replica`` is in flight (the controller sees in-flight counts between batches)."""
        self._inflight[(member, replica)] += 1

    def finished(self, member: str, replica: str, outcome: str, latency_s: float, *, was_started: bool = True
                 ) -> None:
        """A call ended with ``outcome`` (a :class:`raymedic.protocol.CallOutcome`); latencies of good calls
        only (a timeout's latency is the deadline, not the replica's).

        Raises:
            ValueError: an outcome the controller would not know.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        key = (member, replica)
        if was_started and self._inflight.get(key, 0) > 0:
            self._inflight[key] -= 1
        slot = self._slot(member, replica)
        slot[outcome] += 1
        if outcome == "ok" and len(slot["latencies"]) < MAX_LATENCIES:
            slot["latencies"].append(round(latency_s, 5))

    def drain(self) -> dict[str, Any]:
        """The batch for the controller; resets counts (in-flight counts carry on)."""
        replicas = {f"{m}/{r}": {**s, "inflight": self._inflight.get((m, r), 0)} for (m, r), s in self._stats.items()}
        for (m, r), n in self._inflight.items():
            if n and f"{m}/{r}" not in replicas:
                replicas[f"{m}/{r}"] = {**{o: 0 for o in OUTCOMES}, "latencies": [], "inflight": n}
        batch = {"replicas": replicas, "labels": self._labels,
                 "confidence": self._confidence, "predicted": self._predicted,
                 "challenger_calls": self._challenger, "requests": self._requests}
        self._challenger = {}
        self._requests = {"answered": 0, "degraded": 0, "failed": 0}
        self._stats = {}
        self._labels, self._confidence, self._predicted = [], [], []
        self._inflight = defaultdict(int, {k: v for k, v in self._inflight.items() if v > 0})
        return batch


class LocalEjector:
    """Replicas this gateway avoids for ``eject_s`` after a bad call (outlier ejection)."""

    def __init__(self, eject_s: float) -> None:
        self.eject_s = eject_s
        self._until: dict[tuple[str, str], float] = {}

    def eject(self, member: str, replica: str, now: float) -> None:
        """Avoid ``replica`` until ``now + eject_s`` (nothing when ejection is off)."""
        if self.eject_s > 0:
            self._until[(member, replica)] = now + self.eject_s

    def ejected(self, member: str, now: float) -> list[str]:
        """The replicas of ``member`` still ejected at ``now`` (expired ones are forgotten)."""
        expired = [k for k, t in self._until.items() if t <= now]
        for k in expired:
            del self._until[k]
        return sorted(r for (m, r) in self._until if m == member)


class RecentOutputs:
    """inference_id → each member's probability vector, for the most recent answers."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._d: OrderedDict[str, dict[str, list[float]]] = OrderedDict()
        self._ts: dict[str, float] = {}  # when each answer was given (a change point is dated by it)
        self._versions: dict[str, Mapping[str, str]] = {}  # the member versions that gave each answer

    def add(self, ids: Sequence[str], member_probs: Mapping[str, np.ndarray],
            ensemble: np.ndarray | None = None, at: float | None = None,
            versions: Mapping[str, str] | None = None) -> None:
        """Remember each answer's member probabilities (and the ensemble's, and the versions that gave
        them) under its inference id, evicting the oldest past ``capacity``.
        """
        at = time.time() if at is None else at
        for i, inference_id in enumerate(ids):
            self._d[inference_id] = {m: np.asarray(p[i], dtype=float).tolist() for m, p in member_probs.items()}
            self._ts[inference_id] = at
            if versions:
                self._versions[inference_id] = versions
            if ensemble is not None:
                self._d[inference_id][ENSEMBLE_KEY] = np.asarray(ensemble[i], dtype=float).tolist()
        while len(self._d) > self.capacity:
            old, _ = self._d.popitem(last=False)
            self._ts.pop(old, None)
            self._versions.pop(old, None)

    def __contains__(self, inference_id: object) -> bool:
        return inference_id in self._d

    def add_logged(self, inference_id: str, ts: float, member_outputs: Mapping[str, Any],
                   ensemble: Sequence[float]) -> None:
        """An answer another gateway replica gave, from its prediction log record (``member_outputs``: member →
        {"probabilities", "version", and for a canary the "champion" it stood in for, or for a shadow the
        "challenger" answer beside it})."""
        probs: dict[str, list[float]] = {}
        versions: dict[str, str] = {}
        for m, out in member_outputs.items():
            champion = out.get("champion")
            if champion is not None:  # a canary answered: the member's own answer is the champion's
                probs[m], versions[m] = list(champion["probabilities"]), str(champion.get("version", ""))
                probs[challenger_source(m)] = list(out["probabilities"])
                continue
            probs[m] = list(out["probabilities"])
            if out.get("version"):
                versions[m] = str(out["version"])
            if out.get("challenger") is not None:  # a shadow answered next to the champion
                probs[challenger_source(m)] = list(out["challenger"]["probabilities"])
        self._d[inference_id] = probs
        if ensemble:
            self._d[inference_id][ENSEMBLE_KEY] = list(ensemble)
        self._ts[inference_id] = float(ts)
        self._versions[inference_id] = {m: v for m, v in versions.items() if v}
        while len(self._d) > self.capacity:
            old, _ = self._d.popitem(last=False)
            self._ts.pop(old, None)
            self._versions.pop(old, None)

    def add_source(self, ids: Sequence[str], source: str, probs: np.ndarray) -> None:
        """Another answer to requests already recorded (a challenger's, arriving after the reply)."""
        for i, inference_id in enumerate(ids):
            entry = self._d.get(inference_id)
            if entry is not None:
                entry[source] = np.asarray(probs[i], dtype=float).tolist()

    def losses(self, ids: Sequence[str], class_indices: Sequence[int]) -> dict[str, list[float]]:
        """Per member, the Brier score (halved, so in [0, 1]) of each labelled answer.

        Brier rather than log-loss: both are proper scores, but log-loss charges one confident
        miss like a dozen hedged ones, so Hedge on it crowns a member that answers near 0.5 (a
        linear model after the concept rotated away from it) over a more accurate, more confident
        one, and the ensemble's accuracy trails its best member's. Brier stays bounded per answer.

        Keys are ``member@version`` where the answer's version was recorded (the controller charges
        a member only for answers of the version it serves now: labels arrive late, and those for
        the version a promotion replaced say nothing about the new one), plain ``member`` otherwise.
        A challenger on trial (``member@challenger``) gets its losses too: not to weigh it, but so
        that a promoted version starts with the record it earned on the trial."""
        out: dict[str, list[float]] = defaultdict(list)
        for inference_id, k in zip(ids, class_indices):
            members = self._d.get(inference_id)
            if not members:
                continue
            versions = self._versions.get(inference_id) or {}
            for m, probs in members.items():
                if m == ENSEMBLE_KEY:  # the combination, not a member to weigh
                    continue
                if not 0 <= k < len(probs):
                    continue
                # Plain Python: a handful of classes per answer, on the gateway's feedback path.
                brier = 0.5 * sum((q - (j == k)) ** 2 for j, q in enumerate(probs))
                key = f"{m}@{versions[m]}" if m in versions else m
                out[key].append(min(1.0, float(brier)))
        return dict(out)

    def label_records(self, ids: Sequence[str], class_indices: Sequence[int]) -> list[dict[str, Any]]:
        """One record per known answer for the controller: ``{"id", "losses": {key: loss} (as
        :meth:`losses`), "labelled": one entry of :meth:`labelled`}``."""
        out = []
        for i, k in zip(ids, class_indices):
            labelled = self.labelled([i], [k])
            if labelled:
                out.append({"id": i, "losses": {key: v[0] for key, v in self.losses([i], [k]).items()},
                            "labelled": labelled[0]})
        return out

    def labelled(self, ids: Sequence[str], class_indices: Sequence[int]) -> list[dict[str, Any]]:
        """Each known answer with its label: {"y": k, "p": {member or "ensemble": probabilities},
        "ts": when it was answered}."""
        out = []
        for inference_id, k in zip(ids, class_indices):
            members = self._d.get(inference_id)
            if members:
                out.append({"y": int(k), "p": {("ensemble" if m == ENSEMBLE_KEY else m): p
                                               for m, p in members.items()}, "ts": self._ts.get(inference_id)})
        return out


class HedgeBudget:
    """Token bucket: hedged calls may add at most ``ratio`` extra load (plus a small burst).

    Hedging a late call is cheap insurance against one slow or hung replica, but
    when everything is late because the service is overloaded, hedging every call
    doubles the load and turns overload into collapse. Each primary call earns
    ``ratio`` of a token; a hedge spends one.
    """

    def __init__(self, ratio: float = 0.1, burst: float = 10.0) -> None:
        if not 0 <= ratio <= 1 or burst < 1:
            raise ValueError("hedge budget needs 0 <= ratio <= 1 and burst >= 1")
        self.ratio, self.burst = ratio, burst
        self._tokens = burst

    def on_call(self) -> None:
        """A primary call earns ``ratio`` of a token (up to ``burst``)."""
        self._tokens = min(self.burst, self._tokens + self.ratio)

    def try_hedge(self) -> bool:
        """Spend a token on a hedge if one is there; False means do not hedge."""
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Admission:
    """Load shedding: past ``limit`` requests in flight, a fast 503 with Retry-After.

    On a saturated machine every admitted request slows all the others; queueing
    more only turns overload into timeouts for everyone (and hides the overload
    from clients that could back off). Shedding keeps the admitted ones fast.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self.limit = limit
        self.inflight = 0
        self.shed = 0

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Admit one request for the ``with`` block, or refuse it at once.

        Raises:
            ServiceUnavailable: ``limit`` requests are already in flight (503, Retry-After 1).
        """
        if self.inflight >= self.limit:
            self.shed += 1
            raise ServiceUnavailable(f"overloaded: {self.inflight} predictions in flight on this gateway replica "
                                     f"(limit {self.limit}); retry after the Retry-After delay", retry_after_s=1)
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1


class LatencyWindow:
    """The latencies of the predictions a gateway replica answered in the last ``window_s``: its p50/p99
    against ``gateway.latency_slo_ms`` (``/v1/status``, and the controller's ``slo-breach`` audit).

    Only answered requests count: a shed request's fast 503 would make the tail look better exactly
    when the service is overloaded.

    >>> w = LatencyWindow(window_s=10.0)
    >>> for i in range(100):
    ...     w.add(0.01 * (i + 1), now=float(i) / 10)
    >>> w.report(now=9.9)["p99_ms"], w.report(now=9.9)["requests"]
    (990.0, 100)
    >>> w.report(now=30.0)["requests"]
    0
    """

    def __init__(self, window_s: float = LATENCY_WINDOW_S, kept: int = LATENCY_KEPT) -> None:
        self.window_s = window_s
        self._d: deque[tuple[float, float]] = deque(maxlen=kept)

    def add(self, latency_s: float, *, now: float) -> None:
        """One answered request that took ``latency_s``, answered at ``now`` (monotonic seconds)."""
        self._d.append((now, latency_s))

    def report(self, *, now: float) -> dict[str, Any]:
        """``requests`` in the window and their ``p50_ms`` / ``p99_ms`` (None with no request)."""
        while self._d and self._d[0][0] < now - self.window_s:
            self._d.popleft()
        lat = sorted(x for _, x in self._d)
        if not lat:
            return {"requests": 0, "p50_ms": None, "p99_ms": None, "window_s": self.window_s}

        def pct(q: float) -> float:  # nearest rank: the smallest latency at or above a share q of them
            return round(lat[max(0, math.ceil(q * len(lat)) - 1)] * 1000, 1)

        return {"requests": len(lat), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "window_s": self.window_s}
