"""The HTTP ingress: validate, fan out to members, combine, log.

KServe V1 routes (ARCHITECTURE.md). Every client mistake becomes a 4xx with
``{"error": ...}`` that says what to fix; an unexpected failure becomes a 500 with
an error id and never a traceback. Member calls carry a per-member deadline; a call
that fails is retried at once on another replica and a call still unanswered after
``hedge_after_s`` is hedged on another replica (see :mod:`serve_apps.routing`), so
one bad replica costs a little latency, not a failed request. Replicas the
controller flags, and replicas that just failed this gateway, are routed around.

Once per sync period the gateway sends its call statistics and feedback losses to
the healing controller in one call and takes back the ensemble weights and the
avoid list; if the controller is down it keeps serving with the last it knew.
Admin routes (``/v1/admin/...``) need ``Authorization: Bearer $RAYMEDIC_ADMIN_TOKEN``;
the chaos routes exist only when chaos is enabled in the config.
"""

# No `from __future__ import annotations`: FastAPI must see real types on Serve ingress methods.

import asyncio
import hashlib
import hmac
import json
import logging
import random
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

from serve_apps.serve_state import read_app_view
from raymedic import metrics
from raymedic.config import RaymedicConfig
from raymedic.keys import APP_NAME, CONTROLLER_NAME, CONTROLLER_NAMESPACE, canary_app_name, challenger_source
from raymedic.errors import AdminDenied, InvalidRequest, RaymedicError, ServiceUnavailable, UnknownModel
from raymedic.storage import Storage
from serve_apps.chaos import FAULTS, sigkill_replica
from serve_apps.combine import combine, equal_weights
from serve_apps.predlog import FeedbackLog, KnownIds, PredictionLog, inference_time, new_inference_id
from serve_apps.routing import routed_replica
from serve_apps.telemetry import Admission, CallRecorder, HedgeBudget, LocalEjector, RecentOutputs
from serve_apps.quality import InputTally
from serve_apps.v2 import answer_to_v2, instances_from_v2, model_metadata
from serve_apps.validation import input_policies, parse_feedback, parse_instances
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


def _count(request: Request, code: int) -> None:
    """raymedic_requests_total for an answered model route (predict/feedback), any status."""
    path = request.url.path
    if path.startswith("/v1/models/") and ":" in path:
        model, _, route = path[len("/v1/models/"):].partition(":")
        metrics.inc("raymedic_requests_total", model=model[:64], route=route[:16], code=code)
    elif path.startswith("/v2/models/") and path.endswith("/infer"):
        model = path[len("/v2/models/"):-len("/infer")]
        metrics.inc("raymedic_requests_total", model=model[:64], route="infer", code=code)


@api.exception_handler(RaymedicError)
async def _raymedic_error(request: Request, exc: RaymedicError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ServiceUnavailable) else None
    _count(request, exc.http_status)
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


def _dead_error(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError))


@dataclass
class _MemberAnswer:
    probabilities: np.ndarray
    replica: str
    version: str
    latency_s: float
    attempts: int

    def rows(self, start: int, stop: int) -> "_MemberAnswer":
        """This answer for rows ``start:stop`` of a coalesced call."""
        return _MemberAnswer(self.probabilities[start:stop], self.replica, self.version, self.latency_s,
                             self.attempts)


async def _await(response: Any) -> Any:
    return await response


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
                 schema: dict[str, Any], admin_token_sha256: str | None = None) -> None:
        self._cfg = RaymedicConfig.model_validate(config)
        self._members = members
        self._versions = dict(versions)
        self._schema = ModelSchema.from_dict(schema)
        self._policies = input_policies(self._schema, self._cfg.data)
        self._tally = InputTally(self._schema, sample_per_batch=self._cfg.data.sample_per_batch)
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
        self._tag = tag
        self._admin_sha = admin_token_sha256
        self._calls = CallRecorder()
        self._admission = Admission(self._cfg.gateway.max_inflight)
        self._ejector = LocalEjector(self._cfg.gateway.eject_s)
        self._hedges = HedgeBudget(self._cfg.gateway.hedge_budget)
        self._recent = RecentOutputs()
        self._avoid: dict[str, list[str]] = {}
        self._standby: dict[str, list[str]] = {}  # healthy replicas the controller holds out of traffic
        self._epoch = -1
        self._controller: Any = None
        self._controller_seen: float | None = None
        self._paused = False
        # A challenger trial, as the controller published it: {"record", "mode", "share", "members"}.
        self._trial: dict[str, Any] | None = None
        self._challengers: dict[str, Any] = {}
        self._shadow: set[asyncio.Task] = set()
        gw = self._cfg.gateway

        async def coalesced(groups: list[list[list[Any]]]) -> list[dict[str, _MemberAnswer]]:
            return await self._fan_out_together(groups)  # called with one request's rows; Serve groups them

        self._coalesced = serve.batch(max_batch_size=gw.coalesce_requests, batch_wait_timeout_s=gw.coalesce_wait_s,
                                      max_concurrent_batches=gw.coalesce_concurrency)(coalesced)
        loop = asyncio.get_event_loop()
        self._flusher = loop.create_task(self._flush_forever())
        self._syncer = loop.create_task(self._sync_forever()) if self._cfg.controller.enabled else None

    # ---- background ----------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.gateway.log_flush_s)
            try:
                await asyncio.to_thread(self._predlog.flush)
            except Exception:
                log.exception("prediction log flush failed; retrying next period")

    async def _sync_forever(self) -> None:
        """Telemetry out, weights and avoid list in: one controller call per period."""
        import ray

        period = self._cfg.gateway.sync_period_s
        while True:
            await asyncio.sleep(period)
            batch = self._calls.drain()
            batch["data"] = self._tally.drain()
            self._export(batch)
            try:
                if self._controller is None:
                    self._controller = await asyncio.to_thread(
                        ray.get_actor, CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE)
                reply = await asyncio.wait_for(self._controller.sync.remote(self._tag, batch, self._epoch),
                                               timeout=max(1.0, 4 * period))
                self._controller_seen = time.time()
                if reply:
                    self._weights = {m: float(reply["weights"].get(m, 0.0)) for m in self._order}
                    self._avoid = {m: list(v) for m, v in reply.get("avoid", {}).items()}
                    self._standby = {m: list(v) for m, v in reply.get("standby", {}).items()}
                    self._paused = bool(reply.get("paused"))
                    self._trial = reply.get("trial") or None
                    self._versions.update(reply.get("versions") or {})  # promotions swap versions in place
                    self._epoch = int(reply["epoch"])
            except Exception as exc:  # controller down or restarting: keep the last weights
                if not isinstance(exc, (ValueError, asyncio.TimeoutError)):
                    log.debug("controller sync failed: %r", exc)
                self._controller = None

    def _export(self, batch: dict[str, Any]) -> None:
        """Member-call metrics from the drained batch: one export per period, not per call."""
        model = self._cfg.model
        for key, st in (batch.get("replicas") or {}).items():
            member, _, replica = key.partition("/")
            for outcome in ("ok", "error", "dead", "timeout", "hedged"):
                metrics.inc("raymedic_member_calls_total", st.get(outcome, 0), model=model, member=member,
                            replica=replica, outcome=outcome)
            for x in st.get("latencies") or ():
                metrics.observe("raymedic_member_call_seconds", x, model=model, member=member, replica=replica)

    async def __del__(self) -> None:
        # Graceful shutdown: write what is buffered so no accepted prediction goes unlogged.
        self._flusher.cancel()
        if self._syncer is not None:
            self._syncer.cancel()
        pending = list(self._shadow)  # shadowed requests not logged yet: cancelled, they log what they have
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._predlog.flush()

    # ---- helpers -------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model != self._cfg.model:
            raise UnknownModel(f"model {model!r} is not served here; GET /v1/models lists "
                               f"{[self._cfg.model]}")

    def _avoid_for(self, name: str, now: float) -> list[str]:
        return sorted(set(self._avoid.get(name, ())) | set(self._ejector.ejected(name, now)))

    async def _call_member(self, name: str, rows: list[list[Any]]) -> _MemberAnswer | None:
        """One member's answer within its deadline.

        A failed call is retried at once on another replica; a call still unanswered
        after ``hedge_after_s`` is hedged on another replica and the first good answer
        wins. At most two calls per member per request.
        """
        handle = self._members[name]
        gw = self._cfg.gateway
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + gw.member_timeout_s
        avoid = self._avoid_for(name, time.time())
        standby = self._standby.get(name) or None  # the router uses them only when nothing else is left
        attempts: dict[asyncio.Future, tuple[str, float, Any]] = {}

        def launch(extra: list[str]) -> None:
            call_id = uuid.uuid4().hex
            response = handle.predict.remote(rows, call_id=call_id, avoid=sorted(set(avoid) | set(extra)),
                                             standby=standby)
            fut = asyncio.ensure_future(_await(response))
            attempts[fut] = (call_id, loop.time(), response)

        def replica_of(fut: asyncio.Future) -> str | None:
            return routed_replica(attempts[fut][0])

        launch([])
        self._hedges.on_call()
        pending = set(attempts)
        tried: list[str] = []
        failed = False
        while pending:
            now = loop.time()
            if now >= deadline:
                break
            hedge_at = start + gw.hedge_after_s
            wait_until = deadline if len(attempts) >= 2 or now >= hedge_at else min(deadline, hedge_at)
            done, pending = await asyncio.wait(pending, timeout=max(0.0, wait_until - now),
                                               return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                call_id, t0, _ = attempts[fut]
                exc = fut.exception()
                if exc is None:
                    out = fut.result()
                    latency = loop.time() - t0
                    self._calls.finished(name, out["replica"], "ok", latency, was_started=False)
                    for other in pending:  # the hedge lost: that replica was slower than this one
                        other.cancel()
                        attempts[other][2].cancel()
                        slow = replica_of(other)
                        if slow and slow != out["replica"]:
                            self._calls.finished(name, slow, "hedged", loop.time() - attempts[other][1],
                                                 was_started=False)
                            self._ejector.eject(name, slow, time.time())
                    return _MemberAnswer(np.asarray(out["probabilities"]), out["replica"], out["version"],
                                         latency, len(attempts))
                failed = True
                replica = replica_of(fut)
                outcome = "dead" if _dead_error(exc) else "error"
                if replica:
                    tried.append(replica)
                    self._calls.finished(name, replica, outcome, loop.time() - t0, was_started=False)
                    self._ejector.eject(name, replica, time.time())
                log.warning("member %s replica %s failed: %s: %s", name, replica or "?", type(exc).__name__,
                            str(exc)[:200])
            first = replica_of(next(iter(attempts)))
            # Hedge only a call that reached a replica: one not yet routed is stuck in this
            # process's own queue (overload), and a second call would only deepen it.
            if len(attempts) < 2 and loop.time() < deadline and (
                    failed or (first is not None and self._hedges.try_hedge())):
                launch([r for r in tried + ([first] if first else []) if r])
                pending = {f for f in attempts if not f.done()}
        for fut in pending:  # past the deadline
            fut.cancel()
            attempts[fut][2].cancel()
            replica = replica_of(fut)
            if replica:
                self._calls.finished(name, replica, "timeout", gw.member_timeout_s, was_started=False)
                self._ejector.eject(name, replica, time.time())
            log.warning("member %s replica %s timed out after %.2f s", name, replica or "?", gw.member_timeout_s)
        return None

    async def _fan_out(self, rows: list[list[Any]]) -> dict[str, _MemberAnswer]:
        """Every member's answer for ``rows`` (members that did not answer in time are left out).

        Small requests in flight together are coalesced into one call per member (see
        ``gateway.coalesce_*``): per-call costs (routing, serialisation, a task on the replica)
        are paid once per group instead of once per request, so the ensemble keeps up with
        the request rate on few cores.
        """
        gw = self._cfg.gateway
        if gw.coalesce_requests > 1 and len(rows) <= gw.coalesce_rows:
            return await self._coalesced(rows)
        return await self._fan_out_now(rows)

    async def _fan_out_now(self, rows: list[list[Any]]) -> dict[str, _MemberAnswer]:
        results = await asyncio.gather(*(self._call_member(m, rows) for m in self._order))
        return {m: r for m, r in zip(self._order, results) if r is not None}

    async def _fan_out_together(self, groups: list[list[list[Any]]]) -> list[dict[str, _MemberAnswer]]:
        """One call per member for several requests' rows; each request gets its own rows back."""
        if len(groups) == 1:
            return [await self._fan_out_now(groups[0])]
        answers = await self._fan_out_now([row for rows in groups for row in rows])
        out, start = [], 0
        for rows in groups:
            out.append({m: a.rows(start, start + len(rows)) for m, a in answers.items()})
            start += len(rows)
        return out

    async def _call_challenger(self, name: str, rows: list[list[Any]], version: str) -> np.ndarray | None:
        """A challenger's answer within the member deadline, or None (counted as a failed call)."""
        try:
            if name not in self._challengers:
                self._challengers[name] = serve.get_deployment_handle(name, app_name=canary_app_name(name))
            out = await asyncio.wait_for(_await(self._challengers[name].predict.remote(rows)),
                                         self._cfg.gateway.member_timeout_s)
        except Exception as exc:
            self._calls.challenger_call(name, ok=False)
            log.debug("challenger of %s failed: %r", name, exc)
            return None
        if out.get("version") != version:  # an older trial's replica still answering: not this challenger
            return None
        self._calls.challenger_call(name, ok=True)
        return np.asarray(out["probabilities"], dtype=float)

    async def _log_after_shadow(self, records: list[dict[str, Any]], challengers: dict[str, asyncio.Future],
                                on_trial: dict[str, str]) -> None:
        """Log a shadowed request once its challengers answered (or gave up): the log is where another
        gateway replica finds both answers when the label reaches it there. The client never waits on it."""
        try:
            await asyncio.wait(list(challengers.values()), timeout=self._cfg.gateway.member_timeout_s + 1.0)
        finally:
            ids = [r["inference_id"] for r in records]
            for m, task in challengers.items():
                if not task.done() or task.cancelled() or task.exception() is not None or task.result() is None:
                    continue
                p = np.asarray(task.result())
                self._recent.add_source(ids, challenger_source(m), p)  # the trial's pair, joined here
                for i, r in enumerate(records):
                    if m in r["member_outputs"]:
                        r["member_outputs"][m]["challenger"] = {"probabilities": p[i].round(6).tolist(),
                                                                "version": on_trial[m]}
            self._log(records)

    def _log(self, records: list[dict[str, Any]]) -> None:
        self._predlog.append({**r, "member_outputs": json.dumps(r["member_outputs"])} for r in records)

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

    # ---- Open Inference Protocol (V2) ---------------------------------------------------

    @api.get("/v2/health/live")
    async def v2_live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def v2_ready(self) -> JSONResponse:
        ready = (await self.readyz()).status_code == 200
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{model}")
    async def v2_model(self, model: str) -> dict[str, Any]:
        self._check_model(model)
        return model_metadata(self._schema, model, self._model_version(self._order))

    @api.get("/v2/models/{model}/ready")
    async def v2_model_ready(self, model: str) -> JSONResponse:
        self._check_model(model)
        ready = (await self.readyz()).status_code == 200
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

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
                       "reject_out_of_range": self._cfg.gateway.reject_out_of_range},
            "policies": {f.name: p.to_dict() if not f.numeric else {"missing": p.missing}
                         for f, p in zip(self._schema.features, self._policies)},
        }

    def _model_version(self, members: list[str] | tuple[str, ...]) -> str:
        return ",".join(f"{m}:{self._versions[m]}" for m in members)

    @api.post("/v1/models/{model}:predict")
    async def predict(self, model: str, request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        self._check_model(model)
        with self._admission.enter():
            out = await self._predict_body(await _json_body(request))
        metrics.inc("raymedic_requests_total", model=model, route="predict", code=200)
        metrics.observe("raymedic_request_seconds", time.perf_counter() - started, model=model)
        return out

    @api.post("/v2/models/{model}/infer")
    async def infer_v2(self, model: str, request: Request) -> dict[str, Any]:
        """Open Inference Protocol (V2): typed tensors in and out, the same path as :predict."""
        started = time.perf_counter()
        self._check_model(model)
        with self._admission.enter():
            body = await _json_body(request)
            out = await self._predict_body(instances_from_v2(body, self._schema))
        metrics.inc("raymedic_requests_total", model=model, route="infer", code=200)
        metrics.observe("raymedic_request_seconds", time.perf_counter() - started, model=model)
        return answer_to_v2(out, self._schema, model, body.get("id") if isinstance(body.get("id"), str) else None)

    async def _predict_body(self, body: Any) -> dict[str, Any]:
        """Validate, fan out, combine, log: the one prediction path behind V1 and V2."""
        parsed = parse_instances(body, self._schema, max_batch=self._cfg.gateway.max_batch_size,
                                 reject_out_of_range=self._cfg.gateway.reject_out_of_range, policies=self._policies)
        rows = parsed.rows
        trial = self._trial
        on_trial = trial["members"] if trial and random.random() < float(trial["share"]) else {}
        challengers = {m: asyncio.ensure_future(self._call_challenger(m, rows, v)) for m, v in on_trial.items()}
        answers = await self._fan_out(rows)
        served = {m: a.probabilities for m, a in answers.items()}
        canary: dict[str, np.ndarray] = {}
        if challengers and trial["mode"] == "canary":  # its answer in the champion's place; the champion's kept
            got = await asyncio.gather(*challengers.values())
            canary = {m: p for m, p in zip(challengers, got) if p is not None and m in answers}
            served.update(canary)
        combo = combine(served, self._weights,
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
        # The versions that answered (a promotion swaps replicas one by one: each answer names its own).
        version = ",".join(f"{m}:{on_trial[m] if m in canary else answers[m].version}" for m in combo.members_used)
        outputs = [
            {m: {"probabilities": served[m][i].round(6).tolist(),
                 "replica": "challenger" if m in canary else answers[m].replica,
                 "version": on_trial[m] if m in canary else answers[m].version,
                 # the champion a canary stood in for: a label joined on another gateway
                 # replica (from this log) still pairs the two for the trial
                 **({"champion": {"probabilities": answers[m].probabilities[i].round(6).tolist(),
                                  "version": answers[m].version}} if m in canary else {})}
             for m in answers}
            for i in range(len(rows))
        ]
        self._known.add(ids)
        self._recent.add(ids, {m: a.probabilities for m, a in answers.items()}, ensemble=probs,
                         versions={m: a.version for m, a in answers.items()})
        for m, p in canary.items():
            self._recent.add_source(ids, challenger_source(m), p)
        records = [{"inference_id": ids[i], "ts": now, "model": self._cfg.model, "model_version": version,
                    "features": json.dumps(rows[i]), "member_outputs": outputs[i],
                    "prediction": json.dumps(labels[i]), "probabilities": probs[i].tolist(),
                    "degraded": combo.degraded} for i in range(len(rows))]
        if challengers and trial["mode"] != "canary":  # shadow: compared later, never awaited by the client
            logged = asyncio.ensure_future(self._log_after_shadow(records, challengers, on_trial))
            self._shadow.add(logged)
            logged.add_done_callback(self._shadow.discard)
        else:
            self._log(records)
        self._calls.add_confidence(probs.max(axis=1).tolist(), probs.argmax(axis=1).tolist())
        self._tally.add(rows)
        out = {"predictions": labels, "probabilities": probs.round(6).tolist(), "inference_ids": ids,
               "model_version": version, "degraded": combo.degraded}
        if parsed.warnings:
            out["warnings"] = parsed.warnings
        return out

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
            classes = [self._schema.class_index(lab) for _, lab in keep]
            kept_ids = [i for i, _ in keep]
            for i in kept_ids:  # answered by another replica: its logged answer joins the label here
                if i not in self._recent and (logged := self._known.answer(i)) is not None:
                    self._recent.add_logged(i, *logged)
            self._calls.add_losses(self._recent.losses(kept_ids, classes))
            self._calls.add_labelled(self._recent.labelled(kept_ids, classes))
        metrics.inc("raymedic_requests_total", model=model, route="feedback", code=200)
        return {"accepted": len(keep), "unknown_ids": unknown}

    @api.get("/v1/status")
    async def status(self) -> dict[str, Any]:
        view = await self._app_view()
        ctl = await self._controller_status()
        weights = (ctl or {}).get("weights") or self._weights
        quarantined = set((ctl or {}).get("quarantined") or ())
        avoid = (ctl or {}).get("avoid") or self._avoid
        standby = (ctl or {}).get("standby") or self._standby
        members = []
        for name in self._order:
            dep = view.deployments.get(name) if view else None
            flagged, spare = set(avoid.get(name, ())), set(standby.get(name, ()))
            members.append({
                "name": name,
                "version": self._versions[name],
                "weight": round(float(weights.get(name, 0.0)), 6),
                "fallback": name == self._cfg.fallback_member,
                "state": "QUARANTINED" if name in quarantined else (dep.status if dep else "UNKNOWN"),
                "replicas": [{"id": r.id, "state": ("AVOIDED" if r.id in flagged else "STANDBY" if r.id in spare
                                                    else r.state) if r.state == "RUNNING" else r.state,
                              "pid": r.pid, "node_id": r.node_id}
                             for r in (dep.replicas if dep else ())],
            })
        gw = view.deployments.get("gateway") if view else None
        if ctl is None:
            controller = {"state": "unreachable" if self._cfg.controller.enabled else "disabled",
                          "last_sync_age_s": None if self._controller_seen is None
                          else round(time.time() - self._controller_seen, 2),
                          "note": "serving with the last weights received"}
        else:
            controller = {k: v for k, v in ctl.items()
                          if k not in ("incidents", "actions", "weights", "data", "performance")}
        return {
            "model": self._cfg.model,
            "model_version": self._model_version(self._order),
            "application": {"name": APP_NAME, "status": view.status if view else "UNKNOWN"},
            "gateway": {"state": gw.status if gw else "UNKNOWN",
                        "replicas": [{"id": r.id, "state": r.state} for r in (gw.replicas if gw else ())],
                        "answered_by": {"id": self._tag, "weights": {m: round(w, 6) for m, w in self._weights.items()},
                                        "epoch": self._epoch, "avoid": self._avoid,
                                        "last_sync_age_s": None if self._controller_seen is None
                                        else round(time.time() - self._controller_seen, 2)}},
            "members": members,
            "drift": (ctl or {}).get("data", {}),
            "performance": (ctl or {}).get("performance", {}),
            "incidents": (ctl or {}).get("incidents", []),
            "actions": (ctl or {}).get("actions", []),
            "controller": controller,
        }

    async def _controller_status(self) -> dict[str, Any] | None:
        if not self._cfg.controller.enabled:
            return None
        try:
            ctl = self._controller or await asyncio.to_thread(self._lookup_controller)
            return await asyncio.wait_for(ctl.status.remote(), timeout=2.0)
        except Exception:
            return None

    @staticmethod
    def _lookup_controller() -> Any:
        import ray

        return ray.get_actor(CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE)

    # ---- admin ---------------------------------------------------------------------

    def _check_admin(self, request: Request) -> None:
        if not self._admin_sha:
            raise AdminDenied("admin routes are disabled: deploy with RAYMEDIC_ADMIN_TOKEN set "
                              "(raymedic up sets one) and send Authorization: Bearer <token>", status=403)
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token:
            raise AdminDenied("missing admin token: send Authorization: Bearer $RAYMEDIC_ADMIN_TOKEN")
        if not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), self._admin_sha):
            raise AdminDenied("wrong admin token: use the RAYMEDIC_ADMIN_TOKEN the service was deployed with")

    async def _controller_call(self, method: str, *args: Any) -> Any:
        try:
            ctl = self._controller or await asyncio.to_thread(self._lookup_controller)
            return await asyncio.wait_for(getattr(ctl, method).remote(*args), timeout=10.0)
        except Exception as exc:
            raise ServiceUnavailable(f"the healing controller is not reachable ({type(exc).__name__}); "
                                     "it is restarted automatically, retry shortly", retry_after_s=2) from None

    @api.post("/v1/admin/pause")
    async def admin_pause(self, request: Request) -> dict[str, Any]:
        self._check_admin(request)
        return await self._controller_call("set_paused", True, "admin route")

    @api.post("/v1/admin/approve")
    async def admin_approve(self, request: Request) -> dict[str, Any]:
        return await self._decide(request, True)

    @api.post("/v1/admin/reject")
    async def admin_reject(self, request: Request) -> dict[str, Any]:
        return await self._decide(request, False)

    async def _decide(self, request: Request, approve: bool) -> dict[str, Any]:
        self._check_admin(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("incident"), str):
            raise InvalidRequest('send {"incident": "<id>"}; `raymedic status` lists the pending proposals',
                                 status=400)
        return self._controller_reply(await self._controller_call("decide", body["incident"], approve,
                                                                  "admin route"))

    @api.post("/v1/admin/mode")
    async def admin_mode(self, request: Request) -> dict[str, Any]:
        self._check_admin(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or body.get("mode") not in ("auto", "approve"):
            raise InvalidRequest('send {"mode": "auto"} or {"mode": "approve"}', status=400)
        return self._controller_reply(await self._controller_call("set_mode", body["mode"], "admin route"))

    @api.post("/v1/admin/retrain")
    async def admin_retrain(self, request: Request) -> dict[str, Any]:
        self._check_admin(request)
        body = await _json_body(request) if await request.body() else {}
        if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
            raise InvalidRequest('send {} or {"reason": "<why>"}', status=400)
        return self._controller_reply(await self._controller_call("request_retrain", body.get("reason", ""),
                                                                  "admin route"))

    @api.post("/v1/admin/rollback")
    async def admin_rollback(self, request: Request) -> dict[str, Any]:
        self._check_admin(request)
        body = await _json_body(request) if await request.body() else {}
        members = body.get("members") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not (members is None or (
                isinstance(members, list) and all(isinstance(m, str) for m in members))):
            raise InvalidRequest('send {} to roll back every member, or {"members": ["<name>", ...]}', status=400)
        return self._controller_reply(await self._controller_call("rollback", members, "admin route"))

    @api.post("/v1/admin/trial")
    async def admin_trial(self, request: Request) -> dict[str, Any]:
        """Put a registered version on live trial next to its champion (canary or shadow, per config)."""
        self._check_admin(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("member"), str) or not isinstance(
                body.get("version", "challenger"), str) or body.get("mode") not in (None, "canary", "shadow"):
            raise InvalidRequest('send {"member": "<name>", "version": "<version id or alias, default '
                                 'challenger>", "mode": "canary" or "shadow" (default: the config\'s)}',
                                 status=400)
        return self._controller_reply(await self._controller_call(
            "trial", body["member"], body.get("version", "challenger"), "admin route", body.get("mode")))

    @staticmethod
    def _controller_reply(reply: dict[str, Any]) -> dict[str, Any]:
        if isinstance(reply, dict) and "error" in reply:
            raise InvalidRequest(reply["error"], status=int(reply.get("status", 409)))
        return reply

    @api.post("/v1/admin/resume")
    async def admin_resume(self, request: Request) -> dict[str, Any]:
        self._check_admin(request)
        return await self._controller_call("set_paused", False, "admin route")

    def _chaos_enabled(self, request: Request) -> None:
        if not self._cfg.chaos.enabled:  # the route does not exist without chaos
            raise StarletteHTTPException(404)
        self._check_admin(request)

    async def _running_replicas(self, member: str) -> list[Any]:
        if member not in self._members:
            raise InvalidRequest(f"unknown member {member!r}; members are {self._order}", status=404)
        self._status_cache = (0.0, self._status_cache[1])  # fresh view: chaos targets must exist now
        view = await self._app_view()
        dep = view.deployments.get(member) if view else None
        return sorted((r for r in (dep.replicas if dep else ()) if r.state == "RUNNING"), key=lambda r: r.id)

    @api.post("/v1/admin/chaos")
    async def admin_chaos(self, request: Request) -> dict[str, Any]:
        self._chaos_enabled(request)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise InvalidRequest('send {"fault": "kill|hang|slow|wrong", "member": NAME, '
                                 '"replica": ID (optional), "delay_ms": N (slow)}')
        fault, member = body.get("fault"), body.get("member")
        if fault not in FAULTS:
            raise InvalidRequest(f"fault must be one of {list(FAULTS)}, got {fault!r}")
        if not isinstance(member, str):
            raise InvalidRequest(f"member is required: one of {self._order}")
        delay_ms = body.get("delay_ms")
        if delay_ms is not None and (isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float))):
            raise InvalidRequest("delay_ms must be a number of milliseconds")
        replicas = await self._running_replicas(member)
        wanted = body.get("replica")
        if wanted is None:
            if not replicas:
                raise ServiceUnavailable(f"member {member!r} has no running replica right now", retry_after_s=2)
            standby = set(self._standby.get(member, ()))  # by default, a fault hits a replica serving traffic
            target = next((r for r in replicas if r.id not in standby), replicas[0])
        else:
            target = next((r for r in replicas if r.id == wanted), None)
            if target is None:
                raise InvalidRequest(f"member {member!r} has no running replica {wanted!r}; running: "
                                     f"{[r.id for r in replicas]}", status=404)
        if fault == "kill":
            if not target.pid:
                raise ServiceUnavailable("Serve has not reported that replica's process id yet", retry_after_s=1)
            out = await asyncio.to_thread(sigkill_replica, int(target.pid), target.node_id)
        else:
            out = await asyncio.wait_for(
                self._members[member].chaos.remote(fault, delay_ms, target=target.id), timeout=10.0)
        result = {"fault": fault, "member": member, "replica": target.id, "at": time.time(), **out}
        await self._note("chaos-injected", f"{member}/{target.id}", result)
        return result

    @api.post("/v1/admin/chaos/clear")
    async def admin_chaos_clear(self, request: Request) -> dict[str, Any]:
        self._chaos_enabled(request)
        cleared = []
        for member in self._order:
            for r in await self._running_replicas(member):
                try:
                    await asyncio.wait_for(self._members[member].chaos.remote(None, target=r.id), timeout=3.0)
                    cleared.append(f"{member}/{r.id}")
                except Exception:
                    pass  # a hung or dying replica: the controller replaces it anyway
        await self._note("chaos-cleared", self._cfg.model, {"replicas": cleared})
        return {"cleared": cleared}

    async def _note(self, kind: str, target: str, evidence: dict[str, Any]) -> None:
        try:
            ctl = self._controller or await asyncio.to_thread(self._lookup_controller)
            await asyncio.wait_for(ctl.note.remote(kind, target, evidence), timeout=2.0)
        except Exception:
            log.warning("could not record %s in the audit log (controller unreachable)", kind)

    async def _app_view(self):
        ts, view = self._status_cache
        if time.monotonic() - ts > STATUS_CACHE_S:
            try:
                view = await asyncio.to_thread(read_app_view, APP_NAME)
            except Exception:
                log.exception("could not read Serve state; reusing the last view")
            self._status_cache = (time.monotonic(), view)
        return view
