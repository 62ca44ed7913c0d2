"""Fault injection for drills, demos, tests and benchmarks.

Faults look like the real ones from the outside:

- ``kill``: SIGKILL to the replica's worker process, sent on the replica's own
  node (as an OOM killer or a crashed host would), not a polite Ray call;
- ``hang``: the replica's inference path blocks while its process, event loop and
  Serve health checks stay fine (the "half-alive" replica);
- ``slow``: every inference waits ``delay_ms`` more (gray failure);
- ``wrong``: answers stay well-formed with HTTP 200 but the class probabilities
  are rotated, so predictions are plausible and wrong;
- ``error``: every call of the replica raises, while its process and Serve's
  health checks stay fine (a CUDA error, a state broken by a bad reload);
- ``disk-fill`` (not a replica's fault: the service's disk's): a file of ``mb`` MB of
  real bytes under ``storage_path/chaos/disk-fill/``, bounded by a cap and by the free
  space less a margin, removed by ``chaos clear``;
- ``gpu-fault``: the replica's inference raises what PyTorch raises for a failing GPU
  (``kind``: ``oom`` → ``torch.cuda.OutOfMemoryError``, ``device-lost`` / ``ecc`` → a
  ``RuntimeError("CUDA error: ...")``) and its GPU health reading reports the fault as NVML
  would (:mod:`serve_apps.gpu`): a fault double, so the GPU healing path runs on a machine
  without a GPU;
- ``leak``: the replica allocates and holds ``mb_per_s`` MB of real (touched,
  resident) memory per second, the way a cache that never evicts grows, until it
  is cleared, restarted, or reaches its cap (``cap_mb``, at most
  :data:`LEAK_CAP_MB`), or its node's free memory falls under
  :data:`LEAK_NODE_FLOOR`: a drill must never eat the machine.

- ``cpu-hog`` (a node's fault, not a replica's): ``procs`` busy processes on one node, under
  an actor pinned there (so they are that node's own processes, as a noisy neighbour's job
  would be), each exiting by itself after ``for_s`` seconds; ``chaos clear`` stops them at once.

A fault lives in the replica's memory only: a replacement replica starts clean,
which is exactly what a restart is supposed to buy.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import ray

from raymedic.errors import InjectedFault, InvalidRequest
from raymedic.keys import CHAOS_FAULTS
from raymedic.storage import Storage
from serve_apps.gpu import check_kind, raise_gpu_fault

__all__ = ["CPU_HOG_MAX_S", "DISK_FILL_DIR", "DISK_FILL_MAX_MB", "FAULTS", "LEAK_CAP_MB", "LEAK_DEFAULT_MB_PER_S",
           "LEAK_NODE_FLOOR", "CpuHog", "ReplicaFault", "clear_cpu_hogs", "clear_disk_fill", "cpu_hog", "disk_fill",
           "disk_fill_limit_mb", "resolve_node", "sigkill_replica"]

FAULTS = CHAOS_FAULTS
IN_REPLICA = tuple(f for f in FAULTS if f != "kill")  # kill is a signal, not a state of the replica

LEAK_DEFAULT_MB_PER_S = 5.0
"""The default leak rate: 300 MB (a replica's limit a little above its usual memory) in a minute."""
LEAK_MAX_MB_PER_S = 1024.0
LEAK_CAP_MB = 2048.0
"""The most a leak ever holds, whatever its cap asks: the drill must not take the machine down."""
LEAK_NODE_FLOOR = 0.10
"""A leak stops growing while its node has less than this share of its memory available."""
LEAK_TICK_S = 0.1
"""A leak allocates every this many seconds (smooth growth, as a real one would look)."""


@dataclass
class ReplicaFault:
    """The fault state of one replica; ``None`` mode means healthy."""

    mode: str | None = None
    delay_s: float = 0.0
    gpu_kind: str | None = None
    """The ``gpu-fault`` kind while that fault is on (what :func:`serve_apps.gpu.gpu_reading` reports)."""

    def __post_init__(self) -> None:
        self._released = asyncio.Event()
        self._held: list[bytes] = []  # what a leak holds
        self._leak: asyncio.Task | None = None

    def set(self, mode: str | None, delay_ms: float | None = None, *, mb_per_s: float | None = None,
            cap_mb: float | None = None, gpu_kind: str | None = None) -> dict[str, Any]:
        """Set (or clear, with None) the fault; a new mode first releases calls a previous hang held and
        frees what a leak held, so clearing frees the replica at once.

        Raises:
            InvalidRequest: a mode that cannot live in a replica (``kill`` is a signal), ``slow`` without a
                delay, or a leak rate out of range.
        """
        if mode is not None and mode not in IN_REPLICA:
            raise InvalidRequest(f"fault {mode!r} cannot be set inside a replica; use one of {list(IN_REPLICA)}")
        if mode == "slow" and (delay_ms is None or not 0 < delay_ms <= 60_000):
            raise InvalidRequest("slow needs --delay-ms between 1 and 60000")
        rate = LEAK_DEFAULT_MB_PER_S if mb_per_s is None else float(mb_per_s)
        if mode == "leak" and not 0 < rate <= LEAK_MAX_MB_PER_S:
            raise InvalidRequest(f"leak needs --mb-per-s between 0 and {LEAK_MAX_MB_PER_S:g}, got {mb_per_s!r}")
        kind = check_kind(gpu_kind) if mode == "gpu-fault" else None
        self._released.set()  # wake anything a previous hang held
        self._released = asyncio.Event()
        self._stop_leak()
        self.mode = mode
        self.delay_s = (delay_ms or 0) / 1000.0
        self.gpu_kind = kind
        if mode == "gpu-fault":
            return {"mode": mode, "kind": kind}
        if mode == "leak":
            cap = min(LEAK_CAP_MB, float(cap_mb)) if cap_mb else LEAK_CAP_MB
            self._leak = asyncio.get_running_loop().create_task(self._grow(rate, cap))
            return {"mode": mode, "mb_per_s": rate, "cap_mb": cap}
        return {"mode": mode, "delay_ms": delay_ms}

    @property
    def held_mb(self) -> float:
        """What a leak holds now (MB)."""
        return sum(len(b) for b in self._held) / 1e6

    def _stop_leak(self) -> None:
        if self._leak is not None:
            self._leak.cancel()
            self._leak = None
        self._held = []  # freed: the next garbage collection returns it

    async def _grow(self, mb_per_s: float, cap_mb: float) -> None:
        """Allocate ``mb_per_s`` MB a second of touched memory (bytes filled with 1s: resident, unlike
        zeroed pages the kernel maps lazily), up to ``cap_mb`` and while the node has room."""
        # lazy: psutil (inside Ray) only in a leaking replica
        from serve_apps.memory import memory_reading

        chunk = int(mb_per_s * 1e6 * LEAK_TICK_S)
        while True:
            mem = memory_reading()
            room = mem["node_available_bytes"] > LEAK_NODE_FLOOR * mem["node_total_bytes"]
            if room and self.held_mb + chunk / 1e6 <= cap_mb:
                self._held.append(b"\x01" * chunk)
            await asyncio.sleep(LEAK_TICK_S)

    async def before_inference(self) -> None:
        """Hold a call (``hang``: until cleared), delay it (``slow``): the faults a deadline must catch; or
        fail it (``error``).

        Raises:
            InjectedFault: with the ``error`` fault, on every call.
            torch.cuda.OutOfMemoryError, RuntimeError: with ``gpu-fault``, what PyTorch raises for its kind.
        """
        if self.mode == "error":
            raise InjectedFault("injected fault: this replica's inference path raises (raymedic chaos error)")
        if self.mode == "gpu-fault":
            raise_gpu_fault(str(self.gpu_kind))
        if self.mode == "hang":
            await self._released.wait()
        elif self.mode == "slow":
            await asyncio.sleep(self.delay_s)

    def after_inference(self, probabilities: np.ndarray) -> np.ndarray:
        """Corrupt an answer (``wrong``: classes rotated) while keeping it well-formed: the fault only golden
        probes and labels can see.
        """
        if self.mode == "wrong":
            return np.roll(probabilities, 1, axis=1)
        return probabilities


def _kill(pid: int) -> dict[str, Any]:
    os.kill(pid, signal.SIGKILL)
    return {"pid": pid, "signal": "SIGKILL"}


def sigkill_replica(pid: int, node_id: str | None, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """SIGKILL ``pid`` on ``node_id`` via a zero-CPU task pinned to that node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_kill)
    if node_id:
        task = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    return ray.get(task.remote(pid), timeout=timeout_s)


# ---- disk-fill: a file of real bytes under storage_path ----------------------------------------------------

DISK_FILL_DIR = "chaos/disk-fill"
"""Where ``disk-fill`` writes (below ``storage_path``): one clearly named folder, removed by ``chaos clear``."""
DISK_FILL_MAX_MB = 4096
"""The most one ``disk-fill`` writes, whatever it asks: a drill must not take the machine's disk."""
DISK_FILL_MARGIN_MB = 512
"""A fill must leave at least this much free on the filesystem (and :data:`DISK_FILL_MARGIN_FRACTION` of it)."""
DISK_FILL_MARGIN_FRACTION = 0.02
_CHUNK = 8 << 20


def disk_fill_limit_mb(free_bytes: float, total_bytes: float) -> float:
    """The largest fill (MB, 10^6 bytes) allowed now: the cap, and the free space less the margin.

    >>> disk_fill_limit_mb(10e9, 100e9)
    4096
    >>> disk_fill_limit_mb(1e9, 100e9)
    0.0
    """
    margin = max(DISK_FILL_MARGIN_MB * 1e6, DISK_FILL_MARGIN_FRACTION * total_bytes)
    return min(DISK_FILL_MAX_MB, max(0.0, (free_bytes - margin) / 1e6))


def disk_fill(storage: Storage, mb: float) -> dict[str, Any]:
    """Write ``mb`` MB of real (random, incompressible) bytes into a new file under :data:`DISK_FILL_DIR`.

    Raises:
        InvalidRequest: ``storage_path`` is not a local directory, ``mb`` is not a positive number, or it is
            over the cap or the free space less the margin (the message gives the largest allowed).
    """
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb > 0:
        raise InvalidRequest(f"mb must be a positive number of megabytes, got {mb!r}")
    root = storage.local_path("")
    if root is None:
        raise InvalidRequest(f"disk-fill needs a local storage_path; {storage.uri!r} is remote (an object store "
                             "does not fill up)")
    usage = psutil.disk_usage(str(root))
    limit = disk_fill_limit_mb(usage.free, usage.total)
    if mb > limit:
        raise InvalidRequest(f"disk-fill of {mb:g} MB refused: at most {limit:.0f} MB now (cap {DISK_FILL_MAX_MB} "
                             f"MB; {usage.free / 1e6:.0f} MB free, of which {DISK_FILL_MARGIN_MB} MB or "
                             f"{DISK_FILL_MARGIN_FRACTION:.0%} of the disk stays free); ask for less")
    folder = root / DISK_FILL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fill-{int(time.time() * 1000)}-{secrets.token_hex(3)}.bin"
    block = os.urandom(_CHUNK)
    left = int(mb * 1e6)
    with open(path, "wb") as f:
        while left > 0:
            n = min(left, _CHUNK)
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    return {"path": str(path), "mb": mb, "free_mb_after": round(psutil.disk_usage(str(root)).free / 1e6, 1)}


def clear_disk_fill(storage: Storage) -> list[str]:
    """Remove every ``disk-fill`` file (the folder too); the paths removed."""
    root = storage.local_path("")
    folder = root / DISK_FILL_DIR if root is not None else None
    if folder is None or not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.glob("fill-*.bin")):
        p.unlink(missing_ok=True)
        removed.append(str(p))
    shutil.rmtree(folder, ignore_errors=True)
    return removed


# ---- cpu-hog: busy processes on one node ----------------------------------------------------------------

CPU_HOG_NAMESPACE = "raymedic"
CPU_HOG_PREFIX = "raymedic-cpu-hog-"
CPU_HOG_DEFAULT_S = 120.0
"""How long a hog burns by default; every busy process also exits on its own at its bound."""
CPU_HOG_MAX_S = 600.0
CPU_HOG_MAX_PROCS = 16
NODE_LABEL = "raymedic.dev/node"  # cluster.plan.NODE_LABEL: the name `raymedic up --nodes` gives a node

_BUSY = "import time\nend = time.time() + {s}\nx = 0\nwhile time.time() < end:\n    x = (x + 1) % 1000003\n"


class CpuHog:
    """``procs`` busy processes under one actor pinned to a node (so they are that node's processes: children
    of a worker its raylet forked), each exiting by itself after ``for_s`` whatever happens to the actor."""

    def __init__(self, procs: int, for_s: float) -> None:
        import subprocess  # lazy: only a hog starts processes (stdlib)
        import sys

        self.until = time.time() + for_s
        self._procs = [subprocess.Popen([sys.executable, "-c", _BUSY.format(s=float(for_s))],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) for _ in range(procs)]

    def info(self) -> dict[str, Any]:
        return {"pids": [p.pid for p in self._procs], "running": sum(p.poll() is None for p in self._procs),
                "until": self.until}

    def stop(self) -> int:
        """Kill the busy processes now; how many were still running."""
        alive = [p for p in self._procs if p.poll() is None]
        for p in alive:
            p.kill()
        for p in alive:
            p.wait(timeout=5)
        return len(alive)


def resolve_node(query: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The alive node ``query`` names: its ``raymedic.dev/node`` label (``worker-1``), or a unique prefix of
    its id (``ray.nodes()`` entries).

    >>> ns = [{"NodeID": "ab12", "Alive": True, "Labels": {NODE_LABEL: "head"}},
    ...       {"NodeID": "cd34", "Alive": True, "Labels": {NODE_LABEL: "worker-1"}}]
    >>> resolve_node("worker-1", ns)["NodeID"], resolve_node("ab", ns)["NodeID"]
    ('cd34', 'ab12')

    Raises:
        InvalidRequest: (404) no alive node, or several, match.
    """
    alive = [n for n in nodes if n.get("Alive")]
    named = [n for n in alive if (n.get("Labels") or {}).get(NODE_LABEL) == query]
    hits = named or [n for n in alive if query and str(n.get("NodeID", "")).startswith(query)]
    if len(hits) != 1:
        known = [(n.get("Labels") or {}).get(NODE_LABEL) or str(n.get("NodeID", ""))[:8] for n in alive]
        raise InvalidRequest(f"node {query!r} matches {len(hits)} alive nodes; name one of {known} "
                             "(a name or a node id prefix, as `raymedic status` shows them)", status=404)
    return hits[0]


def cpu_hog(node: str, procs: Any = None, for_s: Any = None) -> dict[str, Any]:
    """Start ``procs`` busy processes on ``node`` for ``for_s`` seconds (blocking; see :class:`CpuHog`).

    The default ``procs`` is the node's logical CPUs (what it may use, taken whole), at most
    :data:`CPU_HOG_MAX_PROCS`; a hog already on that node is replaced.

    Raises:
        InvalidRequest: A bad node, count or duration (422/404, naming what to send).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # lazy: as sigkill_replica's

    if not isinstance(node, str) or not node:
        raise InvalidRequest('cpu-hog needs "node": a node name or id prefix (see `raymedic status`)')
    n = resolve_node(node, ray.nodes())
    if procs is None:
        procs = int(max(1, min(CPU_HOG_MAX_PROCS, (n.get("Resources") or {}).get("CPU", 1))))
    if isinstance(procs, bool) or not isinstance(procs, int) or not 1 <= procs <= CPU_HOG_MAX_PROCS:
        raise InvalidRequest(f"procs must be a whole number from 1 to {CPU_HOG_MAX_PROCS}, got {procs!r}")
    for_s = CPU_HOG_DEFAULT_S if for_s is None else for_s
    if isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or not 0 < for_s <= CPU_HOG_MAX_S:
        raise InvalidRequest(f"for_s must be a number of seconds in (0, {CPU_HOG_MAX_S:g}], got {for_s!r}")
    nid = str(n["NodeID"])
    name = f"{CPU_HOG_PREFIX}{nid[:16]}"
    _stop_hog(name)
    hog = ray.remote(CpuHog).options(
        num_cpus=0, name=name, namespace=CPU_HOG_NAMESPACE, lifetime="detached", max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote(procs, float(for_s))
    info = ray.get(hog.info.remote(), timeout=30)
    label = (n.get("Labels") or {}).get(NODE_LABEL) or nid[:8]
    return {"node": label, "node_id": nid, "procs": procs, "for_s": float(for_s), **info}


def _stop_hog(name: str) -> int:
    try:
        hog = ray.get_actor(name, namespace=CPU_HOG_NAMESPACE)
    except ValueError:
        return 0
    try:
        stopped = int(ray.get(hog.stop.remote(), timeout=10))
    except Exception:
        stopped = 0  # its processes exit at their bound anyway
    ray.kill(hog)
    return stopped


def clear_cpu_hogs() -> list[str]:
    """Stop every CPU hog (blocking); the names of those stopped. A process not connected to a cluster
    has none to stop (and must not start a local Ray instance by asking: ``get_runtime_context`` would)."""
    from ray.util.state import list_actors  # lazy: the state API only for clearing

    if not ray.is_initialized():
        return []
    try:
        hogs = list_actors(address=ray.get_runtime_context().gcs_address,
                           filters=[("state", "=", "ALIVE"), ("class_name", "=", "CpuHog")],
                           raise_on_missing_output=False, timeout=10)
    except Exception:
        return []
    out = []
    for a in hogs:
        if a.name and a.name.startswith(CPU_HOG_PREFIX):
            _stop_hog(a.name)
            out.append(a.name)
    return out
