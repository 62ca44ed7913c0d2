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

from raymedic.config import RaymedicConfig
from serve_apps.gateway.api import check_model, count_answer, json_body
from serve_apps.gateway.link import LinkState
from serve_apps.gateway.predict import Predictor
from serve_apps.gateway.status import AppViewCache, is_ready
from serve_apps.telemetry import Admission
from serve_apps.v2 import answer_to_v2, instances_from_v2, model_metadata
from train_jobs.schema import ModelSchema

__all__ = ["V2Routes"]


class V2Routes:
    """The V2 routes, mixed into the gateway deployment (routes: :mod:`serve_apps.gateway.routes`).

    Needs from the deployment the attributes declared below.
    """

    _cfg: RaymedicConfig
    _schema: ModelSchema
    _order: list[str]
    _state: LinkState
    _views: AppViewCache
    _admission: Admission
    _predictor: Predictor

    async def _ready(self) -> bool:
        return is_ready(await self._views.get(), self._order)

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
        ready = await self._ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def v2_model(self, model: str) -> dict[str, Any]:
        """
        \f
        V2 model metadata: typed input tensors, one per feature, and the output tensors.
        """
        check_model(model, self._cfg.model)
        return model_metadata(self._schema, model, self._state.model_version(self._order))

    async def v2_model_ready(self, model: str) -> JSONResponse:
        """
        \f
        V2 model readiness (the one model is ready when the service is).
        """
        check_model(model, self._cfg.model)
        ready = await self._ready()
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    async def infer_v2(self, model: str, request: Request) -> dict[str, Any]:
        """Open Inference Protocol (V2): typed tensors in and out, the same path as :predict.
        \f
        The request's ``id`` (a string) comes back in the answer, as V2 asks.
        """
        started = time.perf_counter()
        check_model(model, self._cfg.model)
        with self._admission.enter():
            body = await json_body(request)
            out = await self._predictor.answer(instances_from_v2(
                body, self._schema, max_tensor_elements=self._cfg.gateway.max_tensor_elements))
        count_answer(model, "infer", started=started)
        return answer_to_v2(out, self._schema, model, body.get("id") if isinstance(body.get("id"), str) else None)
