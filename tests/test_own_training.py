"""A member's own search space, its own Ray Train loop, and where training runs.

The pure tests check the config's ``search_space`` vocabulary (each mistake named), how it
maps to Ray Tune, the no-GPU fallback and the mixed-precision choice, and how a
train_loop's reported weights are checked. The Ray tests (one local cluster for the module)
search a user module over its ``search_space`` with Ray Tune and train one with its own
``train_loop`` under Ray Train, plus a loop that reports no checkpoint.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from raymedic.config import parse_config
from raymedic.errors import ConfigError, TrainingFailed
from train_jobs.devices import (
    Precision,
    choose_precision,
    choose_training_device,
    serving_device,
)
from train_jobs.search import (
    Choice,
    Param,
    check_search_args,
    default_point,
    member_search_space,
    split_point,
)
from tests.conftest import forget_package, write_package
from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

USER_CODE = '''
import os
import tempfile

import ray.train
import torch
from safetensors.torch import save_file
from torch import nn


class Net(nn.Module):
    """One hidden layer of ``width``; a width of 3 is refused (a combination a search may sample)."""

    def __init__(self, input_shape, n_classes, width=16, act="relu"):
        super().__init__()
        if width == 3:
            raise ValueError("width 3 is not supported")
        self.net = nn.Sequential(nn.Linear(input_shape[0], width), nn.ReLU() if act == "relu" else nn.Tanh(),
                                 nn.Linear(width, n_classes))

    def forward(self, x):
        return self.net(x)


def good_loop(config):
    """Full-batch Adam for config['epochs'] epochs on the model raymedic built; reports once, at the end."""
    torch.manual_seed(config["seed"])
    model = config["model"]
    x, y = torch.from_numpy(config["x_train"]), torch.from_numpy(config["y_train"])
    weight = torch.tensor(config["class_weights"], dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    for _ in range(config["epochs"]):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y, weight=weight)
        loss.backward()
        opt.step()
    with torch.no_grad():
        val = nn.functional.cross_entropy(model(torch.from_numpy(config["x_val"])), torch.from_numpy(config["y_val"]))
    with tempfile.TemporaryDirectory() as d:
        save_file(model.state_dict(), os.path.join(d, "weights.safetensors"))
        ray.train.report({"epoch": config["epochs"], "val_loss": float(val), "is_net": float(config["member"] == "net")},
                         checkpoint=ray.train.Checkpoint.from_directory(d))


def no_checkpoint_loop(config):
    ray.train.report({"epoch": 1, "val_loss": 0.5})


not_a_function = 3
'''


def _members(**net):
    return {"members": [{"name": "net", "module": "ownnets.tab:Net", **net},
                        {"name": "lr", "kind": "logistic", "fallback": True}], "gateway": {"min_members": 1}}


# ---- search_space in the config (no Ray) -------------------------------------------------------


def test_a_search_space_is_read_in_tunes_vocabulary_and_dumps_back_as_written():
    cfg = parse_config(_members(search_space={"lr": {"loguniform": [1e-4, 1e-1]}, "width": {"choice": [8, 16]},
                                              "depth": {"randint": [1, 4]}, "dropout": {"uniform": [0, 0.5]}}))
    space = cfg.member("net").search_space
    assert set(space) == {"learning_rate", "width", "depth", "dropout"}  # lr is learning_rate's short name
    assert space["depth"].describe() == "randint [1, 4)"  # Tune's exclusive upper bound, shown as such
    dumped = cfg.model_dump(mode="json")["members"][0]["search_space"]
    assert dumped["width"] == {"choice": [8, 16]} and dumped["learning_rate"] == {"loguniform": [1e-4, 1e-1]}
    assert parse_config(cfg.model_dump(mode="json")).member("net").search_space == space


@pytest.mark.parametrize("entry, fragment", [
    ({"normal": [0, 1]}, "unknown distribution 'normal': use one of choice, uniform, loguniform, randint"),
    ({"uniform": [1]}, "uniform takes exactly two bounds [lo, hi], got 1"),
    ({"randint": [1, 2, 3]}, "randint takes exactly two bounds [lo, hi], got 3"),
    ({"uniform": [0.5, 0.5]}, "uniform needs lo < hi, got [0.5, 0.5]"),
    ({"randint": [4, 2]}, "randint needs lo < hi, got [4, 2] (randint's upper bound is exclusive"),
    ({"loguniform": [0, 1]}, "loguniform bounds must be positive (0 < lo < hi), got [0, 1]"),
    ({"loguniform": [-1, 1]}, "loguniform bounds must be positive"),
    ({"choice": []}, "choice needs at least one value"),
    ({"choice": [1], "uniform": [0, 1]}, ("exactly one distribution, e.g. {loguniform: [0.0001, 0.1]} or "
                                         "{choice: [8, 16, 32]}; use one of choice, uniform, loguniform, randint "
                                         "(it gives 2: choice, uniform)")),
    (3, "exactly one distribution"),
    ({"uniform": "0..1"}, "uniform takes a list ([lo, hi]), got '0..1'"),
    ({"randint": [1.5, 4]}, "randint bounds must be whole numbers"),
    ({"uniform": ["a", "b"]}, "uniform bounds must be numbers"),
])
def test_each_search_space_mistake_is_a_config_error_naming_the_parameter(entry, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config(_members(search_space={"width": entry}))
    assert "members.0.search_space.width: " in str(err.value) and fragment in str(err.value), str(err.value)


def test_an_empty_space_or_a_knob_named_twice_is_refused():
    with pytest.raises(ConfigError, match="search_space is empty"):
        parse_config(_members(search_space={}))
    with pytest.raises(ConfigError, match="names both lr and learning_rate"):
        parse_config(_members(search_space={"lr": {"uniform": [0.1, 0.2]}, "learning_rate": {"uniform": [0.1, 0.2]}}))


def test_a_train_loop_must_be_an_import_path_with_the_function_after_a_colon():
    with pytest.raises(ConfigError, match="train_loop must be an import path with the function after a colon"):
        parse_config(_members(train_loop="ownnets.tab.good_loop"))
    assert parse_config(_members(train_loop="ownnets.tab:good_loop")).member("net").train_loop == "ownnets.tab:good_loop"


# ---- the space a search explores (no Ray) ------------------------------------------------------


def test_the_configured_space_maps_to_tune_domains_with_tunes_semantics():
    pytest.importorskip("optuna")
    from ray.tune.search.optuna import OptunaSearch  # importing starts no cluster

    cfg = parse_config(_members(search_space={"lr": {"loguniform": [1e-4, 1e-1]}, "width": {"choice": [8, 16]},
                                              "batch_size": {"randint": [16, 65]}, "act": {"choice": ["relu", "tanh"]},
                                              "epochs": {"randint": [2, 3]}}))
    space, note = member_search_space(cfg.member("net"))
    assert note is None and isinstance(space["width"], Choice) and isinstance(space["learning_rate"], Param)
    assert space["epochs"] == Choice("epochs", (2,))  # randint [2, 3) draws only 2
    dists = OptunaSearch.convert_search_space({n: d.to_tune() for n, d in space.items()})
    assert (dists["batch_size"].low, dists["batch_size"].high) == (16, 64)  # 65 excluded, as in tune.randint
    assert dists["learning_rate"].log and list(dists["width"].choices) == [8, 16]
    training, arch = split_point(space, {"learning_rate": np.float64(0.01), "width": np.int64(16), "act": "tanh",
                                         "batch_size": 32.0, "epochs": 2})
    assert training == {"learning_rate": 0.01, "batch_size": 32, "epochs": 2} and arch == {"width": 16, "act": "tanh"}
    assert type(arch["width"]) is int and type(training["batch_size"]) is int


def test_a_builtin_space_may_name_only_its_own_knobs_and_training_knobs_must_be_usable():
    ok = parse_config({"members": [{"name": "mlp", "kind": "mlp", "search_space": {"hidden": {"choice": [8, 32]}}}],
                       "gateway": {"min_members": 1}})
    assert set(member_search_space(ok.member("mlp"))[0]) == {"hidden"}
    bad = [({"kind": "mlp", "search_space": {"blocks": {"randint": [1, 3]}}},
            ("member 'm' (mlp) has no hyperparameters ['blocks'] to search: its search_space may name its knobs "
            "['dropout', 'hidden', 'layers'] and the training knobs")),
           ({"kind": "logistic", "search_space": {"batch_size": {"uniform": [16, 64]}}},
            "search_space.batch_size must draw whole numbers >= 1"),
           ({"kind": "logistic", "search_space": {"lr": {"uniform": [0, 0.1]}}},
            "search_space.learning_rate must draw positive learning rates"),
           ({"kind": "logistic", "search_space": {"weight_decay": {"choice": ["none"]}}},
            "search_space.weight_decay must draw numbers")]
    for member, fragment in bad:
        cfg = parse_config({"members": [{"name": "m", **member}], "gateway": {"min_members": 1}})
        with pytest.raises(ConfigError) as err:
            check_search_args(cfg, member="m", num_samples=2, max_epochs=2)
        assert fragment in str(err.value), str(err.value)


def test_a_builtin_without_a_space_keeps_its_default_one():
    cfg = parse_config({})
    space, note = member_search_space(cfg.member("mlp"))
    assert note is None and list(space) == ["learning_rate", "weight_decay", "hidden", "layers", "dropout"]


def test_a_member_with_its_own_train_loop_is_not_searched_and_says_why():
    cfg = parse_config(_members(train_loop="ownnets.tab:good_loop"))
    with pytest.raises(ConfigError, match="trains with your own train_loop 'ownnets.tab:good_loop', which a search "
                                          "cannot run"):
        check_search_args(cfg, member="net", num_samples=2, max_epochs=2)


@pytest.fixture
def own_code(tmp_path, monkeypatch):
    pkg = write_package(tmp_path / "code", "ownnets", USER_CODE)
    monkeypatch.syspath_prepend(str(pkg.parent))
    yield pkg
    forget_package("ownnets")


def test_a_modules_current_configuration_is_the_first_point_when_inside_its_space(own_code):
    cfg = parse_config(_members(hyperparameters={"act": "tanh"},
                                search_space={"width": {"choice": [8, 16]}, "act": {"choice": ["relu", "tanh"]},
                                              "lr": {"loguniform": [1e-4, 1e-1]}}))
    # width from the constructor's default (16), act from the member's hyperparameters, lr from training
    assert default_point(cfg, cfg.member("net")) == {"width": 16, "act": "tanh", "learning_rate": 3e-3}
    outside = parse_config(_members(search_space={"width": {"choice": [4, 8]}}))
    assert default_point(outside, outside.member("net")) is None


# ---- devices and precision (pure) --------------------------------------------------------------


def test_training_asks_for_gpus_only_where_the_cluster_has_one_per_worker():
    assert choose_training_device(requested_gpu=False, cluster_gpus=4, num_workers=1).use_gpu is False
    assert choose_training_device(requested_gpu=True, cluster_gpus=1, num_workers=1).warning is None
    none = choose_training_device(requested_gpu=True, cluster_gpus=0, num_workers=1)
    assert not none.use_gpu and none.warning.startswith("training.use_gpu is true but the Ray cluster has no GPU "
                                                        "resources: training on CPU instead")
    few = choose_training_device(requested_gpu=True, cluster_gpus=1, num_workers=2)
    assert not few.use_gpu and "1 GPU(s) for 2 workers" in few.warning and "training.use_gpu: false" in few.warning


def test_mixed_precision_is_bf16_where_supported_else_fp16_with_a_scaler_and_off_on_cpu():
    assert choose_precision(device_type="cuda", enabled=True, bf16_supported=True).precision is Precision.BFLOAT16
    fp16 = choose_precision(device_type="cuda", enabled=True, bf16_supported=False)
    assert fp16.precision is Precision.FLOAT16 and fp16.scaler
    assert not choose_precision(device_type="cuda", enabled=False, bf16_supported=True).enabled
    assert not choose_precision(device_type="cpu", enabled=True, bf16_supported=True).enabled


def test_a_replica_that_asked_for_a_gpu_it_cannot_see_serves_on_cpu_and_says_so():
    assert serving_device(requested_gpu=True, cuda_available=True) == ("cuda", None)
    device, warning = serving_device(requested_gpu=True, cuda_available=False)
    assert device == "cpu" and "sees no CUDA device: serving on CPU" in warning
    assert serving_device(requested_gpu=False, cuda_available=True) == ("cpu", None)


def test_an_epoch_under_autocast_trains_and_float32_is_unchanged():
    """The autocast branch of fit_epoch runs (bf16 autocast exists on CPU too); float32 gives the same
    weights as the plain loop always did."""
    import torch

    from train_jobs._fit import amp_plan, fit_epoch
    from train_jobs.devices import AmpPlan

    assert not amp_plan(torch.device("cpu"), enabled=True).enabled
    x, y = torch.randn(64, 5, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 2
    nets = []
    for amp in (None, AmpPlan(Precision.FLOAT32), AmpPlan(Precision.BFLOAT16)):
        torch.manual_seed(0)
        net = torch.nn.Linear(5, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        before = net.weight.detach().clone()
        fit_epoch(net, opt, x, y, batch_size=16, generator=torch.Generator().manual_seed(1),
                  loss_fn=torch.nn.CrossEntropyLoss(), amp=amp)
        assert not torch.equal(before, net.weight)
        nets.append(net.weight.detach())
    assert torch.equal(nets[0], nets[1])
    torch.testing.assert_close(nets[2], nets[0], atol=0.05, rtol=0)


# ---- what a train_loop gets and must give back (no Ray) ----------------------------------------


def _table(n: int = 400):
    return SyntheticGenerator(SyntheticSpec(seed=0)).sample(n, seed=1)


def test_a_train_loop_that_is_not_importable_or_not_a_function_is_refused_before_training(own_code):
    from train_jobs.own_loop import load_train_loop

    assert load_train_loop("ownnets.tab:good_loop", member="net").__name__ == "good_loop"
    for path, fragment in [("nosuch.mod:loop", ("member 'net': train_loop 'nosuch.mod:loop' is not importable here "
                                               "(ModuleNotFoundError")),
                           ("ownnets.tab:missing", "module 'ownnets.tab' has no 'missing'"),
                           ("ownnets.tab:not_a_function", "is int, not a function"),
                           ("ownnets.tab:Net", "is type, not a function")]:
        with pytest.raises(ConfigError) as err:
            load_train_loop(path, member="net")
        assert fragment in str(err.value), str(err.value)


def test_the_loop_config_holds_the_arrays_in_input_shape_and_the_training_settings(own_code):
    from train_jobs._fit import prepare_data
    from train_jobs.models import build_model
    from train_jobs.own_loop import class_weights, loop_config

    cfg = parse_config(_members(train_loop="ownnets.tab:good_loop"))
    data = prepare_data(cfg, _table(), target="label")
    spec = data.member_spec(cfg.member("net"))
    lc = loop_config(cfg, data, member=cfg.member("net"), spec=spec, model=build_model(spec), use_gpu=False)
    assert lc["x_train"].shape == (len(data.x_train), *lc["input_shape"]) and lc["x_train"].dtype == np.float32
    assert lc["y_val"].dtype == np.int64 and lc["n_classes"] == len(lc["classes"]) == 2
    assert lc["arch"] == spec.to_dict() and lc["epochs"] == cfg.training.epochs and lc["use_gpu"] is False
    assert sum(lc["class_counts"]) == len(data.y_train)
    assert class_weights(np.array([0, 0, 0, 1, 1, 1]), 3) == [1.0, 1.0, 0.0]


def test_reported_weights_are_checked_against_the_spec_with_the_fix(own_code, tmp_path):
    import torch
    from safetensors.torch import save_file

    from train_jobs.models import ArchSpec, build_model
    from train_jobs.own_loop import read_weights

    spec = ArchSpec.for_module("ownnets.tab:Net", input_dim=10, n_classes=2, hyperparameters={"width": 8})
    kw = {"member": "net", "path": "ownnets.tab:good_loop", "spec": spec}
    tmp_path = tmp_path / "checkpoint"
    tmp_path.mkdir()
    with pytest.raises(TrainingFailed, match=r"member 'net': train_loop 'ownnets.tab:good_loop' reported no "
                                             r"checkpoint, so there are no weights to register: from rank 0"):
        read_weights(None, **kw)
    (tmp_path / "other.pt").write_bytes(b"x")
    with pytest.raises(TrainingFailed, match=r"a checkpoint without weights.safetensors \(it holds \['other.pt'\]\)"):
        read_weights(tmp_path, **kw)
    wide = build_model(ArchSpec.for_module("ownnets.tab:Net", input_dim=10, n_classes=2,
                                           hyperparameters={"width": 12}))
    save_file(wide.state_dict(), str(tmp_path / "weights.safetensors"))
    with pytest.raises(ConfigError) as misfit:
        read_weights(tmp_path, **kw)
    assert "reported weights that do not fit the member's architecture ownnets.tab:Net {'width': 8}: misshapen" \
        in str(misfit.value) and "net.0.weight [12, 10] (expected [8, 10])" in str(misfit.value)
    net = build_model(spec)
    save_file({f"module.{k}": v for k, v in net.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ConfigError, match="save model.module.state_dict"):
        read_weights(tmp_path, **kw)
    save_file(net.state_dict(), str(tmp_path / "weights.safetensors"))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in read_weights(tmp_path, **kw).items())


# ---- on a real cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One embedded cluster whose workers find the user's package on PYTHONPATH (not installed)."""
    pytest.importorskip("ray")
    import ray

    from cluster.connect import start_embedded

    code = tmp_path_factory.mktemp("owncode")
    write_package(code, "ownnets", USER_CODE)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(code), saved or ""])
    sys.path.insert(0, str(code))
    start_embedded(log_to_driver=False)
    try:
        yield tmp_path_factory.mktemp("ownstore")
    finally:
        ray.shutdown()
        sys.path.remove(str(code))
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        forget_package("ownnets")


@pytest.mark.ray
def test_a_search_explores_a_modules_search_space_and_registers_the_best_with_its_hyperparameters(cluster):
    from raymedic.storage import Storage
    from train_jobs.registry import ModelRegistry
    from train_jobs.search import search_member

    cfg = parse_config({**_members(hyperparameters={"width": 16}, search_space={
        "width": {"choice": [3, 8, 16]}, "lr": {"loguniform": [1e-3, 3e-2]}}),
        "storage_path": str(cluster / "search")}).resolved()
    lines: list[str] = []
    report = search_member(cfg, _table(600), target="label", model="own", member="net", num_samples=4,
                           max_epochs=3, progress=lines.append)
    assert report.trials_run == 4 and report.trials_errored >= 1  # (Optuna is seeded: the same trials every run)
    for o in report.trials:  # a sampled width the constructor rejects fails that trial only, saying why
        assert (o.error is not None) == (o.config["width"] == 3), o
        if o.error:
            assert "rejected the sampled hyperparameters" in o.error and "width 3 is not supported" in o.error
    assert report.default_trial is not None and report.default_trial.config["width"] == 16
    assert set(report.best_config) == {"width", "learning_rate"} and report.best_config["width"] in (8, 16)
    meta = ModelRegistry(Storage(cfg.storage_path)).info("own", "net", "challenger").metadata
    assert meta["module"] == "ownnets.tab:Net" and meta["hyperparameters"] == {"width": report.best_config["width"]}
    assert meta["training"]["learning_rate"] == report.best_config["learning_rate"]
    assert meta["search"]["space"] == {"width": "choice [3, 8, 16]", "learning_rate": "loguniform [0.001, 0.03]"}
    assert sum("trial " in line for line in lines) == 4


@pytest.mark.ray
def test_a_member_trains_with_its_own_train_loop_and_is_registered_from_its_checkpoint(cluster):
    from raymedic.storage import Storage
    from train_jobs.artifacts import unpack
    from train_jobs.registry import ModelRegistry
    from train_jobs.train import train_ensemble

    cfg = parse_config({"members": [{"name": "net", "module": "ownnets.tab:Net", "hyperparameters": {"width": 8},
                                     "train_loop": "ownnets.tab:good_loop"}],
                        "gateway": {"min_members": 1}, "training": {"epochs": 60, "learning_rate": 0.05},
                        "storage_path": str(cluster / "own")}).resolved()
    lines: list[str] = []
    report = train_ensemble(cfg, _table(600), target="label", model="own", progress=lines.append)
    assert report.metrics["net"]["val_accuracy"] > report.baseline_accuracy + 0.1, report.metrics
    meta = report.versions["net"].metadata
    assert meta["training"]["train_loop"] == "ownnets.tab:good_loop"
    assert meta["training"]["reported"]["epoch"] == 60 and meta["training"]["reported"]["is_net"] == 1.0
    assert meta["ray_train_run"].startswith("raymedic-train-own-net-")
    served = unpack(ModelRegistry(Storage(cfg.storage_path)).load("own", "net", "champion").files)
    np.testing.assert_allclose(served.predict_proba(served.golden.rows), served.golden.probabilities, atol=1e-5)
    assert any("training with its own train_loop 'ownnets.tab:good_loop'" in line for line in lines)


@pytest.mark.ray
def test_a_train_loop_that_reports_no_checkpoint_is_refused_with_the_fix(cluster):
    from raymedic.storage import Storage
    from train_jobs.registry import ModelRegistry
    from train_jobs.train import train_ensemble

    cfg = parse_config({"members": [{"name": "net", "module": "ownnets.tab:Net",
                                     "train_loop": "ownnets.tab:no_checkpoint_loop"}],
                        "gateway": {"min_members": 1}, "storage_path": str(cluster / "none")}).resolved()
    with pytest.raises(TrainingFailed) as err:
        train_ensemble(cfg, _table(300), target="label", model="none", progress=lambda _: None)
    assert ("member 'net': train_loop 'ownnets.tab:no_checkpoint_loop' reported no checkpoint, so there are no "
            "weights to register: from rank 0, save the plain network's state_dict") in str(err.value)
    assert ModelRegistry(Storage(cfg.storage_path)).aliases("none", "net") == {}


def test_the_stored_form_of_a_search_domain_is_checked_like_the_written_one():
    """A config the controller stored and reloads may give a domain as {distribution, values}: the same
    checks apply, so a bad range cannot slip in that way and fail only inside a Tune trial."""
    from raymedic.config import SearchDomain

    assert SearchDomain.model_validate({"distribution": "randint", "values": [1, 4]}).values == (1, 4)
    with pytest.raises(ValueError, match="loguniform bounds must be positive"):
        SearchDomain.model_validate({"distribution": "loguniform", "values": [0, 0.1]})
    with pytest.raises(ValueError, match="unknown distribution 'gauss'"):
        SearchDomain.model_validate({"distribution": "gauss", "values": [0, 1]})
