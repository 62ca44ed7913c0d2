"""The cluster configs say what the code expects, without starting Ray.

The KubeRay manifest embeds its own copy of the Serve application; these tests keep
it equal to ``cluster/raymedic.yaml`` (what `raymedic up` and the tests deploy), so
the service on Kubernetes is the one that was tested. The local multi-node launcher's
plan and placement rules are pure and checked here too.
"""

from __future__ import annotations

import pytest
import yaml

from cluster.nodes import LocalCluster, StartedNode
from cluster.plan import NODE_LABEL, NODE_TYPE_LABEL, check_shape, plan_cluster, spread_over_nodes, start_command
from raymedic.config import load_config, parse_config
from raymedic.errors import ConfigError
from tests.conftest import REPO, self_signed

LOCAL_ONLY = {"storage_path"}  # pods share no local disk: the manifest points at s3:// or a PVC


def _manifest() -> dict:
    return yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())


def _app(serve_doc: dict) -> dict:
    return next(a for a in serve_doc["applications"] if a["name"] == "raymedic")


def test_rayservice_serves_the_same_application_as_the_local_config():
    doc = _manifest()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])  # a YAML document inside a string
    local = yaml.safe_load((REPO / "cluster" / "raymedic.yaml").read_text())
    k8s_app, local_app = _app(serve), _app(local)
    assert k8s_app["import_path"] == local_app["import_path"] == "serve_apps.app:build_app"
    assert k8s_app["route_prefix"] == local_app["route_prefix"]
    strip = lambda args: {k: v for k, v in args.items() if k not in LOCAL_ONLY}  # noqa: E731
    assert strip(k8s_app["args"]) == strip(local_app["args"])
    # Both validate, and to the same config once storage_path is set aside.
    k8s_cfg, local_cfg = parse_config(k8s_app["args"]), load_config(REPO / "cluster" / "raymedic.yaml").config
    assert k8s_cfg.model_copy(update={"storage_path": ""}) == local_cfg.model_copy(update={"storage_path": ""})
    assert k8s_cfg.storage_path.startswith(("s3://", "gs://", "/mnt/")), k8s_cfg.storage_path
    assert serve["http_options"]["host"] == "0.0.0.0"  # reachable through the pod's Service


def test_rayservice_has_head_cpu_and_gpu_worker_groups():
    spec = _manifest()["spec"]["rayClusterConfig"]
    assert spec["rayVersion"].startswith("2.")
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-worker", "gpu-worker"}
    gpu = groups["gpu-worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu.get("nvidia.com/gpu") == "1"
    cpu = groups["cpu-worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu
    assert groups["gpu-worker"]["minReplicas"] == 0 and spec["enableInTreeAutoscaling"] is True
    # Enough CPU workers that losing one leaves room for every member's two replicas.
    assert groups["cpu-worker"]["minReplicas"] >= 3


def test_ray_cluster_launcher_config_has_head_cpu_and_gpu_workers():
    doc = yaml.safe_load((REPO / "ray-cluster.yaml").read_text())
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))  # an AWS GPU family
    assert not types["cpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert types["gpu_worker"]["min_workers"] == 0  # GPUs only when something asks for them


def test_every_cluster_config_starts_ray_with_serves_fast_path():
    """The pods, the cluster launcher's nodes and raymedic's own launchers all run Serve the same way."""
    from cluster.connect import SERVE_FAST_PATH

    spec = _manifest()["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for group in pods:
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert {k: env.get(k) for k in SERVE_FAST_PATH} == SERVE_FAST_PATH, group.get("groupName", "head")
    doc = yaml.safe_load((REPO / "ray-cluster.yaml").read_text())
    for cmd in (doc["head_start_ray_commands"][-1], doc["worker_start_ray_commands"][-1]):
        assert all(f"{k}={v} " in cmd for k, v in SERVE_FAST_PATH.items()) and "ray start" in cmd, cmd


def test_local_plan_gives_every_node_its_own_ports_dirs_and_labels(tmp_path):
    plan = plan_cluster(4, cpus_per_node=3, gpu_nodes=1, root=str(tmp_path / "raymedic-x"))
    assert [(n.name, n.node_type, n.num_cpus, n.num_gpus) for n in plan.nodes] == [
        ("head", "head", 3, 0), ("worker-1", "cpu-worker", 3, 0), ("worker-2", "cpu-worker", 3, 0),
        ("worker-3", "gpu-worker", 3, 1)]
    singles = [p for n in plan.nodes for k, p in n.ports.items() if k not in ("min_worker", "max_worker")]
    ranges = [range(n.ports["min_worker"], n.ports["max_worker"] + 1) for n in plan.nodes]
    every = singles + [p for r in ranges for p in r]
    assert len(every) == len(set(every)), "two nodes (or two roles) share a port"
    assert all(20000 <= p < 32768 for p in every)  # never Ray's defaults, never the kernel's ephemeral range
    assert len({n.temp_dir for n in plan.nodes}) == 4
    head = start_command(plan, plan.head)
    assert "--head" in head and f"--port={plan.head.ports['gcs']}" in head and "--num-gpus=0" in head
    assert f"--labels={NODE_LABEL}=head,{NODE_TYPE_LABEL}=head" in head
    gpu = start_command(plan, plan.nodes[3])
    assert f"--address={plan.address}" in gpu and "--num-gpus=1" in gpu and "--head" not in gpu
    for cmd in (head, gpu):  # nothing left to Ray's machine-wide defaults
        for flag in ("--temp-dir=", "--dashboard-agent-listen-port=", "--metrics-export-port=",
                     "--min-worker-port=", "--max-worker-port=", "--object-store-memory="):
            assert any(a.startswith(flag) for a in cmd), (flag, cmd)
    assert any(a.startswith("--ray-client-server-port=") for a in head)


@pytest.mark.parametrize("kw, fix", [
    ({"nodes": 0}, "--nodes 3 starts a head and two workers"),
    ({"nodes": 3, "gpu_nodes": 3}, "the head never has GPUs"),
    ({"nodes": 2, "cpus_per_node": 0}, "--cpus-per-node must be at least 1"),
])
def test_impossible_shapes_are_refused_with_the_fix(kw, fix):
    nodes = kw.pop("nodes")
    with pytest.raises(ConfigError, match=fix):
        check_shape(nodes, **kw)


def test_spreading_leaves_room_for_every_replica_after_one_node_is_lost():
    cfg = parse_config({"members": [
        {"name": "a", "kind": "mlp", "replicas": 2},
        {"name": "b", "kind": "mlp", "replicas": 5},
        {"name": "c", "kind": "mlp", "replicas": 2, "max_replicas_per_node": 2},
    ], "gateway": {"min_members": 2}})
    assert spread_over_nodes(cfg, 1) == cfg
    three = spread_over_nodes(cfg, 3)
    assert {m.name: m.max_replicas_per_node for m in three.members} == {"a": 1, "b": 3, "c": 2}
    assert three.gateway.on_head is True
    for m in three.members:  # the two survivors of a node loss can hold every replica
        assert m.max_replicas_per_node * (3 - 1) >= m.replicas


def test_every_served_models_members_are_spread():
    cfg = parse_config({"members": [{"name": "a", "kind": "mlp", "replicas": 2},
                                    {"name": "b", "kind": "logistic", "replicas": 2}],
                        "models": {"cards": None, "digits": {"members": [
                            {"name": "x", "kind": "mlp", "replicas": 4}, {"name": "y", "kind": "logistic"}]}}})
    three = spread_over_nodes(cfg, 3)
    assert {m.name: m.max_replicas_per_node for m in three.for_model("cards").members} == {"a": 1, "b": 1}
    assert {m.name: m.max_replicas_per_node for m in three.for_model("digits").members} == {"x": 2, "y": 1}


def test_gpu_members_are_spread_over_gpu_workers_only():
    cfg = parse_config({"members": [
        {"name": "a", "kind": "mlp", "replicas": 2, "num_gpus": 0.25},
        {"name": "b", "kind": "mlp", "replicas": 2},
    ], "gateway": {"min_members": 2}})
    # One GPU worker: a cap of 1 would leave the second GPU replica pending forever.
    one = {m.name: m.max_replicas_per_node for m in spread_over_nodes(cfg, 3, gpu_nodes=1).members}
    assert one == {"a": None, "b": 1}
    three = {m.name: m.max_replicas_per_node for m in spread_over_nodes(cfg, 4, gpu_nodes=3).members}
    assert three == {"a": 1, "b": 1}


def test_run_file_round_trip():
    cluster = LocalCluster(address="127.0.0.1:21000", dashboard_url="http://127.0.0.1:21001", root="/tmp/raymedic-a",
                           nodes=(StartedNode(name="head", node_type="head", session_id=123,
                                              temp_dir="/tmp/raymedic-a/head", metrics_port=21002),))
    assert LocalCluster.from_dict(cluster.to_dict()) == cluster
    assert cluster.node("head").session_id == 123
    with pytest.raises(ConfigError, match="nodes are"):
        cluster.node("worker-9")


def test_serve_fast_path_needs_haproxy_and_yields_to_the_operator(monkeypatch):
    import os

    from cluster.connect import SERVE_FAST_PATH, use_serve_fast_path

    for key in SERVE_FAST_PATH:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")  # as on a platform without one
    assert use_serve_fast_path() is False and not any(k in os.environ for k in SERVE_FAST_PATH)
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH")
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # the operator opted out: left alone
    assert use_serve_fast_path() is False and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ


def test_the_head_is_not_a_single_point_of_failure_gcs_tables_live_in_the_shipped_redis():
    """GCS fault tolerance: the RayService points its GCS at the Redis of cluster/kuberay/redis.yaml (same
    service name and port, the same password Secret), which keeps its data on a volume and admits Ray pods only."""
    ft = _manifest()["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "cluster" / "kuberay" / "redis.yaml").read_text())}
    service, redis = docs["Service"], docs["Deployment"]
    assert ft["redisAddress"] == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    secret = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": secret}} in container["env"]
    assert "--requirepass" in container["command"][-1] and "--appendonly yes" in container["command"][-1]
    assert redis["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == \
        docs["PersistentVolumeClaim"]["metadata"]["name"]
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}


SERVE_HAPROXY_CFG = """global
    stats socket /tmp/haproxy-serve/n1/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
listen stats
  bind *:8404
  stats enable
"""
"""The binds of a config Serve 2.60 renders for ``http_options.host: 127.0.0.1`` (its template)."""


def test_serves_haproxy_listeners_follow_the_http_host(tmp_path):
    """The wrapper Serve runs as HAProxy rewrites the config it was given, then execs the real binary
    with the same arguments (a fake here that records them)."""
    import os
    import subprocess
    import sys

    from cluster import haproxy_bind

    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(SERVE_HAPROXY_CFG)
    fake = tmp_path / "haproxy"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\n")
    fake.chmod(0o755)
    env = dict(os.environ, **{haproxy_bind.REAL_BINARY_ENV: str(fake)})
    subprocess.run([haproxy_bind.__file__, "-db", "-f", str(cfg), "-sf", "123"], env=env, check=True, timeout=30)
    assert (tmp_path / "args").read_text().split() == ["-db", "-f", str(cfg), "-sf", "123"]
    text = cfg.read_text()
    assert "bind 127.0.0.1:9101" in text and "bind 127.0.0.1:8404" in text and "bind *:" not in text
    assert "admin.sock mode 600 level admin" in text
    # On every interface (a pod's proxy) the listeners stay as reachable as the service itself.
    assert "bind *:8404" in haproxy_bind.lock_down(SERVE_HAPROXY_CFG.replace("127.0.0.1:8000", "*:8000"))
    # Without the real binary's path it says what to set, and never execs itself.
    env[haproxy_bind.REAL_BINARY_ENV] = haproxy_bind.__file__
    p = subprocess.run([sys.executable, haproxy_bind.__file__, "-v"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 127 and haproxy_bind.REAL_BINARY_ENV in p.stderr


@pytest.fixture
def ray_start_env(monkeypatch):
    """None of the variables raymedic sets for a Ray start (token auth, Serve's fast path and its HAProxy
    wrapper) in the environment, and whatever the test sets undone after it."""
    from cluster import haproxy_bind
    from cluster.connect import SERVE_FAST_PATH

    for key in (*SERVE_FAST_PATH, "RAY_SERVE_HAPROXY_BINARY_PATH", haproxy_bind.REAL_BINARY_ENV,
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                "RAY_AUTH_MODE"):
        monkeypatch.setenv(key, "")  # recorded (a variable that was absent is removed again after the test)
        monkeypatch.delenv(key)
    return monkeypatch


def test_serve_fast_path_runs_haproxy_through_the_bind_wrapper(ray_start_env):
    import os

    from cluster import haproxy_bind
    from cluster.connect import use_serve_fast_path

    if not use_serve_fast_path():
        pytest.skip("no HAProxy binary on this platform")
    assert os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] == os.path.realpath(haproxy_bind.__file__)
    real = os.environ[haproxy_bind.REAL_BINARY_ENV]
    assert os.access(real, os.X_OK) and not real.endswith("haproxy_bind.py")
    assert use_serve_fast_path() and os.environ[haproxy_bind.REAL_BINARY_ENV] == real  # twice: the same


def test_every_cluster_config_starts_ray_with_token_auth():
    """The Jobs API is remote code execution and Serve's replicas take direct gRPC calls: every cluster
    raymedic ships refuses a caller without the cluster token, and the launcher's dashboard is not open."""
    spec = _manifest()["spec"]["rayClusterConfig"]
    assert spec["authOptions"] == {"mode": "token"}  # KubeRay: the Secret and RAY_AUTH_MODE in every pod
    doc = yaml.safe_load((REPO / "ray-cluster.yaml").read_text())
    for cmd in (doc["head_start_ray_commands"][-1], doc["worker_start_ray_commands"][-1]):
        assert "RAY_AUTH_MODE=token " in cmd and "ray start" in cmd, cmd
    assert "--dashboard-host=0.0.0.0" not in doc["head_start_ray_commands"][-1]  # `ray dashboard` tunnels over SSH
    assert doc["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token, every node and the client
    assert any("chmod 600 ~/.ray/auth_token" in c for c in doc["setup_commands"])


def test_clusters_raymedic_starts_get_a_private_token(tmp_path, ray_start_env):
    """`ray start` in token mode refuses to start without a token: the first `raymedic up` on a machine
    that never ran Ray writes one (private), and an existing one is kept."""
    import stat

    from cluster.sessions import start_env

    monkeypatch = ray_start_env
    monkeypatch.setenv("HOME", str(tmp_path))
    env = start_env()
    token = tmp_path / ".ray" / "auth_token"
    assert env["RAY_AUTH_MODE"] == "token" and len(token.read_text()) == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    first = token.read_text()
    start_env()
    assert token.read_text() == first
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the operator opted out: no token written
    monkeypatch.setenv("HOME", str(tmp_path / "other"))
    start_env()
    assert not (tmp_path / "other" / ".ray").exists()


def test_https_settings_are_read_from_the_serve_file_and_refused_where_haproxy_would_ignore_them(
        tmp_path, ray_start_env):
    """Serve's http_options.ssl_certfile/ssl_keyfile (uvicorn) work only with its Python proxy: raymedic
    passes them on, relative to the config file, and refuses them where Serve's HAProxy ingress would
    serve the port as plain HTTP."""
    from cluster.connect import check_tls_served
    from tests.conftest import write_config

    cert, key = self_signed(tmp_path)
    path = write_config(tmp_path / "raymedic.yaml", storage=tmp_path / "s", port=8443)
    doc = yaml.safe_load(path.read_text())
    doc["http_options"].update(ssl_certfile=cert, ssl_keyfile=key)
    path.write_text(yaml.safe_dump(doc))
    tls = load_config(path).http_tls
    assert tls == {"ssl_certfile": str(tmp_path / cert), "ssl_keyfile": str(tmp_path / key)}
    ray_start_env.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    with pytest.raises(ConfigError, match="ignored by Ray Serve's HAProxy ingress.*RAY_SERVE_ENABLE_HA_PROXY=0"):
        check_tls_served(tls)
    check_tls_served({})  # plain HTTP: nothing to refuse
    ray_start_env.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    check_tls_served(tls)  # Serve's Python proxy serves it
    doc["http_options"].pop("ssl_keyfile")
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="has ssl_certfile but no ssl_keyfile"):
        load_config(path).http_tls
    doc["http_options"].update(ssl_keyfile="tls/nope.pem")
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="ssl_keyfile .*nope.pem' does not exist"):
        load_config(path).http_tls
    assert load_config(REPO / "cluster" / "raymedic.yaml").http_tls == {}
