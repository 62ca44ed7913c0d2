"""``raymedic bench durability``: SIGKILL gateway replicas right after they acknowledge feedback, count.

The promise under test: a label acknowledged with a 2xx is in the durable feedback log and joins its
answer in the prediction log, whatever happens to the gateway replica after the 2xx. The bench sends
predictions, each answer labelled at once (so its record often still sits in the answering replica's
0.5 s buffer), from a few client threads; meanwhile a killer thread does the same, and within
milliseconds of its own 2xx sends SIGKILL to the replica that acknowledged it (found from the feedback
part that replica wrote for it: the part's name carries the replica's id), waits until Serve runs a
replacement, and kills again, ``kills`` times. Afterwards the logs are read with the retrain's own
join (:func:`train_jobs.labeled.joined_labels`) and every acknowledged label is looked up:

- persisted: in the feedback log with the label acknowledged; ``lost`` = acknowledged - persisted;
- joined: the retrain's join pairs it with its logged answer; ``unjoined`` = persisted - joined.

No plain Serve row: the baseline (:mod:`serve_apps.baseline`) has no feedback log, and a baseline
built for it would not show what the raymedic figures show. A SIGKILL does not discard what a process
already wrote to the page cache, so a plain deployment writing each label before its 2xx loses none
to a kill with or without an fsync (the fsync is for a host crash, which no kill produces), while one
that buffered labels would lose up to a flush period per kill by construction. The figure that matters
is raymedic's own: zero lost and zero unjoined over the kills.

The controller's kill points have their own rows in the same table (:func:`format_controller_rows`),
measured by :mod:`raymedic.bench.controller_kills` on the same service *before* the gateway kills: the
controller SIGKILLed right after deciding a restart, right after submitting a retrain and in the middle of a
promotion, ``controller_kills`` times each, actions, duplicate actions and missing records counted from the
audit. Before, because the gateway load leaves hundreds of labels, and a retrain submitted then would train
for minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from raymedic.app.http import request_json
from raymedic.bench.cluster import (
    Progress,
    RaymedicSystem,
    bench_cluster,
    bench_inputs,
    running_replicas,
    wait_until,
)
from raymedic.bench.controller_kills import (
    KILL_POINTS,
    TRIAL_ROLLOUT,
    ControllerKillSettings,
    point_label,
    run_controller_kills,
)
from raymedic.failpoints import FAILPOINTS_ENV
from raymedic.keys import APP_NAME, feedback_prefix, predictions_prefix
from raymedic.storage import Storage
from serve_apps.chaos import sigkill_replica
from serve_apps.predlog import part_writer
from train_jobs.labeled import joined_labels

__all__ = ["GATEWAY", "DurabilitySettings", "FeedbackLoad", "KillLog", "answered_by_the_killed", "count_durability",
           "durability_report", "format_controller_rows", "format_durability_table", "kill_gateways", "run_durability"]

GATEWAY = "gateway"
"""The gateway's deployment name (ARCHITECTURE.md)."""
MIN_GATEWAYS = 2
"""The bench runs at least this many gateway replicas: with one, every kill is an outage and the
figures would measure Serve's replacement time, not what the kill leaves behind."""


@dataclass(frozen=True)
class DurabilitySettings:
    """How hard the bench pushes; every default is small enough for a 2-core machine."""

    kills: int = 5
    """Gateway replicas SIGKILLed, one after another (each once Serve runs its replacement)."""
    load_threads: int = 2
    """Client threads sending predict-then-feedback pairs during the kills."""
    rows: int = 2
    """Rows per prediction, each labelled in the feedback that follows it at once."""
    deadline_s: float = 10.0
    """Client deadline of one request (a request past it counts as failed)."""
    replace_timeout_s: float = 120.0
    """How long Serve may take to run a replacement replica before the bench gives up."""
    controller_kills: int = 3
    """Controller SIGKILLs at each kill point the bench drives (0: no controller rows)."""
    controller_timeout_s: float = 180.0
    """Deadline of each wait of one controller kill (the point firing, Ray's restart, the action's end)."""


@dataclass
class KillLog:
    """What the clients and the killer saw: acknowledged labels and every failure, thread-safe."""

    acked: dict[str, Any] = field(default_factory=dict)
    """Inference id → the label a 2xx acknowledged."""
    requests: int = 0
    failed: int = 0
    """Requests that got no 2xx (an error status or no answer before the deadline)."""
    failures: Counter = field(default_factory=Counter)
    """A few words per failure kind (``HTTP 502``, ``URLError``), counted."""
    unknown: int = 0
    """Labels refused as unknown: their answer was given but its log record died with a killed
    replica's buffer (the documented loss of at most one flush period of prediction records)."""
    kills: list[dict[str, Any]] = field(default_factory=list)
    """One per kill: the replica, milliseconds from the 2xx to the signal, seconds to a replacement."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def pair(self, predict_url: str, feedback_url: str, rows: list[Any], labels: list[Any],
             deadline_s: float) -> dict[str, Any] | None:
        """One prediction, then its labels at once; the labels acknowledged, or None on a failure."""
        answer = self._send(predict_url, {"instances": rows}, deadline_s)
        if answer is None:
            return None
        ids = answer["inference_ids"]
        fb = self._send(feedback_url, {"inference_ids": ids, "labels": labels}, deadline_s)
        if fb is None:
            return None
        refused = set(fb.get("unknown_ids", ()))
        acked = {i: lab for i, lab in zip(ids, labels, strict=True) if i not in refused}
        with self._lock:
            self.acked.update(acked)
            self.unknown += len(refused)
        return acked

    def _send(self, url: str, body: dict[str, Any], deadline_s: float) -> dict[str, Any] | None:
        try:
            r = request_json("POST", url, body, timeout_s=deadline_s)
            what = None if 200 <= r.status < 300 else f"HTTP {r.status}"
        except OSError as exc:
            r, what = None, type(exc).__name__
        with self._lock:
            self.requests += 1
            if what is not None:
                self.failed += 1
                self.failures[what] += 1
        return None if what is not None or r is None else r.body


class FeedbackLoad:
    """Client threads sending predict-then-feedback pairs until stopped (rows of ``inputs`` in turn,
    labels alternating over ``classes``)."""

    def __init__(self, log: KillLog, *, url: str, model: str, inputs: list[Any], classes: list[Any],
                 settings: DurabilitySettings) -> None:
        self._log, self._inputs, self._classes, self._s = log, inputs, classes, settings
        self._predict, self._feedback = f"{url}/v1/models/{model}:predict", f"{url}/v1/models/{model}:feedback"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(settings.load_threads)]

    def _run(self, k: int) -> None:
        n = self._s.rows
        while not self._stop.is_set():
            rows = [self._inputs[(k + j) % len(self._inputs)] for j in range(n)]
            labels = [self._classes[(k + j) % len(self._classes)] for j in range(n)]
            k += n
            if self._log.pair(self._predict, self._feedback, rows, labels, self._s.deadline_s) is None:
                time.sleep(0.05)  # an outage: no busy loop of failing requests

    def __enter__(self) -> FeedbackLoad:  # noqa: PYI034 (as tests.conftest.PredictLoad)
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _gateways() -> dict[str, Any]:
    return {r.id: r for r in running_replicas(APP_NAME, GATEWAY)}


def _feedback_parts(storage: Storage, model: str) -> set[str]:
    """The feedback log's parts of this hour (and of the last one, seconds after an hour turned)."""
    now = time.time()
    hours = {time.strftime("%Y%m%d%H", time.gmtime(t)) for t in (now - 5, now)}
    return {k for h in hours for k in storage.list_files(f"{feedback_prefix(model)}/hour={h}", suffix=".parquet")}


def _acknowledger(storage: Storage, model: str, inference_id: str, before: set[str]) -> str | None:
    """The gateway replica that wrote the label of ``inference_id``: the writer of the new feedback
    part (not in ``before``) that holds it, newest first."""
    new = sorted(_feedback_parts(storage, model) - before, reverse=True)
    for key, table in storage.read_parquet_parts(new, columns=["inference_id"]):
        if inference_id in table.column("inference_id").to_pylist():
            return part_writer(key)
    return None


def _sigkill(replica: Any, here: str) -> None:
    """SIGKILL the replica's process: directly when it runs on this node (no task to schedule between the
    2xx and the signal), else through a zero-CPU task on its node."""
    if replica.node_id in (None, here):
        os.kill(int(replica.pid), signal.SIGKILL)
    else:
        sigkill_replica(int(replica.pid), replica.node_id)


def kill_gateways(url: str, model: str, *, storage: Storage, inputs: list[Any], classes: list[Any],
                  gateways: int, settings: DurabilitySettings, progress: Progress) -> KillLog:
    """Run the feedback load and SIGKILL the acknowledging gateway replica right after a 2xx feedback,
    ``settings.kills`` times, each once the previous one is replaced; returns what was acknowledged.

    Raises:
        TimeoutError: Serve did not run a replacement within ``settings.replace_timeout_s``.
    """
    log = KillLog()
    here = ray.get_runtime_context().get_node_id()
    predict_url, feedback_url = f"{url}/v1/models/{model}:predict", f"{url}/v1/models/{model}:feedback"
    with FeedbackLoad(log, url=url, model=model, inputs=inputs, classes=classes, settings=settings):
        for k in range(settings.kills):
            running = wait_until(lambda: len(g := _gateways()) >= gateways and g, settings.replace_timeout_s,
                                 f"{gateways} gateway replicas to run")
            target = None
            for _ in range(50):  # a pair whose ack names a running replica (a failed one: try again)
                before = _feedback_parts(storage, model)
                acked = log.pair(predict_url, feedback_url, [inputs[k % len(inputs)]], [classes[k % len(classes)]],
                                 settings.deadline_s)
                t_ack = time.monotonic()
                if acked:
                    labelled = next(iter(acked))
                    tag = _acknowledger(storage, model, labelled, before)
                    if (target := running.get(tag) if tag else None) is not None:
                        break
            if target is None:
                raise TimeoutError("no feedback acknowledged by a running gateway replica in 50 tries: is the "
                                   "service answering?")
            _sigkill(target, here)
            after_ms = (time.monotonic() - t_ack) * 1000.0
            t_kill = time.monotonic()
            gone = target.id
            wait_until(lambda: gone not in (g := _gateways()) and len(g) >= gateways,  # noqa: B023 (called here)
                       settings.replace_timeout_s, f"Serve to replace gateway replica {gone}")
            replaced_s = time.monotonic() - t_kill
            log.kills.append({"replica": target.id, "inference_id": labelled, "ms_after_ack": round(after_ms, 1),
                              "replaced_s": round(replaced_s, 1)})
            progress(f"kill {k + 1}/{settings.kills}: gateway {target.id} {after_ms:.1f} ms after its 2xx, "
                     f"replaced in {replaced_s:.1f} s; {len(log.acked)} labels acknowledged, "
                     f"{log.failed} requests failed so far")
    return log


def count_durability(storage: Storage, model: str, acked: dict[str, Any]) -> dict[str, int]:
    """Acknowledged labels against the logs: persisted (in the feedback log with that label), joined
    (paired with its answer by the retrain's join), lost and unjoined."""
    logged: dict[str, set[str]] = {}
    keys = storage.list_files(feedback_prefix(model), suffix=".parquet")
    for _, table in storage.read_parquet_parts(keys, columns=["inference_id", "label"]):
        for i, lab in zip(table.column("inference_id").to_pylist(), table.column("label").to_pylist(), strict=True):
            logged.setdefault(i, set()).add(lab)
    joined_frame = joined_labels(storage, model)
    joined = dict(zip(joined_frame["inference_id"], joined_frame["label"], strict=True))
    want = {i: json.dumps(lab) for i, lab in acked.items()}
    persisted = {i for i, lab in want.items() if lab in logged.get(i, ())}
    joined_ok = {i for i in persisted if joined.get(i) == want[i]}
    return {"acknowledged": len(acked), "persisted": len(persisted), "joined": len(joined_ok),
            "lost": len(acked) - len(persisted), "unjoined": len(persisted) - len(joined_ok)}


def answered_by_the_killed(storage: Storage, model: str, kills: list[dict[str, Any]]) -> int:
    """How many kills hit the replica that had also given the answer the killer labelled (its prediction
    log part names that replica): the kills where the answer's record sat in the killed replica's own
    buffer milliseconds before the label, the case a write of the answer before the label exists for."""
    wanted = {k["inference_id"]: k["replica"] for k in kills}
    keys = storage.list_files(predictions_prefix(model), suffix=".parquet")
    hits = 0
    for key, table in storage.read_parquet_parts(keys, columns=["inference_id"]):
        writer = part_writer(key)
        hits += sum(wanted.get(i) == writer for i in table.column("inference_id").to_pylist())
    return hits


@contextlib.contextmanager
def _failpoints(enabled: bool) -> Iterator[str | None]:
    """A fresh failpoints directory named by ``RAYMEDIC_FAILPOINTS`` while the bench's cluster runs (set
    before Ray starts: its processes, the controller's too, inherit it), removed after; None when
    ``enabled`` is false (the variable is then left alone and no point can fire)."""
    if not enabled:
        yield None
        return
    saved = os.environ.get(FAILPOINTS_ENV)
    points = tempfile.mkdtemp(prefix="raymedic-bench-failpoints-")
    os.environ[FAILPOINTS_ENV] = points
    try:
        yield points
    finally:
        if saved is None:
            os.environ.pop(FAILPOINTS_ENV, None)
        else:
            os.environ[FAILPOINTS_ENV] = saved
        shutil.rmtree(points, ignore_errors=True)


def run_durability(*, config_path: str | None, port: int, settings: DurabilitySettings,
                   progress: Progress) -> dict[str, Any]:
    """Start an embedded cluster, deploy raymedic (at least :data:`MIN_GATEWAYS` gateway replicas, the
    chaos routes on when the controller is killed too), kill the controller at its points, then the
    gateways under load, count; the JSON report (``format_durability_table`` prints it)."""
    controller: list[dict[str, Any]] = []
    with _failpoints(settings.controller_kills > 0) as points, \
            bench_cluster(config_path, progress, chaos=points is not None) as cfg:
        gw = cfg.gateway.model_copy(update={"replicas": max(MIN_GATEWAYS, cfg.gateway.replicas)})
        update: dict[str, Any] = {"gateway": gw}
        if points is not None:  # a mid-promotion kill needs a trial that decides in seconds
            update["rollout"] = cfg.rollout.model_copy(update=TRIAL_ROLLOUT)
        cfg = cfg.model_copy(update=update)
        inputs = bench_inputs(cfg)
        url = f"http://127.0.0.1:{port}"
        system = RaymedicSystem(cfg, url, inputs[0])
        system.deploy(progress)
        try:
            if points is not None:
                progress(f"{settings.controller_kills} controller kills at each of "
                         f"{', '.join(point_label(p) for p in KILL_POINTS)}")
                t0 = time.monotonic()
                controller = run_controller_kills(
                    system, points_dir=points, progress=progress,
                    settings=ControllerKillSettings(kills=settings.controller_kills,
                                                    timeout_s=settings.controller_timeout_s))
                progress(f"controller kills done in {time.monotonic() - t0:.0f} s")
            schema = request_json("GET", f"{url}/v1/models/{cfg.model}", timeout_s=30).body["schema"]
            storage = Storage(cfg.storage_path)
            progress(f"{settings.kills} gateway kills under {settings.load_threads} clients' predict + feedback "
                     f"load ({gw.replicas} gateway replicas)")
            t0 = time.monotonic()
            log = kill_gateways(url, cfg.model, storage=storage, inputs=inputs, classes=schema["classes"],
                                gateways=gw.replicas, settings=settings, progress=progress)
            seconds = time.monotonic() - t0
            counts = count_durability(storage, cfg.model, log.acked)
            counts["kills_answered_by_the_killed"] = answered_by_the_killed(storage, cfg.model, log.kills)
        finally:
            system.remove()
    return durability_report(log, counts, settings=settings, gateways=gw.replicas, seconds=seconds,
                             controller=controller)


def durability_report(log: KillLog, counts: dict[str, int], *, settings: DurabilitySettings, gateways: int,
                      seconds: float, controller: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report of one run: the counts, the load's figures, each kill, and the controller kill rows
    (``controller``: :func:`raymedic.bench.controller_kills.controller_rows`; empty when not measured)."""
    after = [k["ms_after_ack"] for k in log.kills]
    return {"settings": asdict(settings), "gateways": gateways, "seconds": round(seconds, 1),
            "gateway_kills": {"kills": len(log.kills), **counts, "requests": log.requests,
                              "failed_requests": log.failed, "failures": dict(log.failures),
                              "labels_refused_unknown": log.unknown,
                              "kill_ms_after_ack_median": round(statistics.median(after), 1) if after else None,
                              "kill_ms_after_ack_max": max(after, default=None),
                              "replaced_s_median": round(statistics.median(k["replaced_s"] for k in log.kills), 1)
                              if log.kills else None,
                              "each": log.kills},
            "plain_serve": None,
            "plain_serve_why_not": "no baseline: plain Serve has no feedback log, and a SIGKILL does not discard "
                                   "what a process wrote to the page cache, so a plain deployment writing each "
                                   "label before its 2xx loses none to a kill with or without fsync",
            "controller_kills": list(controller or ())}


CONTROLLER_COLUMNS = ("kill point", "kills", "actions", "duplicate actions", "missing records", "timed out")
"""The controller rows' columns: where the controller was killed, how often, the actions it took, how many
times one was done again, how many audit records are missing, and how many kills missed a deadline."""


def format_controller_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The table's "controller kills: duplicate actions" lines, one per row (each a dict keyed by
    :data:`CONTROLLER_COLUMNS`, a missing figure shown as ``-``); a line saying so when there are none.

    >>> format_controller_rows([])
    ['controller kills: duplicate actions — not measured by this run']
    >>> format_controller_rows([{"kill point": "after-detect", "kills": 3, "actions": 3, "duplicate actions": 0}])[2]
    '  after-detect                    3        3                  0                -          -'
    """
    if not rows:
        return ["controller kills: duplicate actions — not measured by this run"]
    head = f"  {CONTROLLER_COLUMNS[0]:<24}" + "".join(f"{c:>{max(9, len(c) + 2)}}" for c in CONTROLLER_COLUMNS[1:])
    out = ["controller kills: duplicate actions", head]
    for r in rows:
        cells = "".join(f"{_cell(r.get(c)):>{max(9, len(c) + 2)}}" for c in CONTROLLER_COLUMNS[1:])
        out.append(f"  {_cell(r.get(CONTROLLER_COLUMNS[0])):<24}{cells}")
    for r in rows:  # what went wrong, kill by kill (nothing when every kill was clean)
        for k, each in enumerate(r.get("each") or (), 1):
            notes = [f"timed out: {each['timed_out']}"] if each.get("timed_out") else []
            notes += [f"duplicate {d}" for d in each.get("duplicates") or ()]
            notes += [f"missing {m}" for m in each.get("missing") or ()]
            out += textwrap.wrap(f"{r['kill point']} kill {k}: " + "; ".join(notes), 100, initial_indent="    ",
                                 subsequent_indent="      ") if notes else []
    return out


def _cell(v: Any) -> str:
    return "-" if v is None else str(v)


GATEWAY_ROWS: tuple[tuple[str, str], ...] = (
    ("kills", "gateway replicas SIGKILLed right after a 2xx feedback"),
    ("kills_answered_by_the_killed", "... of them on the replica that also gave the labelled answer"),
    ("acknowledged", "labels acknowledged with a 2xx"),
    ("persisted", "... of them in the feedback log, with that label"),
    ("joined", "... of them joined to their answer by the retrain's reader"),
    ("lost", "acknowledged - persisted"),
    ("unjoined", "persisted - joined"),
    ("failed_requests", "requests with no 2xx while replicas were killed"),
    ("labels_refused_unknown", "labels refused: their answer's record died in a killed buffer"),
    ("kill_ms_after_ack_median", "ms from the 2xx to the SIGKILL (median)"),
    ("kill_ms_after_ack_max", "ms from the 2xx to the SIGKILL (max)"),
    ("replaced_s_median", "s until Serve ran a replacement (median)"),
)


def format_durability_table(report: dict[str, Any]) -> str:
    """The report as a table for people: the gateway kill figures, why there is no plain Serve column,
    and the controller kill rows."""
    g = report["gateway_kills"]
    lines = [(f"durability: {g['kills']} gateway kills, {report['gateways']} gateway replicas, "
              f"{report['settings']['load_threads']} load clients, {report['seconds']} s"),
             f"  {'figure':<30}{'raymedic':>10}   what it counts"]
    lines += [f"  {key:<30}{_cell(g.get(key)):>10}   {what}" for key, what in GATEWAY_ROWS]
    if g.get("failures"):
        lines.append("  failures: " + ", ".join(f"{k} x{v}" for k, v in sorted(g["failures"].items())))
    lines += textwrap.wrap(f"plain Serve: {report['plain_serve_why_not']}", 100, initial_indent="  ",
                           subsequent_indent="    ")
    lines += format_controller_rows(report.get("controller_kills") or [])
    return "\n".join(lines)

