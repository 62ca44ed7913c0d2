"""The embedded cluster a benchmark runs on, and the two systems it measures: raymedic and plain Serve.

:func:`bench_cluster` starts an embedded local Ray cluster with the trained model;
:class:`RaymedicSystem` and :class:`PlainServe` deploy onto it the same trained
members, one with raymedic's gateway and healing controller, one behind Ray
Serve's defaults (:mod:`serve_apps.baseline`), and offer one surface (deploy,
ready, inject, outcome, clear, remove) that the replica-faults and saturation
benches drive in the same way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import ray

from cluster.connect import LOCAL_LOGICAL_CPUS, start_embedded, user_code_importable
from cluster.runstate import raymedic_home
from raymedic.app import service
from raymedic.app.http import request_json
from raymedic.bench.loadgen import instances_for_schema
from raymedic.bench.report import PLAIN_SERVE, RAYMEDIC
from raymedic.config import RaymedicConfig, load_config
from raymedic.errors import RaymedicError
from raymedic.keys import ADMIN_TOKEN_ENV, APP_NAME
from raymedic.storage import Storage
from serve_apps.chaos import sigkill_replica
from train_jobs.registry import ModelRegistry
from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec
from train_jobs.tables import fingerprint, json_row, load_table

__all__ = ["Progress", "BenchTable", "bench_cluster", "bench_inputs", "running_replicas", "wait_until", "System",
           "RaymedicSystem", "PlainServe", "systems"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchTable:
    """The user's table a bench trains its model on and replays rows of (instead of the built-in
    synthetic table): ``raymedic bench ... --config X --data TABLE --target COL``.

    The bench keeps its own registry (so its runs never move the user's champions); it trains
    there once per table, and again only when the table's content changes.
    """

    path: str
    target: str

    @functools.cached_property
    def frame(self) -> Any:
        """The table, as :func:`train_jobs.tables.load_table` reads it (refusals name the fix); read once
        for training and for the bench's requests."""
        return load_table(self.path)


@contextlib.contextmanager
def bench_cluster(config_path: str | None, progress: Progress, *, chaos: bool = False,
                  data: BenchTable | None = None) -> Iterator[RaymedicConfig]:
    """An embedded Ray cluster and the config a benchmark deploys (storage under
    ``RAYMEDIC_HOME/bench-storage``, its trained registry kept, every other state of an earlier run
    cleared, the model trained if it is not: on ``data`` when given, else on the synthetic table);
    everything started here is shut down on exit.

    Raises:
        RaymedicError: the config's members are not all built-ins and no ``data`` is given (the
            synthetic table cannot fit the user's own modules); the message says what to pass.
    """
    os.environ.setdefault(ADMIN_TOKEN_ENV, os.urandom(16).hex())  # before any deploy: the admin routes' token
    served = load_config(config_path)
    cfg = served.config
    if data is None and any(m.module for m in cfg.members):
        raise RaymedicError(f"the config's model {cfg.model!r} has members with their own modules, which the "
                            "built-in synthetic table cannot train: pass the table it was made for, "
                            "--data TABLE --target COLUMN")
    storage = str(raymedic_home() / "bench-storage")
    update: dict[str, Any] = {"storage_path": storage}
    if chaos:
        update["chaos"] = cfg.chaos.model_copy(update={"enabled": True})
    cfg = cfg.model_copy(update=update).resolved()
    for stale in (f"controller/{cfg.model}", f"audit/{cfg.model}", f"logs/{cfg.model}", f"retrain/{cfg.model}"):
        Storage(storage).delete(stale)  # keep the trained registry, start everything else from scratch
    table = data.frame if data is not None else None  # read (and refused) before a cluster starts
    progress(f"starting an embedded local Ray cluster ({LOCAL_LOGICAL_CPUS} logical CPUs)")
    # The application's runtime_env is the job's: both systems' replicas import the members' own modules
    start_embedded(log_to_driver=False, runtime_env=served.runtime_env)
    try:
        with user_code_importable(served.runtime_env):  # training checks and registers them here
            if data is not None:
                _train_on(cfg, table, data, progress)
            service.ensure_trained(cfg, progress)
        yield cfg
    finally:
        try:
            # lazy: Ray Serve reads the fast-path settings start_embedded sets when it is imported
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()


def _train_on(cfg: RaymedicConfig, table: Any, data: BenchTable, progress: Progress) -> None:
    """Train the bench's model on ``table`` unless its champions were trained on this very content."""
    registry = ModelRegistry(Storage(cfg.storage_path))
    want = fingerprint(table)
    try:
        have = {registry.info(cfg.model, m.name, "champion").metadata.get("data_fingerprint") for m in cfg.members}
    except RaymedicError:
        have = set()
    if have == {want}:
        return
    # lazy: imports PyTorch (seconds), needed only when there is something to train
    from train_jobs.train import train_ensemble

    progress(f"training {cfg.model!r} on {data.path} in the bench's registry (once per table)")
    train_ensemble(cfg, table, target=data.target, model=cfg.model, progress=progress)


def bench_inputs(config: RaymedicConfig, n: int = 200, data: BenchTable | None = None) -> list[dict[str, Any]]:
    """``n`` fixed rows the bench replays, the same for both systems: seeded rows of ``data``'s
    table (tensors as nested lists, as a client sends them), else rows of the built-in synthetic table
    (seeded apart from training), or, for a model trained on another table (a user's, a tensor model),
    instances built from its champions' schema."""
    if data is not None:
        df = data.frame
        rows = df.drop(columns=[data.target]).sample(n=n, replace=len(df) < n, random_state=4242)
        return [dict(zip(map(str, rows.columns), json_row(r), strict=True)) for r in rows.itertuples(index=False)]
    df = SyntheticGenerator(SyntheticSpec(seed=config.training.seed)).sample(n, seed=4242)
    feats = [c for c in df.columns if c != "label"]
    schema = _champion_schema(config)
    if schema is not None and [f["name"] for f in schema["features"]] != feats:
        return instances_for_schema(schema, n, seed=4242)
    return [{f: float(r[f]) for f in feats} for _, r in df.iterrows()]


def _champion_schema(config: RaymedicConfig) -> dict[str, Any] | None:
    """The schema the first member's champion was trained on, or None with no champion yet."""
    try:
        info = ModelRegistry(Storage(config.storage_path)).info(config.model, config.members[0].name, "champion")
    except RaymedicError:
        return None
    return info.metadata.get("schema")


def running_replicas(app: str, member: str) -> list[Any]:
    """The RUNNING replicas of ``member`` in Serve application ``app``, by id, as Serve's controller
    reports them: both systems are judged by the same view of what serves."""
    # lazy: imports Ray Serve, which reads the fast-path settings start_embedded sets when it is imported
    from serve_apps.serve_state import read_app_view

    view = read_app_view(app)
    dep = view.deployments.get(member) if view else None
    return sorted((r for r in (dep.replicas if dep else ()) if r.state == "RUNNING"), key=lambda r: r.id)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy (which is returned); an exception
    counts as not yet (a system may answer errors while it starts).

    Raises:
        TimeoutError: ``timeout_s`` passed first; the message names ``what``.
    """
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


class System:
    """What differs between raymedic and the baseline: deploy, inject, observe, clean up.

    The benches drive both through this one surface, so each scenario runs the same
    steps on both and a figure differs only by what the system does.
    """

    name: str
    app: str

    def __init__(self, config: RaymedicConfig, url: str, probe: dict[str, Any]) -> None:
        self.config, self.url, self.probe = config, url, probe
        self.predict_url = f"{url}/v1/models/{config.model}:predict"

    def full_strength(self) -> bool:
        """Whether every member runs all the replicas it should (see :meth:`strength`)."""
        return all(len(running_replicas(self.app, m.name)) == self.strength(m) for m in self.config.members)

    def incidents_since(self, ts: float) -> list[str]:
        """The kinds of the replica incidents this system opened at or after ``ts`` (wall clock): on a
        fault-free run, its false positives. Plain Serve opens none of its own."""
        return []

    @staticmethod
    def strength(member: Any) -> int:
        """Replicas a whole member runs: both systems get the same processes (raymedic holds its
        ``standby`` ones out of traffic; plain Serve serves with all of them)."""
        return member.replicas + member.standby


class RaymedicSystem(System):
    """raymedic as deployed by ``raymedic up``: gateway, members and the healing controller; faults
    through its admin chaos route, detection and recovery from its own incidents."""

    name, app = RAYMEDIC, APP_NAME

    def deploy(self, progress: Progress) -> None:
        """Deploy the service and wait until every member answers predictions."""
        service.deploy(self.config, host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1]), progress=progress)
        service.wait_ready(self.url, self.config.model, timeout_s=300, progress=progress, example=self.probe)

    def ready(self) -> bool:
        """Whole: every replica running, healthy in the controller's eyes and avoided by none."""
        st = request_json("GET", f"{self.url}/v1/status", timeout_s=10).body
        healthy = st["controller"].get("healthy", {})
        return self.full_strength() and all(len(healthy.get(m.name, ())) == self.strength(m)
                                            for m in self.config.members) and not any(
            st["controller"].get("avoid", {}).values())

    def inject(self, fault: str, member: str | None, slow_ms: float = 0.0, **options: Any) -> dict[str, Any]:
        """Inject ``fault`` into one replica of ``member`` through the admin chaos route; ``options`` go
        into its body (``mb_per_s`` of a leak, ``mb`` of a disk-fill)."""
        r = request_json("POST", f"{self.url}/v1/admin/chaos",
                         {"fault": fault, "member": member, "delay_ms": slow_ms if fault == "slow" else None,
                          **options},
                         headers={"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}, timeout_s=30)
        if r.status != 200:
            raise RaymedicError(f"the bench could not inject {fault} into {member}: the chaos route answered "
                                f"{r.status} {r.body}")
        return r.body

    def incidents_since(self, ts: float) -> list[str]:
        """The kinds of the incidents the controller opened at or after ``ts`` (``/v1/status``)."""
        st = request_json("GET", f"{self.url}/v1/status", timeout_s=10).body
        return [i["kind"] for i in st["incidents"] if i.get("detected_at", 0) >= ts]

    def outcome(self, replica: str, injected_at: float, member: str) -> dict[str, Any]:
        """Seconds from the injection to the controller's detection and recovery (its incident)."""

        def incident() -> dict[str, Any] | None:
            st = request_json("GET", f"{self.url}/v1/status", timeout_s=10).body
            return next((i for i in st["incidents"] if i["replica"] == replica), None)

        try:  # a replacement may still be starting when the load window ends: give it a minute
            inc = wait_until(lambda: (i := incident()) and i["status"] != "open" and i, 60, "the incident to close")
        except TimeoutError:
            inc = incident()
        if inc is None:
            return {"detect_s": None, "recover_s": None}
        return {"detect_s": round(inc["detected_at"] - injected_at, 2),
                "recover_s": None if inc["recovered_at"] is None else round(inc["recovered_at"] - injected_at, 2),
                # which evidence decided it (e.g. probes, user calls, calls lost to hedges): the JSON report's
                "detected_by": {"kind": inc.get("kind"), "evidence": inc.get("evidence")}}

    def clear(self) -> None:
        """Remove every injected fault."""
        request_json("POST", f"{self.url}/v1/admin/chaos/clear", {},
                     headers={"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}, timeout_s=60)

    def remove(self) -> None:
        """Delete the application and its controller."""
        service.undeploy()


class PlainServe(System):
    """The baseline: the same trained members behind Ray Serve's default router and health checks
    (:mod:`serve_apps.baseline`); faults through the members' own chaos method, detection and
    recovery read from Serve's view of its replicas."""

    name = PLAIN_SERVE
    app = "baseline"

    def deploy(self, progress: Progress) -> None:
        """Deploy the baseline and wait until it answers a prediction."""
        # lazy: Ray Serve reads the fast-path settings start_embedded sets when it is imported
        from ray import serve

        from serve_apps.baseline import (
            build_baseline,  # lazy: imports Ray Serve, as above
        )

        progress("deploying the plain Ray Serve baseline (same members, default router and health checks)")
        serve.run(build_baseline(self.config), name=self.app, route_prefix="/", blocking=False)
        wait_until(lambda: request_json("POST", self.predict_url, {"instances": [self.probe]},
                                        timeout_s=10).status == 200, 300, "the baseline to answer")

    def ready(self) -> bool:
        """Whole: every replica running (all plain Serve can say)."""
        return self.full_strength()

    def _handle(self, member: str) -> Any:
        # lazy: Ray Serve reads the fast-path settings start_embedded sets when it is imported
        from ray import serve

        handle = serve.get_deployment_handle(member, app_name=self.app)
        if not handle.is_initialized:
            # The bench calls these handles from worker threads with no event loop. Serve's fast path
            # (RAY_SERVE_THROUGHPUT_OPTIMIZED, which this process inherits when an operator exports it or
            # a cluster was started from it before) runs a handle's router on the caller's loop and
            # refuses a call from a thread without one; a driver wants the router on its own loop.
            handle._init(_run_router_in_separate_loop=True)
        return handle

    def inject(self, fault: str, member: str, slow_ms: float = 0.0, **options: Any) -> dict[str, Any]:
        """Inject ``fault`` into the first running replica of ``member``: SIGKILL, or the member's chaos method
        (``options``: its keyword arguments, e.g. a leak's ``mb_per_s`` and ``cap_mb``)."""
        target = running_replicas(self.app, member)[0]
        if fault == "kill":
            return {"replica": target.id, **sigkill_replica(int(target.pid), target.node_id)}
        handle = self._handle(member)
        for _ in range(200):  # Serve's router picks the replica; `only` makes the others decline
            out = handle.chaos.remote(fault, slow_ms if fault == "slow" else None, only=target.id,
                                      **options).result(timeout_s=10)
            if out.get("applied"):
                return out
        raise RaymedicError(f"the bench could not reach replica {target.id} of {member} in 200 tries; "
                            "is the cluster overloaded? rerun with a lower --rps")

    def outcome(self, replica: str, injected_at: float, member: str) -> dict[str, Any]:
        """What :meth:`watch` saw: seconds until Serve noticed and until a replacement ran."""
        return dict(self._seen)

    def watch(self, replica: str, member: str, injected_at: float, until: float, keep: bool = False) -> None:
        """Poll Serve's own view: when did it notice, when was a replacement running?"""
        if not keep:
            self._seen: dict[str, Any] = {"detect_s": None, "recover_s": None}
        target = next(self.strength(m) for m in self.config.members if m.name == member)
        while time.time() < until:
            try:
                running = [r.id for r in running_replicas(self.app, member)]
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
        """Clear the injected faults replica by replica (Serve's router picks which one answers)."""
        for m in self.config.members:
            handle = self._handle(m.name)
            pending = {r.id for r in running_replicas(self.app, m.name)}
            for _ in range(200):
                if not pending:
                    break
                try:
                    out = handle.chaos.remote(None, only=sorted(pending)[0]).result(timeout_s=5)
                    if out.get("applied"):
                        pending.discard(out["replica"])
                except Exception:
                    pending = {r.id for r in running_replicas(self.app, m.name)} & pending

    def remove(self) -> None:
        """Delete the baseline application; returns once its replicas are stopped."""
        # lazy: Ray Serve reads the fast-path settings start_embedded sets when it is imported
        from ray import serve

        serve.delete(self.app)


def systems(config: RaymedicConfig, url: str, inputs: list[dict[str, Any]]) -> tuple[System, ...]:
    """Both systems for ``config`` at ``url``, plain Serve first (the order every bench runs them);
    ``inputs[0]`` is the request that tells the baseline answers."""
    return PlainServe(config, url, inputs[0]), RaymedicSystem(config, url, inputs[0])
