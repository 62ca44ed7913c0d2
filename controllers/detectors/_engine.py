"""The CUSUM arithmetic the detectors and their calibration share (pure NumPy, private).

Page's CUSUM ``S_t = max(0, S_{t-1} + inc_t)`` run on many columns at once, without
a Python loop over rows (Lindley's recursion in closed form), with the
reference-size discount of :mod:`controllers.detectors.cusum`: a statistic whose
excursion has lasted ``l`` rows alarms above ``h · (1 + l / n_reference)``.
:class:`CusumEngine` is the online form (state carried between batches, restart
after every alarm); :func:`path_maxima` the batch form the calibration runs on
simulated null paths. One module for both, so that a simulated statistic is the
one the detector computes.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from raymedic.errors import DataError

__all__ = ["CHUNK_ROWS", "scan", "CusumEngine", "path_maxima"]

CHUNK_ROWS = 2048
"""Rows scanned at once: the scan is O(rows) per alarm, so an alarm costs at most one chunk's rescan."""


def scan(inc: np.ndarray, s0: np.ndarray, run0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CUSUM ``S_t = max(0, S_{t-1} + inc_t)`` along axis 0, started at ``(s0, run0)``, without a loop.

    With ``W_t = s0 + sum(inc[:t+1])``, Lindley's recursion solves to ``S_t = W_t - min(0, min_{j<=t} W_j)``;
    the run length (rows since ``S`` was last zero) comes from the last row where it was.
    """
    w = np.cumsum(inc, axis=0, dtype=inc.dtype)
    w += s0
    low = np.minimum.accumulate(w, axis=0)
    np.minimum(low, 0.0, out=low)
    s = w - low
    rows = np.arange(1, len(inc) + 1, dtype=np.int64).reshape((-1,) + (1,) * (inc.ndim - 1))
    last = np.maximum.accumulate(np.where(s <= 0.0, rows, 0), axis=0)
    run = np.where(last > 0, rows - last, run0 + rows)
    return s, run


class CusumEngine:
    """Column-wise one-sided CUSUMs with the reference-size discount; alarms reset every column.

    Invariant: only :meth:`feed` and :meth:`reset` change ``_s``/``_run``.
    """

    def __init__(self, thresholds: np.ndarray, n_reference: int) -> None:
        self._h = thresholds.astype(float)
        self._n_ref = float(n_reference)
        self.seen = 0
        self.reset()

    def reset(self) -> None:
        """Every statistic back to zero (after an alarm, or on request); rows seen keep counting."""
        self._s = np.zeros_like(self._h)
        self._run = np.zeros(len(self._h), dtype=np.int64)

    def scores(self) -> np.ndarray:
        """Each statistic over its discounted threshold now (1 alarms)."""
        return self._s / (self._h * (1.0 + self._run / self._n_ref))

    def excursion(self) -> tuple[int, int, float] | None:
        """``(column, first row, score)`` of the running excursion nearest its threshold; None at rest."""
        scores = self.scores()
        c = int(np.argmax(scores))
        if scores[c] <= 0.0:
            return None
        return c, self.seen - int(self._run[c]), float(scores[c])

    def to_dict(self) -> dict[str, Any]:
        """The running statistics as JSON-able lists (a controller checkpoint keeps them)."""
        return {"s": self._s.tolist(), "run": self._run.tolist(), "seen": self.seen}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`to_dict` of an engine with as many statistics."""
        s, run = np.asarray(state["s"], dtype=float), np.asarray(state["run"], dtype=np.int64)
        if s.shape != self._h.shape or run.shape != self._h.shape:
            raise DataError(f"a checkpoint of {len(s)} statistics does not fit a detector of {len(self._h)}")
        self._s, self._run, self.seen = s, run, int(state["seen"])

    def feed(self, inc: np.ndarray) -> Iterator[tuple[int, int, int, float]]:
        """Yield ``(row, column, change_row, score)`` per alarm, rows counted since construction.

        Rows after an alarm are scanned again from the reset; under a change that persists, alarms come
        every few rows, so the next chunk is only twice the distance between the last two alarms.
        """
        start, n, size = 0, len(inc), CHUNK_ROWS
        while start < n:
            stop = min(n, start + size)
            s, run = scan(inc[start:stop], self._s, self._run)
            score = s / (self._h * (1.0 + run / self._n_ref))
            crossed = (score > 1.0).any(axis=1)
            if crossed.any():
                r = int(np.argmax(crossed))
                c = int(np.argmax(score[r]))
                row = self.seen + start + r
                yield row, c, row - int(run[r, c]) + 1, float(score[r, c])
                self.reset()
                start += r + 1
                size = min(CHUNK_ROWS, max(64, 2 * (r + 1)))
            else:
                self._s, self._run = s[-1].astype(float), run[-1].copy()
                start = stop
                size = min(CHUNK_ROWS, 2 * size)
        self.seen += n


def path_maxima(inc: np.ndarray, n_reference: int) -> np.ndarray:
    """``(rows, paths, stats)`` increments → the largest discounted statistic per (path, stat).

    :func:`scan` from zero, in place and in float32: calibration scans hundreds of millions of cells.
    """
    s = np.cumsum(inc, axis=0, dtype=np.float32)
    low = np.minimum.accumulate(s, axis=0)
    np.minimum(low, 0.0, out=low)
    s -= low
    rows = np.arange(1, len(inc) + 1, dtype=np.float32).reshape((-1,) + (1,) * (inc.ndim - 1))
    last = np.where(s <= 0.0, rows, np.float32(0.0))  # exact: row numbers < 2**24
    np.maximum.accumulate(last, axis=0, out=last)
    np.subtract(rows, last, out=last)  # the run length
    last *= np.float32(1.0 / n_reference)
    last += np.float32(1.0)
    s /= last
    return s.max(axis=0)

