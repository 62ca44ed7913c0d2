"""The Page–Hinkley test for a rise in the mean of a stream, online and over whole arrays (pure NumPy).

Page–Hinkley (Page 1954, Hinkley 1971) watches the cumulative deviation of each
observation from the running mean of all observations since the last restart,
less a tolerance ``delta``: ``m_t = sum_{i<=t} (x_i - mean_t - delta)``. While the
mean holds, ``m_t`` drifts down by ``delta`` per observation; after a rise of
``r > delta`` it climbs by about ``r - delta``. The test alarms when ``m_t`` stands
more than ``threshold`` above its running minimum, after at least
``min_samples`` observations, so a rise of ``r`` alarms after about
``threshold / (r - delta)`` observations. After an alarm it restarts from nothing
(River's convention: usable at once).

On a 0/1 error stream it is the classic concept-drift test (what ADWIN and
Page–Hinkley read: only whether the model was right). The live controller runs it
on request (``performance.error_test: page-hinkley``, a label at a time); the drift
bench runs it as the reference detector against the error CUSUM, over millions of
labels at once. Both go through :class:`PageHinkley`, so the bench measures the
test the controller would run: :meth:`PageHinkley.update` a value at a time,
:meth:`PageHinkley.update_many` the same arithmetic vectorized over an array.

>>> import numpy as np
>>> rng = np.random.default_rng(3)
>>> test = PageHinkley(delta=0.05, threshold=15.0, min_samples=50)
>>> sum(test.update(float(e)) for e in rng.random(2_000) < 0.2)  # a steady 20 % error rate: no alarm
0
>>> test.update_many((rng.random(500) < 0.5).astype(float))[0]  # then 50 %: (row, start of the rise)
(54, 0)
>>> test.alarm
True
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from raymedic.config import PerformanceSettings
from raymedic.errors import ConfigError

__all__ = ["PageHinkley", "page_hinkley_alarms"]

CHUNK = 4096
"""Observations :meth:`PageHinkley.update_many` scans at once: an alarm costs at most one chunk's rescan."""


class PageHinkley:
    """Page–Hinkley test for an increase in the mean of a stream (here: the error indicator).

    Invariant: only :meth:`update`, :meth:`update_many`, :meth:`reset` and :meth:`load` change the
    statistics ``n``, ``mean``, ``cum`` (the cumulative deviation) and ``low`` (its running minimum).

    Args:
        delta: Tolerance: rises of the mean smaller than about this are ignored (``>= 0``).
        threshold: How far the cumulative deviation must climb above its minimum to alarm (``> 0``);
            larger means fewer false alarms and later detections.
        min_samples: Observations since the last restart before the test may alarm (``>= 1``): the
            running mean of a handful of observations is too noisy to measure a rise against.

    Raises:
        ConfigError: A hyperparameter is out of range (the message names the config key and a fix).
    """

    def __init__(self, *, delta: float, threshold: float, min_samples: int) -> None:
        if not (math.isfinite(delta) and delta >= 0):
            raise ConfigError(f"Page-Hinkley `delta` (performance.ph_delta) is {delta!r} but must be a finite "
                              f"number >= 0: use about half the smallest rise to catch, e.g. 0.05")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ConfigError(f"Page-Hinkley `threshold` (performance.ph_lambda) is {threshold!r} but must be a "
                              f"finite number > 0: e.g. 15 (a rise of r alarms after ~threshold / (r - delta))")
        if isinstance(min_samples, bool) or int(min_samples) != min_samples or min_samples < 1:
            raise ConfigError(f"Page-Hinkley `min_samples` (performance.ph_min_samples) is {min_samples!r} but "
                              f"must be a whole number >= 1: e.g. 50")
        self.delta, self.threshold, self.min_samples = float(delta), float(threshold), int(min_samples)
        self._alarm = False
        self.reset()

    @classmethod
    def from_settings(cls, settings: PerformanceSettings) -> "PageHinkley":
        """The test the config asks for (``performance.ph_*``): the controller's error-stream test."""
        return cls(delta=settings.ph_delta, threshold=settings.ph_lambda, min_samples=settings.ph_min_samples)

    def reset(self) -> None:
        """Start over: no observations, no deviation (after an alarm, or when new versions serve)."""
        self.n, self.mean, self.cum, self.low = 0, 0.0, 0.0, 0.0

    @property
    def alarm(self) -> bool:
        """Whether the last :meth:`update` (or :meth:`update_many`) raised an alarm."""
        return self._alarm

    def update(self, x: float) -> bool:
        """Add one observation; True when the mean has risen (the test then restarts)."""
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.cum += x - self.mean - self.delta
        self.low = min(self.low, self.cum)
        self._alarm = self.n >= self.min_samples and self.cum - self.low > self.threshold
        if self._alarm:
            self.reset()
        return self._alarm

    def update_many(self, x: np.ndarray, *, limit: int | None = None,
                    chunk: int = CHUNK) -> list[tuple[int, int]]:
        """Add every observation of ``x`` in order; the alarms as ``(row, start of the rise)``, rows of ``x``.

        The arithmetic of :meth:`update` (running mean since the last restart, cumulative deviation less
        ``delta``, its running minimum, restart after an alarm), vectorized so that millions of labels take
        milliseconds. The start of the rise is the row after the deviation's last minimum; for an
        excursion that began before this call it is row 0. With ``limit``, feeding stops at the alarm
        that makes more than ``limit`` (the rest of ``x`` is not fed): enough to count alarms up to a
        bound.
        """
        x = np.asarray(x, dtype=float)
        alarms: list[tuple[int, int]] = []
        n0, sum0, cum0, low0, low_at0 = self.n, self.mean * self.n, self.cum, self.low, -1
        start = 0
        while start < len(x):
            seg = x[start:start + chunk]
            n = n0 + np.arange(1, len(seg) + 1)
            mean = (sum0 + np.cumsum(seg)) / n
            cum = cum0 + np.cumsum(seg - mean - self.delta)
            low = np.minimum(np.minimum.accumulate(cum), low0)
            hit = (n >= self.min_samples) & (cum - low > self.threshold)
            rows = start + np.arange(len(seg))
            low_at = np.maximum(np.maximum.accumulate(np.where(cum <= low, rows, -1)), low_at0)
            if hit.any():
                r = int(np.argmax(hit))
                alarms.append((start + r, int(low_at[r]) + 1))
                n0, sum0, cum0, low0, low_at0 = 0, 0.0, 0.0, 0.0, start + r
                start += r + 1
                if limit is not None and len(alarms) > limit:
                    break
            else:
                n0, sum0, cum0, low0, low_at0 = int(n[-1]), float(sum0 + seg.sum()), float(cum[-1]), \
                    float(low[-1]), int(low_at[-1])
                start += len(seg)
        self.n, self.mean, self.cum, self.low = n0, (sum0 / n0 if n0 else 0.0), cum0, low0
        self._alarm = bool(alarms)
        return alarms

    def to_dict(self) -> dict[str, float]:
        """The statistics, for the controller's checkpoint (the hyperparameters come from the config)."""
        return {"n": self.n, "mean": self.mean, "cum": self.cum, "low": self.low}

    def load(self, d: Mapping[str, float]) -> None:
        """Continue from :meth:`to_dict` (a restarted controller keeps the evidence it had)."""
        self.n, self.mean, self.cum, self.low = int(d["n"]), float(d["mean"]), float(d["cum"]), float(d["low"])


def page_hinkley_alarms(x: np.ndarray, *, delta: float, threshold: float, min_samples: int,
                        limit: int | None = None, chunk: int = CHUNK) -> list[tuple[int, int]]:
    """Alarms ``(row, start of the rise)`` of a fresh :class:`PageHinkley` over the whole of ``x``.

    What a benchmark needs: the test run over a stream from its first observation (see
    :meth:`PageHinkley.update_many` for ``limit``).
    """
    return PageHinkley(delta=delta, threshold=threshold, min_samples=min_samples).update_many(
        x, limit=limit, chunk=chunk)
