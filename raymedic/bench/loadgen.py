"""Open-loop HTTP load with a client deadline, for benchmarks and the demo.

Open loop means requests leave on a fixed schedule whether or not earlier ones
came back, as real independent clients do; a closed loop would slow down exactly
when the service does and hide its failures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Sequence

import aiohttp
import numpy as np

__all__ = ["Sample", "open_loop", "summarize", "instances_for_schema"]


def instances_for_schema(schema: dict[str, Any], n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` valid, seeded instances built from a served schema alone (``GET /v1/models/{model}``'s
    ``schema``): numbers uniform in their training range, levels cycled, tensors as nested lists of their
    shape with elements uniform in the training element range. For benchmarking a model whose table the
    bench does not have (a user's, a tensor model)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        row: dict[str, Any] = {}
        for f in schema["features"]:
            lo, hi = float(f.get("min") or 0.0), float(f.get("max") or 0.0)
            if f["type"] == "categorical":
                row[f["name"]] = f["levels"][i % len(f["levels"])]
            elif f["type"] == "tensor":
                row[f["name"]] = rng.uniform(lo, hi, tuple(f["shape"])).round(6).tolist()
            elif f["type"] == "int":
                row[f["name"]] = int(rng.integers(int(lo), int(hi) + 1))
            else:
                row[f["name"]] = float(rng.uniform(lo, hi))
        out.append(row)
    return out


@dataclass(frozen=True)
class Sample:
    """One request as the client saw it: when it left, how long it took, and what came back."""

    sent_at: float  # wall clock (time.time), to line up with injected faults
    latency_s: float
    ok: bool  # HTTP 200 within the deadline
    error: str | None
    prediction: Any
    input_index: int
    server_timing: str | None = None  # the answer's Server-Timing header (a profiling gateway's stages)


async def open_loop(url: str, inputs: Sequence[dict[str, Any]], *, rps: float, duration_s: float,
                    deadline_s: float) -> list[Sample]:
    """POST one input per request at ``rps`` for ``duration_s``; every request gets ``deadline_s``."""
    samples: list[Sample] = []
    timeout = aiohttp.ClientTimeout(total=deadline_s)

    async def one(session: Any, i: int) -> None:
        sent = time.time()
        t0 = time.monotonic()
        idx = i % len(inputs)
        try:
            async with session.post(url, json={"instances": [inputs[idx]]}, timeout=timeout) as resp:
                body = await resp.json(content_type=None)
                ok = resp.status == 200
                samples.append(Sample(sent, time.monotonic() - t0, ok, None if ok else f"HTTP {resp.status}",
                                      body.get("predictions", [None])[0] if ok else None, idx,
                                      resp.headers.get("Server-Timing")))
        except asyncio.TimeoutError:
            samples.append(Sample(sent, time.monotonic() - t0, False, "past the client deadline", None, idx))
        except Exception as exc:  # connection errors are client-visible failures too
            samples.append(Sample(sent, time.monotonic() - t0, False, type(exc).__name__, None, idx))

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        start = loop.time()
        i = 0
        while True:
            at = start + i / rps
            if at - start >= duration_s:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(session, i)))
            i += 1
        await asyncio.gather(*tasks)
    samples.sort(key=lambda s: s.sent_at)
    return samples


def summarize(samples: Sequence[Sample], reference: Sequence[Any] | None = None, *,
              since: float | None = None) -> dict[str, Any]:
    """Failures, wrong answers (vs ``reference`` per input), latency percentiles."""
    window = [s for s in samples if since is None or s.sent_at >= since]
    ok = [s for s in window if s.ok]
    wrong = [s for s in ok if reference is not None and s.prediction != reference[s.input_index]]
    lat = np.array([s.latency_s for s in ok]) if ok else np.array([np.nan])
    return {
        "requests": len(window),
        "failed": len(window) - len(ok),
        "wrong": len(wrong),
        "last_wrong_after_s": None if not wrong or since is None else round(wrong[-1].sent_at - since, 2),
        "p50_ms": round(float(np.nanpercentile(lat, 50)) * 1000, 1) if ok else None,
        "p99_ms": round(float(np.nanpercentile(lat, 99)) * 1000, 1) if ok else None,
        "errors": sorted({s.error for s in window if s.error})[:5],
    }
