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

import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from cluster.plan import ClusterPlan, NodePlan, start_command
from cluster.sessions import (
    ray_bin,
    run_ray_start,
    session_pids,
    signal_session,
    stop_sessions,
)
from raymedic.errors import ConfigError, RaymedicError

__all__ = ["StartedNode", "LocalCluster", "start_cluster", "wait_for_nodes", "node_pids", "node_id", "kill_node", "stop_cluster", "describe"]


Progress = Callable[[str], None]


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
        """The node called ``name`` (``head``, ``worker-1``, ...): what a test kills or inspects."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(f"no node named {name!r}; nodes are {[n.name for n in self.nodes]}")

    def to_dict(self) -> dict:
        """The cluster as JSON-able data, for the run file (``down`` in a later process stops it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LocalCluster":
        """The cluster a run file recorded."""
        return cls(address=d["address"], dashboard_url=d["dashboard_url"], root=d["root"],
                   nodes=tuple(StartedNode(**n) for n in d.get("nodes", ())))


def _start_node(plan: ClusterPlan, node: NodePlan, *, timeout_s: float) -> StartedNode:
    """Run ``ray start`` for one node in a new session; the session id names its processes."""
    os.makedirs(node.temp_dir, exist_ok=True)
    session = run_ray_start(start_command(plan, node, ray_bin()), what=f"node {node.name}",
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


def node_pids(node: StartedNode) -> list[int]:
    """Live PIDs of one node: raylet, agents, workers (and on the head GCS and dashboard)."""
    return session_pids(node.session_id)


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
    return signal_session(node.session_id, sig)


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
