"""What the gateway says about the service: readiness, model info and the ``/v1/status`` document.

``/v1/status`` is one document an operator (or ``raymedic status``, which sends the
admin token) reads to see the whole service: Serve's view of the application, each member's replicas as
the controller steers them (avoided, standby), the weights, drift, performance,
incidents and the controller itself. The controller's part comes from its status
call; when the controller is away the gateway still answers with what it knows
(its own last weights and lists) and says the controller is unreachable. Serve's
state is read through a short cache because these routes are polled. A caller
without the admin token gets a redacted view (:func:`redact`): the route needs no token, so
a health dashboard can poll it, and nothing in it aims an attack.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Sequence

from raymedic.config import RaymedicConfig
from raymedic.keys import APP_NAME
from raymedic.logs import get_logger
from serve_apps.gateway.link import LinkState
from serve_apps.serve_state import AppView, read_app_view, scaling_report
from serve_apps.validation import InputPolicy
from train_jobs.schema import ModelSchema

__all__ = ["REDACTED_KEYS", "REDACTED_NOTE", "STATUS_CACHE_S", "AppViewCache", "is_ready", "model_info_document", "redact",
           "status_document"]

log = get_logger(__name__)

STATUS_CACHE_S = 1.0
"""How long a Serve state read is reused by /v1/status and /readyz (they are polled)."""

REDACTED_KEYS = frozenset({"pid", "pids", "node_id", "host", "path", "address", "node_ip", "webhook"})
"""What ``/v1/status`` leaves out, at any depth, for a caller without the admin token: process and node
ids (what a kill or a Ray call aims at), host names and addresses, paths (storage_path, Ray's session
directory) and the alert webhook. What an anonymous health dashboard reads stays: models, versions,
weights, member and replica states (replica ids included), scaling, latency, drift, performance,
incidents and the controller's state."""

REDACTED_NOTE = ("process ids, node ids, hosts, paths and the webhook left out: send "
                 "Authorization: Bearer $RAYMEDIC_ADMIN_TOKEN for the full view")


def redact(doc: Any) -> Any:
    """``doc`` without the :data:`REDACTED_KEYS`, at any depth (a new document; ``doc`` is unchanged).

    >>> redact({"members": [{"name": "mlp", "replicas": [{"id": "r1", "pid": 42, "node_id": "ab"}]}],
    ...         "controller": {"state": "running", "pid": 7, "webhook": {"url": "https://h/…"}}})
    {'members': [{'name': 'mlp', 'replicas': [{'id': 'r1'}]}], 'controller': {'state': 'running'}}
    """
    if isinstance(doc, dict):
        return {k: redact(v) for k, v in doc.items() if k not in REDACTED_KEYS}
    if isinstance(doc, list):
        return [redact(v) for v in doc]
    return doc


_CONTROLLER_DETAIL = ("incidents", "incident_groups", "actions", "weights", "data", "performance", "memory", "vitals")
"""Keys of the controller's status that the document shows in sections of their own."""


class AppViewCache:
    """Serve's view of the application, read at most once per :data:`STATUS_CACHE_S`; only the event
    loop uses it.

    A failed read logs and keeps the last view: a status page should not fail because
    Serve's controller was slow to answer once.

    Args:
        read: reads the view (blocking; run in a thread).
        clock: a monotonic clock.
    """

    def __init__(self, read: Callable[[], AppView | None] = lambda: read_app_view(APP_NAME), *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._cached: tuple[float, AppView | None] = (0.0, None)

    def invalidate(self) -> None:
        """Make the next :meth:`get` read afresh (chaos targets must exist now, not a second ago)."""
        self._cached = (0.0, self._cached[1])

    async def get(self) -> AppView | None:
        """The application's view, at most :data:`STATUS_CACHE_S` old (None before Serve reported one)."""
        ts, view = self._cached
        if self._clock() - ts > STATUS_CACHE_S:
            try:
                view = await asyncio.to_thread(self._read)
            except Exception:
                log.exception("could not read Serve state; reusing the last view")
            self._cached = (self._clock(), view)
        return view


def is_ready(view: AppView | None, order: Sequence[str]) -> bool:
    """Ready to answer: every member Serve knows has a running replica (none known yet: not ready).

    Args:
        view: Serve's view of the application, or None.
        order: the ensemble's members.
    """
    return view is not None and all(
        any(r.state == "RUNNING" for r in view.deployments[m].replicas)
        for m in order if m in view.deployments
    )


def model_info_document(*, config: RaymedicConfig, schema: ModelSchema, policies: Sequence[InputPolicy],
                        state: LinkState, order: Sequence[str], view: AppView | None) -> dict[str, Any]:
    """``GET /v1/models/{model}``: what a client needs to call the model (schema, limits, how holes and
    new levels are treated) and which versions serve it."""
    return {
        "name": config.model,
        "ready": view is not None and view.running,
        "version": state.model_version(order),
        "members": state.versions,
        "schema": {"features": [f.to_dict() for f in schema.features],
                   "classes": list(schema.classes), "target": schema.target},
        "limits": {"max_batch_size": config.gateway.max_batch_size,
                   "reject_out_of_range": config.gateway.reject_out_of_range,
                   **({"max_tensor_elements": config.gateway.max_tensor_elements}
                      if any(f.tensor for f in schema.features) else {})},
        "policies": {f.name: p.to_dict() if f.categorical else {"missing": p.missing}
                     for f, p in zip(schema.features, policies)},
    }


def _member_scaling(config: RaymedicConfig, name: str, dep: Any) -> dict[str, Any]:
    m = next((x for x in config.members if x.name == name), None)
    if m is None:
        return {}
    return scaling_report(dep, low=m.min_serve_replicas, high=m.max_serve_replicas, autoscaled=m.autoscaled,
                          standby=m.standby)


def _latency(config: RaymedicConfig, latency: dict[str, Any] | None) -> dict[str, Any]:
    """This replica's p50/p99 against the SLO: ``within_slo`` is None with no request in the window."""
    slo = config.gateway.latency_slo_ms
    lat = dict(latency or {"requests": 0, "p50_ms": None, "p99_ms": None})
    p99 = lat.get("p99_ms")
    return {**lat, "slo_ms": slo, "within_slo": None if p99 is None else p99 <= slo}


def status_document(*, config: RaymedicConfig, order: Sequence[str], state: LinkState, tag: str,
                    view: AppView | None, controller: dict[str, Any] | None, now: float,
                    prediction_log: dict[str, Any] | None = None,
                    latency: dict[str, Any] | None = None,
                    review: dict[str, Any] | None = None) -> dict[str, Any]:
    """``GET /v1/status``: the service as Serve, the controller and this gateway replica see it.

    Args:
        config: the service config.
        order: the ensemble's members.
        state: this gateway's last state from the controller.
        tag: this gateway replica's id (the answer says which replica answered).
        view: Serve's view of the application, or None.
        controller: the controller's status, or None when it is disabled or away.
        now: the current time (Unix s), for the age of the last sync.
        prediction_log: this gateway replica's prediction log health (``writable``, ``dropped_rows``, ...).
        latency: this gateway replica's recent predictions of the model (:class:`serve_apps.telemetry.LatencyWindow`).
        review: the review queue as this gateway replica sees it (:meth:`serve_apps.review.ReviewBook.health`),
            or None when it is off.
    """
    ctl = controller
    weights = (ctl or {}).get("weights") or state.weights
    quarantined = set((ctl or {}).get("quarantined") or ())
    avoid = (ctl or {}).get("avoid") or state.avoid
    standby = (ctl or {}).get("standby") or state.standby
    memory = (ctl or {}).get("memory") or {}
    vitals = (ctl or {}).get("vitals") or {}
    members = []
    for name in order:
        dep = view.deployments.get(name) if view else None
        flagged, spare = set(avoid.get(name, ())), set(standby.get(name, ()))
        members.append({
            "name": name,
            "version": state.versions[name],
            "weight": round(float(weights.get(name, 0.0)), 6),
            "fallback": name == config.fallback_member,
            "state": "QUARANTINED" if name in quarantined else (dep.status if dep else "UNKNOWN"),
            "replicas": [{"id": r.id, "state": ("AVOIDED" if r.id in flagged else "STANDBY" if r.id in spare
                                                else r.state) if r.state == "RUNNING" else r.state,
                          "pid": r.pid, "node_id": r.node_id, **memory.get(r.id, {}), **vitals.get(r.id, {})}
                         for r in (dep.replicas if dep else ())],
            "scaling": _member_scaling(config, name, dep),
        })
    gw = view.deployments.get("gateway") if view else None
    if ctl is None:
        controller_part = {"state": "unreachable" if config.controller.enabled else "disabled",
                           "last_sync_age_s": state.sync_age_s(now),
                           "note": "serving with the last weights received"}
    else:
        controller_part = {k: v for k, v in ctl.items() if k not in _CONTROLLER_DETAIL}
    return {
        "model": config.model,
        "model_version": state.model_version(order),
        "application": {"name": APP_NAME, "status": view.status if view else "UNKNOWN"},
        "gateway": {"state": gw.status if gw else "UNKNOWN",
                    "replicas": [{"id": r.id, "state": r.state} for r in (gw.replicas if gw else ())],
                    "scaling": scaling_report(gw, low=config.gateway.replicas,
                                              high=config.gateway.max_replicas or config.gateway.replicas,
                                              autoscaled=config.gateway.autoscaled),
                    "latency": _latency(config, latency),
                    "answered_by": {"id": tag, "weights": {m: round(w, 6) for m, w in state.weights.items()},
                                    "epoch": state.epoch, "avoid": state.avoid,
                                    "last_sync_age_s": state.sync_age_s(now)}},
        "members": members,
        "drift": (ctl or {}).get("data", {}),
        "performance": (ctl or {}).get("performance", {}),
        "incidents": (ctl or {}).get("incidents", []),
        "incident_groups": (ctl or {}).get("incident_groups", []),
        "actions": (ctl or {}).get("actions", []),
        "controller": controller_part,
        **({"prediction_log": {"replica": tag, **prediction_log}} if prediction_log is not None else {}),
        **({"review": review} if review is not None else {}),
    }
