"""A persistent single-node local cluster for ``raymedic up``: ``ray start --head`` in a session of its own.

The service must outlive the command that started it, so ``up`` starts a head with
``ray start`` rather than an embedded cluster; :func:`stop_head` stops exactly the
processes of that head (never another Ray cluster of the user's on the machine).
"""

from __future__ import annotations

import subprocess

from cluster.connect import LOCAL_LOGICAL_CPUS, use_token_auth
from cluster.sessions import ray_bin, run_ray_start, stop_sessions

__all__ = ["start_head", "stop_head", "ray_alive"]



def start_head(*, port: int, dashboard_port: int, num_cpus: int = LOCAL_LOGICAL_CPUS,
               num_gpus: int | None = None, timeout_s: float = 120.0) -> tuple[str, int]:
    """Start a persistent local head node with ``ray start`` in a session of its own.

    Returns its GCS address and the session id that names its processes, so
    :func:`stop_head` stops exactly this cluster and never another one of the user's.
    """
    cmd = [
        ray_bin(), "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}",
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
    if session_id is None:
        subprocess.run([ray_bin(), "stop", "--force"], capture_output=True, text=True, timeout=60)
        return
    stop_sessions([session_id], timeout_s=timeout_s)
    if address:  # as `ray stop` does: forget it as "the" local cluster, or ray.init() would try to join it
        # Ray imported only here: it reads RAY_AUTH_MODE once, at import, and `raymedic up` sets it later.
        from ray._common.utils import reset_ray_address
        from ray._private.utils import read_ray_address

        current = read_ray_address()
        if current and current.rsplit(":", 1)[-1] == address.rsplit(":", 1)[-1]:
            reset_ray_address()


def ray_alive(address: str) -> bool:
    """Whether a Ray cluster answers at ``address`` (``ray status``; a run file may name one that is
    gone, and joining a dead address hangs in connection retries)."""
    use_token_auth()
    try:
        return subprocess.run([ray_bin(), "status", f"--address={address}"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
