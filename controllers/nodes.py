"""The node keeper: per-node memory and CPU readings, and work moved off a node under pressure.

Every ``controller.node_period_s`` (its own task on the controller's event loop, as the
disk keeper's, so a slow read never delays replica healing):

- **observe**: one :class:`NodeAgent` per alive node (a ``num_cpus=0`` actor pinned
  to it with a hard ``NodeAffinitySchedulingStrategy``, created on first need, owned by
  the controller) reads, with ``psutil`` as the replicas' own memory reading does, its
  host's memory, the memory-monitor threshold its raylet runs with, and the CPU time
  of its own node's processes: its raylet (the agent's parent: Ray forks every worker
  from its raylet) and every process under it. Ray's exported node metrics are per
  host (a local multi-node cluster's nodes would all read the same) and need a
  Prometheus scrape; the process tree is the node's own. Ray's node table adds each
  node's logical and free CPUs, labels and whether Ray drains it;
- **decide**: :class:`controllers.policies.node.NodeWatch` (pure);
- **act**: the node's replicas are avoided first (:meth:`NodeKeeper.evicting`, read by
  every model's healing policy: the gateways route to peers and standbys elsewhere),
  then the node is drained through Ray's GCS (``DrainNode``, reason PREEMPTION, no
  deadline — what ``ray drain-node`` sends). Serve's deployment scheduler treats a
  DRAINING node as gone for placement: it starts each replica's replacement on another
  node and stops the old one only once the new one runs (``migrate_replicas_on_draining_nodes``);
- **record**: each step audited (``detected-node-pressure``, ``evict``, ``drain-node``,
  ``node-drained``, ``node-pressure-no-room``, ``node-pressure-cleared``), a
  ``node_pressure`` incident opened and cleared through the data-alert path, gauges,
  and the status's ``nodes``.

Paused (``raymedic pause``) it observes and alerts but moves nothing; in approval mode a
drain is proposed (``node-NNNNNN`` in status ``proposals``) and runs once approved.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any, Callable, Mapping

import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from controllers.audit import AuditLog
from controllers.checkpoint import Checkpoint
from controllers.monitors.data import AlertKind, DataAlerts
from controllers.outcome import Outcome, error_text
from controllers.periodic import Periodic
from controllers.policies.node import (DrainNode, NodeInfo, NodeReading, NodeSeries, NodeSettings, NodeWatch,
                                       ReplicaPlacement, cpu_shares, effective_memory_threshold)
from controllers.policies.replica import ControlMode, HealingPolicy
from controllers.recorder import Recorder
from raymedic import metrics
from raymedic.config import RaymedicConfig
from raymedic.keys import APP_NAME, GATEWAY_DEPLOYMENT
from raymedic.logs import get_logger
from serve_apps.serve_state import read_app_view

__all__ = ["NODE_KINDS", "NodeAgent", "NodeKeeper", "NodeObserver", "drain_node", "node_name", "read_process_tree"]

log = get_logger(__name__)

NODE_KINDS = frozenset({AlertKind.NODE_PRESSURE.value})
"""The alert kinds the node keeper opens and clears."""
LOST_KEPT = 20
"""Lost nodes remembered (for the diagnosis of their replicas' incidents)."""
AGENT_PREFIX = "raymedic-node-agent-"
AGENT_NAMESPACE = "raymedic"
READ_TIMEOUT_S = 5.0
NODE_LABEL = "raymedic.dev/node"  # cluster.plan.NODE_LABEL (``raymedic up --nodes`` names its nodes so)


def node_name(node: Mapping[str, Any]) -> str:
    """What people call a node (``ray.nodes()`` entry): its ``raymedic.dev/node`` label, else its id's first 8."""
    return str((node.get("Labels") or {}).get(NODE_LABEL) or str(node.get("NodeID", ""))[:8])


def read_process_tree(root: psutil.Process) -> dict[int, tuple[float, float]]:
    """pid → (create time, CPU seconds) of ``root`` and every process under it (gone ones skipped)."""
    out: dict[int, tuple[float, float]] = {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                out[p.pid] = (p.create_time(), t.user + t.system)
        except psutil.Error:
            continue
    return out


class NodeAgent:
    """Reads its own node (runs as a tiny actor pinned there; see the module)."""

    def __init__(self) -> None:
        self._raylet = psutil.Process().parent()  # Ray forks every worker from its node's raylet
        self._prev: dict[int, tuple[float, float]] = {}
        self._prev_at: float | None = None
        psutil.cpu_percent(None)  # the first call starts psutil's interval

    def read(self) -> dict[str, Any]:
        """This node's reading now (plain data)."""
        now = time.time()
        tree = read_process_tree(self._raylet) if self._raylet is not None else {}
        own = None
        if self._prev_at is not None and now > self._prev_at:
            used = 0.0
            for pid, (created, cpu) in tree.items():
                old = self._prev.get(pid)
                if old is not None and abs(old[0] - created) < 1e-3:
                    used += max(0.0, cpu - old[1])
                elif created >= self._prev_at - 1.0:  # started since the last reading: all its CPU is new
                    used += cpu
            own = used / (now - self._prev_at)
        self._prev, self._prev_at = tree, now
        vm = psutil.virtual_memory()
        return {"host": socket.gethostname(), "own_cores": own, "host_busy": psutil.cpu_percent(None) / 100.0,
                "host_cores": psutil.cpu_count() or 1, "memory_total": float(vm.total),
                "memory_available": float(vm.available), "env_threshold": os.environ.get("RAY_memory_usage_threshold"),
                "processes": len(tree)}


_gcs_client: Any = None


def _gcs() -> Any:
    """A GCS client of this cluster (Serve's node cache uses the same calls: drain_node, get_draining_nodes)."""
    global _gcs_client
    if _gcs_client is None:
        _gcs_client = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    return _gcs_client


def drain_node(node_id: str, message: str) -> Outcome:
    """Ask Ray's GCS to drain ``node_id`` (blocking): reason PREEMPTION (never refused), no deadline."""
    try:
        from ray.core.generated import (
            autoscaler_pb2,  # lazy: generated protobufs, only needed to drain
        )

        accepted, why = _gcs().drain_node(node_id, autoscaler_pb2.DrainNodeReason.Value(
            "DRAIN_NODE_REASON_PREEMPTION"), message, 0)
        return Outcome.done("ok") if accepted else Outcome.done(f"refused: {why}")
    except Exception as exc:
        return Outcome.done(f"failed: {error_text(exc)}")


class NodeObserver:
    """Reads every alive node: Ray's node table, and each node's agent (blocking: run it in a thread)."""

    def __init__(self) -> None:
        self._agents: dict[str, Any] = {}
        self._system_config: dict[str, Any] | None = None

    def _agent(self, node_id: str) -> Any:
        a = self._agents.get(node_id)
        if a is None:
            a = ray.remote(NodeAgent).options(
                num_cpus=0, name=f"{AGENT_PREFIX}{node_id[:16]}", namespace=AGENT_NAMESPACE, get_if_exists=True,
                max_restarts=-1, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
            self._agents[node_id] = a
        return a

    def system_config(self) -> dict[str, Any]:
        if self._system_config is None:
            try:
                self._system_config = dict(ray._private.state.state.get_system_config())
            except Exception:
                self._system_config = {}
        return self._system_config

    def read(self, now: float) -> list[NodeInfo]:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        try:
            free = ray._private.state.available_resources_per_node()
        except Exception:
            free = {}
        try:
            draining = set(_gcs().get_draining_nodes())
        except Exception:
            draining = set()
        alive = {n["NodeID"] for n in nodes}
        for nid in [k for k in self._agents if k not in alive]:
            self._agents.pop(nid)
        refs = {n["NodeID"]: self._agent(n["NodeID"]).read.remote() for n in nodes if n["NodeID"] not in draining
                or n["NodeID"] in self._agents}
        done = set(ray.wait(list(refs.values()), num_returns=len(refs), timeout=READ_TIMEOUT_S)[0]) if refs else set()
        out = []
        sc = self.system_config()
        for n in nodes:
            nid = n["NodeID"]
            ref = refs.get(nid)
            r: dict[str, Any] = {}
            if ref is not None and ref in done:
                try:
                    r = ray.get(ref)
                except Exception as exc:
                    log.warning("node agent on %s failed (%s); it is recreated next period", node_name(n),
                                error_text(exc))
                    self._agents.pop(nid, None)
            res = n.get("Resources") or {}
            out.append(NodeInfo(
                ts=now, node_id=nid, name=node_name(n), host=str(r.get("host") or n.get("NodeManagerHostname", "")),
                is_head="node:__internal_head__" in res, draining=nid in draining,
                logical_cpus=float(res.get("CPU", 0.0)), free_cpus=float((free.get(nid) or {}).get("CPU", 0.0)),
                own_cores=r.get("own_cores"), host_busy=float(r.get("host_busy", 0.0)),
                host_cores=int(r.get("host_cores", 1)), memory_total=float(r.get("memory_total", 0.0)),
                memory_available=float(r.get("memory_available", 0.0)),
                memory_threshold=effective_memory_threshold(
                    sc, {"RAY_memory_usage_threshold": r["env_threshold"]} if r.get("env_threshold") else {})))
        return out


def _placements(cfg: RaymedicConfig) -> list[ReplicaPlacement]:
    """Every running replica of the application (every model's members and the gateway) and its node."""
    view = read_app_view(APP_NAME)
    if view is None:
        return []
    demand = {cfg.deployment_of(m.name): (m.num_cpus, m.max_replicas_per_node) for m in cfg.members}
    out = []
    for name, d in view.deployments.items():
        cpus, cap = demand.get(name, (cfg.gateway.num_cpus if name == GATEWAY_DEPLOYMENT else 0.25, None))
        for r in d.replicas:
            if r.state == "RUNNING" and r.node_id:
                out.append(ReplicaPlacement(name, r.id, r.node_id, float(cpus), cap))
    return out


class NodeKeeper:
    """The cluster's node watch, run by the service's first model's controller (nodes are shared).

    Args:
        model: The model whose audit log, incidents and metric labels it uses.
        cfg: The deployed config now.
        policy: The replica policy (``paused``, approval mode): one switch for every action.
        data_alerts: Where the ``node_pressure`` incidents live.
        recorder: Audit, metrics and webhook.
        audit: Flushed after each period that recorded something.
        checkpoint: Marked dirty when the watch's memory changed.
        memory: The watch's memory from the checkpoint.
        observer: Reads the nodes (default: the real one).
        placements: Reads where replicas run (default: Serve's view).
        drain: Drains a node (default: Ray's GCS).
        clock: Wall-clock time.
    """

    def __init__(self, *, model: str, cfg: Callable[[], RaymedicConfig], policy: HealingPolicy,
                 data_alerts: DataAlerts, recorder: Recorder, audit: AuditLog, checkpoint: Checkpoint | None = None,
                 memory: Mapping[str, Any] | None = None, observer: NodeObserver | None = None,
                 placements: Callable[[RaymedicConfig], list[ReplicaPlacement]] = _placements,
                 drain: Callable[[str, str], Outcome] = drain_node, clock: Callable[[], float] = time.time) -> None:
        self._model = model
        self._cfg = cfg
        self._policy = policy
        self._alerts = data_alerts
        self._recorder = recorder
        self._audit = audit
        self._checkpoint = checkpoint
        self._observer = observer or NodeObserver()
        self._placements = placements
        self._drain = drain
        self._clock = clock
        self.watch = NodeWatch(NodeSettings.from_config(cfg().controller), memory)
        self._series = NodeSeries()
        self._periodic = Periodic(self.check, lambda: self._cfg().controller.node_period_s, what="node check")
        self.nodes: list[NodeInfo] = []
        self.lost: dict[str, tuple[str, float]] = {}
        """node id → (its name, when it was last read alive) for nodes that left Ray's alive list (newest
        :data:`LOST_KEPT`): the diagnosis names a lost node as the cause of its replicas' incidents."""
        self.shares: dict[str, float | None] = {}
        self.checked_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.watch.to_dict()

    def evicting(self) -> frozenset[str]:
        """Replica ids every model's policy avoids now (their node is being evicted or drained)."""
        return self.watch.evicting()

    def ensure_running(self) -> None:
        """Start the period's task on the running event loop (no-op outside one, or when it runs)."""
        self._periodic.ensure_running()

    def stop(self) -> None:
        """Stop watching (the model is no longer served)."""
        self._periodic.stop()

    async def check(self) -> None:
        """One period: observe, decide, act, record."""
        cfg = self._cfg()
        self.watch.settings = NodeSettings.from_config(cfg.controller)
        now = self._clock()
        nodes = await asyncio.to_thread(self._observer.read, now)
        placements = await asyncio.to_thread(self._placements, cfg)
        alive = {n.node_id for n in nodes}
        for gone in self.nodes:
            if gone.node_id not in alive:
                self.lost[gone.node_id] = (gone.name, self.checked_at or now)
        for nid in [nid for nid in self.lost if nid in alive] + list(self.lost)[:-LOST_KEPT]:
            self.lost.pop(nid, None)
        self.nodes, self.checked_at = nodes, now
        self.shares = cpu_shares(nodes)
        for n in nodes:
            used = 1.0 - n.memory_available / n.memory_total if n.memory_total else 0.0
            if n.memory_total:
                self._series.add(n.node_id, NodeReading(now, self.shares.get(n.node_id), used, n.memory_threshold))
        self._series.retain(n.node_id for n in nodes)
        step = self.watch.step(now=now, nodes=nodes, series=self._series, placements=placements,
                               paused=self._policy.paused, approval=self._policy.mode == ControlMode.APPROVE)
        self._export(nodes)
        recorded = self._record_alerts(now, nodes)
        for kind, target, evidence, action, outcome in step.events:
            self._recorder.model_action(kind, f"node/{target}", evidence=evidence, action=action, outcome=outcome)
            recorded = True
        if step.events and self._checkpoint is not None:
            self._checkpoint.mark_dirty()
        if step.drain is not None:
            await self._run_drain(step.drain)
            recorded = True
        if recorded:
            await asyncio.to_thread(self._audit.flush)

    async def _run_drain(self, d: DrainNode) -> None:
        target = f"node/{d.name}"
        if self._checkpoint is not None:  # intent durable first: a drain is idempotent, but audited once
            self._checkpoint.mark_dirty()
            await asyncio.to_thread(self._checkpoint.save)
        t0 = time.monotonic()
        outcome = await asyncio.to_thread(self._drain, d.node_id, f"raymedic: node under pressure; moving "
                                          f"{len(d.replicas)} replica(s) off it")
        ok = outcome.text == "ok"
        self.watch.drain_done(d.action_id, ok, self._clock())
        self._recorder.model_action("drain-node", target, evidence={"node_id": d.node_id, "replicas": list(d.replicas),
                                                                    "duration_s": round(time.monotonic() - t0, 3)},
                                    action="drain", outcome=outcome.text, action_id=d.action_id)

    def _record_alerts(self, now: float, nodes: list[NodeInfo]) -> bool:
        current = {}
        for n in nodes:
            a = self.watch.assessments.get(n.node_id)
            if a is not None and a.pressured:
                current[(AlertKind.NODE_PRESSURE.value, n.name)] = (
                    "act", {**a.evidence(self.watch.settings), "phase": str(self.watch.phase(n.node_id)),
                            "since": a.since})  # the sustained window's first reading: the pressure's onset
        events = self._alerts.apply(current, now, kinds=NODE_KINDS)
        if events:
            self._recorder.data_alerts(events)
            if self._checkpoint is not None:
                self._checkpoint.mark_dirty()
        return bool(events)

    def _export(self, nodes: list[NodeInfo]) -> None:
        for n in nodes:
            share = self.shares.get(n.node_id)
            if share is not None:
                metrics.set_gauge("raymedic_node_cpu_share", share, model=self._model, node=n.name)
            if n.memory_total:
                metrics.set_gauge("raymedic_node_memory_used_ratio", 1.0 - n.memory_available / n.memory_total,
                                  model=self._model, node=n.name)
            metrics.set_gauge("raymedic_node_memory_threshold", n.memory_threshold, model=self._model, node=n.name)
            a = self.watch.assessments.get(n.node_id)
            metrics.set_gauge("raymedic_node_pressure", 1.0 if a is not None and a.pressured else 0.0,
                              model=self._model, node=n.name)

    # ---- the operator ---------------------------------------------------------------------

    def owns(self, proposal_id: str) -> bool:
        return proposal_id.startswith("node-")

    async def decide(self, proposal_id: str, approve: bool, who: str = "operator") -> dict[str, Any]:
        """An operator's answer to a proposed drain (``{"error", "status"}`` when there is none)."""
        try:
            kind, nid, evidence, action, outcome = self.watch.decide(proposal_id, approve, who, self._clock())
        except KeyError:
            return {"error": f"no node proposal {proposal_id!r}; pending: {[p for p, _ in self.watch.pending()]}",
                    "status": 404}
        except ValueError as exc:
            return {"error": f"{exc}; `raymedic status` lists the pending proposals", "status": 409}
        name = next((n.name for n in self.nodes if n.node_id == nid), nid[:8])
        self._recorder.model_action(kind, f"node/{name}", evidence=evidence, action=action, outcome=outcome)
        if self._checkpoint is not None:
            self._checkpoint.mark_dirty()
            await asyncio.to_thread(self._checkpoint.save)
        await asyncio.to_thread(self._audit.flush)
        if approve:
            asyncio.get_running_loop().create_task(self.check())
        return {"incident": proposal_id, "approval": "approved" if approve else "rejected"}

    # ---- status ---------------------------------------------------------------------------

    def proposals(self) -> list[dict[str, Any]]:
        names = {n.node_id: n.name for n in self.nodes}
        return [{"incident": pid, "target": f"node/{names.get(nid, nid[:8])}", "fault": "node-pressure",
                 "action": "drain", "detected_at": self.watch.nodes[nid].since} for pid, nid in self.watch.pending()]

    def report(self) -> dict[str, Any]:
        """The status's ``nodes``: each node's readings, verdict and phase."""
        s = self.watch.settings
        rows = []
        for n in sorted(self.nodes, key=lambda n: (not n.is_head, n.name)):
            share = self.shares.get(n.node_id)
            used = 1.0 - n.memory_available / n.memory_total if n.memory_total else None
            rows.append({"name": n.name, "node_id": n.node_id, "host": n.host, "head": n.is_head,
                         "draining": n.draining, "logical_cpus": n.logical_cpus, "free_cpus": round(n.free_cpus, 3),
                         "own_cores": None if n.own_cores is None else round(n.own_cores, 3),
                         "cpu_share": None if share is None else round(share, 3),
                         "host_busy": round(n.host_busy, 3),
                         "memory_used": None if used is None else round(used, 4),
                         "memory_available_mb": round(n.memory_available / 1e6, 1),
                         "memory_threshold": n.memory_threshold, **self.watch.report(n.node_id)})
        return {"checked_at": self.checked_at, "nodes": rows, "evicting": sorted(self.evicting()),
                "cpu_high": s.cpu_high, "cpu_low": s.cpu_low, "memory_margin": s.memory_margin,
                "next_drain_after": self.watch.next_drain_after()}
