"""Live trial of a challenger against the champion on the same requests (pure: no Ray).

A challenger that passed the gate has only been judged on a holdout of a few
hundred recent rows. Before it replaces the champion it answers a share of live
traffic next to the champion (``shadow``: its answers are not returned;
``canary``: they are, in the champion's place), and the two are compared on the
requests that later got a label. Comparing on the *same* requests (paired) keeps
the comparison fair while the stream drifts, and lets an exact test on the
discordant pairs (one right, the other wrong; McNemar's test) decide with far
fewer labels than comparing two separate accuracies.

Per member the verdict is:

- ``reject`` as soon as the challenger is significantly worse (one-sided exact
  binomial test on the discordant pairs at ``alpha``), or its calls fail too
  often (over ``max_error_rate``, or significantly more often than the
  champion's calls of the same period), or its p99 call latency is over
  ``max_latency_ratio`` times the champion's (both over
  ``retraining.probation.min_calls`` calls; see
  :mod:`controllers.policies.probation`), or the trial times out (its length
  follows from its share and the label rate: ``length_s``);
- ``promote`` once ``min_labels`` paired labels are in and the challenger was
  right at least as often as the champion (it already beat it on the holdout;
  the live trial's job is to catch a challenger that does not hold up);
- ``reject`` after ``max_labels`` without such a win; otherwise wait.

>>> t = PairTally()
>>> for champ_ok, chal_ok in [(True, True)] * 80 + [(False, True)] * 15 + [(True, False)] * 5:
...     t.add(champion_correct=champ_ok, challenger_correct=chal_ok)
>>> cfg = RolloutConfig(min_labels=100)
>>> judge_member(t, cfg, elapsed_s=60.0)
('promote', 'challenger right on 95/100 paired labels vs champion 85/100')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from scipy import stats

from controllers.policies.probation import LATENCIES_KEPT, CallSample, call_regressions
from raymedic.config import ProbationConfig, RolloutConfig

__all__ = ["PairTally", "judge_member"]

MIN_CALLS_FOR_ERROR_RATE = 20


@dataclass
class PairTally:
    """Paired outcomes of champion and challenger on labelled requests, and the challenger's calls."""

    both: int = 0
    challenger_only: int = 0
    champion_only: int = 0
    neither: int = 0
    calls_ok: int = 0
    calls_failed: int = 0
    champion_ok: int = 0  # the champion's member calls over the trial (the baseline of the call signals)
    champion_failed: int = 0
    challenger_latencies: list[float] = field(default_factory=list)  # the newest LATENCIES_KEPT of each
    champion_latencies: list[float] = field(default_factory=list)

    def add_calls(self, *, challenger: CallSample | None = None, champion: CallSample | None = None) -> None:
        """Member calls of the challenger and/or of the champion on the same period."""
        if challenger is not None:
            self.calls_ok += challenger.ok
            self.calls_failed += challenger.failed
            self.challenger_latencies = (self.challenger_latencies + challenger.latencies)[-LATENCIES_KEPT:]
        if champion is not None:
            self.champion_ok += champion.ok
            self.champion_failed += champion.failed
            self.champion_latencies = (self.champion_latencies + champion.latencies)[-LATENCIES_KEPT:]

    def samples(self) -> tuple[CallSample, CallSample]:
        """The challenger's and the champion's calls as samples."""
        return (CallSample(self.calls_ok, self.calls_failed, list(self.challenger_latencies)),
                CallSample(self.champion_ok, self.champion_failed, list(self.champion_latencies)))

    def add(self, *, champion_correct: bool, challenger_correct: bool) -> None:
        """One labelled request both answered."""
        if champion_correct and challenger_correct:
            self.both += 1
        elif challenger_correct:
            self.challenger_only += 1
        elif champion_correct:
            self.champion_only += 1
        else:
            self.neither += 1

    @property
    def labels(self) -> int:
        """Paired labelled answers so far."""
        return self.both + self.challenger_only + self.champion_only + self.neither

    @property
    def challenger_accuracy(self) -> float | None:
        """The challenger's accuracy on the pairs (None before any)."""
        return (self.both + self.challenger_only) / self.labels if self.labels else None

    @property
    def champion_accuracy(self) -> float | None:
        """The champion's accuracy on the same pairs (None before any)."""
        return (self.both + self.champion_only) / self.labels if self.labels else None

    def p_worse(self) -> float:
        """P-value of "the challenger is worse": exact one-sided binomial test on discordant pairs."""
        n = self.challenger_only + self.champion_only
        if n == 0:
            return 1.0
        return float(stats.binomtest(self.challenger_only, n, 0.5, alternative="less").pvalue)

    def to_dict(self) -> dict[str, Any]:
        """The counts and accuracies, for the checkpoint and the status (``calls``: both sides' summaries)."""
        chal, champ = self.samples()
        return {**asdict(self), "labels": self.labels, "challenger_accuracy": self.challenger_accuracy,
                "champion_accuracy": self.champion_accuracy,
                "calls": {"challenger": chal.summary(), "champion": champ.summary()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PairTally":
        """Read the counts back (derived keys are ignored; a tally checkpointed before latencies has none)."""
        lists = ("challenger_latencies", "champion_latencies")
        return cls(**{k: int(d.get(k, 0)) for k in cls.__dataclass_fields__ if k not in lists},
                   **{k: [float(x) for x in d.get(k) or ()] for k in lists})


def judge_member(t: PairTally, cfg: RolloutConfig, *, elapsed_s: float, length_s: float | None = None,
                 calls_cfg: ProbationConfig | None = None) -> tuple[str, str] | None:
    """``("promote" | "reject", why)`` for one member's trial, or None to keep collecting.

    ``length_s``: the trial's length (default ``cfg.timeout_s``); ``calls_cfg``: the call signals' minimum
    counts and margins (default :class:`ProbationConfig`'s)."""
    calls = t.calls_ok + t.calls_failed
    if calls >= MIN_CALLS_FOR_ERROR_RATE and t.calls_failed / calls > cfg.max_error_rate:
        return "reject", f"challenger calls failing: {t.calls_failed}/{calls}"
    chal, champ = t.samples()
    worse = call_regressions(chal, champ, calls_cfg or ProbationConfig(), alpha=cfg.alpha,
                             max_ratio=cfg.max_latency_ratio)
    if worse:
        return "reject", "worse than the champion live: " + "; ".join(f"{r.signal}: {r.detail}" for r in worse)
    n = t.labels
    right = f"challenger right on {t.both + t.challenger_only}/{n} paired labels vs champion " \
            f"{t.both + t.champion_only}/{n}"
    p = t.p_worse()
    if n and p < cfg.alpha:
        return "reject", f"worse than the champion live: {right} (one-sided p = {p:.2g})"
    if n >= cfg.min_labels and t.challenger_only >= t.champion_only:
        return "promote", right
    if n >= cfg.max_labels:
        return "reject", f"no live win after {n} paired labels: {right}"
    limit = cfg.timeout_s if length_s is None else length_s
    if elapsed_s > limit:
        return "reject", (f"trial timed out after {elapsed_s:.0f} s (length {limit:.0f} s) with {n} paired labels "
                          f"(need {cfg.min_labels})")
    return None
