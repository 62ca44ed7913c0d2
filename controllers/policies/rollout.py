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
  often, or the trial times out;
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

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from scipy import stats

from raymedic.config import RolloutConfig

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
        """The counts and accuracies, for the checkpoint and the status."""
        return {**asdict(self), "labels": self.labels, "challenger_accuracy": self.challenger_accuracy,
                "champion_accuracy": self.champion_accuracy}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PairTally":
        """Read the counts back (derived keys are ignored)."""
        return cls(**{k: int(d.get(k, 0)) for k in cls.__dataclass_fields__})


def judge_member(t: PairTally, cfg: RolloutConfig, *, elapsed_s: float) -> tuple[str, str] | None:
    """``("promote" | "reject", why)`` for one member's trial, or None to keep collecting."""
    calls = t.calls_ok + t.calls_failed
    if calls >= MIN_CALLS_FOR_ERROR_RATE and t.calls_failed / calls > cfg.max_error_rate:
        return "reject", f"challenger calls failing: {t.calls_failed}/{calls}"
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
    if elapsed_s > cfg.timeout_s:
        return "reject", f"trial timed out after {elapsed_s:.0f} s with {n} paired labels (need {cfg.min_labels})"
    return None
