"""Two models on one service, on a real local Ray cluster: one gateway, one controller, nothing shared.

The registry holds two models with the same member names (``logistic``, ``mlp``) trained on different
tables: the built-in ``synthetic`` one and a ``cards`` table. ``choose_models`` finds both with no
``--model`` and no ``models:`` in the config (what ``raymedic up`` does), the first model's members keep
their deployment names and the other's become ``cards.logistic`` / ``cards.mlp``. The tests check each
model is served on its own routes with its own schema, and that a replica fault and a retrain of
``cards`` leave ``synthetic``'s answers, versions, replicas and record untouched.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from raymedic.app.http import request_json
from tests.conftest import PredictLoad, admin_token_env, copy_trained, free_port, remember_trained, wait_for, write_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")

TOKEN = "test-admin-token"
MEMBERS = [
    {"name": "logistic", "kind": "logistic", "fallback": True, "replicas": 2, "num_cpus": 0.15},
    {"name": "mlp", "kind": "mlp", "replicas": 2, "num_cpus": 0.15},
]
SUITS = ["clubs", "diamonds", "hearts", "spades"]


def cards_table(n: int, seed: int) -> pd.DataFrame:
    """A table unlike the synthetic one: other features (a categorical among them), three classes."""
    rng = np.random.default_rng(seed)
    amount = rng.normal(50.0, 15.0, n)
    count = rng.integers(0, 10, n)
    suit = rng.choice(SUITS, n)
    score = (amount - 50.0) / 15.0 + 0.4 * (count - 4.5) + np.where(np.isin(suit, ["hearts", "diamonds"]), 1.0, -1.0)
    kind = np.where(score > 0.8, "high", np.where(score < -0.8, "low", "mid"))
    return pd.DataFrame({"amount": amount, "count": count, "suit": suit, "kind": kind})


def cards_rows(n: int, seed: int) -> tuple[list[dict], list[str]]:
    t = cards_table(n, seed)
    return t.drop(columns="kind").to_dict("records"), t["kind"].tolist()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """Both models trained into one registry and served by one `choose_models` → deploy, as `raymedic up`."""
    from ray import serve

    from cluster.connect import start_embedded
    from raymedic.app import service
    from raymedic.config import load_config
    from train_jobs.train import train_ensemble

    tmp = tmp_path_factory.mktemp("several")
    port = free_port()
    sf = load_config(write_config(tmp / "raymedic.yaml", storage=tmp / "storage", port=port, members=MEMBERS,
                                  training={"epochs": 8, "synthetic_rows": 2000},
                                  retraining={"min_labeled_rows": 150, "cooldown_s": 5},
                                  rollout={"mode": "canary", "share": 0.5, "min_labels": 40}))
    cfg = sf.config.resolved()
    copy_trained(cfg, tmp / "storage")
    with admin_token_env(TOKEN):
        start_embedded(log_to_driver=False)
        try:
            service.ensure_trained(cfg, print)
            remember_trained(cfg, tmp / "storage", tmp / "trained")
            train_ensemble(cfg, cards_table(1500, seed=1), target="kind", model="cards", progress=print)
            served = service.choose_models(cfg, None, print)
            assert served.model_names == ["synthetic", "cards"], served.model_names
            service.deploy(served, host="127.0.0.1", port=port, progress=print)
            url = f"http://127.0.0.1:{port}"
            service.wait_all_ready(url, served, timeout_s=300, progress=print)
            yield Svc(url, served)
        finally:
            serve.shutdown()
            ray.shutdown()


class Svc:
    def __init__(self, url: str, cfg) -> None:
        self.url, self.cfg = url, cfg

    def get(self, path: str) -> dict:
        r = request_json("GET", f"{self.url}{path}", timeout_s=10)
        assert r.status == 200, (path, r.status, r.body)
        return r.body

    def status(self, model: str) -> dict:  # with the token: the full view (replicas' pids)
        r = request_json("GET", f"{self.url}/v1/status?model={model}", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout_s=10)
        assert r.status == 200, (model, r.status, r.body)
        return r.body

    def predict(self, model: str, instances: list) -> dict:
        r = request_json("POST", f"{self.url}/v1/models/{model}:predict", {"instances": instances}, timeout_s=30)
        assert r.status == 200, r.body
        return r.body

    def admin(self, route: str, body: dict | None = None, *, model: str):
        return request_json("POST", f"{self.url}/v1/admin/{route}?model={model}", body or {},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout_s=30)

    def synthetic_rows(self) -> list[dict]:
        """Fixed synthetic rows (the first model's golden example, perturbed a little), read once."""
        from raymedic.app.service import golden_example

        if not hasattr(self, "_rows"):
            base = golden_example(self.cfg.for_model("synthetic"))
            self._rows = [{k: v + 0.01 * i for k, v in base.items()} for i in range(6)]
        return self._rows

    def untouched(self) -> dict:
        """What must not change in ``synthetic`` when something happens to ``cards``."""
        st = self.status("synthetic")
        answer = self.predict("synthetic", self.synthetic_rows())
        return {"versions": {m["name"]: m["version"] for m in st["members"]},
                "pids": {m["name"]: sorted(r["pid"] for r in m["replicas"]) for m in st["members"]},
                "incidents": [i["id"] for i in st["incidents"]],
                "retraining": (st["controller"].get("retraining") or {}).get("history", []),
                "predictions": answer["predictions"], "model_version": answer["model_version"],
                "probabilities": np.round(answer["probabilities"], 9).tolist()}


def test_each_model_is_served_on_its_own_routes_with_its_own_schema(svc, capsys):
    from ray import serve

    assert svc.get("/v1/models") == {"models": ["synthetic", "cards"]}
    info = svc.get("/v1/models/cards")
    assert [f["name"] for f in info["schema"]["features"]] == ["amount", "count", "suit"]
    assert sorted(info["schema"]["classes"]) == ["high", "low", "mid"]
    assert svc.get("/v1/models/synthetic")["schema"]["features"][0]["name"] == "f0"
    rows, _ = cards_rows(5, seed=3)
    cards = svc.predict("cards", rows)
    assert set(cards["predictions"]) <= {"high", "low", "mid"} and len(cards["inference_ids"]) == 5
    assert {p.split(":")[0] for p in cards["model_version"].split(",")} == {"logistic", "mlp"}
    v2 = request_json("POST", f"{svc.url}/v2/models/cards/infer", {"inputs": [
        {"name": "amount", "shape": [1], "datatype": "FP64", "data": [rows[0]["amount"]]},
        {"name": "count", "shape": [1], "datatype": "INT64", "data": [rows[0]["count"]]},
        {"name": "suit", "shape": [1], "datatype": "BYTES", "data": [rows[0]["suit"]]}]}, timeout_s=30)
    assert v2.status == 200 and v2.body["model_name"] == "cards", v2.body
    # a cards row sent to synthetic is refused by synthetic's own schema, naming what it expects
    wrong = request_json("POST", f"{svc.url}/v1/models/synthetic:predict", {"instances": rows[:1]}, timeout_s=30)
    assert wrong.status == 422 and "f0" in wrong.body["error"], wrong.body
    unknown = request_json("POST", f"{svc.url}/v1/models/dogs:predict", {"instances": rows[:1]}, timeout_s=30)
    assert unknown.status == 404 and "synthetic" in unknown.body["error"] and "cards" in unknown.body["error"]
    assert request_json("GET", f"{svc.url}/v1/status?model=dogs", timeout_s=10).status == 404
    # status per model: each model's members, versions and controller; the default is the first model
    st = svc.status("cards")
    assert st["model"] == "cards" and st["models"] == ["synthetic", "cards"]
    assert [m["name"] for m in st["members"]] == ["logistic", "mlp"]
    assert all(len(m["replicas"]) == 2 for m in st["members"]), st["members"]
    assert st["controller"]["state"] == "running", st["controller"]
    assert svc.get("/v1/status")["model"] == "synthetic"
    pids = {name: {r["pid"] for m in svc.status(name)["members"] for r in m["replicas"]} for name in ("cards",
                                                                                                   "synthetic")}
    assert pids["cards"].isdisjoint(pids["synthetic"]), pids  # members of one name, processes of their own
    serve_app = serve.status().applications["raymedic"].deployments
    assert {"logistic", "mlp", "cards.logistic", "cards.mlp", "gateway"} <= set(serve_app), sorted(serve_app)
    from raymedic.app import cli

    assert cli.main(["status", "--url", svc.url, "--model", "cards"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model cards") and "cards.mlp" not in out  # members by name, in their model


def test_a_replica_fault_in_one_model_leaves_the_other_untouched(svc):
    before = svc.untouched()
    with PredictLoad(f"{svc.url}/v1/models/synthetic:predict", svc.synthetic_rows(), threads=1,
                     pause_s=0.05) as first, \
            PredictLoad(f"{svc.url}/v1/models/cards:predict", cards_rows(40, seed=9)[0], threads=1,
                        pause_s=0.05) as cards:
        hit = svc.admin("chaos", {"fault": "kill", "member": "mlp"}, model="cards")
        assert hit.status == 200 and hit.body["model"] == "cards", hit.body
        replica = hit.body["replica"]

        def healed() -> dict | None:
            inc = next((i for i in svc.status("cards")["incidents"] if i.get("replica") == replica), None)
            return inc if inc and inc.get("status") == "recovered" else None

        incident = wait_for(healed, timeout_s=120, what=f"cards' controller to heal the killed replica {replica}")
        wait_for(lambda: cards.ok > 20 and first.ok > 20, timeout_s=60, what="load on both models")
    assert first.failures == [] and cards.failures == [], (first.failures, cards.failures)
    assert incident["member"] == "mlp"
    assert svc.untouched() == before  # same answers, versions, replicas, incidents


def test_a_retrain_of_one_model_leaves_the_other_untouched(svc):
    before = svc.untouched()
    rows, labels = cards_rows(200, seed=21)
    for i in range(0, len(rows), 50):
        out = svc.predict("cards", rows[i:i + 50])
        f = request_json("POST", f"{svc.url}/v1/models/cards:feedback",
                         {"inference_ids": out["inference_ids"], "labels": labels[i:i + 50]}, timeout_s=30)
        assert f.status == 200 and f.body["accepted"] == len(rows[i:i + 50]), f.body
    r = svc.admin("retrain", {"reason": "test: retrain cards only"}, model="cards")
    assert r.status == 200, r.body

    def finished() -> dict | None:
        history = (svc.status("cards")["controller"].get("retraining") or {}).get("history", [])
        return next((h for h in history if "cards only" in h.get("reason", "") and h.get("job_status")), None)

    done = wait_for(finished, timeout_s=360, what="cards' retrain job to finish and be gated")
    assert done["job_id"].startswith("raymedic-retrain-cards-") and done["job_status"] == "SUCCEEDED", done
    assert svc.untouched() == before
    from controllers.audit import read_audit
    from raymedic.storage import Storage

    kinds = {r["kind"] for r in read_audit(Storage(svc.cfg.storage_path), "synthetic")}
    assert not kinds & {"retrain-submitted", "retrain-finished", "trial-started", "promote"}, kinds


def test_redeploying_with_one_model_stops_serving_and_healing_the_other(svc):
    """`raymedic up --model synthetic` on the running service: cards' routes, deployments and loop go."""
    from ray import serve

    from controllers.client import get_controller
    from raymedic.app import service

    versions = svc.untouched()["versions"]
    one = service.choose_models(svc.cfg, "synthetic")
    service.deploy(one, host="127.0.0.1", port=int(svc.url.rsplit(":", 1)[1]), progress=print)
    wait_for(lambda: svc.get("/v1/models") == {"models": ["synthetic"]}, timeout_s=180,
             what="the gateway to serve synthetic only")
    service.wait_all_ready(svc.url, one, timeout_s=180, progress=print)
    gone = request_json("POST", f"{svc.url}/v1/models/cards:predict", {"instances": cards_rows(1, 2)[0]},
                        timeout_s=30)
    assert gone.status == 404 and "['synthetic']" in gone.body["error"], gone.body
    assert ray.get(get_controller().ping.remote(), timeout=30)["models"] == ["synthetic"]
    wait_for(lambda: not {"cards.logistic", "cards.mlp"} & set(serve.status().applications["raymedic"].deployments),
             timeout_s=120, what="cards' member deployments to be deleted")
    assert svc.untouched()["versions"] == versions
