"""``raymedic chaos load``: bounded, open loop, one valid row per request built from the model's schema,
per-second lines and totals (against a fake gateway; no Ray)."""

from __future__ import annotations

import json

import pytest

from raymedic.app import cli
from tests.test_cli_commands import FakeGateway

SCHEMA = {"features": [{"name": "f0", "type": "float", "min": -1.0, "max": 1.0},
                       {"name": "kind", "type": "categorical", "levels": ["a", "b"]}],
          "classes": [0, 1]}


@pytest.fixture
def gateway():
    gw = FakeGateway()
    gw.routes[("GET", "/v1/models")] = (200, {"models": ["churn", "cards"]})
    gw.routes[("GET", "/v1/models/churn")] = (200, {"name": "churn", "schema": SCHEMA})
    gw.routes[("GET", "/v1/models/cards")] = (200, {"name": "cards", "schema": SCHEMA})
    gw.routes[("POST", "/v1/models/churn:predict")] = (200, {"predictions": [1]})
    gw.routes[("POST", "/v1/models/cards:predict")] = (503, {"error": "overloaded"})
    yield gw
    gw.close()


@pytest.mark.parametrize(("flags", "names"), [
    (["--rps", "5000", "--for", "10"], "--rps 5000"),
    (["--rps", "0", "--for", "10"], "--rps 0"),
    (["--rps", "10", "--for", "3600"], "--for 3600"),
    (["--rps", "10"], "--for SECONDS"),
])
def test_silly_or_missing_rates_are_refused_with_the_fix(gateway, capsys, flags, names):
    assert cli.main(["chaos", "load", *flags, "--url", gateway.url]) == 2
    err = capsys.readouterr().err
    assert names in err and "error:" in err
    assert not [r for r in gateway.requests if r[0] == "POST"]


def test_load_sends_one_valid_row_per_request_at_the_rate_and_reports_totals(gateway, capsys):
    assert cli.main(["chaos", "load", "--rps", "40", "--for", "1", "--url", gateway.url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["model"] == "churn"  # the first model served, by default
    assert (report["sent"], report["ok"], report["failed"]) == (40, 40, 0)
    assert report["p50_ms"] is not None and report["p99_ms"] >= report["p50_ms"]
    posted = [r[3] for r in gateway.requests if r[0] == "POST"]
    assert len(posted) == 40
    for body in posted:
        (row,) = body["instances"]
        assert -1.0 <= row["f0"] <= 1.0 and row["kind"] in ("a", "b")


def test_every_second_gets_a_line_and_failures_say_why(gateway, capsys):
    assert cli.main(["chaos", "load", "--rps", "20", "--for", "2", "--model", "cards", "--url", gateway.url]) == 0
    out = capsys.readouterr().out.splitlines()
    seconds = [line for line in out if line.strip().split()[0].endswith("s") and "sent" in line]
    assert len(seconds) >= 2
    total = out[-1]
    assert total.startswith("total") and "failed   40" in total and "HTTP 503: 40" in total


def test_an_unknown_model_is_named_with_the_listing(gateway, capsys):
    assert cli.main(["chaos", "load", "--rps", "5", "--for", "1", "--model", "nope", "--url", gateway.url]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
