"""The model-level healing playbook: when to retrain, what to do with the verdict.

Pure decisions over what the controller observed; the controller performs them
(Ray Jobs submission, registry alias moves, in-place version swaps). Rules:

- Minor drift only warns. Material drift (an ``act`` drift alert) or accuracy
  decay / concept drift with enough recent labels triggers one retraining job.
- With ``search_every_s``, a job that also searches every member's
  hyperparameters runs on that schedule, alerts or not (the clock starts when
  the playbook first runs and restarts after each such job).
- At most one job at a time; after a job, a cooldown; after a failed job, an
  exponential backoff. A job that runs past its timeout counts as failed.
- A gated job promotes exactly the members whose challenger passed; a rejected
  challenger is recorded with the gate's reasons and the champion keeps serving.
- With a rollout mode (``rollout.mode``: canary or shadow), members that passed
  the gate first go on a live trial next to their champions (see
  :mod:`controllers.policies.rollout`); only the ones that hold up are promoted, the
  others are dropped with the reason, and the champion serves throughout.
- After a promotion (a live trial's too) the new versions are on probation: if their
  live accuracy on ``probation_labels`` fresh labels falls more than
  ``accuracy_drop`` below the holdout accuracy the gate saw, or their member calls
  fail significantly more often or are slower at p99 than the replaced champion's
  were (:mod:`controllers.policies.probation`), they are rolled back automatically
  (to the best recent healthy version: the healer picks it from the registry).
- In approval mode (``raymedic mode approve``) every automatic action — a retrain,
  a scheduled search, a promotion, a probation's rollback — is a proposal
  (``model-NNNNNN``) that waits for ``raymedic approve`` / ``reject``; an
  operator's own requests are not proposed (the operator asked for them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Collection, Mapping, Sequence

from controllers.detectors.intervals import wilson_lower, wilson_upper
from controllers.outcome import Backoff
from controllers.policies.probation import CallSample, Regression, Signal, call_regressions, trial_length_s
from controllers.policies.replica import Approval
from controllers.policies.rollout import PairTally, judge_member
from raymedic.config import ProbationConfig, RetrainingConfig, RolloutConfig

__all__ = ["Playbook", "SubmitRetrain", "Promote", "Rollback", "Trigger", "RolloutDone", "ModelAction", "Proposal",
           "PROPOSAL_PREFIX"]

PROPOSAL_PREFIX = "model-"
"""Ids of the playbook's approval-mode proposals (``model-000001``), beside ``disk-``, ``node-`` and incidents."""


class ModelAction(StrEnum):
    """An automatic model-level action that approval mode proposes before it runs."""

    RETRAIN = "retrain"
    SEARCH = "search"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Proposal:
    """An automatic action waiting for an operator (approval mode); ``payload`` is what runs once approved."""

    id: str
    action: ModelAction
    target: str
    reason: str
    payload: dict[str, Any]
    proposed_at: float
    approval: Approval = Approval.PENDING

    def to_dict(self) -> dict[str, Any]:
        """For the checkpoint and the status."""
        return {**asdict(self), "action": str(self.action), "approval": str(self.approval)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Proposal":
        """Read one back."""
        return cls(str(d["id"]), ModelAction(d["action"]), str(d.get("target", "")), str(d.get("reason", "")),
                   dict(d.get("payload") or {}), float(d.get("proposed_at", 0.0)), Approval(d.get("approval",
                                                                                                  "pending")))

HISTORY_KEPT = 20


@dataclass(frozen=True)
class Trigger:
    """An open alert that may justify a retrain: ``kind`` drift (severity act), accuracy_decay, concept_drift."""

    alert: str
    kind: str
    target: str
    severity: str = "act"
    since: float | None = None  # the detector's estimate of when the change began (epoch seconds)


@dataclass(frozen=True)
class SubmitRetrain:
    """A retrain job to submit now; ``record`` names it in storage, the audit and the job id."""

    record: str
    reason: str
    alerts: tuple[str, ...]
    search: bool = False  # search every member's hyperparameters, not only those whose retrain failed
    since: float | None = None  # learn from rows answered since then (the latest change estimate)


@dataclass(frozen=True)
class Promote:
    """Challengers that passed the gate (or a trial): what to make champions, with the accuracy they promised."""

    record: str
    versions: dict[str, str]  # member → challenger version
    holdout_accuracy: dict[str, float]
    champion_accuracy: dict[str, float] = field(default_factory=dict)  # the replaced versions, same holdout
    holdout_labels: int = 0
    by: str = ""  # an operator's promotion (`raymedic promote`): who asked; empty for the controller's own
    reason: str = ""  # ... and why
    previous: dict[str, str] = field(default_factory=dict)  # ... and the champions it replaces


@dataclass(frozen=True)
class Rollback:
    """Members whose promoted version failed its probation: back to their best recent healthy version.

    ``versions``: member → the version that failed; ``evidence``: member → each regressed signal's
    :meth:`controllers.policies.probation.Regression.to_dict` (which signal, values, thresholds)."""

    members: tuple[str, ...]
    reason: str
    versions: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    record: str = ""


@dataclass(frozen=True)
class RolloutDone:
    """A finished live trial: what to promote (None: nothing) and why each other member was dropped."""

    record: str
    promote: Promote | None
    rejected: dict[str, str]


@dataclass
class _State:
    job: dict[str, Any] | None = None  # {"record", "job_id", "submitted_at", "reason", "alerts"}
    failures: int = 0
    not_before: float = 0.0
    seq: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    probation: dict[str, Any] | None = None  # {"record", "since", "versions", "holdout_accuracy"}
    rollout: dict[str, Any] | None = None  # a live trial: the Promote's fields + mode, share, tally, verdicts
    search_due: float | None = None  # when the next scheduled search is due (None: not started)
    promoting: dict[str, Any] | None = None  # a promotion decided and not yet done: the Promote's fields + probation
    proposal: dict[str, Any] | None = None  # approval mode: the automatic action waiting for an operator
    proposal_seq: int = 0


class Playbook:
    """The retraining decisions of one model, with the memory they need (checkpointed by the controller).

    Pure: the controller passes ``now`` and what it observed, and performs what comes back.
    """

    def __init__(self, cfg: RetrainingConfig, memory: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self._s = _State(**{k: v for k, v in (memory or {}).items() if k in _State.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        """The memory for the controller's checkpoint (read back by the constructor)."""
        return asdict(self._s)

    @property
    def job(self) -> dict[str, Any] | None:
        """The retrain job in progress (None: none), as submitted."""
        return self._s.job

    @property
    def probation(self) -> dict[str, Any] | None:
        """The promotion on probation (None: none): versions and the accuracy they must keep live."""
        return self._s.probation

    @property
    def rollout(self) -> dict[str, Any] | None:
        """The live trial in progress (None: none), with its tallies and verdicts."""
        return self._s.rollout

    @property
    def history(self) -> list[dict[str, Any]]:
        """The last ``HISTORY_KEPT`` jobs, trials and probations and how they ended, oldest first."""
        return list(self._s.history)

    def waiting(self) -> dict[str, Any]:
        """When the next automatic retrain may start, and the failures in a row behind that wait."""
        return {"not_before": self._s.not_before, "failures": self._s.failures}

    def _remember(self, entry: dict[str, Any]) -> None:
        self._s.history = (self._s.history + [entry])[-HISTORY_KEPT:]

    # ---- deciding to retrain ---------------------------------------------------------

    def step(self, now: float, triggers: Sequence[Trigger], labels: int, *, manual: str | None = None,
             approval: bool = False) -> SubmitRetrain | Proposal | None:
        """A retrain to submit now, or None. ``manual`` (an operator's reason) skips the triggers,
        not the one-job-at-a-time rule. ``approval``: an automatic retrain (or search) is proposed
        instead (:class:`Proposal`, once; it runs when :meth:`approved` hands it back)."""
        every = self.cfg.search_every_s
        if every > 0 and self._s.search_due is None:
            self._s.search_due = now + every
        if self._s.job is not None:
            return None
        search, since = False, None
        if manual is None:
            if (not self.cfg.enabled or now < self._s.not_before or self._s.probation is not None
                    or self._s.rollout is not None or self._s.proposal is not None):
                return None
            acting = [t for t in triggers if t.kind != "drift" or t.severity == "act"]
            search = every > 0 and self._s.search_due is not None and now >= self._s.search_due
            if not (acting or search) or labels < self.cfg.min_labeled_rows:
                return None
            reason = "; ".join([f"{t.kind} on {t.target}" for t in acting]
                               + ([f"scheduled search (every {every:g} s)"] if search else []))
            alerts = tuple(t.alert for t in acting)
            since = max((t.since for t in acting if t.since is not None), default=None)
        else:
            reason, alerts = f"operator: {manual}", ()
        if search:
            self._s.search_due = now + every
        if manual is None and approval:
            return self.propose(ModelAction.SEARCH if search else ModelAction.RETRAIN, "retrain", reason,
                                {"reason": reason, "alerts": list(alerts), "search": search, "since": since}, now)
        return self.start_job(now, reason, alerts, search=search, since=since)

    def start_job(self, now: float, reason: str, alerts: Sequence[str], *, search: bool = False,
                  since: float | None = None) -> SubmitRetrain:
        """The job's intent, remembered (submitted by the healer, polled from then on)."""
        self._s.seq += 1
        record = f"r{self._s.seq:04d}-{int(now)}"
        self._s.job = {"record": record, "job_id": None, "submitted_at": now, "reason": reason,
                       "alerts": list(alerts), "search": search, "since": since}
        return SubmitRetrain(record, reason, tuple(alerts), search, since)

    # ---- approval mode -----------------------------------------------------------------

    def propose(self, action: ModelAction, target: str, reason: str, payload: Mapping[str, Any], now: float
                ) -> Proposal:
        """Hold an automatic action for an operator; one at a time (model actions run one at a time)."""
        self._s.proposal_seq += 1
        p = Proposal(f"{PROPOSAL_PREFIX}{self._s.proposal_seq:06d}", action, target, reason, dict(payload), now)
        self._s.proposal = p.to_dict()
        return p

    @property
    def proposal(self) -> Proposal | None:
        """The automatic action proposed and not yet run or rejected (None: none)."""
        return Proposal.from_dict(self._s.proposal) if self._s.proposal is not None else None

    def decide(self, proposal_id: str, approve: bool, now: float) -> Proposal:
        """An operator's answer: approved, it runs on the healer's next step; rejected, it is dropped (a
        rejected retrain or search is not proposed again before ``cooldown_s``).

        Raises:
            KeyError: no such proposal.
            ValueError: it was already approved.
        """
        p = self.proposal
        if p is None or p.id != proposal_id:
            raise KeyError(proposal_id)
        if p.approval != Approval.PENDING:
            raise ValueError(f"proposal {proposal_id} was already {p.approval}")
        if approve:
            self._s.proposal = {**self._s.proposal, "approval": str(Approval.APPROVED)}
            return Proposal.from_dict(self._s.proposal)
        self._s.proposal = None
        if p.action in (ModelAction.RETRAIN, ModelAction.SEARCH):
            self._s.not_before = now + self.cfg.cooldown_s
        self._remember({"record": p.id, "result": f"{p.action} rejected by an operator", "reason": p.reason})
        return Proposal.from_dict({**p.to_dict(), "approval": str(Approval.REJECTED)})

    def approved(self, *, approval: bool) -> Proposal | None:
        """The proposal to run now, taken off the queue: an approved one, or a pending one once approval
        mode is off again (the operator handed the decisions back to the controller)."""
        p = self.proposal
        if p is None or (approval and p.approval != Approval.APPROVED):
            return None
        self._s.proposal = None
        return p

    def submitted(self, job_id: str) -> None:
        """The job went out with this id (polled from then on, also after a controller restart)."""
        if self._s.job is not None:
            self._s.job["job_id"] = job_id

    def timed_out(self, now: float) -> bool:
        """Whether the running job has run past ``job_timeout_s`` (it is then stopped and counted failed)."""
        job = self._s.job
        return job is not None and now - job["submitted_at"] > self.cfg.job_timeout_s

    # ---- the job's outcome -----------------------------------------------------------

    def finished(self, now: float, status: str, outcome: Mapping[str, Any] | None) -> Promote | None:
        """Record a finished job (``status``: Ray's SUCCEEDED/FAILED/STOPPED, or TIMEOUT/SUBMIT_FAILED).

        ``outcome`` is the job's record file (None if it wrote none)."""
        job, self._s.job = self._s.job, None
        if job is None:
            return None
        entry = {**job, "finished_at": now, "job_status": status,
                 "outcome": (outcome or {}).get("status", "none")}
        gated = status == "SUCCEEDED" and outcome is not None and outcome.get("status") == "gated"
        if outcome is not None and outcome.get("status") == "skipped":
            entry["result"] = "skipped: " + str(outcome.get("error", ""))
            self._s.not_before = now + self.cfg.cooldown_s
            self._remember(entry)
            return None
        if not gated:
            self._s.failures += 1
            wait = Backoff.doubling(self.cfg.backoff_s, cap_s=self.cfg.max_backoff_s).delay_after(self._s.failures)
            self._s.not_before = now + wait
            entry.update(result="failed", error=(outcome or {}).get("error"), retry_after_s=wait)
            self._remember(entry)
            return None
        self._s.failures = 0
        self._s.not_before = now + self.cfg.cooldown_s
        members = outcome.get("members", {})
        passed = {m: v["challenger_version"] for m, v in members.items() if v.get("passed")}
        entry.update(result="promoted" if passed else "rejected",
                     gate={m: {"passed": bool(v.get("passed")), "reasons": v.get("reasons", []),
                               "challenger": v.get("challenger_version"),
                               "champion_accuracy": (v.get("champion_metrics") or {}).get("accuracy"),
                               "challenger_accuracy": (v.get("challenger_metrics") or {}).get("accuracy"),
                               **({"search": v["search"]} if v.get("search") else {})}
                           for m, v in members.items()})
        self._remember(entry)
        if not passed:
            return None
        acc = {m: float(members[m]["challenger_metrics"]["accuracy"]) for m in passed}
        old = {m: float(members[m]["champion_metrics"]["accuracy"]) for m in passed}
        n = min(int(members[m]["challenger_metrics"].get("labels", 0)) for m in passed)
        return Promote(job["record"], passed, acc, old, n)

    def promoted(self, now: float, promote: Promote, baseline: Mapping[str, CallSample] | None = None) -> None:
        """The versions were promoted: watch their live accuracy, call failures and latency from ``now``.

        ``baseline``: member → the replaced champion's recent calls (taken before the swap); a member without
        one is judged on accuracy alone."""
        self._s.probation = {"record": promote.record, "since": now, "versions": dict(promote.versions),
                             "holdout_accuracy": dict(promote.holdout_accuracy),
                             "champion_accuracy": dict(promote.champion_accuracy),
                             "holdout_labels": promote.holdout_labels,
                             "baseline": {m: s.to_dict() for m, s in (baseline or {}).items()
                                          if m in promote.versions},
                             "calls": {m: CallSample().to_dict() for m in promote.versions}}

    def observe_probation(self, member: str, version: str, sample: CallSample) -> None:
        """Member calls answered while ``version`` served ``member``: counted if it is the one on probation."""
        p = self._s.probation
        if p is None or p["versions"].get(member) != version:
            return
        calls = p.setdefault("calls", {})
        s = CallSample.from_dict(calls.get(member))
        s.add(ok=sample.ok, failed=sample.failed, latencies=sample.latencies)
        calls[member] = s.to_dict()

    def probation_view(self) -> dict[str, Any] | None:
        """The probation for the status: versions, and per member its calls and the baseline's in summary."""
        p = self._s.probation
        if p is None:
            return None
        return {**{k: v for k, v in p.items() if k not in ("baseline", "calls")},
                "signals": {m: {"calls": CallSample.from_dict((p.get("calls") or {}).get(m)).summary(),
                                "baseline": CallSample.from_dict((p.get("baseline") or {}).get(m)).summary()}
                            for m in p["versions"]}}

    def intend_promotion(self, promote: Promote, *, probation: bool) -> None:
        """A promotion is decided (a gate without a trial, or a trial's verdict): remembered until
        :meth:`promotion_done`, so a controller killed on the way finishes it on restart."""
        self._s.promoting = {**asdict(promote), "probation": probation}

    @property
    def promoting(self) -> tuple[Promote, bool] | None:
        """The promotion decided and not yet done, and whether it starts a probation (None: none)."""
        p = self._s.promoting
        if p is None:
            return None
        fields = {k: v for k, v in p.items() if k in Promote.__dataclass_fields__}
        return Promote(**fields), bool(p.get("probation"))

    def promotion_done(self) -> None:
        """The promotion was carried out (or failed, recorded): nothing left to finish."""
        self._s.promoting = None

    # ---- probation -------------------------------------------------------------------

    def bar(self, member: str, accuracy_drop: float) -> float:
        """The live accuracy a promoted version must keep: what its gate holdout surely promised (the
        lower 95 % Wilson bound: a holdout of a hundred rows is noisy, and the best of several
        challengers is flattered by it), less the usual drop, and never less than what the version it
        replaced scored on the same holdout."""
        p = self._s.probation or {}
        promised = p.get("holdout_accuracy", {}).get(member, 0.0)
        n = int(p.get("holdout_labels") or 0)
        return max(p.get("champion_accuracy", {}).get(member, 0.0),
                   (wilson_lower(promised, n) if n else promised) - accuracy_drop)

    def check_probation(self, live: Mapping[str, tuple[float, int]], accuracy_drop: float,
                        calls_cfg: ProbationConfig | None = None) -> Rollback | None:
        """``live``: member → (accuracy, labels) on answers since the promotion.

        A member is rolled back only when it is *significantly* below its bar (the upper
        95 % Wilson bound of its live accuracy is under it): a holdout of a hundred rows
        and a live window of a hundred labels are both noisy, and flapping between
        versions on noise is worse than either version. Its member calls are judged against
        the replaced champion's (``calls_cfg``, default :class:`ProbationConfig`'s) from the
        first ``min_calls`` on, until the accuracy confirms it: calls arrive far faster than labels."""
        p = self._s.probation
        if p is None:
            return None
        judged = {m: live[m] for m in p["versions"] if m in live and live[m][1] >= self.cfg.probation_labels}
        evidence: dict[str, list[Regression]] = {}
        for m, (acc, n) in judged.items():
            bar = self.bar(m, accuracy_drop)
            if wilson_upper(acc, n) < bar:
                evidence[m] = [Regression(Signal.ACCURACY, acc, bar, bar, n,
                                          f"{m} {acc:.3f} on {n} labels vs bar {bar:.3f}")]
        for m in p["versions"]:
            base = (p.get("baseline") or {}).get(m)
            if base:
                got = call_regressions(CallSample.from_dict((p.get("calls") or {}).get(m)), CallSample.from_dict(base),
                                       calls_cfg or ProbationConfig())
                if got:
                    evidence.setdefault(m, []).extend(got)
        if evidence:
            worse = sorted(evidence)
            acc_part = ", ".join(r.detail for m in worse for r in evidence[m] if r.signal == Signal.ACCURACY)
            other = "; ".join(f"{m} {r.signal}: {r.detail}" for m in worse for r in evidence[m]
                              if r.signal != Signal.ACCURACY)
            reason = "probation failed: " + "; ".join(
                ([f"live accuracy {acc_part}"] if acc_part else []) + ([other] if other else []))
            self._s.probation = None
            self._remember({"record": p["record"], "result": "probation failed",
                            "signals": {m: [str(r.signal) for r in evidence[m]] for m in worse}})
            return Rollback(tuple(worse), reason, {m: p["versions"][m] for m in worse},
                            {m: [r.to_dict() for r in evidence[m]] for m in worse}, p["record"])
        if len(judged) == len(p["versions"]):
            self._s.probation = None  # confirmed
            self._remember({"record": p["record"], "result": "confirmed",
                            "live_accuracy": {m: round(a, 4) for m, (a, _) in judged.items()}})
        return None

    def rolled_back(self) -> None:
        """A rollback ended whatever probation was running."""
        self._s.probation = None

    def release(self, members: Collection[str]) -> None:
        """An operator promoted another version of ``members``: the probation no longer judges them (its
        rollback would undo the operator's choice); it ends when no member is left on it."""
        p = self._s.probation
        if p is None:
            return
        left = {m: v for m, v in p["versions"].items() if m not in members}
        self._s.probation = {**p, "versions": left} if left else None

    # ---- live trial (canary / shadow) --------------------------------------------------

    def start_rollout(self, now: float, promote: Promote, *, mode: str, share: float, source: str = "retrain"
                      ) -> None:
        """Open a live trial of ``promote``'s versions (``mode`` canary or shadow, on ``share`` of requests)."""
        self._s.rollout = {"record": promote.record, "since": now, "mode": mode, "share": share, "source": source,
                           "length_s": None, "label_rate": None,
                           "versions": dict(promote.versions), "holdout_accuracy": dict(promote.holdout_accuracy),
                           "champion_accuracy": dict(promote.champion_accuracy),
                           "holdout_labels": promote.holdout_labels,
                           "tally": {m: PairTally().to_dict() for m in promote.versions}, "verdicts": {}}

    def trial_members(self) -> dict[str, str]:
        """Members still on trial (no verdict yet) → challenger version."""
        r = self._s.rollout
        if r is None:
            return {}
        return {m: v for m, v in r["versions"].items() if m not in r["verdicts"]}

    def observe_rollout(self, member: str, *, champion_correct: bool | None = None,
                        challenger_correct: bool | None = None, calls_ok: int = 0, calls_failed: int = 0,
                        challenger: CallSample | None = None, champion: CallSample | None = None) -> None:
        """One paired labelled answer and/or call counts (the challenger's; ``champion``: the champion's
        member calls of the same period, the baseline of the call signals) for a member still on trial."""
        r = self._s.rollout
        if r is None or member not in r["tally"] or member in r["verdicts"]:
            return
        t = PairTally.from_dict(r["tally"][member])
        if champion_correct is not None and challenger_correct is not None:
            t.add(champion_correct=champion_correct, challenger_correct=challenger_correct)
        t.calls_ok += calls_ok
        t.calls_failed += calls_failed
        t.add_calls(challenger=challenger, champion=champion)
        r["tally"][member] = t.to_dict()

    def check_rollout(self, now: float, cfg: RolloutConfig, *, label_rate: float | None = None,
                      calls_cfg: ProbationConfig | None = None) -> tuple[dict[str, list[str]], RolloutDone | None]:
        """New per-member verdicts, and the trial's end once every member has one.

        ``label_rate``: labels per second on the whole traffic now; the trial's length follows it
        (:func:`controllers.policies.probation.trial_length_s`), the last known rate when None."""
        r = self._s.rollout
        if r is None:
            return {}, None
        if label_rate is not None and label_rate > 0:
            r["label_rate"] = round(float(label_rate), 4)
        r["length_s"] = trial_length_s(cfg, share=float(r["share"]), label_rate=r.get("label_rate"))
        new: dict[str, list[str]] = {}
        for m in self.trial_members():
            verdict = judge_member(PairTally.from_dict(r["tally"][m]), cfg, elapsed_s=now - r["since"],
                                   length_s=r["length_s"], calls_cfg=calls_cfg)
            if verdict is not None:
                new[m] = list(verdict)
                r["verdicts"][m] = list(verdict)
        if self.trial_members():
            return new, None
        self._s.rollout = None
        passed = {m: r["versions"][m] for m, (v, _) in r["verdicts"].items() if v == "promote"}
        rejected = {m: why for m, (v, why) in r["verdicts"].items() if v != "promote"}
        self._remember({"record": r["record"], "result": "trial: " + ("promoted" if passed else "rejected"),
                        "mode": r["mode"], "verdicts": r["verdicts"],
                        "live": {m: {k: t.get(k) for k in ("labels", "challenger_accuracy", "champion_accuracy")}
                                 for m, t in r["tally"].items()}})
        promote = None
        if passed:
            promote = Promote(r["record"], passed, {m: r["holdout_accuracy"].get(m, 0.0) for m in passed},
                              {m: r["champion_accuracy"].get(m, 0.0) for m in passed}, int(r["holdout_labels"]))
        return new, RolloutDone(r["record"], promote, rejected)

    def abandon_rollout(self, reason: str) -> dict[str, Any] | None:
        """End a trial with no promotion (an operator's rollback, or the canary could not be deployed)."""
        r, self._s.rollout = self._s.rollout, None
        if r is not None:
            self._remember({"record": r["record"], "result": "trial: abandoned", "reason": reason})
        return r
