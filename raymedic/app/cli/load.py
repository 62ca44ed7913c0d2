"""``raymedic chaos load --rps N --for S``: an open-loop traffic spike against the running gateway.

Open loop: requests leave on a fixed schedule whether or not earlier ones came back,
as independent clients do (a closed loop would slow down exactly when the service
does and hide what a spike does to it). Each request is one valid row built from the
model's own schema (``GET /v1/models/<model>``), so any model served can be loaded.
Each second prints what completed in it (sent, ok, failed, p50/p99), then the totals;
watch ``raymedic status`` meanwhile to see members and gateway scale out, and back in
after the load ends. It is bounded (:data:`MAX_RPS`, :data:`MAX_SECONDS`) and ends by
itself (or on Ctrl-C), so there is nothing for ``chaos clear`` to undo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from raymedic.app.cli._common import service_url, unreachable
from raymedic.app.http import request_json
from raymedic.errors import RaymedicError

__all__ = ["MAX_RPS", "MAX_SECONDS", "DEADLINE_S", "check_load", "percentiles", "Tally", "cmd_load"]

MAX_RPS = 1000.0
"""Above this one client process cannot keep an open-loop schedule (and a laptop's service long since
sheds): the load generator would measure itself."""
MAX_SECONDS = 600.0
"""Ten minutes: a spike, not a soak test."""
DEADLINE_S = 10.0
"""A request unanswered after this counts as failed (as a client would give up)."""


def check_load(rps: float | None, seconds: float | None) -> tuple[float, float]:
    """The load's rate and length, or a :class:`RaymedicError` naming the flag and the fix.

    >>> check_load(50, 30)
    (50.0, 30.0)
    """
    if rps is None or seconds is None:
        raise RaymedicError("load needs --rps N and --for SECONDS (e.g. `raymedic chaos load --rps 60 --for 30`)")
    if not (math.isfinite(rps) and 0 < rps <= MAX_RPS):
        raise RaymedicError(f"--rps {rps:g} is out of range: give a rate above 0 and at most {MAX_RPS:g} requests "
                            "per second (one client process cannot keep a faster open-loop schedule)")
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise RaymedicError(f"--for {seconds:g} is out of range: give more than 0 and at most {MAX_SECONDS:g} "
                            "seconds (run it again for a longer test)")
    return float(rps), float(seconds)


def percentiles(latencies_s: Sequence[float]) -> tuple[float | None, float | None]:
    """p50 and p99 in ms (nearest rank), None for no latency.

    >>> percentiles([0.01] * 99 + [1.0])
    (10.0, 10.0)
    >>> percentiles([])
    (None, None)
    """
    lat = sorted(latencies_s)
    if not lat:
        return None, None

    def rank(q: float) -> float:
        return round(lat[max(0, math.ceil(q * len(lat)) - 1)] * 1000, 1)

    return rank(0.50), rank(0.99)


@dataclass
class Tally:
    """Requests completed (in one second, or in all), with why the failed ones failed."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def done(self, *, ok: bool, latency_s: float, reason: str | None = None) -> None:
        """One request came back (``ok``: HTTP 200 within the deadline)."""
        if ok:
            self.ok += 1
            self.latencies_s.append(latency_s)
        else:
            self.failed += 1
            self.reasons[reason or "error"] = self.reasons.get(reason or "error", 0) + 1

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON."""
        p50, p99 = percentiles(self.latencies_s)
        return {"sent": self.sent, "ok": self.ok, "failed": self.failed, "p50_ms": p50, "p99_ms": p99,
                "failures": dict(sorted(self.reasons.items()))}

    def line(self, label: str) -> str:
        """One printed line: ``label  sent N  ok N  failed N  p50 X ms  p99 Y ms``."""
        d = self.to_dict()
        lat = (f"p50 {d['p50_ms']:.0f} ms  p99 {d['p99_ms']:.0f} ms" if d["p50_ms"] is not None else "p50 -  p99 -")
        why = ("  (" + ", ".join(f"{k}: {v}" for k, v in d["failures"].items()) + ")") if d["failures"] else ""
        return f"{label}  sent {d['sent']:>5}  ok {d['ok']:>5}  failed {d['failed']:>4}  {lat}{why}"


async def run_load(url: str, instances: Sequence[dict[str, Any]], *, rps: float, seconds: float,
                   emit: Callable[[str], None], deadline_s: float = DEADLINE_S) -> Tally:
    """Send ``instances`` (one per request, cycled) to ``url`` at ``rps`` for ``seconds``; ``emit`` one line
    per second for what completed in it; the totals once every request is back or past its deadline."""
    import aiohttp  # lazy: the CLI's --help must not import the HTTP client stack

    total, second = Tally(), Tally()
    timeout = aiohttp.ClientTimeout(total=deadline_s)
    loop = asyncio.get_running_loop()

    async def one(session: Any, i: int) -> None:
        t0 = loop.time()
        ok, reason = False, None
        try:
            async with session.post(url, json={"instances": [instances[i % len(instances)]]}) as resp:
                await resp.read()
                ok, reason = resp.status == 200, f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            reason = "past the deadline"
        except aiohttp.ClientError as exc:
            reason = type(exc).__name__
        for t in (total, second):
            t.done(ok=ok, latency_s=loop.time() - t0, reason=None if ok else reason)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        start = loop.time()
        tasks: list[asyncio.Task] = []
        tick, i, n = 1, 0, int(rps * seconds)
        while i < n or any(not t.done() for t in tasks):
            now = loop.time()
            if now - start >= tick:  # a second ended: what completed in it
                emit(second.line(f"{tick:>4d}s"))
                second = Tally()
                tick += 1
                continue
            if i < n and start + i / rps <= now:
                tasks.append(asyncio.ensure_future(one(session, i)))
                total.sent += 1
                second.sent += 1
                i += 1
                continue
            wake = min(start + i / rps if i < n else math.inf, start + tick)
            await asyncio.sleep(max(0.0, min(wake - loop.time(), 0.05)))
        await asyncio.gather(*tasks)
        if second.sent or second.ok or second.failed:
            emit(second.line(f"{tick:>4d}s"))
    return total


def _model_and_instances(base: str, model: str | None) -> tuple[str, list[dict[str, Any]]]:
    try:
        if model is None:
            listing = request_json("GET", f"{base}/v1/models").body or {}
            model = (listing.get("models") or [None])[0]
            if model is None:
                raise RaymedicError(f"the service at {base} serves no model yet; wait for `raymedic up` to finish")
        info = request_json("GET", f"{base}/v1/models/{model}")
    except OSError as exc:
        raise unreachable(base, exc) from None
    if info.status != 200:
        raise RaymedicError(f"no model {model!r} at {base}: {(info.body or {}).get('error', info.status)} "
                            f"(`curl {base}/v1/models` lists them; pass --model NAME)")
    from raymedic.bench.loadgen import instances_for_schema  # lazy: numpy, only once a load really runs

    return model, instances_for_schema(info.body["schema"], 256, seed=0)


def cmd_load(args: argparse.Namespace) -> int:
    """``raymedic chaos load``: an open-loop spike against the gateway; one line per second, then totals.

    Raises:
        RaymedicError: A flag is missing or out of range, or the service does not answer.
    """
    rps, seconds = check_load(getattr(args, "rps", None), getattr(args, "for_s", None))
    base = service_url(args)
    model, instances = _model_and_instances(base, getattr(args, "model", None))
    url = f"{base}/v1/models/{model}:predict"
    quiet = bool(args.json)
    if not quiet:
        print(f"[raymedic] {rps:g} req/s for {seconds:g} s to {url} (open loop, one row each, {DEADLINE_S:g} s "
              "deadline); watch `raymedic status` for scaling", flush=True)
    started = time.time()
    total = asyncio.run(run_load(url, instances, rps=rps, seconds=seconds,
                                 emit=(lambda _line: None) if quiet else (lambda line: print(line, flush=True))))
    report = {"model": model, "rps": rps, "seconds": seconds, "started_at": started, **total.to_dict()}
    print(json.dumps(report) if quiet else total.line("total"))
    return 0
