"""The gateway's FastAPI application: error answers, JSON bodies, request counting.

Every error a client can see is a JSON ``{"error": ...}`` that says what to fix:
raymedic's own errors carry their HTTP status (a :class:`~raymedic.errors.ServiceUnavailable`
also a ``Retry-After``), unknown routes and methods point at ``GET /docs``, and an
unexpected failure becomes a 500 with an error id (logged with its traceback) and
never a traceback in the answer.

Route docstrings: FastAPI publishes the text of a route method's docstring before a
form feed (``\\f``) as the route's OpenAPI description, and the document is a
contract (``raymedic openapi``, ``GET /openapi.json``). So a route's notes for
developers follow a ``\\f``, and a route that has no public description starts its
docstring with one.
"""

# No `from __future__ import annotations`: FastAPI must see real types on handlers.

import asyncio
import json
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException

from raymedic import metrics
from raymedic.errors import InvalidRequest, RaymedicError
from raymedic.logs import get_logger
from serve_apps.stages import HEADER, StageTimer

__all__ = [
    "MAX_BODY_BYTES",
    "PARSE_OFF_LOOP_BYTES",
    "api",
    "count_answer",
    "error_response",
    "json_body",
    "parse_json",
    "profiled_response",
]

log = get_logger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Bodies beyond this are refused before parsing (413): a batch limit alone would parse them first."""
PARSE_OFF_LOOP_BYTES = 256 * 1024
"""Bodies larger than this are parsed in a worker thread: a few ms of parsing on the event loop is the most
one body may hold up the replica's other requests (a 16 MiB body takes seconds)."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

api = FastAPI(
    title="raymedic gateway",
    description="Self-healing ensemble serving on Ray Serve (KServe V1 style API).",
    version="1",
)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error answer, ``{"error": message}``, so clients parse one thing.

    Args:
        status: the HTTP status code.
        message: what is wrong and what to do about it.
        headers: extra headers (``Retry-After`` on a 503).
    """
    return JSONResponse({"error": message}, status_code=status, headers=headers)


_ANSWER = TypeAdapter(dict[str, Any])
"""What FastAPI does with a route's ``dict[str, Any]`` answer (validate, then pydantic's JSON dump): a
profiled answer is encoded the same way inside the route, so its ``encode`` stage is the real cost."""


def profiled_response(answer: dict[str, Any], timer: StageTimer) -> Response:
    """``answer`` encoded as FastAPI encodes a route's dict, with ``timer``'s figures (its ``encode`` stage
    included) in the ``Server-Timing`` header (``gateway.profile``)."""
    body = _ANSWER.dump_json(_ANSWER.validate_python(answer))
    timer.mark("encode")
    return Response(body, media_type="application/json", headers={HEADER: timer.header()})


def count_answer(model: str, route: str, *, started: float | None = None) -> None:
    """Count one successful answer of a model route (``raymedic_requests_total`` with code 200) and,
    given the ``time.perf_counter()`` it started at, observe its duration: errors are counted by the
    error handlers, so every answered request is counted exactly once.

    Args:
        model: the model in the route's path.
        route: ``predict``, ``infer`` or ``feedback``.
        started: when the request started (``time.perf_counter()``); None records no duration.
    """
    metrics.inc("raymedic_requests_total", model=model, route=route, code=200)
    if started is not None:
        metrics.observe("raymedic_request_seconds", time.perf_counter() - started, model=model)


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
    retry = getattr(exc, "retry_after_s", None)  # a 503 (ServiceUnavailable) or a 429 (TooManyRequests)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    _count(request, exc.http_status)
    return error_response(exc.http_status, str(exc), headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        return error_response(404, f"no route {request.method} {request.url.path}; see GET /docs for the API")
    if exc.status_code == 405:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}; see GET /docs")
    return error_response(exc.status_code, str(exc.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, f"invalid request: {exc.errors()}")


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.exception("unexpected gateway error %s", error_id)
    return error_response(500, f"internal error {error_id}; the service logged it, please retry or report the id")


async def json_body(request: Request) -> Any:
    """The request's JSON body, or a 4xx that says what is wrong with it.

    The size limit is checked on the declared ``Content-Length`` before a byte is read,
    then on the raw bytes (a chunked body declares none): a batch-size limit alone
    would only apply after a huge body was already parsed into memory. A body past
    :data:`PARSE_OFF_LOOP_BYTES` is parsed in a worker thread, so the replica's event
    loop (its other requests, ``/healthz``) keeps going meanwhile.

    Raises:
        InvalidRequest: 413 past :data:`MAX_BODY_BYTES`; 400 as :func:`parse_json` says.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InvalidRequest(f"body is {declared} bytes; the limit is {MAX_BODY_BYTES}: send smaller batches",
                             status=413)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}: send smaller batches",
                             status=413)
    if not raw.strip():
        raise InvalidRequest("the body is empty; send JSON", status=400)
    if len(raw) > PARSE_OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, raw)
    return parse_json(raw)


def parse_json(raw: bytes) -> Any:
    """``raw`` parsed as JSON, or a 400 naming the problem.

    Refused: what is not JSON, a body nested deeper than Python's parser goes (``RecursionError``), an
    integer literal past Python's 4300-digit conversion limit (``ValueError``), and a string holding a
    lone UTF-16 surrogate, which can never be encoded again: echoed in an answer or written to a log it
    would fail *after* the request's work was done. Such a surrogate comes as an escape (``"\ud800"``,
    which parses) or as raw bytes (``ED A0 80``, or a lone code unit of a UTF-16 body), which
    ``json.loads`` of bytes would let through (it decodes with ``surrogatepass``): the bytes are decoded
    here, strictly, in the encoding JSON's rules detect (UTF-8, or UTF-16/32 by their zero bytes).

    >>> parse_json(b'{"a": [1, 2.5, "x"]}')
    {'a': [1, 2.5, 'x']}
    """
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the body is not valid text ({exc.reason} at byte {exc.start}); send JSON in "
                             "UTF-8", status=400) from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc}); send a JSON object", status=400) from None
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply to parse; send a flatter JSON object",
                             status=400) from None
    except ValueError as exc:  # an integer literal past Python's int conversion limit
        raise InvalidRequest(f"the body holds a number too long to read ({str(exc)[:60]}...); send numbers a "
                             "model can take", status=400) from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(body):
        raise InvalidRequest("the body holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape not in a pair); "
                             "send valid Unicode text", status=400)
    return body


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string in ``value`` (keys included) cannot be encoded as UTF-8. Only called when the raw
    body has a surrogate escape at all, so a normal body pays one regex scan and no walk."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
    return False
