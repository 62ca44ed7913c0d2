"""Your own PyTorch module as an ensemble member: built from its import path, checked against the
contract before training, stored without its code, refused with a message when it no longer fits.

The pure tests build, check and round-trip modules written into a temporary directory; the last test
trains one with Ray Train next to a built-in fallback, serves it, and heals a killed replica of it.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from raymedic.config import parse_config
from raymedic.errors import ConfigError, SchemaError
from raymedic.keys import ADMIN_TOKEN_ENV
from tests.conftest import forget_package, local_service, wait_for, write_package
from train_jobs import artifacts
from train_jobs._fit import prepare_data
from train_jobs.models import MODULE_KIND, ArchSpec, build_model, check_contract
from train_jobs.search import check_search_args
from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

GOOD = '''
import torch
from torch import nn


class WideNet(nn.Module):
    """A tabular network of the user's own: one hidden layer of ``width``."""

    def __init__(self, input_shape, n_classes, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width), nn.ReLU(),
                                 nn.Linear(width, n_classes))

    def forward(self, x):
        return self.net(x)


class NoShapes(nn.Module):
    def __init__(self, width=8):
        super().__init__()


class OneColumn(nn.Module):
    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.lin = nn.Linear(input_shape[0], 1)

    def forward(self, x):
        return self.lin(x)


class Broken(nn.Module):
    def __init__(self, input_shape, n_classes):
        super().__init__()

    def forward(self, x, mask):
        return x


class NotANetwork:
    pass


def a_function():
    return 1
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A package ``mynets`` in a directory on sys.path (not installed), forgotten again afterwards."""
    pkg = write_package(tmp_path / "code", "mynets", GOOD)
    monkeypatch.syspath_prepend(str(pkg.parent))
    yield pkg
    forget_package("mynets")


def spec(path: str, **hp) -> ArchSpec:
    return ArchSpec.for_module(path, input_dim=10, n_classes=2, hyperparameters=hp)


def test_a_member_names_a_module_or_a_kind_never_both_nor_neither():
    one = parse_config({"members": [{"name": "net", "module": "mynets.tab:WideNet", "hyperparameters": {"width": 8}},
                                    {"name": "lr", "kind": "logistic", "fallback": True}]})
    assert one.members[0].architecture == "mynets.tab:WideNet" and one.members[0].kind is None
    for member, fragment in [({"name": "x"}, "needs exactly one of `kind`"),
                             ({"name": "x", "kind": "mlp", "module": "a:B"}, "it gives both"),
                             ({"name": "x", "module": "mynets.tab.WideNet"}, "the class after a colon")]:
        with pytest.raises(ConfigError, match=fragment):
            parse_config({"members": [member], "gateway": {"min_members": 1}})


def test_a_fitting_module_is_built_with_its_shapes_and_hyperparameters(user_code):
    s = spec("mynets.tab:WideNet", width=12)
    check_contract(s)
    net = build_model(s)
    assert type(net).__name__ == "WideNet" and net.net[1].out_features == 12 and net.net[1].in_features == 10
    stored = s.to_dict()
    assert stored == {"kind": MODULE_KIND, "input_dim": 10, "n_classes": 2, "hyperparameters": {"width": 12},
                      "module": "mynets.tab:WideNet", "input_shape": [10]}
    assert ArchSpec.from_dict(stored) == s
    # A built-in's stored form is what it always was: versions from before modules load unchanged.
    assert ArchSpec.create("mlp", input_dim=10, n_classes=2).to_dict().keys() == {
        "kind", "input_dim", "n_classes", "hyperparameters"}


@pytest.mark.parametrize("path, hp, fragment", [
    ("nosuch.pkg:Net", {}, "'nosuch.pkg:Net' is not importable here (ModuleNotFoundError"),
    ("mynets.tab:Missing", {}, "module 'mynets.tab' has no 'Missing'"),
    ("mynets.tab:NotANetwork", {}, "not a torch.nn.Module subclass"),
    ("mynets.tab:a_function", {}, "not a torch.nn.Module subclass"),
    ("mynets.tab:NoShapes", {}, "cannot be built as NoShapes(input_shape=(10,), n_classes=2"),
    ("mynets.tab:WideNet", {"depth": 3}, "unexpected keyword argument 'depth'"),
    ("mynets.tab:OneColumn", {}, "returned [2, 1] for an input of shape [2, 10]; it must return logits of shape "
                                 "[N, n_classes] = [2, 2]"),
    ("mynets.tab:Broken", {}, "Broken.forward raised TypeError"),
])
def test_a_module_that_breaks_the_contract_is_refused_with_what_to_change(user_code, path, hp, fragment):
    with pytest.raises(ConfigError) as err:
        check_contract(spec(path, **hp))
    assert fragment in str(err.value)


def _table(n: int = 400):
    return SyntheticGenerator(SyntheticSpec(seed=0)).sample(n, seed=1)


def test_the_contract_is_checked_before_training_with_the_members_name(user_code):
    cfg = parse_config({"members": [{"name": "net", "module": "mynets.tab:OneColumn"},
                                    {"name": "lr", "kind": "logistic", "fallback": True}],
                        "gateway": {"min_members": 1}})
    data = prepare_data(cfg, _table(), target="label")
    with pytest.raises(ConfigError, match=r"member 'net': mynets.tab:OneColumn.forward returned \[2, 1\]"):
        data.member_spec(cfg.member("net"))
    assert data.member_spec(cfg.member("lr")).kind == "logistic"


def _packed(user_code: Path) -> tuple[dict[str, bytes], np.ndarray, list]:
    cfg = parse_config({"members": [{"name": "net", "module": "mynets.tab:WideNet", "hyperparameters": {"width": 6}}],
                        "gateway": {"min_members": 1}})
    data = prepare_data(cfg, _table(), target="label")
    s = data.member_spec(cfg.member("net"))
    net = build_model(s)
    rows = data.golden_rows[:4]
    served = artifacts.MemberModel(spec=s, preprocessor=data.preprocessor, network=net, golden=None)
    golden = artifacts.GoldenSet(rows=rows, probabilities=served.predict_proba(rows).tolist())
    files = artifacts.pack(network=net, spec=s, preprocessor=data.preprocessor, golden=golden)
    return files, served.predict_proba(rows), rows


def test_a_version_stores_the_import_path_and_weights_and_loads_to_the_same_answers(user_code):
    files, probs, rows = _packed(user_code)
    assert b"WideNet" not in files[artifacts.WEIGHTS]  # safetensors: tensors only, no code
    loaded = artifacts.unpack(files, where="synthetic/net v0001")
    np.testing.assert_allclose(loaded.predict_proba(rows), probs, rtol=1e-6)


def test_a_version_whose_module_vanished_or_changed_is_refused_naming_module_and_version(user_code):
    files, _, _ = _packed(user_code)
    (user_code / "tab.py").write_text(textwrap.dedent(GOOD).replace("width=32", "width=32, extra=1")
                                      .replace("nn.Linear(width, n_classes)", "nn.Linear(width, n_classes + extra)"))
    for name in [m for m in sys.modules if m.startswith("mynets")]:
        del sys.modules[name]
    with pytest.raises(SchemaError) as changed:
        artifacts.unpack(files, where="synthetic/net v0001")
    assert "the weights of synthetic/net v0001 do not fit architecture mynets.tab:WideNet" in str(changed.value)
    assert "constructor or layers change" in str(changed.value)
    (user_code / "tab.py").unlink()
    for name in [m for m in sys.modules if m.startswith("mynets")]:
        del sys.modules[name]
    with pytest.raises(SchemaError) as gone:
        artifacts.unpack(files, where="synthetic/net v0001")
    assert ("synthetic/net v0001 cannot be loaded: it needs module 'mynets.tab:WideNet', and module "
            "'mynets.tab:WideNet' is not importable here") in str(gone.value)


def test_a_module_member_without_search_space_is_searched_over_the_training_knobs_only():
    from train_jobs.search import member_search_space

    cfg = parse_config({"members": [{"name": "net", "module": "mynets.tab:WideNet"},
                                    {"name": "lr", "kind": "logistic", "fallback": True}],
                        "gateway": {"min_members": 1}})
    assert check_search_args(cfg, member="net", num_samples=2, max_epochs=2).name == "net"
    space, note = member_search_space(cfg.member("net"))
    assert set(space) == {"learning_rate", "weight_decay"}
    assert "has no search_space: searching the training knobs only (learning_rate, weight_decay)" in note


# ---- on a real cluster ------------------------------------------------------------------------


@pytest.mark.ray
def test_a_user_module_trains_serves_and_heals_next_to_a_builtin_fallback(tmp_path, user_code, monkeypatch):
    """The module lives in a directory that is not installed: Ray's processes find it on PYTHONPATH
    (the embedded cluster's workers inherit this process's environment)."""
    from raymedic.app.http import request_json

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(user_code.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "user-models-test-token")  # read by the app builder
    members = [{"name": "lr", "kind": "logistic", "fallback": True, "replicas": 1, "num_cpus": 0.2},
               {"name": "net", "module": "mynets.tab:WideNet", "hyperparameters": {"width": 16}, "replicas": 2,
                "num_cpus": 0.2}]
    with local_service(tmp_path, members=members, gateway={"replicas": 1, "num_cpus": 0.2, "min_members": 2},
                       training={"epochs": 6, "synthetic_rows": 1500}) as (url, cfg):
        predict = f"{url}/v1/models/{cfg.model}:predict"
        rows = _table(8).drop(columns=["label"]).to_dict("records")
        r = request_json("POST", predict, {"instances": rows})
        assert r.status == 200 and r.body["model_version"] == "lr:v0001,net:v0001" and not r.body["degraded"], r.body
        info = request_json("GET", f"{url}/v1/models/{cfg.model}").body
        assert info["members"] == {"lr": "v0001", "net": "v0001"}

        def status():
            return request_json("GET", f"{url}/v1/status").body

        def net_probed_healthy():  # the controller's golden probes pass through the user's network
            st = status()
            return set(st["controller"].get("healthy", {}).get("net", ())) == {
                r["id"] for m in st["members"] if m["name"] == "net" for r in m["replicas"]} and st

        st = wait_for(net_probed_healthy, timeout_s=60, what="the controller to probe both net replicas healthy")
        assert len(st["controller"]["healthy"]["net"]) == 2 and not st["controller"]["avoid"].get("net")
        token = os.environ[ADMIN_TOKEN_ENV]
        failures: list = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                reply = request_json("POST", predict, {"instances": rows[:2]}, timeout_s=10)
                if reply.status != 200:
                    failures.append((reply.status, reply.body))

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        try:
            killed = request_json("POST", f"{url}/v1/admin/chaos", {"fault": "kill", "member": "net"},
                                  headers={"Authorization": f"Bearer {token}"}).body
            inc = wait_for(lambda: next((i for i in status()["incidents"] if i.get("replica") == killed["replica"]
                                         and i["status"] == "recovered"), None),
                           timeout_s=120, what="the killed net replica's incident to recover")
        finally:
            stop.set()
            worker.join(timeout=30)
        assert inc["kind"] == "dead" and failures == [], failures[:3]


def test_a_retrain_job_keeps_the_pythonpath_a_users_module_is_found_on():
    from controllers.models.jobs import PROJECT_ROOT, job_pythonpath

    assert job_pythonpath({"PYTHONPATH": os.pathsep.join(["/code", PROJECT_ROOT, "/more"])}) == os.pathsep.join(
        [PROJECT_ROOT, "/code", "/more"])
    assert job_pythonpath({}) == PROJECT_ROOT
