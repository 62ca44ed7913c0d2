"""The command line without a cluster: its flags, its ``--help``, and each command against a fake gateway.

The gateway is a small stdlib HTTP server answering canned JSON, so what is
checked is the CLI's own part: which route it calls with which body and token,
what it prints, and the error text and exit code of everything a user can get
wrong. The real service is driven end to end in ``tests/test_cli.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from raymedic.app import cli
from raymedic.app.cli import _common
from raymedic.keys import ADMIN_TOKEN_ENV
from tests.conftest import REPO

COMMANDS = ("up", "down", "status", "pause", "resume", "approve", "reject", "mode", "retrain", "rollback", "promote",
            "trial", "chaos", "openapi", "audit", "report", "train", "search", "bench", "demo")

FLAGS = {
    "up": ["--chaos", "--config", "--cpus-per-node", "--dashboard-port", "--gpu-nodes", "--gpus-per-node", "--model",
           "--nodes", "--port", "--ray-port", "--storage-path", "--timeout"],
    "down": ["--config"],
    "status": ["--config", "--incidents", "--json", "--model", "--timeout", "--url"],
    **{c: ["--config", "--json", "--model", "--url"] for c in ("pause", "resume", "approve", "reject", "mode")},
    "retrain": ["--config", "--json", "--model", "--reason", "--url"],
    "rollback": ["--config", "--json", "--member", "--model", "--url"],
    "promote": ["--config", "--json", "--member", "--model", "--reason", "--url", "--version"],
    "trial": ["--config", "--json", "--member", "--mode", "--model", "--url", "--version"],
    "chaos": ["--config", "--delay-ms", "--for", "--json", "--kind", "--mb", "--mb-per-s", "--member", "--model",
              "--node", "--procs", "--replica", "--rps", "--url"],
    "openapi": ["--config", "--out"],
    "audit": ["--config", "--incident", "--json", "--kind", "--limit", "--model", "--since", "--target"],
    "report": ["--config", "--margin", "--model", "--out", "--since"],
    "train": ["--config", "--data", "--json", "--members", "--model", "--no-promote", "--storage-path", "--synthetic",
              "--target"],
    "search": ["--config", "--data", "--json", "--max-epochs", "--member", "--model", "--storage-path", "--synthetic",
               "--target", "--trials"],
    "bench": ["--config", "--control-rows", "--controller-kills", "--data", "--deadline", "--disk-fill-mb",
              "--fault-seconds", "--faults", "--json", "--kills", "--live", "--live-scenarios", "--members", "--memory-limit-mb", "--port", "--profile", "--rates", "--reference-rows", "--replicas", "--rows-per-s", "--rps", "--seconds",
              "--seed", "--seeds", "--slow-ms", "--spike-rps", "--target"],
    "demo": ["--config", "--port", "--requests"],
}
"""Every sub-command's flags: the command line is a contract users and scripts depend on (README)."""


def _options(parser: Any) -> list[str]:
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help")


def _subparsers() -> dict[str, Any]:
    (sub,) = [a for a in cli._parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(sub.choices)


# ---- the flags and --help ------------------------------------------------------------------------


def test_every_sub_command_keeps_its_flags():
    subs = _subparsers()
    assert tuple(subs) == COMMANDS
    assert {name: _options(p) for name, p in subs.items()} == FLAGS


def test_train_flags_are_the_same_for_the_cli_and_the_ray_job_entry_point():
    from train_jobs import search, train

    assert _options(train._parser()) == FLAGS["train"]
    assert _options(search._parser()) == FLAGS["search"]


def test_help_imports_neither_ray_nor_torch_nor_pyarrow():
    """`raymedic --help` and every sub-command's help must be instant: nothing heavy is imported."""
    probe = ("import runpy, sys\n"
             "sys.argv = ['raymedic', *sys.argv[1:], '--help']\n"
             "try:\n    runpy.run_module('raymedic', run_name='__main__')\n"
             "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
             "heavy = sorted(m for m in ('ray', 'torch', 'pyarrow', 'pandas', 'numpy', 'scipy', 'fastapi') "
             "if m in sys.modules)\n"
             "print(','.join(heavy), file=sys.stderr)\n")
    for command in ("", *COMMANDS):
        p = subprocess.run([sys.executable, "-c", probe, *command.split()], cwd=REPO, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr[-2000:]
        assert p.stdout.startswith("usage: raymedic")
        assert p.stderr.strip().splitlines()[-1:] in ([], [""]), f"`raymedic {command} --help` imported {p.stderr}"


# ---- a fake gateway --------------------------------------------------------------------------------


class FakeGateway:
    """Canned answers by (method, path); every request is kept: (method, path, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                gateway.requests.append((self.command, self.path, dict(self.headers),
                                         json.loads(raw) if raw else None))
                status, body = gateway.routes.get((self.command, self.path), (404, {"error": "no such route"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    gw = FakeGateway()
    yield gw
    gw.close()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    return "s3cret"


STATUS = {
    "model": "churn", "model_version": "logistic:v0002,mlp:v0001", "application": {"status": "RUNNING"},
    "members": [
        {"name": "logistic", "version": "v0002", "weight": 0.25, "state": "healthy", "fallback": True,
         "replicas": [{"id": "a1", "state": "RUNNING"}]},
        {"name": "mlp", "version": "v0001", "weight": 0.75, "state": "degraded",
         "replicas": [{"id": "b1", "state": "RUNNING"}, {"id": "b2", "state": "STARTING"}]},
    ],
    "gateway": {"state": "healthy", "replicas": [{"id": "g1", "state": "RUNNING"}]},
    "controller": {"state": "running", "pid": 4242, "step_ms_p50": 1.5, "mode": "approve",
                   "proposals": [{"incident": "inc-3", "target": "mlp/b2", "fault": "hang"}],
                   "retraining": {"deploying": True, "probation": {"versions": {"logistic": "v0002"}},
                                  "trial": {"record": "t1", "mode": "canary", "share": 0.1,
                                            "versions": {"mlp": "v0003", "logistic": "v0003"},
                                            "tally": {"mlp": {"labels": 50, "challenger_accuracy": 0.9,
                                                              "champion_accuracy": 0.85}},
                                            "verdicts": {"logistic": ["reject", "no paired labels in time"]}},
                                  "history": [{"record": "r1", "result": "gated", "gate": {
                                      "logistic": {"passed": True, "challenger_accuracy": 0.91,
                                                   "champion_accuracy": 0.88},
                                      "mlp": {"passed": False, "challenger_accuracy": 0.8, "champion_accuracy": 0.9,
                                              "reasons": ["accuracy fell"]}}}]}},
    "performance": {"labelled": {"ensemble": {"accuracy": 0.9, "labels": 120}}},
    "incidents": [
        {"id": "inc-1", "kind": "kill", "member": "mlp", "replica": "b0", "status": "recovered",
         "time_to_detect_s": 0.42, "time_to_recover_s": 6.25, "action": "restart", "action_outcome": "done"},
        {"id": "inc-2", "kind": "drift", "replica": None, "feature": "f0", "status": "open", "severity": "warn",
         "evidence": {"test": "ks", "p_adjusted": 0.001, "window_rows": 500}},
    ],
}

STATUS_TEXT = """\
model churn  (logistic:v0002,mlp:v0001)  application RUNNING
member               version     weight  state       replicas
logistic (fallback)  v0002        0.250  healthy     a1:RUNNING
mlp                  v0001        0.750  degraded    b1:RUNNING, b2:STARTING
gateway                                  healthy     g1:RUNNING
controller: running (pid 4242, step p50 1.5 ms)
approval mode: 1 proposal(s) waiting
  inc-3  restart mlp/b2 (hang)  → raymedic approve|reject inc-3
retraining: deploying new versions
probation: {'logistic': 'v0002'} (rolled back automatically on a live accuracy, error-rate or p99 regression)
trial t1 (canary, 10% of requests):
  mlp v0003: challenger 0.900 vs champion 0.850 on 50 paired labels
  logistic v0003: no paired labels yet → reject: no paired labels in time
  retrain r1: gated
    logistic: pass 0.910 vs champion 0.880
    mlp: reject 0.800 vs champion 0.900 — accuracy fell
performance: ensemble accuracy 0.900 on 120 labels
incidents: 2 (latest first)
  inc-2  drift          feature 'f0'  open      warn  {"test": "ks", "p_adjusted": 0.001}
  inc-1  kill   mlp/b0  recovered detect 0.42 s  recover 6.2 s  action restart: done
"""
"""What ``raymedic status`` printed for :data:`STATUS` before the CLI became a package (same bytes)."""


# ---- status ---------------------------------------------------------------------------------------


def test_status_prints_members_controller_retraining_and_incidents(gateway, capsys):
    gateway.routes[("GET", "/v1/status")] = (200, STATUS)
    assert cli.main(["status", "--url", gateway.url + "/"]) == 0
    assert capsys.readouterr().out == STATUS_TEXT


def test_status_json_is_the_gateways_answer(gateway, capsys):
    gateway.routes[("GET", "/v1/status")] = (200, STATUS)
    assert cli.main(["status", "--url", gateway.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_status_sends_the_admin_token_and_prints_a_redacted_view_without_one(gateway, capsys, monkeypatch):
    """The gateway shows process and node ids only to the token's holder: `raymedic status` sends it when
    it has one, and prints the redacted view (no pid, no node ids) when it has none."""
    from serve_apps.gateway.status import redact

    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    gateway.routes[("GET", "/v1/status")] = (200, STATUS)
    assert cli.main(["status", "--url", gateway.url]) == 0
    assert gateway.requests[-1][2]["Authorization"] == "Bearer s3cret" and "(pid 4242" in capsys.readouterr().out
    monkeypatch.delenv(ADMIN_TOKEN_ENV)  # and no token file under this test's RAYMEDIC_HOME
    nodes = {"nodes": [{"name": "worker-1", "node_id": "ab12cd34ef", "head": False, "cpu_share": 0.5,
                        "memory_used": 0.5, "memory_threshold": 0.95, "phase": "ok", "pressure": "ok"}]}
    anon = {**redact({**STATUS, "controller": {**STATUS["controller"], "nodes": nodes}}), "view": "redacted"}
    gateway.routes[("GET", "/v1/status")] = (200, anon)
    assert cli.main(["status", "--url", gateway.url]) == 0
    out = capsys.readouterr().out
    assert "Authorization" not in gateway.requests[-1][2] and "pid" not in out
    assert "node worker-1:" in out and "ab12cd34" not in out


def test_status_says_how_to_start_a_service_when_none_answers(capsys):
    assert cli.main(["status", "--url", "http://127.0.0.1:9", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no raymedic service answers at http://127.0.0.1:9 (")
    assert err.endswith("); start it with `raymedic up`\n") and "Traceback" not in err


def test_status_shows_what_the_gateway_answered_on_an_error(gateway, capsys):
    gateway.routes[("GET", "/v1/status")] = (503, {"error": "warming up"})
    assert cli.main(["status", "--url", gateway.url]) == 2
    assert capsys.readouterr().err == f"error: {gateway.url}/v1/status answered 503: {{'error': 'warming up'}}\n"


# ---- operator controls ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, route, body, reply, printed", [
    (["pause"], "pause", {}, {"paused": True}, "controller paused: it detects and records, but takes no action"),
    (["resume"], "resume", {}, {"paused": False}, "controller resumed"),
    (["approve", "inc-3"], "approve", {"incident": "inc-3"}, {}, "inc-3: approved; the restart runs on the next step"),
    (["reject", "inc-3"], "reject", {"incident": "inc-3"}, {},
     "inc-3: rejected; the replica is no longer avoided"),
    (["mode", "approve"], "mode", {"mode": "approve"}, {},
     "controller proposes restarts; approve them with `raymedic approve ID`"),
    (["retrain", "--reason", "new season"], "retrain", {"reason": "new season"}, {},
     "retrain requested: the controller submits a Ray job (see the dashboard's Jobs view), gates the challengers "
     "and promotes those that pass; follow it with `raymedic status`"),
    (["rollback", "--member", "mlp"], "rollback", {"members": ["mlp"]}, {"champion_now": {"mlp": "v0001"}},
     "rolling back: mlp → v0001 (every replica swaps in place; `raymedic status` shows the versions)"),
    (["trial", "--member", "mlp", "--mode", "shadow"], "trial",
     {"member": "mlp", "version": "challenger", "mode": "shadow"},
     {"trial": "t1", "member": "mlp", "version": "v0003", "share": 0.1, "mode": "shadow"},
     "trial t1: mlp v0003 now sees 10% of requests next to the champion (shadow); it is promoted if it holds up on "
     "labelled traffic, dropped otherwise. Follow it with `raymedic status`; `raymedic rollback` ends it"),
    (["chaos", "slow", "--member", "mlp", "--delay-ms", "500"], "chaos",
     {"fault": "slow", "member": "mlp", "replica": None, "delay_ms": 500.0},
     {"fault": "slow", "member": "mlp", "replica": "b1"},
     "injected slow into mlp/b1; watch it heal with `raymedic status`"),
    (["chaos", "gpu-fault", "--member", "mlp", "--kind", "ecc"], "chaos",
     {"fault": "gpu-fault", "member": "mlp", "replica": None, "delay_ms": None, "kind": "ecc"},
     {"fault": "gpu-fault", "member": "mlp", "replica": "b1", "kind": "ecc"},
     "injected gpu-fault (ecc) into mlp/b1; watch it heal with `raymedic status`"),
    (["chaos", "clear"], "chaos/clear", {}, {"cleared": ["b1", "b2"]}, "cleared faults on 2 replica(s)"),
    (["chaos", "cpu-hog", "--node", "worker-1", "--procs", "2", "--for", "30"], "chaos",
     {"fault": "cpu-hog", "node": "worker-1", "procs": 2, "for_s": 30.0},
     {"fault": "cpu-hog", "node": "worker-1", "procs": 2, "for_s": 30.0},
     "started 2 busy process(es) on node worker-1 for 30 s; watch the node with `raymedic status` "
     "(`raymedic chaos clear` stops them)"),
])
def test_operator_commands_call_their_admin_route_with_the_token(gateway, token, capsys, argv, route, body, reply,
                                                                 printed):
    gateway.routes[("POST", f"/v1/admin/{route}")] = (200, reply)
    assert cli.main([*argv, "--url", gateway.url]) == 0
    assert capsys.readouterr().out == printed + "\n"
    ((method, path, headers, sent),) = gateway.requests
    assert (method, path, sent) == ("POST", f"/v1/admin/{route}", body)
    assert headers["Authorization"] == f"Bearer {token}"
    assert cli.main([*argv, "--url", gateway.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == reply


def test_promote_sends_the_member_version_reason_and_who_asked(gateway, token, capsys):
    gateway.routes[("POST", "/v1/admin/promote")] = (200, {"promote": "started", "record": "op1-mlp", "member": "mlp",
                                                           "version": "v0002", "previous": "v0004"})
    assert cli.main(["promote", "--member", "mlp", "--version", "v0002", "--reason", "v0004 is worse on Mondays",
                     "--url", gateway.url]) == 0
    assert capsys.readouterr().out == ("promoting mlp: v0004 → v0002 (every replica swaps in place; `raymedic status` "
                                       "shows the versions, `raymedic rollback --member mlp` goes back)\n")
    ((method, path, headers, sent),) = gateway.requests
    assert (method, path, headers["Authorization"]) == ("POST", "/v1/admin/promote", f"Bearer {token}")
    by = sent.pop("by")
    assert sent == {"member": "mlp", "version": "v0002", "reason": "v0004 is worse on Mondays"} and "@" in by
    gateway.routes[("POST", "/v1/admin/promote")] = (404, {"error": "model 'm' member 'mlp' version v0009 does not "
                                                                   "exist; aliases: champion→v0004; versions: v0001"})
    assert cli.main(["promote", "--member", "mlp", "--version", "v0009", "--url", gateway.url]) == 2
    assert capsys.readouterr().err == ("error: model 'm' member 'mlp' version v0009 does not exist; aliases: "
                                       "champion→v0004; versions: v0001\n")


@pytest.mark.parametrize("argv", [["promote", "--member", "mlp"], ["promote", "--version", "v0002"]])
def test_promote_needs_a_member_and_a_version(gateway, token, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--url", gateway.url])
    assert exit_.value.code == 2 and "the following arguments are required" in capsys.readouterr().err
    assert gateway.requests == []


def test_the_admin_token_comes_from_the_file_up_wrote_when_the_variable_is_unset(gateway, monkeypatch, capsys):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    assert cli.main(["pause", "--url", gateway.url]) == 2
    assert capsys.readouterr().err == (f"error: no admin token: set {ADMIN_TOKEN_ENV} to the token the service was "
                                       "deployed with\n")
    note = _common.ensure_admin_token()  # what `raymedic up` does before it deploys
    assert note == (f"token in {_common.token_file()} (the CLI reads it; set {ADMIN_TOKEN_ENV} to choose your own)")
    assert _common.token_file().stat().st_mode & 0o777 == 0o600
    written = _common.token_file().read_text()
    monkeypatch.delenv(ADMIN_TOKEN_ENV)  # a later command, in a new process
    gateway.routes[("POST", "/v1/admin/pause")] = (200, {})
    assert cli.main(["pause", "--url", gateway.url]) == 0
    assert gateway.requests[-1][2]["Authorization"] == f"Bearer {written}"
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "mine")
    assert _common.ensure_admin_token() is None  # the user's own token wins and is not written anywhere


@pytest.mark.parametrize("argv, error", [
    (["chaos", "kill"], "--member is required: which ensemble member to hurt (see `raymedic status`)"),
    (["chaos", "slow", "--member", "mlp"], "slow needs --delay-ms N (e.g. --delay-ms 500)"),
    (["chaos", "cpu-hog"], "cpu-hog needs --node NODE: a node name or node id prefix (see `raymedic status`)"),
])
def test_chaos_refuses_an_incomplete_fault_before_calling_the_service(gateway, token, capsys, argv, error):
    assert cli.main([*argv, "--url", gateway.url]) == 2
    assert capsys.readouterr().err == f"error: {error}\n" and gateway.requests == []


def test_admin_errors_show_the_gateways_message_and_how_to_enable_chaos(gateway, token, capsys):
    gateway.routes[("POST", "/v1/admin/chaos")] = (404, {"error": "Not Found"})
    assert cli.main(["chaos", "kill", "--member", "mlp", "--url", gateway.url]) == 2
    assert capsys.readouterr().err == ("error: Not Found — chaos routes exist only when chaos is enabled: "
                                       "`raymedic up --chaos` or chaos.enabled: true in the config\n")
    gateway.routes[("POST", "/v1/admin/approve")] = (409, {"error": "no proposal inc-9: see `raymedic status`"})
    assert cli.main(["approve", "inc-9", "--url", gateway.url]) == 2
    assert capsys.readouterr().err == "error: no proposal inc-9: see `raymedic status`\n"
    gateway.routes[("POST", "/v1/admin/pause")] = (401, "unauthorized")
    assert cli.main(["pause", "--url", gateway.url]) == 2
    assert capsys.readouterr().err == "error: unauthorized\n"


def test_admin_commands_say_how_to_start_a_service_when_none_answers(token, capsys):
    assert cli.main(["resume", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no raymedic service answers at http://127.0.0.1:9 (")
    assert err.endswith("); start it with `raymedic up`\n")


def test_the_service_url_comes_from_the_run_file_before_the_config(gateway, token, capsys):
    from cluster.runstate import RunState, write_run_state

    write_run_state(RunState(ray_address="127.0.0.1:1", dashboard_url="-", http_url=gateway.url,
                             started_cluster=False, config_path="-", model="churn", storage_path="-"))
    gateway.routes[("POST", "/v1/admin/resume")] = (200, {})
    assert cli.main(["resume"]) == 0
    assert capsys.readouterr().out == "controller resumed\n"


# ---- down, audit and openapi without a cluster ----------------------------------------------------


def test_down_with_nothing_started_is_not_an_error(capsys):
    assert cli.main(["down"]) == 0
    assert capsys.readouterr().out == "[raymedic] nothing to stop: no service started by `raymedic up` was found\n"


def test_audit_reads_the_trail_from_storage_without_a_service(tmp_path, capsys):
    from controllers.audit import AuditLog
    from raymedic.storage import Storage

    log = AuditLog(Storage(str(tmp_path)), "churn", writer="test")
    log.record("restart", "mlp/b1", action="restart", outcome="done", evidence={"probe": "timeout"})
    log.flush()
    assert cli.main(["audit", "--json", "--config", _config(tmp_path)]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (record["kind"], record["target"], record["action"], record["outcome"]) == ("restart", "mlp/b1", "restart",
                                                                                       "done")
    assert cli.main(["audit", "--config", _config(tmp_path), "--model", "other"]) == 0
    assert capsys.readouterr().out == "no audit records yet\n"


def test_audit_filters_by_kind_target_incident_and_time(tmp_path, capsys):
    import time

    from controllers.audit import AuditLog
    from raymedic.storage import Storage

    log = AuditLog(Storage(str(tmp_path)), "churn", writer="test")
    now = time.time()
    log.record("detected-hang", "mlp/b1", incident="i1", ts=now - 7200)
    log.record("restart", "mlp/b1", action="restart", outcome="done", incident="i1", ts=now - 7100)
    for i in range(5):
        log.record("weights", "churn", action="publish", outcome="ok", ts=now - 600 + i)
    log.record("restart-failed", "lr/c2", incident="i2", ts=now - 60)
    log.flush()
    cfg = _config(tmp_path)

    def kinds(*flags: str) -> list[str]:
        assert cli.main(["audit", "--json", "--config", cfg, *flags]) == 0
        return [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()]

    assert kinds("--kind", "restart") == ["restart", "restart-failed"]
    assert kinds("--kind", "detected", "--kind", "weights", "--limit", "2") == ["weights", "weights"]
    assert kinds("--target", "mlp") == ["detected-hang", "restart"]
    assert kinds("--incident", "i2") == ["restart-failed"]
    assert kinds("--since", "1h") == ["weights"] * 5 + ["restart-failed"]
    assert kinds("--since", "900") == ["weights"] * 5 + ["restart-failed"]  # seconds back, as before
    assert cli.main(["audit", "--config", cfg, "--kind", "promote"]) == 0
    assert capsys.readouterr().out == ("no audit records match (8 in the trail; kinds there: detected-hang, restart, "
                                       "restart-failed, weights)\n")


@pytest.mark.parametrize(("flags", "says"), [
    (["--since", "last tuesday"], "error: --since 'last tuesday' is not a time: give a number of seconds (3600), "
                                  "a duration (90s, 30m, 2h, 1d, 1w) or an ISO time"),
    (["--limit", "0"], "error: --limit 0 shows nothing: give 1 or more (default 200)\n"),
    (["--kind", "restart,,promote"], "error: --kind 'restart,,promote' has an empty item"),
])
def test_audit_refuses_bad_filters_with_the_fix(tmp_path, capsys, flags, says):
    assert cli.main(["audit", "--config", _config(tmp_path), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(says) and "Traceback" not in captured.err and captured.out == ""


def _config(tmp_path) -> str:
    from tests.conftest import write_config

    return str(write_config(tmp_path / "raymedic.yaml", storage=tmp_path, port=8000, model="churn"))


def test_openapi_refuses_an_unwritable_path_with_the_fix(tmp_path, capsys):
    assert cli.main(["openapi", "--out", str(tmp_path / "missing" / "openapi.json")]) == 2
    assert capsys.readouterr().err == (f"error: cannot write {str(tmp_path / 'missing' / 'openapi.json')!r}: No such "
                                       "file or directory; pass --out with a writable path\n")


def test_up_on_an_empty_registry_says_to_train_your_own_module_on_your_table(tmp_path):
    """An empty registry gets the built-in synthetic model; a user's module that does not fit it is
    refused with the contract's reason and the ``raymedic train`` to run instead."""
    from raymedic.app import service
    from raymedic.config import parse_config
    from raymedic.errors import ConfigError

    cfg = parse_config({"model": "digits", "storage_path": str(tmp_path / "s"), "gateway": {"min_members": 1},
                        "members": [{"name": "cnn", "module": "my_models.digits:SmallCNN"},
                                    {"name": "logistic", "kind": "logistic", "fallback": True}]})
    with pytest.raises(ConfigError) as err:
        service.ensure_trained(cfg, print)  # the contract check fails before any cluster is needed
    assert "module 'my_models.digits:SmallCNN' is not importable here" in str(err.value)
    assert "members ['cnn'] run your own modules" in str(err.value)
    assert "raymedic train --config CONFIG --data TABLE --target COLUMN --model digits" in str(err.value)
