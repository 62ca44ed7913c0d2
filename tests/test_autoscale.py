"""A load burst scales a member out and back in, on a real local Ray cluster, with no failed request.

The member ``mlp`` runs 1 replica + 1 hot standby and may grow to 3 serving replicas; the test's scaling
delays are short so the whole cycle takes well under two minutes. Serve's autoscaler decides; the test
checks what users and operators see: every request answered, ``/v1/status`` showing the target rise above
``replicas + standby`` and come back to it, the controller's audited ``scale-out`` / ``scale-in``, and no
replica fault opened for the replicas Serve stopped on purpose.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.conftest import local_service, wait_for

pytestmark = [pytest.mark.ray]

FLOOR = 2  # mlp: replicas 1 + standby 1


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    members = [
        {"name": "logistic", "kind": "logistic", "fallback": True, "replicas": 1, "num_cpus": 0.2},
        {"name": "mlp", "kind": "mlp", "replicas": 1, "standby": 1, "max_replicas": 3, "num_cpus": 0.2,
         "target_ongoing_requests": 0.2},
        {"name": "tabresnet", "kind": "tabresnet", "replicas": 1, "num_cpus": 0.2},
    ]
    scaling = {"upscale_delay_s": 0.5, "downscale_delay_s": 4.0, "look_back_period_s": 2.0,
               "metrics_interval_s": 0.5}
    with local_service(tmp_path_factory.mktemp("autoscale"), members=members, scaling=scaling) as (url, cfg):
        yield url, cfg


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _mlp(status: dict) -> dict:
    return next(m for m in status["members"] if m["name"] == "mlp")["scaling"]


def test_a_burst_scales_a_member_out_and_back_with_no_failed_request(svc):
    url, cfg = svc
    from raymedic.app import service

    example = service.golden_example(cfg)
    body = json.dumps({"instances": [example]}).encode()
    wait_for(lambda: _mlp(_get(f"{url}/v1/status"))["running"] == FLOOR, timeout_s=60, what="mlp at its floor")
    before = {i["id"] for i in _get(f"{url}/v1/status")["incidents"]}

    stop = threading.Event()
    sent, failed, errors = [0], [0], []
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            req = urllib.request.Request(f"{url}/v1/models/{cfg.model}:predict", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    ok = r.status == 200
            except (urllib.error.URLError, OSError) as exc:
                ok = False
                errors.append(repr(exc)[:200])
            with lock:
                sent[0] += 1
                failed[0] += 0 if ok else 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        out = wait_for(lambda: (s := _mlp(_get(f"{url}/v1/status")))["target"] > FLOOR and s, timeout_s=60,
                       what="Serve's target for mlp above replicas + standby")
        assert out["max"] == 4 and out["min"] == FLOOR
        # capacity arrives: a third replica runs (so the scale-in below stops a replica that served)
        wait_for(lambda: _mlp(_get(f"{url}/v1/status"))["running"] > FLOOR, timeout_s=90,
                 what="an added mlp replica running")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert sent[0] > 50
    assert failed[0] == 0, (failed[0], sent[0], errors[:5])

    wait_for(lambda: (s := _mlp(_get(f"{url}/v1/status")))["target"] == FLOOR and s["running"] == FLOOR,
             timeout_s=60, what="mlp back to replicas + standby")
    status = wait_for(lambda: (s := _get(f"{url}/v1/status")) and {r["kind"] for r in s["controller"]["scaling"]
                                                                   ["recent"]} >= {"scale-out", "scale-in"} and s,
                      timeout_s=20, what="the controller's audited scale-out and scale-in")
    recent = status["controller"]["scaling"]["recent"]
    out_ev = next(r for r in recent if r["kind"] == "scale-out" and r["target"] == "mlp")
    assert out_ev["evidence"]["from"] == FLOOR and out_ev["evidence"]["to"] > FLOOR
    # a replica Serve stopped on purpose is not a fault
    new = [i for i in status["incidents"] if i["id"] not in before and i.get("member") == "mlp"]
    assert not new, new
    assert _mlp(status)["state"] == "steady"
