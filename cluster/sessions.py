"""``ray start`` in a session of its own, and stopping exactly that session's processes.

Several Ray clusters may share a machine (other developers, CI), and ``ray stop``
stops all of them. Each ``ray start`` raymedic runs gets a new session
(``setsid``): Ray gives worker processes their own process group but they keep the
session, so the session id is the one handle that covers a node's raylet, agents
*and* workers. The single head of ``raymedic up`` and the nodes of ``up --nodes``
are both started and stopped through here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from cluster.connect import ensure_auth_token, use_serve_fast_path, use_token_auth
from raymedic.errors import ConfigError, RaymedicError

__all__ = ["ray_bin", "start_env", "run_ray_start", "stop_sessions", "session_pids", "signal_session"]



def ray_bin() -> str:
    """The ``ray`` command of this interpreter's environment (the one whose Ray the cluster must run),
    else the first on PATH.

    Raises:
        ConfigError: no ``ray`` command at all; the message says how to install it.
    """
    exe = Path(sys.executable).with_name("ray")
    if exe.exists():
        return str(exe)
    found = shutil.which("ray")
    if not found:
        raise ConfigError("the `ray` command is not on PATH: install raymedic's dependencies (pip install -e .)")
    return found


def start_env() -> dict[str, str]:
    """The environment a ``ray start`` runs in: token auth (with a token) and Serve's fast path on (Ray reads them
    when its processes start), no ``RAY_ADDRESS`` (a head would try to join it), this interpreter first on
    PATH (job entrypoints say ``python -m ...``).
    """
    use_token_auth()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        ensure_auth_token()
    use_serve_fast_path()
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # `ray start --head` would otherwise try to join it
    # Job entrypoints say `python -m train_jobs...`: this interpreter first on the cluster's PATH.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run_ray_start(cmd: list[str], *, what: str, logs: str, timeout_s: float) -> int:
    """Run a ``ray start`` command in a new session and return the session id that names its processes.

    On a timeout or a failure every process it left is killed and the error says where the logs are.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=start_env(),
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        signal_session(proc.pid, signal.SIGKILL)
        raise RaymedicError(f"`ray start` for {what} did not finish within {timeout_s:.0f} s; {logs}") from None
    if proc.returncode != 0:
        signal_session(proc.pid, signal.SIGKILL)
        tail = "\n  ".join(out.strip().splitlines()[-6:])
        raise RaymedicError(f"`ray start` for {what} failed (exit {proc.returncode}):\n  {tail}\n{logs}")
    return proc.pid


def stop_sessions(session_ids: Sequence[int], *, timeout_s: float = 10.0) -> int:
    """SIGTERM every process of these sessions (in order), SIGKILL what is left after ``timeout_s``;
    returns how many processes had to be killed."""
    for sid in session_ids:
        signal_session(sid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(session_pids(sid) for sid in session_ids):
        time.sleep(0.2)
    return sum(len(signal_session(sid, signal.SIGKILL)) for sid in session_ids)


def _all_pids() -> list[int]:
    if os.path.isdir("/proc"):
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    out = subprocess.run(["ps", "-A", "-o", "pid="], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _proc_info(pid: int) -> tuple[int, bool, bytes] | None:
    """(parent PID, is a Ray process, cmdline) of a live process of this user; None otherwise."""
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return (0, True, b"")  # no /proc (macOS): the session id and os.kill's own permission check remain
    try:
        if proc.stat().st_uid != os.getuid():
            return None
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None  # a zombie holds nothing; its parent reaps it
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return None
    return int(fields[1]), b"ray" in cmdline, cmdline


def session_pids(session_id: int) -> list[int]:
    """Live processes of one node: same session id, this user's, and Ray's.

    Linux keeps a session id from being reused while any process holds it, so a
    match is ours as long as the node runs; the Ray check guards the one other case,
    a recycled id after the whole node is gone. Helpers a Ray process spawned
    without "ray" in their command line (multiprocessing's resource tracker) count
    through their parent.
    """
    if session_id <= 1 or session_id == os.getsid(0):
        return []  # never our own session: that would be this process and its shell
    found: dict[int, tuple[int, bool, bytes]] = {}
    for pid in _all_pids():
        try:
            if os.getsid(pid) != session_id:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        info = _proc_info(pid)
        if info is not None:
            found[pid] = info
    ours = {pid for pid, (_, is_ray, _) in found.items() if is_ray}
    grew = True
    while grew:
        extra = {pid for pid, (ppid, _, _) in found.items() if pid not in ours and ppid in ours}
        ours |= extra
        grew = bool(extra)
    return sorted(ours)


def signal_session(session_id: int, sig: int) -> list[int]:
    """Send ``sig`` to every live process of one session (one node); the PIDs it reached."""
    hit = []
    for pid in session_pids(session_id):
        try:
            os.kill(pid, sig)
            hit.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return hit
