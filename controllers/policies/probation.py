"""A promoted version's probation on every live signal, and where a rollback goes (pure: no Ray).

A gate judges a challenger on a holdout of a few hundred rows; a live trial on a
small share of traffic. Neither sees everything production does: a version that
raises on rare inputs, or is slower under real load, only shows it once it serves
everyone. So a promoted version stays on probation and is compared, signal by
signal, with **what the champion it replaced did live** (its member calls over the
last ``baseline_window_s`` before the swap, kept by :class:`ChampionWindow`):

- **error rate**: its failed member calls (the replica raised, died, timed out)
  against the champion's failure rate, by an exact one-sided binomial test at
  ``error_alpha`` — and the rise must be at least ``error_rate_margin``, so a
  significant but harmless 0.1 % → 0.3 % does not flap versions;
- **p99 latency**: its p99 over ``max_latency_ratio`` times the champion's and
  at least ``latency_min_increase_ms`` above it, both over ``min_calls`` calls;
- **accuracy**: as before, the playbook's Wilson bound against the gate's promise
  (:meth:`controllers.policies.playbook.Playbook.check_probation`).

A regression rolls the member back to :func:`best_healthy_version`: among the
member's recent champions, never one that failed a probation (the registry's alias
history says which) nor one rolled back by hand and not trusted since, the best by
its gate/holdout score, the newest on a tie — not blindly the ``previous`` alias,
which may be the very version that failed last time.

The trial's length follows from its share of traffic (:func:`trial_length_s`): at
5 % of requests a trial needs twenty times longer to collect its labels than at 100 %.

>>> base = CallSample(ok=990, failed=10, latencies=[0.010] * 1000)
>>> bad = CallSample(ok=180, failed=20, latencies=[0.011] * 200)
>>> cfg = ProbationConfig()
>>> error_regression(bad, base, cfg).detail
'failed calls 20/200 (10.0%) vs champion 1.1% (one-sided p = 1.6e-13, alpha 0.01, margin 2.0%)'
>>> latency_regression(bad, base, cfg) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from raymedic.config import ProbationConfig, RolloutConfig

__all__ = ["CallSample", "ChampionWindow", "Signal", "Regression", "error_regression", "latency_regression",
           "call_regressions", "VersionRecord", "best_healthy_version", "version_records", "trial_length_s",
           "LATENCIES_KEPT", "PROBATION_FAILED"]

LATENCIES_KEPT = 2000
"""Latencies kept per sample (the newest): a p99 over 2,000 calls is stable, and memory stays bounded."""
PROBATION_FAILED = "probation-failed"
"""The registry's alias-history action of an automatic rollback: the version it moved away from failed."""
_FAILED = ("error", "dead", "timeout")
"""The member-call outcomes counted as failures (a hedged call is only slower; its latency counts elsewhere)."""


class Signal(StrEnum):
    """The live signal a probation or a trial judged."""

    ACCURACY = "accuracy"
    ERROR_RATE = "error_rate"
    LATENCY_P99 = "latency_p99"


@dataclass
class CallSample:
    """One version's member calls: how many succeeded and failed, and the newest latencies of the successes."""

    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, *, ok: int = 0, failed: int = 0, latencies: Iterable[float] = ()) -> None:
        """More calls (latencies: of successful calls; the newest ``LATENCIES_KEPT`` are kept)."""
        self.ok += int(ok)
        self.failed += int(failed)
        lat = [float(x) for x in latencies]
        if lat:
            self.latencies = (self.latencies + lat)[-LATENCIES_KEPT:]

    @property
    def calls(self) -> int:
        """Calls counted."""
        return self.ok + self.failed

    def p99_s(self) -> float | None:
        """The 99th percentile of the latencies kept (None without any)."""
        return float(np.quantile(self.latencies, 0.99)) if self.latencies else None

    def summary(self) -> dict[str, Any]:
        """Counts, failure rate and p99 in ms, for the status and the audit."""
        p99 = self.p99_s()
        return {"calls": self.calls, "failed": self.failed,
                "error_rate": round(self.failed / self.calls, 4) if self.calls else None,
                "p99_ms": round(p99 * 1000, 2) if p99 is not None else None, "latencies": len(self.latencies)}

    def to_dict(self) -> dict[str, Any]:
        """For the checkpoint (read back by :meth:`from_dict`)."""
        return {"ok": self.ok, "failed": self.failed, "latencies": [round(x, 5) for x in self.latencies]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "CallSample":
        """Read a sample back (None or {}: an empty one)."""
        d = d or {}
        return cls(int(d.get("ok", 0)), int(d.get("failed", 0)), [float(x) for x in d.get("latencies") or ()])

    @classmethod
    def of_report(cls, report: Mapping[str, Any]) -> "CallSample":
        """One gateway's report of one replica (``batch["replicas"][key]``) as a sample."""
        return cls(int(report.get("ok", 0)), sum(int(report.get(o, 0)) for o in _FAILED),
                   [float(x) for x in report.get("latencies") or ()])


class ChampionWindow:
    """Each member's recent calls of the version serving it, so a promotion can take the champion's baseline.

    Fed per sync batch (``add``); a member whose serving version changes starts over (the new version's
    calls are not its predecessor's baseline). Not checkpointed: a restarted controller rebuilds it within
    a window of traffic, and a promotion before that simply has no call baseline (only accuracy is judged).

    >>> w = ChampionWindow(window_s=60.0)
    >>> w.add("mlp", "v1", CallSample(ok=9, failed=1), now=0.0)
    >>> w.add("mlp", "v1", CallSample(ok=10), now=30.0)
    >>> w.baseline("mlp", now=70.0).summary()["calls"]  # the first batch left the window
    10
    >>> w.add("mlp", "v2", CallSample(ok=5), now=71.0); w.baseline("mlp", now=71.0).calls
    5
    """

    def __init__(self, *, window_s: float) -> None:
        self.window_s = window_s
        self._chunks: dict[str, tuple[str, list[tuple[float, CallSample]]]] = {}

    def add(self, member: str, version: str, sample: CallSample, *, now: float) -> None:
        """One batch of ``member``'s calls while ``version`` served it."""
        served, chunks = self._chunks.get(member, (version, []))
        if served != version:
            chunks = []
        chunks.append((now, sample))
        self._chunks[member] = (version, [(t, s) for t, s in chunks if now - t <= self.window_s])

    def baseline(self, member: str, *, now: float) -> CallSample:
        """``member``'s calls over the window up to ``now`` (empty when none)."""
        out = CallSample()
        for t, s in self._chunks.get(member, ("", []))[1]:
            if now - t <= self.window_s:
                out.add(ok=s.ok, failed=s.failed, latencies=s.latencies)
        return out


@dataclass(frozen=True)
class Regression:
    """A significant regression of one signal: the evidence an automatic rollback is audited with."""

    signal: Signal
    value: float
    baseline: float
    threshold: float
    n: int
    detail: str
    p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """For the audit record and the rollback's reason."""
        return {"signal": str(self.signal), "value": round(self.value, 5), "baseline": round(self.baseline, 5),
                "threshold": round(self.threshold, 5), "n": self.n, "detail": self.detail,
                **({"p_value": float(f"{self.p_value:.3g}")} if self.p_value is not None else {})}


def error_regression(candidate: CallSample, baseline: CallSample, cfg: ProbationConfig, *,
                     alpha: float | None = None) -> Regression | None:
    """The candidate fails significantly more often than the baseline did (None: not, or too few calls).

    The baseline's rate is smoothed by one failure and one success (Laplace): a champion with no failure in
    300 calls has not shown a failure rate of zero, and a test against zero would call one failure a regression.
    """
    n = candidate.calls
    if n < cfg.min_calls or baseline.calls < cfg.min_calls:
        return None
    p0 = (baseline.failed + 1) / (baseline.calls + 2)
    rate = candidate.failed / n
    alpha = cfg.error_alpha if alpha is None else alpha
    if rate - p0 < cfg.error_rate_margin:
        return None
    p = float(stats.binomtest(candidate.failed, n, p0, alternative="greater").pvalue)
    if p >= alpha:
        return None
    return Regression(Signal.ERROR_RATE, rate, p0, p0 + cfg.error_rate_margin, n,
                      f"failed calls {candidate.failed}/{n} ({rate:.1%}) vs champion {p0:.1%} "
                      f"(one-sided p = {p:.2g}, alpha {alpha:g}, margin {cfg.error_rate_margin:.1%})", p)


def latency_regression(candidate: CallSample, baseline: CallSample, cfg: ProbationConfig, *,
                       max_ratio: float | None = None) -> Regression | None:
    """The candidate's p99 is above the baseline's times ``max_latency_ratio`` and by at least
    ``latency_min_increase_ms`` (None: not, or fewer than ``min_calls`` latencies on either side)."""
    if len(candidate.latencies) < cfg.min_calls or len(baseline.latencies) < cfg.min_calls:
        return None
    ratio_max = cfg.max_latency_ratio if max_ratio is None else max_ratio
    p99, p99_0 = candidate.p99_s() or 0.0, baseline.p99_s() or 0.0
    limit = max(p99_0 * ratio_max, p99_0 + cfg.latency_min_increase_ms / 1000)
    if p99 <= limit:
        return None
    return Regression(Signal.LATENCY_P99, p99 * 1000, p99_0 * 1000, limit * 1000, len(candidate.latencies),
                      f"p99 {p99 * 1000:.1f} ms over {len(candidate.latencies)} calls vs champion "
                      f"{p99_0 * 1000:.1f} ms (limit ×{ratio_max:g} and +{cfg.latency_min_increase_ms:g} ms: "
                      f"{limit * 1000:.1f} ms)")


def call_regressions(candidate: CallSample, baseline: CallSample, cfg: ProbationConfig, *,
                     alpha: float | None = None, max_ratio: float | None = None) -> list[Regression]:
    """Every call signal (error rate, p99) on which the candidate regressed."""
    return [r for r in (error_regression(candidate, baseline, cfg, alpha=alpha),
                        latency_regression(candidate, baseline, cfg, max_ratio=max_ratio)) if r is not None]


# ---- where a rollback goes -----------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRecord:
    """One version of a member as the registry's history tells it (see :func:`version_records`)."""

    version: str
    created_at: float
    score: float | None  # its gate/holdout accuracy when registered (None: unknown)
    last_champion_at: float | None  # when it last became champion (None: never was)
    failed_probation: bool = False  # an automatic rollback moved away from it once: never again
    rolled_back: bool = False  # it last stopped being champion through a rollback (an operator's)
    schema: str | None = None


def version_records(versions: Sequence[Mapping[str, Any]], moves: Sequence[Mapping[str, Any]]
                    ) -> list[VersionRecord]:
    """The records of a member's ``versions`` (``{"version", "created_at", "metadata"}``) from its alias
    history (``{"at", "action", "alias", "from_version", "to_version"}``, oldest first).

    >>> vs = [{"version": "v1", "created_at": 1.0, "metadata": {"metrics": {"accuracy": 0.8}}},
    ...       {"version": "v2", "created_at": 2.0, "metadata": {"metrics": {"val_accuracy": 0.9}}}]
    >>> mv = [{"at": 1, "action": "promote", "alias": "champion", "from_version": None, "to_version": "v1"},
    ...       {"at": 2, "action": "promote", "alias": "champion", "from_version": "v1", "to_version": "v2"},
    ...       {"at": 3, "action": "probation-failed", "alias": "champion", "from_version": "v2", "to_version": "v1"}]
    >>> [(r.version, r.score, r.last_champion_at, r.failed_probation) for r in version_records(vs, mv)]
    [('v1', 0.8, 3.0, False), ('v2', 0.9, 2.0, True)]
    """
    became: dict[str, float] = {}
    left_by: dict[str, str] = {}
    failed: set[str] = set()
    for m in moves:
        if m.get("alias") != "champion":
            continue
        if m.get("from_version"):
            left_by[m["from_version"]] = str(m.get("action"))
            if m.get("action") == PROBATION_FAILED:
                failed.add(m["from_version"])
        if m.get("to_version"):
            became[m["to_version"]] = float(m.get("at") or 0.0)
            left_by.pop(m["to_version"], None)
    out = []
    for v in versions:
        meta = v.get("metadata") or {}
        metrics = meta.get("metrics") or {}
        score = metrics.get("val_accuracy", metrics.get("accuracy"))
        name = str(v["version"])
        out.append(VersionRecord(name, float(v.get("created_at") or 0.0),
                                 float(score) if score is not None else None, became.get(name),
                                 failed_probation=name in failed, rolled_back=left_by.get(name) == "rollback",
                                 schema=meta.get("schema")))
    return out


def best_healthy_version(records: Sequence[VersionRecord], *, failing: str, history: int,
                         schema: str | None = None) -> tuple[VersionRecord | None, str]:
    """Where ``failing`` rolls back to, and why (None: nowhere healthy).

    The candidates are the ``history`` most recent champions of the member (a version that served
    as champion was healthy live once; one that never did is a challenger nobody vetted) other than
    ``failing``, that can serve the same requests (``schema``), and that are still healthy: never
    failed a probation, and did not last leave the champion through an operator's rollback. Of those,
    the best gate/holdout score wins, the newest champion on a tie.

    >>> rs = [VersionRecord("v1", 1, 0.80, 1.0), VersionRecord("v2", 2, 0.90, 2.0, failed_probation=True),
    ...       VersionRecord("v3", 3, 0.85, 3.0), VersionRecord("v4", 4, 0.95, 4.0)]
    >>> best, why = best_healthy_version(rs, failing="v4", history=5)
    >>> best.version, why
    ('v3', 'best score 0.850 of 2 healthy recent champions (excluded: v2 failed probation)')
    """
    champions = sorted((r for r in records if r.last_champion_at is not None and r.version != failing),
                       key=lambda r: r.last_champion_at or 0.0, reverse=True)[:history]
    excluded = []
    healthy = []
    for r in champions:
        if r.failed_probation:
            excluded.append(f"{r.version} failed probation")
        elif r.rolled_back:
            excluded.append(f"{r.version} was rolled back")
        elif schema is not None and r.schema is not None and r.schema != schema:
            excluded.append(f"{r.version} has another schema")
        else:
            healthy.append(r)
    note = f" (excluded: {', '.join(excluded)})" if excluded else ""
    if not healthy:
        return None, f"no healthy recent champion among {len(champions)}{note}"
    best = max(healthy, key=lambda r: (r.score if r.score is not None else -1.0, r.last_champion_at or 0.0))
    score = f"{best.score:.3f}" if best.score is not None else "unknown"
    return best, f"best score {score} of {len(healthy)} healthy recent champions{note}"


def trial_length_s(cfg: RolloutConfig, *, share: float, label_rate: float | None) -> float:
    """How long a trial on ``share`` of requests runs before it times out: ``length_factor`` times the time
    its ``min_labels`` paired labels take at the observed ``label_rate`` (labels per second on the whole
    traffic), within ``[min_length_s, timeout_s]``; the cap when no label has been seen.

    >>> cfg = RolloutConfig(share=0.05, min_labels=100)
    >>> trial_length_s(cfg, share=0.05, label_rate=10.0)   # 100 / (0.05 × 10) = 200 s, × 3
    600.0
    >>> trial_length_s(cfg, share=0.05, label_rate=0.1), trial_length_s(cfg, share=0.05, label_rate=None)
    (1800.0, 1800.0)
    """
    if not label_rate or label_rate <= 0:
        return cfg.timeout_s
    needed = cfg.min_labels / (share * label_rate)
    return float(min(cfg.timeout_s, max(cfg.min_length_s, cfg.length_factor * needed)))
