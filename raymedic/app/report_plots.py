"""The report's plots: matplotlib (Agg, no display) figures of the controller's series, as PNG bytes.

Each function takes plain rows (:mod:`controllers.series`) and returns a PNG, or None
when the rows hold nothing for that plot (a model with no labels has no accuracy
curve). Times are drawn as seconds relative to the window's start, with vertical
markers for the incidents' steps.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI toolkit, same output everywhere

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["accuracy", "distribution", "latency", "traffic", "weights"]

Marks = Sequence[tuple[float, str]]
_SIZE = (10.0, 3.0)
_DPI = 90
_MARK_COLORS = {"detected": "#d9480f", "recovered": "#2b8a3e"}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _axes(title: str, ylabel: str) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=_SIZE)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _x(rows: Sequence[dict[str, Any]], start: float) -> list[float]:
    return [(float(r["ts"]) + float(r.get("bucket_s", 0)) / 2 - start) / 60.0 for r in rows]


def _finish(ax: Any, *, marks: Marks, start: float, end: float) -> None:
    """Markers for the incidents' steps, the window's x range, and the x axis in minutes from its start."""
    for ts, label in marks:
        if start <= ts <= end:
            color = next((c for k, c in _MARK_COLORS.items() if k in label), "#5f3dc4")
            ax.axvline((ts - start) / 60.0, color=color, lw=1, ls="--", alpha=0.8)
    ax.set_xlim(0, max((end - start) / 60.0, 1 / 60))
    ax.set_xlabel(f"minutes from {datetime.fromtimestamp(start).strftime('%Y-%m-%d %H:%M:%S')}")
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper right", fontsize=8)


def traffic(rows: Sequence[dict[str, Any]], *, marks: Marks, start: float, end: float) -> bytes | None:
    """Requests per second answered, failed (no member answered) and degraded, per bucket."""
    if not rows:
        return None
    x = _x(rows, start)
    per_s = [max(float(r.get("bucket_s") or 1.0), 1e-9) for r in rows]
    fig, ax = _axes("Request rate", "per second")
    ax.plot(x, [r.get("requests", 0) / s for r, s in zip(rows, per_s)], label="answered", color="#1c7ed6")
    ax.plot(x, [r.get("failed", 0) / s for r, s in zip(rows, per_s)], label="failed (503)", color="#e03131")
    ax.plot(x, [r.get("degraded", 0) / s for r, s in zip(rows, per_s)], label="degraded", color="#f08c00")
    ax.plot(x, [r.get("member_errors", 0) / s for r, s in zip(rows, per_s)], label="member call errors",
            color="#862e9c", lw=0.8, ls=":")
    _finish(ax, marks=marks, start=start, end=end)
    return _png(fig)


def latency(rows: Sequence[dict[str, Any]], *, marks: Marks, start: float, end: float) -> bytes | None:
    """p50 and p99 latency per bucket (None where no request was answered)."""
    rows = [r for r in rows if r.get("p99_ms") is not None or r.get("p50_ms") is not None]
    if not rows:
        return None
    x = _x(rows, start)
    fig, ax = _axes("Latency", "ms")
    ax.plot(x, [r.get("p50_ms") for r in rows], label="p50", color="#1c7ed6")
    ax.plot(x, [r.get("p99_ms") for r in rows], label="p99", color="#e03131")
    _finish(ax, marks=marks, start=start, end=end)
    return _png(fig)


def weights(rows: Sequence[dict[str, Any]], *, marks: Marks, start: float, end: float) -> bytes | None:
    """Each member's ensemble weight per bucket."""
    rows = [r for r in rows if r.get("weights")]
    if not rows:
        return None
    members = sorted({m for r in rows for m in r["weights"]})
    x = _x(rows, start)
    fig, ax = _axes("Ensemble weights", "weight")
    for m in members:
        ax.step(x, [r["weights"].get(m) for r in rows], where="mid", label=m)
    ax.set_ylim(-0.02, 1.02)
    _finish(ax, marks=marks, start=start, end=end)
    return _png(fig)


def accuracy(rows: Sequence[dict[str, Any]], *, marks: Marks, start: float, end: float) -> bytes | None:
    """Labelled accuracy (the monitor's window, and each bucket's labels) against the label-free estimate."""
    if not any(r.get("labels") or r.get("window_accuracy") is not None or r.get("estimate") is not None
               for r in rows):
        return None
    fig, ax = _axes("Accuracy", "share right")
    x = _x(rows, start)
    ax.plot(x, [r.get("window_accuracy") for r in rows], label="live, labelled (monitor window)", color="#2b8a3e")
    ax.plot(x, [r.get("estimate") for r in rows], label="label-free estimate", color="#5f3dc4", ls="--")
    labelled = [(xi, r["correct"] / r["labels"]) for xi, r in zip(x, rows) if r.get("labels")]
    if labelled:
        ax.scatter([a for a, _ in labelled], [b for _, b in labelled], s=8, color="#2b8a3e", alpha=0.35,
                   label="labels in the bucket")
    ax.set_ylim(-0.02, 1.02)
    _finish(ax, marks=marks, start=start, end=end)
    return _png(fig)


def distribution(row: dict[str, Any]) -> bytes | None:
    """A drifting feature's training distribution against its window at detection (shares per bin)."""
    ref, win = row.get("reference") or [], row.get("window") or []
    if not ref or len(ref) != len(win):
        return None
    fig, ax = _axes(f"{row['feature']}: training vs window", "share of rows")
    if row.get("numeric"):
        edges = row["edges"]
        mids = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        width = (edges[1] - edges[0]) if len(edges) > 1 else 1.0
        ax.bar(mids, ref, width=width, alpha=0.5, label=f"training ({row.get('reference_n', '?')} rows)",
               color="#1c7ed6")
        ax.bar(mids, win, width=width, alpha=0.5, label=f"window ({row.get('window_n', '?')} rows)", color="#e03131")
        ax.set_xlabel(str(row["feature"]))
    else:
        idx = list(range(len(ref)))
        ax.bar([i - 0.2 for i in idx], ref, width=0.4, label="training", color="#1c7ed6")
        ax.bar([i + 0.2 for i in idx], win, width=0.4, label=f"window ({row.get('window_n', '?')} rows)",
               color="#e03131")
        ax.set_xticks(idx, [str(n) for n in (row.get("levels") or idx)], rotation=30, fontsize=8)
    ev = row.get("evidence") or {}
    stats = ", ".join(f"{k} {ev[k]:.3g}" for k in ("psi", "p_adjusted", "wasserstein_sd", "js")
                      if isinstance(ev.get(k), (int, float)))
    if stats:
        ax.set_title(f"{row['feature']}: training vs window ({stats})", fontsize=10, loc="left")
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)
