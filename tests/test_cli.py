"""The command line for real: `raymedic train/up/status/down` and `ray job submit`.

A user's own mixed-type table (float, int, string and bool columns, string labels)
goes from CSV to predictions over HTTP. `up` starts a persistent local cluster with
`ray start`, so this module owns that cluster and `down` must stop it.

That cluster keeps its GCS state in a local Redis (`RAY_REDIS_ADDRESS`, Ray's GCS
fault tolerance, as the KubeRay manifest configures it): its GCS process is
SIGKILLed and restarted under traffic, and the service must answer throughout and
keep its controller. CI installs `redis-server` (Debian); elsewhere the module runs
without it and that check is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from raymedic.app.http import request_json
from tests.conftest import REPO, PredictLoad, free_port, wait_for, write_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAYMEDIC = [sys.executable, "-m", "raymedic"]


def run(args, *, env, timeout=600, check=True):
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def churn_table(n: int, seed: int, *, channel_p=(0.5, 0.3, 0.2)) -> pd.DataFrame:
    """Float with holes (5 % missing), int, string and bool features, a string label."""
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 30.0, n)
    visits = rng.integers(0, 20, n)
    channel = rng.choice(["web", "store", "app"], n, p=list(channel_p))
    plan = rng.choice(["basic", "plus", "pro"], n)
    member = rng.random(n) < 0.4
    score = 0.04 * (amount - 60) - 0.25 * (visits - 10) + np.where(channel == "app", 1.5, 0) - 1.2 * member
    label = np.where(score + rng.logistic(0, 0.5, n) > 0, "churn", "stay")
    amount = amount.round(2)
    amount[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({"amount": amount, "visits": visits, "channel": channel, "plan": plan, "member": member,
                         "label": label})


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


RAY_RPC_PROBES = ("/ray.rpc.NodeInfoGcsService/GetClusterId", "/ray.rpc.NodeManagerService/GetSystemConfig",
                  "/ray.rpc.CoreWorkerService/NumPendingTasks", "/ray.serve.ASGIService/HandleRequest")
"""One harmless call per kind of Ray gRPC server a Serve or raymedic process runs (GCS, raylet, a worker's
core RPC, Serve's inter-replica server): with token auth each refuses a caller without the cluster token."""
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # Ray's own per-node agents, not Serve's or ours


def listeners(session_id: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of one ``ray start`` session."""
    import psutil

    from cluster.sessions import session_pids

    pids = set(session_pids(session_id))
    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                found.add((psutil.Process(conn.pid).name(), conn.laddr.ip, conn.laddr.port))
            except psutil.Error:  # gone meanwhile
                continue
    return sorted(found)


def refuses_without_token(port: int) -> bool:
    """Whether the gRPC server on ``port`` answers one of :data:`RAY_RPC_PROBES` with UNAUTHENTICATED."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method in RAY_RPC_PROBES:
            try:
                channel.unary_unary(method)(b"", timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return True
    return False


def assert_bound_like_the_config(session_id: int, host: str) -> None:
    """Nothing of Serve, HAProxy or raymedic listens beyond ``host`` (the config's HTTP host) except Ray's
    own RPC servers, which refuse a caller without the cluster token (Serve 2.60's HAProxy put its stats
    page and exporter on every interface)."""
    def ours_listening() -> list[tuple[str, str, int]] | None:
        found = [(name, ip, port) for name, ip, port in listeners(session_id)
                 if name == "haproxy" or (name.startswith("ray::") and name not in RAY_AGENTS)]
        # Serve's HAProxy mode is on; a reload replaces its process (our wrapper execs the new one), so a
        # snapshot taken in that moment may show none: look again until one listens.
        return found if any(name == "haproxy" for name, _, _ in found) else None

    try:
        ours = wait_for(ours_listening, timeout_s=30, what="Serve's HAProxy to listen")
    except BaseException as exc:  # pytest.fail too; say what the cluster was started with: HAProxy mode comes from the environment
        env = {k: v for k, v in os.environ.items() if k.startswith(("RAY_SERVE", "RAYMEDIC_HAPROXY"))}
        raise AssertionError(f"{exc}; listening: {listeners(session_id)}; this process's Serve env: {env}") from None
    print("listening (Serve, HAProxy, raymedic):", *ours, sep="\n  ")
    open_ = [(name, ip, port) for name, ip, port in ours
             if ip not in (host, f"::ffff:{host}") and not refuses_without_token(port)]
    assert not open_, f"listening beyond {host} with no token: {open_}"


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-ready instances: numpy scalars → Python, NaN → null."""
    out = df.drop(columns="label").astype(object).to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v.item() if hasattr(v, "item") else v)
             for k, v in r.items()} for r in out]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    port = free_port()
    # One replica per member: this module is about the command line, not redundancy (test_healing's).
    members = [{"name": m, "kind": m, "replicas": 1, "num_cpus": 0.2, **({"fallback": True} if m == "logistic"
                                                                          else {})}
               for m in ("logistic", "mlp", "tabresnet")]
    cfg = write_config(tmp / "raymedic.yaml", storage=tmp / "storage", port=port, members=members,
                       data={"features": {"channel": {"unseen": "reject"}},
                             "window_rows": 300, "min_rows": 100, "check_period_s": 1.0})
    e = dict(os.environ, RAYMEDIC_HOME=str(tmp / "home"), PYTHONUNBUFFERED="1")
    e.pop("RAY_ADDRESS", None)
    redis = None
    if shutil.which("redis-server"):  # GCS fault tolerance: the GCS keeps its tables in Redis
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        wait_for(lambda: _listening(redis_port), timeout_s=30, what="redis-server to listen")
        e.update(RAY_REDIS_ADDRESS=f"127.0.0.1:{redis_port}", RAY_external_storage_namespace=f"raymedic-{redis_port}")
    table = tmp / "churn.csv"
    churn_table(1500, seed=1).to_csv(table, index=False)
    ctx = {"env": e, "config": str(cfg), "port": port, "csv": str(table), "tmp": tmp,
           "ray_port": free_port(), "dash_port": free_port(), "strays": []}
    yield ctx
    subprocess.run(RAYMEDIC + ["down"], cwd=REPO, env=e, capture_output=True, timeout=300)
    for proc in ctx["strays"] + ([redis] if redis else []):  # a restarted GCS is outside the head's session
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_bad_tables_fail_before_training_with_the_fix(env):
    bad = env["tmp"] / "bad.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": [1, 1]}).to_csv(bad, index=False)
    p = run(RAYMEDIC + ["train", "--config", env["config"], "--data", str(bad), "--target", "y"],
            env=env["env"], check=False)
    assert p.returncode == 2 and "single class" in p.stderr and "Traceback" not in p.stderr
    p = run(RAYMEDIC + ["train", "--config", env["config"], "--data", str(bad), "--target", "label"],
            env=env["env"], check=False)
    assert p.returncode == 2 and "pass --target with one of ['x', 'y']" in p.stderr


def test_train_up_status_predict_feedback_down(env):
    import time

    t0 = time.monotonic()

    def phase(name: str) -> None:  # shown with the output of a failing run: where the time went
        print(f"[{time.monotonic() - t0:6.1f} s] {name}")

    e, cfg = env["env"], env["config"]
    p = run(RAYMEDIC + ["train", "--config", cfg, "--data", env["csv"], "--target", "label", "--json"], env=e)
    report = json.loads(p.stdout)
    assert report["model"] == "churn" and set(report["versions"]) == {"logistic", "mlp", "tabresnet"}
    for m in report["metrics"].values():
        assert m["val_accuracy"] >= report["baseline_accuracy"] + 0.1, report

    phase("trained")
    run(RAYMEDIC + ["up", "--config", cfg, "--ray-port", str(env["ray_port"]),
                    "--dashboard-port", str(env["dash_port"])], env=e)
    url = f"http://127.0.0.1:{env['port']}"
    phase("up")
    state = json.loads((env["tmp"] / "home" / "run.json").read_text())
    assert_bound_like_the_config(state["head_session"], "127.0.0.1")
    st = json.loads(run(RAYMEDIC + ["status", "--json"], env=e).stdout)
    assert st["model"] == "churn"
    assert {m["name"]: m["version"] for m in st["members"]} == {"logistic": "v0001", "mlp": "v0001",
                                                                "tabresnet": "v0001"}
    assert all(len(m["replicas"]) == 1 for m in st["members"])
    human = run(RAYMEDIC + ["status"], env=e).stdout
    assert "logistic (fallback)" in human and "v0001" in human

    schema = request_json("GET", f"{url}/v1/models/churn").body["schema"]
    kinds = {f["name"]: f["type"] for f in schema["features"]}
    assert kinds == {"amount": "float", "visits": "int", "channel": "categorical", "plan": "categorical",
                     "member": "categorical"}
    assert schema["classes"] == ["churn", "stay"]
    assert 0.02 < schema["features"][0]["missing_share"] < 0.08
    policies = request_json("GET", f"{url}/v1/models/churn").body["policies"]
    assert policies == {"amount": {"missing": "impute"}, "visits": {"missing": "reject"},
                        "channel": {"missing": "reject", "unseen": "reject"},
                        "plan": {"missing": "reject", "unseen": "unknown"},
                        "member": {"missing": "reject", "unseen": "unknown"}}
    test = churn_table(200, seed=7)
    inst = records(test)
    r = request_json("POST", f"{url}/v1/models/churn:predict", {"instances": inst[:64]})
    assert r.status == 200, r.body
    assert set(r.body["predictions"]) <= {"churn", "stay"}
    accuracy = np.mean(np.asarray(r.body["predictions"]) == test["label"].to_numpy()[:64])
    assert accuracy > 0.7, accuracy

    # Policies over HTTP: impute (auto: amount had holes in training) with a warning; reject where configured.
    holes = request_json("POST", f"{url}/v1/models/churn:predict", {"instances": [dict(inst[0], amount=None)]})
    assert holes.status == 200 and "'amount' was missing; imputed" in holes.body["warnings"][0], holes.body
    no_visits = request_json("POST", f"{url}/v1/models/churn:predict", {"instances": [dict(inst[0], visits=None)]})
    assert no_visits.status == 422 and "'visits' is null" in no_visits.body["error"]
    kiosk = request_json("POST", f"{url}/v1/models/churn:predict", {"instances": [dict(inst[0], channel="kiosk")]})
    assert kiosk.status == 422 and "'channel' = 'kiosk' was never seen in training" in kiosk.body["error"]
    gold = request_json("POST", f"{url}/v1/models/churn:predict", {"instances": [dict(inst[0], plan="gold")]})
    assert gold.status == 200 and "'plan' has a level never seen" in gold.body["warnings"][0]

    # Data quality and categorical drift raise incidents: amount mostly missing, channel mostly "app".
    shifted = records(churn_table(400, seed=8, channel_p=(0.1, 0.1, 0.8)))
    for row in shifted[:300]:
        row["amount"] = None
    for i in range(0, len(shifted), 50):
        assert request_json("POST", f"{url}/v1/models/churn:predict",
                            {"instances": shifted[i:i + 50]}).status == 200

    def data_incidents():
        st = json.loads(run(RAYMEDIC + ["status", "--json"], env=e).stdout)
        found = {(i["kind"], i["feature"]) for i in st["incidents"] if i.get("feature")}
        return st if {("missing_values", "amount"), ("drift", "channel")} <= found else None

    phase("predictions and policies checked")
    st = wait_for(data_incidents, timeout_s=60, what="data-quality and drift incidents in status")
    phase("data incidents seen")
    causes = {(i["kind"], i["feature"]): (i["cause_class"], i["cause"], i["cause_feature"]) for i in st["incidents"]
              if i.get("feature")}
    assert causes[("missing_values", "amount")] == ("data", "data-quality", "amount"), causes
    assert causes[("drift", "channel")] == ("data", "data-drift", "channel"), causes
    channel = st["drift"]["features"]["channel"]
    assert channel["test"] == "chi2" and channel["drift"] in ("warn", "act") and channel["p_adjusted"] < 0.01
    # The window may hold only rows with no amount by now: then there is nothing to test, only the gap.
    amount = st["drift"]["features"]["amount"]
    assert amount["missing_rate"] > 0.5 and amount.get("test", "ks") == "ks", amount
    human = run(RAYMEDIC + ["status"], env=e).stdout
    assert "drift" in human and "performance: " in human and "prediction drift" in human, human
    audit = run(RAYMEDIC + ["audit", "--json"], env=e).stdout
    assert '"data-drift"' in audit and '"data-missing_values"' in audit

    fb = request_json("POST", f"{url}/v1/models/churn:feedback",
                      {"inference_ids": r.body["inference_ids"][:3], "labels": ["churn", "stay", "churn"]})
    assert fb.status == 200 and fb.body["accepted"] == 3

    # The same training as a Ray job on the running cluster (what an operator would submit).
    job_env = dict(e, RAY_AUTH_MODE="token")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    storage = str(env["tmp"] / "storage")
    phase("feedback accepted")
    p = run([ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{env['dash_port']}",
             "--working-dir", ".", "--", "python", "-m", "train_jobs.train", "--config", cfg,
             "--storage-path", storage, "--data", env["csv"], "--target", "label", "--members", "logistic",
             "--no-promote"], env=job_env, timeout=600)
    assert "succeeded" in (p.stdout + p.stderr).lower(), p.stdout[-2000:]
    from raymedic.storage import Storage
    from train_jobs.registry import ModelRegistry

    reg = ModelRegistry(Storage(storage))
    assert [v.version for v in reg.versions("churn", "logistic")] == ["v0001", "v0002"]
    assert reg.aliases("churn", "logistic")["champion"] == "v0001"  # --no-promote kept the champion

    phase("job succeeded")
    survive_a_gcs_restart(env, url, inst, phase)
    run(RAYMEDIC + ["down"], env=e)
    for stray in env["strays"]:  # the GCS this test restarted is not in the session `up` started
        stray.kill()
        stray.wait(timeout=30)
    phase("down")
    # The head's GCS port closes with it (`ray status` on a dead address retries for half a minute).
    wait_for(lambda: not _listening(env["ray_port"]), timeout_s=60, what="the local cluster to stop")
    p = run(RAYMEDIC + ["status"], env=e, check=False)
    assert p.returncode == 2 and "raymedic up" in p.stderr


def survive_a_gcs_restart(env, url: str, instances: list[dict], phase) -> None:
    """SIGKILL the head's GCS under traffic and restart it as a supervisor would (KubeRay restarts the
    head): with its tables in Redis, every request is answered while it is down, the healing
    controller is the same process afterwards, and the cluster works again — a replica killed after
    the restart is replaced (Serve creates an actor, which needs the GCS) and the controller records it.
    """
    import psutil

    if "RAY_REDIS_ADDRESS" not in env["env"]:
        if os.environ.get("RAYMEDIC_CI"):
            pytest.fail("CI must test GCS fault tolerance: .ci/run installs redis-server (apt-get install redis-server)")
        print("redis-server not installed: the GCS restart is not checked (apt-get install redis-server)")
        return
    e = env["env"]
    before = json.loads(run(RAYMEDIC + ["status", "--json"], env=e).stdout)
    port_flag = f"--gcs_server_port={env['ray_port']}"
    (gcs,) = [p for p in psutil.process_iter(["name", "cmdline"])
              if p.info["name"] == "gcs_server" and port_flag in (p.info["cmdline"] or [])]
    cmdline, environ = gcs.cmdline(), gcs.environ()
    with PredictLoad(f"{url}/v1/models/churn:predict", instances[:4], threads=1, deadline_s=30.0) as sent:
        wait_for(lambda: sent.ok >= 5, timeout_s=60, what="traffic before the GCS is killed")
        gcs.send_signal(signal.SIGKILL)
        gcs.wait(timeout=30)
        phase("GCS killed")
        at_kill = sent.ok
        wait_for(lambda: sent.ok >= at_kill + 20, timeout_s=120, what="answers while the GCS is down")
        assert not _listening(env["ray_port"]), "the GCS came back by itself: nothing was down"
        env["strays"].append(subprocess.Popen(cmdline, env=environ, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for(lambda: _listening(env["ray_port"]), timeout_s=60, what="the restarted GCS to listen")
        phase("GCS restarted")

        def status() -> dict:
            return json.loads(run(RAYMEDIC + ["status", "--json"], env=e).stdout)

        after = status()
        ctl = (after["controller"]["pid"], after["controller"]["started_at"])
        assert ctl == (before["controller"]["pid"], before["controller"]["started_at"]), "the controller restarted"

        def mlp_replicas(st: dict) -> set[str]:
            (m,) = [m for m in st["members"] if m["name"] == "mlp"]
            return {r["id"] for r in m["replicas"] if r["state"] == "RUNNING"}

        old = mlp_replicas(after)
        run(RAYMEDIC + ["chaos", "kill", "--member", "mlp"], env=e)
        wait_for(lambda: (ids := mlp_replicas(status())) and not ids & old, timeout_s=180,
                 what="Serve to replace the killed replica once the GCS is back")
        phase("a replica killed after the restart was replaced")
    # The killed replica's calls fail over to the other members: not one request failed, GCS down or not.
    assert sent.failures == [] and sent.ok > at_kill, sent.failures[:3]
