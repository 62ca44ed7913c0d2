"""The shipped example as a new user runs it: scikit-learn's 8x8 digits as a tensor feature, the user's
own CNN (``examples/digits/my_models``, reaching Ray's processes only through the config's
``runtime_env``) beside built-in mlp and logistic members, trained with ``raymedic train``, served with
``raymedic up`` and checked over HTTP on the hold-out images; then the tensor drift monitor on live
traffic: the undrifted hold-out stream opens no drift incident, the same images with noise added do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from raymedic.app.http import request_json
from tests.conftest import REPO, free_port, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "digits"
RAYMEDIC = [sys.executable, "-m", "raymedic"]


def run(args, *, env, timeout=600):
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the digits example needs the examples extra (scikit-learn)")
    tmp = tmp_path_factory.mktemp("digits")
    e = dict(os.environ, RAYMEDIC_HOME=str(tmp / "home"), PYTHONUNBUFFERED="1")
    e.pop("RAY_ADDRESS", None)
    # my_models must come from the runtime_env alone: not from this process's path, not from PYTHONPATH
    e["PYTHONPATH"] = os.pathsep.join(p for p in e.get("PYTHONPATH", "").split(os.pathsep)
                                      if p and Path(p).resolve() != EXAMPLE)
    run([sys.executable, str(EXAMPLE / "make_data.py"), "--out", str(tmp / "data")], env=e)
    # The shipped config, with this test's storage and port, one replica per member (the example's
    # replicas and standbys are about redundancy, which test_healing covers) and a short data window.
    doc = yaml.safe_load((EXAMPLE / "raymedic.yaml").read_text())
    port = free_port()
    doc["http_options"]["port"] = port
    app = doc["applications"][0]
    app["runtime_env"] = {"py_modules": [str(EXAMPLE / "my_models")]}  # the file moved: the path stays absolute
    args = app["args"]
    args["storage_path"] = str(tmp / "storage")
    for m in args["members"]:
        m.update(replicas=1, standby=0, num_cpus=0.2)
    args["gateway"].update(replicas=1, num_cpus=0.2)
    # every tensor to the drift monitor, even in evaluate.py's bursts (the default samples past 128 rows/s)
    args["data"] = {"min_rows": 100, "window_rows": 400, "check_period_s": 1.0, "tensor_rows_per_batch": 1024}
    cfg = tmp / "raymedic.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    ctx = {"env": e, "config": str(cfg), "url": f"http://127.0.0.1:{port}", "data": tmp / "data"}
    yield ctx
    subprocess.run(RAYMEDIC + ["down"], cwd=REPO, env=e, capture_output=True, timeout=300)


def _status(url: str) -> dict:
    return request_json("GET", f"{url}/v1/status", timeout_s=10).body


def _drift_incidents(url: str) -> list[dict]:
    return [i for i in _status(url)["incidents"] if i.get("kind") == "drift" and "image" in str(i.get("target"))]


def _send(url: str, images: np.ndarray, batch: int = 20) -> None:
    for at in range(0, len(images), batch):
        body = {"instances": [{"image": img.tolist()} for img in images[at:at + batch]]}
        answer = request_json("POST", f"{url}/v1/models/digits:predict", body, timeout_s=30)
        assert answer.status == 200, answer.body


def _tensor_rows(url: str) -> int:
    return int((_status(url).get("drift") or {}).get("tensor_rows", {}).get("image", 0))


def test_train_serve_and_watch_the_digits_example(digits):
    e, url = digits["env"], digits["url"]
    report = json.loads(run(RAYMEDIC + ["train", "--config", digits["config"], "--data",
                                        str(digits["data"] / "digits.parquet"), "--target", "digit", "--json"],
                            env=e).stdout)
    assert report["model"] == "digits" and set(report["versions"]) == {"cnn", "mlp", "logistic"}
    assert all(m["val_accuracy"] > 0.9 for m in report["metrics"].values()), report["metrics"]
    run(RAYMEDIC + ["up", "--config", digits["config"], "--ray-port", str(free_port()),
                    "--dashboard-port", str(free_port())], env=e)
    schema = request_json("GET", f"{url}/v1/models/digits").body["schema"]
    assert schema["features"][0] | {"min": 0, "max": 0} == {"name": "image", "type": "tensor", "shape": [8, 8],
                                                           "dtype": "float32", "min": 0, "max": 0,
                                                           "missing_share": 0.0}
    # Accuracy on the hold-out images, as the README's evaluate.py reports it
    out = json.loads(run([sys.executable, str(EXAMPLE / "evaluate.py"), "--url", url, "--json", "--data",
                          str(digits["data"] / "holdout.parquet")], env=e).stdout)
    assert out["rows"] == 300 and out["accuracy"] > 0.9 and out["degraded"] == 0, out
    assert {p.split(":")[0] for p in out["model_version"].split(",")} == {"cnn", "mlp", "logistic"}

    # The undrifted hold-out stream (300 rows above, 300 more now) opens no drift incident ...
    holdout = np.asarray(pq.read_table(digits["data"] / "holdout.parquet").to_pydict()["image"], dtype=np.float32)
    _send(url, holdout)
    wait_for(lambda: _tensor_rows(url) >= 600, timeout_s=60, what="the tensor monitor to read the hold-out rows")
    read_at = time.time()
    wait_for(lambda: float((_status(url)["drift"] or {}).get("checked_at") or 0) > read_at + 1, timeout_s=60,
             what="the data monitor to check a window with those rows")
    assert _drift_incidents(url) == []
    # ... the same images with sensor noise do
    noisy = np.clip(holdout + np.random.default_rng(3).normal(0, 0.25, holdout.shape), 0, 1).astype(np.float32)
    seen = _tensor_rows(url)
    _send(url, np.concatenate([noisy, noisy]))
    incidents = wait_for(lambda: _drift_incidents(url), timeout_s=90, what="a drift incident on the noisy images")
    assert _tensor_rows(url) > seen
    assert incidents[0]["target"] == "image" and incidents[0]["evidence"]["threshold"] > 0, incidents[0]
