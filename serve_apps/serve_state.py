"""Serve's own view of an application: its deployments and their replicas, as plain frozen data.

The gateway (``/v1/status``, ``/readyz``, chaos targets) and the healing
controller both read it; pure code (the healing policy, tests) reasons about the
snapshots without Ray. Serve's view lags a SIGKILL by several seconds (RAY_NOTES
§2), which is why the controller also reads the actors' liveness
(:mod:`controllers.observe`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ray.serve.context import _get_global_client

from raymedic.enums import StrEnum
from raymedic.keys import GATEWAY_DEPLOYMENT as GATEWAY

__all__ = ["ReplicaView", "DeploymentView", "AppView", "read_app_view", "ScalingState", "scaling_report"]


@dataclass(frozen=True)
class ReplicaView:
    """One replica as Serve reports it (its process and node are what chaos and healing act on)."""
    id: str
    state: str
    pid: int | None = None
    node_id: str | None = None
    actor_name: str | None = None
    start_time_s: float | None = None
    actor_id: str | None = None


@dataclass(frozen=True)
class DeploymentView:
    """One deployment as Serve reports it, with its replicas."""
    name: str
    status: str
    message: str
    target_replicas: int | None
    replicas: tuple[ReplicaView, ...] = ()


class ScalingState(StrEnum):
    """Where a deployment's size is, as Serve's view shows it (``/v1/status`` → ``scaling.state``)."""

    FIXED = "fixed"
    """No autoscaling (no ``max_replicas``): always its configured replicas."""
    STEADY = "steady"
    """As many replicas running as Serve's target, below the ceiling."""
    SCALING_OUT = "scaling-out"
    """Serve's target is above the replicas running: replicas are starting."""
    SCALING_IN = "scaling-in"
    """Serve's target is below the replicas running: replicas are draining and stopping."""
    AT_MAX = "at-max"
    """Running at ``max_replicas``: no capacity left to add; past it the gateway sheds load."""


def scaling_report(dep: DeploymentView | None, *, low: int, high: int, autoscaled: bool,
                   standby: int = 0) -> dict[str, Any]:
    """A deployment's size for status: replicas ``running`` and Serve's ``target``, the bounds Serve scales
    between (``min``/``max``: ``replicas + standby`` .. ``max_replicas + standby``), the ``standby`` among
    them, and the :class:`ScalingState`.

    >>> d = DeploymentView("mlp", "HEALTHY", "", 4, (ReplicaView("a", "RUNNING"), ReplicaView("b", "STARTING")))
    >>> scaling_report(d, low=2, high=5, autoscaled=True)["state"]
    'scaling-out'
    """
    running = sum(1 for r in dep.replicas if r.state == "RUNNING") if dep is not None else 0
    target = dep.target_replicas if dep is not None and dep.target_replicas is not None else low
    if not autoscaled:
        state = ScalingState.FIXED
    elif target > running:
        state = ScalingState.SCALING_OUT
    elif target < running:
        state = ScalingState.SCALING_IN
    elif target >= high:
        state = ScalingState.AT_MAX
    else:
        state = ScalingState.STEADY
    return {"running": running, "target": int(target), "min": low, "max": high, "standby": standby,
            "state": state.value}


@dataclass(frozen=True)
class AppView:
    """One application as Serve reports it: a frozen snapshot, so readers never see Serve's state change
    under them.
    """
    name: str
    status: str
    message: str = ""
    deployments: dict[str, DeploymentView] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """Whether Serve says the application is running."""
        return self.status == "RUNNING"

    def of_model(self, deployments: Mapping[str, str]) -> "AppView":
        """The view one model's code reads: its members' deployments only, keyed by member name
        (``deployments``: member → its Serve deployment), and the gateway's.

        A service with several models names a member's deployment after its model (``cards.mlp``); the
        gateway's lane and the controller of each model know its members by name, so every reader sees
        one model's ensemble whatever else the application serves.
        """
        picked = {m: self.deployments[d] for m, d in deployments.items() if d in self.deployments}
        if GATEWAY in self.deployments:
            picked[GATEWAY] = self.deployments[GATEWAY]
        return AppView(name=self.name, status=self.status, message=self.message, deployments=picked)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def read_app_view(app_name: str) -> AppView | None:
    """Serve's detailed view of one application, or None when it is not deployed.

    Uses the Serve controller's details (the same data as the dashboard's Serve
    view and ``GET /api/serve/applications/``), which list every replica with its
    state, PID and node.
    """
    details = _get_global_client().get_serve_details()
    app = _get(_get(details, "applications", {}), app_name)
    if app is None:
        return None
    deployments: dict[str, DeploymentView] = {}
    for name, dep in (_get(app, "deployments", {}) or {}).items():
        replicas = tuple(
            ReplicaView(
                id=str(_get(r, "replica_id")),
                state=str(getattr(_get(r, "state"), "value", _get(r, "state"))),
                pid=_get(r, "pid"),
                node_id=_get(r, "node_id"),
                actor_name=_get(r, "actor_name"),
                start_time_s=_get(r, "start_time_s"),
                actor_id=_get(r, "actor_id"),
            )
            for r in _get(dep, "replicas", []) or []
        )
        cfg = _get(dep, "deployment_config", {}) or {}
        deployments[name] = DeploymentView(
            name=name,
            status=str(getattr(_get(dep, "status"), "value", _get(dep, "status"))),
            message=str(_get(dep, "message", "") or ""),
            target_replicas=_get(dep, "target_num_replicas", _get(cfg, "num_replicas")),
            replicas=replicas,
        )
    return AppView(
        name=app_name,
        status=str(getattr(_get(app, "status"), "value", _get(app, "status"))),
        message=str(_get(app, "message", "") or ""),
        deployments=deployments,
    )
