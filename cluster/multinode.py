"""A real multi-node Ray cluster on one machine, for development: ``raymedic up --nodes N``.

Node loss, replica spreading and GPU placement only show up with more than one
raylet, and a cloud cluster is a slow way to find that out. This module starts a
head (``ray start --head``) and ``N - 1`` workers (``ray start --address``), each
a separate raylet with its own logical CPUs, its own temp dir and node labels, so
Ray schedules across them exactly as it would across machines.

Several Ray clusters may share the machine (other developers, CI), so everything
here is built to never touch a process it did not start:

- every port (GCS, dashboard, Ray client, dashboard agent, metrics export, worker
  port range) is taken from free ports, never Ray's defaults;
- each ``ray start`` runs in a new session (``setsid``). Ray gives worker processes
  their own process group but they keep the session, so the session id is the one
  handle that covers a node's raylet, agents *and* workers. Stopping or killing a
  node means signalling the processes of that session, and only those
  (``ray stop`` would stop every cluster on the machine);
- state lives in a short unique temp dir (Unix socket paths are limited to about
  107 bytes, so pytest's long temp paths will not do).

Placement (why replicas survive a node loss): members get Serve's
``max_replicas_per_node`` (see :func:`spread_over_nodes`) — a hard cap, where Serve's
default SPREAD is only a preference — sized so that after any one node is lost the
remaining nodes a member may use (GPU workers for a GPU member) still have room for
every replica. The Serve proxy runs on the
head only (every node's proxy would bind the same host and port here), and the
gateway joins it there, so losing a worker never drops a request in flight
through a gateway; member calls lost with the node are retried by the gateway.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from raymedic.errors import ConfigError, RaymedicError

__all__ = [
    "NODE_LABEL",
    "NODE_TYPE_LABEL",
    "DEFAULT_CPUS_PER_NODE",
    "NodePlan",
    "ClusterPlan",
    "StartedNode",
    "LocalCluster",
    "check_shape",
    "plan_cluster",
    "start_command",
    "start_cluster",
    "wait_for_nodes",
    "node_pids",
    "node_id",
    "kill_node",
    "stop_cluster",
    "spread_over_nodes",
    "describe",
]

NODE_LABEL = "raymedic.dev/node"
"""Node label with the node's name (``head``, ``worker-1``, ...): ``label_selector`` targets it, and
``ray.nodes()`` / ``list_nodes()`` show it, so a test can find a node's id by name."""

NODE_TYPE_LABEL = "raymedic.dev/node-type"
"""``head`` | ``cpu-worker`` | ``gpu-worker``: the node types of ``ray-cluster.yaml`` and the KubeRay manifest."""

DEFAULT_CPUS_PER_NODE = 4
"""Logical CPUs per node: fractional-CPU replicas of the whole ensemble, the controller and a
Ray Train worker fit on any two nodes, so one node may be lost."""

WORKER_PORTS_PER_NODE = 100
"""Ports in each node's worker range (one per worker process and driver). A 4-CPU node runs a
few dozen; Ray's default range (10002-19999) is shared with every other cluster on the machine."""

OBJECT_STORE_BYTES = 256 * 1024**2
"""Per node. Ray's default (30 % of RAM per raylet) would reserve most of /dev/shm three times over
for a service that passes kilobytes."""

_PORT_RANGE = (20000, 32000)
# Above Ray's default worker ports (10002-19999), below the kernel's ephemeral range
# (32768+), which every outgoing connection draws from; the same band as the tests' free_port().

Progress = Callable[[str], None]


# ---- plan (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    """One node to start: its name, resources, temp dir and ports."""

    name: str
    node_type: str
    num_cpus: int
    num_gpus: int
    temp_dir: str
    ports: dict[str, int]

    @property
    def is_head(self) -> bool:
        return self.node_type == "head"


@dataclass(frozen=True)
class ClusterPlan:
    """A whole local cluster: what :func:`start_cluster` runs, decided before anything starts."""

    root: str
    nodes: tuple[NodePlan, ...]

    @property
    def head(self) -> NodePlan:
        return self.nodes[0]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.head.ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.head.ports['dashboard']}"


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    # Ray binds the machine's address too; a port taken there only would fail later.
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, avoid: set[int] = frozenset()) -> list[int]:
    """``count`` distinct ports that are free now, from the band between Ray's and the kernel's ranges."""
    chosen: list[int] = []
    for _ in range(count * 200):
        port = random.randint(*_PORT_RANGE)
        if port not in avoid and port not in chosen and _port_is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RaymedicError(f"could not find {count} free ports in {_PORT_RANGE[0]}-{_PORT_RANGE[1]}: "
                        "free some ports or stop unused local clusters")


def free_port_block(size: int, *, avoid: set[int] = frozenset()) -> int:
    """First port of ``size`` consecutive ports that are free now (a node's worker port range)."""
    for _ in range(400):
        start = random.randint(_PORT_RANGE[0], _PORT_RANGE[1] - size)
        block = range(start, start + size)
        if not avoid.intersection(block) and all(_port_is_free(p) for p in block):
            return start
    raise RaymedicError(f"could not find {size} consecutive free ports in {_PORT_RANGE[0]}-{_PORT_RANGE[1]}")


def _short_root() -> str:
    # /tmp, not tempfile.gettempdir(): on macOS the latter is a long /var/folders path and Ray's
    # socket paths under it would pass the ~107-byte limit of a Unix socket name.
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="raymedic-", dir=base)


def check_shape(nodes: int, *, cpus_per_node: int = DEFAULT_CPUS_PER_NODE, gpu_nodes: int = 0,
                gpus_per_node: int = 1) -> None:
    """Refuse a cluster shape that cannot work, before anything starts, saying the fix."""
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1 (got {nodes}): 1 is a head alone, "
                          "e.g. --nodes 3 starts a head and two workers")
    if nodes > 16:
        raise ConfigError(f"--nodes {nodes} is more raylets than one machine should run: use 16 or fewer, "
                          "or a real cluster (ray-cluster.yaml, cluster/kuberay/rayservice.yaml)")
    if cpus_per_node < 1:
        raise ConfigError(f"--cpus-per-node must be at least 1 (got {cpus_per_node}); the default is "
                          f"{DEFAULT_CPUS_PER_NODE} logical CPUs")
    if not 0 <= gpu_nodes <= nodes - 1:
        raise ConfigError(f"--gpu-nodes ({gpu_nodes}) must be between 0 and the number of workers "
                          f"({nodes - 1}): GPU nodes are workers, the head never has GPUs")
    if gpus_per_node < 1:
        raise ConfigError(f"--gpus-per-node must be at least 1 (got {gpus_per_node})")


def plan_cluster(nodes: int, *, cpus_per_node: int = DEFAULT_CPUS_PER_NODE, gpu_nodes: int = 0,
                 gpus_per_node: int = 1, root: str | None = None, gcs_port: int | None = None,
                 dashboard_port: int | None = None) -> ClusterPlan:
    """Decide names, resources, temp dirs and free ports for a head and ``nodes - 1`` workers.

    The head declares no GPU (as in ``ray-cluster.yaml``), so members with ``num_gpus > 0``
    can only land on the ``gpu_nodes`` GPU workers; the rest are CPU workers. GPUs here are
    logical: on a machine without one, a member asking for a GPU is placed on a GPU
    worker and runs on the CPU (the member falls back when CUDA is unavailable); on
    a machine with GPUs, Ray numbers each node's GPUs from 0, so GPU workers share
    the first ``gpus_per_node`` devices.
    """
    check_shape(nodes, cpus_per_node=cpus_per_node, gpu_nodes=gpu_nodes, gpus_per_node=gpus_per_node)
    named = [p for p in (gcs_port, dashboard_port) if p]
    taken: set[int] = set(named)
    head_ports = free_ports(5 - len(named), avoid=taken)
    gcs_port = gcs_port or head_ports.pop()
    dashboard_port = dashboard_port or head_ports.pop()
    taken |= {gcs_port, dashboard_port, *head_ports}
    shapes: list[tuple[str, str, dict[str, int]]] = []
    for i in range(nodes):
        name = "head" if i == 0 else f"worker-{i}"
        node_type = "head" if i == 0 else ("gpu-worker" if i > nodes - 1 - gpu_nodes else "cpu-worker")
        if i == 0:
            ports = {"gcs": gcs_port, "dashboard": dashboard_port, "client": head_ports[0],
                     "agent_listen": head_ports[1], "metrics": head_ports[2]}
        else:
            agent, metrics = free_ports(2, avoid=taken)
            ports = {"agent_listen": agent, "metrics": metrics}
        taken |= set(ports.values())
        first = free_port_block(WORKER_PORTS_PER_NODE, avoid=taken)
        ports |= {"min_worker": first, "max_worker": first + WORKER_PORTS_PER_NODE - 1}
        taken |= set(range(first, first + WORKER_PORTS_PER_NODE))
        shapes.append((name, node_type, ports))
    root = root or _short_root()  # only once the ports are found: nothing to clean up before
    return ClusterPlan(root=root, nodes=tuple(
        NodePlan(name=name, node_type=node_type, num_cpus=cpus_per_node,
                 num_gpus=gpus_per_node if node_type == "gpu-worker" else 0,
                 temp_dir=os.path.join(root, name), ports=ports)
        for name, node_type, ports in shapes))


def start_command(plan: ClusterPlan, node: NodePlan, ray_bin: str = "ray") -> list[str]:
    """The ``ray start`` command line for one node (every port and resource explicit)."""
    p = node.ports
    cmd = [ray_bin, "start"]
    if node.is_head:
        cmd += ["--head", f"--port={p['gcs']}", f"--dashboard-port={p['dashboard']}",
                "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--ray-client-server-port={p['client']}"]
    else:
        cmd.append(f"--address={plan.address}")
    cmd += [
        f"--num-cpus={node.num_cpus}", f"--num-gpus={node.num_gpus}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={node.temp_dir}",
        f"--dashboard-agent-listen-port={p['agent_listen']}", f"--metrics-export-port={p['metrics']}",
        f"--min-worker-port={p['min_worker']}", f"--max-worker-port={p['max_worker']}",
        f"--labels={NODE_LABEL}={node.name},{NODE_TYPE_LABEL}={node.node_type}",
        "--disable-usage-stats",
    ]
    return cmd


def spread_over_nodes(config, nodes: int, *, gpu_nodes: int = 0):
    """``config`` laid out for a local cluster: members spread, gateway on the head.

    A member may run on ``eligible`` nodes: the GPU workers if it asks for a GPU, else
    all of them. Without its own cap it gets ``max_replicas_per_node =
    ceil((replicas + standby) / (eligible - 1))``: spread enough that a node holds few replicas of
    a member, loose enough that the survivors of one node's loss can host every
    replica again. Serve enforces the cap strictly (its default SPREAD is only a
    preference), and a replica with nowhere to go stays pending — as would every
    replica past the first if the cap counted nodes the member cannot use. With one
    eligible node there is nothing to spread (and no room after losing it). The
    gateway goes to the head, next to the only HTTP proxy, so no request in flight
    is lost with a worker (``gateway.on_head``).
    """
    if nodes < 2:
        return config

    def cap(member):
        eligible = gpu_nodes if member.num_gpus > 0 else nodes
        if member.max_replicas_per_node is not None or eligible < 2:
            return member
        total = member.replicas + member.standby
        return member.model_copy(update={"max_replicas_per_node": math.ceil(total / (eligible - 1))})

    return config.model_copy(update={"members": [cap(m) for m in config.members],
                                     "gateway": config.gateway.model_copy(update={"on_head": True})})


# ---- processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class StartedNode:
    """A node that runs: its session id is the handle for all its processes."""

    name: str
    node_type: str
    session_id: int
    temp_dir: str
    metrics_port: int


@dataclass(frozen=True)
class LocalCluster:
    """What :func:`start_cluster` started; stored in the run file so ``raymedic down`` stops exactly it."""

    address: str
    dashboard_url: str
    root: str
    nodes: tuple[StartedNode, ...] = field(default_factory=tuple)

    def node(self, name: str) -> StartedNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(f"no node named {name!r}; nodes are {[n.name for n in self.nodes]}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LocalCluster":
        return cls(address=d["address"], dashboard_url=d["dashboard_url"], root=d["root"],
                   nodes=tuple(StartedNode(**n) for n in d.get("nodes", ())))


def _ray_bin() -> str:
    from cluster.local import _ray_bin as find

    return find()


def _start_env() -> dict[str, str]:
    from cluster.local import use_serve_fast_path, use_token_auth

    use_token_auth()
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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_start_env(),
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        _signal_session(proc.pid, signal.SIGKILL)
        raise RaymedicError(f"`ray start` for {what} did not finish within {timeout_s:.0f} s; {logs}") from None
    if proc.returncode != 0:
        _signal_session(proc.pid, signal.SIGKILL)
        tail = "\n  ".join(out.strip().splitlines()[-6:])
        raise RaymedicError(f"`ray start` for {what} failed (exit {proc.returncode}):\n  {tail}\n{logs}")
    return proc.pid


def stop_sessions(session_ids: Sequence[int], *, timeout_s: float = 10.0) -> int:
    """SIGTERM every process of these sessions (in order), SIGKILL what is left after ``timeout_s``;
    returns how many processes had to be killed."""
    for sid in session_ids:
        _signal_session(sid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_session_pids(sid) for sid in session_ids):
        time.sleep(0.2)
    return sum(len(_signal_session(sid, signal.SIGKILL)) for sid in session_ids)


def _start_node(plan: ClusterPlan, node: NodePlan, *, timeout_s: float) -> StartedNode:
    """Run ``ray start`` for one node in a new session; the session id names its processes."""
    os.makedirs(node.temp_dir, exist_ok=True)
    session = run_ray_start(start_command(plan, node, _ray_bin()), what=f"node {node.name}",
                            logs=f"its logs are in {node.temp_dir}", timeout_s=timeout_s)
    return StartedNode(name=node.name, node_type=node.node_type, session_id=session,
                       temp_dir=node.temp_dir, metrics_port=node.ports["metrics"])


def start_cluster(plan: ClusterPlan, *, timeout_s: float = 180.0, progress: Progress | None = None) -> LocalCluster:
    """Start every node of ``plan``, head first; on any failure stop what was started and raise.

    Nodes start one after another: ``ray start --address`` needs the head's GCS, and on
    a small machine starting raylets in parallel only makes each slower.
    """
    say = progress or (lambda _m: None)
    started: list[StartedNode] = []

    def so_far() -> LocalCluster:
        return LocalCluster(address=plan.address, dashboard_url=plan.dashboard_url, root=plan.root,
                            nodes=tuple(started))

    try:
        for node in plan.nodes:
            say(f"  ray start: {node.name} ({node.num_cpus} CPUs"
                + (f", {node.num_gpus} GPUs" if node.num_gpus else "") + ")")
            started.append(_start_node(plan, node, timeout_s=timeout_s))
    except BaseException:
        stop_cluster(so_far(), remove_dir=False)  # keep the logs the error message points at
        raise
    return so_far()


def wait_for_nodes(expected: int, *, timeout_s: float = 60.0) -> list[dict]:
    """Block until the connected cluster has ``expected`` alive nodes (``ray.init`` done); returns them."""
    import ray

    deadline = time.monotonic() + timeout_s
    alive: list[dict] = []
    while time.monotonic() < deadline:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) >= expected:
            return alive
        time.sleep(0.25)
    raise RaymedicError(f"only {len(alive)} of {expected} Ray nodes registered within {timeout_s:.0f} s; "
                        "see the raylet logs under the cluster's temp dir")


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


def _session_pids(session_id: int) -> list[int]:
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


def _signal_session(session_id: int, sig: int) -> list[int]:
    hit = []
    for pid in _session_pids(session_id):
        try:
            os.kill(pid, sig)
            hit.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return hit


def node_pids(node: StartedNode) -> list[int]:
    """Live PIDs of one node: raylet, agents, workers (and on the head GCS and dashboard)."""
    return _session_pids(node.session_id)


def node_id(node: StartedNode) -> str | None:
    """The Ray node id of ``node``, read from its raylet's command line (None when it is not running).

    Serve's and the state API's views name nodes by id; this ties an id to a node this
    module started, without a driver or the dashboard.
    """
    for pid in node_pids(node):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/raylet"):
            for a in args:
                if a.startswith(b"--node_id="):
                    return a.split(b"=", 1)[1].decode()
    return None


def kill_node(node: StartedNode, sig: int = signal.SIGKILL) -> list[int]:
    """Signal every process of ``node`` (a node loss, for tests and drills); returns the PIDs hit."""
    return _signal_session(node.session_id, sig)


def stop_cluster(cluster: LocalCluster, *, timeout_s: float = 10.0, remove_dir: bool = True) -> int:
    """Stop exactly the processes of ``cluster``: SIGTERM, then SIGKILL what is left after ``timeout_s``.

    Workers go first, the head last, so raylets do not spend the grace period trying
    to reach a GCS that is already gone. Raylets stop their workers within a few
    seconds; the GCS and the autoscaler monitor often ignore SIGTERM (measured: still
    running after 40 s) and hold nothing worth a longer wait, hence the short grace.
    Returns how many processes had to be killed.
    """
    ordered = [n for n in cluster.nodes if n.node_type != "head"] + [n for n in cluster.nodes
                                                                     if n.node_type == "head"]
    killed = stop_sessions([n.session_id for n in ordered], timeout_s=timeout_s)
    if remove_dir and cluster.root and os.path.basename(cluster.root).startswith("raymedic-"):
        shutil.rmtree(cluster.root, ignore_errors=True)
    return killed


def describe(cluster: LocalCluster) -> str:
    """One line per node, for ``raymedic up``'s summary."""
    return "\n".join(f"    {n.name:<10} {n.node_type:<11} metrics :{n.metrics_port}  logs {n.temp_dir}"
                     for n in cluster.nodes)
