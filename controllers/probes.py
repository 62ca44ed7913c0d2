"""Golden-input probes: each replica's real inference path, checked against answers known in advance.

A replica can answer Serve's health pings while its inference path hangs, or
answer HTTP 200 with wrong probabilities. So every ``probe_interval_s`` (with a
little jitter, so the probes of many replicas do not fall on the same steps) the
controller sends each RUNNING replica the golden rows stored with its version,
through the member's own path: ``handle.predict.remote(rows, target=replica)``,
the router's ``target`` keyword addressing one replica. The answer is classified
into a :class:`~controllers.policies.replica.ProbeOutcome`; the healing policy
reads the recent outcomes. A probe's answer also carries the replica's own memory
reading (a targeted call is a probe, so user calls never pay for it): the samples
of the leak rule (:mod:`controllers.policies.leak`), kept in a
:class:`~controllers.policies.leak.MemorySeries` and exported as
``raymedic_replica_memory_bytes``. A GPU replica's answer carries its GPU reading too
(:mod:`serve_apps.gpu`); a probe whose inference raised a GPU's error brings none, so the
replica's ``gpu_health`` is asked at once (its health probe, apart from inference). The
latest reading per replica is in :attr:`GoldenProber.gpu`.

Probes never block the loop: each is a task on the actor's event loop, and the
step only reads the outcomes that have come in. Serve's constraint: handle calls
must be made from the actor's own event loop (Serve's fast path binds a handle to
the loop that first uses it), never from a worker thread, so nothing here runs in
``asyncio.to_thread`` except registry reads.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from ray import serve

from controllers.deployment import Deployment
from controllers.monitors.vitals import VitalsBoard
from controllers.policies.gpu import gpu_error_kind
from controllers.policies.leak import MemorySample, MemorySeries
from controllers.policies.replica import Probe, ProbeOutcome
from raymedic import metrics
from raymedic.keys import APP_NAME
from raymedic.logs import get_logger
from raymedic.protocol import actor_died
from serve_apps.serve_state import AppView
from train_jobs.artifacts import GoldenSet

__all__ = ["PROBES_KEPT", "PROBE_JITTER", "Prober", "GoldenProber", "ProbeSchedule", "classify", "error_detail"]

log = get_logger(__name__)

PROBES_KEPT = 12
"""Probe outcomes remembered per replica: enough for the hang and slowness rules (a few in a row)."""
PROBE_JITTER = 0.1
"""Each replica's next probe is due after the period times a factor drawn from [1 - this, 1 + this]."""


def error_detail(exc: BaseException) -> str:
    """A failed probe's detail, ``Type: message`` of what the replica raised: Ray wraps it (a
    ``RayTaskError`` whose text starts with the remote traceback), so the original exception, its
    ``cause``, is named when there is one (a CUDA error must read as one).

    >>> error_detail(RuntimeError("CUDA error: unspecified launch failure"))
    'RuntimeError: CUDA error: unspecified launch failure'
    """
    cause = getattr(exc, "cause", None)
    inner = cause if isinstance(cause, BaseException) else exc
    return f"{type(inner).__name__}: {str(inner)[:160]}"


def classify(got: Any, want: Any, *, tolerance: float) -> tuple[ProbeOutcome, str]:
    """An answer's probabilities against the golden ones: ok within ``tolerance`` on every entry,
    else wrong, with a detail an operator can read (how far off, how many predictions flipped).

    >>> classify([[0.9, 0.1]], [[0.89, 0.11]], tolerance=0.02)
    (<ProbeOutcome.OK: 'ok'>, '')
    >>> classify([[0.2, 0.8], [0.9, 0.1]], [[0.9, 0.1], [0.9, 0.1]], tolerance=0.02)
    (<ProbeOutcome.WRONG: 'wrong'>, 'max |Δp| 0.700 on 2 golden rows, 1 predictions differ')
    """
    got = np.asarray(got, dtype=float)
    want = np.asarray(want, dtype=float)
    diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    if diff <= tolerance:
        return ProbeOutcome.OK, ""
    flipped = int((got.argmax(1) != want.argmax(1)).sum()) if got.shape == want.shape else len(want)
    return ProbeOutcome.WRONG, f"max |Δp| {diff:.3f} on {len(want)} golden rows, {flipped} predictions differ"


class ProbeSchedule:
    """When each replica's next probe is due: the period with a little jitter, or at once after a
    timeout (a possible hang is confirmed without waiting a period). Pure: times come in as ``now``.

    >>> s = ProbeSchedule(jitter=0.1, rng=random.Random(0))
    >>> s.due("r1", now=0.0, retry=False)
    True
    >>> s.sent("r1", now=0.0, interval_s=1.0)
    >>> s.due("r1", now=0.5, retry=False), s.due("r1", now=0.5, retry=True), s.due("r1", now=1.2, retry=False)
    (False, True, True)
    """

    def __init__(self, *, jitter: float = PROBE_JITTER, rng: random.Random | None = None) -> None:
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._next: dict[str, float] = {}

    def due(self, replica: str, *, now: float, retry: bool) -> bool:
        """Whether to probe ``replica`` now (``retry``: its last probe timed out or raised)."""
        return retry or now >= self._next.get(replica, float("-inf"))

    def sent(self, replica: str, *, now: float, interval_s: float) -> None:
        """A probe went out at ``now``: the next one is due a jittered period later."""
        factor = 1.0 + self.jitter * (2.0 * self._rng.random() - 1.0)
        self._next[replica] = now + interval_s * factor

    def again(self, replica: str) -> None:
        """Probe ``replica`` on the next step (its answer could not be judged)."""
        self._next.pop(replica, None)

    def forget(self, replica: str) -> None:
        """``replica`` left Serve's view."""
        self._next.pop(replica, None)


class Prober(Protocol):
    """What the controller's step needs from the probes: send the due ones, read the outcomes."""

    gpu: dict[str, dict[str, Any]]
    """replica → its latest GPU reading (replicas without a GPU never appear)."""

    def schedule(self, now: float, view: AppView, *, being_replaced: Callable[[str], bool]) -> set[str]:
        """Send every due probe; return the ids of the replicas of members that are probed."""
        ...

    def history(self, replica: str) -> tuple[Probe, ...]:
        """``replica``'s recent probe outcomes, oldest first."""
        ...

    @property
    def probed(self) -> bool:
        """Whether any probe has come back yet (before that, no member counts as unhealthy)."""
        ...

    def last_outcomes(self) -> dict[str, str]:
        """Each probed replica's latest outcome (a replica that vanishes is judged on it)."""
        ...


class GoldenProber:
    """Golden probes through each member's real inference path, one task per probe on this event loop.

    Args:
        deployment: The deployment now (golden sets, serving versions, the controller config).
        load_golden: A registered version's golden set (blocking; run in a thread), for a replica
            found answering with another version than the one deployed.
        deploying: Whether a promotion or rollback is swapping versions right now (then a replica on
            another version is expected, not stale).
        on_stale: Called with (member, replica, version served) when a replica serves another
            version than the champion outside a promotion: it should swap.
        handle_of: A member's Serve deployment handle (created on this event loop, see the module).
        clock: Wall-clock time for the probes' timestamps.
        schedule: When probes are due (a seeded one in tests).
        memory: Where the replicas' memory readings go (None: not kept).
        vitals: Where their other process vitals go (CPU share, open fds, loop lag; None: not kept).
    """

    def __init__(self, *, deployment: Callable[[], Deployment],
                 load_golden: Callable[[str, str], GoldenSet | None],
                 deploying: Callable[[], bool], on_stale: Callable[[str, str, str], None],
                 handle_of: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.time,
                 schedule: ProbeSchedule | None = None, memory: MemorySeries | None = None,
                 vitals: VitalsBoard | None = None) -> None:
        self._deployment = deployment
        self._load_golden = load_golden
        self._deploying = deploying
        self._on_stale = on_stale
        self._handle_of = handle_of or self._serve_handle
        self._clock = clock
        self._schedule = schedule or ProbeSchedule()
        self.memory = memory
        self.vitals = vitals
        self._probes: dict[str, deque[Probe]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._handles: dict[str, Any] = {}
        self._golden_other: dict[str, GoldenSet | None] = {}  # "member@version" → its golden set
        self.gpu: dict[str, dict[str, Any]] = {}
        """replica → its latest GPU reading (``member``, ``ts`` and :func:`serve_apps.gpu.gpu_reading`'s
        fields); replicas without a GPU never appear."""

    def _serve_handle(self, member: str) -> Any:
        # the member's deployment: MODEL.MEMBER for a model served beside the service's first
        return serve.get_deployment_handle(self._deployment().cfg.deployment_of(member), app_name=APP_NAME)

    def reset(self) -> None:
        """The deployment was re-read: new handles and golden sets on the next probes."""
        self._handles = {}
        self._golden_other = {}

    def _handle(self, member: str) -> Any:
        if member not in self._handles:
            self._handles[member] = self._handle_of(member)
        return self._handles[member]

    # ---- the step's reads --------------------------------------------------------------

    def history(self, replica: str) -> tuple[Probe, ...]:
        """``replica``'s recent probe outcomes, oldest first."""
        return tuple(self._probes.get(replica, ()))

    @property
    def probed(self) -> bool:
        """Whether any replica has a probe outcome."""
        return any(self._probes.values())

    def last_outcomes(self) -> dict[str, str]:
        """Each probed replica's latest outcome (for replicas that vanish from Serve's view)."""
        return {rid: str(ps[-1].outcome) for rid, ps in self._probes.items() if ps}

    # ---- sending -----------------------------------------------------------------------

    def schedule(self, now: float, view: AppView, *, being_replaced: Callable[[str], bool]) -> set[str]:
        """Send the due probes of every RUNNING replica of each member with a golden set.

        A replica with a probe in flight gets no second one; one whose last probe timed out is
        probed again at once; one being replaced is not probed at all. Replicas Serve dropped
        are forgotten. Returns the replicas of the probed members (any state).
        """
        dep = self._deployment()
        live: set[str] = set()
        for member in dep.members:
            d = view.deployments.get(member)
            if d is None or member not in dep.golden:
                continue
            for r in d.replicas:
                live.add(r.id)
                if r.state != "RUNNING":
                    continue
                task = self._tasks.get(r.id)
                if task is not None and not task.done():
                    continue
                last = self._probes.get(r.id)
                # Confirm a possible hang or failure at once: the second witness is what opens the incident.
                retry = bool(last) and last[-1].outcome in (ProbeOutcome.TIMEOUT, ProbeOutcome.ERROR)
                if not self._schedule.due(r.id, now=now, retry=retry):
                    continue
                if being_replaced(r.id):
                    continue  # no point probing it
                self._schedule.sent(r.id, now=now, interval_s=dep.cfg.controller.probe_interval_s)
                self._tasks[r.id] = asyncio.get_running_loop().create_task(self._probe(member, r.id))
        for rid in [k for k in self._probes if k not in live]:  # forget replicas Serve dropped
            self._probes.pop(rid, None)
            self.gpu.pop(rid, None)
            self._schedule.forget(rid)
            self._tasks.pop(rid, None)
        if self.memory is not None:
            self.memory.retain(live)
        if self.vitals is not None:
            self.vitals.retain(live)
        return live

    def add(self, replica: str, probe: Probe) -> None:
        """Remember one outcome (bounded to ``PROBES_KEPT``)."""
        self._probes.setdefault(replica, deque(maxlen=PROBES_KEPT)).append(probe)

    async def _golden_for(self, member: str, version: str | None) -> GoldenSet:
        """The golden set of the version a replica answered with (one mid-swap may still serve the
        previous champion: judge it against what that version should answer, not the new one's)."""
        dep = self._deployment()
        if version is None or version == dep.versions.get(member):
            return dep.golden[member]
        key = f"{member}@{version}"
        if key not in self._golden_other:
            try:
                self._golden_other[key] = await asyncio.to_thread(self._load_golden, member, version)
            except Exception as exc:  # not a registered version: judged against the champion's
                log.warning("no golden set for %s %s: %r", member, version, exc)
                self._golden_other[key] = None
        return self._golden_other[key] or dep.golden[member]

    async def _probe(self, member: str, replica: str) -> None:
        dep = self._deployment()
        sent = dep.golden[member]
        cfg = dep.cfg.controller
        timeout = cfg.probe_timeout_s
        ts = self._clock()
        t0 = time.monotonic()
        # On this event loop, through the member's own path: see the module docstring.
        response = self._handle(member).predict.remote(sent.rows, target=replica)
        detail = ""
        try:
            out = await asyncio.wait_for(response, timeout)
            golden = await self._golden_for(member, out.get("version"))
            if golden.rows != sent.rows:  # the probe raced a version swap: its rows fit neither answer; ask again
                self._schedule.again(replica)
                return
            outcome, detail = classify(out["probabilities"], golden.probabilities, tolerance=cfg.wrong_tolerance)
            served = out.get("version")
            if served and served != self._deployment().versions.get(member) and not self._deploying():
                self._on_stale(member, replica, served)
            self._remember_memory(dep.cfg.model, member, replica, out.get("memory"))
            self._remember_vitals(dep.cfg.model, member, replica, out.get("vitals"))
            self._remember_gpu(dep.cfg.model, member, replica, out.get("gpu"))
        except asyncio.TimeoutError:
            response.cancel()
            outcome, detail = ProbeOutcome.TIMEOUT, f"no answer within {timeout:.2f} s"
        except Exception as exc:
            outcome = ProbeOutcome.DEAD if actor_died(exc) else ProbeOutcome.ERROR
            detail = error_detail(exc)
        self.add(replica, Probe(ts=ts, outcome=outcome, latency_s=time.monotonic() - t0, detail=detail))
        if outcome == ProbeOutcome.ERROR and gpu_error_kind(detail) is not None:
            await self._gpu_health(dep.cfg.model, member, replica, timeout)

    async def _gpu_health(self, model: str, member: str, replica: str, timeout: float) -> None:
        """The replica's GPU health probe, after its inference raised a GPU's error (best effort: the
        error itself is already the evidence)."""
        response = self._handle(member).gpu_health.remote(target=replica)
        try:
            out = await asyncio.wait_for(response, timeout)
            self._remember_gpu(model, member, replica, out.get("gpu"))
        except Exception as exc:  # noqa: BLE001  (a replica too broken to answer: the error probe stands)
            if isinstance(exc, asyncio.TimeoutError):
                response.cancel()
            log.info("GPU health probe of %s/%s failed: %s", member, replica, error_detail(exc))

    def _remember_gpu(self, model: str, member: str, replica: str, gpu: Any) -> None:
        """Keep a replica's GPU reading and export it (nothing for a replica without a GPU)."""
        if not isinstance(gpu, dict):
            return
        self.gpu[replica] = {"member": member, "ts": self._clock(), **gpu}
        labels = {"model": model, "member": member, "replica": replica}
        if gpu.get("memory_allocated_bytes") is not None:
            metrics.set_gauge("raymedic_replica_gpu_memory_bytes", gpu["memory_allocated_bytes"], **labels)
        if gpu.get("utilization_pct") is not None:
            metrics.set_gauge("raymedic_replica_gpu_utilization_ratio", gpu["utilization_pct"] / 100.0, **labels)
        metrics.set_gauge("raymedic_replica_gpu_healthy", 1.0 if gpu.get("health") == "ok" else 0.0, **labels)

    def _remember_memory(self, model: str, member: str, replica: str, mem: Any) -> None:
        """Keep a probe answer's memory reading (stamped when it came back) and export it."""
        if self.memory is None or not isinstance(mem, dict) or "rss_bytes" not in mem:
            return
        sample = MemorySample(self._clock(), float(mem["rss_bytes"]), float(mem.get("node_total_bytes", 0)),
                              float(mem.get("node_available_bytes", 0)))
        self.memory.add(replica, sample)
        metrics.set_gauge("raymedic_replica_memory_bytes", sample.rss_bytes, model=model, member=member,
                          replica=replica)

    def _remember_vitals(self, model: str, member: str, replica: str, reading: Any) -> None:
        """Keep a probe answer's process vitals and export them as ``raymedic_replica_*`` gauges."""
        if self.vitals is None:
            return
        v = self.vitals.add(replica, reading, ts=self._clock())
        if v is None:
            return
        for gauge, value in (("raymedic_replica_cpu_share", v.cpu_share), ("raymedic_replica_open_fds", v.open_fds),
                             ("raymedic_replica_loop_lag_ms", v.loop_lag_ms)):
            if value is not None:
                metrics.set_gauge(gauge, value, model=model, member=member, replica=replica)

    def in_flight(self) -> Sequence[asyncio.Task]:
        """The probe tasks not finished yet (a test or a shutdown may wait for them)."""
        return [t for t in self._tasks.values() if not t.done()]
