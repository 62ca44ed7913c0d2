"""Shared test helpers: deadlines instead of sleeps, free ports, per-test configs."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], *, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may raise while things start
            last = exc
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def write_package(root: Path, name: str, source: str) -> Path:
    """A package ``name`` under ``root`` (an empty ``__init__`` and ``tab.py`` holding ``source``,
    dedented): a user's own code in a plain directory, not installed. Returns the package's directory."""
    import textwrap

    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tab.py").write_text(textwrap.dedent(source))
    return pkg


def forget_package(name: str) -> None:
    """Drop package ``name`` and its submodules from ``sys.modules``: the next import reads the files again."""
    import sys

    for mod in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[mod]


def free_port() -> int:
    """A port that is free now and unlikely to be taken before the test binds it.

    The kernel's ``bind(0)`` hands out ports from the ephemeral range, the same
    range every outgoing connection of Ray's many processes draws from, so such a
    port can be grabbed between now and when Serve binds it. Ray's own workers
    use 10002-19999; the ephemeral range starts at 32768. Between them is ours.
    """
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def write_config(path: Path, *, storage: Path, port: int, runtime_env: dict[str, Any] | None = None,
                 **overrides: Any) -> Path:
    """A small, fast test config (few epochs, two replicas per member, chaos on); ``runtime_env`` is the
    application's (a sibling of ``args``, as in any Serve config)."""
    args: dict[str, Any] = {
        "model": "synthetic",
        "storage_path": str(storage),
        "members": [
            {"name": "logistic", "kind": "logistic", "fallback": True, "replicas": 2, "num_cpus": 0.2},
            {"name": "mlp", "kind": "mlp", "replicas": 2, "num_cpus": 0.2},
            {"name": "tabresnet", "kind": "tabresnet", "replicas": 2, "num_cpus": 0.2},
        ],
        "gateway": {"replicas": 1, "num_cpus": 0.2, "max_batch_size": 64},
        "training": {"epochs": 12, "synthetic_rows": 3000},
        "chaos": {"enabled": True},
    }
    args.update(overrides)
    doc = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "raymedic", "route_prefix": "/", "import_path": "serve_apps.app:build_app",
                          "args": args}],
    }
    if runtime_env is not None:
        doc["applications"][0]["runtime_env"] = runtime_env
    path.write_text(yaml.safe_dump(doc))
    return path


ONE_REPLICA_MEMBERS = [
    {"name": "logistic", "kind": "logistic", "fallback": True, "replicas": 1, "num_cpus": 0.2},
    {"name": "mlp", "kind": "mlp", "replicas": 1, "num_cpus": 0.2},
    {"name": "tabresnet", "kind": "tabresnet", "replicas": 1, "num_cpus": 0.2},
]
"""The tests' ensemble (trained as everywhere else, so a trained registry is reused) with one replica each:
for a module that heals no member replica."""


_TRAINED: dict[str, Path] = {}
"""Registries trained in this test session, by (model, members, training) config: training the
built-in ensemble with Ray Train costs about a minute per module, and its result is the same."""
TRAINED_PARTS = ("registry", "samples")  # what training writes under storage_path; nothing of a service's


def _trained_key(cfg: Any) -> str:
    """What training depends on: the model, each member's architecture and knobs, the training config
    (not how many replicas serve it)."""
    doc = cfg.model_dump(mode="json")
    members = [{k: m.get(k) for k in ("name", "kind", "module", "hyperparameters")} for m in doc["members"]]
    return json.dumps({"model": doc["model"], "members": members, "training": doc["training"]}, sort_keys=True)


def copy_trained(cfg: Any, storage: Path) -> bool:
    """Put the registry an earlier test trained for the same config under ``storage``; False if none."""
    src = _TRAINED.get(_trained_key(cfg))
    if src is None:
        return False
    shutil.copytree(src, storage, dirs_exist_ok=True)
    return True


def remember_trained(cfg: Any, storage: Path, keep: Path) -> None:
    """Keep a copy of what training wrote under ``storage`` (at ``keep``) for later tests."""
    key = _trained_key(cfg)
    if key in _TRAINED or not (storage / "registry").is_dir():
        return
    for part in TRAINED_PARTS:
        if (storage / part).is_dir():
            shutil.copytree(storage / part, keep / part)
    _TRAINED[key] = keep


class PredictLoad:
    """Client threads sending single-row predictions (``rows`` in turn) with a client deadline: what a
    fault must not fail. ``ok`` counts answers; ``failures`` says what went wrong with the others."""

    def __init__(self, url: str, rows: list[Any], *, threads: int = 2, deadline_s: float = 5.0,
                 pause_s: float = 0.02) -> None:
        import threading

        self.url, self.rows, self.deadline_s, self.pause_s = url, rows, deadline_s, pause_s
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        from raymedic.app.http import request_json

        while not self._stop.is_set():
            row = self.rows[i % len(self.rows)]
            i += 1
            t0 = time.monotonic()
            try:
                r = request_json("POST", self.url, {"instances": [row]}, timeout_s=self.deadline_s)
                if r.status != 200:
                    self.failures.append(f"HTTP {r.status}: {r.body}")
                elif time.monotonic() - t0 > self.deadline_s:
                    self.failures.append("past the client deadline")
                else:
                    self.ok += 1
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(self.pause_s)

    def __enter__(self) -> "PredictLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


@contextlib.contextmanager
def admin_token_env(token: str) -> Iterator[None]:
    """``RAYMEDIC_ADMIN_TOKEN`` set to ``token`` (the app builder ships its hash to the gateway), restored after."""
    import os

    from raymedic.keys import ADMIN_TOKEN_ENV

    old = os.environ.get(ADMIN_TOKEN_ENV)
    os.environ[ADMIN_TOKEN_ENV] = token
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ADMIN_TOKEN_ENV, None)
        else:
            os.environ[ADMIN_TOKEN_ENV] = old


def self_signed(folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, PEM files generated under ``folder/tls`` (no download);
    returns their paths relative to ``folder`` (as a config next to them names them)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raymedic-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "tls").mkdir(exist_ok=True)
    (folder / "tls" / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls" / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return "tls/cert.pem", "tls/key.pem"


@contextlib.contextmanager
def local_service(tmp: Path, *, tls: bool = False, **overrides: Any) -> Iterator[tuple[str, Any]]:
    """An embedded Ray cluster with the service trained, deployed and answering: (url, config).

    One per test module: starting Ray, training and deploying dominate a test's cost.
    Everything started here is shut down on exit. A ``runtime_env`` override is the application's, and
    becomes the embedded cluster's job runtime_env as ``raymedic up`` makes it. ``tls``: served over HTTPS
    with a certificate made here (``tmp/tls/cert.pem``, its own CA), by Serve's Python proxy as
    ``raymedic up`` runs it for an HTTPS config; the URL is then ``https://``.
    """
    import os

    import ray
    from ray import serve

    from cluster.connect import start_embedded, user_code_importable
    from raymedic.app import service
    from raymedic.config import load_config

    port = free_port()
    path = write_config(tmp / "raymedic.yaml", storage=tmp / "storage", port=port, **overrides)
    # Only what an HTTPS service changes is put back afterwards: the embedded start sets Serve's fast-path
    # variables for the rest of the session (removing them made a later `ray start` run without HAProxy).
    saved = {k: os.environ.get(k) for k in ("RAY_SERVE_ENABLE_HA_PROXY", "SSL_CERT_FILE")} if tls else {}
    if tls:
        cert, key = self_signed(tmp)
        doc = yaml.safe_load(path.read_text())
        doc["http_options"].update(ssl_certfile=cert, ssl_keyfile=key)
        path.write_text(yaml.safe_dump(doc))
        # what `raymedic up` does for an HTTPS config; the clients here (urllib) trust the test's own CA
        os.environ.update(RAY_SERVE_ENABLE_HA_PROXY="0", SSL_CERT_FILE=str(tmp / cert))
    sf = load_config(path)
    cfg = sf.config.resolved()
    copy_trained(cfg, tmp / "storage")  # the same members trained the same way earlier: a copy, not a retrain
    start_embedded(log_to_driver=False, runtime_env=sf.runtime_env)
    try:
        with user_code_importable(sf.runtime_env):
            service.ensure_trained(cfg, print)
        remember_trained(cfg, tmp / "storage", tmp / "trained")
        service.deploy(cfg, host="127.0.0.1", port=port, progress=print, tls=sf.http_tls)
        url = f"http{'s' if tls else ''}://127.0.0.1:{port}"
        service.wait_ready(url, cfg.model, timeout_s=240, progress=print, example=service.golden_example(cfg))
        yield url, cfg
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test sees its own RAYMEDIC_HOME so no run file leaks between tests or from the user."""
    monkeypatch.setenv("RAYMEDIC_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
