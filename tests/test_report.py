"""``raymedic report``: post-mortems from a synthetic audit and series written with the real writers (no Ray).

The browser test renders a report in a real headless Chromium (Debian's ``chromium``
package, driven over the DevTools protocol with ``websockets``): the page loads,
every image decodes, nothing is fetched but the page itself, the console stays
clean, and a screenshot of the asked size is taken. CI installs Chromium
(``.ci/run``) and sets ``RAYMEDIC_CI=1``: there a missing browser fails the test;
elsewhere it is skipped.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controllers.audit import AuditLog, read_audit
from controllers.series import SeriesBuckets, SeriesLog, drift_distribution
from raymedic.app import cli
from raymedic.app.report import build_report, gather, incidents_in
from raymedic.storage import Storage
from tests.conftest import wait_for, write_config

MODEL = "churn"
T0 = time.time() - 1200  # twenty minutes of series, ending now
DEAD_AT, DRIFT_AT = T0 + 400, T0 + 800


def _write_history(root: Path) -> Storage:
    """An audit (a replica killed and replaced, a drifting feature and the retrain it caused, with a
    diagnosis the way h-diag records one) and 20 minutes of series, through the controller's own writers."""
    storage = Storage(str(root))
    audit = AuditLog(storage, MODEL, writer="t")
    rec = audit.record
    rec("controller-started", MODEL, action="start", outcome="ok", ts=T0)
    rec("detected-dead", "mlp/r1", evidence={"actor": "DEAD per Ray GCS"}, action="avoid", outcome="ok",
        ts=DEAD_AT, incident="inc-000001", detected_at=DEAD_AT - 0.4, recovered_at=None, cause_class="replica",
        cause="crash", confidence=0.9)
    rec("restart", "mlp/r1", evidence={"reason": "dead"}, action="restart", outcome="ok", ts=DEAD_AT + 1,
        incident="inc-000001")
    rec("recovered", "mlp/r1", evidence={"healthy_replicas": ["r2", "r3"]}, action="await-replacement",
        outcome="ok", ts=DEAD_AT + 9, incident="inc-000001", detected_at=DEAD_AT - 0.4, recovered_at=DEAD_AT + 9,
        time_to_detect_s=0.4)
    rec("data-drift", "f0", evidence={"psi": 0.61, "p_adjusted": 1e-6, "drift": "act"}, action="warn",
        outcome="opened", ts=DRIFT_AT, incident="d0001", detected_at=DRIFT_AT)
    rec("retrain-submitted", MODEL, evidence={"job_id": "raymedic-retrain-churn-r0001", "alerts": ["d0001"],
                                              "reason": "drift on f0"},
        action="retrain", outcome="submitted", ts=DRIFT_AT + 5, incident="r0001")
    rec("retrain-finished", MODEL, evidence={"result": "promoted", "alerts": ["d0001"]}, action="retrain",
        outcome="promoted", ts=DRIFT_AT + 60, incident="r0001")
    audit.flush()
    buckets, log = SeriesBuckets(5.0), SeriesLog(storage, MODEL, writer="t")
    rng = np.random.default_rng(3)
    for i in range(1200):
        now = T0 + i
        bad = DEAD_AT <= now < DEAD_AT + 10
        after = now >= DRIFT_AT
        right = [rng.random() < (0.7 if after else 0.9) for _ in range(3)]
        buckets.add_batch("g1", {
            "requests": {"answered": 20, "degraded": 4 if bad else 0, "failed": 1 if bad else 0},
            "latency": {"requests": 200, "p50_ms": 5 + rng.random(), "p99_ms": (90 if bad else 20) + 5 * rng.random()},
            "replicas": {"mlp/r1": {"ok": 10, "error": 0, "dead": 3 if bad else 0, "timeout": 0, "hedged": 0}},
            "labels": [{"labelled": {"y": 1, "p": {"ensemble": [0.2, 0.8] if r else [0.8, 0.2]}}} for r in right],
        }, now=now)
        buckets.sample(now=now, weights={"mlp": 0.1 if bad else 0.34, "lr": 0.45 if bad else 0.33,
                                         "tab": 0.45 if bad else 0.33},
                       window_accuracy=0.72 if after else 0.9, estimate=0.75 if after else 0.88)
        log.add(buckets.drain(now=now))
    log.add([drift_distribution(feature="f0", at=DRIFT_AT, reference=rng.normal(size=2000),
                                window=rng.normal(0.9, 1.0, size=600), evidence={"psi": 0.61})])
    log.flush(now=T0 + 1200)
    return storage


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-storage")
    _write_history(root)
    return root


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_incidents_are_the_audits_records_by_id_with_a_retrain_joining_the_alert_it_names(history):
    views = incidents_in(read_audit(Storage(str(history)), MODEL))
    assert [(v.id, v.status) for v in views] == [("inc-000001", "recovered"), ("d0001", "open")]
    dead, drift = views
    assert dead.detected_at == pytest.approx(DEAD_AT - 0.4) and dead.recovered_at == pytest.approx(DEAD_AT + 9)
    assert dead.diagnosis == {"cause_class": "replica", "cause": "crash", "confidence": 0.9, "time_to_detect_s": 0.4}
    assert [r["kind"] for r in drift.records] == ["data-drift", "retrain-submitted", "retrain-finished"]
    assert drift.outcome == "retrain-finished: retrain → promoted"


def test_incidents_the_diagnosis_grouped_are_one_under_their_cause():
    lost = {"cause_class": "infrastructure", "cause": "node_lost", "effects": ["inc-2", "inc-3"]}
    recs = [{"ts": 1.0, "kind": "data-node_pressure", "target": "n1", "incident": "d0009", "outcome": "opened"},
            {"ts": 2.0, "kind": "detected-dead", "target": "mlp/r1", "incident": "inc-2", **lost,
             "group_cause_incident": "d0009"},
            {"ts": 2.5, "kind": "detected-dead", "target": "lr/r4", "incident": "inc-3", **lost,
             "group_cause_incident": "d0009"},
            {"ts": 3.0, "kind": "detected-dead", "target": "lr/r9", "incident": "inc-4"}]
    views = incidents_in(recs)
    assert [(v.id, [r["incident"] for r in v.records]) for v in views] == [
        ("d0009", ["d0009", "inc-2", "inc-3"]), ("inc-4", ["inc-4"])]
    assert views[0].diagnosis["effects"] == ["inc-2", "inc-3"] and views[0].diagnosis["cause"] == "node_lost"
    # Without a cause incident, the group's first incident holds the others.
    alone = [{k: v for k, v in r.items() if k != "group_cause_incident"} for r in recs[1:3]]
    assert [v.id for v in incidents_in(alone)] == ["inc-2"]


def test_one_incidents_report_is_a_self_contained_page_and_markdown_with_its_plots(history, tmp_path):
    files = build_report(Storage(str(history)), MODEL, out_dir=tmp_path, incident="inc-000001", margin_s=120)
    assert files.html.parent == tmp_path / f"{MODEL}-inc-000001"
    assert sorted(p.name for p in files.images) == ["accuracy.png", "latency.png", "traffic.png", "weights.png"]
    page = files.html.read_text()
    assert page.count("src='data:image/png;base64,") == 4
    for img in files.images:  # the page embeds exactly the PNGs the Markdown links
        assert base64.b64encode(img.read_bytes()).decode() in page
        assert f"]({img.name})" in files.markdown.read_text()
        assert _png_size(img.read_bytes())[0] > 300
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing to fetch
    for step in ("detect", "act", "recovered"):
        assert f"class='phase {step}'" in page
    assert "crash" in page and "9.4 s" in page and "0.4 s" in page  # the diagnosis, times to recover and detect
    # The window is the incident ± the margin: the drift 400 s later is not in it.
    report = gather(Storage(str(history)), MODEL, incident="inc-000001", margin_s=120)
    assert min(r["ts"] for r in report.series) >= DEAD_AT - 0.4 - 120 - 5
    assert max(r["ts"] for r in report.series) <= DEAD_AT + 9 + 120


def test_a_periods_report_covers_every_incident_and_the_drifting_features_distribution(history, tmp_path):
    files = build_report(Storage(str(history)), MODEL, out_dir=tmp_path, since=T0 - 1)
    assert "drift-f0.png" in {p.name for p in files.images}
    md = files.markdown.read_text()
    assert "## inc-000001" in md and "## d0001" in md and "retrain-submitted" in md


def test_the_cli_prints_the_paths_and_refuses_unknown_ids_and_empty_periods_with_what_exists(history, tmp_path,
                                                                                              capsys):
    cfg = str(write_config(tmp_path / "raymedic.yaml", storage=history, port=8000, model=MODEL))
    out = tmp_path / "reports"
    assert cli.main(["report", "inc-000001", "--config", cfg, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / (MODEL + '-inc-000001') / 'report.html'}" in printed
    assert cli.main(["report", "inc-424242", "--config", cfg, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: no incident 'inc-424242' in the audit of {MODEL!r}; incidents there: "
                                       "inc-000001, d0001\n")
    assert cli.main(["report", "--since", "60s", "--config", cfg, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no incident of {MODEL!r} since ") and "give an earlier --since" in err
    assert cli.main(["report", "--config", cfg, "--model", "other", "--out", str(out)]) == 2
    assert "no audit records for model 'other'" in capsys.readouterr().err
    assert cli.main(["report", "inc-000001", "--since", "1h", "--config", cfg]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["report", "--since", "soon", "--config", cfg]) == 2
    assert "--since 'soon' is not a time" in capsys.readouterr().err


# ---- a real browser ---------------------------------------------------------------------------------

def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("RAYMEDIC_CI"):
        pytest.fail("chromium is not installed: .ci/run installs Debian's `chromium` package for this test")
    pytest.skip("chromium not installed (apt-get install chromium); CI runs this test")


class _DevTools:
    """The few DevTools protocol calls the test needs, over one browser websocket (flattened sessions)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout_s: float = 30.0) -> dict[str, Any]:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if reply.get("id") == msg_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            hit = next((e for e in self.events if e.get("method") == method), None)
            if hit is not None:
                return hit
            self.events.append(json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01))))


@pytest.fixture
def browser(tmp_path):
    # a test dependency only where a browser runs
    from websockets.sync.client import connect

    exe = _chromium()
    profile = tmp_path / "profile"
    proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        active = profile / "DevToolsActivePort"
        wait_for(lambda: active.exists() and len(active.read_text().split()) == 2, timeout_s=60,
                 what="chromium's DevTools port")
        port, path = active.read_text().split()
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30) as ws:
            yield _DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_the_report_renders_in_a_real_browser_every_image_loads_no_console_error_and_a_screenshot(
        history, tmp_path, browser):
    files = build_report(Storage(str(history)), MODEL, out_dir=tmp_path / "out", since=T0 - 1)
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", session=session)
    width, height = 1200, 900
    browser.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                        "mobile": False}, session=session)
    browser.events.clear()
    browser.call("Page.navigate", {"url": files.html.as_uri()}, session=session)
    browser.wait_event("Page.loadEventFired")
    images = browser.call("Runtime.evaluate", {
        "expression": "JSON.stringify([...document.images].map(i => [i.id, i.complete, i.naturalWidth]))",
        "returnByValue": True}, session=session)["result"]["value"]
    images = json.loads(images)
    assert len(images) == len(files.images) == 5
    assert all(complete and natural > 0 for _, complete, natural in images), images
    title = browser.call("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                         session=session)["result"]["value"]
    assert title.startswith(f"Incidents of {MODEL} since")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
    (tmp_path / "screenshot.png").write_bytes(shot)
    assert len(shot) > 10_000 and _png_size(shot) == (width, height)
    errors = [e for e in browser.events
              if (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert"))
              or e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
    assert errors == []
    fetched = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert fetched and all(u.startswith(("file://", "data:")) for u in fetched), fetched  # no network at view time
