"""The HTTP ingress: validate, fan out to members, combine, log.

KServe V1 routes (ARCHITECTURE.md). Every client mistake becomes a 4xx with
``{"error": ...}`` that says what to fix; an unexpected failure becomes a 500 with
an error id and never a traceback. Member calls carry a per-member deadline and are
retried once on another replica (see :mod:`serve_apps.routing`), so one bad replica
costs latency, not a failed request.
"""

# No `from __future__ import annotations`: FastAPI must see real types on Serve ingress methods.

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from controllers.observe import read_app_view
from raymedic.config import APP_NAME, RaymedicConfig
from raymedic.errors import InvalidRequest, RaymedicError, ServiceUnavailable, UnknownModel
from raymedic.storage import Storage
from serve_apps.combine import combine, equal_weights
from serve_apps.predlog import FeedbackLog, KnownIds, PredictionLog, inference_time, new_inference_id
from serve_apps.routing import routed_replica
from serve_apps.validation import parse_feedback, parse_instances
from train_jobs.schema import ModelSchema

__all__ = ["Gateway", "api"]

log = logging.getLogger("ray.serve")

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Bodies beyond this are refused before parsing (413): a batch limit alone would parse them first."""

STATUS_CACHE_S = 1.0
"""How long a Serve state read is reused by /v1/status and /readyz (they are polled)."""

api = FastAPI(
    title="raymedic gateway",
    description="Self-healing ensemble serving on Ray Serve (KServe V1 style API).",
    version="1",
)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(RaymedicError)
async def _raymedic_error(_: Request, exc: RaymedicError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ServiceUnavailable) else None
    return _error(exc.http_status, str(exc), headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        return _error(404, f"no route {request.method} {request.url.path}; see GET /docs for the API")
    if exc.status_code == 405:
        return _error(405, f"{request.method} is not allowed on {request.url.path}; see GET /docs")
    return _error(exc.status_code, str(exc.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, f"invalid request: {exc.errors()}")


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.exception("unexpected gateway error %s", error_id)
    return _error(500, f"internal error {error_id}; the service logged it, please retry or report the id")


@dataclass
class _MemberAnswer:
    probabilities: np.ndarray
    replica: str
    version: str
    latency_s: float
    attempts: int


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}: send smaller batches",
                             status=413)
    if not raw.strip():
        raise InvalidRequest("the body is empty; send JSON", status=400)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc}); send a JSON object", status=400) from None


@serve.deployment(name="gateway")
@serve.ingress(api)
class Gateway:
    """Serve ingress for one model. Only the event loop mutates its state."""

    def __init__(self, config: dict[str, Any], members: dict[str, Any], versions: dict[str, str],
                 schema: dict[str, Any]) -> None:
        self._cfg = RaymedicConfig.model_validate(config)
        self._members = members
        self._versions = dict(versions)
        self._schema = ModelSchema.from_dict(schema)
        self._order = [m.name for m in self._cfg.members]
        self._weights = equal_weights(self._order)
        storage = Storage(self._cfg.storage_path)
        try:
            tag = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit use)
            tag = uuid.uuid4().hex[:8]
        self._predlog = PredictionLog(storage, self._cfg.model, tag=tag)
        self._feedback = FeedbackLog(storage, self._cfg.model, tag=tag)
        self._known = KnownIds(storage, self._cfg.model)
        self._status_cache: tuple[float, Any] = (0.0, None)
        self._flusher = asyncio.get_event_loop().create_task(self._flush_forever())

    # ---- background ----------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.gateway.log_flush_s)
            try:
                await asyncio.to_thread(self._predlog.flush)
            except Exception:
                log.exception("prediction log flush failed; retrying next period")

    async def __del__(self) -> None:
        # Graceful shutdown: write what is buffered so no accepted prediction goes unlogged.
        self._flusher.cancel()
        self._predlog.flush()

    # ---- helpers -------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model != self._cfg.model:
            raise UnknownModel(f"model {model!r} is not served here; GET /v1/models lists "
                               f"{[self._cfg.model]}")

    async def _call_member(self, name: str, rows: list[list[Any]]) -> _MemberAnswer | None:
        """One member's answer within its deadline, retried once on another replica."""
        handle = self._members[name]
        timeout = self._cfg.gateway.member_timeout_s
        avoid: list[str] = []
        for attempt in (1, 2):
            call_id = uuid.uuid4().hex
            t0 = time.monotonic()
            response = handle.predict.remote(rows, call_id=call_id, avoid=list(avoid))
            try:
                out = await asyncio.wait_for(response, timeout)
                return _MemberAnswer(np.asarray(out["probabilities"]), out["replica"], out["version"],
                                     time.monotonic() - t0, attempt)
            except asyncio.TimeoutError:
                response.cancel()
                outcome = f"timed out after {timeout:.2f} s"
            except Exception as exc:  # a dead replica, an app error in the member: retry elsewhere
                outcome = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            replica = routed_replica(call_id)
            if replica:
                avoid.append(replica)
            log.warning("member %s replica %s %s (attempt %d)%s", name, replica or "?", outcome, attempt,
                        "; retrying on another replica" if attempt == 1 else "; giving up on this member")
        return None

    # ---- routes --------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        view = await self._app_view()
        ready = view is not None and all(
            any(r.state == "RUNNING" for r in view.deployments[m].replicas)
            for m in self._order if m in view.deployments
        )
        if not ready:
            return _error(503, "not ready: some ensemble member has no running replica yet; retry shortly",
                          {"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, list[str]]:
        return {"models": [self._cfg.model]}

    @api.get("/v1/models/{model}")
    async def model_info(self, model: str) -> dict[str, Any]:
        self._check_model(model)
        view = await self._app_view()
        return {
            "name": self._cfg.model,
            "ready": view is not None and view.running,
            "version": self._model_version(self._order),
            "members": self._versions,
            "schema": {"features": [f.to_dict() for f in self._schema.features],
                       "classes": list(self._schema.classes), "target": self._schema.target},
            "limits": {"max_batch_size": self._cfg.gateway.max_batch_size,
                       "reject_out_of_range": self._cfg.gateway.reject_out_of_range,
                       "missing_values": "reject"},
        }

    def _model_version(self, members: list[str] | tuple[str, ...]) -> str:
        return ",".join(f"{m}:{self._versions[m]}" for m in members)

    @api.post("/v1/models/{model}:predict")
    async def predict(self, model: str, request: Request) -> dict[str, Any]:
        self._check_model(model)
        body = await _json_body(request)
        rows = parse_instances(body, self._schema, max_batch=self._cfg.gateway.max_batch_size,
                               reject_out_of_range=self._cfg.gateway.reject_out_of_range)
        results = await asyncio.gather(*(self._call_member(m, rows) for m in self._order))
        answers = {m: r for m, r in zip(self._order, results) if r is not None}
        combo = combine({m: a.probabilities for m, a in answers.items()}, self._weights,
                        fallback=self._cfg.fallback_member, min_members=self._cfg.gateway.min_members)
        if combo is None:
            raise ServiceUnavailable(
                f"no ensemble member answered within {self._cfg.gateway.member_timeout_s:.1f} s "
                "(each tried on two replicas); retry shortly", retry_after_s=1)
        classes = self._schema.classes
        probs = combo.probabilities
        labels = [classes[int(k)] for k in probs.argmax(axis=1)]
        now = time.time()
        ids = [new_inference_id(now) for _ in rows]
        version = self._model_version(combo.members_used)
        outputs = [
            json.dumps({m: {"probabilities": answers[m].probabilities[i].round(6).tolist(),
                            "replica": answers[m].replica, "version": answers[m].version}
                        for m in answers})
            for i in range(len(rows))
        ]
        self._known.add(ids)
        self._predlog.append(
            {"inference_id": ids[i], "ts": now, "model": self._cfg.model, "model_version": version,
             "features": json.dumps(rows[i]), "member_outputs": outputs[i], "prediction": json.dumps(labels[i]),
             "probabilities": probs[i].tolist(), "degraded": combo.degraded}
            for i in range(len(rows))
        )
        return {"predictions": labels, "probabilities": probs.round(6).tolist(), "inference_ids": ids,
                "model_version": version, "degraded": combo.degraded}

    @api.post("/v1/models/{model}:feedback")
    async def feedback(self, model: str, request: Request) -> dict[str, Any]:
        self._check_model(model)
        body = await _json_body(request)
        fb = parse_feedback(body, self._schema, max_batch=self._cfg.gateway.max_batch_size)
        # An id issued by another gateway replica reaches the durable log within one flush period.
        newest = max((inference_time(i) or 0.0) for i in fb.inference_ids)
        wait = newest + self._cfg.gateway.log_flush_s + 0.5 - time.time()
        unknown = await asyncio.to_thread(self._known.unknown, fb.inference_ids)
        if unknown and wait > 0:
            await asyncio.sleep(min(wait, self._cfg.gateway.log_flush_s + 0.5))
            unknown = await asyncio.to_thread(self._known.unknown, unknown)
        unknown_set = set(unknown)
        keep = [(i, lab) for i, lab in zip(fb.inference_ids, fb.labels) if i not in unknown_set]
        if keep:
            await asyncio.to_thread(self._feedback.write, [i for i, _ in keep], [lab for _, lab in keep])
        return {"accepted": len(keep), "unknown_ids": unknown}

    @api.get("/v1/status")
    async def status(self) -> dict[str, Any]:
        view = await self._app_view()
        members = []
        for name in self._order:
            dep = view.deployments.get(name) if view else None
            members.append({
                "name": name,
                "version": self._versions[name],
                "weight": round(self._weights.get(name, 0.0), 6),
                "fallback": name == self._cfg.fallback_member,
                "state": dep.status if dep else "UNKNOWN",
                "replicas": [{"id": r.id, "state": r.state, "pid": r.pid, "node_id": r.node_id}
                             for r in (dep.replicas if dep else ())],
            })
        gw = view.deployments.get("gateway") if view else None
        return {
            "model": self._cfg.model,
            "model_version": self._model_version(self._order),
            "application": {"name": APP_NAME, "status": view.status if view else "UNKNOWN"},
            "gateway": {"state": gw.status if gw else "UNKNOWN",
                        "replicas": [{"id": r.id, "state": r.state} for r in (gw.replicas if gw else ())]},
            "members": members,
            "drift": {},
            "incidents": [],
            "actions": [],
            "controller": {"state": "not running", "note": "the healing controller is not deployed yet"},
        }

    async def _app_view(self):
        ts, view = self._status_cache
        if time.monotonic() - ts > STATUS_CACHE_S:
            try:
                view = await asyncio.to_thread(read_app_view, APP_NAME)
            except Exception:
                log.exception("could not read Serve state; reusing the last view")
            self._status_cache = (time.monotonic(), view)
        return view
