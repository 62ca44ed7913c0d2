"""``raymedic bench``: recovery figures measured against plain Ray Serve in the same run.

``replica-faults``: for each fault (kill, hang, slow, wrong) drive open-loop load
at ``--rps`` with a client deadline, inject the fault into one replica, and
measure what clients saw — failures (errors and answers past the deadline), wrong
answers (final answers that differ from the fault-free service's answer for the
same input), p50/p99 latency from injection on — plus the time to detect and the
time until a replacement serves, both from the injection and ("replacement took")
from the system's reaction, which is mostly a new Ray worker importing Serve and
PyTorch (5 s on an idle 2-core machine, about 11 s under load). The same scenarios run on raymedic and on the
plain Serve baseline (:mod:`serve_apps.baseline`) of the same trained members.

``saturation``: with no fault, open-loop load at rising rates on both systems: what
each answers within the deadline at each rate, and the highest rate with no failure.
A benchmark's fault figures only mean something below that rate (on a saturated
machine they measure the machine).

``controller-step``: the healing policy's step time over synthetic observations
of 50 members × 10 replicas, and one data-quality + drift check of a 2000-row
window of 50 features (pure code, no cluster).

Figures, not assertions: they depend on the machine, and are printed as a table
and as JSON for the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from raymedic.config import RaymedicConfig, load_config
from raymedic.keys import ADMIN_TOKEN_ENV, APP_NAME
from raymedic.app.http import request_json
from raymedic.bench.loadgen import Sample, open_loop, summarize

__all__ = ["run_replica_faults", "run_saturation", "run_controller_step", "bench_cluster"]

Progress = Callable[[str], None]
FAULT_MEMBER = {"kill": "mlp", "hang": "tabresnet", "slow": "mlp", "wrong": "tabresnet"}


@dataclass(frozen=True)
class BenchSettings:
    rps: float = 50.0  # the rate; `bench saturation` shows where each system stops keeping up
    deadline_s: float = 2.0
    warmup_s: float = 3.0
    fault_s: float = 20.0
    slow_ms: float = 500.0
    faults: tuple[str, ...] = ("kill", "hang", "slow", "wrong")


# ---- controller-step --------------------------------------------------------------------------


def run_controller_step(*, members: int = 50, replicas: int = 10, steps: int = 50) -> dict[str, Any]:
    """Time :meth:`HealingPolicy.step` (plus weighting) over a synthetic fleet."""
    from controllers.policies.replica import HealingPolicy, Observation, Probe, ReplicaSnapshot
    from controllers.policies.weights import HedgeWeights, WeightingConfig
    from raymedic.config import ControllerConfig

    cfg = ControllerConfig()
    policy = HealingPolicy(cfg)
    names = [f"m{i}" for i in range(members)]
    hedge = HedgeWeights(names, WeightingConfig.from_settings(cfg))
    probes = tuple(Probe(100.0 + k * 0.5, "ok", 0.01, "") for k in range(12))
    snaps = tuple(ReplicaSnapshot(member=m, replica=f"{m}-r{r}", state="RUNNING", probes=probes)
                  for m in names for r in range(replicas))
    # One faulty replica per ten members keeps the incident path exercised.
    bad = tuple(ReplicaSnapshot(member=s.member, replica=s.replica, state="RUNNING",
                                probes=probes[:-1] + (Probe(106.0, "wrong", 0.01, ""),))
                if i % (10 * replicas) == 0 else s for i, s in enumerate(snaps))
    times = []
    for k in range(steps):
        obs = Observation(now=200.0 + k * 0.25, replicas=bad if k == steps // 2 else snaps,
                          targets={m: replicas for m in names})
        t0 = time.perf_counter()
        result = policy.step(obs)
        hedge.weights([m for m, v in result.healthy.items() if v])
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"members": members, "replicas_per_member": replicas, "steps": steps,
            "step_ms_p50": round(statistics.median(times), 2), "step_ms_max": round(times[-1], 2),
            "incidents_opened": len(policy.incidents), **run_data_check()}


def run_data_check(*, features: int = 50, rows: int = 2000, checks: int = 10) -> dict[str, Any]:
    """Time one data-quality + drift check of a window (half numeric, half categorical features)."""
    import numpy as np
    import pandas as pd

    from controllers.monitors.data import DataMonitor
    from raymedic.config import DataConfig
    from serve_apps.quality import InputTally
    from train_jobs.reference import Reference
    from train_jobs.tables import infer_schema

    rng = np.random.default_rng(0)

    def frame(n: int, shift: float) -> pd.DataFrame:
        cols = {f"x{i}": rng.normal(shift, 1, n) for i in range(features // 2)}
        cols.update({f"c{i}": rng.choice(["a", "b", "c", "d", "e"], n) for i in range(features - features // 2)})
        return pd.DataFrame({**cols, "label": rng.integers(0, 2, n)})

    train = frame(5000, 0.0)
    schema = infer_schema(train, target="label")
    cfg = DataConfig(window_rows=rows, min_rows=min(rows, 200))
    monitor = DataMonitor(schema, Reference.build(train, schema), cfg)
    tally = InputTally(schema, sample_per_batch=cfg.sample_per_batch)
    live = frame(rows, 0.5)[schema.feature_names].astype(object).values.tolist()
    for i in range(0, rows, 50):  # batches as a gateway sends them
        tally.add(live[i:i + 50])
        monitor.add(tally.drain())
    times = []
    for _ in range(checks):
        report = monitor.check()
        times.append(report.check_ms)
    return {"data_check_features": features, "data_check_rows": report.rows,
            "data_check_ms_p50": round(statistics.median(times), 2),
            "data_check_drifting": sum(f.drift != "none" for f in report.features)}


# ---- replica-faults ---------------------------------------------------------------------------


def _inputs(config: RaymedicConfig, n: int = 200) -> list[dict[str, Any]]:
    from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

    df = SyntheticGenerator(SyntheticSpec(seed=config.training.seed)).sample(n, seed=4242)
    feats = [c for c in df.columns if c != "label"]
    return [{f: float(r[f]) for f in feats} for _, r in df.iterrows()]


def _reference(url: str, inputs: Sequence[dict[str, Any]], batch: int) -> list[Any]:
    """The fault-free answers, in requests of at most ``batch`` rows (the gateway's limit)."""
    out: list[Any] = []
    for i in range(0, len(inputs), batch):
        r = request_json("POST", url, {"instances": list(inputs[i:i + batch])}, timeout_s=60)
        if r.status != 200:
            raise RuntimeError(f"reference answers failed: {r.status} {r.body}")
        out += r.body["predictions"]
    return out


def _replicas(app: str, member: str) -> list[Any]:
    from serve_apps.serve_state import read_app_view

    view = read_app_view(app)
    dep = view.deployments.get(member) if view else None
    return sorted((r for r in (dep.replicas if dep else ()) if r.state == "RUNNING"), key=lambda r: r.id)


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            v = predicate()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class _System:
    """What differs between raymedic and the baseline: deploy, inject, observe, clean up."""

    name: str
    app: str

    def __init__(self, config: RaymedicConfig, url: str) -> None:
        self.config, self.url = config, url
        self.predict_url = f"{url}/v1/models/{config.model}:predict"

    def full_strength(self) -> bool:
        return all(len(_replicas(self.app, m.name)) == self.strength(m) for m in self.config.members)

    @staticmethod
    def strength(member: Any) -> int:
        """Replicas a whole member runs: both systems get the same processes (raymedic holds its
        ``standby`` ones out of traffic; plain Serve serves with all of them)."""
        return member.replicas + member.standby


class _Raymedic(_System):
    name, app = "raymedic", APP_NAME

    def deploy(self, progress: Progress) -> None:
        from raymedic.app import service

        service.deploy(self.config, host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1]), progress=progress)
        service.wait_ready(self.url, self.config.model, timeout_s=300, progress=progress)

    def ready(self) -> bool:
        st = request_json("GET", f"{self.url}/v1/status", timeout_s=10).body
        healthy = st["controller"].get("healthy", {})
        return self.full_strength() and all(len(healthy.get(m.name, ())) == self.strength(m)
                                            for m in self.config.members) and not any(
            st["controller"].get("avoid", {}).values())

    def inject(self, fault: str, member: str, slow_ms: float) -> dict[str, Any]:
        r = request_json("POST", f"{self.url}/v1/admin/chaos",
                         {"fault": fault, "member": member, "delay_ms": slow_ms if fault == "slow" else None},
                         headers={"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}, timeout_s=30)
        if r.status != 200:
            raise RuntimeError(f"chaos {fault} failed: {r.status} {r.body}")
        return r.body

    def outcome(self, replica: str, injected_at: float, member: str) -> dict[str, Any]:
        def incident() -> dict[str, Any] | None:
            st = request_json("GET", f"{self.url}/v1/status", timeout_s=10).body
            return next((i for i in st["incidents"] if i["replica"] == replica), None)

        try:  # a replacement may still be starting when the load window ends: give it a minute
            inc = _wait(lambda: (i := incident()) and i["status"] != "open" and i, 60, "the incident to close")
        except TimeoutError:
            inc = incident()
        if inc is None:
            return {"detect_s": None, "recover_s": None}
        return {"detect_s": round(inc["detected_at"] - injected_at, 2),
                "recover_s": None if inc["recovered_at"] is None else round(inc["recovered_at"] - injected_at, 2)}

    def clear(self) -> None:
        request_json("POST", f"{self.url}/v1/admin/chaos/clear", {},
                     headers={"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}, timeout_s=60)

    def remove(self) -> None:
        from raymedic.app import service

        service.undeploy()


class _Baseline(_System):
    name = "plain Serve"
    app = "baseline"

    def deploy(self, progress: Progress) -> None:
        from ray import serve

        from serve_apps.baseline import build_baseline

        progress("deploying the plain Ray Serve baseline (same members, default router and health checks)")
        serve.run(build_baseline(self.config), name=self.app, route_prefix="/", blocking=False)
        _wait(lambda: request_json("POST", self.predict_url, {"instances": _inputs(self.config, 1)},
                                   timeout_s=10).status == 200, 300, "the baseline to answer")

    def ready(self) -> bool:
        return self.full_strength()

    def _handle(self, member: str) -> Any:
        from ray import serve

        return serve.get_deployment_handle(member, app_name=self.app)

    def inject(self, fault: str, member: str, slow_ms: float) -> dict[str, Any]:
        target = _replicas(self.app, member)[0]
        if fault == "kill":
            from serve_apps.chaos import sigkill_replica

            return {"replica": target.id, **sigkill_replica(int(target.pid), target.node_id)}
        handle = self._handle(member)
        for _ in range(200):  # Serve's router picks the replica; `only` makes the others decline
            out = handle.chaos.remote(fault, slow_ms if fault == "slow" else None, only=target.id).result(
                timeout_s=10)
            if out.get("applied"):
                return out
        raise RuntimeError(f"could not reach replica {target.id} of {member}")

    def outcome(self, replica: str, injected_at: float, member: str) -> dict[str, Any]:
        return dict(self._seen)

    def watch(self, replica: str, member: str, injected_at: float, until: float, keep: bool = False) -> None:
        """Poll Serve's own view: when did it notice, when was a replacement running?"""
        if not keep:
            self._seen: dict[str, Any] = {"detect_s": None, "recover_s": None}
        target = next(self.strength(m) for m in self.config.members if m.name == member)
        while time.time() < until:
            try:
                running = [r.id for r in _replicas(self.app, member)]
            except Exception:
                running = None
            if running is not None:
                now = round(time.time() - injected_at, 2)
                if replica not in running and self._seen["detect_s"] is None:
                    self._seen["detect_s"] = now
                if replica not in running and len(running) >= target and self._seen["recover_s"] is None:
                    self._seen["recover_s"] = now
                    return
            time.sleep(0.25)

    def clear(self) -> None:
        for m in self.config.members:
            handle = self._handle(m.name)
            pending = {r.id for r in _replicas(self.app, m.name)}
            for _ in range(200):
                if not pending:
                    break
                try:
                    out = handle.chaos.remote(None, only=sorted(pending)[0]).result(timeout_s=5)
                    if out.get("applied"):
                        pending.discard(out["replica"])
                except Exception:
                    pending = {r.id for r in _replicas(self.app, m.name)} & pending

    def remove(self) -> None:
        from ray import serve

        serve.delete(self.app)


def _scenario(system: _System, fault: str, s: BenchSettings, inputs: list[dict[str, Any]], reference: list[Any],
              progress: Progress) -> dict[str, Any]:
    member = FAULT_MEMBER[fault]
    _wait(system.ready, 180, f"{system.name} to be at full strength before {fault}")
    injected: dict[str, Any] = {}

    async def drive() -> list[Sample]:
        load = asyncio.ensure_future(open_loop(system.predict_url, inputs, rps=s.rps,
                                               duration_s=s.warmup_s + s.fault_s, deadline_s=s.deadline_s))
        await asyncio.sleep(s.warmup_s)
        injected["at"] = time.time()
        injected.update(await asyncio.to_thread(system.inject, fault, member, s.slow_ms))
        if isinstance(system, _Baseline):
            await asyncio.to_thread(system.watch, injected["replica"], member, injected["at"],
                                    injected["at"] + s.fault_s)
        out = await load
        if isinstance(system, _Baseline) and fault == "kill" and system.outcome("", 0, member)["recover_s"] is None:
            await asyncio.to_thread(system.watch, injected["replica"], member, injected["at"],
                                    time.time() + 60, keep=True)
        return out

    samples = asyncio.run(drive())
    result = summarize(samples, reference, since=injected["at"])
    before = summarize([x for x in samples if x.sent_at < injected["at"]], reference)
    result.update(before_failed=before["failed"], before_p99_ms=before["p99_ms"])
    result.update(system.outcome(injected["replica"], injected["at"], member))
    # From the system's reaction (restart or Serve noticing) to a replacement serving: the replica start itself.
    result["replace_s"] = (None if result["recover_s"] is None or result["detect_s"] is None
                           else round(result["recover_s"] - result["detect_s"], 2))
    result.update({"system": system.name, "fault": fault, "member": member, "replica": injected["replica"]})
    progress(f"  {system.name:<12} {fault:<6} failed {result['failed']:>4}/{result['requests']:<5} "
             f"wrong {result['wrong']:>4}  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  "
             f"detect {result['detect_s']} s  recover {result['recover_s']} s")
    system.clear()
    try:  # the next fault starts from a whole service (plain Serve: the fault was cleared above)
        _wait(system.ready, 120, f"{system.name} to be whole again")
    except TimeoutError:
        progress(f"  ({system.name} did not reach full strength within 120 s)")
    return result


@contextlib.contextmanager
def bench_cluster(config_path: str | None, progress: Progress, *, chaos: bool = False
                  ) -> Iterator[RaymedicConfig]:
    """An embedded Ray cluster and the config a benchmark deploys (storage under
    ``RAYMEDIC_HOME/bench-storage``, its trained registry kept, every other state of an earlier run
    cleared, the model trained if it is not); everything started here is shut down on exit."""
    import ray

    from cluster.connect import LOCAL_LOGICAL_CPUS, start_embedded
    from cluster.runstate import raymedic_home
    from raymedic.app import service
    from raymedic.storage import Storage

    os.environ.setdefault(ADMIN_TOKEN_ENV, os.urandom(16).hex())  # before any deploy: the admin routes' token
    cfg = load_config(config_path).config
    storage = str(raymedic_home() / "bench-storage")
    update: dict[str, Any] = {"storage_path": storage}
    if chaos:
        update["chaos"] = cfg.chaos.model_copy(update={"enabled": True})
    cfg = cfg.model_copy(update=update).resolved()
    for stale in (f"controller/{cfg.model}", f"audit/{cfg.model}", f"logs/{cfg.model}", f"retrain/{cfg.model}"):
        Storage(storage).delete(stale)  # keep the trained registry, start everything else from scratch
    progress(f"starting an embedded local Ray cluster ({LOCAL_LOGICAL_CPUS} logical CPUs)")
    start_embedded(log_to_driver=False)
    try:
        service.ensure_trained(cfg, progress)
        yield cfg
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()


def run_replica_faults(*, config_path: str | None, port: int, settings: BenchSettings,
                       progress: Progress) -> dict[str, Any]:
    """Both systems, every fault, one embedded cluster; returns the figures."""
    from ray import serve

    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    with bench_cluster(config_path, progress, chaos=True) as cfg:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        inputs = _inputs(cfg)
        for system in (_Baseline(cfg, url), _Raymedic(cfg, url)):
            system.deploy(progress)
            reference = _reference(system.predict_url, inputs, cfg.gateway.max_batch_size)
            _wait(system.ready, 180, f"{system.name} to be whole")
            asyncio.run(open_loop(system.predict_url, inputs, rps=settings.rps, duration_s=10,
                                  deadline_s=settings.deadline_s))  # warm-up, not measured
            progress(f"{system.name}: {len(settings.faults)} faults, {settings.rps:.0f} req/s open loop, "
                     f"client deadline {settings.deadline_s:.1f} s, {settings.fault_s:.0f} s after each fault")
            for fault in settings.faults:
                results.append(_scenario(system, fault, settings, inputs, reference, progress))
            system.remove()
        step = run_controller_step()
    return {"settings": settings.__dict__, "results": results, "controller_step": step}


def run_saturation(*, config_path: str | None, port: int, rates: Sequence[float], duration_s: float = 15.0,
                   deadline_s: float = 2.0, progress: Progress) -> dict[str, Any]:
    """Both systems at each rate (no fault), one embedded cluster; returns the figures."""
    from ray import serve

    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    with bench_cluster(config_path, progress) as cfg:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        inputs = _inputs(cfg)
        for system in (_Baseline(cfg, url), _Raymedic(cfg, url)):
            system.deploy(progress)
            _wait(system.ready, 180, f"{system.name} to be whole")
            asyncio.run(open_loop(system.predict_url, inputs, rps=min(rates), duration_s=10,
                                  deadline_s=deadline_s))  # warm-up, not measured
            for rps in sorted(rates):
                samples = asyncio.run(open_loop(system.predict_url, inputs, rps=rps, duration_s=duration_s,
                                                deadline_s=deadline_s))
                row = {"system": system.name, "rps": rps, **summarize(samples)}
                results.append(row)
                progress(f"  {system.name:<12} {rps:>5.0f} req/s: failed {row['failed']:>4}/{row['requests']:<5} "
                         f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms")
                if row["failed"] * 2 > row["requests"]:  # past saturation: higher rates only fail more
                    progress(f"  {system.name} failed most requests at {rps:.0f} req/s: higher rates not run")
                    break
                try:  # an overloaded system drains its queues before the next rate
                    _wait(system.ready, 60, f"{system.name} to settle")
                except TimeoutError:
                    pass
            system.remove()  # serve.delete returns once its replicas are stopped: the next gets the whole machine
    best = {name: max((r["rps"] for r in results if r["system"] == name and r["failed"] == 0), default=None)
            for name in ("plain Serve", "raymedic")}
    return {"settings": {"rates": sorted(rates), "duration_s": duration_s, "deadline_s": deadline_s},
            "results": results, "max_rps_without_failure": best}


def format_saturation(report: dict[str, Any]) -> str:
    st = report["settings"]
    by = {(r["system"], r["rps"]): r for r in report["results"]}
    lines = [f"open loop, {st['duration_s']:.0f} s per rate, client deadline {st['deadline_s']} s, no fault",
             f"{'req/s':>6} {'metric':<16} {'plain Serve':>12} {'raymedic':>10} {'raymedic/plain':>15}"]
    for rps in st["rates"]:
        b, r = by.get(("plain Serve", rps), {}), by.get(("raymedic", rps), {})
        if not b and not r:
            continue
        for key, label in (("failed", "failed requests"), ("p50_ms", "p50 (ms)"), ("p99_ms", "p99 (ms)")):
            show = lambda v: "-" if v is None else v  # noqa: E731
            lines.append(f"{rps:>6.0f} {label:<16} {str(show(b.get(key))):>12} {str(show(r.get(key))):>10} "
                         f"{_ratio(r.get(key), b.get(key)):>15}")
    best = report["max_rps_without_failure"]
    lines.append(f"highest rate without a failure: plain Serve {best['plain Serve']}, raymedic {best['raymedic']} req/s")
    return "\n".join(lines)


def _ratio(a: Any, b: Any) -> str:
    if a is None or b is None:
        return "-"
    if b == 0:
        return "=" if a == 0 else "∞"
    return f"{a / b:.2f}×"


def format_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    by = {(r["system"], r["fault"]): r for r in rows}
    st = report["settings"]
    lines = [f"{st['rps']:.0f} req/s open loop, client deadline {st['deadline_s']} s, figures from the injection on "
             f"({st['fault_s']:.0f} s)",
             f"{'fault':<6} {'metric':<20} {'plain Serve':>12} {'raymedic':>10} {'raymedic/plain':>15}"]
    for fault in report["settings"]["faults"]:
        b, r = by.get(("plain Serve", fault)), by.get(("raymedic", fault))
        if not b or not r:
            continue
        for key, label in (("before_p99_ms", "p99 before (ms)"), ("failed", "failed requests"), ("wrong", "wrong answers"),
                           ("last_wrong_after_s", "last wrong at (s)"), ("p50_ms", "p50 (ms)"),
                           ("p99_ms", "p99 (ms)"), ("detect_s", "detected at (s)"), ("recover_s", "serving again (s)"),
                           ("replace_s", "replacement took (s)")):
            bv, rv = b.get(key), r.get(key)
            show = (lambda v: "never" if v is None and key in ("detect_s", "recover_s", "replace_s") else ("-" if v is None else v))
            lines.append(f"{fault:<6} {label:<20} {str(show(bv)):>12} {str(show(rv)):>10} {_ratio(rv, bv):>15}")
        lines.append("")
    st = report["controller_step"]
    lines.append(f"controller step, {st['members']} members × {st['replicas_per_member']} replicas: "
                 f"p50 {st['step_ms_p50']} ms, max {st['step_ms_max']} ms")
    if "data_check_ms_p50" in st:
        lines.append(f"data check, {st['data_check_features']} features × {st['data_check_rows']} rows: "
                     f"p50 {st['data_check_ms_p50']} ms")
    return "\n".join(lines)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
