"""Model-level healing on a real local Ray cluster: concept drift → Ray job → gate → canary → promotion.

The drift comes in through the HTTP API exactly as a user's traffic would: rows
from a rotated concept are predicted, and their true labels sent as feedback.
The controller must notice the decay, submit a retraining job through the Ray
Jobs API, gate the challengers on the newest labels, put the winners on a live
canary trial next to their champions, promote the ones that hold up (swapped in
place on every replica, no process restarted) — drop a challenger that does not — and an operator must be
able to roll back.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from raymedic.keys import ADMIN_TOKEN_ENV, controller_config_key
from raymedic.app.http import request_json
from raymedic.storage import Storage
from tests.conftest import local_service, wait_for
from train_jobs.synthetic import Drift, SyntheticGenerator, SyntheticSpec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")

TOKEN = "test-admin-token"
GEN = SyntheticGenerator(SyntheticSpec(seed=0))  # the concept the built-in model was trained on
DRIFT = Drift(concept_rotation_deg=150)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    old = os.environ.get(ADMIN_TOKEN_ENV)
    os.environ[ADMIN_TOKEN_ENV] = TOKEN
    try:
        with local_service(tmp_path_factory.mktemp("retrain"),
                           retraining={"min_labeled_rows": 240, "cooldown_s": 5, "probation_labels": 60},
                           rollout={"mode": "canary", "share": 0.5, "min_labels": 60},
                           performance={"min_labels": 60}) as (url, cfg):
            yield Svc(url, cfg)
    finally:
        if old is None:
            os.environ.pop(ADMIN_TOKEN_ENV, None)
        else:
            os.environ[ADMIN_TOKEN_ENV] = old


class Svc:
    def __init__(self, url: str, cfg) -> None:
        self.url, self.cfg = url, cfg

    def status(self) -> dict:  # with the token: the full view (replicas' pids)
        r = request_json("GET", f"{self.url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout_s=10)
        assert r.status == 200, r.body
        return r.body

    def versions(self) -> dict[str, str]:
        return {m["name"]: m["version"] for m in self.status()["members"]}

    def served(self, n: int = 12) -> dict[str, set[str]]:
        """The versions that actually answered ``n`` predictions, per member (each answer names them).

        Fresh rows each time: the same rows sent again and again would look like input drift."""
        self._served_calls = getattr(self, "_served_calls", 0) + 1
        rows = GEN.sample(n, seed=5000 + self._served_calls, drift=DRIFT)
        features = [c for c in rows.columns if c != "label"]
        seen: dict[str, set[str]] = {}
        for rec in rows[features].to_dict("records"):
            r = request_json("POST", f"{self.url}/v1/models/{self.cfg.model}:predict", {"instances": [rec]},
                             timeout_s=30)
            assert r.status == 200, r.body
            for part in r.body["model_version"].split(","):
                member, _, version = part.partition(":")
                seen.setdefault(member, set()).add(version)
        return seen

    def pids(self) -> dict[str, set[int]]:
        return {m["name"]: {r["pid"] for r in m["replicas"]} for m in self.status()["members"]}

    def retraining(self) -> dict:
        return self.status()["controller"].get("retraining") or {}

    def admin(self, route: str, body: dict | None = None):
        return request_json("POST", f"{self.url}/v1/admin/{route}", body or {},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout_s=30)

    def traffic(self, n: int, seed: int, *, feedback: bool = True) -> float:
        """Predict ``n`` drifted rows in batches, send their true labels; the service's accuracy on them."""
        rows = GEN.sample(n, seed=seed, drift=DRIFT)
        features = [c for c in rows.columns if c != "label"]
        right = 0
        for i in range(0, n, 50):
            part = rows.iloc[i:i + 50]
            r = request_json("POST", f"{self.url}/v1/models/{self.cfg.model}:predict",
                             {"instances": part[features].to_dict("records")}, timeout_s=30)
            assert r.status == 200, r.body
            right += int((np.array(r.body["predictions"]) == part["label"].to_numpy()).sum())
            if feedback:
                f = request_json("POST", f"{self.url}/v1/models/{self.cfg.model}:feedback",
                                 {"inference_ids": r.body["inference_ids"], "labels": part["label"].tolist()},
                                 timeout_s=30)
                assert f.status == 200 and f.body["accepted"] == len(part), f.body
        return right / n

    def operator_mode(self) -> None:
        """From here on only the operator starts retrains (what an operator gets by redeploying with
        ``retraining.enabled: false``), and whatever the controller had started is finished first.

        The tests after the automatic heal exercise operator actions on a known state. Left on, the
        controller rightly keeps working on a member that could not learn the rotated concept well
        (logistic regression on a non-linear boundary) and its jobs and trials would race the
        operator's; they do finish: the trial is fed labelled traffic until it has a verdict."""
        from controllers.client import get_controller

        storage = Storage(self.cfg.storage_path)
        if self.retraining().get("enabled"):
            doc = json.loads(storage.read_text(controller_config_key(self.cfg.model)))
            doc["config"]["retraining"]["enabled"] = False
            storage.write_text(controller_config_key(self.cfg.model), json.dumps(doc))
            ray.get(get_controller().reload.remote(), timeout=60)
        seeds = iter(range(9000, 10000))

        def idle() -> bool:
            r = self.retraining()
            if not any(r.get(k) for k in ("job", "trial", "deploying")):
                return True
            self.traffic(60, seed=next(seeds))  # labels for a running trial's verdict
            return False

        wait_for(idle, timeout_s=420, what="the controller to finish the job or trial it had started")
        wait_for(lambda: not _canary_apps(), timeout_s=60, what="the challengers' own applications to go")
        # A promotion finishing meanwhile rewrote the same document: both changes must have held.
        doc = json.loads(storage.read_text(controller_config_key(self.cfg.model)))
        assert self.retraining()["enabled"] is False and doc["versions"] == self.versions(), doc["versions"]

    def audit_kinds(self) -> list[str]:
        from controllers.audit import read_audit

        return [r["kind"] for r in read_audit(Storage(self.cfg.storage_path), self.cfg.model)]


def test_concept_drift_is_healed_by_a_gated_retrain_job(svc):
    import time

    before = svc.versions()
    pids = svc.pids()
    t0 = time.monotonic()
    acc_drifted = svc.traffic(400, seed=11)
    assert acc_drifted < 0.5, acc_drifted  # the old concept's model is now mostly wrong
    job = wait_for(lambda: (svc.retraining().get("job") or {}).get("job_id") or None, timeout_s=120,
                   what="the controller to submit a retraining job")
    # The job is a real Ray job, named and tagged for the dashboard's Jobs view.
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray.get_runtime_context().gcs_address)
    info = client.get_job_info(job)
    assert job.startswith(f"raymedic-retrain-{svc.cfg.model}-") and info.metadata["kind"] == "retrain"
    done = wait_for(lambda: next((h for h in svc.retraining().get("history", []) if h.get("job_id") == job), None),
                    timeout_s=420, what="the retraining job to finish and be gated")
    t_gated = time.monotonic() - t0
    assert client.get_job_status(job).value == "SUCCEEDED"
    assert done["result"] == "promoted", done
    passed = {m for m, g in done["gate"].items() if g["passed"]}
    assert passed and all(done["gate"][m]["challenger_accuracy"] > done["gate"][m]["champion_accuracy"]
                          for m in passed)
    # The winners go on a canary trial: labelled live traffic decides; then every replica
    # swaps to the promoted versions, and the others keep theirs.
    seeds = iter(range(100, 1000))
    wait_for(lambda: svc.traffic(60, seed=next(seeds)) is not None and all(
        (svc.versions()[m] != before[m]) == (m in passed) for m in before), timeout_s=300,
        what=f"a canary trial on labelled traffic to promote {sorted(passed)}")
    t_promoted = time.monotonic() - t0
    trial = next(h for h in reversed(svc.retraining()["history"]) if h.get("result", "").startswith("trial"))
    assert trial["result"] == "trial: promoted" and trial["mode"] == "canary", trial
    for m in passed:
        live = trial["live"][m]
        assert trial["verdicts"][m][0] == "promote" and live["labels"] >= 60, trial
        assert live["challenger_accuracy"] > live["champion_accuracy"], trial
    # Promoted in place: the same replica processes answer, now with the new versions.
    now = svc.versions()
    wait_for(lambda: all(svc.served()[m] == {now[m]} for m in now), timeout_s=60,
             what=f"every replica to answer with the promoted versions {now}")
    assert svc.pids() == pids, (pids, svc.pids())
    weights = {m["name"]: m["weight"] for m in svc.status()["members"]}
    acc_after = svc.traffic(300, seed=12)
    print(f"\nconcept drift (150°) healed: accuracy {acc_drifted:.3f} → {acc_after:.3f} (weights on promotion "
          f"{weights}); from the first drifted "
          f"request: job gated after {t_gated:.0f} s, canary trial done and promoted after {t_promoted:.0f} s "
          f"(trial: {json.dumps(trial['live'])})")
    assert acc_after > acc_drifted + 0.2, (acc_drifted, acc_after)
    wait_for(lambda: {"retrain-submitted", "retrain-finished", "trial-started", "trial-promote", "promote"}
             <= set(svc.audit_kinds()) and not svc.retraining().get("deploying"), timeout_s=120,
             what=f"the trial and promotion to be audited (retraining: {svc.retraining()})")
    wait_for(lambda: not _canary_apps(), timeout_s=60, what="the challengers' own applications to go")
    # The challengers' replicas were started while the job trained and swapped in after the gate.
    from controllers.audit import read_audit

    started = next(r for r in read_audit(Storage(svc.cfg.storage_path), svc.cfg.model) if r["kind"] == "trial-started")
    assert started["evidence"]["challengers"] == {m: "swapped into the warm replica" for m in passed}, started
    svc.passed, svc.before = passed, before
    # The member that learnt the new concept best: the operator tests below trial and roll it back.
    svc.best = max(passed, key=lambda m: done["gate"][m]["challenger_accuracy"])


def _canary_apps() -> list[str]:
    from ray import serve

    from raymedic.keys import CANARY_APP_NAME

    return [a for a in serve.status().applications if a.startswith(CANARY_APP_NAME)]


def test_a_bad_challenger_is_rejected_by_the_gate(svc):
    from train_jobs.registry import ModelRegistry
    from train_jobs.retrain import retrain

    svc.operator_mode()

    # Deliberately bad: one epoch at a negligible learning rate is an untrained network.
    cfg = svc.cfg.model_copy(update={
        "training": svc.cfg.training.model_copy(update={"epochs": 1, "learning_rate": 1e-7}),
        "retraining": svc.cfg.retraining.model_copy(update={"search_on_reject": False})})
    registry = ModelRegistry(Storage(cfg.storage_path))
    champions = {m: registry.resolve(cfg.model, m, "champion") for m in sorted(svc.passed)}
    out = retrain(cfg, reason="test: bad challenger", members=sorted(svc.passed), progress=lambda s: None)
    assert out["passed"] == [] and out["rejected"] == sorted(svc.passed), out
    assert all("below the margin" in r for m in out["members"].values() for r in m["reasons"][:1])
    assert {m: registry.resolve(cfg.model, m, "champion") for m in champions} == champions

    # With search on reject, the same bad retrain is followed by a Tune + Optuna search whose best
    # configuration is gated on the same holdout and recorded in the version's metadata.
    member = sorted(svc.passed)[0]
    cfg = cfg.model_copy(update={"retraining": cfg.retraining.model_copy(
        update={"search_on_reject": True, "search_trials": 3, "search_max_epochs": 6})})
    out = retrain(cfg, reason="test: bad challenger, then search", members=[member], progress=lambda s: None)
    v = out["members"][member]
    assert v["search"]["trials"] == 3 and v["search"]["best_config"], v
    assert v["search"]["retrained"]["reasons"] and v["challenger_version"] != v["search"]["retrained"]["version"]
    searched = registry.info(cfg.model, member, v["challenger_version"])
    assert searched.metadata["search"]["best_config"] == v["search"]["best_config"]
    # The searched version was judged like any challenger: a pass beats the champion by the margin.
    if v["passed"]:
        assert v["challenger_metrics"]["accuracy"] >= v["champion_metrics"]["accuracy"] + cfg.retraining.gate_margin
    else:
        assert v["reasons"], v
    assert v["challenger_metrics"]["accuracy"] > v["search"]["retrained"]["accuracy"]  # far from untrained
    assert registry.resolve(cfg.model, member, "champion") == champions[member]  # never promoted here


def test_a_challenger_that_is_worse_live_is_dropped_by_the_canary(svc):
    svc.operator_mode()
    member = svc.best
    champion = svc.versions()[member]
    for body, code, words in [({"member": "nope"}, 404, "no member"), ({"member": member, "version": "v-nope"},
                                                                         404, "v-nope"), ({}, 400, "member")]:
        r = svc.admin("trial", body)
        assert r.status == code and words in r.body["error"], r.body
    assert svc.admin("trial", {"member": member, "mode": "yolo"}).status == 400
    # The version it replaced knows only the old concept: on today's traffic it is mostly wrong.
    # In shadow mode it sees the requests but none of its answers reach a client.
    r = svc.admin("trial", {"member": member, "version": svc.before[member], "mode": "shadow"})
    assert r.status == 200 and r.body["version"] == svc.before[member] and r.body["mode"] == "shadow", r.body
    assert svc.admin("trial", {"member": member, "version": svc.before[member]}).status == 409  # one at a time
    seeds = iter(range(2000, 3000))
    served: list[float] = []
    wait_for(lambda: served.append(svc.traffic(60, seed=next(seeds))) is None and any(
        h.get("result") == "trial: rejected" and h.get("record") == r.body["trial"]
        for h in svc.retraining().get("history", [])), timeout_s=240,
        what=f"the live trial of {member}'s previous version to reject it")
    trial = next(h for h in svc.retraining()["history"] if h.get("record") == r.body["trial"])
    verdict, why = trial["verdicts"][member]
    assert verdict == "reject" and "worse than the champion" in why, trial
    # Clients never got its answers: what they were served stayed far better than the challenger.
    assert trial["mode"] == "shadow" and np.mean(served) > trial["live"][member]["challenger_accuracy"] + 0.1, (
        served, trial)
    assert svc.versions()[member] == champion  # the champion served throughout and still does
    wait_for(lambda: not _canary_apps(), timeout_s=60, what="the rejected challenger's application to go")
    assert "trial-reject" in svc.audit_kinds()


def test_a_failing_retrain_job_leaves_the_champion_serving(svc):
    from train_jobs.registry import ModelRegistry

    svc.operator_mode()
    storage = Storage(svc.cfg.storage_path)
    registry = ModelRegistry(storage)
    # every champion's stored training sample is corrupt: the job reads the sample of whichever member it
    # retrains first, and after a promotion members' champions may point at different samples
    keys = {registry.info(svc.cfg.model, m.name, "champion").metadata["train_sample"] for m in svc.cfg.members}
    good = {key: storage.read_bytes(key) for key in keys}
    versions = svc.versions()
    for key in keys:
        storage.write_bytes(key, b"not parquet")
    try:
        r = svc.admin("retrain", {"reason": "test: corrupt sample"})
        assert r.status == 200, r.body
        done = wait_for(lambda: next((h for h in svc.retraining().get("history", [])
                                      if "corrupt sample" in h.get("reason", "") and h.get("job_status")), None),
                        timeout_s=240, what="the retrain job on a corrupt sample to finish")
    finally:
        for key, data in good.items():
            storage.write_bytes(key, data)
    assert done["job_status"] == "FAILED" and done["result"] == "failed" and done["error"], done
    assert done["retry_after_s"] > 0  # backs off before the next automatic attempt
    assert svc.versions() == versions
    assert svc.traffic(60, seed=4000) > 0.6  # and the champions still answer well


def test_operator_rollback_serves_the_previous_versions(svc):
    from train_jobs.registry import ModelRegistry

    svc.operator_mode()
    bad = svc.admin("rollback", {"members": ["nope"]})
    assert bad.status == 404 and "unknown member" in bad.body["error"], bad.body
    member = svc.best
    previous = ModelRegistry(Storage(svc.cfg.storage_path)).aliases(svc.cfg.model, member)["previous"]
    r = svc.admin("rollback", {"members": [member]})
    assert r.status == 200 and r.body["champion_now"] == {member: previous}, r.body
    wait_for(lambda: svc.versions()[member] == previous, timeout_s=60,
             what=f"{member} to serve its previous version again")
    wait_for(lambda: svc.served()[member] == {previous}, timeout_s=60,
             what=f"every replica of {member} to answer with {previous}")
    wait_for(lambda: "rollback" in svc.audit_kinds(), timeout_s=60, what="the rollback to be audited")
    assert svc.admin("rollback", {"members": "mlp"}).status == 400


def test_an_operator_promotes_any_registered_version(svc):
    """`raymedic promote`'s route: the version the rollback above replaced is promoted back by id, through
    the same swap, and audited with who asked and what it replaced; an unknown version names those there are."""
    from controllers.audit import read_audit
    from train_jobs.registry import ModelRegistry

    svc.operator_mode()
    member = svc.best
    champion = svc.versions()[member]
    wanted = ModelRegistry(Storage(svc.cfg.storage_path)).aliases(svc.cfg.model, member)["previous"]
    assert wanted != champion
    bad = svc.admin("promote", {"member": member, "version": "v9999"})
    assert bad.status == 404 and "v9999 does not exist" in bad.body["error"] and champion in bad.body["error"], bad.body
    assert svc.admin("promote", {"member": "nope", "version": wanted}).status == 404
    r = svc.admin("promote", {"member": member, "version": wanted, "reason": "test: the retrained one again",
                              "by": "tester"})
    assert r.status == 200 and (r.body["version"], r.body["previous"]) == (wanted, champion), r.body
    wait_for(lambda: svc.versions()[member] == wanted, timeout_s=60, what=f"{member} to serve {wanted}")
    wait_for(lambda: svc.served()[member] == {wanted}, timeout_s=60,
             what=f"every replica of {member} to answer with {wanted}")
    rec = wait_for(lambda: next((x for x in read_audit(Storage(svc.cfg.storage_path), svc.cfg.model)
                                 if x["kind"] == "promote" and x.get("incident") == r.body["record"]), None),
                   timeout_s=30, what="the operator's promotion to be audited")
    assert rec["outcome"] == "ok" and rec["target"] == f"{svc.cfg.model}/{member}", rec
    assert (rec["evidence"]["by"], rec["evidence"]["reason"], rec["evidence"]["previous"]) == (
        "admin route: tester", "test: the retrained one again", {member: champion}), rec
