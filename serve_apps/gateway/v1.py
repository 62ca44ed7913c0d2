"""The KServe V1 style routes: health, readiness, model listing and info, predict, feedback, status.

Routes stay thin: they check the model in the path, admit the request (load
shedding), and hand the body to a component (:class:`~serve_apps.gateway.predict.Predictor`,
:class:`~serve_apps.gateway.feedback.FeedbackIntake`, :mod:`serve_apps.gateway.status`).
"""

# No `from __future__ import annotations`: FastAPI must see real types on route methods.

import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from raymedic.config import RaymedicConfig
from serve_apps.gateway.api import check_model, count_answer, error_response, json_body
from serve_apps.gateway.feedback import FeedbackIntake
from serve_apps.gateway.link import ControllerLink, LinkState
from serve_apps.gateway.predict import Predictor
from serve_apps.gateway.status import AppViewCache, is_ready, model_info_document, status_document
from serve_apps.predlog import PredictionLog
from serve_apps.telemetry import Admission
from serve_apps.validation import InputPolicy
from train_jobs.schema import ModelSchema

__all__ = ["V1Routes"]


class V1Routes:
    """The V1 routes, mixed into the gateway deployment (routes: :mod:`serve_apps.gateway.routes`).

    Needs from the deployment the attributes declared below.
    """

    _cfg: RaymedicConfig
    _schema: ModelSchema
    _policies: tuple[InputPolicy, ...]
    _order: list[str]
    _tag: str
    _state: LinkState
    _link: ControllerLink
    _views: AppViewCache
    _admission: Admission
    _predictor: Predictor
    _feedback_intake: FeedbackIntake
    _predlog: PredictionLog

    async def healthz(self) -> dict[str, str]:
        """
        \f
        Liveness only: answers while the process serves HTTP (members are ``/readyz``'s business).
        """
        return {"status": "alive"}

    async def readyz(self) -> JSONResponse:
        """
        \f
        Readiness: 503 with Retry-After until every member has a running replica.
        """
        if not is_ready(await self._views.get(), self._order):
            return error_response(503, "not ready: some ensemble member has no running replica yet; retry shortly",
                                  {"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    async def list_models(self) -> dict[str, list[str]]:
        """
        \f
        The one model this gateway serves, as KServe's V1 listing.
        """
        return {"models": [self._cfg.model]}

    async def model_info(self, model: str) -> dict[str, Any]:
        """
        \f
        What a client needs to call the model: schema, limits, input policies, versions.
        """
        check_model(model, self._cfg.model)
        view = await self._views.get()
        return model_info_document(config=self._cfg, schema=self._schema, policies=self._policies,
                                   state=self._state, order=self._order, view=view)

    async def predict(self, model: str, request: Request) -> dict[str, Any]:
        """
        \f
        Predict: ``{"instances": [...]}`` in, labels, probabilities and inference ids out.
        """
        started = time.perf_counter()
        check_model(model, self._cfg.model)
        with self._admission.enter():
            out = await self._predictor.answer(await json_body(request))
        count_answer(model, "predict", started=started)
        return out

    async def feedback(self, model: str, request: Request) -> dict[str, Any]:
        """
        \f
        Feedback: labels for earlier inference ids (written before the 2xx).
        """
        check_model(model, self._cfg.model)
        out = await self._feedback_intake.accept(await json_body(request))
        count_answer(model, "feedback")
        return out

    async def status(self) -> dict[str, Any]:
        """
        \f
        The service as Serve, the controller and this gateway replica see it (``raymedic status``).
        """
        view = await self._views.get()
        controller = await self._link.status()
        return status_document(config=self._cfg, order=self._order, state=self._state, tag=self._tag,
                               view=view, controller=controller, now=time.time(),
                               prediction_log=self._predlog.health())
