"""The model healer's orchestration on hand-written fakes (no Ray): jobs, canaries, swaps, registry.

The playbook is the real one; the Ray Jobs API, the canary applications, the
in-place swaps and the registry are fakes that record what they were asked to do,
and the clock is a number the test moves. Background deployments (promotions,
rollbacks, trial starts) are awaited with :meth:`ModelHealer.settled`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Sequence

import pytest

from controllers.models.canaries import STARTED_COLD, SWAPPED_WARM
from controllers.models.healer import ModelHealer
from controllers.policies.playbook import Playbook, Promote, Rollback, SubmitRetrain, Trigger
from controllers.policies.probation import CallSample
from raymedic.config import RaymedicConfig
from raymedic.errors import VersionNotFound
from train_jobs.registry import VersionInfo

DECAY = Trigger("d0001", "accuracy_decay", "ensemble")
MEMBERS = ["mlp", "lr"]


class FakeJobs:
    """A Jobs API whose job ends with the status the test sets."""

    def __init__(self) -> None:
        self.submitted: list[SubmitRetrain] = []
        self.stopped: list[str] = []
        self.status: str | None = None
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.fail: Exception | None = None

    def submit(self, sub: SubmitRetrain) -> str:
        if self.fail is not None:
            raise self.fail
        self.submitted.append(sub)
        return f"raymedic-retrain-m-{sub.record}"

    def poll(self, job_id: str) -> str | None:
        return self.status

    def stop(self, job_id: str) -> None:
        self.stopped.append(job_id)

    def outcome(self, record: str) -> dict[str, Any] | None:
        return self.outcomes.get(record)


class FakeCanaries:
    """Canary applications as a set of (member, version) that the test can read."""

    def __init__(self) -> None:
        self.warm: dict[str, str] = {}
        self.running: dict[str, str] = {}
        self.deleted: list[str] = []
        self.adopted: list[tuple[bool, bool]] = []

    def warm_in_background(self, champions: Callable[[], dict[str, str]]) -> None:
        self.warm = dict(champions())

    async def warmed(self) -> None:
        return None

    def cool(self, keep: Sequence[str]) -> None:
        for m in [m for m in self.warm if m not in keep]:
            del self.warm[m]
            self.deleted.append(m)

    def forget_warm(self) -> None:
        self.warm = {}

    def adopt(self, *, job_running: bool, trial_running: bool) -> None:
        self.adopted.append((job_running, trial_running))

    async def start(self, member: str, version: str) -> str:
        how = SWAPPED_WARM if member in self.warm else STARTED_COLD
        self.running[member] = version
        return how

    def deploy(self, member: str, version: str) -> None:
        self.running[member] = version

    def delete(self, members: Sequence[str]) -> None:
        for m in members:
            self.running.pop(m, None)
            self.deleted.append(m)


class FakeSwapper:
    def __init__(self) -> None:
        self.swaps: list[dict[str, str]] = []

    async def swap(self, versions: dict[str, str], *, only: str | None = None) -> dict[str, Any]:
        self.swaps.append(dict(versions))
        return {f"{m}/r1": {"version": v, "outcome": "ok"} for m, v in versions.items()}


class FakeRegistry:
    """Two versions per member: v0001 the champion, v0002 the challenger (and v0000 previous)."""

    def __init__(self) -> None:
        self.aliases_: dict[str, dict[str, str]] = {m: {"champion": "v0001", "previous": "v0000",
                                                        "challenger": "v0002"} for m in MEMBERS}
        self.schema: dict[str, str] = {}  # version → schema id (default "s1")
        self.promoted: list[tuple[str, str]] = []

    def _version(self, member: str, ref: str) -> str:
        v = self.aliases_[member].get(ref, ref)
        if v not in ("v0000", "v0001", "v0002"):
            raise VersionNotFound(f"no version {ref!r} of {member!r}")
        return v

    def info(self, model: str, member: str, ref: str = "champion") -> VersionInfo:
        v = self._version(member, ref)
        return VersionInfo(model, member, v, 0.0, None, {"schema": self.schema.get(v, "s1"),
                                                          "metrics": {"val_accuracy": 0.8}})

    def resolve(self, model: str, member: str, ref: str = "champion") -> str:
        return self._version(member, ref)

    def promote(self, model: str, member: str, version: str) -> dict[str, str]:
        a = self.aliases_[member]
        if a["champion"] == version:  # idempotent, as the registry's
            return dict(a)
        a["previous"], a["champion"] = a["champion"], version
        self.promoted.append((member, version))
        return dict(a)

    def rollback(self, model: str, member: str) -> dict[str, str]:
        a = self.aliases_[member]
        a["champion"], a["previous"] = a["previous"], a["champion"]
        return dict(a)

    def aliases(self, model: str, member: str) -> dict[str, str]:
        return dict(self.aliases_[member])

    moves: list[dict[str, Any]] = []  # alias history (champion moves), oldest first; set by a test
    scores = {"v0000": 0.75, "v0001": 0.7, "v0002": 0.9}

    def versions(self, model: str, member: str) -> list[VersionInfo]:
        return [VersionInfo(model, member, v, float(i), None, {"schema": self.schema.get(v, "s1"),
                                                               "metrics": {"accuracy": self.scores[v]}})
                for i, v in enumerate(("v0000", "v0001", "v0002"))]

    def alias_history(self, model: str, member: str) -> list[dict[str, Any]]:
        return list(self.moves)

    def demote(self, model: str, member: str, to_version: str) -> dict[str, str]:
        a = self.aliases_[member]
        a["previous"], a["champion"] = a["champion"], to_version
        self.moves = [*self.moves, {"at": 99.0, "action": "probation-failed", "alias": "champion",
                                    "from_version": a["previous"], "to_version": to_version}]
        return dict(a)

    def load(self, model: str, member: str, ref: str = "champion") -> Any:
        raise NotImplementedError


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gated(**passed: bool) -> dict[str, Any]:
    """A retrain job's record: per member, whether its challenger v0002 passed the gate."""
    return {"status": "gated", "members": {
        m: {"passed": ok, "reasons": [] if ok else ["too weak"], "challenger_version": "v0002",
            "champion_metrics": {"accuracy": 0.7}, "challenger_metrics": {"accuracy": 0.9 if ok else 0.6,
                                                                         "labels": 300}}
        for m, ok in passed.items()}}


class Rig:
    """A healer over fakes, and what it recorded."""

    def __init__(self, *, rollout: str = "canary", memory: dict[str, Any] | None = None,
                 registry: FakeRegistry | None = None, audit: list[tuple[str, str, dict[str, Any]]] | None = None,
                 approval: bool = False, baseline: dict[str, Any] | None = None, **retraining: Any) -> None:
        self.approval = approval
        self.cfg = RaymedicConfig(
            model="m", members=[{"name": "mlp", "kind": "mlp"}, {"name": "lr", "kind": "logistic", "fallback": True}],
            retraining={"min_labeled_rows": 100, "cooldown_s": 60, "backoff_s": 10, "max_backoff_s": 40,
                        **retraining},
            rollout={"mode": rollout, "min_labels": 20, "share": 0.5})
        self.clock = Clock()
        self.jobs, self.canaries = FakeJobs(), FakeCanaries()
        self.swapper, self.registry = FakeSwapper(), registry or FakeRegistry()
        self.records: list[tuple[str, str, dict[str, Any]]] = [] if audit is None else audit  # the audit trail
        self.adopted: list[dict[str, str]] = []
        self.playbook = Playbook(self.cfg.retraining, memory)
        self.saved: list[dict[str, Any]] = []  # the checkpointed playbook, as a controller's checkpoint holds it
        self.healer = ModelHealer(self.cfg, self.playbook, self.record, on_new_versions=self.adopted.append,
                                  jobs=self.jobs, canaries=self.canaries, swapper=self.swapper,
                                  registry=self.registry, clock=self.clock,
                                  save_intent=lambda: self.saved.append(json.loads(json.dumps(
                                      self.playbook.to_dict()))),
                                  recorded=lambda kind, record: any(
                                      k == kind and f.get("incident") == record for k, _, f in self.records),
                                  approval=lambda: self.approval,
                                  baseline=lambda members: {m: v for m, v in (baseline or {}).items()
                                                            if m in members})

    def record(self, kind: str, target: str, **fields: Any) -> None:
        self.records.append((kind, target, fields))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.records]

    def last(self, kind: str) -> dict[str, Any]:
        return next(f for k, _, f in reversed(self.records) if k == kind)

    async def step(self, *, triggers: Sequence[Trigger] = (), labels: int = 500,
                   live: dict[str, tuple[float, int]] | None = None, dt: float = 1.0) -> bool:
        self.clock.now += dt
        changed = await self.healer.step(self.clock.now, triggers, labels, live or {})
        await self.healer.settled()
        return changed

    async def gated_job(self, **passed: bool) -> None:
        """A drift trigger, its job submitted and finished with this gate."""
        assert await self.step(triggers=[DECAY])
        self.jobs.status = "SUCCEEDED"
        self.jobs.outcomes[self.jobs.submitted[-1].record] = gated(**passed)
        assert await self.step()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_trigger_submits_one_job_and_waits_for_it():
    async def go(r: Rig) -> None:
        assert await r.step(triggers=[DECAY], labels=50) is False  # too few labels to learn from
        assert await r.step(triggers=[DECAY]) is True
        assert await r.step(triggers=[DECAY]) is False  # running: polled, not submitted again
        assert await r.step(triggers=[DECAY]) is False

    r = Rig()
    run(go(r))
    (sub,) = r.jobs.submitted
    assert "accuracy_decay on ensemble" in sub.reason and sub.alerts == ("d0001",)
    assert r.kinds() == ["retrain-submitted"]
    assert r.last("retrain-submitted")["evidence"]["job_id"] == f"raymedic-retrain-m-{sub.record}"
    assert r.canaries.warm == {"mlp": "v0001", "lr": "v0001"}  # warm canaries on the champions while it trains
    assert r.canaries.adopted == [(False, False)]  # a restarted controller adopts its canaries once


def test_a_gated_job_starts_a_live_trial_of_the_winners_on_their_warm_replicas():
    r = Rig()
    run(r.gated_job(mlp=True, lr=False))
    assert r.kinds() == ["retrain-submitted", "retrain-finished", "trial-started"]
    assert r.last("retrain-finished")["outcome"] == "promoted"
    started = r.last("trial-started")
    assert started["outcome"] == "ok" and started["evidence"]["challengers"] == {"mlp": SWAPPED_WARM}
    assert r.canaries.running == {"mlp": "v0002"} and "lr" in r.canaries.deleted  # the loser's warm replica goes
    assert r.healer.trial_view() == {"record": r.jobs.submitted[0].record, "mode": "canary", "share": 0.5,
                                     "members": {"mlp": "v0002"}}
    assert r.registry.promoted == [] and r.swapper.swaps == []  # the champion serves throughout the trial


def test_with_rollout_off_a_gated_job_promotes_at_once_and_goes_on_probation():
    r = Rig(rollout="off")
    run(r.gated_job(mlp=True, lr=False))
    assert r.kinds() == ["retrain-submitted", "retrain-finished", "promote"]
    assert r.registry.promoted == [("mlp", "v0002")] and r.swapper.swaps == [{"mlp": "v0002"}]
    assert r.adopted == [{"mlp": "v0002"}] and r.last("promote")["outcome"] == "ok"
    assert r.playbook.probation["versions"] == {"mlp": "v0002"}
    assert r.canaries.warm == {}  # no trial: every warm replica is removed


def test_a_trial_verdict_promotes_the_challenger_and_swaps_it_in():
    async def go(r: Rig) -> None:
        await r.gated_job(mlp=True, lr=False)
        for i in range(30):  # the challenger right where the champion was wrong, now and then
            r.playbook.observe_rollout("mlp", champion_correct=i % 3 != 0, challenger_correct=True)
        assert await r.step() is True  # the trial's start is checkpointed first
        assert await r.step() is True  # then judged

    r = Rig()
    run(go(r))
    assert r.kinds()[-3:] == ["trial-promote", "trial-finished", "promote"]
    assert r.last("trial-promote")["outcome"] == "promote"
    assert r.registry.promoted == [("mlp", "v0002")] and r.swapper.swaps == [{"mlp": "v0002"}]
    assert r.canaries.running == {} and r.playbook.rollout is None
    # The trial saw a small share of traffic: the promoted version is on probation too (issue 20)
    assert r.playbook.probation["versions"] == {"mlp": "v0002"}
    assert r.playbook.history[-1]["result"] == "trial: promoted"


def test_a_failed_job_backs_off_before_the_next_attempt():
    async def go(r: Rig) -> None:
        await r.step(triggers=[DECAY])
        r.jobs.status = "FAILED"
        assert await r.step() is True
        r.jobs.status = None
        assert await r.step(triggers=[DECAY], dt=5.0) is False  # within the 10 s backoff
        assert await r.step(triggers=[DECAY], dt=5.0) is True  # after it

    r = Rig()
    run(go(r))
    finished = r.last("retrain-finished")
    assert finished["outcome"] == "failed" and finished["evidence"]["retry_after_s"] == 10
    assert len(r.jobs.submitted) == 2 and r.canaries.warm == {"mlp": "v0001", "lr": "v0001"}


def test_a_failed_submit_is_recorded_and_backs_off():
    async def go(r: Rig) -> None:
        r.jobs.fail = ConnectionError("dashboard restarting")
        assert await r.step(triggers=[DECAY]) is True
        r.jobs.fail = None
        assert await r.step(triggers=[DECAY]) is False

    r = Rig()
    run(go(r))
    failed = r.last("retrain-submit-failed")
    assert failed["outcome"] == "failed" and failed["evidence"] == {"error": "ConnectionError('dashboard restarting')"}
    assert r.playbook.history[-1]["job_status"] == "SUBMIT_FAILED" and r.playbook.waiting()["failures"] == 1


def test_a_job_past_its_timeout_is_stopped_and_counted_failed():
    async def go(r: Rig) -> None:
        await r.step(triggers=[DECAY])
        assert await r.step(dt=101.0) is True

    r = Rig(job_timeout_s=100)
    run(go(r))
    assert r.jobs.stopped == [f"raymedic-retrain-m-{r.jobs.submitted[0].record}"]
    assert r.last("retrain-finished")["evidence"]["job_status"] == "TIMEOUT"


@pytest.mark.parametrize("ask, status, words", [
    (dict(member="mlp", ref="challenger", mode="yolo"), 400, "mode must be 'canary' or 'shadow'"),
    (dict(member="nope", ref="challenger"), 404, "no member 'nope'"),
    (dict(member="mlp", ref="v9999"), 404, "no version 'v9999'"),
    (dict(member="mlp", ref="champion"), 409, "is the champion of 'mlp' already"),
])
def test_an_operator_trial_request_that_cannot_work_is_refused(ask, status, words):
    out = Rig().healer.request_trial(ask["member"], ask["ref"], ask.get("mode"))
    assert out["status"] == status and words in out["error"], out


def test_an_operator_trial_waits_for_a_running_job_and_needs_a_rollout_mode():
    async def go(r: Rig) -> dict[str, Any]:
        await r.step(triggers=[DECAY])
        return r.healer.request_trial("mlp", "challenger")

    r = Rig()
    busy = run(go(r))
    assert busy["status"] == 409 and "a retrain job is running" in busy["error"]
    off = Rig(rollout="off").healer.request_trial("mlp", "challenger")
    assert off["status"] == 409 and "rollout.mode is off" in off["error"]
    other = Rig()
    other.registry.schema["v0002"] = "s2"
    refused = other.healer.request_trial("mlp", "challenger")
    assert refused["status"] == 409 and "another schema" in refused["error"]


def test_an_operator_trial_starts_and_a_second_one_is_refused():
    async def go(r: Rig) -> tuple[dict[str, Any], dict[str, Any]]:
        first = r.healer.request_trial("mlp", "challenger", "shadow")
        await r.healer.settled()
        return first, r.healer.request_trial("lr", "challenger")

    r = Rig()
    first, second = run(go(r))
    assert first == {"trial": "t10000-mlp", "member": "mlp", "version": "v0002", "mode": "shadow", "share": 0.5}
    assert r.last("trial-started")["evidence"]["challengers"] == {"mlp": STARTED_COLD}  # no warm replica
    assert second["status"] == 409 and "a trial is running" in second["error"]
    assert r.healer.request("x")["status"] == 409  # no retrain either while it runs


def test_a_rollback_during_a_trial_ends_the_trial_and_keeps_the_champion():
    async def go(r: Rig) -> dict[str, Any]:
        r.healer.request_trial("mlp", "challenger")
        await r.healer.settled()
        return await r.healer.rollback(None, "operator: ops")

    r = Rig()
    out = run(go(r))
    assert out == {"abandoned_trial": "t10000-mlp", "champion_kept": True, "errors": {}}
    assert r.playbook.rollout is None and r.canaries.running == {}
    assert r.registry.aliases("m", "mlp")["champion"] == "v0001" and r.swapper.swaps == []
    assert r.last("trial-abandoned")["evidence"]["reason"] == "operator: ops"
    assert r.playbook.history[-1]["result"] == "trial: abandoned"


def test_a_rollback_moves_the_champion_back_and_swaps_every_replica():
    r = Rig()
    out = run(r.healer.rollback(["mlp"], "operator: ops"))
    assert out == {"rolled_back": {"mlp": "v0000"}, "errors": {}}
    assert r.swapper.swaps == [{"mlp": "v0000"}] and r.adopted == [{"mlp": "v0000"}]
    assert r.last("rollback")["outcome"] == "ok"


def test_a_retrain_intent_is_checkpointed_before_its_submit_and_resubmitted_under_the_same_id():
    """The job's intent (its record, hence its job id) is durable before the submit; a controller killed
    between the submit and the checkpoint of the job id submits it again under the same id (the Jobs API
    adopts an id it already has), never a second job under a new id."""
    async def first(r: Rig) -> None:
        assert await r.step(triggers=[DECAY]) is True

    r = Rig()
    run(first(r))
    (sub,) = r.jobs.submitted
    intent = r.saved[0]
    assert intent["job"]["record"] == sub.record and intent["job"]["job_id"] is None  # saved before the submit

    async def after_crash(again: Rig) -> None:
        assert await again.step(triggers=[DECAY]) is True
        assert await again.step(triggers=[DECAY]) is False  # now followed, not submitted again

    again = Rig(memory=intent)  # restarted from the checkpoint written before the submit
    run(after_crash(again))
    assert [s.record for s in again.jobs.submitted] == [sub.record]
    assert again.playbook.job["job_id"] == f"raymedic-retrain-m-{sub.record}"


def test_a_retrain_whose_intent_cannot_be_checkpointed_is_not_submitted():
    async def go(r: Rig) -> None:
        assert await r.step(triggers=[DECAY]) is False
        assert r.jobs.submitted == []
        r.healer._save_intent = lambda: None
        assert await r.step(triggers=[DECAY]) is True
        assert len(r.jobs.submitted) == 1

    r = Rig()

    def full() -> None:
        raise OSError(28, "No space left on device")

    r.healer._save_intent = full
    run(go(r))


def test_ray_jobs_submit_adopts_a_job_already_submitted_under_the_records_id(tmp_path):
    from controllers.models.jobs import RayJobs, retrain_job_id
    from raymedic.storage import Storage

    class Client:  # the Jobs SDK's answers: a 404 for an id it does not know
        def __init__(self) -> None:
            self.jobs: dict[str, str] = {}

        def get_job_info(self, job_id: str) -> Any:
            if job_id not in self.jobs:
                raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
            return self.jobs[job_id]

        def submit_job(self, *, submission_id: str, **_: Any) -> str:
            assert submission_id not in self.jobs, "a second job under one id"
            self.jobs[submission_id] = "RUNNING"
            return submission_id

    client = Client()
    jobs = RayJobs(model="m", storage_path=str(tmp_path), storage=Storage(str(tmp_path)))
    jobs._jobs = lambda: client
    sub = SubmitRetrain("r0001-100", "drift", ())
    assert jobs.submit(sub) == jobs.submit(sub) == retrain_job_id("m", "r0001-100")
    assert list(client.jobs) == [retrain_job_id("m", "r0001-100")]


class Killed(BaseException):
    """The controller's process dies here (a SIGKILL: no ``except Exception`` runs, nothing after it)."""


class KilledAfterPromote(FakeRegistry):
    """A registry whose first promotion moves the champion and then kills the controller."""

    armed = True

    def promote(self, model: str, member: str, version: str) -> dict[str, str]:
        out = super().promote(model, member, version)
        if self.armed:
            self.armed = False
            raise Killed
        return out


@pytest.mark.parametrize("rollout", ["off", "canary"])
def test_a_controller_killed_mid_promotion_finishes_it_once_on_restart(rollout):
    """The promotion's intent is checkpointed before the registry moves; a controller killed after the
    move finds it on restart and finishes the promotion (swap, versions adopted, one ``promote`` record)
    without moving the registry again. On the old code the restarted controller forgot it: champion
    moved, replicas never swapped, no ``promote`` record."""
    registry = KilledAfterPromote()

    async def until_killed(r: Rig) -> None:
        await r.gated_job(mlp=True, lr=False)
        if rollout == "canary":
            for _ in range(30):
                r.playbook.observe_rollout("mlp", champion_correct=True, challenger_correct=True)
            assert await r.step() is True  # the trial's start is checkpointed
            await r.step()  # judged: promote

    r = Rig(rollout=rollout, registry=registry)
    run(until_killed(r))
    assert isinstance(r.healer._bg.exception(), Killed)  # the background promotion died with the process
    assert registry.promoted == [("mlp", "v0002")] and r.swapper.swaps == [] and "promote" not in r.kinds()
    checkpoint = r.saved[-1]
    assert checkpoint["promoting"]["versions"] == {"mlp": "v0002"}  # durable before the registry moved

    async def restarted(again: Rig) -> None:
        await again.step()
        await again.step()

    again = Rig(rollout=rollout, memory=checkpoint, registry=registry, audit=r.records)
    run(restarted(again))
    assert registry.promoted == [("mlp", "v0002")]  # the registry moved once
    assert again.swapper.swaps == [{"mlp": "v0002"}] and again.adopted == [{"mlp": "v0002"}]
    assert again.kinds().count("promote") == 1 and again.last("promote")["outcome"] == "ok"
    assert again.playbook.promoting is None and again.saved[-1]["promoting"] is None
    assert again.playbook.probation is not None  # after a trial too: it saw a small share only
    if rollout == "canary":
        assert again.kinds().count("trial-finished") == 1


def test_a_replayed_submit_and_promotion_are_recorded_once():
    """A controller killed after it audited an action but before its checkpoint forgot it did it: on
    restart it does it again (idempotently) and records nothing twice."""
    r = Rig(rollout="off")
    run(r.gated_job(mlp=True, lr=False))
    before = r.kinds()
    assert before == ["retrain-submitted", "retrain-finished", "promote"]
    replayed = Rig(rollout="off", memory=r.saved[0], registry=r.registry, audit=r.records)  # intent only
    run(replayed.step(triggers=[DECAY]))  # submits again: adopted under the same id
    assert replayed.kinds() == before
    promote = next(f for k, _, f in r.records if k == "promote")
    replayed.playbook.intend_promotion(Promote(promote["incident"], {"mlp": "v0002"}, {"mlp": 0.9}), probation=True)
    run(replayed.step())
    assert replayed.kinds() == before and replayed.playbook.promoting is None


# ---- an operator's promotion (`raymedic promote`) --------------------------------------------------


def test_an_operator_promotes_any_registered_version_through_the_same_swap_and_audit():
    async def go(r: Rig) -> dict[str, Any]:
        out = r.healer.request_promote("mlp", "v0000", reason="v0001 is worse on Mondays", who="ops@host")
        await r.healer.settled()
        return out

    r = Rig()
    out = run(go(r))
    assert out == {"promote": "started", "record": "op10000000-mlp", "member": "mlp", "version": "v0000",
                   "previous": "v0001"}
    assert r.registry.promoted == [("mlp", "v0000")] and r.swapper.swaps == [{"mlp": "v0000"}]
    assert r.adopted == [{"mlp": "v0000"}] and r.registry.aliases("m", "mlp")["previous"] == "v0001"
    ((_, target, fields),) = [rec for rec in r.records if rec[0] == "promote"]
    assert (target, fields["outcome"], fields["incident"]) == ("m/mlp", "ok", "op10000000-mlp")
    ev = fields["evidence"]
    assert (ev["by"], ev["reason"], ev["versions"], ev["previous"]) == ("ops@host", "v0001 is worse on Mondays",
                                                                       {"mlp": "v0000"}, {"mlp": "v0001"})
    assert r.saved[0]["promoting"]["by"] == "ops@host"  # the intent, with who asked, is durable before the move
    assert r.playbook.promoting is None and r.playbook.probation is None  # no probation: the operator chose it


@pytest.mark.parametrize(("member", "ref", "status", "says"), [
    ("nope", "v0000", 404, "no member 'nope'; members: ['mlp', 'lr']"),
    ("mlp", "v0042", 404, "no version 'v0042' of 'mlp'"),
    ("mlp", "champion", 409, "'champion' is the champion of 'mlp' already (v0001): nothing to promote"),
])
def test_an_operator_promotion_of_an_unknown_or_serving_version_is_refused(member, ref, status, says):
    r = Rig()
    out = r.healer.request_promote(member, ref, who="ops")
    assert out == {"error": says, "status": status} and r.registry.promoted == [] and r.records == []


def test_an_operator_promotion_is_refused_during_a_trial_and_for_another_schema():
    async def go(r: Rig) -> dict[str, Any]:
        r.healer.request_trial("mlp", "challenger")
        await r.healer.settled()
        return r.healer.request_promote("lr", "v0000", who="ops")

    r = Rig()
    during = run(go(r))
    assert during["status"] == 409 and "trial t10000-mlp is running" in during["error"]
    r = Rig()
    r.registry.schema["v0000"] = "s2"
    other = r.healer.request_promote("mlp", "v0000", who="ops")
    assert other["status"] == 409 and "another schema" in other["error"]


def test_an_operator_promotion_releases_its_member_from_probation():
    async def go(r: Rig) -> None:
        await r.gated_job(mlp=True, lr=True)  # rollout off: both promoted to v0002, on probation
        assert r.healer.request_promote("mlp", "v0000", who="ops")["promote"] == "started"
        await r.healer.settled()

    r = Rig(rollout="off")
    run(go(r))
    assert r.playbook.probation["versions"] == {"lr": "v0002"}  # mlp is the operator's now


# ---- probation on every live signal, and approval of every model action (issue 20) -------------------

def champion_moves() -> list[dict[str, Any]]:
    """v0000 then v0001 were champions; v0000 failed a probation once (so it is never a rollback target)."""
    return [{"at": 1.0, "action": "promote", "alias": "champion", "from_version": None, "to_version": "v0000"},
            {"at": 2.0, "action": "promote", "alias": "champion", "from_version": "v0000", "to_version": "v0001"}]


def test_a_promotion_takes_the_champions_call_baseline_and_failing_calls_roll_it_back_to_a_healthy_version():
    """On the old code only accuracy was judged and the rollback went to ``previous`` whatever it was."""
    registry = FakeRegistry()
    registry.moves = champion_moves() + [{"at": 3.0, "action": "probation-failed", "alias": "champion",
                                          "from_version": "v0000", "to_version": "v0001"}]
    baseline = {"mlp": CallSample(ok=1990, failed=10, latencies=[0.01] * 1990)}

    async def go(r: Rig) -> None:
        await r.gated_job(mlp=True, lr=False)
        r.playbook.observe_probation("mlp", "v0002", CallSample(ok=240, failed=60, latencies=[0.01] * 240))
        assert await r.step() is True  # the promotion's end is checkpointed first
        assert await r.step() is True  # then judged: rolled back in the background

    r = Rig(rollout="off", registry=registry, baseline=baseline)
    run(go(r))
    assert r.last("promote")["evidence"]["baseline"]["mlp"]["calls"] == 2000
    rb = r.last("rollback")
    assert rb["outcome"] == "ok" and rb["evidence"]["champion_now"] == {"mlp": "v0001"}
    assert rb["evidence"]["signals"]["mlp"][0]["signal"] == "error_rate"
    assert "v0000 failed probation" in rb["evidence"]["choice"]["mlp"]
    assert registry.aliases("m", "mlp") == {"champion": "v0001", "previous": "v0002", "challenger": "v0002"}
    assert r.swapper.swaps[-1] == {"mlp": "v0001"} and r.playbook.probation is None


def test_with_no_healthy_version_the_failing_one_keeps_serving_and_the_record_says_why():
    registry = FakeRegistry()
    registry.aliases_["mlp"]["champion"] = "v0002"
    # Only v0000 was ever champion before v0002, and it failed its own probation: nowhere healthy to go.
    registry.moves = champion_moves()[:1] + [{"at": 3.0, "action": "probation-failed", "alias": "champion",
                                              "from_version": "v0000", "to_version": "v0002"}]
    r = Rig(registry=registry)
    out = run(r.healer.rollback_probation(Rollback(("mlp",), "probation failed", {"mlp": "v0002"})))
    assert out["rolled_back"] == {} and "kept v0002" in out["errors"]["mlp"]
    assert "v0000 failed probation" in r.last("rollback")["evidence"]["choice"]["mlp"]
    assert registry.aliases("m", "mlp")["champion"] == "v0002" and r.swapper.swaps == []


def test_approval_mode_proposes_retrain_promotion_and_rollback_and_runs_each_once_approved():
    async def settle(r: Rig) -> None:
        while await r.step():  # a change is checkpointed on one step, acted on in the next
            pass

    async def go(r: Rig) -> None:
        assert await r.step(triggers=[DECAY]) is True  # proposed, not submitted
        assert r.jobs.submitted == [] and r.kinds() == ["proposed"]
        (p,) = r.healer.proposals()
        assert p["action"] == "retrain" and p["incident"] == "model-000001"
        assert await r.step(triggers=[DECAY]) is False  # waiting for the operator
        assert r.healer.decide("model-000001", True, "ops")["approval"] == "approved"
        await settle(r)
        assert len(r.jobs.submitted) == 1  # approved: submitted
        r.jobs.status = "SUCCEEDED"
        r.jobs.outcomes[r.jobs.submitted[-1].record] = gated(mlp=True, lr=False)
        await settle(r)
        assert r.registry.promoted == [] and r.healer.proposals()[0]["action"] == "promote"
        r.healer.decide("model-000002", True, "ops")
        await settle(r)
        assert r.registry.promoted == [("mlp", "v0002")] and r.playbook.probation is not None
        r.playbook.observe_probation("mlp", "v0002", CallSample(ok=240, failed=60, latencies=[0.01] * 240))
        await settle(r)
        assert r.healer.proposals()[0]["action"] == "rollback" and r.swapper.swaps == [{"mlp": "v0002"}]
        r.healer.decide("model-000003", True, "ops")
        await settle(r)

    registry = FakeRegistry()
    registry.moves = champion_moves()
    r = Rig(rollout="off", approval=True, registry=registry,
            baseline={"mlp": CallSample(ok=1990, failed=10, latencies=[0.01] * 1990)})
    run(go(r))
    # The best score of the healthy recent champions (v0000 0.75 over v0001 0.7), not blindly `previous`
    assert r.swapper.swaps[-1] == {"mlp": "v0000"}
    assert r.kinds().count("proposed") == 3 and r.kinds().count("approved") == 3
    assert r.last("approved")["evidence"]["by"] == "ops" and r.last("rollback")["outcome"] == "ok"


def test_a_rejected_promotion_keeps_the_champion():
    async def go(r: Rig) -> None:
        assert await r.step(triggers=[DECAY])  # submitted in auto mode
        r.approval = True  # then the operator switches to approval mode
        r.jobs.status = "SUCCEEDED"
        r.jobs.outcomes[r.jobs.submitted[-1].record] = gated(mlp=True, lr=False)
        assert await r.step()
        (p,) = r.healer.proposals()
        assert p["action"] == "promote" and p["target"] == "m"
        assert r.healer.decide(p["incident"], False, "ops")["approval"] == "rejected"
        await r.step()

    r = Rig(rollout="off")
    run(go(r))
    assert r.registry.promoted == [] and r.swapper.swaps == [] and r.healer.proposals() == []
    assert r.last("rejected")["evidence"]["by"] == "ops" and r.playbook.probation is None
    assert r.playbook.history[-1]["result"] == "promote rejected by an operator"
