"""The benchmark commands run end to end and report figures (their values are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, copy_trained, free_port, remember_trained, write_config


def _bench(args, tmp_path, timeout):
    env = dict(os.environ, RAYMEDIC_HOME=str(tmp_path / "home"))
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-m", "raymedic", "bench", *args, "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_controller_step_bench_reports_its_figures(tmp_path):
    out = _bench(["controller-step", "--members", "5", "--replicas", "3"], tmp_path, 120)
    assert out["members"] == 5 and out["replicas_per_member"] == 3
    assert out["step_ms_p50"] > 0 and out["incidents_opened"] >= 1


@pytest.mark.ray
@pytest.mark.slow
def test_replica_fault_bench_runs_both_systems(tmp_path):
    from raymedic.config import load_config

    # The tests' small ensemble (few epochs, two replicas per member), trained once per test session:
    # the bench trains into RAYMEDIC_HOME/bench-storage when no champions are there.
    config = write_config(tmp_path / "raymedic.yaml", storage=tmp_path / "unused", port=free_port())
    cfg = load_config(config).config.resolved()
    storage = tmp_path / "home" / "bench-storage"
    copy_trained(cfg, storage)
    out = _bench(["replica-faults", "--config", str(config), "--faults", "wrong", "--rps", "5",
                  "--fault-seconds", "6", "--port", str(free_port())], tmp_path, 900)
    remember_trained(cfg, storage, tmp_path / "trained")
    rows = {r["system"]: r for r in out["results"]}
    assert set(rows) == {"plain Serve", "raymedic"}
    for r in rows.values():
        assert r["fault"] == "wrong" and r["requests"] >= 20
        assert {"failed", "wrong", "p50_ms", "p99_ms", "detect_s", "recover_s"} <= set(r)
    assert rows["plain Serve"]["detect_s"] is None  # Serve never notices a replica answering wrongly
    assert rows["raymedic"]["detect_s"] is not None  # the golden probes do
    assert out["controller_step"]["members"] == 50


@pytest.mark.ray
@pytest.mark.slow
def test_live_drift_bench_streams_through_the_service(tmp_path):
    from raymedic.config import load_config

    # Detection needs no redundancy: one replica per member deploys faster.
    members = [{"name": m, "kind": m, "replicas": 1, "num_cpus": 0.2, **({"fallback": True} if m == "logistic"
                                                                          else {})}
               for m in ("logistic", "mlp", "tabresnet")]
    config = write_config(tmp_path / "raymedic.yaml", storage=tmp_path / "unused", port=free_port(),
                          members=members)
    copy_trained(load_config(config).config.resolved(), tmp_path / "home" / "bench-storage")
    out = _bench(["drift", "--live", "--config", str(config), "--live-scenarios", "mean +1 sd", "--control-rows",
                  "300", "--port", str(free_port())], tmp_path, 600)
    assert out["control"]["rows"] == 300 and out["failed_requests"] == 0
    (row,) = out["results"]
    assert row["scenario"] == "mean +1 sd" and row["kind"] == "inputs"
    # Through HTTP, the gateway's telemetry and the controller's monitor, a 1 sd shift is found well
    # within the scenario's budget of changed rows.
    assert row["detect_rows"] is not None and row["detect_rows"] < out["settings"]["max_post_rows"], row
