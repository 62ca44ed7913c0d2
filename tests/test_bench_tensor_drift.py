"""`raymedic bench tensor-drift` (raymedic.bench.tensor_drift): a small seeded run, checked for structure and
relations, never absolute figures; and the CLI's dispatch to it."""

from __future__ import annotations

import json

import pytest

from raymedic.app import cli
from raymedic.bench import tensor_drift as bench
from raymedic.bench.tensor_drift import SCENARIOS, TensorBenchSettings

pytest.importorskip("sklearn")

SMALL = TensorBenchSettings(seeds=1, control_rows=3000, pre_rows=400, post_rows=800, fit_rows=1500,
                            calibration_paths=100)


@pytest.fixture(scope="module")
def report() -> dict:
    return bench.run_tensor_drift_bench(SMALL)


def test_report_has_every_scenario_and_is_json(report: dict) -> None:
    assert json.loads(bench.dumps(report))["bench"] == "tensor-drift"
    assert [r["scenario"] for r in report["detection"]] == [s.name for s in SCENARIOS]
    assert report["control"]["rows"] == SMALL.control_rows
    c = report["control"]
    assert c["either"]["alarms"] == c["mmd"]["alarms"] + c["cusum"]["alarms"]
    # 0.05 per 10k over 3,000 rows: ~0.015 alarms expected; two would mean the calibration is far off
    assert c["either"]["alarms"] <= 1, c
    table = bench.format_table(report)
    assert all(s.name in table for s in SCENARIOS) and "false alarms on the no-drift control" in table
    assert 1 <= report["detector"]["components"] <= 8


def test_strong_changes_are_caught_and_the_combination_is_never_later(report: dict) -> None:
    det = {r["scenario"]: r for r in report["detection"]}
    for name in ("noise sd 2", "rotate 45 deg", "brightness +2"):
        assert det[name]["either"]["median"] is not None, name
    for r in report["detection"]:
        either, parts = r["either"]["median"], [r[t]["median"] for t in ("mmd", "cusum")]
        if either is not None:
            assert either <= min(p for p in parts if p is not None)


def test_cli_dispatches_bench_tensor_drift(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    seen = {}

    def fake(settings: TensorBenchSettings, *, progress=None) -> dict:
        seen["settings"] = settings
        return {"bench": "tensor-drift"}

    monkeypatch.setattr(bench, "run_tensor_drift_bench", fake)
    args = cli._parser().parse_args(["bench", "tensor-drift", "--seeds", "2", "--control-rows", "5000", "--json"])
    assert args.fn(args) == 0
    assert json.loads(capsys.readouterr().out) == {"bench": "tensor-drift"}
    assert (seen["settings"].seeds, seen["settings"].control_rows) == (2, 5000)
