"""The gateway's HTTP surface in one table: every route and the mixin method that answers it.

The order is the order in which Starlette matches the routes and in which the
OpenAPI document (``raymedic openapi``, ``/docs``) lists them; it is kept as it
was when all routes lived in one class, so the document does not change. The
methods are plain methods of the route mixins; Serve's ``@serve.ingress`` binds
them to the deployment instance (its class-based view accepts methods inherited
from any class in the deployment's MRO).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from fastapi import FastAPI

from serve_apps.gateway.admin import AdminRoutes
from serve_apps.gateway.chaos_routes import ChaosRoutes
from serve_apps.gateway.v1 import V1Routes
from serve_apps.gateway.v2_routes import V2Routes

__all__ = ["Route", "ROUTES", "mount"]


class Route(NamedTuple):
    """One route: HTTP method, path, and the method that answers it."""

    method: str
    path: str
    endpoint: Callable[..., Any]


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", V1Routes.healthz),
    Route("GET", "/readyz", V1Routes.readyz),
    Route("GET", "/v2/health/live", V2Routes.v2_live),
    Route("GET", "/v2/health/ready", V2Routes.v2_ready),
    Route("GET", "/v2/models/{model}", V2Routes.v2_model),
    Route("GET", "/v2/models/{model}/ready", V2Routes.v2_model_ready),
    Route("GET", "/v1/models", V1Routes.list_models),
    Route("GET", "/v1/models/{model}", V1Routes.model_info),
    Route("GET", "/v1/models/{model}/review", V1Routes.review_queue),
    Route("POST", "/v1/models/{model}:predict", V1Routes.predict),
    Route("POST", "/v2/models/{model}/infer", V2Routes.infer_v2),
    Route("POST", "/v1/models/{model}:feedback", V1Routes.feedback),
    Route("GET", "/v1/status", V1Routes.status),
    Route("POST", "/v1/admin/pause", AdminRoutes.admin_pause),
    Route("POST", "/v1/admin/approve", AdminRoutes.admin_approve),
    Route("POST", "/v1/admin/reject", AdminRoutes.admin_reject),
    Route("POST", "/v1/admin/mode", AdminRoutes.admin_mode),
    Route("POST", "/v1/admin/retrain", AdminRoutes.admin_retrain),
    Route("POST", "/v1/admin/rollback", AdminRoutes.admin_rollback),
    Route("POST", "/v1/admin/promote", AdminRoutes.admin_promote),
    Route("POST", "/v1/admin/trial", AdminRoutes.admin_trial),
    Route("POST", "/v1/admin/resume", AdminRoutes.admin_resume),
    Route("POST", "/v1/admin/chaos", ChaosRoutes.admin_chaos),
    Route("POST", "/v1/admin/chaos/clear", ChaosRoutes.admin_chaos_clear),
)


def mount(app: FastAPI) -> None:
    """Register :data:`ROUTES` on ``app``, in order (once, before ``@serve.ingress(app)`` reads them).

    Args:
        app: the gateway's FastAPI application.
    """
    for route in ROUTES:
        app.add_api_route(route.path, route.endpoint, methods=[route.method])
