"""The healing controller on a real local Ray cluster, under real load.

Each fault is injected through the admin chaos route exactly as an operator would
(``kill`` is a real SIGKILL of the replica's worker process), while client threads
keep sending predictions. Each test then waits — with a deadline, never a sleep —
for the controller to detect, act and confirm recovery, and asserts that no client
request failed and that the audit log holds the incident.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raymedic.keys import ADMIN_TOKEN_ENV
from raymedic.app.http import request_json
from raymedic.storage import Storage
from tests.conftest import PredictLoad, local_service, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ray = pytest.importorskip("ray")

TOKEN = "test-admin-token"
MLP_MEMORY_LIMIT_MB = 900.0
"""A few hundred MB above an mlp replica's usual resident memory (~400 MB: a Serve worker with PyTorch)."""
MEMBERS = [
    {"name": "logistic", "kind": "logistic", "fallback": True, "replicas": 2, "num_cpus": 0.2},
    {"name": "mlp", "kind": "mlp", "replicas": 2, "num_cpus": 0.2, "memory_limit_mb": MLP_MEMORY_LIMIT_MB},
    {"name": "tabresnet", "kind": "tabresnet", "replicas": 2, "standby": 1, "num_cpus": 0.2},
]
"""The tests' ensemble, with one hot standby for tabresnet (the hang test's member) and a memory limit
on mlp (the leak test's member)."""
ROW = {f"f{i}": 0.1 * i for i in range(10)}


class Alerts:
    """A local webhook receiver: what an operator's chat or pager endpoint would get."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def events(self, incident: str) -> list[str]:
        return [a["event"] for a in list(self.received) if a.get("incident") == incident]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One service per module (starting Ray, training and deploying dominate a test's cost)."""
    old = os.environ.get(ADMIN_TOKEN_ENV)
    os.environ[ADMIN_TOKEN_ENV] = TOKEN  # read by the app builder: the admin routes' token
    alerts = Alerts()
    try:
        # The module heals a dozen faults within one restart window (300 s): the default cap of 10
        # restarts per window (a storm guard) would hold the last ones back, which no test here is about.
        with local_service(tmp_path_factory.mktemp("healing"),
                           controller={"webhook_url": alerts.url, "max_restarts": 30},
                           members=MEMBERS) as (url, cfg):
            s = Service(url, cfg)
            s.alerts = alerts
            yield s
    finally:
        alerts.close()
        if old is None:
            os.environ.pop(ADMIN_TOKEN_ENV, None)
        else:
            os.environ[ADMIN_TOKEN_ENV] = old


@pytest.fixture
def svc(cluster):
    """The shared service as every test needs it, whatever ran before: healing (not paused), in auto
    mode, every replica healthy with no open replica incident, and tabresnet's standby standing by.
    Each test leaves it healing in auto mode again."""
    cluster.normal()
    cluster.at_full_strength()
    yield cluster
    cluster.normal()


class Service:
    def __init__(self, url: str, cfg) -> None:
        self.url, self.cfg = url, cfg
        self.predict_url = f"{url}/v1/models/{cfg.model}:predict"

    def status(self) -> dict:  # with the token: the full view (pids, the webhook)
        r = request_json("GET", f"{self.url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout_s=10)
        assert r.status == 200, r.body
        return r.body

    def controller(self) -> dict:
        return self.status()["controller"] | {"healthy": self.status()["controller"].get("healthy", {})}

    def admin(self, route: str, body: dict | None = None, token: str = TOKEN):
        return request_json("POST", f"{self.url}/v1/admin/{route}", body or {},
                            headers={"Authorization": f"Bearer {token}"}, timeout_s=30)

    def chaos(self, fault: str, member: str, **kw) -> dict:
        r = self.admin("chaos", {"fault": fault, "member": member, **kw})
        assert r.status == 200, r.body
        return r.body

    def incident(self, replica: str) -> dict | None:
        return next((i for i in self.status()["incidents"] if i["replica"] == replica), None)

    def running(self, member: str) -> list[str]:
        m = next(m for m in self.status()["members"] if m["name"] == member)
        return [r["id"] for r in m["replicas"] if r["state"] == "RUNNING"]

    def audit(self) -> list[dict]:
        from controllers.audit import read_audit

        return read_audit(Storage(self.cfg.storage_path), self.cfg.model)

    def normal(self) -> None:
        """Healing on its own: resumed and in auto mode (what a test that paused or switched leaves)."""
        assert self.admin("resume").body == {"paused": False}
        assert self.admin("mode", {"mode": "auto"}).body == {"mode": "auto"}

    def at_full_strength(self, timeout_s: float = 180) -> dict:
        """Wait until the controller sees every replica healthy, no replica incident open, and exactly
        one member (tabresnet) with its standby; the controller's status then."""
        strength = {m.name: m.replicas + m.standby for m in self.cfg.members}

        def ready() -> dict | None:
            st = self.status()
            c = st["controller"]
            healthy = {k: len(v) for k, v in (c.get("healthy") or {}).items()}
            open_now = [i for i in st["incidents"] if i.get("replica") and i.get("status") == "open"]
            ok = (c.get("state") == "running" and healthy == strength and not open_now
                  and set(c.get("standby") or {}) == {"tabresnet"})
            return c if ok else None

        return wait_for(ready, timeout_s=timeout_s,
                        what="the controller to see every replica healthy and one tabresnet standby")


def heal_and_check(svc: Service, fault: str, member: str, **kw) -> dict:
    """Inject under load; wait for a confirmed recovery; check the load and the audit trail."""
    with PredictLoad(svc.predict_url, [ROW]) as load:
        wait_for(lambda: load.ok >= 5, timeout_s=60, what="load to flow")
        injected = svc.chaos(fault, member, **kw)
        replica = injected["replica"]
        inc = wait_for(lambda: (i := svc.incident(replica)) and i["status"] == "recovered" and i,
                       timeout_s=120, what=f"the {fault} fault on {member}/{replica} to heal")
        served = load.ok
        wait_for(lambda: load.ok >= served + 10, timeout_s=60, what="load to flow after recovery")
    assert load.failures == [], load.failures[:5]
    assert inc["kind"] == {"kill": "dead", "hang": "hung", "gpu-fault": "gpu"}.get(fault, fault)
    # A crashed replica may already be gone from Serve's view (Serve replaces it); otherwise we kill it.
    actions = ("restart", "await-replacement") if fault == "kill" else ("restart",)
    assert inc["action"] in actions and inc["action_outcome"].startswith("ok"), inc
    # /v1/status reuses a Serve view for up to a second: wait for it to show the replacement.
    wait_for(lambda: replica not in (r := svc.running(member)) and len(r) == 2, timeout_s=30,
             what=f"{member} to show two running replicas without {replica}")
    records = [r for r in svc.audit() if r.get("incident") == inc["id"]]
    kinds = [r["kind"] for r in records]
    assert kinds[:1] == [f"detected-{inc['kind']}"] and inc["action"] in kinds and "recovered" in kinds, kinds
    assert all(r["detected_at"] == inc["detected_at"] for r in records)
    assert next(r for r in records if r["kind"] == "recovered")["recovered_at"] == inc["recovered_at"]
    return inc


def test_admin_routes_need_the_token(svc):
    assert svc.admin("pause", token="nope").status == 401
    r = request_json("POST", f"{svc.url}/v1/admin/pause", {}, timeout_s=10)
    assert r.status == 401 and "Bearer" in r.body["error"]
    r = svc.admin("chaos", {"fault": "explode", "member": "mlp"})
    assert r.status == 422 and "kill" in r.body["error"]
    r = svc.admin("chaos", {"fault": "hang", "member": "nope"})
    assert r.status == 404 and "members are" in r.body["error"]
    r = svc.admin("chaos", {"fault": "slow", "member": "mlp"})
    assert r.status == 422 and "delay-ms" in r.body["error"]


def _member_outputs(svc: Service, ids: list[str]) -> dict[str, dict]:
    import json as _json

    storage = Storage(svc.cfg.storage_path)
    out = {}
    for key in storage.list_files(f"logs/{svc.cfg.model}/predictions", suffix=".parquet"):
        t = storage.read_parquet(key, columns=["inference_id", "member_outputs"]).to_pylist()
        out.update({r["inference_id"]: _json.loads(r["member_outputs"]) for r in t})
    return {i: out[i] for i in ids if i in out}


def test_feedback_reweights_the_ensemble_and_every_gateway_follows(svc):
    from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

    df = SyntheticGenerator(SyntheticSpec(seed=0)).sample(640, seed=77)
    rows = [{f"f{i}": float(r[f"f{i}"]) for i in range(10)} for _, r in df.iterrows()]
    ids = []
    for start in range(0, len(rows), 64):
        r = request_json("POST", svc.predict_url, {"instances": rows[start:start + 64]}, timeout_s=30)
        assert r.status == 200, r.body
        ids += r.body["inference_ids"]
    outputs = wait_for(lambda: (o := _member_outputs(svc, ids)) and len(o) == len(ids) and o, timeout_s=30,
                       what="the prediction log to hold the member outputs")

    def vote(o: dict, member: str) -> int:
        p = o[member]["probabilities"]
        return int(p[1] > p[0])

    # Feedback only where the logistic member disagrees with both others, labelled its way: it earns weight.
    picked = [(i, vote(o, "logistic")) for i, o in outputs.items()
              if vote(o, "logistic") != vote(o, "mlp") and vote(o, "logistic") != vote(o, "tabresnet")]
    assert len(picked) >= 5, len(picked)
    picked = picked[:60]  # one feedback request (the test config allows 64)
    fb = request_json("POST", f"{svc.url}/v1/models/{svc.cfg.model}:feedback",
                      {"inference_ids": [i for i, _ in picked], "labels": [lab for _, lab in picked]}, timeout_s=30)
    assert fb.status == 200 and fb.body["accepted"] == len(picked)

    def reweighted():
        st = svc.status()
        w = {m["name"]: m["weight"] for m in st["members"]}
        gw = st["gateway"]["answered_by"]["weights"]
        return w["logistic"] > max(w["mlp"], w["tabresnet"]) and gw == w and st

    st = wait_for(reweighted, timeout_s=30, what="the controller to re-weight and the gateway to follow")
    w = {m["name"]: m["weight"] for m in st["members"]}
    assert w["logistic"] <= svc.cfg.controller.max_weight + 1e-6  # bounded: no silent takeover
    assert min(w.values()) >= svc.cfg.controller.min_weight - 1e-6
    assert abs(sum(w.values()) - 1) < 1e-4


def test_wrong_answers_are_caught_by_golden_probes_and_the_replica_replaced(svc):
    heal_and_check(svc, "wrong", "mlp")


def test_a_replica_whose_calls_raise_is_replaced_with_no_failed_request(svc):
    """Alive, answering health checks, every inference raising: the gateway's retry hides it from clients,
    and the controller (probe errors, user-call errors against a peer that answers) replaces it."""
    inc = heal_and_check(svc, "error", "mlp")
    assert inc["evidence"]["probe_errors"] + inc["evidence"]["call_errors"] >= 2, inc["evidence"]


def test_a_gpu_fault_restarts_the_replica_as_a_gpu_incident_with_no_failed_request(svc):
    """The GPU fault double (no GPU needed): inference raises a CUDA error, the replica's GPU health probe
    reports the device lost; it is healed on the error path and recorded as the GPU's, counted on its node."""
    inc = heal_and_check(svc, "gpu-fault", "mlp", kind="device-lost")
    assert inc["evidence"]["gpu_fault"] == "device-lost" and "CUDA error" in inc["evidence"]["probe"], inc
    gpu = svc.controller()["gpu"]
    assert any(n.get("faults_in_window") == 1 for n in gpu["nodes"].values()), gpu


def test_hung_replica_is_replaced_by_the_standby_with_no_failed_request(svc):
    standby = svc.controller()["standby"]["tabresnet"]

    def gateway_shows_the_standby() -> dict | None:
        tab = next(m for m in svc.status()["members"] if m["name"] == "tabresnet")
        return tab if {r["id"] for r in tab["replicas"] if r["state"] == "STANDBY"} == set(standby) else None

    tab = wait_for(gateway_shows_the_standby, timeout_s=30, what=f"the gateway to hold {standby} out of traffic")
    before = {r["id"] for r in tab["replicas"]}
    inc = heal_and_check(svc, "hang", "tabresnet")
    assert inc["replica"] not in standby  # by default the fault hits a replica serving traffic
    records = [r for r in svc.audit() if r.get("target") == "tabresnet" and r["kind"] == "standby-serves"
               and inc["replica"] in r["evidence"]["flagged"]]
    assert [r["evidence"]["replicas"] for r in records] == [standby], records
    # Recovered on the standby: the replicas that confirmed it were all there before the fault;
    # Serve's replacement was still starting a worker and loading the model.
    recovered = next(r for r in svc.audit() if r.get("incident") == inc["id"] and r["kind"] == "recovered")
    assert set(standby) <= set(recovered["evidence"]["healthy_replicas"]) <= before, recovered
    # The replacement, once its probes pass, stands by in turn.
    wait_for(lambda: set(svc.controller()["standby"].get("tabresnet", ())) - before, timeout_s=120,
             what="the replacement replica to become the tabresnet standby")


def test_slow_replica_is_replaced(svc):
    inc = heal_and_check(svc, "slow", "logistic", delay_ms=500)
    assert inc["evidence"]["median_latency_s"] > inc["evidence"]["peer_latency_s"]


def test_sigkilled_replica_is_replaced_with_no_failed_request(svc, tmp_path):
    inc = heal_and_check(svc, "kill", "mlp")
    # Timed from the crash, not from the step that read it: the onset is Ray's GCS death time (or a gateway's
    # first call that died with it, when that came first), and recovery runs until a replica serves in its place.
    dated = inc["evidence"].get("died_at", inc["evidence"].get("first_dead_call_at"))
    assert dated is not None, inc
    assert inc["time_to_detect_s"] > 0 or abs(inc["first_evidence_at"] - dated) < 1e-3, inc
    assert inc["first_evidence_at"] <= inc["detected_at"] and inc["time_to_recover_s"] > 0, inc
    print(f"\nSIGKILL incident: detect {inc['time_to_detect_s']} s, recover {inc['time_to_recover_s']} s, "
          f"evidence {inc['evidence']}")
    # Diagnosed: a lone crash is the replica's own software (its node would be named had it been under pressure),
    # in status and in its detection and recovery records.
    assert inc["cause"] == "crash" or inc["cause_class"] == "infrastructure", inc
    assert inc["cause_class"] in ("replica-software", "infrastructure") and 0 < inc["confidence"] <= 1, inc
    records = {r["kind"]: r for r in svc.audit() if r.get("incident") == inc["id"]}
    for kind in ("detected-dead", "recovered"):
        assert records[kind]["cause_class"] == inc["cause_class"] and "group" in records[kind], records[kind]
    # The post-mortem of the incident, from storage: the controller's series holds the load around it.
    # lazy: as the rest of this module, our Ray-side code is imported once the module's cluster is up
    from controllers.client import get_controller
    from controllers.series import read_series
    from raymedic.app.report import build_report

    ray.get(get_controller().flush.remote(), timeout=30)
    storage = Storage(svc.cfg.storage_path)
    rows = read_series(storage, svc.cfg.model, since=inc["detected_at"] - 60)
    assert sum(r.get("requests", 0) for r in rows) > 0 and any(r.get("weights") for r in rows), rows[-3:]
    files = build_report(storage, svc.cfg.model, out_dir=tmp_path, incident=inc["id"])
    names = {p.name for p in files.images}
    assert {"traffic.png", "latency.png", "weights.png"} <= names, names
    assert files.html.read_text().count("src='data:image/png;base64,") == len(names)


def _resident_mb(svc: Service, member: str) -> dict[str, float]:
    """The member's running replicas' resident memory as the controller last read it (MB)."""
    m = next(m for m in svc.status()["members"] if m["name"] == member)
    return {r["id"]: r["rss_mb"] for r in m["replicas"] if r.get("rss_mb") is not None}


def test_every_replica_shows_its_process_vitals_in_status(svc):
    """Each running member replica's CPU share, open file descriptors and event-loop lag, as its own
    golden-probe answers read them, are in ``/v1/status`` next to its memory."""

    def vitals():
        reps = [r for m in svc.status()["members"] for r in m["replicas"] if r["state"] in ("RUNNING", "STANDBY")]
        return reps if reps and all(r.get("loop_lag_ms") is not None for r in reps) else None

    reps = wait_for(vitals, timeout_s=60, what="every replica's vitals in /v1/status")
    assert all(r["cpu_share"] is not None and r["cpu_share"] >= 0 and r["open_fds"] > 0 for r in reps), reps
    assert all(r["loop_lag_ms"] >= 0 for r in reps), reps


def test_a_leaking_replica_is_drained_and_replaced_before_its_memory_limit(svc):
    """A replica that really allocates and holds memory, fast enough to reach its member's limit in about a
    minute: the controller forecasts the crossing from the memory slope, avoids the replica, lets its calls
    finish and restarts it before it gets there, while clients see no failed request."""
    limit = svc.cfg.member("mlp").memory_limit_mb
    try:
        with PredictLoad(svc.predict_url, [ROW]) as load:
            wait_for(lambda: load.ok >= 5, timeout_s=60, what="load to flow")
            rss = wait_for(lambda: (r := _resident_mb(svc, "mlp")) and len(r) >= 2 and r, timeout_s=30,
                           what="the controller to report mlp's replicas' memory")
            assert limit - max(rss.values()) >= 200, (limit, rss)  # room to see a forecast, not a breach
            rate = round((limit - max(rss.values())) / 60, 1)  # the limit about a minute away
            injected = svc.chaos("leak", "mlp", mb_per_s=rate)
            replica = injected["replica"]
            assert injected["mb_per_s"] == rate and injected["cap_mb"] == 1.5 * limit, injected
            inc = wait_for(lambda: (i := svc.incident(replica)) and i["status"] == "recovered" and i,
                           timeout_s=180, what=f"the leak on mlp/{replica} to be healed")
            served = load.ok
            wait_for(lambda: load.ok >= served + 10, timeout_s=60, what="load to flow after recovery")
        assert load.failures == [], load.failures[:5]
    finally:
        svc.admin("chaos/clear")
    assert inc["kind"] == "leak" and inc["action"] == "restart" and inc["action_outcome"].startswith("ok"), inc
    ev = inc["evidence"]
    assert ev["limit_mb"] == limit and ev["limit_source"] == "memory_limit_mb", ev
    assert ev["rss_mb"] < limit and 0 < ev["time_to_limit_s"] <= svc.cfg.controller.leak_horizon_s, ev
    assert ev["slope_mb_per_min"] > 0 and ev["samples"] >= svc.cfg.controller.leak_min_samples, ev
    records = [r for r in svc.audit() if r.get("incident") == inc["id"]]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "detected-leak" and kinds.index("drained") < kinds.index("restart") < kinds.index("recovered"), kinds
    assert all(r["detected_at"] == inc["detected_at"] for r in records)
    # Killed before the limit: the reading at detection plus the leak's growth until the kill stays under it.
    killed_at = next(r for r in records if r["kind"] == "restart")["ts"]
    peak_mb = ev["rss_mb"] + rate * (killed_at - inc["detected_at"] + 1.0)  # + the last probe period
    assert peak_mb < limit, (peak_mb, limit, ev)
    wait_for(lambda: replica not in (r := svc.running("mlp")) and len(r) == 2, timeout_s=60,
             what="mlp to show two running replicas without the leaking one")


def test_pause_stops_actions_and_resume_heals(svc):
    assert svc.admin("pause").body == {"paused": True}
    try:
        injected = svc.chaos("wrong", "tabresnet")
        replica = injected["replica"]
        wait_for(lambda: any(r["kind"] == "suppressed" and r["target"].endswith(replica) for r in svc.audit()),
                 timeout_s=60, what="the paused controller to record the fault it may not act on")
        inc = svc.incident(replica)
        assert inc["status"] == "open" and inc["action"] is None and inc["suppressed"]
        assert replica in svc.running("tabresnet")  # nothing was restarted
    finally:
        assert svc.admin("resume").body == {"paused": False}
    wait_for(lambda: (i := svc.incident(replica)) and i["status"] == "recovered", timeout_s=120,
             what="the resumed controller to heal the replica")


def test_approval_mode_proposes_a_restart_and_waits_for_the_operator(svc):
    assert svc.admin("mode", {"mode": "approve"}).body == {"mode": "approve"}
    try:
        with PredictLoad(svc.predict_url, [ROW]) as load:
            wait_for(lambda: load.ok >= 5, timeout_s=60, what="load to flow")
            replica = svc.chaos("wrong", "mlp")["replica"]
            prop = wait_for(lambda: next((p for p in svc.controller()["proposals"] if p["target"].endswith(replica)),
                                         None), timeout_s=60, what="the controller to propose a restart")
            assert prop["fault"] == "wrong" and prop["action"] == "restart"
            inc = svc.incident(replica)
            assert inc["status"] == "open" and inc["approval"] == "pending" and inc["action"] is None
            # Avoided by the router while it waits, but nothing restarted without the operator.
            mlp = next(m for m in svc.status()["members"] if m["name"] == "mlp")
            assert {"id": replica, "state": "AVOIDED"} in [{k: r[k] for k in ("id", "state")}
                                                           for r in mlp["replicas"]], mlp
            # Wrong ids and double answers are clear 4xx, not 500s.
            missing = svc.admin("approve", {"incident": "inc-999999"})
            assert missing.status == 404 and "pending proposals" in missing.body["error"], missing.body
            assert svc.admin("approve", {}).status == 400
            assert svc.admin("mode", {"mode": "yolo"}).status == 400
            assert svc.admin("approve", {"incident": prop["incident"]}).body == {
                "incident": prop["incident"], "approval": "approved"}
            again = svc.admin("reject", {"incident": prop["incident"]})
            assert again.status == 409 and "no pending proposal" in again.body["error"], again.body
            inc = wait_for(lambda: (i := svc.incident(replica)) and i["status"] == "recovered" and i,
                           timeout_s=120, what="the approved restart to heal the replica")
        assert load.failures == [], load.failures[:5]  # the replica was avoided while it waited
        assert inc["action"] == "restart" and inc["approval"] == "approved"
        kinds = [r["kind"] for r in svc.audit() if r.get("incident") == inc["id"]]
        assert kinds.index("proposed") < kinds.index("approved") < kinds.index("restart") < kinds.index("recovered")
        wait_for(lambda: {"detected-wrong", "proposed", "approved", "recovered"} <= set(svc.alerts.events(inc["id"])),
                 timeout_s=30, what="the webhook to receive the incident's alerts")
        assert svc.controller()["webhook"]["failed"] == 0
    finally:
        assert svc.admin("mode", {"mode": "auto"}).body == {"mode": "auto"}


def test_controller_sigkill_resumes_from_checkpoint_without_repeating_actions(svc):
    from controllers.client import get_controller

    first = heal_and_check(svc, "wrong", "mlp")  # something healed, for the restarted controller to remember
    before = svc.status()["controller"]
    healed = [i["id"] for i in svc.status()["incidents"] if i["status"] == "recovered"]
    assert first["id"] in healed
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(lambda: (c := svc.status()["controller"]).get("pid") not in (None, before["pid"]) and c,
                     timeout_s=90, what="Ray to restart the controller")
    assert after["resumed_from_checkpoint"] is True
    ctl = get_controller()
    assert ctl is not None and ray.get(ctl.ping.remote(), timeout=30)["running"]
    st = svc.status()
    assert {i["id"] for i in st["incidents"]} >= set(healed)  # its memory came back
    # It keeps healing after the restart ...
    heal_and_check(svc, "wrong", "logistic")
    # ... and never repeated a restart it had already done.
    restarts = [r["incident"] for r in svc.audit() if r["kind"] == "restart"]
    assert len(restarts) == len(set(restarts)), restarts
    started = [r for r in svc.audit() if r["kind"] == "controller-started"]
    assert started[-1]["evidence"]["resumed_from_checkpoint"] is True
