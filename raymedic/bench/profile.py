"""``raymedic bench saturation --profile``: where one request's time goes, beside plain Serve's latency.

With ``gateway.profile`` on, each raymedic answer carries its stages' times in its
``Server-Timing`` header (:mod:`serve_apps.stages`); the load generator keeps the
header of every sample, and this module turns a rate's samples into one row per stage
(mean, p50 and p99 in µs, and the stage's share of the mean end-to-end latency the
client saw), with what lies outside the gateway's handler (HTTP, Serve's proxy and
ingress call, FastAPI's routing) as the client's latency less the handler's total.
Plain Serve's latency for the same members at the same rate in the same run stands
under it. Pure: samples in, figures out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from raymedic.bench.loadgen import Sample
from raymedic.bench.report import ratio
from serve_apps.stages import TOTAL, parse_server_timing

__all__ = ["E2E", "OUTSIDE", "ROWS", "format_profile", "latency_stats", "stage_profile"]

E2E = "end_to_end"
"""The latency the client measured (its send to the answer's last byte)."""
OUTSIDE = "outside_handler"
"""The client's latency less the gateway handler's total: HTTP, Serve's proxy and ingress call, routing."""
ROWS: tuple[tuple[str, str, int], ...] = (
    (E2E, "client end to end", 0),
    (OUTSIDE, "outside the handler (HTTP, proxy, Serve, routing)", 1),
    (TOTAL, "gateway handler", 1),
    ("parse", "parse (read + JSON decode)", 2),
    ("validate", "validate", 2),
    ("fanout", "fan-out (all members)", 2),
    ("fanout_wait", "coalescing wait + gather", 3),
    ("member_call", "slowest member call (handle round trip)", 3),
    ("member_transport", "routing + transport + queue", 4),
    ("member_infer", "in-replica predict_proba", 4),
    ("combine", "combine", 2),
    ("log", "log (ids, records, answers kept)", 2),
    ("telemetry", "telemetry (tally, metrics, SLO)", 2),
    ("encode", "encode (answer JSON)", 2),
)
"""The table's rows: key, label, indentation level (a row is part of the last row one level up)."""


def latency_stats(values_us: Sequence[float]) -> dict[str, float | None]:
    """Mean, p50 and p99 of ``values_us`` (µs, rounded to 0.1), all None when there are none.

    >>> latency_stats([100.0, 200.0, 300.0])
    {'mean_us': 200.0, 'p50_us': 200.0, 'p99_us': 298.0}
    """
    if not len(values_us):
        return {"mean_us": None, "p50_us": None, "p99_us": None}
    a = np.asarray(values_us, dtype=float)
    return {"mean_us": round(float(a.mean()), 1), "p50_us": round(float(np.percentile(a, 50)), 1),
            "p99_us": round(float(np.percentile(a, 99)), 1)}


def _spans_us(sample: Sample) -> dict[str, float] | None:
    """One answered sample's figures in µs, derived rows included (None: no profile header)."""
    ms = parse_server_timing(sample.server_timing)
    if TOTAL not in ms:
        return None
    us = {k: v * 1000.0 for k, v in ms.items()}
    us[E2E] = sample.latency_s * 1e6
    us[OUTSIDE] = us[E2E] - us[TOTAL]
    if "fanout" in us and "member_call" in us:
        us["fanout_wait"] = us["fanout"] - us["member_call"]
        if "member_infer" in us:
            us["member_transport"] = us["member_call"] - us["member_infer"]
    return us


def stage_profile(samples: Sequence[Sample]) -> dict[str, Any]:
    """Per row of :data:`ROWS`, the stats of the answered samples that carry a profile, and each row's
    share of the mean end-to-end latency; ``requests`` counts those samples.

    Every stage of :data:`serve_apps.stages.STAGES` is there (None figures for one never marked); the
    stages of the handler add up to at most its total, which is at most the end-to-end latency.
    """
    rows = [sp for s in samples if s.ok and (sp := _spans_us(s)) is not None]
    out: dict[str, Any] = {"requests": len(rows), "stages": {}}
    for key, _, _ in ROWS:
        stats: dict[str, Any] = latency_stats([r[key] for r in rows if key in r])
        out["stages"][key] = stats
    e2e = out["stages"][E2E]["mean_us"]
    for stats in out["stages"].values():
        stats["share"] = round(stats["mean_us"] / e2e, 3) if e2e and stats["mean_us"] is not None else None
    return out


def _cell(v: Any) -> str:
    return "-" if v is None else f"{v:.0f}"


def format_profile(rps: float, profile: dict[str, Any], plain: dict[str, Any] | None) -> str:
    """One rate's profile as a table: a row per stage (µs: mean, p50, p99; share of the mean end to end),
    then plain Serve's end to end at the same rate and the p50/p99 ratios.

    Args:
        rps: the rate.
        profile: :func:`stage_profile`'s figures for raymedic.
        plain: plain Serve's :func:`latency_stats` at the same rate (None: not run).
    """
    st = profile["stages"]
    lines = [f"{rps:.0f} req/s: raymedic per stage, {profile['requests']} answered requests (µs)",
             f"{'stage':<54} {'mean':>8} {'p50':>8} {'p99':>8} {'share':>7}"]
    for key, label, level in ROWS:
        s = st.get(key) or {}
        share = "" if s.get("share") is None else f"{100 * s['share']:.1f}%"
        lines.append(f"{'  ' * level + label:<54} {_cell(s.get('mean_us')):>8} {_cell(s.get('p50_us')):>8} "
                     f"{_cell(s.get('p99_us')):>8} {share:>7}")
    if plain is not None:
        lines.append(f"{'plain Serve end to end (same members, same run)':<54} {_cell(plain.get('mean_us')):>8} "
                     f"{_cell(plain.get('p50_us')):>8} {_cell(plain.get('p99_us')):>8}")
        e2e = st.get(E2E) or {}
        lines.append(f"raymedic / plain Serve: p50 {ratio(e2e.get('p50_us'), plain.get('p50_us'))}, "
                     f"p99 {ratio(e2e.get('p99_us'), plain.get('p99_us'))}, mean "
                     f"{ratio(e2e.get('mean_us'), plain.get('mean_us'))}")
    return "\n".join(lines)
