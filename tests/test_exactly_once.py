"""The exactly-once check of an audit trail, and the failpoints the kill tests arm (pure: no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys

from controllers.exactly_once import (
    Duplicate,
    Missing,
    duplicate_actions,
    exactly_once,
    missing_records,
)
from raymedic.failpoints import FAILPOINTS_ENV, Point, arm, failpoint, fired
from tests.conftest import REPO


def _incident(inc: str, *, restarts: int = 1, detected: int = 1, recovered: bool = True) -> list[dict]:
    recs = [{"kind": "detected-wrong", "incident": inc, "action": "avoid", "outcome": "ok"}] * detected
    recs += [{"kind": "restart", "incident": inc, "action": "restart", "outcome": "ok"}] * restarts
    if recovered:
        recs.append({"kind": "recovered", "incident": inc, "action": "restart", "outcome": "ok"})
    return recs


def _retrain(record: str, job: str, *, submitted: int = 1, finished: bool = True) -> list[dict]:
    recs = [{"kind": "retrain-submitted", "incident": record, "evidence": {"job_id": job},
             "outcome": "submitted"}] * submitted
    if finished:
        recs.append({"kind": "retrain-finished", "incident": record, "evidence": {"job_id": job}, "outcome": "promoted"})
    return recs


def _promotion(record: str, versions: dict[str, str], *, promotes: int = 1) -> list[dict]:
    return ([{"kind": "trial-finished", "incident": record, "outcome": "promote", "evidence": {"promote": versions}}]
            + [{"kind": "promote", "incident": record, "outcome": "ok", "evidence": {"versions": versions}}] * promotes)


def test_a_clean_trail_has_no_duplicate_and_nothing_missing():
    recs = (_incident("inc-000001") + _retrain("r0001-5", "raymedic-retrain-m-r0001-5")
            + _promotion("r0001-5", {"mlp": "v0002"}) + [{"kind": "controller-started", "outcome": "ok"}]
            # a failed promotion followed by one that worked promoted the version once
            + [{"kind": "promote", "incident": "t1-mlp", "outcome": "failed: boom",
                "evidence": {"versions": {"mlp": "v0003"}}}]
            + [{"kind": "promote", "incident": "t1-mlp", "outcome": "ok", "evidence": {"versions": {"mlp": "v0003"}}}]
            # a node incident has a lifecycle of its own: not judged by the replica rules
            + [{"kind": "detected-node-pressure", "incident": "node-000001", "outcome": "ok"}])
    verdict = exactly_once(recs)
    assert verdict.ok and verdict.duplicates == () and verdict.missing == (), verdict


def test_each_repeated_action_is_one_duplicate():
    recs = (_incident("inc-000001", restarts=2) + _incident("inc-000002", detected=2)
            + _retrain("r0001-5", "job-a", submitted=2) + _promotion("r0002-9", {"mlp": "v0004", "logistic": "v0002"},
                                                                     promotes=2))
    assert duplicate_actions(recs) == [
        Duplicate("detected", "inc-000002", 2), Duplicate("promote", "logistic@v0002", 2),
        Duplicate("promote", "mlp@v0004", 2), Duplicate("restart", "inc-000001", 2),
        Duplicate("retrain-job", "job-a", 2), Duplicate("retrain-submitted", "r0001-5", 2)]
    # Two intents that went out as one Ray job are a duplicate too, whatever their record ids.
    twice = _retrain("r0001-5", "job-a") + _retrain("r0002-6", "job-a")
    assert duplicate_actions(twice) == [Duplicate("retrain-job", "job-a", 2)]
    assert missing_records(recs) == []


def test_each_lost_record_is_named():
    lost_detection = [r for r in _incident("inc-000001") if not r["kind"].startswith("detected-")]
    lost_restart = [r for r in _incident("inc-000002") if r["kind"] != "restart"]
    no_outcome = _incident("inc-000003", recovered=False)
    lost_submit = [r for r in _retrain("r0001-5", "job-a") if r["kind"] != "retrain-submitted"]
    unfinished = _retrain("r0002-6", "job-b", finished=False)
    lost_promote = [r for r in _promotion("r0003-7", {"mlp": "v0005"}) if r["kind"] != "promote"]
    recs = lost_detection + lost_restart + no_outcome + lost_submit + unfinished + lost_promote
    assert missing_records(recs) == [
        Missing("detection", "inc-000001", "restart"), Missing("action", "inc-000002", "recovered"),
        Missing("outcome", "inc-000003", "detected-wrong"), Missing("submission", "r0001-5", "retrain-finished"),
        Missing("outcome", "r0002-6", "retrain-submitted"), Missing("promotion", "r0003-7", "trial-finished")]
    assert duplicate_actions(recs) == [] and not exactly_once(recs).ok


def test_a_failpoint_does_nothing_unless_armed_and_fires_once(tmp_path):
    kills: list[str] = []
    failpoint(Point.AFTER_SUBMIT, directory=str(tmp_path), kill=lambda: kills.append("x"))
    failpoint(Point.AFTER_SUBMIT, directory="", kill=lambda: kills.append("x"))  # the facility off
    assert kills == [] and not fired(tmp_path, Point.AFTER_SUBMIT)
    arm(tmp_path / "fp", Point.AFTER_SUBMIT)
    for _ in range(3):  # the restarted process passes the same point: no crash loop
        failpoint(Point.AFTER_SUBMIT, directory=str(tmp_path / "fp"), kill=lambda: kills.append("x"))
        failpoint(Point.AFTER_DETECT, directory=str(tmp_path / "fp"), kill=lambda: kills.append("other"))
    assert kills == ["x"] and fired(tmp_path / "fp", Point.AFTER_SUBMIT)
    arm(tmp_path / "fp", Point.AFTER_SUBMIT)  # armed again: fires again, once
    assert not fired(tmp_path / "fp", Point.AFTER_SUBMIT)


def test_an_armed_failpoint_is_a_real_sigkill_of_its_process(tmp_path):
    arm(tmp_path, Point.AFTER_DETECT)
    code = ("from raymedic.failpoints import failpoint, Point\n"
            "failpoint(Point.AFTER_DETECT)\n"
            "print('survived')\n")
    env = {**os.environ, FAILPOINTS_ENV: str(tmp_path), "PYTHONPATH": str(REPO)}

    def run(environ: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                              timeout=60, check=False)

    first = run(env)
    assert first.returncode == -9 and "survived" not in first.stdout, (first.returncode, first.stderr)
    again = run(env)
    assert again.returncode == 0 and "survived" in again.stdout, again.stderr
    off = {k: v for k, v in env.items() if k != FAILPOINTS_ENV}
    arm(tmp_path, Point.AFTER_DETECT)
    never = run(off)
    assert never.returncode == 0 and not fired(tmp_path, Point.AFTER_DETECT)  # unset: off, however armed
