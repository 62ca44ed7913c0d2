"""The gateways' call reports, reduced to per-replica :class:`CallStats` over a window (pure: no Ray).

Each gateway sends, once per sync period, how its calls to each member replica
ended since its last report (counts per :class:`raymedic.protocol.CallOutcome`, the
latencies of successful calls, the calls in flight). The controller keeps a
bounded log of those outcomes per ``"member/replica"`` and, every step, reduces
the recent ones to the evidence the healing policy reads: a replica whose calls
die is dead, one whose calls time out with nothing completing is hung.

>>> log = CallLog()
>>> log.ingest("gw1", now=100.0, replicas={"mlp/a": {"ok": 2, "latencies": [0.01], "timeout": 1, "inflight": 3}})
>>> log.ingest("gw2", now=101.0, replicas={"mlp/a": {"hedged": 1, "inflight": 1}})
>>> s = log.stats("mlp/a", now=103.0, window_s=5.0)
>>> s.ok, s.errors, s.dead, s.timeouts, s.latencies_s, s.inflight, s.first_error_at, s.first_dead_at, s.first_timeout_at
(2, 0, 0, 2, (0.01, 0.0), 4, None, None, 100.0)
>>> log.ingest("gw1", now=102.0, replicas={"mlp/a": {"dead": 1}})
>>> log.stats("mlp/a", now=103.0, window_s=5.0).first_dead_at  # when the first call that died was reported
102.0
>>> log.stats("mlp/a", now=106.0, window_s=5.0).ok  # the first report left the window
0
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Mapping, NamedTuple

from controllers.policies.replica import CallStats
from raymedic.protocol import CallOutcome

__all__ = ["CallEvent", "CallLog", "call_stats", "EVENTS_KEPT"]

EVENTS_KEPT = 2000
"""Call outcomes remembered per replica: bounded memory whatever the traffic (the window is seconds)."""

_COUNTED = (CallOutcome.ERROR, CallOutcome.DEAD, CallOutcome.TIMEOUT, CallOutcome.HEDGED)
"""Outcomes a report gives as counts only (successful calls come with their latencies)."""
_LOST = (CallOutcome.TIMEOUT, CallOutcome.HEDGED)
"""Calls the replica did not answer in time: past the deadline, or beaten by a hedge on a peer."""


class CallEvent(NamedTuple):
    """One call outcome a gateway reported, stamped with when the controller received it."""

    ts: float
    outcome: CallOutcome
    latency_s: float


def call_stats(events: Iterable[CallEvent], *, now: float, window_s: float, inflight: int = 0) -> CallStats:
    """The evidence of the calls of the last ``window_s`` seconds.

    A hedged call counts as a timeout: another replica answered first because this
    one was slow to, which is what a hang looks like from the outside.
    """
    recent = [e for e in events if now - e.ts <= window_s]
    first_error = min((e.ts for e in recent if e.outcome == CallOutcome.ERROR), default=None)
    first_timeout = min((e.ts for e in recent if e.outcome in _LOST), default=None)
    return CallStats(
        ok=sum(1 for e in recent if e.outcome == CallOutcome.OK),
        errors=sum(1 for e in recent if e.outcome == CallOutcome.ERROR),
        dead=sum(1 for e in recent if e.outcome == CallOutcome.DEAD),
        timeouts=sum(1 for e in recent if e.outcome in _LOST),
        latencies_s=tuple(e.latency_s for e in recent if e.outcome == CallOutcome.OK),
        inflight=inflight,
        first_error_at=first_error,
        ok_after_error=0 if first_error is None else sum(
            1 for e in recent if e.outcome == CallOutcome.OK and e.ts > first_error),
        first_timeout_at=first_timeout,
        ok_after_timeout=0 if first_timeout is None else sum(
            1 for e in recent if e.outcome == CallOutcome.OK and e.ts > first_timeout),
        first_dead_at=min((e.ts for e in recent if e.outcome == CallOutcome.DEAD), default=None),
    )


class CallLog:
    """Bounded per-replica call outcomes from every gateway, and each gateway's calls in flight."""

    def __init__(self, *, kept: int = EVENTS_KEPT) -> None:
        self._kept = kept
        self._events: dict[str, deque[CallEvent]] = {}
        self._inflight: dict[str, dict[str, int]] = {}  # gateway → "member/replica" → calls in flight

    def ingest(self, gateway: str, *, now: float, replicas: Mapping[str, Mapping[str, Any]]) -> None:
        """Take one gateway's report (``batch["replicas"]``): outcome counts, latencies of the calls
        that succeeded (a report may cap them: the rest count as ok with no latency), calls in flight.
        A gateway's in-flight counts replace its previous ones: they are a level, not a flow."""
        inflight = {}
        for key, s in replicas.items():
            events = self._events.setdefault(key, deque(maxlen=self._kept))
            for outcome in _COUNTED:
                events.extend(CallEvent(now, outcome, 0.0) for _ in range(int(s.get(outcome, 0))))
            lat = s.get("latencies") or []
            events.extend(CallEvent(now, CallOutcome.OK, float(x)) for x in lat)
            events.extend(CallEvent(now, CallOutcome.OK, 0.0) for _ in range(max(0, int(s.get("ok", 0)) - len(lat))))
            if s.get("inflight"):
                inflight[key] = int(s["inflight"])
        self._inflight[gateway] = inflight

    def retain(self, keys: Iterable[str], *, now: float, idle_s: float) -> None:
        """Forget every replica (``"member/replica"``) not in ``keys`` whose newest report is older than
        ``idle_s``: Serve dropped it, and a controller that lives for months sees thousands of replica ids
        come and go. A replica gateways report before Serve's view lists it keeps its evidence.

        >>> log = CallLog()
        >>> log.ingest("g", now=0.0, replicas={"mlp/a": {"ok": 1}, "mlp/b": {"ok": 1}})
        >>> log.retain(["mlp/a"], now=100.0, idle_s=60.0); sorted(log._events)
        ['mlp/a']
        """
        keep = set(keys)
        for key in [k for k, ev in self._events.items() if k not in keep and (not ev or ev[-1].ts < now - idle_s)]:
            del self._events[key]

    def stats(self, key: str, *, now: float, window_s: float) -> CallStats:
        """``key``'s (``"member/replica"``) evidence over the window, in-flight calls summed over gateways."""
        return call_stats(self._events.get(key, ()), now=now, window_s=window_s,
                          inflight=sum(g.get(key, 0) for g in self._inflight.values()))
