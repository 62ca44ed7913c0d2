"""The KServe V1 style routes: health, readiness, model listing and info, predict, feedback, status.

Routes stay thin: they check the model in the path, admit the request (load
shedding), and hand the body to a component (:class:`~serve_apps.gateway.predict.Predictor`,
:class:`~serve_apps.gateway.feedback.FeedbackIntake`, :mod:`serve_apps.gateway.status`).
"""

# No `from __future__ import annotations`: FastAPI must see real types on route methods.

import asyncio
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from raymedic.errors import InvalidRequest
from serve_apps.access import ClientAccess
from serve_apps.gateway.admin import check_admin
from serve_apps.gateway.api import count_answer, error_response, json_body, profiled_response
from serve_apps.gateway.lane import ModelLane, pick_lane
from serve_apps.gateway.status import (REDACTED_NOTE, AppViewCache, is_ready, model_info_document, redact,
                                      status_document)
from serve_apps.review import page_query
from serve_apps.stages import NULL_TIMER, StageTimer
from serve_apps.telemetry import Admission

__all__ = ["V1Routes"]


class V1Routes:
    """The V1 routes, mixed into the gateway deployment (routes: :mod:`serve_apps.gateway.routes`).

    Needs from the deployment the attributes declared below.
    """

    _lanes: dict[str, ModelLane]
    _tag: str
    _views: AppViewCache
    _admission: Admission
    _access: ClientAccess
    _admin_sha: str | None

    def _lane(self, model: str | None) -> ModelLane:
        return pick_lane(self._lanes, model)

    async def _all_ready(self) -> bool:
        view = await self._views.get()
        return all(is_ready(lane.view(view), lane.order) for lane in self._lanes.values())

    async def healthz(self) -> dict[str, str]:
        """
        \f
        Liveness only: answers while the process serves HTTP (members are ``/readyz``'s business).
        """
        return {"status": "alive"}

    async def readyz(self) -> JSONResponse:
        """
        \f
        Readiness: 503 with Retry-After until every member of every model has a running replica.
        """
        if not await self._all_ready():
            return error_response(503, "not ready: some ensemble member has no running replica yet; retry shortly",
                                  {"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    async def list_models(self) -> dict[str, list[str]]:
        """
        \f
        The models this gateway serves, as KServe's V1 listing (the first is the default of routes
        that take ``?model=``).
        """
        return {"models": list(self._lanes)}

    async def model_info(self, model: str) -> dict[str, Any]:
        """
        \f
        What a client needs to call the model: schema, limits, input policies, versions.
        """
        lane = self._lane(model)
        view = lane.view(await self._views.get())
        return model_info_document(config=lane.cfg, schema=lane.schema, policies=lane.policies,
                                   state=lane.state, order=lane.order, view=view)

    async def predict(self, model: str, request: Request) -> dict[str, Any]:
        """
        \f
        Predict: ``{"instances": [...]}`` in, labels, probabilities and inference ids out.
        """
        started = time.perf_counter()
        self._access.client(request.headers)  # 401 without a client key where client_auth is on
        lane = self._lane(model)
        timer = StageTimer() if lane.cfg.gateway.profile else NULL_TIMER
        with self._admission.enter():
            body = await json_body(request)
            timer.mark("parse")
            out = await lane.predictor.answer(body, timer=timer)
        lane.latency.add(time.perf_counter() - started, now=time.monotonic())
        count_answer(model, "predict", started=started)
        timer.mark("telemetry")
        if timer.enabled:
            return profiled_response(out, timer)
        return out

    async def feedback(self, model: str, request: Request) -> dict[str, Any]:
        """
        \f
        Feedback: labels for earlier inference ids (written before the 2xx). Paced per client (its name with
        client keys, else its address, through trusted proxies) where ``gateway.feedback_rate_per_s`` is set: 429 with Retry-After.
        """
        who = self._access.client(request.headers) or self._access.address(
            request.client.host if request.client else None, request.headers.getlist("x-forwarded-for"))
        self._access.admit_feedback(who)
        out = await self._lane(model).feedback_intake.accept(await json_body(request))
        count_answer(model, "feedback")
        return out

    async def review_queue(self, model: str, request: Request) -> dict[str, Any]:
        """
        \f
        The answers waiting for review (top-class probability under ``review.threshold``), oldest first,
        paged with ``?limit=N&after=<next_after>``; a label sent through ``:feedback`` clears an item. The
        queue is every gateway replica's, merged from storage (read here first, with this replica's own
        buffered answers written, so each item's inputs are found in the prediction log). Needs
        ``Authorization: Bearer $RAYMEDIC_ADMIN_TOKEN``: the queue shows every client's inputs and answers.
        """
        check_admin(request, self._admin_sha)
        lane = self._lane(model)
        after, limit = page_query(dict(request.query_params))
        if not lane.review.enabled:
            raise InvalidRequest(f"model {model!r} has no review queue: set review.threshold in the config "
                                 "(e.g. 0.6: answers less sure than that are queued)", status=404)
        await asyncio.to_thread(lane.predlog.flush)
        await asyncio.to_thread(lane.review.flush)
        await asyncio.to_thread(lane.review.refresh, force=True)
        out = await asyncio.to_thread(lane.review.page, after=after, limit=limit)
        count_answer(model, "review")
        return out

    async def status(self, request: Request) -> dict[str, Any]:
        """
        \f
        The service as Serve, the controller and this gateway replica see it (``raymedic status``), for
        one model: ``?model=NAME``, by default the first of ``GET /v1/models``. Without
        ``Authorization: Bearer $RAYMEDIC_ADMIN_TOKEN`` process ids, node ids, hosts, paths and the
        webhook are left out (``"view": "redacted"``); a wrong token is a 401.
        """
        full = "authorization" in request.headers
        if full:
            check_admin(request, self._admin_sha)
        lane = self._lane(request.query_params.get("model"))
        view = lane.view(await self._views.get())
        controller = await lane.link.status()
        doc = status_document(config=lane.cfg, order=lane.order, state=lane.state, tag=self._tag,
                              view=view, controller=controller, now=time.time(),
                              prediction_log=lane.predlog.health(),
                              latency=lane.latency.report(now=time.monotonic()),
                              review=lane.review.health() if lane.review.enabled else None)
        doc = {**doc, "models": list(self._lanes)}
        return {**doc, "view": "full"} if full else {**redact(doc), "view": "redacted", "note": REDACTED_NOTE}
