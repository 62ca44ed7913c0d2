"""A node starved of CPU, then a worker node that dies for real, under load on a local multi-node Ray cluster.

`raymedic up --nodes 4` starts a head and three workers on this machine (each its own
raylet, 4 logical CPUs, its own ports and temp dir) and deploys the service with
each member's two replicas on two different nodes.

First `raymedic chaos cpu-hog` starts busy processes on the worker holding the most
member replicas: the controller's node agents see that node's own processes take far
more than its share of the host's cores, its replicas are avoided and the node is
drained through Ray, and Serve starts each replacement on another node, with no failed
request. (Ray cannot undrain a node: that worker holds nothing afterwards, which is why
the cluster has a fourth node for the test below.)

Then, while client threads send
predictions, every process of one worker node — raylet, agents, replica workers —
is SIGKILLed, as when a machine disappears. The test then waits, with deadlines,
for each member to be back at two running replicas on the surviving nodes and for
the controller's incidents; no client request may fail. `raymedic down` must then
stop exactly the processes `up` started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cluster.nodes import LocalCluster, kill_node, node_id, node_pids, stop_cluster
from raymedic.app.http import request_json
from raymedic.config import load_config
from raymedic.keys import ADMIN_TOKEN_ENV
from raymedic.storage import Storage
from tests.conftest import (
    REPO,
    PredictLoad,
    copy_trained,
    free_port,
    wait_for,
    write_config,
)
from tests.test_healing import ROW

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAYMEDIC = [sys.executable, "-m", "raymedic"]
MEMBERS = ("logistic", "mlp", "tabresnet")


def _raymedic(args: list[str], *, env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(RAYMEDIC + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"raymedic {args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                    f"stderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    port = free_port()
    members = [{"name": m, "kind": m, "replicas": 2, "num_cpus": 0.2, "max_replicas_per_node": 1,
                **({"fallback": True} if m == "logistic" else {})} for m in MEMBERS]
    # Node pressure decided over a short window so the hog test stays short; the marks leave room for the
    # head's own load (4 raylets share this host's cores: each node's fair share is a quarter of them).
    controller = {"node_period_s": 1.0, "node_window_s": 6.0, "node_min_samples": 4, "node_min_span_s": 3.0,
                  "node_cpu_high": 1.4, "node_cpu_low": 1.0, "node_drain_settle_s": 1.0}
    cfg = write_config(tmp / "raymedic.yaml", storage=tmp / "storage", port=port, members=members,
                       controller=controller)
    copy_trained(load_config(cfg).config.resolved(), tmp / "storage")  # trained by an earlier module, if any
    env = dict(os.environ, RAYMEDIC_HOME=str(tmp / "home"), PYTHONUNBUFFERED="1",
               **{ADMIN_TOKEN_ENV: "test-admin-token"})
    env.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    proc = subprocess.run(RAYMEDIC + ["up", "--config", str(cfg), "--nodes", "4", "--cpus-per-node", "4"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    run_file = tmp / "home" / "run.json"
    state = json.loads(run_file.read_text()) if run_file.is_file() else {}
    cluster = LocalCluster.from_dict(state["cluster"]) if state.get("cluster") else None
    try:
        if proc.returncode != 0:
            pytest.fail(f"raymedic up --nodes 4 exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                        f"stderr:\n{proc.stderr[-3000:]}")
        print(f"\nup --nodes 4 (4 raylets, training, deploy) took {time.monotonic() - t0:.1f} s")
        yield {"url": f"http://127.0.0.1:{port}", "env": env, "cluster": cluster, "storage": tmp / "storage"}
    finally:
        down = subprocess.run(RAYMEDIC + ["down"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        if cluster is not None and any(node_pids(n) for n in cluster.nodes):
            stop_cluster(cluster)  # a safety net only: the test below asserts `down` did it
            pytest.fail(f"`raymedic down` left processes of the cluster running:\n{down.stdout}\n{down.stderr}")


def _status(url: str) -> dict:  # with the token: the full view (replicas' node ids and pids)
    r = request_json("GET", f"{url}/v1/status", headers={"Authorization": "Bearer test-admin-token"}, timeout_s=10)
    assert r.status == 200, r.body
    return r.body


def _running(st: dict) -> dict[str, list[dict]]:
    return {m["name"]: [r for r in m["replicas"] if r["state"] == "RUNNING"] for m in st["members"]}


def _audit(svc) -> list[dict]:
    from controllers.audit import read_audit

    return read_audit(Storage(str(svc["storage"])), "synthetic")


def test_a_cpu_hog_on_a_node_moves_its_replicas_off_it(svc):
    url, cluster, env = svc["url"], svc["cluster"], svc["env"]
    ids = {n.name: node_id(n) for n in cluster.nodes}
    st = wait_for(lambda: (s := _status(url)) and all(len(v) == 2 for v in _running(s).values()) and s,
                  timeout_s=120, what="two running replicas per member")
    before = _running(st)
    victim = max((n for n in cluster.nodes if n.name != "head"),
                 key=lambda n: sum(r["node_id"] == ids[n.name] for reps in before.values() for r in reps))
    moving = {r["id"]: m for m, reps in before.items() for r in reps if r["node_id"] == ids[victim.name]}
    assert moving, f"no member replica on {victim.name}: {before}"
    # The node keeper reads every node (its agents' first readings come within a couple of periods).
    wait_for(lambda: {n["name"] for n in (_status(url)["controller"].get("nodes") or {}).get("nodes", [])
                      if n.get("cpu_share") is not None} >= set(ids), timeout_s=60, what="every node's reading")

    def moved():
        running = _running(_status(url))
        return all(len(running[m]) == 2 and all(r["node_id"] != ids[victim.name] for r in running[m])
                   for m in MEMBERS) and running

    with PredictLoad(f"{url}/v1/models/synthetic:predict", [ROW], threads=2, deadline_s=5.0) as load:
        wait_for(lambda: load.ok >= 10, timeout_s=60, what="load to flow")
        t0 = time.monotonic()
        hog = json.loads(_raymedic(["chaos", "cpu-hog", "--node", victim.name, "--procs", "2", "--for", "90",
                                    "--json", "--url", url], env=env, timeout=60).stdout)
        assert hog["node_id"] == ids[victim.name] and len(hog["pids"]) == 2
        try:
            after = wait_for(moved, timeout_s=120, what=f"every member's replicas moved off {victim.name}")
        except pytest.fail.Exception as exc:
            nodes = (_status(url)["controller"].get("nodes") or {}).get("nodes")
            pytest.fail(f"{exc}\nnodes: {json.dumps(nodes)}\naudit tail: "
                        f"{json.dumps(_audit(svc)[-20:], default=str)[-5000:]}")
        t_moved = time.monotonic() - t0
        cleared = json.loads(_raymedic(["chaos", "clear", "--json", "--url", url], env=env, timeout=60).stdout)
        assert cleared["cpu_hogs"], cleared
        served = load.ok
        wait_for(lambda: load.ok >= served + 10, timeout_s=60, what="load to flow after the move")
    st = _status(url)
    rows = {n["name"]: n for n in st["controller"]["nodes"]["nodes"]}
    print(f"\ncpu-hog on {victim.name}: {len(moving)} replica(s) moved off it {t_moved:.1f} s after the hog "
          f"started; {load.ok} requests ok, {len(load.failures)} failed; nodes now: "
          + ", ".join(f"{k} cpu {v['cpu_share']} {v['phase']}" for k, v in rows.items()))
    assert load.failures == [], load.failures[:5]
    assert rows[victim.name]["draining"] is True
    assert not any(r["id"] in moving for reps in after.values() for r in reps)
    audit = [r for r in _audit(svc) if r.get("target") == f"node/{victim.name}"]
    kinds = [r["kind"] for r in audit]
    for kind in ("detected-node-pressure", "evict", "drain-node", "node-drained"):
        assert kind in kinds, kinds
    assert next(r for r in audit if r["kind"] == "drain-node")["outcome"] == "ok"
    assert kinds.index("detected-node-pressure") < kinds.index("evict") < kinds.index("drain-node")
    incident = [i for i in st["incidents"] if i.get("kind") == "node_pressure" and i.get("target") == victim.name]
    assert incident, st["incidents"]
    assert [name for name, row in rows.items() if row["draining"]] == [victim.name]  # only the hogged node


def test_members_spread_and_survive_a_worker_node_loss(svc):
    url, cluster = svc["url"], svc["cluster"]
    assert [n.name for n in cluster.nodes] == ["head", "worker-1", "worker-2", "worker-3"]
    ids = {n.name: node_id(n) for n in cluster.nodes}
    assert all(ids.values()) and len(set(ids.values())) == 4, ids

    # Spread: every member's two replicas on two different nodes (max_replicas_per_node: 1).
    st = wait_for(lambda: (s := _status(url)) and all(len(v) == 2 for v in _running(s).values()) and s,
                  timeout_s=120, what="two running replicas per member")
    before = _running(st)
    for member, reps in before.items():
        assert len({r["node_id"] for r in reps}) == 2, (member, reps)
    # The victim: the worker holding the most member replicas (never the head: it holds the GCS).
    victim = max((n for n in cluster.nodes if n.name != "head"),
                 key=lambda n: sum(r["node_id"] == ids[n.name] for reps in before.values() for r in reps))
    lost = {r["id"]: m for m, reps in before.items() for r in reps if r["node_id"] == ids[victim.name]}
    assert lost, f"no member replica on {victim.name}: {before}"
    pids = node_pids(victim)
    # Serve's view and the launcher agree on which processes belong to the node.
    assert {r["pid"] for m, reps in before.items() for r in reps if r["id"] in lost} <= set(pids)

    with PredictLoad(f"{url}/v1/models/synthetic:predict", [ROW], threads=2, deadline_s=5.0) as load:
        wait_for(lambda: load.ok >= 10, timeout_s=60, what="load to flow")
        t_kill, t_kill_wall = time.monotonic(), time.time()
        killed = kill_node(victim, signal.SIGKILL)
        assert set(pids) <= set(killed), (pids, killed)
        wait_for(lambda: not node_pids(victim), timeout_s=30, what=f"every process of {victim.name} to die")

        def back_at_strength():
            running = _running(_status(url))
            return all(len(running[m]) == 2 and all(r["node_id"] != ids[victim.name] and r["id"] not in lost
                                                    for r in running[m]) for m in MEMBERS) and running

        after = wait_for(back_at_strength, timeout_s=150,
                         what=f"every member back at two running replicas off {victim.name}")
        t_back = time.monotonic() - t_kill
        # One incident per lost replica, each closed once Serve's replacement is confirmed.
        seen: list[dict] = []

        def recovered_incidents():
            seen[:] = _status(url)["incidents"]
            inc = {i["replica"]: i for i in seen if i.get("replica") in lost}
            return set(inc) == set(lost) and all(i["status"] == "recovered" for i in inc.values()) and inc

        try:
            incidents = wait_for(recovered_incidents, timeout_s=90,
                                 what=f"recovered incidents for the lost replicas {sorted(lost)}")
        except pytest.fail.Exception as exc:
            from controllers.audit import read_audit

            audit = read_audit(Storage(str(svc["storage"])), "synthetic")
            pytest.fail(f"{exc}\nincidents: {json.dumps(seen, default=str)[-4000:]}\n"
                        f"audit tail: {json.dumps(audit[-30:], default=str)[-6000:]}")
        served = load.ok
        wait_for(lambda: load.ok >= served + 10, timeout_s=60, what="load to flow after recovery")
    print(f"\nnode {victim.name} killed ({len(killed)} processes, {len(lost)} member replicas): members back "
          f"at 2 running replicas {t_back:.1f} s after the kill; {load.ok} requests ok, {len(load.failures)} "
          "failed; incidents: " + ", ".join(
              f"{i['member']}/{r} {i['kind']} detected +{i['detected_at'] - t_kill_wall:.1f} s, recovered "
              f"+{i['recovered_at'] - t_kill_wall:.1f} s" for r, i in incidents.items()))
    assert load.failures == [], load.failures[:5]
    for member, reps in after.items():  # still spread over the two surviving nodes
        assert len({r["node_id"] for r in reps}) == 2, (member, reps)
    for replica, inc in incidents.items():
        # Until Ray declares the node dead, calls to its actors wait rather than fail, so the
        # controller's probes may see a lost replica as hung before its actor shows as dead.
        assert inc["member"] == lost[replica] and inc["kind"] in ("dead", "hung"), inc
    # Diagnosed as one incident: the lost node is the cause, its replicas' incidents the effects.
    groups = wait_for(lambda: [g for g in _status(url)["incident_groups"]
                               if {i["id"] for i in incidents.values()} <= set(g["effects"])],
                      timeout_s=30, what=f"one incident group for the replicas lost with {victim.name}")
    group = groups[0]
    print(f"grouped: {group['id']} {group['cause_class']}/{group['cause']} node {group['node']} confidence "
          f"{group['confidence']} effects {group['effects']} evidence {json.dumps(group['cause_evidence'])}")
    assert (group["cause_class"], group["cause"], group["node"]) == ("infrastructure", "node", victim.name), group
    assert all(i["group"] == group["id"] for i in _status(url)["incidents"] if i["id"] in group["effects"])

    from controllers.audit import read_audit

    audit = read_audit(Storage(str(svc["storage"])), "synthetic")
    for inc in incidents.values():
        kinds = [r["kind"] for r in audit if r.get("incident") == inc["id"]]
        assert kinds[:1] == [f"detected-{inc['kind']}"] and "recovered" in kinds, kinds
    # The group has records of its own: formed (then grew, once per incident that joined later), naming the node
    # and every incident it explains, and `raymedic audit --kind incident-group` lists them.
    def group_records() -> list[dict] | None:
        printed = _raymedic(["audit", "--kind", "incident-group", "--json"], env=svc["env"], timeout=60).stdout
        out = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
        mine = [r for r in out if r.get("group") == group["id"]]
        return mine if set(group["effects"]) <= {i for r in mine for i in r["incidents"]} else None

    recs = wait_for(group_records, timeout_s=60, what=f"the audit's incident-group records of {group['id']}")
    assert all(r["kind"] == "incident-group" for r in recs), recs
    assert [r["outcome"] for r in recs][:1] == ["formed"] and set(r["outcome"] for r in recs) <= {"formed", "grew"}
    assert len(recs) <= len(group["effects"]) + 1, recs  # one per change, not one per step
    for r in recs:
        assert (r["node_id"], r["cause_class"], r["cause"]) == (group["node_id"], "infrastructure", "node"), r
        assert r["evidence"]["cause"] == "node" and 0 < r["evidence"]["confidence"] <= 1, r
    # Named as the operator knows the node (a record written before the node keeper named it may give its id).
    assert recs[-1]["target"] == victim.name, recs[-1]


def test_down_stops_exactly_the_cluster_it_started(svc):
    cluster = svc["cluster"]
    assert node_pids(cluster.node("head")), "the head should still run"
    _raymedic(["down"], env=svc["env"], timeout=300)
    assert not any(node_pids(n) for n in cluster.nodes)
    assert not os.path.exists(cluster.root)
    assert not os.path.exists(os.path.join(svc["env"]["RAYMEDIC_HOME"], "run.json"))
