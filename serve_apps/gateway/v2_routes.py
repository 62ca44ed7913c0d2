"""The Open Inference Protocol (V2) routes, for KServe, Triton and other V2 clients.

V2 bodies are translated to raymedic's instances and back (:mod:`serve_apps.v2`)
around the same prediction path as V1's ``:predict``; health and readiness mean
the same as ``/healthz`` and ``/readyz``.
"""

# No `from __future__ import annotations`: FastAPI must see real types on route methods.

import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from serve_apps.access import ClientAccess
from serve_apps.gateway.api import count_answer, json_body
from serve_apps.gateway.lane import ModelLane, pick_lane
from serve_apps.gateway.status import AppViewCache, is_ready
from serve_apps.telemetry import Admission
from serve_apps.v2 import answer_to_v2, instances_from_v2, model_metadata

__all__ = ["V2Routes"]


class V2Routes:
    """The V2 routes, mixed into the gateway deployment (routes: :mod:`serve_apps.gateway.routes`).

    Needs from the deployment the attributes declared below.
    """

    _lanes: dict[str, ModelLane]
    _views: AppViewCache
    _admission: Admission
    _access: ClientAccess

    async def _ready(self, lanes: list[ModelLane]) -> bool:
        view = await self._views.get()
        return all(is_ready(lane.view(view), lane.order) for lane in lanes)

    async def v2_live(self) -> dict[str, bool]:
        """
        \f
        V2 liveness (as ``/healthz``).
        """
        return {"live": True}

    async def v2_ready(self) -> JSONResponse:
        """
        \f
        V2 readiness (as ``/readyz``): 503 until every member has a running replica.
        """
        ready = await self._ready(list(self._lanes.values()))
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def v2_model(self, model: str) -> dict[str, Any]:
        """
        \f
        V2 model metadata: typed input tensors, one per feature, and the output tensors.
        """
        lane = pick_lane(self._lanes, model)
        return model_metadata(lane.schema, model, lane.state.model_version(lane.order))

    async def v2_model_ready(self, model: str) -> JSONResponse:
        """
        \f
        V2 model readiness: every member of this model has a running replica.
        """
        ready = await self._ready([pick_lane(self._lanes, model)])
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    async def infer_v2(self, model: str, request: Request) -> dict[str, Any]:
        """Open Inference Protocol (V2): typed tensors in and out, the same path as :predict.
        \f
        The request's ``id`` (a string) comes back in the answer, as V2 asks.
        """
        started = time.perf_counter()
        self._access.client(request.headers)  # 401 without a client key where client_auth is on
        lane = pick_lane(self._lanes, model)
        with self._admission.enter():
            body = await json_body(request)
            out = await lane.predictor.answer(instances_from_v2(
                body, lane.schema, max_tensor_elements=lane.cfg.gateway.max_tensor_elements))
        lane.latency.add(time.perf_counter() - started, now=time.monotonic())
        count_answer(model, "infer", started=started)
        return answer_to_v2(out, lane.schema, model, body.get("id") if isinstance(body.get("id"), str) else None)
