"""The controller SIGKILLed at its worst moments on a real local Ray cluster: nothing done twice, nothing lost.

Each test arms one named failpoint (:mod:`raymedic.failpoints`: a real SIGKILL of the
controller's own process, once), brings about the situation that reaches it — a
replica fault, an operator's retrain, a live trial that promotes — and waits for Ray
to restart the controller (``max_restarts=-1``) and for the action to complete. The
audit must then show every action exactly once and every record
(:func:`controllers.exactly_once.exactly_once`), and the world must agree: one Ray job
per retrain intent, one promotion per version in the registry.

``test_healing.py`` kills the controller between steps (a crash with nothing in
flight); these kill it inside one.
"""

from __future__ import annotations

import os

import pytest

from raymedic.app.http import request_json
from raymedic.failpoints import FAILPOINTS_ENV, Point, arm, fired
from raymedic.keys import ADMIN_TOKEN_ENV, retrain_job_id
from raymedic.storage import Storage
from tests.conftest import local_service, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")

TOKEN = "test-admin-token"
TRIAL_LABELS = 20
"""Paired labels a live trial needs for its verdict (the config's smallest): the promotion comes soon."""


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """One service for the module, its controller's processes able to reach the armed failpoints."""
    tmp = tmp_path_factory.mktemp("kills")
    points = tmp / "storage" / "failpoints"
    saved = {k: os.environ.get(k) for k in (ADMIN_TOKEN_ENV, FAILPOINTS_ENV)}
    os.environ[ADMIN_TOKEN_ENV] = TOKEN
    os.environ[FAILPOINTS_ENV] = str(points)  # inherited by every process of the embedded cluster
    try:
        # Retraining only when asked (no automatic job races the tests); a trial decides on few labels and
        # sees every request.
        with local_service(tmp, retraining={"enabled": False},
                           rollout={"mode": "canary", "share": 1.0, "min_labels": TRIAL_LABELS,
                                    "max_labels": 200}) as (url, cfg):
            yield Svc(url, cfg, points)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Svc:
    def __init__(self, url: str, cfg, points) -> None:
        self.url, self.cfg, self.points = url, cfg, points

    def status(self) -> dict:  # with the token: the full view (the controller's pid)
        r = request_json("GET", f"{self.url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout_s=10)
        assert r.status == 200, r.body
        return r.body

    def admin(self, route: str, body: dict | None = None) -> dict:
        r = request_json("POST", f"{self.url}/v1/admin/{route}", body or {},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout_s=30)
        assert r.status == 200, r.body
        return r.body

    def pid(self) -> int:
        return self.status()["controller"]["pid"]

    def audit(self) -> list[dict]:
        from controllers.audit import read_audit

        return read_audit(Storage(self.cfg.storage_path), self.cfg.model)

    def killed_and_back(self, point: Point, pid: int) -> dict:
        """Wait for ``point`` to fire and Ray to restart the controller from its checkpoint."""
        wait_for(lambda: fired(self.points, point), timeout_s=120, what=f"failpoint {point} to fire")
        after = wait_for(lambda: (c := self.status()["controller"]).get("pid") not in (None, pid) and c,
                         timeout_s=90, what="Ray to restart the controller")
        assert after["resumed_from_checkpoint"] is True
        return after

    def flushed_audit(self) -> list[dict]:
        """The audit with whatever the controller still buffers written out."""
        from controllers.client import get_controller

        ray.get(get_controller().flush.remote(), timeout=30)
        return self.audit()

    def labelled_traffic(self, n: int, seed: int) -> None:
        from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

        rows = SyntheticGenerator(SyntheticSpec(seed=0)).sample(n, seed=seed)
        features = [c for c in rows.columns if c != "label"]
        r = request_json("POST", f"{self.url}/v1/models/{self.cfg.model}:predict",
                         {"instances": rows[features].to_dict("records")}, timeout_s=30)
        assert r.status == 200, r.body
        f = request_json("POST", f"{self.url}/v1/models/{self.cfg.model}:feedback",
                         {"inference_ids": r.body["inference_ids"], "labels": rows["label"].tolist()}, timeout_s=30)
        assert f.status == 200, f.body


def _exactly_once(records: list[dict]) -> None:
    from controllers.exactly_once import exactly_once

    verdict = exactly_once(records)
    assert verdict.duplicates == () and verdict.missing == (), verdict


def test_killed_right_after_detecting_a_fault_it_restarts_the_replica_once_and_audits_it_all(svc):
    arm(svc.points, Point.AFTER_DETECT)
    pid = svc.pid()
    replica = svc.admin("chaos", {"fault": "wrong", "member": "mlp"})["replica"]
    svc.killed_and_back(Point.AFTER_DETECT, pid)
    inc = wait_for(lambda: next((i for i in svc.status()["incidents"] if i["replica"] == replica
                                 and i["status"] == "recovered"), None),
                   timeout_s=120, what=f"the wrong replica mlp/{replica} to be replaced after the kill")
    assert inc["action"] == "restart" and inc["action_outcome"].startswith("ok"), inc
    records = svc.flushed_audit()
    kinds = [r["kind"] for r in records if r.get("incident") == inc["id"]]
    assert kinds.count("detected-wrong") == 1 and kinds.count("restart") == 1 and "recovered" in kinds, kinds
    _exactly_once(records)


def test_killed_right_after_submitting_a_retrain_it_follows_the_one_job(svc):
    from ray.job_submission import JobSubmissionClient

    arm(svc.points, Point.AFTER_SUBMIT)
    pid = svc.pid()
    svc.admin("retrain", {"reason": "kill test"})
    svc.killed_and_back(Point.AFTER_SUBMIT, pid)
    # Few labels: the job ends at once (skipped); what matters is that it is the one job, followed to its end.
    done = wait_for(lambda: next((h for h in (svc.status()["controller"].get("retraining") or {}).get("history", [])
                                  if "kill test" in h.get("reason", "") and h.get("job_status")), None),
                    timeout_s=180, what="the retrain job submitted before the kill to be followed to its end")
    job_id = retrain_job_id(svc.cfg.model, done["record"])
    jobs = JobSubmissionClient(ray.get_runtime_context().gcs_address).list_jobs()
    assert [j.submission_id for j in jobs if done["record"] in (j.submission_id or "")] == [job_id]
    records = svc.flushed_audit()
    kinds = [r["kind"] for r in records if r.get("incident") == done["record"]]
    assert kinds.count("retrain-submitted") == 1 and kinds.count("retrain-finished") == 1, kinds
    _exactly_once(records)


def test_killed_in_the_middle_of_a_promotion_it_promotes_once_and_audits_it(svc):
    from train_jobs.registry import ModelRegistry

    registry = ModelRegistry(Storage(svc.cfg.storage_path))
    model, member = svc.cfg.model, "logistic"
    champion = registry.load(model, member)
    meta = {k: v for k, v in champion.info.metadata.items()
            if k not in ("version", "model", "member", "created_at", "parent_version", "files")}
    # The champion's own weights as a new version: it ties live, and a tie is promoted once the labels are in.
    challenger = registry.register(model, member, files={k: v for k, v in champion.files.items()
                                                         if k != "metadata.json"},
                                   metadata=meta, parent_version=champion.info.version).version
    arm(svc.points, Point.MID_PROMOTION)
    pid = svc.pid()
    record = svc.admin("trial", {"member": member, "version": challenger})["trial"]
    seeds = iter(range(100, 10_000))
    wait_for(lambda: svc.labelled_traffic(10, next(seeds)) is None and fired(svc.points, Point.MID_PROMOTION),
             timeout_s=240, what="the live trial to promote the challenger (and the failpoint to fire)")
    svc.killed_and_back(Point.MID_PROMOTION, pid)
    wait_for(lambda: {m["name"]: m["version"] for m in svc.status()["members"]}[member] == challenger,
             timeout_s=120, what=f"{member} to serve {challenger} after the kill")
    wait_for(lambda: any(r["kind"] == "promote" and r.get("incident") == record for r in svc.flushed_audit()),
             timeout_s=60, what="the promotion to be audited")
    moves = [m for m in registry.alias_history(model, member) if m.alias == "champion" and m.to_version == challenger]
    assert len(moves) == 1, moves
    versions = [v.version for v in registry.versions(model, member)]
    assert len(versions) == len(set(versions)), versions
    records = svc.flushed_audit()
    kinds = [r["kind"] for r in records if r.get("incident") == record]
    assert kinds.count("trial-finished") == 1 and kinds.count("promote") == 1, kinds
    _exactly_once(records)
