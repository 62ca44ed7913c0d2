"""The benchmarks report what they measured: rows for both systems, figures that add up, tables that match.

Absolute figures depend on the machine and are never asserted; what is checked is
the shape of each report (a row per system and scenario, every figure present),
the relations between its figures (a ratio is raymedic's figure over plain
Serve's, the replacement time is recovery minus detection, the best rate is a rate
with no failure) and that the table and the JSON say the same.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from raymedic.app import cli
from raymedic.bench import controller_step, drift, durability, faults, report, saturation
from raymedic.bench.loadgen import Sample
from raymedic.bench.profile import E2E, OUTSIDE, ROWS, format_profile, latency_stats, stage_profile
from raymedic.bench.report import PLAIN_SERVE, RAYMEDIC, SYSTEMS, dumps, ratio
from raymedic.errors import RaymedicError
from serve_apps.stages import STAGES, TOTAL, StageTimer
from tests.conftest import REPO, copy_trained, free_port, remember_trained, write_config

FAULT_METRICS = ("before_p99_ms", "failed", "wrong", "last_wrong_after_s", "p50_ms", "p99_ms", "detect_s",
                 "recover_s", "replace_s")
"""Every figure a replica-faults row carries, in the table's order."""


def _bench(args, tmp_path, timeout):
    env = dict(os.environ, RAYMEDIC_HOME=str(tmp_path / "home"))
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-m", "raymedic", "bench", *args, "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def _table_rows(table: str, first: str) -> dict[str, list[str]]:
    """The rows of a bench table whose first column is ``first``, by metric label: [plain, raymedic, ratio]."""
    rows = {}
    for line in (ln.lstrip() for ln in table.splitlines()):
        if not line.startswith(first + " "):
            continue
        *label, plain, ours, rat = line[len(first):].split()
        rows[" ".join(label)] = [plain, ours, rat]
    return rows


def _fault_row(system: str, fault: str, **figures: Any) -> dict[str, Any]:
    row = {"system": system, "fault": fault, "member": faults.FAULT_MEMBER[fault], "replica": "r1", "requests": 100,
           "errors": [], "before_failed": 0, **{k: None for k in FAULT_METRICS}}
    row.update(figures)
    return row


def _faults_report() -> dict[str, Any]:
    """A replica-faults report as run_replica_faults returns it, with made-up figures."""
    return {
        "settings": faults.BenchSettings(rps=5.0, faults=("kill", "wrong")).__dict__,
        "results": [
            _fault_row(PLAIN_SERVE, "kill", failed=12, wrong=0, p50_ms=20.0, p99_ms=900.0, before_p99_ms=30.0,
                       detect_s=8.0, recover_s=14.0, replace_s=6.0),
            _fault_row(PLAIN_SERVE, "wrong", failed=0, wrong=40, last_wrong_after_s=19.5, p50_ms=20.0, p99_ms=40.0,
                       before_p99_ms=30.0),  # plain Serve never notices a wrong-answering replica
            _fault_row(RAYMEDIC, "kill", failed=3, wrong=0, p50_ms=25.0, p99_ms=300.0, before_p99_ms=35.0,
                       detect_s=0.5, recover_s=6.5, replace_s=6.0),
            _fault_row(RAYMEDIC, "wrong", failed=0, wrong=4, last_wrong_after_s=1.5, p50_ms=25.0, p99_ms=50.0,
                       before_p99_ms=35.0, detect_s=1.2, recover_s=7.0, replace_s=5.8),
        ],
        "controller_step": {"members": 50, "replicas_per_member": 10, "step_ms_p50": 1.5, "step_ms_max": 4.0,
                            "data_check_features": 50, "data_check_rows": 2000, "data_check_ms_p50": 60.0},
    }


def _check_fault_table(rep: dict[str, Any]) -> None:
    """Every fault both systems ran has a row per metric showing both figures and raymedic/plain Serve."""
    table = faults.format_table(rep)
    by = {(r["system"], r["fault"]): r for r in rep["results"]}
    labels = dict(zip(FAULT_METRICS, ("p99 before (ms)", "failed requests", "wrong answers", "last wrong at (s)",
                                      "p50 (ms)", "p99 (ms)", "detected at (s)", "serving again (s)",
                                      "replacement took (s)")))
    for fault in rep["settings"]["faults"]:
        rows = _table_rows(table, fault)
        if (PLAIN_SERVE, fault) not in by or (RAYMEDIC, fault) not in by:
            assert rows == {}, f"{fault} ran on one system only: nothing to compare"
            continue
        plain, ours = by[(PLAIN_SERVE, fault)], by[(RAYMEDIC, fault)]
        assert list(rows) == [labels[k] for k in FAULT_METRICS]
        for key in FAULT_METRICS:
            never = "never" if key in ("detect_s", "recover_s", "replace_s") else "-"
            shown = ["-" if v is None and never == "-" else ("never" if v is None else str(v))
                     for v in (plain[key], ours[key])]
            assert rows[labels[key]] == [*shown, ratio(ours[key], plain[key])], key
    step = rep["controller_step"]
    assert f"controller step, {step['members']} members × {step['replicas_per_member']} replicas" in table


# ---- the shared report helpers ------------------------------------------------------------------


def test_ratios_are_raymedic_over_plain_serve_and_say_when_there_is_none():
    assert ratio(3.0, 2.0) == "1.50×" and ratio(1, 4) == "0.25×"
    assert ratio(None, 2.0) == ratio(2.0, None) == "-"
    assert ratio(0, 0) == "=" and ratio(5, 0) == "∞"
    assert report.versus(None, 7, missing="never") == f"{'never':>12} {'7':>10} {'-':>15}"
    assert SYSTEMS == (PLAIN_SERVE, RAYMEDIC)


def test_every_bench_writes_json_the_same_way():
    assert drift.dumps is dumps  # benchdrift's own copy is gone
    rep = {"settings": {"config": Path("/x/raymedic.yaml"), "rps": 5.0}, "results": [{"p99_ms": None}]}
    text = dumps(rep)
    assert json.loads(text) == {"settings": {"config": "/x/raymedic.yaml", "rps": 5.0}, "results": [{"p99_ms": None}]}
    assert text.startswith('{\n  "settings"')  # indented for the record


# ---- replica-faults -------------------------------------------------------------------------------


def test_fault_table_shows_both_systems_and_their_ratio_for_every_figure():
    rep = _faults_report()
    _check_fault_table(rep)
    rows = _table_rows(faults.format_table(rep), "wrong")
    assert rows["detected at (s)"] == ["never", "1.2", "-"]  # plain Serve never detected it: no ratio
    assert rows["wrong answers"] == ["40", "4", "0.10×"]
    assert _table_rows(faults.format_table(rep), "kill")["failed requests"] == ["12", "3", "0.25×"]


def test_fault_table_leaves_out_a_fault_that_ran_on_one_system_only():
    rep = _faults_report()
    rep["results"] = [r for r in rep["results"] if not (r["fault"] == "wrong" and r["system"] == RAYMEDIC)]
    _check_fault_table(rep)
    assert _table_rows(faults.format_table(rep), "wrong") == {}


def test_cli_runs_replica_faults_with_the_flags_and_prints_table_then_json(monkeypatch, capsys):
    seen = {}

    def fake_run(*, config_path, port, settings, progress, data):
        seen.update(config_path=config_path, port=port, settings=settings, data=data)
        progress("a progress line")
        return _faults_report()

    monkeypatch.setattr(faults, "run_replica_faults", fake_run)
    assert cli.main(["bench", "replica-faults", "--faults", "kill,wrong", "--fault-seconds", "6",
                     "--port", "8123"]) == 0
    assert seen["port"] == 8123 and seen["config_path"] is None and seen["data"] is None
    assert seen["settings"] == faults.BenchSettings(rps=50.0, fault_s=6.0, faults=("kill", "wrong"))
    assert capsys.readouterr().out == ("[raymedic] a progress line\n\n" + faults.format_table(_faults_report())
                                       + "\n\n" + dumps(_faults_report()) + "\n")


def test_cli_prints_only_the_json_report_on_stdout_with_json(monkeypatch, capsys):
    monkeypatch.setattr(faults, "run_replica_faults",
                        lambda *, progress, **_: (progress("to stderr"), _faults_report())[1])
    assert cli.main(["bench", "replica-faults", "--rps", "5", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == json.loads(dumps(_faults_report()))
    assert "to stderr" in captured.err


@pytest.mark.parametrize("argv, fragment", [
    (["bench", "replica-faults", "--faults", "kill,melt"], "unknown fault(s) ['melt']: --faults takes a comma list"),
    (["bench", "saturation", "--rates", "20,x"], "--rates '20,x': give a comma list of positive request rates"),
    (["bench", "saturation", "--rates", "20,-5"], "--rates '20,-5': give a comma list of positive request rates"),
    (["bench", "saturation", "--rates", ","], "--rates ',': give a comma list"),
    (["bench", "saturation", "--data", "t.parquet"], "--data and --target go together"),
    (["bench", "replica-faults", "--target", "label"], "--data and --target go together"),
    (["bench", "controller-step", "--data", "t.parquet", "--target", "y"], "bench controller-step does not take"),
    (["bench", "infra-faults", "--faults", "leak,kill"],
     "unknown fault(s) ['kill']: --faults takes a comma list of leak,disk-fill"),
    (["bench", "infra-faults", "--fault-seconds", "10"], "too short for the leak"),
    (["bench", "infra-faults", "--disk-fill-mb", "-5"], "--disk-fill-mb -5: give a positive number"),
    (["bench", "infra-faults", "--faults", "spike", "--fault-seconds", "20"], "too short for the spike"),
    (["bench", "infra-faults", "--spike-rps", "0"], "--spike-rps 0: give a positive number"),
    (["bench", "replica-faults", "--faults", "leak"], "unknown fault(s) ['leak']"),
    (["bench", "durability", "--kills", "0"], "--kills 0: give a number of gateway kills from 1 to 100"),
    (["bench", "durability", "--kills", "500"], "--kills 500: give a number of gateway kills from 1 to 100"),
    (["bench", "durability", "--data", "t.parquet", "--target", "y"], "bench durability does not take --data"),
    (["bench", "durability", "--controller-kills", "-1"],
     "--controller-kills -1: give a number of controller kills per kill point from 0 (none) to 10"),
    (["bench", "durability", "--controller-kills", "11"], "--controller-kills 11: give a number of controller kills"),
])
def test_bench_refuses_bad_flags_with_the_fix_before_anything_runs(argv, fragment, monkeypatch):
    from raymedic.bench import infra

    def must_not_run(**_):
        raise AssertionError("ran despite a bad flag")

    monkeypatch.setattr(faults, "run_replica_faults", must_not_run)
    monkeypatch.setattr(saturation, "run_saturation", must_not_run)
    monkeypatch.setattr(infra, "run_infra_faults", must_not_run)
    monkeypatch.setattr(durability, "run_durability", must_not_run)
    args = cli._parser().parse_args(argv)
    with pytest.raises(RaymedicError) as err:
        args.fn(args)
    assert fragment in str(err.value)


def test_benches_replay_rows_of_the_users_table_tensors_as_nested_lists(monkeypatch, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raymedic.bench.cluster import BenchTable, bench_inputs

    images = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    image = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 3), 2)
    pq.write_table(pa.table({"image": image, "size": [1.0, None, 3.0, 4.0, 5.0], "y": [0, 1, 0, 1, 0]}),
                   tmp_path / "t.parquet")
    table = BenchTable(path=str(tmp_path / "t.parquet"), target="y")
    rows = bench_inputs(None, 8, data=table)
    assert len(rows) == 8 and all(set(r) == {"image", "size"} for r in rows)
    assert rows == bench_inputs(None, 8, data=table)  # seeded: both systems get the same requests
    by_size = {r["size"]: r["image"] for r in rows}
    assert by_size[3.0] == images[2].tolist() and json.loads(json.dumps(rows)) == rows  # JSON as a client sends
    assert None in by_size  # a missing value is sent as null, for the service's missing-value policy to judge
    seen = {}

    def fake_run(*, data, **_):
        seen["data"] = data
        return _faults_report()

    monkeypatch.setattr(faults, "run_replica_faults", fake_run)
    assert cli.main(["bench", "replica-faults", "--data", table.path, "--target", "y", "--json"]) == 0
    assert seen["data"] == table


def test_a_bench_of_your_own_modules_needs_your_table(tmp_path, monkeypatch):
    from raymedic.bench.cluster import bench_cluster
    from raymedic.keys import ADMIN_TOKEN_ENV

    monkeypatch.setenv(ADMIN_TOKEN_ENV, "a-token")  # the bench sets one when none is set: keep it to this test

    cfg = write_config(tmp_path / "c.yaml", storage=tmp_path / "s", port=free_port(),
                       members=[{"name": "own", "module": "mynets:Net"}, {"name": "logistic", "kind": "logistic"}],
                       gateway={"min_members": 1})
    with pytest.raises(RaymedicError, match="--data TABLE --target COLUMN"):
        with bench_cluster(str(cfg), print):
            raise AssertionError("a cluster started for a bench that cannot train its model")


# ---- saturation -----------------------------------------------------------------------------------


def _saturation_rows() -> list[dict[str, Any]]:
    row = lambda system, rps, failed, p50, p99: {"system": system, "rps": rps, "requests": int(rps * 15),  # noqa: E731
                                                 "failed": failed, "wrong": 0, "p50_ms": p50, "p99_ms": p99}
    return [row(PLAIN_SERVE, 20.0, 0, 20.0, 80.0), row(PLAIN_SERVE, 35.0, 0, 30.0, 200.0),
            row(PLAIN_SERVE, 50.0, 400, None, None),  # past saturation: nothing answered in time
            row(RAYMEDIC, 20.0, 0, 25.0, 90.0), row(RAYMEDIC, 35.0, 2, 35.0, 300.0),
            row(RAYMEDIC, 50.0, 0, 45.0, 400.0)]


def test_the_best_rate_is_the_highest_without_a_failure_per_system():
    rows = _saturation_rows()
    assert saturation.max_rps_without_failure(rows) == {PLAIN_SERVE: 35.0, RAYMEDIC: 50.0}
    assert saturation.max_rps_without_failure(rows[:1]) == {PLAIN_SERVE: 20.0, RAYMEDIC: None}


def test_saturation_table_has_every_rate_for_both_systems_and_consistent_ratios():
    rows = _saturation_rows()
    rep = {"settings": {"rates": [20.0, 35.0, 50.0, 70.0], "duration_s": 15.0, "deadline_s": 2.0},
           "results": rows, "max_rps_without_failure": saturation.max_rps_without_failure(rows)}
    table = saturation.format_saturation(rep)
    by = {(r["system"], r["rps"]): r for r in rows}
    for rps in (20.0, 35.0, 50.0):
        cells = _table_rows(table, f"{rps:>6.0f}".strip())
        assert list(cells) == ["failed requests", "p50 (ms)", "p99 (ms)"]
        for key, label in (("failed", "failed requests"), ("p50_ms", "p50 (ms)"), ("p99_ms", "p99 (ms)")):
            plain, ours = by[(PLAIN_SERVE, rps)][key], by[(RAYMEDIC, rps)][key]
            assert cells[label] == [report.shown(plain), report.shown(ours), ratio(ours, plain)]
    assert _table_rows(table, "70") == {}  # a rate neither system reached is left out
    assert table.endswith("highest rate without a failure: plain Serve 35.0, raymedic 50.0 req/s")
    # Any incident on these fault-free runs is a false positive, shown per rate the system ran:
    rows[3]["incidents"], rows[4]["incidents"], rows[5]["incidents"] = [], ["slow"], []
    table = saturation.format_saturation({**rep, "results": rows})
    assert ("raymedic incidents with no fault (false positives): 20 req/s: none, 35 req/s: slow, 50 req/s: none"
            in table.splitlines())


def test_cli_runs_saturation_at_the_rates_given(monkeypatch, capsys):
    seen = {}

    def fake_run(*, config_path, port, rates, duration_s, deadline_s, progress, data, profile):
        seen.update(rates=rates, duration_s=duration_s, deadline_s=deadline_s, profile=profile)
        rows = [r for r in _saturation_rows() if r["rps"] in rates]
        return {"settings": {"rates": sorted(rates), "duration_s": duration_s, "deadline_s": deadline_s},
                "results": rows, "max_rps_without_failure": saturation.max_rps_without_failure(rows)}

    monkeypatch.setattr(saturation, "run_saturation", fake_run)
    assert cli.main(["bench", "saturation", "--rates", "35, 20", "--seconds", "5", "--json"]) == 0
    assert seen == {"rates": [35.0, 20.0], "duration_s": 5.0, "deadline_s": 2.0, "profile": False}
    out = json.loads(capsys.readouterr().out)
    assert {r["system"] for r in out["results"]} == set(SYSTEMS)
    assert out["max_rps_without_failure"] == {PLAIN_SERVE: 35.0, RAYMEDIC: 20.0}


# ---- controller-step ------------------------------------------------------------------------------


def test_controller_step_reports_every_figure_and_one_incident_per_faulty_replica():
    out = controller_step.run_controller_step(members=12, replicas=2, steps=10)
    assert {k: out[k] for k in ("members", "replicas_per_member", "steps")} == {
        "members": 12, "replicas_per_member": 2, "steps": 10}
    assert 0 < out["step_ms_p50"] <= out["step_ms_max"]
    assert out["incidents_opened"] == math.ceil(12 / 10)  # one faulty replica per ten members
    assert out["data_check_features"] == 50 and out["data_check_rows"] == 2000 and out["data_check_ms_p50"] > 0
    assert 25 <= out["data_check_drifting"] <= 50  # every shifted (numeric) feature is found
    assert controller_step.format_step(out).splitlines() == [
        f"controller step over 12 members × 2 replicas: p50 {out['step_ms_p50']} ms, max {out['step_ms_max']} ms "
        "(10 steps)",
        f"data check over 50 features × 2000 rows: p50 {out['data_check_ms_p50']} ms "
        f"({out['data_check_drifting']} features drifting)"]


def test_controller_step_bench_runs_from_the_command_line(tmp_path):
    out = _bench(["controller-step", "--members", "5", "--replicas", "3"], tmp_path, 120)
    assert out["members"] == 5 and out["replicas_per_member"] == 3 and out["steps"] == 50
    assert out["incidents_opened"] == 1 and 0 < out["step_ms_p50"] <= out["step_ms_max"]
    assert set(out) == {"members", "replicas_per_member", "steps", "step_ms_p50", "step_ms_max", "incidents_opened",
                        "data_check_features", "data_check_rows", "data_check_ms_p50", "data_check_drifting"}


# ---- on a real cluster ----------------------------------------------------------------------------


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
    assert out["settings"]["faults"] == ["wrong"] and out["settings"]["rps"] == 5.0
    rows = {r["system"]: r for r in out["results"]}
    assert len(out["results"]) == 2 and set(rows) == set(SYSTEMS)
    for r in rows.values():
        assert r["fault"] == "wrong" and r["member"] == faults.FAULT_MEMBER["wrong"] and r["replica"]
        assert r["requests"] >= 20 and 0 <= r["failed"] <= r["requests"] and 0 <= r["wrong"] <= r["requests"]
        assert set(FAULT_METRICS) | {"before_failed", "errors"} <= set(r)
        if r["detect_s"] is not None and r["recover_s"] is not None:
            assert r["replace_s"] == round(r["recover_s"] - r["detect_s"], 2)
        else:
            assert r["replace_s"] is None
    assert rows[PLAIN_SERVE]["detect_s"] is None  # Serve never notices a replica answering wrongly
    assert rows[RAYMEDIC]["detect_s"] is not None  # the golden probes do
    assert out["controller_step"]["members"] == 50 and out["controller_step"]["replicas_per_member"] == 10
    _check_fault_table(out)  # the table says what the JSON says


@pytest.mark.ray
@pytest.mark.slow
def test_live_drift_bench_streams_through_the_service(tmp_path):
    from raymedic.bench.live import format_live_table
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
    assert set(out["control"]) == {"rows", "incidents", "kinds", "retrain_jobs"}
    assert len(out["control"]["kinds"]) <= out["control"]["incidents"]
    assert out["settings"]["scenarios"] == ["mean +1 sd"] and out["settings"]["control_rows"] == 300
    (row,) = out["results"]
    assert row["scenario"] == "mean +1 sd" and row["kind"] == "inputs"
    # Through HTTP, the gateway's telemetry and the controller's monitor, a 1 sd shift is found well
    # within the scenario's budget of changed rows.
    assert row["detect_rows"] is not None and row["detect_rows"] < out["settings"]["max_post_rows"], row
    assert row["detected_s"] is not None and row["detected_s"] >= 0
    assert f"{row['detect_rows']} rows ({row['detected_s']} s)" in format_live_table(out)


def test_faults_go_to_the_members_a_config_has():
    from raymedic.config import parse_config

    builtin = parse_config({})
    assert [faults.fault_member(f, builtin) for f in ("kill", "hang", "error")] == ["mlp", "tabresnet", "mlp"]
    own = parse_config({"model": "digits", "members": [{"name": "cnn", "module": "m.d:Net"},
                                                       {"name": "logistic", "kind": "logistic", "fallback": True}],
                        "gateway": {"min_members": 1}})
    assert {faults.fault_member(f, own) for f in ("kill", "hang", "wrong", "error")} == {"cnn"}


# ---- infra-faults ---------------------------------------------------------------------------------


def _infra_report() -> dict[str, Any]:
    """An infra-faults report as run_infra_faults returns it, with made-up figures."""
    from raymedic.bench import infra

    common = {"member": "mlp", "replica": "r1", "requests": 1500, "errors": []}
    return {
        "settings": infra.InfraSettings(rps=25.0).__dict__,
        "notes": {"leak": "leak: how it is made", "disk-fill": "disk-fill: how it is made",
                  "spike": "spike: how it is made"},
        "results": [
            {**common, "system": PLAIN_SERVE, "fault": "leak", "failed": 7, "p50_ms": 20.0, "p99_ms": 800.0,
             "before_p99_ms": 40.0, "detect_s": 41.2, "heal_s": 52.0, "limit_mb": 900.0, "start_rss_mb": 420.0,
             "peak_rss_mb": 903.5, "mb_per_s": 12.0, "limit_hit_s": 40.1, "gone_s": 40.4},
            {**common, "system": RAYMEDIC, "fault": "leak", "failed": 0, "p50_ms": 25.0, "p99_ms": 90.0,
             "before_p99_ms": 50.0, "detect_s": 22.0, "heal_s": 30.5, "limit_mb": 900.0, "start_rss_mb": 430.0,
             "peak_rss_mb": 700.0, "mb_per_s": 11.8, "limit_hit_s": None, "gone_s": 26.0},
            {**common, "system": PLAIN_SERVE, "fault": "disk-fill", "member": None, "replica": None, "failed": 0,
             "p50_ms": 20.0, "p99_ms": 60.0, "before_p99_ms": 40.0, "detect_s": None, "heal_s": None,
             "fill_mb": 1024.0, "alert_s": None, "compact_started_s": None, "compacted_s": None,
             "files_merged": None, "alert_cleared_s": None},
            {**common, "system": RAYMEDIC, "fault": "disk-fill", "member": None, "replica": None, "failed": 0,
             "p50_ms": 25.0, "p99_ms": 70.0, "before_p99_ms": 50.0, "detect_s": 1.9, "heal_s": 2.4,
             "fill_mb": 1024.0, "alert_s": 1.9, "compact_started_s": 2.0, "compacted_s": 2.4, "files_merged": 180,
             "alert_cleared_s": 4.1},
            *({**common, "system": system, "fault": "spike", "member": None, "replica": None, "failed": failed,
               "p50_ms": p50, "p99_ms": p99, "before_p99_ms": 40.0, "detect_s": out, "heal_s": back,
               "base_rps": 40.0, "spike_rps": 120.0, "spike_s": 30.0, "pre_p50_ms": 15.0, "pre_p99_ms": 40.0,
               "spike_p50_ms": p50, "spike_p99_ms": p99, "spike_failed": failed, "p99_growth": round(p99 / 40.0, 2),
               "scale_out_s": out, "peak_replicas": peak, "scale_in_s": None if back is None else back - 30.0}
              for system, failed, p50, p99, out, back, peak in (
                  (PLAIN_SERVE, 120, 400.0, 2000.0, None, None, 10),
                  (RAYMEDIC, 0, 30.0, 70.0, 4.2, 52.0, 16))),
        ],
    }


def test_infra_table_has_every_metric_of_each_fault_for_both_systems_and_says_what_cannot_apply():
    from raymedic.bench import infra

    rep = _infra_report()
    table = infra.format_infra_table(rep)
    by = {(r["system"], r["fault"]): r for r in rep["results"]}
    for name in ("leak", "disk-fill", "spike"):
        rows = _table_rows(table, name)
        metrics = infra.metrics_of(name)
        assert list(rows) == [m.label for m in metrics]
        for m in metrics:
            plain, ours = by[(PLAIN_SERVE, name)][m.key], by[(RAYMEDIC, name)][m.key]
            assert rows[m.label] == [report.shown(plain, m.plain_missing), report.shown(ours, m.ours_missing),
                                     ratio(ours, plain)], m
        assert rep["notes"][name] in table
    leak, disk = _table_rows(table, "leak"), _table_rows(table, "disk-fill")
    assert leak["limit reached at (s)"] == ["40.1", "never", "-"]  # raymedic restarted it before the limit
    assert leak["failed requests"] == ["7", "0", "0.00×"]
    assert disk["compaction done (s)"] == ["n/a", "2.4", "-"]  # plain Serve has no log to compact
    assert disk["detected at (s)"] == ["n/a", "1.9", "-"] and leak["detected at (s)"][0] == "41.2"
    spike = _table_rows(table, "spike")
    assert spike["first new replica at (s)"] == ["n/a", "4.2", "-"]  # a fixed count has nothing to scale
    assert spike["p99 spike / pre-spike (x)"] == ["50.0", "1.75", "0.04×"]
    rep["results"] = rep["results"][:3]  # disk-fill on plain Serve only: nothing to compare
    assert _table_rows(infra.format_infra_table(rep), "disk-fill") == {}


def test_every_infra_fault_in_the_cli_has_a_row_in_the_fault_table():
    from raymedic.bench import infra
    from raymedic.keys import INFRA_BENCH_FAULTS

    assert set(INFRA_BENCH_FAULTS) == set(infra.INFRA_FAULTS)
    for name, cls in infra.INFRA_FAULTS.items():
        assert cls().name == name and {m.key for m in cls.metrics}.isdisjoint(m.key for m in infra.COMMON)


def test_spike_measures_before_and_during_the_burst_and_says_plain_serve_is_the_fixed_baseline():
    from raymedic.bench import infra
    from raymedic.bench.loadgen import Sample
    from raymedic.config import parse_config

    fault, s = infra.SpikeFault(), infra.InfraSettings(fault_s=40.0, spike_rps=30.0)
    base = parse_config({})
    cfg = fault.configure(base, s)
    assert fault.own_deployment and fault.rps(s) == 30.0 and fault.spike_s(s) == 20.0
    assert cfg.gateway.replicas == 1 and cfg.gateway.max_replicas == fault.GATEWAY_MAX
    assert all(m.max_replicas == m.replicas + fault.MEMBER_EXTRA for m in cfg.members)
    assert cfg.scaling.downscale_delay_s < s.fault_s  # scaling in is seen inside the window
    assert "no autoscaling" in fault.note(cfg, s) and "baseline" in fault.note(cfg, s)
    groups = infra._groups(base, [infra.LeakFault(), fault], s)
    assert [[f.name for f in g] for _, g in groups] == [["leak"], ["spike"]]
    assert groups[0][0].gateway.max_replicas is None  # the other faults keep the fixed config

    at = 1000.0
    samples = ([Sample(at - 10 + i * 0.1, 0.010 + 0.0001 * (i % 10), True, None, 1, 0) for i in range(100)]
               + [Sample(at + i * 0.05, 0.030, i % 50 != 0, None, 1, 0) for i in range(400)])
    run = infra.Run(system=object(), config=cfg, settings=s, member=None, at=at)  # raymedic: not PlainServe
    run.seen.update(samples=samples, floor={"gateway": 1}, peak={"gateway": 3}, scale_out_s=4.0, scale_in_s=12.0)
    out = fault.outcome(run)
    assert out["pre_p99_ms"] < 11.0 and out["spike_p99_ms"] == 30.0 and out["spike_failed"] == 8
    assert out["p99_growth"] == round(out["spike_p99_ms"] / out["pre_p99_ms"], 2)
    assert (out["detect_s"], out["heal_s"], out["peak_replicas"]) == (4.0, 32.0, 3)
    assert {m.key for m in fault.metrics} <= set(out)


def test_cli_runs_infra_faults_with_the_flags(monkeypatch, capsys):
    from raymedic.bench import infra

    seen = {}

    def fake_run(*, config_path, port, settings, progress, data):
        seen.update(settings=settings, port=port)
        return _infra_report()

    monkeypatch.setattr(infra, "run_infra_faults", fake_run)
    assert cli.main(["bench", "infra-faults", "--faults", "leak", "--fault-seconds", "45", "--memory-limit-mb",
                     "800", "--port", "8124", "--json"]) == 0
    assert seen["port"] == 8124
    assert seen["settings"] == infra.InfraSettings(fault_s=45.0, memory_limit_mb=800.0, faults=("leak",))
    assert json.loads(capsys.readouterr().out) == json.loads(dumps(_infra_report()))
    assert cli.main(["bench", "infra-faults"]) == 0
    assert seen["settings"] == infra.InfraSettings()  # every default, every fault
    assert capsys.readouterr().out.startswith("\n" + infra.format_infra_table(_infra_report()))
    assert cli.main(["bench", "infra-faults", "--faults", "spike", "--spike-rps", "30", "--json"]) == 0
    assert seen["settings"] == infra.InfraSettings(spike_rps=30.0, faults=("spike",))




# ---- durability ----------------------------------------------------------------------------------------------


def _durability_report(controller: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A durability report as run_durability returns it, with made-up figures."""
    log = durability.KillLog()
    log.acked = {f"id{i}": i % 2 for i in range(40)}
    log.requests, log.failed, log.unknown = 90, 3, 1
    log.failures.update({"RemoteDisconnected": 2, "HTTP 500": 1})
    log.kills = [{"replica": f"r{i}", "inference_id": f"id{i}", "ms_after_ack": 4.0 + i, "replaced_s": 9.0 + i}
                 for i in range(3)]
    counts = {"acknowledged": 40, "persisted": 40, "joined": 39, "lost": 0, "unjoined": 1,
              "kills_answered_by_the_killed": 2}
    return durability.durability_report(log, counts, settings=durability.DurabilitySettings(kills=3), gateways=2,
                                        seconds=41.0, controller=controller)


def test_durability_table_has_every_gateway_figure_says_why_there_is_no_baseline_and_leaves_controller_rows():
    rep = _durability_report()
    g = rep["gateway_kills"]
    assert (g["kills"], g["lost"], g["unjoined"], g["failed_requests"]) == (3, 0, 1, 3)
    assert (g["kill_ms_after_ack_median"], g["kill_ms_after_ack_max"], g["replaced_s_median"]) == (5.0, 6.0, 10.0)
    assert rep["plain_serve"] is None and "page cache" in rep["plain_serve_why_not"]
    table = durability.format_durability_table(rep)
    for key, _ in durability.GATEWAY_ROWS:
        line = next(ln for ln in table.splitlines() if ln.split()[:1] == [key])
        assert line.split()[1] == str(g[key]), line
    assert "plain Serve: no baseline" in table and "RemoteDisconnected x2" in table
    assert table.splitlines()[-1] == "controller kills: duplicate actions — not measured by this run"
    rows = [{"kill point": "after-detect", "kills": 3, "actions": 3, "duplicate actions": 0, "missing records": 0,
             "timed out": 0}]
    table = durability.format_controller_rows(rows)
    assert table[0] == "controller kills: duplicate actions"
    assert table[2].split() == ["after-detect", "3", "3", "0", "0", "0"]
    assert durability.format_durability_table(_durability_report(rows)).endswith("\n".join(table))


def _window(incident: str, *, restarts: int = 1, recovered: bool = True) -> list[dict[str, Any]]:
    """The audit records of one after-detect kill's window, as read_audit returns them."""
    recs = [{"ts": 1.0, "kind": "detected-wrong", "incident": incident, "target": "mlp/r1"}]
    recs += [{"ts": 2.0, "kind": "restart", "incident": incident, "outcome": "ok"}] * restarts
    if recovered:
        recs.append({"ts": 3.0, "kind": "recovered", "incident": incident, "action": "restart"})
    return recs


def test_a_kill_window_of_audit_records_becomes_its_figures_and_kills_sum_into_one_row_per_point():
    from raymedic.bench import controller_kills as ck
    from raymedic.failpoints import Point

    clean = ck.kill_outcome(Point.AFTER_DETECT, _window("inc-1"), fired=True)
    assert (clean["kill point"], clean["actions"], clean["duplicate actions"], clean["missing records"]) == \
        ("after-detect", 1, 0, 0)
    twice = ck.kill_outcome(Point.AFTER_DETECT, _window("inc-2", restarts=2), fired=True)
    assert (twice["actions"], twice["duplicate actions"], twice["duplicates"]) == (2, 1, ["restart inc-2 x2"])
    lost = ck.kill_outcome(Point.AFTER_DETECT, _window("inc-3")[1:], fired=True)  # no detected- record
    assert lost["missing records"] == 1 and lost["missing"] == ["detection of inc-3 (restart seen)"]
    retrain = [{"ts": 1.0, "kind": "retrain-submitted", "incident": "r0001-5", "evidence": {"job_id": "j1"}},
               {"ts": 2.0, "kind": "retrain-finished", "incident": "r0001-5"},
               {"ts": 3.0, "kind": "promote", "incident": "t1", "outcome": "failed: no"}]
    submit = ck.kill_outcome(Point.AFTER_SUBMIT, retrain, fired=True)
    assert (submit["kill point"], submit["actions"], submit["duplicate actions"]) == ("after-submit", 1, 0)
    never = ck.kill_outcome(Point.AFTER_SUBMIT, [], fired=False, timed_out="timed out after 5 s waiting for x")
    rows = ck.controller_rows([clean, twice, lost, submit, never])
    assert [{c: r[c] for c in durability.CONTROLLER_COLUMNS} for r in rows] == [
        {"kill point": "after-detect", "kills": 3, "actions": 4, "duplicate actions": 1, "missing records": 1,
         "timed out": 0},
        {"kill point": "after-submit", "kills": 1, "actions": 1, "duplicate actions": 0, "missing records": 0,
         "timed out": 1}]
    assert [len(r["each"]) for r in rows] == [3, 2]
    lines = durability.format_controller_rows(rows)
    assert "    after-detect kill 2: duplicate restart inc-2 x2" in lines
    assert "    after-detect kill 3: missing detection of inc-3 (restart seen)" in lines
    assert "    after-submit kill 2: timed out: timed out after 5 s waiting for x" in lines
    assert not any("kill 1:" in ln for ln in lines)  # a clean kill adds no line


def test_cli_runs_durability_with_the_flags(monkeypatch, capsys):
    seen = {}

    def fake_run(*, config_path, port, settings, progress):
        seen.update(settings=settings, port=port)
        return _durability_report()

    monkeypatch.setattr(durability, "run_durability", fake_run)
    assert cli.main(["bench", "durability", "--kills", "7", "--port", "8125", "--json"]) == 0
    assert seen == {"settings": durability.DurabilitySettings(kills=7), "port": 8125}
    assert json.loads(capsys.readouterr().out) == json.loads(dumps(_durability_report()))
    assert cli.main(["bench", "durability", "--controller-kills", "0", "--json"]) == 0
    assert seen["settings"] == durability.DurabilitySettings(controller_kills=0)
    capsys.readouterr()
    assert cli.main(["bench", "durability"]) == 0
    assert seen["settings"] == durability.DurabilitySettings() and seen["settings"].controller_kills == 3
    assert capsys.readouterr().out.startswith("\n" + durability.format_durability_table(_durability_report()))


def test_the_demos_concept_drill_prints_the_loop_healed_or_not(capsys):
    """The demo's model-healing figures print whether the loop healed within the drill or not (a slow
    machine must get the figures it has, not a KeyError at the end of a 7-minute demo)."""
    from raymedic.app.demo import CONCEPT_STREAM, _print_concept

    healed = {"detected_s": 9.6, "detect_labels": 180, "detected_by": ["concept_drift"], "job_submitted_s": 10.1,
              "retraining": [{"result": "promoted", "gate": {"mlp": {"passed": True, "champion_accuracy": 0.61,
                                                                     "challenger_accuracy": 0.93}}}],
              "promoted_s": 48.0, "promoted_versions": {"mlp": "v0002"}, "recovered_s": 52.5, "block_rows": 200,
              "accuracy": {"live": [0.6, 0.9], "fixed": [0.6, 0.61], "oracle": [0.94, 0.95]},
              "failed": 0, "requests": 640}
    _print_concept(healed, CONCEPT_STREAM)
    out = capsys.readouterr().out
    assert "9.6 s" in out and "mlp 0.610→0.930" in out and "52.5 s" in out and "0.900 |  0.610 |  0.950" in out
    long_run = {**healed, "accuracy": {k: [0.5] * 18 + [0.9] for k in ("live", "fixed", "oracle")}}
    _print_concept(long_run, CONCEPT_STREAM)
    blocks = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    rows ")]
    assert len(blocks) == 10 and blocks[0].startswith("    rows     0-400")
    assert blocks[-1].startswith("    rows  3600-3800") and "0.900 |  0.900" in blocks[-1]
    _print_concept({"block_rows": 200, "failed": 1, "requests": 12}, CONCEPT_STREAM)
    out = capsys.readouterr().out
    assert out.count("not within the drill") == 4 and "1 of 12 requests failed" in out


def test_the_profile_table_has_every_stage_and_its_parts_add_up_to_at_most_the_whole():
    samples = []
    for k in range(1, 21):
        ns = iter(range(0, 10**9, 1000 * k))  # every stage k µs on this fake clock
        timer = StageTimer(clock=lambda ns=ns: next(ns))
        for stage in STAGES:
            timer.mark(stage)
        timer.note("member_call", 0.5e-6 * k)
        timer.note("member_infer", 0.2e-6 * k)
        samples.append(Sample(0.0, 0.001, True, None, 0, 0, timer.header()))
    samples.append(Sample(0.0, 0.5, False, "HTTP 503", None, 0, None))  # a failure has no profile: left out
    prof = stage_profile(samples)
    st = prof["stages"]
    assert prof["requests"] == 20 and set(st) == {key for key, _, _ in ROWS}
    assert sum(st[s]["mean_us"] for s in STAGES) <= st[TOTAL]["mean_us"] <= st[E2E]["mean_us"] == 1000.0
    assert st[OUTSIDE]["mean_us"] == pytest.approx(st[E2E]["mean_us"] - st[TOTAL]["mean_us"], abs=0.2)
    assert st["member_transport"]["mean_us"] == pytest.approx(3 * st["member_infer"]["mean_us"] / 2, abs=0.2)
    table = format_profile(20.0, prof, latency_stats([800.0] * 10))
    for _, label, _ in ROWS:
        assert label in table
    assert "raymedic / plain Serve: p50 1.25×, p99 1.25×" in table
