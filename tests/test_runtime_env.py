"""A user's module delivered the Ray way: the Serve application's ``runtime_env``.

The pure tests read the config's ``runtime_env`` (paths resolved against the config file, missing ones
refused naming both), make its local code importable in the driver, and build a retrain job's
environment. The last test ships a package that is neither installed nor on any path through
``runtime_env.py_modules`` only: trained with Ray Train, served, probed, a replica SIGKILLed under load,
then retrained by a job the controller submits, which imports it from the same environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cluster.connect import user_code_importable
from controllers.models.jobs import (
    PROJECT_ROOT,
    RayJobs,
    job_pythonpath,
    job_runtime_env,
)
from controllers.policies.playbook import SubmitRetrain
from raymedic.config import RuntimeEnv, load_config
from raymedic.errors import ConfigError
from raymedic.keys import ADMIN_TOKEN_ENV, APP_NAME
from tests.conftest import PredictLoad, local_service, wait_for
from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

PACKAGE = "rtnets"
"""The user's package: a name no other test (nor anything installed) uses."""

INIT = '''
import os

# Where each process that imports this package says so (pid and the file it imported): the
# variable comes from the same runtime_env, so only processes started in it write here.
_log = os.environ.get("RTNETS_IMPORT_LOG")
if _log:
    with open(_log, "a") as f:
        f.write(f"{os.getpid()} {__file__}\\n")
'''

NET = '''
import torch
from torch import nn


class WideNet(nn.Module):
    def __init__(self, input_shape, n_classes, width=16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width), nn.ReLU(),
                                 nn.Linear(width, n_classes))

    def forward(self, x):
        return self.net(x)
'''


def _write_package(root: Path) -> Path:
    pkg = root / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(INIT))
    (pkg / "tab.py").write_text(textwrap.dedent(NET))
    return pkg


def _serve_file(path: Path, runtime_env) -> Path:
    doc = {"applications": [{"name": APP_NAME, "import_path": "serve_apps.app:build_app",
                             "runtime_env": runtime_env, "args": {}}]}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_relative_paths_are_read_from_the_config_files_directory_not_the_current_one(tmp_path, monkeypatch):
    _write_package(tmp_path / "examples" / "x")
    (tmp_path / "examples" / "x" / "code").mkdir()
    cfg = _serve_file(tmp_path / "examples" / "x" / "raymedic.yaml",
                      {"py_modules": [f"./{PACKAGE}", "s3://bucket/more.zip"], "working_dir": "code",
                       "pip": ["einops"]})
    monkeypatch.chdir(tmp_path)  # `raymedic up --config examples/x/raymedic.yaml` from elsewhere
    env = load_config("examples/x/raymedic.yaml").runtime_env
    assert env.py_modules == [str(cfg.parent / PACKAGE), "s3://bucket/more.zip"]  # a URI is Ray's to fetch
    assert env.working_dir == str(cfg.parent / "code")
    assert env.to_ray() == {"py_modules": env.py_modules, "working_dir": env.working_dir, "pip": ["einops"]}
    # the package directory is imported by its name: its parent goes on the driver's path
    assert env.import_roots() == [str(cfg.parent / "code"), str(cfg.parent)]


@pytest.mark.parametrize("runtime_env, fragment", [
    ({"py_modules": ["./nosuch"]}, "runtime_env.py_modules in {cfg} names './nosuch', which does not exist"),
    ({"working_dir": "../gone"}, "runtime_env.working_dir in {cfg} names '../gone', which does not exist"),
    ({"py_modules": "./rtnets"}, "py_modules: Input should be a valid list"),
    (["./rtnets"], "runtime_env in {cfg} must be a mapping"),
])
def test_a_runtime_env_that_cannot_work_is_refused_naming_the_path_and_the_file(tmp_path, runtime_env, fragment):
    cfg = _serve_file(tmp_path / "raymedic.yaml", runtime_env)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert fragment.format(cfg=cfg) in str(err.value)


def test_no_runtime_env_hands_ray_nothing(tmp_path):
    env = load_config(_serve_file(tmp_path / "raymedic.yaml", None)).runtime_env
    assert env.empty and env.to_ray() == {} and env.import_roots() == []


def test_the_local_code_is_importable_in_the_driver_only_for_the_duration(tmp_path):
    _write_package(tmp_path / "code")
    env = RuntimeEnv(py_modules=[str(tmp_path / "code" / PACKAGE)])
    root = str(tmp_path / "code")
    assert root not in sys.path
    with user_code_importable(env) as added:
        assert added == [root] and sys.path[0] == root
        import rtnets.tab  # noqa: F401  (the contract check imports it so)
    assert root not in sys.path
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def test_a_retrain_job_gets_the_applications_runtime_env_merged_with_raymedics_pythonpath():
    app_env = {"py_modules": ["gcs://_ray_pkg_abc.zip"], "working_dir": "gcs://_ray_pkg_def.zip",
               "env_vars": {"TOKEN": "x", "PYTHONPATH": "/user/lib:" + PROJECT_ROOT}}
    env = job_runtime_env(app_env, {"PYTHONPATH": "/cluster/path"})
    assert env["py_modules"] == ["gcs://_ray_pkg_abc.zip"] and env["working_dir"] == "gcs://_ray_pkg_def.zip"
    assert env["env_vars"] == {"TOKEN": "x", "PYTHONPATH": os.pathsep.join([PROJECT_ROOT, "/cluster/path",
                                                                             "/user/lib"])}
    assert app_env["env_vars"]["PYTHONPATH"] == "/user/lib:" + PROJECT_ROOT  # the application's is not changed
    assert job_runtime_env(None, {}) == {"env_vars": {"PYTHONPATH": job_pythonpath({})}}


class _FakeJobsClient:
    """The Jobs API's submit, recorded (it knows no job yet: a 404, as the SDK raises it)."""

    def __init__(self) -> None:
        self.submitted: list[dict] = []

    def get_job_info(self, job_id: str) -> dict:
        raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")

    def submit_job(self, **kwargs) -> str:
        self.submitted.append(kwargs)
        return kwargs["submission_id"]


def test_the_submitted_retrain_job_carries_the_runtime_env(tmp_path):
    jobs = RayJobs(model="digits", storage_path=str(tmp_path), storage=None,
                   runtime_env={"py_modules": ["gcs://_ray_pkg_abc.zip"]})
    jobs._client = client = _FakeJobsClient()
    jobs.submit(SubmitRetrain(record="r1", reason="drift", alerts=("drift",)))
    env = client.submitted[0]["runtime_env"]
    assert env["py_modules"] == ["gcs://_ray_pkg_abc.zip"]
    assert env["env_vars"]["PYTHONPATH"].split(os.pathsep)[0] == PROJECT_ROOT


# ---- on a real cluster ------------------------------------------------------------------------


def _replicas(member: str) -> dict[str, int]:
    from ray.util.state import list_actors

    alive = list_actors(filters=[("class_name", "=", f"ServeReplica:{APP_NAME}:{member}"), ("state", "=", "ALIVE")])
    return {a.name.rsplit("#", 1)[-1]: a.pid for a in alive}


def _importers(log: Path) -> dict[int, str]:
    if not log.exists():
        return {}
    return {int(pid): path for pid, path in (line.split(" ", 1) for line in log.read_text().splitlines())}


@pytest.mark.ray
def test_a_module_shipped_only_by_runtime_env_trains_serves_and_heals(tmp_path, monkeypatch):
    import ray

    from controllers.client import get_controller
    from raymedic.app.http import request_json

    pkg = _write_package(tmp_path / "user_code")
    log = tmp_path / "imports.log"
    hidden = str(pkg.parent)
    assert hidden not in sys.path and hidden not in os.environ.get("PYTHONPATH", "")
    assert PACKAGE not in sys.modules
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "runtime-env-test-token")
    members = [{"name": "lr", "kind": "logistic", "fallback": True, "replicas": 1, "num_cpus": 0.2},
               {"name": "rtnet", "module": f"{PACKAGE}.tab:WideNet", "hyperparameters": {"width": 12},
                "replicas": 2, "num_cpus": 0.2}]
    runtime_env = {"py_modules": [str(pkg)], "env_vars": {"RTNETS_IMPORT_LOG": str(log)}}
    try:
        with local_service(tmp_path, members=members, runtime_env=runtime_env,
                           gateway={"replicas": 1, "num_cpus": 0.2, "min_members": 2},
                           training={"epochs": 4, "synthetic_rows": 1200},
                           retraining={"min_labeled_rows": 100, "cooldown_s": 5}) as (url, cfg):
            assert hidden not in sys.path  # the driver had it only while it trained
            predict = f"{url}/v1/models/{cfg.model}:predict"
            rows = SyntheticGenerator(SyntheticSpec(seed=0)).sample(2, seed=1).drop(columns=["label"]).to_dict("records")
            r = request_json("POST", predict, {"instances": rows})
            assert r.status == 200 and r.body["model_version"] == "lr:v0001,rtnet:v0001", r.body

            # Every process that imported the package got it from Ray's copy, not from where it was written.
            serving = _replicas("rtnet")
            importers = _importers(log)
            assert len(serving) == 2 and set(serving.values()) <= set(importers), (serving, importers)
            assert all("runtime_resources" in p and not p.startswith(str(pkg)) for p in importers.values())
            assert len(set(importers) - set(serving.values())) >= 1  # the Ray Train worker imported it too
            # The controller runs in the same environment, which its retrain jobs are given.
            ctl_env = ray.get(get_controller().ping.remote(), timeout=30)["runtime_env"]
            assert ctl_env["py_modules"] == ray.get_runtime_context().runtime_env["py_modules"]
            assert ctl_env["py_modules"][0].startswith("gcs://")

            # The working_dir form: the process's working directory is Ray's copy, and raymedic itself
            # still imports (from the cluster's own path, not from the working directory it replaced).
            @ray.remote(num_cpus=0)
            def where() -> tuple[bool, str, str]:
                import serve_apps.member  # lazy: imported in the task, to see where raymedic comes from

                return os.path.isfile(os.path.join(PACKAGE, "tab.py")), serve_apps.member.__file__, \
                    os.getcwd()

            # (local paths are uploaded only for a job's runtime_env; a task takes a URI: a zip, as on S3, whose
            # one top-level directory Ray unpacks as the working directory)
            archive = shutil.make_archive(str(tmp_path / "user_code"), "zip", root_dir=tmp_path, base_dir="user_code")
            shipped, ours, cwd = ray.get(where.options(runtime_env={"working_dir": f"file://{archive}"}).remote(),
                                           timeout=120)
            assert shipped and "runtime_resources" in cwd, cwd
            assert ours.startswith(PROJECT_ROOT), ours

            def status():
                return request_json("GET", f"{url}/v1/status").body

            def probed_healthy():
                st = status()
                net = next(m for m in st["members"] if m["name"] == "rtnet")
                ids = {rep["id"] for rep in net["replicas"]}
                return (net["version"] == "v0001" and len(ids) == 2
                        and set(st["controller"].get("healthy", {}).get("rtnet", ())) == ids and st)

            wait_for(probed_healthy, timeout_s=60, what="the controller to probe both rtnet replicas healthy")
            with PredictLoad(predict, rows, threads=1, deadline_s=10.0) as sent:
                victim, pid = min(serving.items())
                os.kill(pid, signal.SIGKILL)
                inc = wait_for(lambda: next((i for i in status()["incidents"] if i.get("replica") == victim
                                             and i["status"] == "recovered"), None),
                               timeout_s=120, what="the killed rtnet replica's incident to recover")
                now = wait_for(lambda: (r := _replicas("rtnet")) and len(r) == 2 and victim not in r and r,
                               timeout_s=60, what="Serve to replace the killed rtnet replica")
            assert inc["kind"] == "dead" and sent.failures == [] and sent.ok > 0, sent.failures[:3]
            replacement = set(now.values()) - set(serving.values())
            assert replacement and replacement <= set(_importers(log))  # the new replica got Ray's copy too

            # A retrain job the controller submits imports the module from the same runtime_env.
            before = set(_importers(log))
            labelled = SyntheticGenerator(SyntheticSpec(seed=0)).sample(150, seed=2)
            features = [c for c in labelled.columns if c != "label"]
            for i in range(0, len(labelled), 50):
                part = labelled.iloc[i:i + 50]
                out = request_json("POST", predict, {"instances": part[features].to_dict("records")}, timeout_s=30)
                assert out.status == 200, out.body
                fb = request_json("POST", f"{url}/v1/models/{cfg.model}:feedback",
                                  {"inference_ids": out.body["inference_ids"], "labels": part["label"].tolist()},
                                  timeout_s=30)
                assert fb.status == 200 and fb.body["accepted"] == len(part), fb.body
            asked = request_json("POST", f"{url}/v1/admin/retrain", {"reason": "test: runtime_env retrain"},
                                 headers={"Authorization": "Bearer runtime-env-test-token"}, timeout_s=30)
            assert asked.status == 200, asked.body
            done = wait_for(lambda: next((h for h in (status()["controller"].get("retraining") or {}).get(
                "history", []) if "runtime_env retrain" in h.get("reason", "") and h.get("job_status")), None),
                timeout_s=300, what="the retrain job to finish")
            assert done["job_status"] == "SUCCEEDED", done
            job_importers = {pid: path for pid, path in _importers(log).items() if pid not in before}
            assert job_importers and all("runtime_resources" in path for path in job_importers.values()), \
                job_importers
    finally:
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]
