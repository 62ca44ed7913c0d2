"""Where one predict request's time goes inside a gateway replica (``gateway.profile``; pure, no Ray).

With ``gateway.profile`` on, the V1 predict route times each stage of a request with
``time.perf_counter_ns`` (:class:`StageTimer`) and sends the figures back in the
answer's standard ``Server-Timing`` header (``parse;dur=0.021, validate;dur=...``, in
milliseconds), so ``raymedic bench saturation --profile`` pairs each request's stages
with the latency its client saw, whichever gateway replica answered, with no admin
route, no state kept in the replica and nothing sent to the controller. Off (the
default), the route uses :data:`NULL_TIMER`, whose methods do nothing: no clock is read
and no header is added, so answers and their cost are as without profiling.

Stages, in the order a request passes them (:data:`STAGES`): ``parse`` (reading and
decoding the body), ``validate`` (rows in schema order), ``fanout`` (every member's
answer, coalescing wait and Serve handle calls included), ``combine`` (weighted soft
voting, labels), ``log`` (inference ids, the prediction log's records, the answers kept
for feedback), ``telemetry`` (confidences and input tally for the controller, latency
window, request metrics) and ``encode`` (the answer's JSON). Inside ``fanout`` two
figures of its slowest member call (:data:`FANOUT_PARTS`): its round trip through the
Serve handle, and the part of it spent in the member's ``predict_proba``.

>>> t = StageTimer(clock=iter(range(0, 10_000_000, 1_000_000)).__next__)
>>> t.mark("parse"); t.mark("validate"); t.note("member_call", 0.0005)
>>> parse_server_timing(t.header())
{'parse': 1.0, 'validate': 1.0, 'member_call': 0.5, 'total': 3.0}
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["FANOUT_PARTS", "HEADER", "NULL_TIMER", "STAGES", "TOTAL", "NullTimer", "StageTimer",
           "parse_server_timing"]

HEADER = "Server-Timing"
"""The standard response header the figures travel in (W3C Server Timing: ``name;dur=ms``)."""
STAGES = ("parse", "validate", "fanout", "combine", "log", "telemetry", "encode")
"""The stages of one predict request, in order; together (with the route's own few steps charged to the
stage they precede) they make up :data:`TOTAL`."""
FANOUT_PARTS = ("member_call", "member_infer")
"""Inside ``fanout``: the slowest member call's round trip through its Serve handle (routing, transport, the
replica's queue and work) and, of it, the member's own ``predict_proba``."""
TOTAL = "total"
"""The route's whole time in the gateway replica, from the handler's start to the encoded answer."""


class StageTimer:
    """Stage durations of one request: :meth:`mark` charges the time since the previous mark (or the
    start) to a stage. Only the request's own coroutine uses it.

    Args:
        clock: nanoseconds of a monotonic clock (``time.perf_counter_ns``; a fake in doctests).
    """

    __slots__ = ("_clock", "_last", "_start", "spans")
    enabled = True

    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock = clock
        self._start = self._last = clock()
        self.spans: dict[str, int] = {}

    def mark(self, stage: str) -> None:
        """Charge the time since the last mark to ``stage`` (added up if it is marked twice)."""
        now = self._clock()
        self.spans[stage] = self.spans.get(stage, 0) + now - self._last
        self._last = now

    def note(self, name: str, seconds: float) -> None:
        """A figure measured elsewhere (a member call's round trip, a replica's inference), part of a stage."""
        self.spans[name] = int(seconds * 1e9)

    def header(self) -> str:
        """The ``Server-Timing`` value: every span and the total so far, in ms (µs resolution)."""
        total = self._clock() - self._start
        return ", ".join(f"{k};dur={v / 1e6:.3f}" for k, v in (*self.spans.items(), (TOTAL, total)))


class NullTimer:
    """The timer of a request that is not profiled: every method does nothing."""

    __slots__ = ()
    enabled = False

    def mark(self, stage: str) -> None:
        """Nothing (profiling is off)."""

    def note(self, name: str, seconds: float) -> None:
        """Nothing (profiling is off)."""


NULL_TIMER = NullTimer()
"""The timer every request gets with ``gateway.profile`` off."""


def parse_server_timing(value: str | None) -> dict[str, float]:
    """A ``Server-Timing`` header as ``{name: ms}`` (entries without a ``dur`` are left out; {} for None).

    >>> parse_server_timing("parse;dur=0.021, cache;desc=hit, total;dur=3.5")
    {'parse': 0.021, 'total': 3.5}
    """
    out: dict[str, float] = {}
    for entry in (value or "").split(","):
        name, _, params = entry.strip().partition(";")
        for p in params.split(";"):
            key, _, v = p.strip().partition("=")
            if key == "dur" and name:
                try:
                    out[name] = float(v)
                except ValueError:
                    pass
    return out
