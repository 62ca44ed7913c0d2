"""The shape of a local multi-node cluster, and where members go on it (pure: no processes).

A plan names every node's ports, resources, labels and temp dir before anything starts,
so a request that cannot work (``up --nodes 1``, a GPU member with no GPU worker) is
refused before a process runs.

Placement (why replicas survive a node loss): members get Serve's
``max_replicas_per_node`` (see :func:`spread_over_nodes`) — a hard cap, where Serve's
default SPREAD is only a preference — sized so that after any one node is lost the
remaining nodes a member may use (GPU workers for a GPU member) still have room for
every replica.
"""

from __future__ import annotations

import math
import os
import random
import socket
import tempfile
from dataclasses import dataclass

from raymedic.errors import ConfigError, RaymedicError

__all__ = ["NODE_LABEL", "NODE_TYPE_LABEL", "DEFAULT_CPUS_PER_NODE", "WORKER_PORTS_PER_NODE", "OBJECT_STORE_BYTES", "NodePlan", "ClusterPlan", "free_ports", "free_port_block", "check_shape", "plan_cluster", "start_command", "spread_over_nodes"]



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
        """Whether this node is the head (it starts first; the others join its GCS)."""
        return self.node_type == "head"


@dataclass(frozen=True)
class ClusterPlan:
    """A whole local cluster: what :func:`start_cluster` runs, decided before anything starts."""

    root: str
    nodes: tuple[NodePlan, ...]

    @property
    def head(self) -> NodePlan:
        """The head node's plan."""
        return self.nodes[0]

    @property
    def address(self) -> str:
        """The GCS address workers and drivers join."""
        return f"127.0.0.1:{self.head.ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        """The Ray dashboard's URL (where Jobs and Serve views are)."""
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
    ceil((replicas + standby) / (eligible - 1))`` (``max_replicas + standby`` for an autoscaled member, so
    Serve has room for every replica it may add): spread enough that a node holds few replicas of
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
        total = member.max_serve_replicas
        return member.model_copy(update={"max_replicas_per_node": math.ceil(total / (eligible - 1))})

    models = {name: entry.model_copy(update={"members": [cap(m) for m in entry.members]}) if entry.members else entry
              for name, entry in config.models.items()}  # every model served: members of its own too
    return config.model_copy(update={"members": [cap(m) for m in config.members], "models": models,
                                     "gateway": config.gateway.model_copy(update={"on_head": True})})
