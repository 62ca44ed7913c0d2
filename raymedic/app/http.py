"""A minimal JSON-over-HTTP client (stdlib only) for the CLI, the demo and tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

__all__ = ["Reply", "request_json"]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: the status, the body decoded from JSON (or the text where it is not JSON) and the headers."""

    status: int
    body: Any
    headers: dict[str, str]


def request_json(method: str, url: str, body: Any = None, *, timeout_s: float = 10.0,
                 raw: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """Send ``body`` as JSON (or ``raw`` bytes); never raises for HTTP error statuses."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, payload, hdrs = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, payload, hdrs = err.code, err.read(), dict(err.headers or {})
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode(errors="replace")
    return Reply(status, parsed, hdrs)
