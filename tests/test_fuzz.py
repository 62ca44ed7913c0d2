"""Property-based fuzz of a real deployed service (issue 19): over ten thousand generated requests per run.

Hypothesis draws the requests from the model's own metadata (``GET /v1/models/<model>``: features, types,
ranges, levels, classes; :mod:`tests.fuzz_requests`) — fully valid ones, near-valid ones with one thing
wrong, structurally random JSON and raw bytes — over V1 predict, V1 feedback and V2 infer. A pool of
keep-alive connections sends them through Serve's real HTTP proxy while the next batch is drawn. Every
answer is checked: never a 5xx, every 4xx a JSON ``{"error": "..."}``, every 2xx the contract's fields.
After the fuzz the service must be unharmed: the same answer to a fixed request, ``/healthz`` alive, no
replica restarted, no replica incident, and no valid request answered by fewer than every member.

The run is deterministic (``derandomize``, no example database), so a failure reproduces; the failing
requests are printed with their answers.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from tests.conftest import admin_token_env, local_service, wait_for

hypothesis = pytest.importorskip("hypothesis")  # the dev extra
TOKEN = "test-admin-token"
ray = pytest.importorskip("ray")

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from raymedic.app import service
from raymedic.app.http import request_json
from tests.fuzz_requests import REAL_ID, FuzzRequest, Model, requests

pytestmark = pytest.mark.ray

MIN_REQUESTS = 10_000
BATCH = 100
"""Requests per Hypothesis example: drawing them in batches spreads the engine's per-example cost."""
EXAMPLES = MIN_REQUESTS // BATCH + 5
CONNECTIONS = 12
"""Keep-alive connections sending at once (a forged id dated a second ago holds one for a log flush)."""
MEMBERS = [
    {"name": "logistic", "kind": "logistic", "fallback": True, "replicas": 1, "num_cpus": 0.2},
    {"name": "mlp", "kind": "mlp", "replicas": 1, "num_cpus": 0.2},
    {"name": "tabresnet", "kind": "tabresnet", "replicas": 1, "num_cpus": 0.2},
]
"""The tests' ensemble (trained as everywhere else, so an earlier module's registry is reused), one replica
each: the cheapest service."""
REPLICA_FAULTS = {"dead", "hung", "error", "wrong", "slow", "leak", "gpu"}
HEALING_ACTIONS = {"restart", "drained", "standby-serves", "quarantine", "suppressed", "proposed", "rollback",
                   "evict"}
"""What the controller does to a replica or member it suspects (compacting the fuzz's log parts is fine)."""


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    # weight_eta: labels move the weights by ~1e-9, so the fixed request's answer after ten thousand
    # requests (a few hundred labels among them) must be the one before. No retrain on the fuzz's labels.
    # Generous member deadline and probe timeout: the fuzz loads two cores, and a member left out of an
    # answer or a replica restarted must mean a poisoned request, not a slow machine.
    with admin_token_env(TOKEN), local_service(tmp_path_factory.mktemp("fuzz"), members=MEMBERS,
                       gateway={"replicas": 1, "num_cpus": 0.2, "member_timeout_s": 10.0, "hedge_after_s": 5.0},
                       controller={"weight_eta": 1e-9, "probe_timeout_s": 5.0},
                       retraining={"enabled": False}) as (url, cfg):
        yield url, cfg


class Sender:
    """Threads sending queued :class:`FuzzRequest` batches over keep-alive connections and checking each
    answer; real inference ids from 2xx answers feed the feedback requests that ask for them."""

    def __init__(self, host: str, port: int, model: Model, *, threads: int) -> None:
        self.host, self.port, self.model = host, port, model
        self.todo: queue.Queue[FuzzRequest | None] = queue.Queue(maxsize=4 * BATCH)
        self.sent = 0
        self.codes: Counter[int] = Counter()
        self.kinds: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()  # time answering, by kind
        self.blocked_s = 0.0  # the generator waiting for room in the queue (the service is the bottleneck)
        self.failures: list[str] = []
        self.versions: Counter[str] = Counter()
        self.degraded = 0
        self._ids: list[str] = []
        self._stand_ins = 0
        self._relabels = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        for _ in self._threads:
            self.todo.put(None)
        for t in self._threads:
            t.join(timeout=120)

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while (req := self.todo.get()) is not None:
            body, real = self._resolve(req)
            t0 = time.perf_counter()
            try:
                status, raw = self._send(conn, req, body)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self._fail(req, f"no answer: {type(exc).__name__}: {exc}", body)
                continue
            with self._lock:
                self.sent += 1
                self.codes[status] += 1
                self.kinds[req.kind] += 1
                self.seconds[req.kind] += time.perf_counter() - t0
            try:
                problem = self._check(req, status, raw, real)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a malformed answer
                problem = f"does not have the contract's shape ({type(exc).__name__}: {exc})"
            if problem:
                self._fail(req, f"HTTP {status} {problem}; answer {raw[:400]!r}", body)
            elif real and req.rows is not None and status == 200:
                self._relabel(conn, req, body, real)
        conn.close()

    def _relabel(self, conn: http.client.HTTPConnection, req: FuzzRequest, body: bytes, real: list[str]) -> None:
        """A label is final: the same body again (a client's retry) is a 200 that takes nothing, another label
        for one of its ids a 409 that names it."""
        with self._lock:
            self._relabels += 1
            n = self._relabels
        sent = json.loads(body)
        if n % 2:
            again, expect = body, "repeat"
        else:
            k = sent["inference_ids"].index(real[0])
            other = next(c for c in self.model.classes if str(c) != str(sent["labels"][k]))
            again, expect = json.dumps({"inference_ids": [real[0]], "labels": [other]}).encode(), "conflict"
        kind = f"feedback/{expect}"
        t0 = time.perf_counter()
        try:
            status, raw = self._send(conn, req, again)
        except (OSError, http.client.HTTPException) as exc:
            self._fail(req, f"{kind}: no answer: {type(exc).__name__}: {exc}", again)
            return
        with self._lock:
            self.sent += 1
            self.codes[status] += 1
            self.kinds[kind] += 1
            self.seconds[kind] += time.perf_counter() - t0
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if expect == "repeat":
            ok = status == 200 and isinstance(doc, dict) and doc.get("accepted") == 0 and \
                set(real) <= set(doc.get("repeated_ids") or ())
        else:
            ok = status == 409 and isinstance(doc, dict) and real[0] in str(doc.get("error"))
        if not ok:
            self._fail(req, f"{kind}: HTTP {status}; answer {raw[:400]!r}", again)

    def _send(self, conn: http.client.HTTPConnection, req: FuzzRequest, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                conn.request(req.method, req.path, body=body, headers=dict(req.headers))
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed the kept-alive connection before this request reached it: once more on
                # a new one (a request that got no answer at all is a failure below).
                conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _resolve(self, req: FuzzRequest) -> tuple[bytes, list[str]]:
        """The body with each placeholder replaced by a real id not labelled yet (or an old forged one)."""
        body, real = req.body, []
        for _ in range(req.real_ids):
            with self._lock:
                iid = self._ids.pop() if self._ids else None
                self._stand_ins += 1
                stand_in = f"{0:012x}{self._stand_ins:020x}"  # dated 1970: unknown at once, and distinct
            if iid is None:
                iid = stand_in
            else:
                real.append(iid)
            body = body.replace(REAL_ID.encode(), iid.encode(), 1)
        return body, real

    def _fail(self, req: FuzzRequest, what: str, body: bytes) -> None:
        with self._lock:
            self.failures.append(f"{what}\n    request {req.show()}" +
                                 (f"\n    sent body {body[:300]!r}" if body != req.body else ""))

    def _check(self, req: FuzzRequest, status: int, raw: bytes, real: list[str]) -> str | None:
        """What is wrong with this answer, or None."""
        if status >= 500:
            return "is a 5xx"
        try:
            doc = json.loads(raw)
        except ValueError:
            return "is not JSON"
        if status >= 400:
            if not (isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"]):
                return 'is a 4xx without an {"error": "..."} string'
            return "is a 4xx for a valid request" if req.rows is not None else None
        if not 200 <= status < 300 or not isinstance(doc, dict):
            return "is neither a 2xx object nor a 4xx"
        if req.path.endswith(":feedback"):
            return self._check_feedback(req, doc, real)
        if req.path.endswith("/infer"):
            return self._check_v2(req, doc)
        return self._check_predict(req, doc)

    def _check_answer(self, req: FuzzRequest, preds: list[Any], probs: list[list[float]], ids: list[Any],
                      version: Any, degraded: Any) -> str | None:
        classes = list(self.model.classes)
        n = len(preds)
        if req.rows is not None and n != req.rows:
            return f"answers {n} rows for {req.rows}"
        if n == 0 or len(probs) != n or len(ids) != n:
            return "has predictions, probabilities and inference_ids of different lengths"
        if any(p not in classes for p in preds):
            return "predicts a label that is not a class"
        if any(len(p) != len(classes) or abs(sum(p) - 1) > 1e-4 for p in probs):
            return "has probabilities that are not one distribution over the classes per row"
        if not all(isinstance(i, str) and len(i) == 32 for i in ids) or len(set(ids)) != n:
            return "has inference ids that are not distinct 32-character strings"
        if not isinstance(version, str) or not isinstance(degraded, bool):
            return "lacks model_version (str) or degraded (bool)"
        with self._lock:
            self._ids.extend(ids)
            self.versions[version] += 1
            self.degraded += degraded
        return None

    def _check_predict(self, req: FuzzRequest, doc: dict[str, Any]) -> str | None:
        missing = {"predictions", "probabilities", "inference_ids", "model_version", "degraded"} - set(doc)
        if missing:
            return f"lacks {sorted(missing)}"
        return self._check_answer(req, doc["predictions"], doc["probabilities"], doc["inference_ids"],
                                  doc["model_version"], doc["degraded"])

    def _check_v2(self, req: FuzzRequest, doc: dict[str, Any]) -> str | None:
        outputs = {o.get("name"): o for o in doc.get("outputs", []) if isinstance(o, dict)}
        if doc.get("model_name") != self.model.name or set(outputs) != {"predictions", "probabilities",
                                                                       "inference_ids"}:
            return "lacks model_name or the three output tensors"
        preds, probs, ids = (outputs[k]["data"] for k in ("predictions", "probabilities", "inference_ids"))
        k = len(self.model.classes)
        if outputs["probabilities"]["shape"] != [len(preds), k] or len(probs) != len(preds) * k:
            return "has a probabilities tensor whose shape is not [N, classes]"
        sent = json.loads(req.body) if req.rows is not None else None
        if sent is not None and "id" in sent and doc.get("id") != sent["id"]:
            return "does not echo the request's id"
        return self._check_answer(req, preds, [probs[i * k:(i + 1) * k] for i in range(len(preds))], ids,
                                  doc.get("model_version"), doc.get("parameters", {}).get("degraded"))

    def _check_feedback(self, req: FuzzRequest, doc: dict[str, Any], real: list[str]) -> str | None:
        if not isinstance(doc.get("accepted"), int) or not isinstance(doc.get("unknown_ids"), list):
            return "lacks accepted (int) or unknown_ids (list)"
        if req.rows is None:
            return None
        if doc["accepted"] != len(real) or any(i in real for i in doc["unknown_ids"]):
            return f"accepted {doc['accepted']} labels for {len(real)} ids the service issued"
        if doc["accepted"] + len(doc["unknown_ids"]) != req.rows:
            return "does not account for every id"
        return None


def _status(url: str) -> dict[str, Any]:  # with the token: the full view (the controller's pid)
    r = request_json("GET", f"{url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout_s=30)
    assert r.status == 200, r.body
    return r.body


def _replicas(status: dict[str, Any]) -> dict[str, set[str]]:
    """Every replica id by deployment (gateway included) and the controller's process: a restart changes one."""
    out = {m["name"]: {r["id"] for r in m["replicas"]} for m in status["members"]}
    out["gateway"] = {r["id"] for r in status["gateway"]["replicas"]}
    out["controller"] = {str(status["controller"].get("pid"))}
    return out


def _answer(url: str, cfg: Any, row: dict[str, Any]) -> dict[str, Any]:
    r = request_json("POST", f"{url}/v1/models/{cfg.model}:predict", {"instances": [row]}, timeout_s=30)
    assert r.status == 200, r.body
    return r.body


def test_ten_thousand_generated_requests_get_4xx_or_contract_answers_and_harm_nothing(svc):
    url, cfg = svc
    info = request_json("GET", f"{url}/v1/models/{cfg.model}", timeout_s=30)
    assert info.status == 200, info.body
    model = Model.from_info(info.body)
    fixed = service.golden_example(cfg)
    assert fixed is not None
    before = _answer(url, cfg, fixed)
    full_version = before["model_version"]
    wait_for(lambda: all(m["replicas"] and all(r["state"] == "RUNNING" for r in m["replicas"])
                         for m in _status(url)["members"]), timeout_s=60, what="every replica RUNNING")
    status0 = _status(url)
    replicas0, incidents0 = _replicas(status0), {i["id"] for i in status0["incidents"]}

    host, port = url.removeprefix("http://").split(":")
    sender = Sender(host, int(port), model, threads=CONNECTIONS)
    started, started_at = time.monotonic(), time.time()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(requests(model), min_size=BATCH, max_size=BATCH, unique_by=lambda r: (r.path, r.body)))
    def generate(batch: list[FuzzRequest]) -> None:
        for req in batch:
            t0 = time.perf_counter()
            sender.todo.put(req)
            sender.blocked_s += time.perf_counter() - t0

    try:
        generate()
    finally:
        sender.close()
    took = time.monotonic() - started
    print(f"fuzz: {sender.sent} requests in {took:.1f} s ({sender.sent / took:.0f}/s); "
          f"codes {dict(sorted(sender.codes.items()))}; kinds {dict(sorted(sender.kinds.items()))}; "
          f"{len(sender.failures)} failure(s); generator waited {sender.blocked_s:.1f} s for the service; "
          f"ms per answer by kind {({k: round(1000 * v / sender.kinds[k]) for k, v in sorted(sender.seconds.items())})}")
    assert not sender.failures, f"{len(sender.failures)} bad answer(s); the first ones:\n" + \
        "\n".join(sender.failures[:15])
    assert sender.sent >= MIN_REQUESTS

    # One poisoned request must never harm another: every valid request was answered by every member ...
    assert set(sender.versions) == {full_version} and sender.degraded == 0, (dict(sender.versions), sender.degraded)
    # ... and afterwards the service answers as before, alive, with no replica restarted or suspected.
    after = _answer(url, cfg, fixed)
    assert after["predictions"] == before["predictions"] and after["model_version"] == full_version
    np.testing.assert_allclose(after["probabilities"], before["probabilities"], atol=2e-6)
    assert request_json("GET", f"{url}/healthz", timeout_s=30).body == {"status": "alive"}
    status1 = _status(url)
    assert _replicas(status1) == replicas0, (replicas0, _replicas(status1))
    new = [i for i in status1["incidents"] if i["id"] not in incidents0]
    assert not [i for i in new if i.get("kind") in REPLICA_FAULTS], new
    assert not [a for a in status1["actions"] if a.get("ts", 0) >= started_at and a.get("kind") in HEALING_ACTIONS], \
        status1["actions"]
    assert all(r["state"] == "RUNNING" for m in status1["members"] for r in m["replicas"]), status1["members"]
