"""Windowed MMD² against a reference sample, and its threshold by seeded simulation (pure NumPy).

The maximum mean discrepancy (Gretton et al. 2012) with a Gaussian kernel is a
two-sample test on every feature of a distribution at once: zero exactly when the
two laws are equal, and it sees a change of the joint law (a class-mix shift moves
the mixture, not one coordinate) as well as of one coordinate. Live rows (already
projected, :mod:`train_jobs.projection`) fill a sliding window of ``window``
rows; every ``step`` rows the unbiased MMD² between the window and the reference
sample is computed:

``MMD² = mean_{i≠j} k(w_i, w_j) + mean_{i≠j} k(r_i, r_j) − 2 mean_{i,j} k(w_i, r_j)``,

with ``k(x, y) = exp(-|x − y|² / (2σ²))`` and ``σ`` the median distance between
reference rows (the median heuristic), fixed when the model is trained.

**Incremental and shared.** A window's within-sum is read off lag diagonals: for
each lag ``L < window`` the kernel between every row and the row ``L`` before it,
cumulated, gives any window's pairs at that lag by a difference. A row costs
``window`` kernel values and one row of the cross kernel with the reference,
whatever the batch sizes; :func:`window_mmd2` is the one arithmetic that the live
detector (:class:`WindowMmd`) and the simulation (:func:`calibrate_mmd`) both run.

**Threshold.** Seeded null paths are drawn from rows *held out* of the reference
sample (training rows the reference does not hold), by resampling: the statistic's
null law given this very reference, its own sampling error included. Resampling
puts the same row twice in a window, which a live stream of distinct inputs does
not; a repeated pair is scored at the row's mean kernel with the other held-out
rows (what a fresh draw would score on average), so repeats do not inflate the
statistic. The held-out rows are themselves a sample: taken as the live population,
they would leave out how far the population may be from them (and a window test
on a population offset from the reference, however slightly, alarms far more
often than on average). So each path first resamples its own population from the
held-out rows (a bootstrap of the held-out set), then its stream from that: the
paths cover live populations as far from the held-out rows as another sample of
that size would be. The threshold is the level the paths' largest MMD² exceeds at
``false_alarms_per_10k`` (:func:`train_jobs.tails.tail_level`).

>>> rng = np.random.default_rng(0)
>>> ref, pool = rng.standard_normal((500, 3)), rng.standard_normal((1_000, 3))
>>> cal = calibrate_mmd(ref, pool, window=100, step=10, false_alarms_per_10k=5.0, paths=100, rows_per_path=1_000)
>>> detector = WindowMmd(ref, bandwidth=cal.bandwidth, window=100, step=10)
>>> bool((detector.feed(rng.standard_normal((300, 3)))[1] > cal.threshold).any())
False
>>> ends, stat = detector.feed(rng.standard_normal((300, 3)) + [0.5, 0.0, 0.0])
>>> bool((stat > cal.threshold).any()), int(ends[np.argmax(stat > cal.threshold)]) - 300 < 150
(True, True)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raymedic.errors import DataError
from train_jobs.tails import exceed_probability, tail_level

__all__ = ["MmdCalibration", "WindowMmd", "calibrate_mmd", "gaussian_kernel", "median_bandwidth", "window_mmd2"]

CHUNK_ROWS = 1024
"""New rows per kernel block in :class:`WindowMmd`: a block's lag diagonals stay a few MB."""
SIM_CELLS = 200_000
"""Simulated rows × paths per block: a lag diagonal of a block stays under a MB."""
BANDWIDTH_ROWS = 1000
"""Reference rows the median heuristic looks at (half a million distances: the median is settled)."""


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0, out=d)


def gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """``exp(-|a_i − b_j|² / (2 bandwidth²))`` for every pair of rows, ``(len(a), len(b))``, in their dtype."""
    d = _sq_dists(a, b)
    d *= d.dtype.type(-1.0 / (2.0 * bandwidth * bandwidth))
    return np.exp(d, out=d)


def median_bandwidth(reference: np.ndarray) -> float:
    """The median heuristic: the median distance between distinct reference rows (at most 1,000 rows)."""
    r = np.asarray(reference, dtype=float)[:BANDWIDTH_ROWS]
    d = _sq_dists(r, r)[np.triu_indices(len(r), 1)]
    med = float(np.sqrt(np.median(d)))
    if not med > 0:
        raise DataError("the reference rows are (almost) all identical: the MMD's kernel needs spread")
    return med


def _kernel_mean_offdiag(gram: np.ndarray) -> float:
    n = len(gram)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def window_mmd2(band: Iterable[np.ndarray], cross: np.ndarray, ends: np.ndarray, window: int,
                k_rr: float) -> np.ndarray:
    """Unbiased MMD² of the windows of ``window`` consecutive rows ending at ``ends``.

    Args:
        band: The lag diagonals, ``L = 1 … window - 1`` in order (an iterable: a simulation makes each only
            when it is summed): ``[..., j]`` = kernel between rows ``j + L`` and ``j`` of a run of ``m`` rows
            (shape ``(..., m - L)``; a leading axis holds simulated paths).
        cross: ``(..., m)`` each row's mean kernel with the reference rows.
        ends: Positions (``window - 1 <= end < m``) of the windows' last rows.
        window: Rows per window.
        k_rr: Mean kernel between distinct reference rows.
    """
    lead = cross.shape[:-1]
    start = ends - window + 1
    pairs = np.zeros(lead + (len(ends),))
    for lag, h in zip(range(1, window), band):
        c = np.zeros(lead + (h.shape[-1] + 1,))
        np.cumsum(h, axis=-1, out=c[..., 1:])
        pairs += c[..., ends - lag + 1] - c[..., start]
    cc = np.zeros(lead + (cross.shape[-1] + 1,))
    np.cumsum(cross, axis=-1, out=cc[..., 1:])
    within = 2.0 * pairs / (window * (window - 1))
    return within + k_rr - 2.0 * (cc[..., ends + 1] - cc[..., start]) / window


@dataclass(frozen=True)
class MmdCalibration:
    """The windowed MMD's design and threshold, as the reference document stores it (:meth:`to_dict`)."""

    bandwidth: float
    window: int
    step: int
    threshold: float
    k_rr: float
    false_alarms_per_10k: float
    paths: int
    rows_per_path: int
    held_out_rows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MmdCalibration:
        """Read back what :meth:`to_dict` stored (KeyError/TypeError/ValueError when malformed)."""
        return cls(bandwidth=float(d["bandwidth"]), window=int(d["window"]), step=int(d["step"]),
                   threshold=float(d["threshold"]), k_rr=float(d["k_rr"]),
                   false_alarms_per_10k=float(d["false_alarms_per_10k"]), paths=int(d["paths"]),
                   rows_per_path=int(d["rows_per_path"]), held_out_rows=int(d["held_out_rows"]),
                   seconds=float(d.get("seconds", 0.0)))


def _check_design(window: int, step: int, n_reference: int) -> None:
    if not 10 <= window <= 2_000:
        raise DataError(f"the MMD window must be in [10, 2000] rows, got {window}")
    if not 1 <= step <= window:
        raise DataError(f"the MMD step must be in [1, window ({window})] rows, got {step}")
    if n_reference < 50:
        raise DataError(f"the MMD reference needs >= 50 rows, got {n_reference}")


class WindowMmd:
    """The live windowed MMD² of :func:`window_mmd2`: rows in, ``(row index, MMD²)`` of each test out.

    A test runs at every row whose count since construction is a multiple of ``step`` once the window
    holds ``window`` rows. Invariant: only :meth:`feed` and :meth:`reset` change the kept tail.
    """

    def __init__(self, reference: np.ndarray, *, bandwidth: float, window: int, step: int,
                 k_rr: float | None = None) -> None:
        ref = np.asarray(reference, dtype=float)
        _check_design(window, step, len(ref))
        self.reference, self.bandwidth, self.window, self.step = ref, float(bandwidth), int(window), int(step)
        self._ref32 = ref.astype(np.float32)  # the cross kernel, a row × every reference row, in float32: 2× faster
        self.k_rr = _kernel_mean_offdiag(gaussian_kernel(ref, ref, bandwidth)) if k_rr is None else float(k_rr)
        self.seen = 0
        self.reset()

    def reset(self) -> None:
        """Forget the window (after an alarm: the next test waits for ``window`` fresh rows)."""
        self._tail = np.empty((0, self.reference.shape[1]))
        self._tail_cross = np.empty(0)

    def feed(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed projected rows ``(n, d)`` in order; returns the row indices tested and their MMD²."""
        x = np.asarray(rows, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.reference.shape[1]:
            raise DataError(f"expected projected rows of {self.reference.shape[1]} coordinates, got shape "
                            f"{list(x.shape)}")
        out_rows, out_stat = [], []
        for a in range(0, len(x), CHUNK_ROWS):
            chunk = x[a:a + CHUNK_ROWS]
            z = np.concatenate([self._tail, chunk])
            k_cross = gaussian_kernel(chunk.astype(np.float32), self._ref32, self.bandwidth)
            cross = np.concatenate([self._tail_cross, k_cross.mean(axis=1, dtype=np.float64)])
            first = self.seen - len(self._tail)  # row index of z[0]
            pos = np.arange(max(self.window - 1, len(self._tail)), len(z))
            ends = pos[(first + pos + 1) % self.step == 0]
            if len(ends):
                g = 1.0 / (2.0 * self.bandwidth ** 2)
                band = (np.exp(-g * np.sum((z[lag:] - z[:-lag]) ** 2, axis=1))
                        for lag in range(1, min(self.window, len(z))))
                out_rows.append(first + ends)
                out_stat.append(window_mmd2(band, cross, ends, self.window, self.k_rr))
            keep = min(self.window - 1, len(z))
            self._tail, self._tail_cross = z[len(z) - keep:], cross[len(z) - keep:]
            self.seen += len(chunk)
        if not out_rows:
            return np.empty(0, dtype=np.int64), np.empty(0)
        return np.concatenate(out_rows).astype(np.int64), np.concatenate(out_stat)


def calibrate_mmd(reference: np.ndarray, held_out: np.ndarray, *, window: int, step: int,
                  false_alarms_per_10k: float, bandwidth: float | None = None, paths: int = 600,
                  rows_per_path: int = 2_000, seed: int = 0) -> MmdCalibration:
    """Threshold of :class:`WindowMmd` on ``reference`` from null paths resampled from ``held_out``.

    ``held_out`` rows must not be in ``reference`` (rows it holds would look closer to it than fresh
    ones, and the threshold would come out too low). See the module docstring for the simulation.

    Raises:
        DataError: Too few rows, or a design out of range.
    """
    t0 = time.perf_counter()
    ref, pool = np.asarray(reference, dtype=float), np.asarray(held_out, dtype=float)
    _check_design(window, step, len(ref))
    if len(pool) < window:
        raise DataError(f"the MMD calibration needs >= window ({window}) held-out rows, got {len(pool)}: hold "
                        f"more training rows out of the reference sample, or shorten the window")
    if rows_per_path < 2 * window or paths < 50:
        raise DataError(f"the MMD calibration needs paths >= 50 of >= 2 windows of rows, got {paths} of "
                        f"{rows_per_path}")
    bw = median_bandwidth(ref) if bandwidth is None else float(bandwidth)
    k_rr = _kernel_mean_offdiag(gaussian_kernel(ref, ref, bw))
    gram = gaussian_kernel(pool, pool, bw).astype(np.float32)
    n = len(pool)
    np.fill_diagonal(gram, (gram.sum(axis=1) - 1.0) / (n - 1))  # a repeat scores like a fresh draw
    cross_pool = gaussian_kernel(pool, ref, bw).mean(axis=1)
    rng = np.random.default_rng([seed, len(ref), n, window, step])
    pos = np.arange(window - 1, rows_per_path)
    ends = pos[(pos + 1) % step == 0]
    per = max(1, SIM_CELLS // rows_per_path)
    flat = gram.ravel()
    maxima = []
    for a in range(0, paths, per):
        b = min(per, paths - a)
        # Each path's live population is a resample of the held-out rows (see the module docstring).
        population = rng.integers(0, n, (b, n))
        idx = np.take_along_axis(population, rng.integers(0, n, (b, rows_per_path)), axis=1)
        row = idx * n
        band = (np.take(flat, row[:, lag:] + idx[:, :-lag]) for lag in range(1, window))
        maxima.append(window_mmd2(band, cross_pool[idx], ends, window, k_rr).max(axis=1))
    h = tail_level(np.concatenate(maxima), exceed_probability(false_alarms_per_10k, rows_per_path))
    return MmdCalibration(bandwidth=bw, window=window, step=step, threshold=h, k_rr=k_rr,
                          false_alarms_per_10k=false_alarms_per_10k, paths=paths, rows_per_path=rows_per_path,
                          held_out_rows=n, seconds=round(time.perf_counter() - t0, 3))
