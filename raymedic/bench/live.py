"""``raymedic bench drift --live``: the drift streams through the running service, end to end.

:mod:`raymedic.bench.drift` measures the detectors on replayed streams in NumPy
(many seeds, exact row counts). This is the same kind of stream sent over HTTP to
a deployed raymedic — gateway, prediction log, telemetry, the controller's data
monitor and error-stream CUSUM, and for concept drift the whole healing loop
(retrain job, gate, canary, promotion) — with feedback labels arriving
``label_delay`` rows late. One seed, so the figures are single runs, not medians:

- a no-drift control of ``control_rows`` labelled rows: incidents opened and
  retrain jobs submitted on it (both should be zero);
- covariate scenarios (shifts of ``f0``): rows after the change until the
  controller's drift incident on ``f0`` opened (mapped through the send times);
- concept drift (60° rotation, inputs unchanged): labelled rows after the change
  until a model incident opened, when the retrain job was submitted and the new
  versions served, and accuracy per ``block_rows`` block for the live service, the
  never-healed champions ("fixed": the same versions scored offline on the same
  rows) and an oracle fitted on post-change rows; "recovered" is the first block
  from which the live accuracy stays within ``within`` of the oracle's.

Figures, not assertions; every one is measured in the run that prints it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from controllers.audit import read_audit
from raymedic.app import service
from raymedic.app.http import request_json
from raymedic.bench.cluster import bench_cluster
from raymedic.bench.drift import fit_logistic, predict_logistic, xy
from raymedic.config import RaymedicConfig
from raymedic.errors import ConfigError
from raymedic.keys import ADMIN_TOKEN_ENV
from raymedic.storage import Storage
from train_jobs.artifacts import unpack
from train_jobs.registry import ModelRegistry
from train_jobs.synthetic import Drift, SyntheticGenerator, SyntheticSpec

__all__ = ["LIVE_SCENARIOS", "LiveDriftSettings", "LiveScenario", "LiveStream", "concept_scenario", "format_live_table",
           "open_drift", "run_live_drift"]

Progress = Callable[[str], None]
FEATURE = "f0"
MODEL_KINDS = ("concept_drift", "accuracy_decay")


@dataclass(frozen=True)
class LiveScenario:
    """One live stream: a shift (in sd) or scale of ``f0``, or a rotation of the decision rule."""

    name: str
    shift_sd: float = 0.0
    scale: float = 1.0
    rotation_deg: float = 0.0


LIVE_SCENARIOS = (LiveScenario("mean +0.5 sd", shift_sd=0.5), LiveScenario("mean +1 sd", shift_sd=1.0),
                  LiveScenario("sd x2", scale=2.0), LiveScenario("concept 60 deg", rotation_deg=60.0))


@dataclass(frozen=True)
class LiveDriftSettings:
    """How ``bench drift --live`` streams: rates, row budgets, label delay and the scenarios to run.

    Checked when built, so a bad flag fails with the fix before a cluster starts.

    Raises:
        ConfigError: A rate, a row count or a scenario name is out of range.
    """

    rows_per_s: float = 50.0
    """Rows sent per second (in requests of ``batch_rows``): 5 requests/s leaves a 2-core machine room."""
    batch_rows: int = 10
    control_rows: int = 3000
    max_post_rows: int = 3000
    """Covariate scenarios: give up on a detection after this many changed rows."""
    settle_rows: int = 3000
    """Unchanged rows sent at most before a scenario so that earlier alerts can clear."""
    label_delay: int = 200
    heal_budget_s: float = 300.0
    block_rows: int = 200
    within: float = 0.05
    oracle_rows: int = 5000
    scenarios: tuple[str, ...] = tuple(s.name for s in LIVE_SCENARIOS)
    seed: int = 7

    def __post_init__(self) -> None:
        if self.rows_per_s <= 0 or self.batch_rows < 1:
            raise ConfigError(f"--rows-per-s must be > 0 (got {self.rows_per_s}) and batch_rows >= 1")
        if self.control_rows < 0:
            raise ConfigError(f"--control-rows must be >= 0, got {self.control_rows}")
        unknown = set(self.scenarios) - {sc.name for sc in LIVE_SCENARIOS}
        if unknown or not self.scenarios:
            raise ConfigError(f"unknown scenario(s) {sorted(unknown)}; --live-scenarios takes a comma list of "
                              f"{[sc.name for sc in LIVE_SCENARIOS]}")


@dataclass
class _Sent:
    at: float
    ids: list[str]
    y: list[int]
    pred: list[int]
    x: np.ndarray


@dataclass
class LiveStream:
    """Paced sending with delayed feedback; keeps what was sent and answered."""

    url: str
    model: str
    settings: LiveDriftSettings
    sent: list[_Sent] = field(default_factory=list)
    failed: int = 0
    feedback_retries: int = 0
    _pending: list[tuple[int, list[str], list[int]]] = field(default_factory=list)
    _rows: int = 0
    _status_at: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)

    def send(self, x: np.ndarray, y: np.ndarray, *, labels: bool, until: Callable[[dict], bool] | None = None,
             max_s: float | None = None) -> bool:
        """Send rows in paced batches; stop early when ``until(status)`` holds. True if it did."""
        s = self.settings
        t_end = None if max_s is None else time.monotonic() + max_s
        period = s.batch_rows / s.rows_per_s
        next_at = time.monotonic()
        for i in range(0, len(x), s.batch_rows):
            now = time.monotonic()
            if t_end is not None and now > t_end:
                return False
            if now < next_at:
                time.sleep(next_at - now)
            next_at = max(next_at + period, time.monotonic() - period)
            xb, yb = x[i:i + s.batch_rows], y[i:i + s.batch_rows]
            inst = [{f"f{j}": float(v) for j, v in enumerate(row)} for row in xb]
            try:
                r = request_json("POST", f"{self.url}/v1/models/{self.model}:predict", {"instances": inst},
                                 timeout_s=10)
            except OSError:  # past the client deadline (a timeout) or refused: a failed request
                r = None
            if r is None or r.status != 200:
                self.failed += 1
                continue
            self._rows += len(xb)
            self.sent.append(_Sent(time.time(), r.body["inference_ids"], [int(v) for v in yb],
                                   [int(p) for p in r.body["predictions"]], xb))
            if labels:
                self._pending.append((self._rows, r.body["inference_ids"], [int(v) for v in yb]))
            self._feedback()
            if until is not None and time.monotonic() - self._status_at >= 1.0:
                self._status_at = time.monotonic()
                try:
                    self.status = request_json("GET", f"{self.url}/v1/status", timeout_s=10).body
                except OSError:
                    continue  # asked again next second
                if until(self.status):
                    return True
        return False

    def _feedback(self) -> None:
        due = [p for p in self._pending if self._rows - p[0] >= self.settings.label_delay]
        self._pending = [p for p in self._pending if self._rows - p[0] < self.settings.label_delay]
        for k, (_, ids, y) in enumerate(due):
            try:
                request_json("POST", f"{self.url}/v1/models/{self.model}:feedback",
                             {"inference_ids": ids, "labels": y}, timeout_s=10)
            except OSError:  # the service is busy: these labels (and the rest) go with the next batch
                self._pending = due[k:] + self._pending
                self.feedback_retries += 1
                return

    def rows_between(self, t0: float, t1: float) -> int:
        """Rows sent between two times: turns a detection time into a delay in rows."""
        return sum(len(b.y) for b in self.sent if t0 <= b.at <= t1)


def _incidents(status: dict[str, Any], kinds: tuple[str, ...], since: float,
               feature: str | None = None) -> list[dict[str, Any]]:
    return [i for i in status.get("incidents", []) if i.get("kind") in kinds and i.get("detected_at", 0) >= since
            and (feature is None or i.get("feature") == feature)]


def open_drift(status: dict[str, Any]) -> bool:
    """Whether a drift incident is open (a scenario starts once earlier ones have cleared)."""
    return any(i.get("kind") == "drift" and i.get("status") == "open" for i in status.get("incidents", []))


def _fixed_probs(cfg: RaymedicConfig, versions: dict[str, str], x: np.ndarray) -> np.ndarray:
    """The champions' equally weighted answers, offline: the ensemble as if it were never healed."""
    registry = ModelRegistry(Storage(cfg.storage_path))
    rows = x.tolist()
    probs = [np.asarray(unpack(registry.load(cfg.model, m, v).files).predict_proba(rows)) for m, v in versions.items()]
    return np.mean(probs, axis=0)


def _blocks(correct: np.ndarray, size: int) -> list[float]:
    return [float(correct[i:i + size].mean()) for i in range(0, len(correct) - size + 1, size)]


def concept_scenario(stream: LiveStream, cfg: RaymedicConfig, sc: LiveScenario, gen: Any, s: LiveDriftSettings,
             progress: Progress) -> dict[str, Any]:
    """The concept scenario: rotated labels until the healing loop has promoted new versions (or the budget ends)."""
    drift = Drift(concept_rotation_deg=sc.rotation_deg)
    stream.status = request_json("GET", f"{stream.url}/v1/status", timeout_s=10).body
    versions0 = {m["name"]: m["version"] for m in stream.status["members"]}
    first = len(stream.sent)
    t_change = time.time()
    out: dict[str, Any] = {"scenario": sc.name, "kind": "concept"}
    promoted_at: list[float] = []

    def watch(st: dict) -> bool:
        inc = _incidents(st, MODEL_KINDS, t_change)
        if inc and "detected_at" not in out:
            out.update(detected_at=min(i["detected_at"] for i in inc),
                       detected_by=sorted({i["kind"] for i in inc}))
        job = (st.get("controller", {}).get("retraining") or {}).get("job") or {}
        if job.get("submitted_at") and job["submitted_at"] >= t_change and "job_submitted_at" not in out:
            out["job_submitted_at"] = job["submitted_at"]
        now_versions = {m["name"]: m["version"] for m in st.get("members", [])}
        if now_versions and now_versions != versions0 and not promoted_at:
            promoted_at.append(time.time())
            out["promoted_versions"] = {m: v for m, v in now_versions.items() if v != versions0.get(m)}
        if promoted_at:  # keep serving until enough blocks after the promotion to judge recovery
            return stream.rows_between(promoted_at[0], time.time()) >= 4 * s.block_rows
        return False

    x, y = xy(gen.sample(int(s.rows_per_s * s.heal_budget_s), seed=s.seed + 101, drift=drift))
    stream.send(x, y, labels=True, until=watch, max_s=s.heal_budget_s)
    batches = stream.sent[first:]
    xs = np.concatenate([b.x for b in batches])
    ys = np.concatenate([np.asarray(b.y) for b in batches])
    live = np.concatenate([np.asarray(b.pred) for b in batches]) == ys
    ox, oy = xy(gen.sample(s.oracle_rows, seed=s.seed + 202, drift=drift))
    oracle = predict_logistic(fit_logistic(ox, oy), xs) == ys
    fixed = _fixed_probs(cfg, versions0, xs).argmax(axis=1) == ys
    b_live, b_oracle, b_fixed = (_blocks(c, s.block_rows) for c in (live, oracle, fixed))
    ok = [lv >= orc - s.within for lv, orc in zip(b_live, b_oracle)]
    recovered_block = next((k for k in range(len(ok)) if all(ok[k:])), None) if ok and ok[-1] else None
    starts = np.cumsum([0] + [len(b.y) for b in batches])
    at = [b.at for b in batches]

    def at_row(row: int) -> float:
        return at[int(np.searchsorted(starts, row, side="right")) - 1]

    if "detected_at" in out:
        rows = stream.rows_between(t_change, out["detected_at"])
        out["detect_rows"] = rows
        out["detect_labels"] = max(0, rows - s.label_delay)
    out.update(
        rows=int(len(ys)), blocks=len(b_live), block_rows=s.block_rows,
        accuracy={"live": [round(v, 3) for v in b_live], "fixed": [round(v, 3) for v in b_fixed],
                  "oracle": [round(v, 3) for v in b_oracle]},
        recovered_s=None if recovered_block is None else round(at_row(recovered_block * s.block_rows) - t_change, 1),
        recovered_rows=None if recovered_block is None else recovered_block * s.block_rows)
    for k in ("detected_at", "job_submitted_at"):
        if k in out:
            out[k.replace("_at", "_s")] = round(out.pop(k) - t_change, 1)
    if promoted_at:
        out["promoted_s"] = round(promoted_at[0] - t_change, 1)
    history = (stream.status.get("controller", {}).get("retraining") or {}).get("history", [])
    out["retraining"] = [{"result": h.get("result"), "reason": h.get("reason"),
                          **{k: round(h[k] - t_change, 1) for k in ("submitted_at", "finished_at") if h.get(k)},
                          "gate": {m: {k: g.get(k) for k in ("passed", "champion_accuracy", "challenger_accuracy")}
                                   for m, g in (h.get("gate") or {}).items()},
                          **{k: h[k] for k in ("verdicts", "live", "wall_s") if k in h}}
                         for h in history if h.get("submitted_at", t_change) >= t_change]
    out["timeline"] = _timeline(cfg, t_change)
    progress(f"  {sc.name}: detected after {out.get('detect_labels')} labels ({out.get('detected_s')} s), job "
             f"{out.get('job_submitted_s')} s, promoted {out.get('promoted_s')} s, within {s.within:.0%} of the "
             f"oracle after {out['recovered_s']} s")
    return out


TIMELINE_KINDS = ("data-concept_drift", "data-accuracy_decay", "retrain-", "trial-", "promote", "rollback")
"""Audit kinds of the healing loop (prefixes), for the concept scenario's timeline."""


def _timeline(cfg: RaymedicConfig, t_change: float) -> list[list[Any]]:
    """What the controller audited about the model from the change on: [seconds after it, kind, target].

    The audit log is flushed every few seconds; a record not flushed by now is missing, not wrong."""
    try:
        records = read_audit(Storage(cfg.storage_path), cfg.model, since=t_change)
    except Exception:  # the timeline is a detail of the report: never lose the figures over it
        return []
    return [[round(r["ts"] - t_change, 1), r.get("kind"), r.get("target")] for r in records
            if str(r.get("kind", "")).startswith(TIMELINE_KINDS)]


def run_live_drift(*, config_path: str | None, port: int, settings: LiveDriftSettings,
                   progress: Progress) -> dict[str, Any]:
    """Deploy on an embedded cluster, run the control and each scenario through HTTP; returns the figures.

    Every run starts from the first trained versions (an earlier run may have
    promoted others), so its figures compare with other runs.

    Args:
        config_path: The raymedic config (default: ``cluster/raymedic.yaml``).
        port: HTTP port of the service.
        settings: Rates, budgets and scenarios.
        progress: Where progress lines go.

    Returns:
        ``settings``, the no-drift ``control``, one ``results`` row per scenario, failed requests and
        feedback retries.
    """
    url = f"http://127.0.0.1:{port}"
    with bench_cluster(config_path, progress) as cfg:
        registry = ModelRegistry(Storage(cfg.storage_path))
        for m in cfg.members:  # every run starts from the first trained versions
            first = registry.versions(cfg.model, m.name)[0].version
            if registry.resolve(cfg.model, m.name, "champion") != first:
                registry.promote(cfg.model, m.name, first)
        service.deploy(cfg, host="127.0.0.1", port=port, progress=progress)
        service.wait_ready(url, cfg.model, timeout_s=300, progress=progress)
        gen = SyntheticGenerator(SyntheticSpec(seed=cfg.training.seed))
        stream = LiveStream(url, cfg.model, settings)
        s = settings
        progress(f"control: {s.control_rows} unchanged labelled rows at {s.rows_per_s:g} rows/s "
                 f"(labels {s.label_delay} rows late)")
        t0 = time.time()
        if s.control_rows:
            x, y = xy(gen.sample(s.control_rows, seed=s.seed))
            stream.send(x, y, labels=True)
        st = request_json("GET", f"{url}/v1/status", timeout_s=10).body
        stream.status = st
        opened = [i for i in st.get("incidents", []) if i.get("detected_at", 0) >= t0]
        jobs = [h for h in (st.get("controller", {}).get("retraining") or {}).get("history", [])
                if h.get("submitted_at", 0) >= t0]
        control = {"rows": s.control_rows, "incidents": len(opened), "kinds": sorted({i["kind"] for i in opened}),
                   "retrain_jobs": len(jobs) + bool((st.get("controller", {}).get("retraining") or {}).get("job"))}
        progress(f"  control: {control['incidents']} incidents, {control['retrain_jobs']} retrain jobs")
        results = []
        admin = {"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}
        for k, sc in enumerate(sc for sc in LIVE_SCENARIOS if sc.name in s.scenarios):
            # Covariate scenarios measure detection only: paused, the controller detects and records but
            # starts no retrain on a material shift. The concept scenario runs the whole loop, resumed
            # only once the earlier drift alerts have cleared.
            if not sc.rotation_deg:
                request_json("POST", f"{url}/v1/admin/pause", {}, headers=admin, timeout_s=30)
            # Start from a quiet service: unchanged rows until no drift alert is open.
            x, y = xy(gen.sample(s.settle_rows, seed=s.seed + 10 + k))
            stream.send(x, y, labels=False, until=lambda st: not open_drift(st))
            if sc.rotation_deg:
                request_json("POST", f"{url}/v1/admin/resume", {}, headers=admin, timeout_s=30)
                results.append(concept_scenario(stream, cfg, sc, gen, s, progress))
                continue
            drift = Drift(mean_shift={FEATURE: sc.shift_sd} if sc.shift_sd else {},
                          scale={FEATURE: sc.scale} if sc.scale != 1.0 else {})
            x, y = xy(gen.sample(s.max_post_rows, seed=s.seed + 20 + k, drift=drift))
            t_change = time.time()
            seen = stream.send(x, y, labels=False,
                               until=lambda st: bool(_incidents(st, ("drift",), t_change, FEATURE)))
            row: dict[str, Any] = {"scenario": sc.name, "kind": "inputs", "detect_rows": None, "detected_s": None}
            if seen:
                inc = min(_incidents(stream.status, ("drift",), t_change, FEATURE), key=lambda i: i["detected_at"])
                row.update(detect_rows=stream.rows_between(t_change, inc["detected_at"]),
                           detected_s=round(inc["detected_at"] - t_change, 1),
                           evidence={k2: inc["evidence"].get(k2) for k2 in ("test", "psi", "drift", "sequential")
                                     if k2 in inc.get("evidence", {})})
            progress(f"  {sc.name}: detected after {row['detect_rows']} rows ({row['detected_s']} s)")
            results.append(row)
        return {"settings": asdict(s), "control": control, "results": results, "failed_requests": stream.failed,
                "feedback_retries": stream.feedback_retries}


def format_live_table(report: dict[str, Any]) -> str:
    """The live drift figures as a table: the control, then per scenario the detection and the healing loop."""
    s, c = report["settings"], report["control"]
    lines = [f"live service, {s['rows_per_s']:g} rows/s in requests of {s['batch_rows']}, labels {s['label_delay']} "
             f"rows late, seed {s['seed']}",
             f"control: {c['rows']} unchanged rows → {c['incidents']} incidents"
             f"{' (' + ', '.join(c['kinds']) + ')' if c.get('kinds') else ''}, {c['retrain_jobs']} retrain jobs",
             f"{'scenario':<16} {'detected after':<28} {'healing loop'}"]
    for r in report["results"]:
        if r["kind"] == "inputs":
            det = "not within the budget" if r["detect_rows"] is None else \
                f"{r['detect_rows']} rows ({r['detected_s']} s)"
            lines.append(f"{r['scenario']:<16} {det:<28} -")
        else:
            det = "not within the budget" if r.get("detect_labels") is None else \
                f"{r['detect_labels']} labels ({r.get('detected_s')} s)"
            acc = r["accuracy"]
            loop = (f"job {r.get('job_submitted_s')} s, promoted {r.get('promoted_s')} s, within "
                    f"{s['within']:.0%} of oracle after {r.get('recovered_s')} s")
            lines.append(f"{r['scenario']:<16} {det:<28} {loop}")
            lines.append(f"{'':<16} accuracy per {r['block_rows']} rows  live   {acc['live']}")
            lines.append(f"{'':<16} {'':<22} fixed  {acc['fixed']}")
            lines.append(f"{'':<16} {'':<22} oracle {acc['oracle']}")
            if r.get("timeline"):
                lines.append(f"{'':<16} audited (s after the change): " +
                             ", ".join(f"{t:g} {kind} {target}" for t, kind, target in r["timeline"]))
    lines.append(f"failed requests: {report['failed_requests']}")
    return "\n".join(lines)
