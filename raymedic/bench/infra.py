"""``raymedic bench infra-faults``: faults of the machine under a replica, raymedic against plain Ray Serve.

The same open-loop load as ``bench replica-faults`` on both systems, one embedded
cluster, one fault at a time, each figure taken from the injection on: failed
requests (errors and answers past the client deadline), p50/p99, when the system
detected the fault and when it was healed, and each fault's own figures.

Faults are rows of a table (:data:`INFRA_FAULTS`), each an :class:`InfraFault`: what it
changes in the config both systems deploy, how it is injected into each, what is
watched while the load runs and what it reports. Today:

- ``leak``: one replica of the member allocates and holds memory at a rate that
  reaches the member's ``memory_limit_mb`` about two thirds into the fault window.
  raymedic forecasts the crossing from its probes' memory readings and drains and
  restarts the replica first. Plain Serve has no such signal: its replica grows until
  the OS or Ray's memory monitor kills it — here the bench itself SIGKILLs the
  replica's process the moment its resident memory crosses the same limit (a real
  monitor acts at the node's threshold, which a 24 GB machine would reach only after
  minutes), and Serve then notices and replaces it as after any crash. Both systems'
  replica memory is read the same way (``psutil`` on the replica's process every
  0.2 s): the peak against the limit is printed.
- ``disk-fill``: a bounded file of real bytes under ``storage_path`` (``chaos
  disk-fill``). The bench sets raymedic's compaction and alert thresholds (its
  ``controller.disk_*``) just under the free space the run starts with, so that the
  fill crosses both on any disk, and reads the disk every 2 s instead of 30: raymedic
  keeps answering, compacts its prediction log, opens a ``disk_space`` alert and closes
  it once the fill is removed. Plain Serve writes no prediction log: it has nothing to
  compact or alert on (``n/a``), and its answers show what the full disk costs it.

- ``spike``: open-loop traffic at a base rate, then ``spike_factor`` (3) times it for the first
  half of the fault window, then the base rate again. It runs on a deployment of its own
  (:attr:`InfraFault.own_deployment`): one gateway replica and the config's members on both
  systems, raymedic's with ``max_replicas`` / ``target_ongoing_requests`` on the gateway and
  every member (Serve's autoscaler, :mod:`serve_apps.autoscale`) and short scaling delays, so it
  scales out during the burst and back in after it inside the window. Plain Serve keeps the same
  fixed replica count with no autoscaling: the baseline. Printed: p50/p99 before the spike and
  during it, their ratio (the issue's target: raymedic within 2x), when the first new replica ran
  and when every deployment was back at its floor.

``starved-node`` (a CPU hog on one node of a multi-node cluster) is the next row.

Figures, not assertions: they depend on the machine.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import psutil

from controllers.audit import read_audit
from raymedic.bench.cluster import (
    BenchTable,
    PlainServe,
    Progress,
    System,
    bench_cluster,
    bench_inputs,
    running_replicas,
    systems,
    wait_until,
)
from raymedic.bench.loadgen import Sample, open_loop, summarize
from raymedic.bench.report import PLAIN_SERVE, RAYMEDIC, VERSUS_HEADER, ratio, shown
from raymedic.config import RaymedicConfig
from raymedic.errors import RaymedicError
from raymedic.keys import GATEWAY_DEPLOYMENT, INFRA_BENCH_FAULTS
from raymedic.storage import Storage
from serve_apps.chaos import clear_disk_fill, disk_fill, disk_fill_limit_mb

__all__ = ["INFRA_FAULTS", "DiskFillFault", "InfraFault", "InfraSettings", "LeakFault", "Metric", "Run", "SpikeFault",
           "format_infra_table", "metrics_of", "run_infra_faults"]

MB = 1e6
SPIKE_BASE_RPS = 55.0
"""The spike's default base rate, measured on this project's 2-core machine (12 s per rate, the spike row's
fixed count: one ingress replica, members at replicas + standby): plain Serve answered 120 req/s with no
failure (p99 58 ms) and failed 62 % of 160 req/s (p99 2 s, the deadline); so 3x this rate (165 req/s)
overloads the fixed baseline, while 55 req/s is well inside it (p99 15 ms at 40)."""


@dataclass(frozen=True)
class InfraSettings:
    """How the infra-faults bench loads and breaks each system (``raymedic bench infra-faults`` flags)."""

    rps: float = 25.0  # well inside what both systems carry on a 2-core machine (`bench saturation`)
    deadline_s: float = 2.0
    warmup_s: float = 5.0
    fault_s: float = 60.0  # a leak reaches its limit 2/3 of the way in: enough for a slope of 20 s of probes
    memory_limit_mb: float = 900.0  # the leaking member's limit when the config gives it none
    disk_fill_mb: float = 1024.0
    spike_rps: float = SPIKE_BASE_RPS
    """The spike's base rate (the spike is ``spike_factor`` times it); its own, because the burst must
    overload one fixed gateway replica on this machine, which ``rps`` is chosen never to do."""
    spike_factor: float = 3.0
    faults: tuple[str, ...] = INFRA_BENCH_FAULTS


@dataclass(frozen=True)
class Metric:
    """One row of a fault's table: the result key, its label and what a missing figure reads for each
    system (``never``: an event that did not happen; ``n/a``: a figure the system has no way to have)."""

    key: str
    label: str
    plain_missing: str = "-"
    ours_missing: str = "-"


COMMON = (Metric("requests", "requests"), Metric("failed", "failed requests"),
          Metric("before_p99_ms", "p99 before (ms)"), Metric("p50_ms", "p50 (ms)"), Metric("p99_ms", "p99 (ms)"),
          Metric("detect_s", "detected at (s)", "never", "never"), Metric("heal_s", "healed at (s)", "never", "never"))
"""The rows every fault has, from the injection on."""


@dataclass
class Run:
    """One fault on one system: what the fault's methods share (the injection's answer, figures seen)."""

    system: System
    config: RaymedicConfig
    settings: InfraSettings
    member: str | None
    at: float = 0.0
    injected: dict[str, Any] = field(default_factory=dict)
    seen: dict[str, Any] = field(default_factory=dict)

    @property
    def plain(self) -> bool:
        return isinstance(self.system, PlainServe)


class InfraFault:
    """A row of the fault table. Subclasses say how the fault is made on each system and what it reports.

    The runner calls, per system: :meth:`inject` after the warm-up, :meth:`watch` in a thread while the
    load runs (it must return by ``until``), :meth:`outcome` after the load (``detect_s``, ``heal_s`` and
    the fault's own figures), then :meth:`clear`.
    """

    name = ""
    metrics: tuple[Metric, ...] = ()
    plain_blind = False
    """Plain Serve has no signal for this fault at all: its detection and heal read ``n/a``, not ``never``."""
    own_deployment = False
    """The fault needs a config no other fault should run under (e.g. autoscaling): both systems are
    deployed for it alone, from the bench's base config changed by :meth:`configure`."""

    def rps(self, s: InfraSettings) -> float:
        """The base request rate of this fault's run (default: ``--rps``)."""
        return s.rps

    def lead_s(self, s: InfraSettings) -> float:
        """Load before the injection (the "before" figures come from it)."""
        return s.warmup_s

    def extra_load(self, run: Run, url: str, inputs: list[dict[str, Any]]) -> Any:
        """A coroutine of more open-loop load started at the injection, its samples counted with the
        base load's (None: the base load only)."""
        return None

    def member(self, config: RaymedicConfig) -> str | None:
        """The member the fault hits (None: not a replica's fault)."""
        return None

    def configure(self, config: RaymedicConfig, s: InfraSettings) -> RaymedicConfig:
        """The config both systems deploy, changed as this fault needs (default: unchanged)."""
        return config

    def note(self, config: RaymedicConfig, s: InfraSettings) -> str:
        """How the fault is made on each system, printed above its rows."""
        return ""

    def inject(self, run: Run) -> None:
        raise NotImplementedError

    def watch(self, run: Run, until: float) -> None:
        """Observe the fault while the load runs (default: nothing)."""

    def outcome(self, run: Run) -> dict[str, Any]:
        raise NotImplementedError

    def clear(self, run: Run) -> None:
        run.system.clear()



def _seconds(value: float | None) -> str:
    """A progress line's time: ``n/a`` where the system has no such event (plain Serve never detects a
    leak or a full disk), not ``None s``."""
    return "n/a" if value is None else f"{value} s"

def _first_non_fallback(config: RaymedicConfig, preferred: str) -> str:
    names = [m.name for m in config.members]
    return preferred if preferred in names else next((n for n in names if n != config.fallback_member), names[0])


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process on this machine (the bench's cluster is embedded here), None once gone."""
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


class LeakFault(InfraFault):
    """A replica that leaks memory (see the module)."""

    name = "leak"
    metrics = (Metric("limit_mb", "memory limit (MB)"), Metric("start_rss_mb", "RSS at injection (MB)"),
               Metric("peak_rss_mb", "peak RSS (MB)"), Metric("mb_per_s", "leak rate (MB/s)"),
               Metric("limit_hit_s", "limit reached at (s)", "never", "never"),
               Metric("gone_s", "replica gone at (s)", "never", "never"))
    TO_LIMIT_SHARE = 2 / 3
    """The leak reaches the limit this far into the fault window (from the replica's memory at injection)."""

    def member(self, config: RaymedicConfig) -> str:
        return _first_non_fallback(config, "mlp")

    def limit_mb(self, config: RaymedicConfig, s: InfraSettings) -> float:
        return config.member(self.member(config)).memory_limit_mb or s.memory_limit_mb

    def configure(self, config: RaymedicConfig, s: InfraSettings) -> RaymedicConfig:
        name, limit = self.member(config), self.limit_mb(config, s)
        members = [m.model_copy(update={"memory_limit_mb": limit}) if m.name == name else m for m in config.members]
        return config.model_copy(update={"members": members})

    def note(self, config: RaymedicConfig, s: InfraSettings) -> str:
        return (f"leak: one {self.member(config)} replica holds more memory every 0.1 s, at a rate that reaches "
                f"memory_limit_mb ({self.limit_mb(config, s):.0f} MB) about {self.TO_LIMIT_SHARE * s.fault_s:.0f} s "
                "after the injection. plain Serve: emulated OOM kill - the bench SIGKILLs the replica's process "
                "when its RSS crosses the limit, as the kernel or Ray's memory monitor would at the node's; "
                "raymedic: its controller forecasts the crossing and drains and restarts the replica first. "
                "RSS read with psutil every 0.2 s on both.")

    def inject(self, run: Run) -> None:
        cfg, s = run.config, run.settings
        limit = self.limit_mb(cfg, s)
        replicas = running_replicas(run.system.app, cfg.deployment_of(run.member))
        start = max((m for r in replicas if r.pid and (m := _rss_mb(int(r.pid))) is not None), default=None)
        if start is None:
            raise RaymedicError(f"the bench could not read the memory of {run.member}'s replicas; is the cluster "
                                "embedded on this machine?")
        if start >= limit - 50:
            raise RaymedicError(f"{run.member}'s replicas already hold {start:.0f} MB, at its memory limit "
                                f"({limit:.0f} MB): rerun with a higher --memory-limit-mb")
        rate = round((limit - start) / (self.TO_LIMIT_SHARE * s.fault_s), 1)
        run.at = time.time()
        if run.plain:
            out = run.system.inject("leak", run.member, mb_per_s=rate, cap_mb=1.5 * limit)
        else:
            out = run.system.inject("leak", run.member, mb_per_s=rate)
        run.injected = out
        run.seen.update(limit_mb=limit, mb_per_s=rate, start_rss_mb=round(start, 1), peak_rss_mb=round(start, 1),
                        limit_hit_s=None, gone_s=None)

    def watch(self, run: Run, until: float) -> None:
        pid, limit, seen = int(run.injected["pid"]), run.seen["limit_mb"], run.seen
        while time.time() < until:
            rss = _rss_mb(pid)
            now = round(time.time() - run.at, 2)
            if rss is None:
                seen["gone_s"] = now
                break
            seen["peak_rss_mb"] = max(seen["peak_rss_mb"], round(rss, 1))
            if rss >= limit and seen["limit_hit_s"] is None:
                seen["limit_hit_s"] = now
                if run.plain:  # the emulated OOM kill: what the OS or Ray's memory monitor would do, at once
                    try:
                        os.kill(pid, signal.SIGKILL)  # the embedded cluster's replicas are this machine's processes
                    except ProcessLookupError:
                        seen["gone_s"] = now  # it died on its own just before the signal
            time.sleep(0.2)
        if run.plain and seen["gone_s"] is not None:  # then Serve's own view: noticed, replaced
            # followed past the load window by up to a minute: a replacement may still be starting
            run.system.watch(run.injected["replica"], run.member, run.at, run.at + run.settings.fault_s + 60.0)

    def outcome(self, run: Run) -> dict[str, Any]:
        if run.plain and run.seen["gone_s"] is None:  # never reached the limit in the window: nothing to notice
            return {**run.seen, "detect_s": None, "heal_s": None}
        out = run.system.outcome(run.injected["replica"], run.at, run.member)
        return {**run.seen, "detect_s": out["detect_s"], "heal_s": out["recover_s"]}


class DiskFillFault(InfraFault):
    """The service's disk filled under ``storage_path`` (see the module)."""

    name = "disk-fill"
    plain_blind = True
    metrics = (Metric("fill_mb", "filled (MB)"),
               Metric("alert_s", "alert opened at (s)", "n/a", "never"),
               Metric("compact_started_s", "compaction started (s)", "n/a", "never"),
               Metric("compacted_s", "compaction done (s)", "n/a", "never"),
               Metric("files_merged", "log parts merged", "n/a", "-"),
               Metric("alert_cleared_s", "alert closed (s after clear)", "n/a", "never"))
    PERIOD_S = 2.0
    """How often raymedic reads the disk in this bench (30 s by default: longer than the fault window)."""

    def __init__(self) -> None:
        self._thresholds: tuple[float, float, float] | None = None

    def _fill_mb(self, storage: Storage, s: InfraSettings) -> tuple[float, float, float]:
        root = storage.local_path("")
        if root is None:
            raise RaymedicError("disk-fill needs a local storage_path; the bench's is remote")
        root.mkdir(parents=True, exist_ok=True)
        u = psutil.disk_usage(str(root))
        fill = min(s.disk_fill_mb, disk_fill_limit_mb(u.free, u.total))
        if fill < 64:
            raise RaymedicError(f"only {u.free / MB:.0f} MB free under {root}: too little for disk-fill; free some "
                                "space or leave disk-fill out of --faults")
        return fill, float(u.free), float(u.total)

    def configure(self, config: RaymedicConfig, s: InfraSettings) -> RaymedicConfig:
        fill, free, total = self._fill_mb(Storage(config.storage_path), s)
        # Compaction under (free - fill/2), the alert under (free - 0.8 fill): the fill crosses both, on any disk.
        compact = max(1e-4, (free - 0.5 * fill * MB) / total)
        alert = max(1e-4, min(compact, (free - 0.8 * fill * MB) / total))
        self._thresholds = (fill, compact, alert)
        ctl = config.controller.model_copy(update={"disk_period_s": self.PERIOD_S, "disk_compact_free_fraction": compact,
                                                   "disk_alert_free_fraction": alert})
        return config.model_copy(update={"controller": ctl})

    def note(self, config: RaymedicConfig, s: InfraSettings) -> str:
        fill, compact, alert = self._thresholds or (s.disk_fill_mb, math.nan, math.nan)
        return (f"disk-fill: {fill:.0f} MB of real bytes under storage_path. raymedic's thresholds are set just under "
                f"the free space the run started with (compact under {compact:.2%} free, alert under {alert:.2%}) "
                f"and the disk read every {self.PERIOD_S:g} s, so the fill crosses both on any disk; plain Serve "
                "has no prediction log to compact and no disk alert: n/a.")

    def inject(self, run: Run) -> None:
        fill = self._thresholds[0] if self._thresholds else run.settings.disk_fill_mb
        run.at = time.time()
        if run.plain:  # the same file where raymedic's chaos route writes it
            run.injected = disk_fill(Storage(run.config.storage_path), fill)
        else:
            run.injected = run.system.inject("disk-fill", None, mb=fill)
        run.seen["fill_mb"] = fill

    def _audit(self, run: Run) -> list[dict[str, Any]]:
        return [r for r in read_audit(Storage(run.config.storage_path), run.config.model) if r["ts"] >= run.at]

    def outcome(self, run: Run) -> dict[str, Any]:
        out: dict[str, Any] = {"fill_mb": run.seen["fill_mb"], "detect_s": None, "heal_s": None, "alert_s": None,
                               "compact_started_s": None, "compacted_s": None, "files_merged": None,
                               "alert_cleared_s": None}
        if run.plain:
            return out

        def first(kind: str, outcome: str | None = None) -> dict[str, Any] | None:
            return next((r for r in self._audit(run) if r["kind"] == kind and outcome in (None, r["outcome"])), None)

        def since(rec: dict[str, Any] | None, t0: float) -> float | None:
            return None if rec is None else round(rec["ts"] - t0, 2)

        try:  # the fill's window is over; a check may be a period behind
            wait_until(lambda: first("compact") and first("data-disk_space", "opened"), 3 * self.PERIOD_S + 10,
                       "raymedic's compaction and disk alert")
        except TimeoutError:
            pass
        alert, started, done = first("data-disk_space", "opened"), first("compact-started"), first("compact")
        out.update(alert_s=since(alert, run.at), compact_started_s=since(started, run.at),
                   compacted_s=since(done, run.at),
                   files_merged=None if done is None else (done["evidence"].get("files_before", 0)
                                                           - done["evidence"].get("files_after", 0)))
        starts = [t for t in (out["alert_s"], out["compact_started_s"]) if t is not None]
        out["detect_s"] = min(starts) if starts else None
        out["heal_s"] = out["compacted_s"]
        cleared_from = time.time()
        run.system.clear()
        try:
            rec = wait_until(lambda: first("data-disk_space", "cleared"), 60, "raymedic's disk alert to close")
            out["alert_cleared_s"] = since(rec, cleared_from)
        except TimeoutError:
            pass
        return out

    def clear(self, run: Run) -> None:
        if run.plain:
            clear_disk_fill(Storage(run.config.storage_path))
        else:
            run.system.clear()


def _deployments(system: System, config: RaymedicConfig) -> dict[str, str]:
    """Each scaled deployment's label → its Serve deployment name in ``system``'s application."""
    # lazy: the baseline module imports Ray Serve, which reads the fast-path settings the cluster sets
    from serve_apps.baseline import PlainEnsemble

    gateway = PlainEnsemble.name if isinstance(system, PlainServe) else GATEWAY_DEPLOYMENT
    return {"gateway": gateway, **{m.name: config.deployment_of(m.name) for m in config.members}}


class SpikeFault(InfraFault):
    """A traffic spike: the base rate, ``spike_factor`` times it for half the window, the base again
    (see the module)."""

    name = "spike"
    plain_blind = True  # a fixed replica count has nothing to scale: n/a, not never
    own_deployment = True
    metrics = (Metric("base_rps", "base rate (req/s)"), Metric("spike_rps", "spike rate (req/s)"),
               Metric("spike_s", "spike lasts (s)"),
               Metric("pre_p50_ms", "p50 pre-spike (ms)"), Metric("pre_p99_ms", "p99 pre-spike (ms)"),
               Metric("spike_p50_ms", "p50 during spike (ms)"), Metric("spike_p99_ms", "p99 during spike (ms)"),
               Metric("spike_failed", "failed during spike"),
               Metric("p99_growth", "p99 spike / pre-spike (x)"),
               Metric("scale_out_s", "first new replica at (s)", "n/a", "never"),
               Metric("peak_replicas", "replicas at peak (all)"),
               Metric("scale_in_s", "back at floor (s after spike)", "n/a", "never"))
    GATEWAY_MAX = 3
    MEMBER_EXTRA = 1
    """raymedic may add this many serving replicas to each member (``max_replicas = replicas + this``): one,
    because on a 2-core machine the members are not what the burst overloads (a coalesced member call costs
    ~2 ms), and every new member replica is a process importing PyTorch (a core-second or more) started just
    when CPU is shortest (measured here with 2 each: 8 new processes and a 1.96 s p99 in a 165 req/s burst,
    where the same fixed count had 0.26 s at 160 req/s in a separate run)."""
    MEMBER_TARGET = 2.0
    """Member calls in flight per serving replica Serve keeps (each call carries up to 16 coalesced requests)."""
    GATEWAY_TARGET = 4.0
    """Predict requests in flight per gateway replica Serve keeps: low, so the burst shows within a second."""
    LEAD_S = 15.0
    """Base load before the spike: the pre-spike p50/p99 come from these seconds."""
    SCALE_IN_WAIT_S = 90.0
    """How long after the load the watch waits for raymedic's scale-in (its downscale delay is 10 s)."""

    def rps(self, s: InfraSettings) -> float:
        return s.spike_rps

    def lead_s(self, s: InfraSettings) -> float:
        return max(s.warmup_s, self.LEAD_S)

    def spike_s(self, s: InfraSettings) -> float:
        return s.fault_s / 2

    def configure(self, config: RaymedicConfig, s: InfraSettings) -> RaymedicConfig:
        members = [m.model_copy(update={"max_replicas": m.replicas + self.MEMBER_EXTRA,
                                        "target_ongoing_requests": self.MEMBER_TARGET}) for m in config.members]
        gateway = config.gateway.model_copy(update={
            "replicas": 1, "max_replicas": self.GATEWAY_MAX,
            "target_ongoing_requests": min(self.GATEWAY_TARGET, config.gateway.max_inflight - 1)})
        scaling = config.scaling.model_copy(update={"upscale_delay_s": 1.0, "downscale_delay_s": 10.0,
                                                    "look_back_period_s": 3.0, "metrics_interval_s": 0.5})
        return config.model_copy(update={"members": members, "gateway": gateway, "scaling": scaling})

    def note(self, config: RaymedicConfig, s: InfraSettings) -> str:
        mem = ", ".join(f"{m.name} {m.min_serve_replicas}..{m.max_serve_replicas}" for m in config.members)
        return (f"spike: {s.spike_rps:g} req/s open loop, then {s.spike_factor:g}x ({s.spike_factor * s.spike_rps:g} "
                f"req/s) for {self.spike_s(s):.0f} s, then {s.spike_rps:g} req/s again. plain Serve (the baseline): "
                f"the same fixed replica count, no autoscaling (1 ingress replica, "
                f"{', '.join(f'{m.name} {m.min_serve_replicas}' for m in config.members)}); raymedic: Serve's "
                f"autoscaler on max_replicas/target_ongoing_requests (gateway 1..{config.gateway.max_replicas}, "
                f"{mem}, upscale {config.scaling.upscale_delay_s:g} s, downscale {config.scaling.downscale_delay_s:g} "
                "s). Pre-spike figures from the base load before it; replicas counted in Serve's view every 0.25 s.")

    def extra_load(self, run: Run, url: str, inputs: list[dict[str, Any]]) -> Any:
        s = run.settings
        return open_loop(url, inputs, rps=(s.spike_factor - 1) * s.spike_rps, duration_s=self.spike_s(s),
                         deadline_s=s.deadline_s)

    def inject(self, run: Run) -> None:
        run.at = time.time()
        run.seen.update(floor=self._sizes(run), peak={}, scale_out_s=None, scale_in_s=None)
        run.seen["peak"] = dict(run.seen["floor"])

    def _sizes(self, run: Run) -> dict[str, int]:
        return {label: len(running_replicas(run.system.app, dep))
                for label, dep in _deployments(run.system, run.config).items()}

    def watch(self, run: Run, until: float) -> None:
        seen, floor = run.seen, run.seen["floor"]
        spike_end = run.at + self.spike_s(run.settings)
        # past the load: raymedic scales in only after its downscale delay; plain Serve never moves
        limit = until + (self.SCALE_IN_WAIT_S if not run.plain else 0.0)
        while time.time() < limit:
            try:
                now_sizes = self._sizes(run)
            except Exception:  # noqa: BLE001  (Serve's view can fail to read under load: next poll)
                time.sleep(0.25)
                continue
            now = time.time()
            for k, v in now_sizes.items():
                seen["peak"][k] = max(seen["peak"].get(k, 0), v)
            grown = any(v > floor.get(k, v) for k, v in now_sizes.items())
            if grown and seen["scale_out_s"] is None:
                seen["scale_out_s"] = round(now - run.at, 2)
            if (now > spike_end and seen["scale_out_s"] is not None and seen["scale_in_s"] is None
                    and all(v <= floor.get(k, v) for k, v in now_sizes.items())):
                seen["scale_in_s"] = round(now - spike_end, 2)
            if seen["scale_in_s"] is not None or (now >= until and seen["scale_out_s"] is None):
                break
            time.sleep(0.25)

    def outcome(self, run: Run) -> dict[str, Any]:
        s, seen = run.settings, run.seen
        samples: list[Sample] = run.seen.get("samples", [])
        pre = summarize([x for x in samples if x.sent_at < run.at])
        end = run.at + self.spike_s(s)
        during = summarize([x for x in samples if run.at <= x.sent_at < end])
        growth = (round(during["p99_ms"] / pre["p99_ms"], 2)
                  if during["p99_ms"] is not None and pre["p99_ms"] else None)
        out = {"base_rps": s.spike_rps, "spike_rps": s.spike_factor * s.spike_rps, "spike_s": self.spike_s(s),
               "pre_p50_ms": pre["p50_ms"], "pre_p99_ms": pre["p99_ms"], "spike_p50_ms": during["p50_ms"],
               "spike_p99_ms": during["p99_ms"], "spike_failed": during["failed"], "p99_growth": growth,
               "scale_out_s": seen["scale_out_s"], "scale_in_s": seen["scale_in_s"],
               "peak_replicas": sum(seen["peak"].values()), "peak_by_deployment": dict(seen["peak"]),
               "floor_replicas": dict(seen["floor"])}
        out["detect_s"] = out["heal_s"] = None
        if not run.plain:  # Serve's autoscaler noticed when it started a replica; healed once back at the floor
            out["detect_s"] = seen["scale_out_s"]
            out["heal_s"] = None if seen["scale_in_s"] is None else round(seen["scale_in_s"] + self.spike_s(s), 2)
        return out

    def clear(self, run: Run) -> None:
        """Nothing was injected into the service: the load simply stopped."""


INFRA_FAULTS: dict[str, Callable[[], InfraFault]] = {"leak": LeakFault, "disk-fill": DiskFillFault,
                                                     "spike": SpikeFault}
"""The fault table: name → the fault's class. ``starved-node`` goes here next."""


def _scenario(fault: InfraFault, system: System, config: RaymedicConfig, s: InfraSettings,
              inputs: list[dict[str, Any]], progress: Progress) -> dict[str, Any]:
    """One fault on one system: load, inject after the lead, measure from the injection on, clean up."""
    run = Run(system=system, config=config, settings=s, member=fault.member(config))
    wait_until(system.ready, 180, f"{system.name} to be at full strength before {fault.name}")
    lead = fault.lead_s(s)

    async def drive() -> list[Sample]:
        load = asyncio.ensure_future(open_loop(system.predict_url, inputs, rps=fault.rps(s),
                                               duration_s=lead + s.fault_s, deadline_s=s.deadline_s))
        await asyncio.sleep(lead)
        await asyncio.to_thread(fault.inject, run)
        more = fault.extra_load(run, system.predict_url, inputs)
        extra = asyncio.ensure_future(more) if more is not None else None
        watcher = asyncio.ensure_future(asyncio.to_thread(fault.watch, run, run.at + s.fault_s))
        out = await load
        if extra is not None:
            out = sorted(out + await extra, key=lambda x: x.sent_at)
        await watcher
        return out

    samples = asyncio.run(drive())
    run.seen["samples"] = samples
    result = summarize(samples, since=run.at)
    result.pop("wrong"), result.pop("last_wrong_after_s")  # infra faults do not change answers
    result["before_p99_ms"] = summarize([x for x in samples if x.sent_at < run.at])["p99_ms"]
    result.update(fault.outcome(run))
    run.seen.pop("samples", None)
    result.update({"system": system.name, "fault": fault.name, "member": run.member,
                   "replica": run.injected.get("replica")})
    progress(f"  {system.name:<12} {fault.name:<9} failed {result['failed']:>4}/{result['requests']:<5} "
             f"p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  "
             f"detect {_seconds(result.get('detect_s'))}  heal {_seconds(result.get('heal_s'))}")
    fault.clear(run)
    try:  # the next fault starts from a whole service
        wait_until(system.ready, 180, f"{system.name} to be whole again")
    except TimeoutError:
        progress(f"  ({system.name} did not reach full strength within 180 s)")
    return result


def _groups(base: RaymedicConfig, faults: list[InfraFault], s: InfraSettings
            ) -> list[tuple[RaymedicConfig, list[InfraFault]]]:
    """The deployments a run needs: one for every fault that shares the config (each changes it in turn),
    and one per fault that needs its own (:attr:`InfraFault.own_deployment`)."""
    shared = [f for f in faults if not f.own_deployment]
    groups: list[tuple[RaymedicConfig, list[InfraFault]]] = []
    if shared:
        cfg = base
        for fault in shared:
            cfg = fault.configure(cfg, s)
        groups.append((cfg, shared))
    groups += [(f.configure(base, s), [f]) for f in faults if f.own_deployment]
    return groups


def run_infra_faults(*, config_path: str | None, port: int, settings: InfraSettings, progress: Progress,
                     data: BenchTable | None = None) -> dict[str, Any]:
    """Both systems, every fault of ``settings.faults``, one embedded cluster; returns the figures.

    Returns:
        ``settings``, ``notes`` (how each fault is made, per fault) and one ``results`` row per system and fault.

    Raises:
        RaymedicError: a fault not in :data:`INFRA_FAULTS` (the message lists them), or one that cannot run
            here (e.g. too little free disk for disk-fill).
    """
    bad = [f for f in settings.faults if f not in INFRA_FAULTS]
    if bad:
        raise RaymedicError(f"unknown infra fault(s) {bad}: --faults takes a comma list of {','.join(INFRA_FAULTS)}")
    # lazy: only the cluster benches need Serve; imported before bench_cluster, where it always was
    from ray import serve

    url = f"http://127.0.0.1:{port}"
    faults = [INFRA_FAULTS[f]() for f in settings.faults]
    results: list[dict[str, Any]] = []
    with bench_cluster(config_path, progress, chaos=True, data=data) as base:
        groups = _groups(base, faults, settings)
        notes = {f.name: f.note(cfg, settings) for cfg, group in groups for f in group}
        for line in notes.values():
            progress(line)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for cfg, group in groups:
            inputs = bench_inputs(cfg, data=data)
            for system in systems(cfg, url, inputs):
                system.deploy(progress)
                wait_until(system.ready, 180, f"{system.name} to be whole")
                asyncio.run(open_loop(system.predict_url, inputs, rps=settings.rps, duration_s=10,
                                      deadline_s=settings.deadline_s))  # warm-up, not measured
                progress(f"{system.name}: {', '.join(f.name for f in group)}, {group[0].rps(settings):.0f} req/s "
                         f"open loop, client deadline {settings.deadline_s:.1f} s, {settings.fault_s:.0f} s after "
                         "each fault")
                for fault in group:
                    results.append(_scenario(fault, system, cfg, settings, inputs, progress))
                system.remove()
    return {"settings": settings.__dict__, "notes": notes, "results": results}


def metrics_of(name: str) -> tuple[Metric, ...]:
    """The table rows of fault ``name``: the common ones (detection and heal ``n/a`` on plain Serve where it is
    blind to the fault), then the fault's own."""
    fault = INFRA_FAULTS[name]
    common = tuple(Metric(m.key, m.label, "n/a", m.ours_missing) if fault.plain_blind and m.key in ("detect_s",
                                                                                                     "heal_s") else m
                   for m in COMMON)
    return (*common, *fault.metrics)


def format_infra_table(report: dict[str, Any]) -> str:
    """The figures as a table: per fault, its note, then every metric for both systems and their ratio.

    A fault run on one system only is left out (nothing to compare).
    """
    st = report["settings"]
    by = {(r["system"], r["fault"]): r for r in report["results"]}
    lines = [(f"{st['rps']:.0f} req/s open loop, client deadline {st['deadline_s']} s, figures from the injection "
              f"on ({st['fault_s']:.0f} s)")]
    for name in st["faults"]:
        plain, ours = by.get((PLAIN_SERVE, name)), by.get((RAYMEDIC, name))
        if not plain or not ours or name not in INFRA_FAULTS:
            continue
        lines += ["", report.get("notes", {}).get(name, name), f"{'fault':<9} {'metric':<28} {VERSUS_HEADER}"]
        for m in metrics_of(name):
            p, o = plain.get(m.key), ours.get(m.key)
            lines.append(f"{name:<9} {m.label:<28} {shown(p, m.plain_missing):>12} {shown(o, m.ours_missing):>10} "
                         f"{ratio(o, p):>15}")
    return "\n".join(lines)

