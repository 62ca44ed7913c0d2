"""``raymedic demo``: the main job, on an embedded local Ray cluster.

Trains the ensemble with Ray Train, deploys it on Ray Serve with the healing
controller, drives real HTTP traffic with labelled synthetic data, sends the
labels back as feedback, then breaks replicas on purpose — a SIGKILL, a hang, a
wrong-answering replica — under live load and shows the controller detect and
heal each one while clients keep getting answers; then shifts one feature of
the live inputs and shows the drift being detected; then changes the concept
itself (the labels' rule turns, the inputs do not) and shows the whole model-healing
loop — detected on the error stream, a Ray Train retrain job submitted (the Jobs view
of the dashboard shows it), gated against the champion, canaried and promoted — with
the live accuracy beside a never-healed copy of the ensemble. It ends with an
incident report table. Every figure printed is measured in this run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import numpy as np
import ray

from cluster.connect import LOCAL_LOGICAL_CPUS, start_embedded
from cluster.runstate import raymedic_home
from controllers.audit import read_audit
from controllers.client import get_controller
from raymedic.app import service
from raymedic.app.http import request_json
from raymedic.app.report import build_report
from raymedic.bench.drift import xy
from raymedic.bench.live import LiveDriftSettings, LiveScenario, LiveStream, concept_scenario, open_drift
from raymedic.bench.loadgen import open_loop, summarize
from raymedic.config import load_config
from raymedic.errors import RaymedicError
from raymedic.keys import ADMIN_TOKEN_ENV
from raymedic.storage import Storage
from train_jobs.synthetic import Drift, SyntheticGenerator, SyntheticSpec

__all__ = ["run_demo"]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


DRILLS = (("kill", "mlp"), ("hang", "tabresnet"), ("wrong", "mlp"))
# Half of what a 2-core laptop can carry: a fault on a saturated machine measures the machine
# (a replacement replica's start-up alone takes several CPU-seconds).
DRILL_RPS = 10.0


def _drill(url: str, model: str, fault: str, member: str, inputs: list[dict], *, rps: float = DRILL_RPS,
           budget_s: float = 40.0) -> dict:
    """Inject ``fault`` under open-loop load; wait until the controller reports it healed."""
    headers = {"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}
    out: dict = {}

    async def run() -> list:
        load = asyncio.ensure_future(open_loop(f"{url}/v1/models/{model}:predict", inputs, rps=rps,
                                               duration_s=budget_s, deadline_s=5.0))
        await asyncio.sleep(2.0)
        out["at"] = time.time()
        r = await asyncio.to_thread(request_json, "POST", f"{url}/v1/admin/chaos",
                                    {"fault": fault, "member": member}, headers=headers, timeout_s=30)
        out["replica"] = r.body.get("replica") if r.status == 200 else None
        deadline = time.monotonic() + budget_s - 3
        while time.monotonic() < deadline and out["replica"]:
            st = await asyncio.to_thread(request_json, "GET", f"{url}/v1/status", timeout_s=10)
            inc = next((i for i in st.body.get("incidents", []) if i["replica"] == out["replica"]), None)
            if inc and inc["status"] == "recovered":
                out["incident"] = inc
                break
            await asyncio.sleep(0.5)
        return await load

    samples = asyncio.run(run())
    out["load"] = summarize(samples, since=out.get("at"))
    return out


DRIFT_SD = 1.0


def _drift_drill(url: str, model: str, gen: Any, features: list[str], *, seed: int, budget_s: float = 60.0) -> dict:
    """Send covariate-shifted traffic (f0 + DRIFT_SD sd) until the controller reports drift on f0."""
    shifted = gen.sample(3000, seed=seed, drift=Drift(mean_shift={"f0": DRIFT_SD}))
    rows = [{f: float(r[f]) for f in features} for _, r in shifted.iterrows()]
    out: dict = {"budget_s": budget_s, "rows_sent": 0, "requests": 0, "failed": 0}
    t0 = time.time()
    i = 0
    while time.time() - t0 < budget_s and i < len(rows):
        r = request_json("POST", f"{url}/v1/models/{model}:predict", {"instances": rows[i:i + 20]}, timeout_s=10)
        out["requests"] += 1
        out["failed"] += r.status != 200
        i += 20
        out["rows_sent"] = i
        st = request_json("GET", f"{url}/v1/status", timeout_s=10).body
        inc = next((x for x in st.get("incidents", []) if x.get("kind") == "drift" and x.get("feature") == "f0"
                    and x["detected_at"] >= t0), None)
        if inc:
            out.update(incident=inc, detected_s=inc["detected_at"] - t0, evidence={
                k: (round(v, 4) if isinstance(v, float) else v) for k, v in inc["evidence"].items()
                if k in ("test", "p_adjusted", "psi", "wasserstein_sd", "drift")})
            break
        time.sleep(0.25)
    return out


DEMO_CANARY_SHARE = 0.2
"""The demo's canary share: 10 paired labels a second at its 50 labelled rows/s (the default 5 % would
take the trial's 100 labels 40 s)."""
CONCEPT = LiveScenario("concept 60 deg", rotation_deg=60.0)
"""The demo's concept change: the labels' decision rule turns 60°, the inputs stay as they were."""
CONCEPT_STREAM = LiveDriftSettings(rows_per_s=50.0, batch_rows=10, label_delay=200, heal_budget_s=240.0,
                                   block_rows=200, settle_rows=2000, scenarios=(CONCEPT.name,))
"""Labelled rows at 50/s (5 requests/s), labels 200 rows late, up to 4 minutes for the loop to heal."""


def _concept_drill(url: str, cfg: Any, gen: Any, *, seed: int, progress: Callable[[str], None]) -> dict:
    """The model-healing loop under a concept change, as ``bench drift --live`` measures it (one seed)."""
    settings = LiveDriftSettings(**{**CONCEPT_STREAM.__dict__, "seed": seed})
    stream = LiveStream(url, cfg.model, settings)
    # Unchanged rows until the drift drill's alert has cleared: the loop starts from a quiet service.
    x, y = xy(gen.sample(settings.settle_rows, seed=seed))
    stream.send(x, y, labels=False, until=lambda st: not open_drift(st))
    out = concept_scenario(stream, cfg, CONCEPT, gen, settings, lambda _line: None)
    out["failed"], out["requests"] = stream.failed, len(stream.sent) + stream.failed
    return out


def _print_concept(c: dict, settings: LiveDriftSettings) -> None:
    """The concept drill's figures: the loop's steps in time, the gate, and accuracy beside a never-healed copy."""
    def at(key: str) -> str:
        return f"{c[key]:.1f} s" if c.get(key) is not None else "not within the drill"

    print("model healing (concept change: the labels' rule turned 60°, inputs unchanged):")
    print(f"  detected on the error stream   {at('detected_s')}  ({c.get('detect_labels')} labels after the change, "
          f"by {', '.join(c.get('detected_by', [])) or '-'})")
    print(f"  retrain job submitted (Ray)    {at('job_submitted_s')}")
    for h in c.get("retraining", []):
        gate = ", ".join(f"{m} {g.get('champion_accuracy', 0):.3f}→{g.get('challenger_accuracy', 0):.3f}"
                         f"{'' if g.get('passed') else ' (kept the champion)'}"
                         for m, g in h.get("gate", {}).items() if g.get("challenger_accuracy") is not None)
        if gate:
            print(f"  job {h.get('result')}: gate (champion→challenger accuracy) {gate}")
        else:  # the canary trial's own entry
            print(f"  canary trial: {h.get('result')}")
    print(f"  canary ({DEMO_CANARY_SHARE:.0%} of requests) passed, promoted {at('promoted_s')}  "
          f"{c.get('promoted_versions', {})}")
    print(f"  within {settings.within:.0%} of an oracle from   {at('recovered_s')}  (the canary serves the "
          "challengers' answers to its share of requests before the promotion)")
    acc = c.get("accuracy", {})
    if acc.get("live"):
        # At most a dozen lines: neighbouring blocks merged where the drill ran long.
        merge = max(1, -(-len(acc["live"]) // 12))
        rows = merge * c["block_rows"]
        print(f"  accuracy per {rows} rows after the change (live service | never healed | oracle):")
        for k in range(0, len(acc["live"]), merge):
            lv, fx, orc = (float(np.mean(acc[key][k:k + merge])) for key in ("live", "fixed", "oracle"))
            end = min(k + merge, len(acc["live"])) * c["block_rows"]
            print(f"    rows {k * c['block_rows']:>5}-{end:<5} {lv:6.3f} | {fx:6.3f} | {orc:6.3f}")
    print(f"  clients: {c['failed']} of {c['requests']} requests failed during the drill")


def _write_report(storage: str, model: str, *, since: float, progress: Callable[[str], None]) -> None:
    """The post-mortem of the demo's period (``raymedic report --since`` its start), its path printed; the
    controller writes what it buffers first. A report that cannot be written is said, never fatal."""
    handle = get_controller()
    try:
        if handle is not None:
            ray.get(handle.flush.remote(), timeout=30)
    except (ray.exceptions.RayError, TimeoutError) as exc:  # the report shows what is written; the result stands
        progress(f"could not flush the controller's audit and series ({type(exc).__name__}); reporting what is written")
    try:
        files = build_report(Storage(storage), model, out_dir=os.path.join(storage, "reports"), since=since)
    except RaymedicError as exc:
        print(f"post-mortem report: not written ({exc})")
        return
    print(f"post-mortem report (open in a browser): {files.html}")
    print(f"  and for a ticket: {files.markdown} with {len(files.images)} PNGs beside it")


def run_demo(*, config_path: str | None, port: int, requests: int, progress: Callable[[str], None]) -> int:
    """Run the whole demo on an embedded cluster and print what it measured; shut everything down after.

    Storage goes to a fresh directory under ``RAYMEDIC_HOME`` and chaos is on, so
    the demo never touches a user's registry or service.

    Args:
        config_path: The raymedic config (default: ``cluster/raymedic.yaml``).
        port: HTTP port of the demo's service.
        requests: Single-row predictions of the first, sequential phase.
        progress: Where progress lines go.

    Returns:
        0 when no request of the first phase failed, every drill healed and the concept change was healed,
        else 1.
    """
    started = time.time()
    sf = load_config(config_path)
    storage = tempfile.mkdtemp(prefix="demo-", dir=raymedic_home())
    # The canary takes DEMO_CANARY_SHARE of requests (default 5 %) so that its trial reaches its labels
    # within seconds at the demo's label rate rather than a minute.
    rollout = sf.config.rollout.model_copy(update={"share": max(sf.config.rollout.share, DEMO_CANARY_SHARE)})
    cfg = sf.config.model_copy(update={"storage_path": storage, "rollout": rollout,
                                       "chaos": sf.config.chaos.model_copy(update={"enabled": True})}).resolved()
    os.environ.setdefault(ADMIN_TOKEN_ENV, os.urandom(16).hex())  # the drills use the admin chaos route
    progress(f"starting an embedded local Ray cluster ({LOCAL_LOGICAL_CPUS} logical CPUs)")
    ctx = start_embedded(include_dashboard=True, log_to_driver=False)
    dashboard = getattr(ctx, "dashboard_url", None)
    try:
        t0 = time.monotonic()
        service.ensure_trained(cfg, progress)
        t_train = time.monotonic() - t0
        service.deploy(cfg, host="127.0.0.1", port=port, progress=progress)
        url = f"http://127.0.0.1:{port}"
        waited = service.wait_ready(url, cfg.model, timeout_s=300, progress=progress)
        progress(f"service ready at {url} after {waited:.1f} s (training took {t_train:.1f} s)")

        gen = SyntheticGenerator(SyntheticSpec(seed=cfg.training.seed))
        traffic = gen.sample(requests, seed=cfg.training.seed + 1)
        features = [c for c in traffic.columns if c != "label"]
        progress(f"sending {requests} single-row predictions over HTTP")
        latencies, ids, truth, preds, failures, degraded = [], [], [], [], 0, 0
        for _, row in traffic.iterrows():
            inst = {f: float(row[f]) for f in features}
            t = time.perf_counter()
            r = request_json("POST", f"{url}/v1/models/{cfg.model}:predict", {"instances": [inst]}, timeout_s=10)
            latencies.append(time.perf_counter() - t)
            if r.status != 200:
                failures += 1
                continue
            degraded += bool(r.body["degraded"])
            ids.append(r.body["inference_ids"][0])
            preds.append(r.body["predictions"][0])
            truth.append(int(row["label"]))
        example = request_json("POST", f"{url}/v1/models/{cfg.model}:predict",
                               {"instances": [{f: round(float(traffic.iloc[0][f]), 3) for f in features}]})
        fb = request_json("POST", f"{url}/v1/models/{cfg.model}:feedback",
                          {"inference_ids": ids, "labels": truth}, timeout_s=30)
        bad = request_json("POST", f"{url}/v1/models/{cfg.model}:predict", {"instances": [{"f0": "oops"}]})
        accuracy = float(np.mean(np.asarray(preds) == np.asarray(truth))) if preds else float("nan")

        print()
        print("example request → answer:")
        print(f"  POST /v1/models/{cfg.model}:predict")
        print("  " + json.dumps(example.body)[:400])
        print(f"a bad request gets {bad.status}: {json.dumps(bad.body)[:300]}")
        print()
        print("measured in this run:")
        print(f"  requests            {requests}  (failed {failures}, degraded {degraded})")
        print(f"  latency p50 / p99   {_pct(latencies, 50) * 1000:.1f} ms / {_pct(latencies, 99) * 1000:.1f} ms "
              f"(mean {statistics.mean(latencies) * 1000:.1f} ms, 1 row, sequential)")
        print(f"  ensemble accuracy   {accuracy:.3f} on {len(preds)} labelled requests")
        print(f"  feedback            {fb.body}")
        print()
        progress(f"self-healing drills: break one replica at a time under {DRILL_RPS:.0f} req/s of live traffic")
        # Fresh rows for the drills: a small set replayed over and over would itself look like drift.
        fresh = gen.sample(2000, seed=cfg.training.seed + 2)
        inputs = [{f: float(r[f]) for f in features} for _, r in fresh.iterrows()]
        drills = []
        for fault, member in DRILLS:
            if not any(m.name == member for m in cfg.members):
                continue
            d = _drill(url, cfg.model, fault, member, inputs)
            inc = d.get("incident")
            drills.append((fault, member, d))
            load = d["load"]
            if inc:
                progress(f"  {fault:<5} {member}/{d['replica']}: detected as {inc['kind']} after "
                         f"{inc['detected_at'] - d['at']:.1f} s, back at strength after "
                         f"{inc['recovered_at'] - d['at']:.1f} s; clients: {load['failed']} failed of "
                         f"{load['requests']}, p99 {load['p99_ms']} ms")
            else:
                progress(f"  {fault:<5} {member}/{d.get('replica')}: not healed within the drill's time "
                         f"(clients: {load['failed']} failed of {load['requests']})")
        healed = sum(1 for *_, d in drills if d.get("incident"))
        drill_failures = sum(d["load"]["failed"] for *_, d in drills)
        progress(f"data drift: feature f0 shifts by {DRIFT_SD:g} sd in live traffic")
        drift = _drift_drill(url, cfg.model, gen, features, seed=cfg.training.seed + 3)
        if drift.get("incident"):
            progress(f"  drift on f0 detected after {drift['detected_s']:.1f} s / {drift['rows_sent']} rows: "
                     f"{drift['evidence']}")
        else:
            progress(f"  drift on f0 not reported within {drift['budget_s']:.0f} s")
        progress("concept change: the labels' rule turns 60° in the live stream (labels 200 rows late); "
                 "watch the retrain job in the dashboard's Jobs view")
        concept = _concept_drill(url, cfg, gen, seed=cfg.training.seed + 4, progress=progress)
        concept_healed = concept.get("recovered_s") is not None
        progress(f"  detected after {concept.get('detected_s')} s, job {concept.get('job_submitted_s')} s, promoted "
                 f"{concept.get('promoted_s')} s, back within {CONCEPT_STREAM.within:.0%} of the oracle after "
                 f"{concept.get('recovered_s')} s")
        status = request_json("GET", f"{url}/v1/status").body
        print()
        _print_concept(concept, CONCEPT_STREAM)
        print()
        print("incident report (measured in this run):")
        print(f"  {'fault':<20}{'detected after':>15}{'recovered after':>17}{'requests failed':>17}  action taken")
        for fault, member, d in drills:
            inc = d.get("incident")
            det = f"{inc['detected_at'] - d['at']:.1f} s" if inc else "not seen"
            rec = f"{inc['recovered_at'] - d['at']:.1f} s" if inc else "-"
            spare = next((m.standby for m in cfg.members if m.name == member), 0)
            act = (("standby serves, " if spare else "") + f"restart replica ({inc['kind']})") if inc else "-"
            print(f"  {fault + ' ' + member:<20}{det:>15}{rec:>17}{d['load']['failed']:>10} / {d['load']['requests']:<5}"
                  f"  {act}")
        det = f"{drift['detected_s']:.1f} s" if drift.get("incident") else "not seen"
        print(f"  {'drift f0 +' + format(DRIFT_SD, 'g') + ' sd':<20}{det:>15}{'-':>17}"
              f"{drift['failed']:>10} / {drift['requests']:<5}  recorded + warned (retraining: not yet)")
        det = f"{concept['detected_s']:.1f} s" if concept.get("detected_s") is not None else "not seen"
        rec = f"{concept['recovered_s']:.1f} s" if concept_healed else "-"
        print(f"  {'concept 60 deg':<20}{det:>15}{rec:>17}{concept['failed']:>10} / {concept['requests']:<5}"
              "  retrain job → gate → canary → promotion")
        print()
        print(f"healing: {healed}/{len(drills)} injected faults healed automatically, "
              f"{drill_failures} client requests failed during them; the concept change "
              + (f"healed in {concept['recovered_s']:.0f} s" if concept_healed else "not healed within the drill"))
        print("audit trail (newest last):")
        for rec in [r for r in read_audit(Storage(storage), cfg.model) if r["kind"] != "weights"][-12:]:
            print(f"  {time.strftime('%H:%M:%S', time.localtime(rec['ts']))}  {rec['kind']:<16} "
                  f"{rec['target']:<26} {rec.get('action', ''):<9} {str(rec.get('outcome', ''))[:40]}")
        print()
        print(f"{'member':<12}{'version':<9}{'weight':>7}  {'state':<9}replicas")
        for m in status["members"]:
            print(f"{m['name']:<12}{m['version']:<9}{m['weight']:>7.3f}  {m['state']:<9}"
                  + ", ".join(f"{r['id']}:{r['state']}" for r in m["replicas"]))
        print()
        print(f"registry, prediction and feedback logs: {storage}")
        if dashboard:
            print(f"Ray dashboard (while the demo runs): http://{dashboard}")
        print(f"audit log (JSONL, append-only): {storage}/audit/{cfg.model}")
        _write_report(storage, cfg.model, since=started, progress=progress)
        print("next: `raymedic up` keeps the service running; `raymedic status` shows it, `raymedic chaos` "
              "breaks it on purpose, `raymedic audit` shows what the controller did.")
        return 0 if failures == 0 and healed == len(drills) and concept_healed else 1
    finally:
        # lazy: Ray Serve reads the fast-path settings start_embedded sets when it is imported
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
