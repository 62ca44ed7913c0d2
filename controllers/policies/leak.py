"""Memory leaks: a replica's resident memory grows steadily toward its limit (pure: no Ray).

A replica that leaks is killed sooner or later by Ray's memory monitor or the
kernel's OOM killer, and with it whatever it was answering (and, for the kernel,
possibly its neighbours). Waiting for that costs failed requests; restarting it on
a single high reading costs needless restarts (a model load is a step, a batch a
spike). So a leak here is a *sustained* growth whose *forecast* crosses the limit:

- each golden probe's answer carries the replica's resident memory (its own
  ``psutil`` reading, no extra call), kept per replica in a bounded
  :class:`MemorySeries`;
- over the last ``controller.leak_window_s`` seconds (at least ``leak_min_samples``
  samples spanning ``leak_min_span_s``), a Theil-Sen slope (the median of pairwise
  slopes: a spike moves it by one pair in many) must be positive at
  ``leak_confidence`` — the lower bound of its confidence interval above zero — over
  the whole window *and* over its recent half. A one-off step up raises the whole
  window's slope but leaves one half flat, so it never fires; a leak that stopped
  leaves the recent half flat too;
- and the fitted memory now, carried forward at that slope, must reach the limit
  within ``leak_horizon_s``.

The limit (:func:`memory_limit`): the member's ``memory_limit_mb`` when the config
sets one; otherwise what the replica may grow to before its node reaches Ray's
memory-monitor threshold (``RAY_memory_usage_threshold``, default 0.95 of the
node's memory): its resident memory now plus the node's headroom to that threshold,
as the replica itself read them.

>>> s = [MemorySample(float(t), 400e6 + 2e6 * t, 16e9, 8e9) for t in range(30)]  # 2 MB/s for 30 s
>>> a = assess_leak(s, limit_bytes=500e6, limit_source=LimitSource.CONFIG, min_samples=12, min_span_s=20.0,
...                 horizon_s=300.0, confidence=0.95)
>>> a.state, round(a.slope_bytes_per_s / 1e6, 3), round(a.time_to_limit_s, 1)
(<LeakState.LEAK: 'leak'>, 2.0, 21.0)
>>> flat = [MemorySample(float(t), 400e6 + (3e6 if t == 20 else 0), 16e9, 8e9) for t in range(30)]  # one spike
>>> assess_leak(flat, limit_bytes=500e6, limit_source=LimitSource.CONFIG, min_samples=12, min_span_s=20.0,
...             horizon_s=300.0, confidence=0.95).state
<LeakState.STEADY: 'steady'>
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import theilslopes

from raymedic.enums import StrEnum

__all__ = ["DEFAULT_RAY_MEMORY_THRESHOLD", "MB", "SAMPLES_KEPT", "LeakAssessment", "LeakState", "LimitSource",
           "MemorySample", "MemorySeries", "assess_leak", "memory_limit", "ray_memory_threshold"]

MB = 1e6
"""Megabytes as the config and the status say them (``memory_limit_mb``, ``rss_mb``): 10^6 bytes."""
SAMPLES_KEPT = 600
"""Memory samples remembered per replica (ten minutes at one probe a second): bounded whatever the window."""
DEFAULT_RAY_MEMORY_THRESHOLD = 0.95
"""Ray's memory monitor kills workers when a node's used memory passes this share (Ray's own default)."""


def ray_memory_threshold(env: Mapping[str, str] = os.environ) -> float:
    """The node memory share at which Ray's memory monitor starts killing workers: the
    ``RAY_memory_usage_threshold`` the cluster was started with, else Ray's default 0.95."""
    try:
        value = float(env.get("RAY_memory_usage_threshold", DEFAULT_RAY_MEMORY_THRESHOLD))
    except ValueError:
        return DEFAULT_RAY_MEMORY_THRESHOLD
    return value if 0 < value <= 1 else DEFAULT_RAY_MEMORY_THRESHOLD


class MemorySample(NamedTuple):
    """One reading a replica made of itself and its node (bytes), stamped when the controller got it."""

    ts: float
    rss_bytes: float
    node_total_bytes: float
    node_available_bytes: float


class MemorySeries:
    """Bounded per-replica memory samples (``SAMPLES_KEPT`` each), oldest first."""

    def __init__(self, *, kept: int = SAMPLES_KEPT) -> None:
        self._kept = kept
        self._samples: dict[str, deque[MemorySample]] = {}

    def add(self, replica: str, sample: MemorySample) -> None:
        """Remember one sample (samples come in time order: one probe at a time per replica)."""
        self._samples.setdefault(replica, deque(maxlen=self._kept)).append(sample)

    def window(self, replica: str, *, now: float, window_s: float) -> tuple[MemorySample, ...]:
        """``replica``'s samples of the last ``window_s`` seconds, oldest first. Older ones are dropped
        (time only moves on, and the window is the config's): each step's read costs the new samples."""
        kept = self._samples.get(replica)
        if not kept:
            return ()
        start = now - window_s
        while kept and kept[0].ts < start:
            kept.popleft()
        return tuple(kept)

    def latest(self, replica: str) -> MemorySample | None:
        """``replica``'s newest sample, if any."""
        kept = self._samples.get(replica)
        return kept[-1] if kept else None

    def retain(self, replicas: Iterable[str]) -> None:
        """Forget every replica not in ``replicas`` (Serve dropped it)."""
        keep = set(replicas)
        for rid in [r for r in self._samples if r not in keep]:
            del self._samples[rid]


class LimitSource(StrEnum):
    """Where a replica's memory limit comes from."""

    CONFIG = "memory_limit_mb"
    """The member's ``memory_limit_mb``."""
    NODE = "node"
    """Its node's headroom to Ray's memory-monitor threshold."""


def memory_limit(sample: MemorySample, *, limit_mb: float | None, threshold: float) -> tuple[float, LimitSource]:
    """The resident memory (bytes) the replica may reach, and where that figure comes from.

    Without a configured limit: the replica's memory now plus what its node may still take before
    used memory passes ``threshold`` of the total (Ray's memory monitor then kills workers, this one
    likely first: Ray picks the newest retriable task's worker, and a replica is an actor that grew).

    >>> memory_limit(MemorySample(0.0, 1e9, 16e9, 4e9), limit_mb=None, threshold=0.95)
    (4200000000.0, <LimitSource.NODE: 'node'>)
    >>> memory_limit(MemorySample(0.0, 1e9, 16e9, 4e9), limit_mb=1500, threshold=0.95)[0]
    1500000000.0
    """
    if limit_mb is not None:
        return float(limit_mb) * MB, LimitSource.CONFIG
    used = sample.node_total_bytes - sample.node_available_bytes
    headroom = threshold * sample.node_total_bytes - used
    return sample.rss_bytes + headroom, LimitSource.NODE


class LeakState(StrEnum):
    """What a replica's memory series shows."""

    TOO_FEW = "too-few-samples"
    """Fewer than ``leak_min_samples`` samples, or they span less than ``leak_min_span_s``: no verdict."""
    STEADY = "steady"
    """No sustained growth (flat, noisy, a spike, a step that ended)."""
    GROWING = "growing"
    """Sustained growth, but its forecast stays under the limit for longer than the horizon."""
    LEAK = "leak"
    """Sustained growth forecast to cross the limit within the horizon: drain and restart."""


@dataclass(frozen=True)
class LeakAssessment:
    """One replica's memory verdict with its evidence (what the incident and ``/v1/status`` show).

    Attributes:
        state: The verdict.
        samples: Samples in the window.
        span_s: Seconds between the window's first and last sample.
        rss_bytes: The latest reading.
        limit_bytes: The limit the forecast is judged against; ``limit_source`` says whose.
        slope_bytes_per_s: Theil-Sen slope over the window (None with too few samples).
        slope_low_bytes_per_s: The lower bound of its interval at ``leak_confidence``.
        recent_slope_low_bytes_per_s: The same bound over the window's recent half.
        fitted_bytes: The fitted memory at the last sample (a spike there does not move it).
        time_to_limit_s: Forecast seconds from the last sample to the limit (None: not growing).
        recent_since: When the recent half-window began (the first evidence of an incident).
        last_ts: The last sample's time.
    """

    state: LeakState
    samples: int
    span_s: float
    rss_bytes: float
    limit_bytes: float
    limit_source: LimitSource
    slope_bytes_per_s: float | None = None
    slope_low_bytes_per_s: float | None = None
    recent_slope_low_bytes_per_s: float | None = None
    fitted_bytes: float | None = None
    time_to_limit_s: float | None = None
    recent_since: float | None = None
    last_ts: float = 0.0

    @property
    def fires(self) -> bool:
        """Whether this is a leak to act on."""
        return self.state is LeakState.LEAK

    def evidence(self, horizon_s: float) -> dict[str, Any]:
        """The audit evidence: slope, forecast, limit and the samples behind them (MB, seconds)."""
        def per_min(v: float | None) -> float | None:
            return None if v is None else round(v * 60 / MB, 3)

        ttl = self.time_to_limit_s
        return {"rss_mb": round(self.rss_bytes / MB, 1), "fitted_mb": None if self.fitted_bytes is None else
                round(self.fitted_bytes / MB, 1), "limit_mb": round(self.limit_bytes / MB, 1),
                "limit_source": str(self.limit_source), "slope_mb_per_min": per_min(self.slope_bytes_per_s),
                "slope_low_mb_per_min": per_min(self.slope_low_bytes_per_s),
                "recent_slope_low_mb_per_min": per_min(self.recent_slope_low_bytes_per_s),
                "time_to_limit_s": None if ttl is None else round(ttl, 1),
                "forecast_limit_at": None if ttl is None else round(self.last_ts + ttl, 3),
                "horizon_s": horizon_s, "samples": self.samples, "span_s": round(self.span_s, 1)}

    def report(self) -> dict[str, Any]:
        """The per-replica memory line of ``/v1/status`` (plain data)."""
        ttl = self.time_to_limit_s
        return {"rss_mb": round(self.rss_bytes / MB, 1),
                "rss_slope_mb_per_min": None if self.slope_bytes_per_s is None else
                round(self.slope_bytes_per_s * 60 / MB, 3),
                "memory_limit_mb": round(self.limit_bytes / MB, 1), "memory_limit_source": str(self.limit_source),
                "time_to_limit_s": None if ttl is None else round(ttl, 1), "memory_state": str(self.state),
                "memory_samples": self.samples}


def _slope(ts: np.ndarray, ys: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Theil-Sen (slope, intercept, lower bound of the slope at ``confidence``)."""
    res = theilslopes(ys, ts, alpha=confidence)
    return float(res.slope), float(res.intercept), float(res.low_slope)


def assess_leak(samples: Sequence[MemorySample], *, limit_bytes: float, limit_source: LimitSource,
                min_samples: int, min_span_s: float, horizon_s: float, confidence: float) -> LeakAssessment:
    """The verdict on one replica's window of samples (oldest first); see the module for the rule."""
    n = len(samples)
    last = samples[-1] if n else MemorySample(0.0, 0.0, 0.0, 0.0)
    span = last.ts - samples[0].ts if n else 0.0
    base: dict[str, Any] = {"samples": n, "span_s": span, "rss_bytes": last.rss_bytes, "limit_bytes": limit_bytes,
                            "limit_source": limit_source, "last_ts": last.ts}
    if n < min_samples or span < min_span_s:
        return LeakAssessment(LeakState.TOO_FEW, **base)
    ts = np.fromiter((s.ts for s in samples), dtype=float, count=n) - samples[0].ts
    ys = np.fromiter((s.rss_bytes for s in samples), dtype=float, count=n)
    third = max(1, n // 3)
    if np.median(ys[-third:]) <= np.median(ys[:third]):
        # No growth at all between the first and last third: the usual case, decided without a fit.
        return LeakAssessment(LeakState.STEADY, **base, slope_bytes_per_s=0.0)
    slope, intercept, low = _slope(ts, ys, confidence)
    half = n // 2
    recent_low = _slope(ts[half:], ys[half:], confidence)[2] if n - half >= 3 else -math.inf
    fitted = float(intercept + slope * ts[-1])
    ttl = max(0.0, (limit_bytes - fitted) / slope) if slope > 0 else None
    sustained = low > 0 and recent_low > 0
    state = (LeakState.STEADY if not sustained else
             LeakState.LEAK if ttl is not None and ttl <= horizon_s else LeakState.GROWING)
    return LeakAssessment(state, **base, slope_bytes_per_s=slope, slope_low_bytes_per_s=low,
                          recent_slope_low_bytes_per_s=recent_low, fitted_bytes=fitted,
                          time_to_limit_s=ttl if sustained else None, recent_since=samples[half].ts)
