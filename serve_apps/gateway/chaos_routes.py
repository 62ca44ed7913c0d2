"""Chaos routes (``/v1/admin/chaos``, ``/v1/admin/chaos/clear``): real faults, on purpose.

They exist only when the config enables chaos (else they answer 404 like any
unknown route) and need the admin token. A fault goes to one running replica of a
member: the one named, or by default one serving traffic (not a standby, so the
fault is felt). ``kill`` is a real SIGKILL of the replica's process; ``hang``,
``slow``, ``wrong``, ``error``, ``leak`` and ``gpu-fault`` (``"kind"``: oom, device-lost, ecc) are set inside the replica (:mod:`serve_apps.chaos`);
``disk-fill`` (no member) writes a bounded file under ``storage_path``; ``cpu-hog`` (no member,
a ``node``) starts bounded busy processes on one node. Each
injection is recorded in the controller's audit log, so a heal can be read
against the fault that caused it.
"""

# No `from __future__ import annotations`: FastAPI must see real types on route methods.

import asyncio
import time
from typing import Any, Sequence

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from raymedic.errors import InvalidRequest, ServiceUnavailable
from raymedic.storage import Storage
from serve_apps.chaos import FAULTS, clear_cpu_hogs, clear_disk_fill, cpu_hog, disk_fill, sigkill_replica
from serve_apps.gateway.admin import check_admin
from serve_apps.gateway.api import json_body
from serve_apps.gateway.lane import ModelLane, pick_lane
from serve_apps.gateway.status import AppViewCache
from serve_apps.gpu import check_kind
from serve_apps.serve_state import ReplicaView

__all__ = ["ChaosRoutes", "leak_settings", "parse_chaos", "pick_target"]

LEAK_CAP_OF_LIMIT = 1.5
"""A leak into a member with ``memory_limit_mb`` holds at most this multiple of it (the replica's own cap
of 2 GB applies too): far enough past the limit to show a missed heal, never the whole machine."""


def parse_chaos(body: Any, order: Sequence[str]) -> tuple[str, str, float | None]:
    """``(fault, member, delay_ms)`` from a chaos body, or a 422 that says what to send.

    Args:
        body: the request's JSON body.
        order: the ensemble's members (named in the message when the member is missing).
    """
    if not isinstance(body, dict):
        raise InvalidRequest(f'send {{"fault": "{"|".join(FAULTS)}", "member": NAME, '
                             '"replica": ID (optional), "delay_ms": N (slow), "mb_per_s": N (leak, optional), '
                             '"kind": "oom|device-lost|ecc" (gpu-fault, optional)}')
    fault, member = body.get("fault"), body.get("member")
    if fault not in FAULTS:
        raise InvalidRequest(f"fault must be one of {list(FAULTS)}, got {fault!r}")
    if not isinstance(member, str):
        raise InvalidRequest(f"member is required: one of {list(order)}")
    delay_ms = body.get("delay_ms")
    if delay_ms is not None and (isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float))):
        raise InvalidRequest("delay_ms must be a number of milliseconds")
    return fault, member, delay_ms


def leak_settings(body: dict[str, Any], memory_limit_mb: float | None) -> tuple[float | None, float | None]:
    """``(mb_per_s, cap_mb)`` of a leak: the body's rate (None: the replica's default) and the cap
    (``LEAK_CAP_OF_LIMIT`` × the member's limit, None without one: the replica's own cap), or a 422.

    Args:
        body: the chaos body.
        memory_limit_mb: the member's configured memory limit, if any.
    """
    rate = body.get("mb_per_s")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0):
        raise InvalidRequest(f"mb_per_s must be a positive number of MB per second, got {rate!r}")
    return rate, None if memory_limit_mb is None else LEAK_CAP_OF_LIMIT * memory_limit_mb


def pick_target(replicas: Sequence[ReplicaView], *, member: str, wanted: str | None,
                standby: Sequence[str]) -> ReplicaView:
    """The replica a fault goes to: ``wanted``, or by default the first serving traffic (a fault on a
    standby would not be felt), or the first running one when all are standbys.

    Args:
        replicas: the member's running replicas, sorted by id.
        member: the member (for messages).
        wanted: the replica the body named, or None.
        standby: the member's standby replicas.

    Raises:
        ServiceUnavailable: no replica runs right now (retry shortly).
        InvalidRequest: (404) ``wanted`` is not running.
    """
    if wanted is None:
        if not replicas:
            raise ServiceUnavailable(f"member {member!r} has no running replica right now", retry_after_s=2)
        spare = set(standby)
        return next((r for r in replicas if r.id not in spare), replicas[0])
    target = next((r for r in replicas if r.id == wanted), None)
    if target is None:
        raise InvalidRequest(f"member {member!r} has no running replica {wanted!r}; running: "
                             f"{[r.id for r in replicas]}", status=404)
    return target


class ChaosRoutes:
    """The chaos routes, mixed into the gateway deployment (routes: :mod:`serve_apps.gateway.routes`).

    Needs from the deployment: whether chaos is enabled, the admin token's hash, the model lanes (each
    model's member handles, members, last controller state and link, for the audit log) and Serve's
    view. A fault names its model with ``"model"`` in the body or ``?model=`` (default: the first model
    served).
    """

    _chaos: bool
    _admin_sha: str | None
    _lanes: dict[str, ModelLane]
    _views: AppViewCache

    def _chaos_enabled(self, request: Request) -> None:
        if not self._chaos:  # the route does not exist without chaos
            raise StarletteHTTPException(404)
        check_admin(request, self._admin_sha)

    async def _running_replicas(self, lane: ModelLane, member: str) -> list[ReplicaView]:
        if member not in lane.members:
            raise InvalidRequest(f"unknown member {member!r} of model {lane.model!r}; members are {lane.order}",
                                 status=404)
        self._views.invalidate()  # fresh view: chaos targets must exist now
        view = lane.view(await self._views.get())
        dep = view.deployments.get(member) if view else None
        return sorted((r for r in (dep.replicas if dep else ()) if r.state == "RUNNING"), key=lambda r: r.id)

    async def admin_chaos(self, request: Request) -> dict[str, Any]:
        """
        \f
        Inject a fault into one replica of a member; the answer names the replica hit.
        """
        self._chaos_enabled(request)
        body = await json_body(request)
        lane = pick_lane(self._lanes, _model_named(body) or request.query_params.get("model"))
        if isinstance(body, dict) and body.get("fault") == "disk-fill":  # the service's disk, not a replica
            out = await asyncio.to_thread(disk_fill, Storage(lane.cfg.storage_path), body.get("mb"))
            result = {"fault": "disk-fill", "at": time.time(), **out}
            await lane.link.note("chaos-injected", f"{lane.model}/storage", result)
            return result
        if isinstance(body, dict) and body.get("fault") == "cpu-hog":  # a node's fault, not a replica's
            out = await asyncio.to_thread(cpu_hog, body.get("node"), body.get("procs"), body.get("for_s"))
            result = {"fault": "cpu-hog", "at": time.time(), **out}
            await lane.link.note("chaos-injected", f"node/{out['node']}", result)
            return result
        fault, member, delay_ms = parse_chaos(body, lane.order)
        replicas = await self._running_replicas(lane, member)
        target = pick_target(replicas, member=member, wanted=body.get("replica"),
                             standby=lane.state.standby.get(member, ()))
        if fault == "kill":
            if not target.pid:
                raise ServiceUnavailable("Serve has not reported that replica's process id yet", retry_after_s=1)
            out = await asyncio.to_thread(sigkill_replica, int(target.pid), target.node_id)
        elif fault == "leak":
            rate, cap = leak_settings(body, lane.cfg.member(member).memory_limit_mb)
            out = await asyncio.wait_for(
                lane.members[member].chaos.remote(fault, None, target=target.id, mb_per_s=rate, cap_mb=cap),
                timeout=10.0)
        elif fault == "gpu-fault":
            kind = check_kind(body.get("kind"))
            out = await asyncio.wait_for(
                lane.members[member].chaos.remote(fault, None, target=target.id, gpu_kind=kind), timeout=10.0)
        else:
            out = await asyncio.wait_for(
                lane.members[member].chaos.remote(fault, delay_ms, target=target.id), timeout=10.0)
        result = {"fault": fault, "model": lane.model, "member": member, "replica": target.id, "at": time.time(),
                  **out}
        await lane.link.note("chaos-injected", f"{member}/{target.id}", result)
        return result

    async def admin_chaos_clear(self, request: Request) -> dict[str, Any]:
        """
        \f
        Clear every injected fault on every running replica of every model (a hung or dying one is
        skipped); a leak's memory is freed, disk-fill's files are deleted, cpu hogs are stopped.
        """
        self._chaos_enabled(request)
        storage = Storage(next(iter(self._lanes.values())).cfg.storage_path)  # every model's, one service's
        files = await asyncio.to_thread(clear_disk_fill, storage)  # first: needs no replica
        hogs = await asyncio.to_thread(clear_cpu_hogs)
        cleared = []
        for lane in self._lanes.values():
            mine = []
            for member in lane.order:
                for r in await self._running_replicas(lane, member):
                    try:
                        await asyncio.wait_for(lane.members[member].chaos.remote(None, target=r.id), timeout=3.0)
                        mine.append(f"{member}/{r.id}")
                    except Exception:
                        pass  # a hung or dying replica: the controller replaces it anyway
            await lane.link.note("chaos-cleared", lane.model, {"replicas": mine, "disk_fill_files": files,
                                                               "cpu_hogs": hogs})
            cleared += mine if len(self._lanes) == 1 else [f"{lane.model}/{c}" for c in mine]
        return {"cleared": cleared, "disk_fill_files": files, "cpu_hogs": hogs}


def _model_named(body: Any) -> str | None:
    """The ``"model"`` a chaos body names (None: the first model served).

    Raises:
        InvalidRequest: (400) ``model`` is not a string.
    """
    model = body.get("model") if isinstance(body, dict) else None
    if model is not None and not isinstance(model, str):
        raise InvalidRequest('"model" must be the name of a served model (GET /v1/models lists them)')
    return model
