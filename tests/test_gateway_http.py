"""The gateway's HTTP contract without Serve: routes, error answers and status codes (no Ray).

The FastAPI app is driven as an ASGI app in-process. Serve's class-based view
injects the deployment instance through a dependency (the default of each route
method's ``self``); overriding it with a stand-in built from the same route mixins
lets every route answer here, over hand-written components.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import json
import threading
import time
from typing import Any

import pytest

from raymedic.config import ReviewConfig, parse_config
from raymedic.errors import InvalidRequest, ServiceUnavailable
from raymedic.storage import Storage
from serve_apps.access import ClientAccess, client_key_table
from serve_apps.combine import equal_weights
from serve_apps.gateway import api
from serve_apps.gateway.admin import AdminRoutes
from serve_apps.gateway.api import MAX_BODY_BYTES
from serve_apps.gateway.chaos_routes import ChaosRoutes
from serve_apps.gateway.link import ControllerLink, LinkState
from serve_apps.gateway.routes import ROUTES
from serve_apps.gateway.status import AppViewCache
from serve_apps.gateway.v1 import V1Routes
from serve_apps.gateway.v2_routes import V2Routes
from serve_apps.predlog import PredictionLog, new_inference_id
from serve_apps.review import ReviewBook, ReviewItem
from serve_apps.serve_state import AppView, DeploymentView, ReplicaView
from serve_apps.telemetry import Admission, LatencyWindow
from serve_apps.validation import input_policies
from train_jobs.schema import ModelSchema

SCHEMA = ModelSchema.numeric(["f0", "f1"], target="y", classes=(0, 1), mins=[0, 0], maxs=[1, 1])
TOKEN = "s3cret"
MIXINS = (V1Routes, V2Routes, AdminRoutes, ChaosRoutes)


class ScriptedPredictor:
    """Answers a fixed answer, or raises what the test asks for."""

    def __init__(self) -> None:
        self.raises: BaseException | None = None
        self.bodies: list[Any] = []

    async def answer(self, body: Any, *, timer: Any = None) -> dict[str, Any]:
        self.bodies.append(body)
        if self.raises is not None:
            raise self.raises
        return {"predictions": [1], "probabilities": [[0.25, 0.75]], "inference_ids": ["i" * 32],
                "model_version": "logistic:v1,mlp:v1,tabresnet:v1", "degraded": False}


class ScriptedFeedback:
    """Accepts every label it is given (the intake's real work is test_serving's)."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []

    async def accept(self, body: Any) -> dict[str, Any]:
        self.bodies.append(body)
        return {"accepted": len(body.get("labels", [])), "unknown_ids": []}


def _no_controller() -> Any:
    raise ValueError("no controller in this test")


class StandLane:
    """One model's lane as :class:`serve_apps.gateway.lane.ModelLane` holds it, over hand-written parts."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.model = cfg.model
        self.order = [m.name for m in cfg.members]
        self.schema = SCHEMA
        self.policies = input_policies(SCHEMA, cfg.data)
        self.state = LinkState(weights=equal_weights(self.order), versions={m: "v1" for m in self.order})
        self.link = ControllerLink(self.state, tag="gw-test", order=self.order, period_s=0.5,
                                   enabled=cfg.controller.enabled, lookup=_no_controller, model=cfg.model)
        self.predictor = ScriptedPredictor()
        self.feedback_intake = ScriptedFeedback()
        self.predlog = PredictionLog(Storage(cfg.storage_path), cfg.model, tag="gw-test")
        self.review = ReviewBook(Storage(cfg.storage_path), cfg.model, settings=cfg.review, tag="gw-test",
                                 feature_names=[f.name for f in SCHEMA.features])
        self.latency = LatencyWindow()
        self.members: dict[str, Any] = {}

    def view(self, view: AppView | None) -> AppView | None:
        return view.of_model({m: self.cfg.deployment_of(m) for m in self.order}) if view is not None else None


class Stand(*MIXINS):
    """The attributes the route mixins need, as the deployment sets them (one model's lane)."""

    def __init__(self, *, view: AppView | None, chaos: bool = False, token: str | None = TOKEN,
                 also: tuple[str, ...] = (), storage: Any = None, gateway: dict[str, Any] | None = None,
                 clock: Any = time.monotonic) -> None:
        self._cfg = parse_config({"chaos": {"enabled": chaos}, "models": {m: {} for m in also},
                                  **({"gateway": gateway} if gateway else {}),
                                  **({"storage_path": str(storage)} if storage is not None else {})})
        self._lanes = {name: StandLane(self._cfg.for_model(name)) for name in self._cfg.model_names}
        lane = self._lanes[self._cfg.model]
        self._order, self._state, self._predictor = lane.order, lane.state, lane.predictor  # what tests poke
        self._tag = "gw-test"
        self._chaos = chaos
        self._views = AppViewCache(lambda: view)
        self._admission = Admission(4)
        self._admin_sha = hashlib.sha256(token.encode()).hexdigest() if token else None
        gw = self._cfg.gateway
        self._access = ClientAccess(client_key_table(gw), feedback_rate_per_s=gw.feedback_rate_per_s,
                                    feedback_burst=gw.feedback_burst, clock=clock)


def running_view(order: list[str]) -> AppView:
    return AppView("raymedic", "RUNNING", deployments={
        m: DeploymentView(m, "HEALTHY", "", 1, (ReplicaView("r1", "RUNNING"),)) for m in order})


@pytest.fixture
def gateway():
    """Route requests to a stand-in (replace ``holder[0]`` to change it)."""
    dependency = inspect.signature(V1Routes.healthz).parameters["self"].default.dependency
    holder = [Stand(view=None)]
    api.dependency_overrides[dependency] = lambda: holder[0]
    yield holder
    api.dependency_overrides.pop(dependency, None)


def call(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], Any]:
    """One request through the ASGI app: (status, headers, JSON body)."""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "server": ("test", 80), "client": ("client", 1)}
    chunks = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        try:
            await api(scope, receive, send)
        except Exception:  # Starlette re-raises an unexpected error after its 500 went out
            pass

    asyncio.run(main())
    start = next(m for m in sent if m["type"] == "http.response.start")
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(raw)


PREDICT = "/v1/models/synthetic:predict"


def test_every_route_method_of_the_mixins_is_mounted_once():
    mounted = [r.endpoint for r in ROUTES]
    public = [getattr(cls, name) for cls in MIXINS for name in vars(cls)
              if not name.startswith("_") and inspect.iscoroutinefunction(getattr(cls, name))]
    assert sorted(mounted, key=id) == sorted(public, key=id)
    assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES)


def test_only_the_routes_that_had_a_description_publish_one():
    """Route docstrings put developer notes after a form feed: the OpenAPI document stays as it was."""
    described = {(path, method): op["description"] for path, ops in api.openapi()["paths"].items()
                 for method, op in ops.items() if "description" in op}
    assert described == {
        ("/v2/models/{model}/infer", "post"): "Open Inference Protocol (V2): typed tensors in and out, the same "
                                              "path as :predict.",
        ("/v1/admin/trial", "post"): "Put a registered version on live trial next to its champion (canary or "
                                     "shadow, per config).",
    }


def test_health_and_readiness(gateway):
    assert call("GET", "/healthz")[0::2] == (200, {"status": "alive"})
    status, headers, body = call("GET", "/readyz")
    assert status == 503 and headers["retry-after"] == "1" and "not ready" in body["error"]
    assert call("GET", "/v2/health/ready")[0::2] == (503, {"ready": False})
    gateway[0] = Stand(view=running_view(gateway[0]._order))
    assert call("GET", "/readyz")[0::2] == (200, {"status": "ready"})
    assert call("GET", "/v2/models/synthetic/ready")[0::2] == (200, {"name": "synthetic", "ready": True})


def test_unknown_routes_methods_and_models_are_json_errors(gateway):
    assert call("GET", "/nope")[0::2] == (404, {"error": "no route GET /nope; see GET /docs for the API"})
    assert call("DELETE", "/healthz")[0::2] == (405, {"error": "DELETE is not allowed on /healthz; see GET /docs"})
    status, _, body = call("GET", "/v1/models/other")
    assert status == 404 and "model 'other' is not served here" in body["error"]
    assert call("GET", "/v1/models")[0::2] == (200, {"models": ["synthetic"]})


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"", 400, "the body is empty"),
    (b"{not json", 400, "the body is not valid JSON"),
    (b" " * (MAX_BODY_BYTES + 1), 413, "send smaller batches"),
    # Hostile bodies that once escaped the JSON error handler as 500s:
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (b'{"instances": [[' + b"9" * 5001 + b', 0.5]]}', 400, "a number too long to read"),
    (b'{"instances": [["\\ud800", 0.5]]}', 400, "lone UTF-16 surrogate"),
    (b'{"instances": [[0.1, 0.2]], "\\udc00": 1}', 400, "lone UTF-16 surrogate"),
    # Found by the fuzz (tests/test_fuzz.py): a surrogate as raw bytes, which json.loads(bytes) decodes with
    # surrogatepass, reached the answer's encoder (a 500 for feedback echoing it in unknown_ids)
    (b'{"instances": [["\xed\xa0\x80", 0.5]]}', 400, "not valid text"),
    ('{"instances": [["\ud800", 0.5]]}'.encode("utf-16-le", "surrogatepass"), 400, "not valid text"),
    ('{"instances": [["\\ud800", 0.5]]}'.encode("utf-16"), 400, "lone UTF-16 surrogate"),
])
def test_bad_bodies_are_refused_before_prediction(gateway, body, status, fragment):
    got, _, answer = call("POST", PREDICT, body)
    assert got == status and fragment in answer["error"] and gateway[0]._predictor.bodies == []


def test_a_declared_oversized_body_is_refused_before_it_is_read(gateway):
    got, _, answer = call("POST", PREDICT, b"{}", headers={"Content-Length": str(MAX_BODY_BYTES + 1)})
    assert got == 413 and "send smaller batches" in answer["error"] and gateway[0]._predictor.bodies == []


def test_a_large_body_is_parsed_off_the_event_loop(gateway):
    rows = [[0.1, 0.2]] * 40_000  # ~480 KB: past PARSE_OFF_LOOP_BYTES
    raw = json.dumps({"instances": rows}).encode()
    body_module = importlib.import_module("serve_apps.gateway.api")  # the package's `api` is the FastAPI app
    assert len(raw) > body_module.PARSE_OFF_LOOP_BYTES
    threads: list[str] = []
    real = body_module.parse_json

    def spy(data: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return real(data)

    body_module.parse_json = spy
    try:
        assert call("POST", PREDICT, raw)[0] == 200
        assert call("POST", PREDICT, b'{"instances": [[0.1, 0.2]]}')[0] == 200
    finally:
        body_module.parse_json = real
    assert threads[0] != "MainThread" and threads[1] == "MainThread", threads


def test_errors_of_the_prediction_path_keep_their_codes(gateway):
    predictor = gateway[0]._predictor
    assert call("POST", PREDICT, b'{"instances": [[0.1, 0.2]]}')[0] == 200
    predictor.raises = InvalidRequest("instances[0] is wrong", status=422)
    assert call("POST", PREDICT, b"{}")[0::2] == (422, {"error": "instances[0] is wrong"})
    predictor.raises = ServiceUnavailable("no ensemble member answered", retry_after_s=1)
    status, headers, _ = call("POST", PREDICT, b"{}")
    assert status == 503 and headers["retry-after"] == "1"
    predictor.raises = RuntimeError("a bug")
    status, _, body = call("POST", PREDICT, b"{}")
    assert status == 500 and body["error"].startswith("internal error ") and "a bug" not in body["error"]


def test_v2_infer_translates_around_the_same_path(gateway):
    body = {"id": "req-1", "inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [0.1, 0.2]}]}
    status, _, out = call("POST", "/v2/models/synthetic/infer", json.dumps(body).encode())
    assert status == 200 and out["id"] == "req-1" and out["model_name"] == "synthetic"
    assert gateway[0]._predictor.bodies == [{"instances": [[0.1, 0.2]]}]


def test_admin_routes_need_the_deployed_token(gateway):
    gateway[0] = Stand(view=None, token=None)
    assert call("POST", "/v1/admin/pause")[0] == 403
    gateway[0] = Stand(view=None)
    assert call("POST", "/v1/admin/pause")[0] == 401
    assert call("POST", "/v1/admin/pause", headers={"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = call("POST", "/v1/admin/pause", headers=auth)  # the controller is away
    assert status == 503 and headers["retry-after"] == "2" and "not reachable" in body["error"]
    assert call("POST", "/v1/admin/mode", b'{"mode": "sideways"}', headers=auth)[0] == 400
    for bad in (b'{"member": "mlp"}', b'{"member": "mlp", "version": 3}', b'{"version": "v0001"}', b'[]',
                b'{"member": "mlp", "version": "v0001", "reason": 1}'):
        status, _, body = call("POST", "/v1/admin/promote", bad, headers=auth)
        assert status == 400 and body["error"].startswith('send {"member": "<name>", "version": "<version id'), bad


def test_chaos_routes_do_not_exist_without_chaos(gateway):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert call("POST", "/v1/admin/chaos", b"{}", headers=auth)[0::2] == (
        404, {"error": "no route POST /v1/admin/chaos; see GET /docs for the API"})
    gateway[0] = Stand(view=None, chaos=True)
    status, _, body = call("POST", "/v1/admin/chaos", b'{"fault": "melt", "member": "mlp"}', headers=auth)
    assert status == 422 and "fault must be one of" in body["error"]


def test_status_without_a_controller_says_so_and_shows_what_this_gateway_knows(gateway):
    gateway[0] = Stand(view=running_view(gateway[0]._order))
    gateway[0]._state.avoid = {"mlp": ["r1"]}
    gateway[0]._state.standby = {"tabresnet": ["r1"]}
    status, _, doc = call("GET", "/v1/status")
    assert status == 200 and doc["controller"]["state"] == "unreachable"
    assert doc["gateway"]["answered_by"]["id"] == "gw-test" and doc["model_version"] == \
        "logistic:v1,mlp:v1,tabresnet:v1"
    assert [m["replicas"][0]["state"] for m in doc["members"]] == ["RUNNING", "AVOIDED", "STANDBY"]


def test_status_without_the_admin_token_leaves_out_processes_nodes_paths_and_the_webhook(gateway):
    """/v1/status needs no token (a health dashboard polls it): without one it aims no attack (no pid to
    kill, no node id, host or path, no webhook); with the token, the full view `raymedic status` prints."""
    order = gateway[0]._order
    view = AppView("raymedic", "RUNNING", deployments={
        m: DeploymentView(m, "HEALTHY", "", 1, (ReplicaView("r1", "RUNNING", pid=4242, node_id="ab" * 28),))
        for m in order})
    gateway[0] = Stand(view=view)

    async def controller_status() -> dict[str, Any]:
        return {"state": "running", "mode": "auto", "pid": 77, "webhook": {"url": "https://hooks.example/…"},
                "disk": {"verdict": "ok", "storage": {"path": "/srv/raymedic", "free_fraction": 0.5}},
                "nodes": {"nodes": [{"name": "worker-1", "node_id": "cd" * 28, "host": "10.0.0.7", "phase": "ok"}]},
                "incidents": [{"id": "inc-000001", "kind": "crash", "evidence": {"pid": 4242}}]}

    gateway[0]._lanes["synthetic"].link.status = controller_status
    status, _, anon = call("GET", "/v1/status")
    assert status == 200 and anon["view"] == "redacted" and "Bearer" in anon["note"]
    text = json.dumps(anon)
    for secret in ("4242", "ab" * 28, "cd" * 28, "10.0.0.7", "/srv/raymedic", "hooks.example", '"pid"'):
        assert secret not in text, secret
    # What an anonymous health dashboard reads is all there.
    assert [(m["name"], m["state"], m["replicas"]) for m in anon["members"]] == [
        (m, "HEALTHY", [{"id": "r1", "state": "RUNNING"}]) for m in order]
    assert anon["controller"]["state"] == "running" and anon["controller"]["disk"]["storage"]["free_fraction"] == 0.5
    assert anon["controller"]["nodes"]["nodes"] == [{"name": "worker-1", "phase": "ok"}]
    assert anon["incidents"] == [{"id": "inc-000001", "kind": "crash", "evidence": {}}]
    status, _, full = call("GET", "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and full["view"] == "full" and full["members"][0]["replicas"][0]["pid"] == 4242
    assert full["controller"]["pid"] == 77 and full["controller"]["webhook"]["url"] == "https://hooks.example/…"
    assert full["controller"]["nodes"]["nodes"][0]["node_id"] == "cd" * 28
    status, _, body = call("GET", "/v1/status", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and "wrong admin token" in body["error"]


def test_predict_and_feedback_need_a_client_key_where_client_auth_is_on(gateway, monkeypatch):
    """Each client's key comes from the deployer's environment, a file or its sha256; the gateway holds
    hashes only and answers a call without a known key with a 401 naming what to send."""
    monkeypatch.setenv("SHOP_KEY", "shop-key-1")
    clients = [{"name": "shop", "key_env": "SHOP_KEY"},
               {"name": "batch", "key_sha256": hashlib.sha256(b"batch-key-2").hexdigest()}]
    gateway[0] = Stand(view=None, gateway={"client_auth": True, "clients": clients})
    body = b'{"instances": [[0.1, 0.2]]}'
    for path, payload in ((PREDICT, body), ("/v1/models/synthetic:feedback", b'{"inference_ids": [], "labels": []}'),
                          ("/v2/models/synthetic/infer", b'{"inputs": []}')):
        status, _, err = call("POST", path, payload)
        assert status == 401 and "Authorization: Bearer <your client key>" in err["error"], (path, err)
        status, _, err = call("POST", path, payload, headers={"Authorization": "Bearer guess"})
        assert status == 401 and "unknown client key" in err["error"], (path, err)
    assert gateway[0]._predictor.bodies == []  # refused before any work
    assert call("POST", PREDICT, body, headers={"Authorization": "Bearer shop-key-1"})[0] == 200
    assert call("POST", PREDICT, body, headers={"X-API-Key": "batch-key-2"})[0] == 200
    assert "shop-key-1" not in json.dumps(gateway[0]._cfg.model_dump(mode="json"))  # what replicas are sent
    # Off by default: no key asked for.
    gateway[0] = Stand(view=None)
    assert call("POST", PREDICT, body)[0] == 200


def test_feedback_is_paced_per_client_with_429_and_retry_after(gateway):
    now = [100.0]
    clients = [{"name": "shop", "key_sha256": hashlib.sha256(b"k-shop").hexdigest()},
               {"name": "lab", "key_sha256": hashlib.sha256(b"k-lab").hexdigest()}]
    gateway[0] = Stand(view=None, clock=lambda: now[0], gateway={
        "client_auth": True, "clients": clients, "feedback_rate_per_s": 0.5, "feedback_burst": 2})
    path, body = "/v1/models/synthetic:feedback", b'{"inference_ids": ["x"], "labels": [1]}'
    shop, lab = {"Authorization": "Bearer k-shop"}, {"Authorization": "Bearer k-lab"}
    assert [call("POST", path, body, headers=shop)[0] for _ in range(2)] == [200, 200]  # the burst
    status, headers, err = call("POST", path, body, headers=shop)
    assert status == 429 and headers["retry-after"] == "2" and "'shop'" in err["error"] and "0.5/s" in err["error"]
    assert call("POST", path, body, headers=lab)[0] == 200  # another client has its own bucket
    now[0] += 2.0  # one token back
    assert call("POST", path, body, headers=shop)[0] == 200
    assert len(gateway[0]._lanes["synthetic"].feedback_intake.bodies) == 4  # the refused one did no work
    # Without client keys the bucket is the caller's address.
    gateway[0] = Stand(view=None, clock=lambda: now[0], gateway={"feedback_rate_per_s": 1.0, "feedback_burst": 1})
    assert [call("POST", path, body)[0] for _ in range(2)] == [200, 429]


def test_two_models_get_their_own_routes_lanes_and_status():
    """One gateway, two lanes: each route reaches its model's parts only; no model is the first's."""
    dependency = inspect.signature(V1Routes.healthz).parameters["self"].default.dependency
    first = parse_config({})
    view = AppView("raymedic", "RUNNING", deployments={
        d: DeploymentView(d, "HEALTHY", "", 1, (ReplicaView(f"r-{d}", "RUNNING"),))
        for d in [m.name for m in first.members] + [f"cards.{m.name}" for m in first.members]})
    stand = Stand(view=view, also=("cards",))
    api.dependency_overrides[dependency] = lambda: stand
    try:
        assert call("GET", "/v1/models")[2] == {"models": ["synthetic", "cards"]}
        assert call("POST", "/v1/models/cards:predict", b'{"instances": [[0.1, 0.2]]}')[0] == 200
        assert stand._lanes["cards"].predictor.bodies == [{"instances": [[0.1, 0.2]]}]
        assert stand._lanes["synthetic"].predictor.bodies == []
        status, _, body = call("POST", "/v1/models/dogs:predict", b"{}")
        assert status == 404 and "['synthetic', 'cards']" in body["error"], body
        doc = call("GET", "/v1/status?model=cards")[2]
        assert doc["model"] == "cards" and doc["models"] == ["synthetic", "cards"]
        # cards' members are read from its own deployments (cards.mlp), by member name
        assert [m["replicas"][0]["id"] for m in doc["members"]] == ["r-cards.logistic", "r-cards.mlp",
                                                                    "r-cards.tabresnet"]
        assert call("GET", "/v1/status")[2]["model"] == "synthetic"
        assert call("GET", "/v1/status?model=dogs")[0] == 404
        assert call("GET", "/readyz")[0] == 200 and call("GET", "/v2/models/cards/ready")[0] == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert call("POST", "/v1/admin/pause?model=dogs", headers=auth)[0] == 404
    finally:
        api.dependency_overrides.pop(dependency, None)


def test_status_shows_the_prediction_log_health(gateway):
    gateway[0] = Stand(view=running_view(gateway[0]._order))
    doc = call("GET", "/v1/status")[2]
    assert doc["prediction_log"]["writable"] is True and doc["prediction_log"]["dropped_rows"] == 0


def test_the_review_route_pages_the_queue_and_says_what_to_fix(gateway, tmp_path):
    stand = gateway[0] = Stand(view=None, storage=tmp_path)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    assert call("GET", "/v1/models/synthetic/review")[0] == 401  # every client's inputs: the admin token only
    off = call("GET", "/v1/models/synthetic/review", headers=admin)
    assert off[0] == 404 and "review.threshold" in off[2]["error"]
    lane = stand._lanes["synthetic"]
    lane.review = ReviewBook(Storage(str(tmp_path)), "synthetic", settings=ReviewConfig(threshold=0.7),
                             tag="gw-test", feature_names=["f0", "f1"])
    now = time.time()
    items = [ReviewItem(new_inference_id(now - 3 + k), now - 3 + k, "v1", "1", (0.4, 0.6), "{}") for k in range(3)]
    lane.review.queue(items)
    status, _, page = call("GET", "/v1/models/synthetic/review?limit=2", headers=admin)
    assert status == 200 and [i["inference_id"] for i in page["items"]] == [i.inference_id for i in items[:2]]
    rest = call("GET", f"/v1/models/synthetic/review?after={page['next_after']}", headers=admin)[2]
    assert [i["inference_id"] for i in rest["items"]] == [items[2].inference_id] and rest["next_after"] is None
    assert page["size"] == 3 and call("GET", "/v1/status")[2]["review"]["size"] == 3
    bad = call("GET", "/v1/models/synthetic/review?limit=5000", headers=admin)
    assert bad[0] == 422 and "from 1 to 1000" in bad[2]["error"]
    assert call("GET", "/v1/models/nope/review", headers=admin)[0] == 404


def test_chaos_disk_fill_writes_a_bounded_file_under_storage_and_clear_removes_it(gateway, tmp_path):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    gateway[0] = Stand(view=running_view(gateway[0]._order), chaos=True, storage=tmp_path)
    for lane in gateway[0]._lanes.values():
        lane.order = []  # no member replicas to clear here: only the disk
    status, _, body = call("POST", "/v1/admin/chaos", b'{"fault": "disk-fill", "mb": 1}', headers=auth)
    assert status == 200 and body["path"].startswith(str(tmp_path / "chaos" / "disk-fill"))
    status, _, refused = call("POST", "/v1/admin/chaos", b'{"fault": "disk-fill", "mb": 999999}', headers=auth)
    assert status == 422 and "at most" in refused["error"]
    status, _, cleared = call("POST", "/v1/admin/chaos/clear", b"{}", headers=auth)
    assert status == 200 and cleared["disk_fill_files"] == [body["path"]] and cleared["cpu_hogs"] == []
    # Clearing looked for CPU hogs without starting a local Ray instance in this process (it once did,
    # and the next module's ray.init failed with "called ray.init twice").
    import ray

    assert not ray.is_initialized()


def test_json_in_utf16_or_with_a_byte_order_mark_is_still_read(gateway):
    for raw in ('{"instances": [[0.1, 0.2]]}'.encode("utf-16"), b'\xef\xbb\xbf{"instances": [[0.1, 0.2]]}'):
        assert call("POST", PREDICT, raw)[0] == 200
