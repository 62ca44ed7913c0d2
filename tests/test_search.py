"""Hyperparameter search: the space and outcome logic alone, then one real Tune run.

The unit tests need no Ray. The end-to-end test runs Ray Tune with Optuna and ASHA
on an embedded local cluster (one for the module) and checks that the searched
version is registered as a challenger that serves like a trained one, while the
champion stays where it was.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from raymedic.config import parse_config
from raymedic.errors import ConfigError, SearchFailed
from train_jobs.models import KINDS, ArchSpec
from tests.conftest import REPO
from train_jobs.search import (
    TrialOutcome,
    check_search_args,
    choose_best,
    default_point,
    search_space,
    split_params,
)
from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

# ---- search space (no Ray) ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_space_covers_exactly_the_hyperparameters_each_kind_accepts(kind):
    space = search_space(kind)
    accepted = set(ArchSpec.create(kind, input_dim=3, n_classes=2).hyperparameters)
    assert set(space) == {"learning_rate", "weight_decay"} | accepted
    assert space["learning_rate"].log and space["weight_decay"].log
    # Every corner of the space builds a valid architecture.
    for corner in ("low", "high"):
        point = {name: getattr(p, corner) for name, p in space.items()}
        _, arch = split_params(kind, point)
        ArchSpec.create(kind, input_dim=3, n_classes=2, hyperparameters=arch)


def test_architecture_ranges_are_sane_for_an_mlp():
    space = search_space("mlp")
    assert space["hidden"].integer and space["hidden"].log and space["hidden"].low >= 8
    assert space["layers"].integer and (space["layers"].low, space["layers"].high) == (1, 4)
    assert not space["dropout"].integer and 0 <= space["dropout"].low < space["dropout"].high < 1
    assert 0 < space["learning_rate"].low < 3e-3 < space["learning_rate"].high <= 0.1


def test_split_params_returns_plain_ints_and_floats():
    opt, arch = split_params("tabresnet", {"learning_rate": np.float64(0.01), "weight_decay": 1e-5,
                                           "hidden": np.int64(48), "blocks": 3.0, "dropout": np.float32(0.25)})
    assert opt == {"learning_rate": 0.01, "weight_decay": 1e-5}
    assert arch == {"hidden": 48, "blocks": 3, "dropout": 0.25}
    assert type(arch["hidden"]) is int and type(arch["blocks"]) is int and type(arch["dropout"]) is float
    with pytest.raises(ConfigError, match="lacks"):
        split_params("mlp", {"learning_rate": 0.01})


def test_the_default_configuration_is_the_first_point_when_inside_the_space():
    cfg = parse_config({})
    assert default_point(cfg, cfg.member("mlp")) == {"learning_rate": 3e-3, "weight_decay": 1e-4, "hidden": 64,
                                                     "layers": 2, "dropout": 0.1}
    wide = parse_config({"members": [{"name": "big", "kind": "mlp", "hyperparameters": {"hidden": 4096}},
                                     {"name": "lin", "kind": "logistic"}], "gateway": {"min_members": 1}})
    assert default_point(wide, wide.member("big")) is None
    no_decay = parse_config({"training": {"weight_decay": 0.0}})
    assert default_point(no_decay, no_decay.member("logistic")) is None  # 0 is outside a log range


def test_tune_domains_keep_integer_bounds_inclusive_for_optuna():
    pytest.importorskip("optuna")
    from ray.tune.search.optuna import OptunaSearch  # importing starts no cluster

    dists = OptunaSearch.convert_search_space({n: p.to_tune() for n, p in search_space("mlp").items()})
    assert (dists["layers"].low, dists["layers"].high) == (1, 4)
    assert (dists["hidden"].low, dists["hidden"].high, dists["hidden"].log) == (16, 256, True)
    assert dists["learning_rate"].log and not dists["dropout"].log


# ---- outcomes and arguments (no Ray) ------------------------------------------------------


def _outcome(loss, *, error=None, epochs=4):
    return TrialOutcome(config={"learning_rate": 0.01}, epochs=epochs, best_val_loss=loss,
                        best_val_accuracy=None if loss is None else 0.8, best_epoch=epochs if loss else None,
                        stopped_early=epochs < 8, error=error)


def test_best_trial_is_the_lowest_finite_validation_loss_ignoring_failures():
    outcomes = [_outcome(0.4), _outcome(None, error="ValueError: boom"), _outcome(float("inf")), _outcome(0.3)]
    assert choose_best(outcomes, run="r", where="/tmp/r") == 3


def test_every_trial_failing_raises_a_clear_error_with_the_first_cause():
    with pytest.raises(SearchFailed, match=r"all 2 trials of search 'r' failed; the first error: ValueError: boom"):
        choose_best([_outcome(None, error="ValueError: boom"), _outcome(None, error="KeyError: x")],
                    run="r", where="/tmp/r")
    with pytest.raises(SearchFailed, match="diverged"):
        choose_best([_outcome(float("inf")), _outcome(None, error="E: e")], run="r", where="/tmp/r")
    with pytest.raises(SearchFailed, match="ran no trials"):
        choose_best([], run="r", where="/tmp/r")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"member": "nope"}, "no ensemble member named 'nope': pass --member with one of ['logistic', 'mlp'"),
    ({"num_samples": 0}, "--trials) must be a whole number >= 1, got 0"),
    ({"max_epochs": 0}, "--max-epochs must be a whole number in [1, 10000], got 0"),
])
def test_bad_search_arguments_name_the_fix(kwargs, fragment):
    args = {"member": "mlp", "num_samples": 4, "max_epochs": 5, **kwargs}
    with pytest.raises(ConfigError) as exc:
        check_search_args(parse_config({}), **args)
    assert fragment in str(exc.value)


def test_cli_refuses_bad_search_flags_before_starting_ray(capsys):
    from raymedic.app.cli import main

    assert main(["search", "--member", "nope"]) == 2
    assert "no ensemble member named 'nope'" in capsys.readouterr().err
    assert main(["search", "--member", "mlp", "--trials", "0"]) == 2
    assert "--trials" in capsys.readouterr().err
    assert main(["search", "--member", "mlp", "--data", "t.csv"]) == 2
    assert "--target is required" in capsys.readouterr().err


# ---- end to end on a real local Ray cluster -----------------------------------------------

TRIALS, MAX_EPOCHS = 4, 6


def _champion_without_ray(cfg, table, registry):
    """A quickly trained default mlp registered and promoted, as `raymedic train` would leave it."""
    import torch

    from train_jobs._fit import fit_epoch, prepare_data, register_member, snapshot
    from train_jobs.models import build_model

    data = prepare_data(cfg, table, target="label")
    member = cfg.member("mlp")
    spec = data.spec(member.kind, member.hyperparameters)
    torch.manual_seed(0)
    net = build_model(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.training.learning_rate)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        fit_epoch(net, opt, torch.tensor(data.x_train), torch.tensor(data.y_train), batch_size=256,
                  generator=gen, loss_fn=torch.nn.CrossEntropyLoss())
    info, _ = register_member(registry, data, model="synthetic", member=member, spec=spec, state=snapshot(net),
                              metadata={"training": cfg.training.model_dump()})
    registry.promote("synthetic", "mlp", info.version)
    return info


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    pytest.importorskip("ray")
    import ray

    from cluster.connect import start_embedded
    from raymedic.storage import Storage
    from train_jobs.registry import ModelRegistry
    from train_jobs.search import search_member

    tmp = tmp_path_factory.mktemp("search")
    cfg = parse_config({"storage_path": str(tmp / "storage")}).resolved()
    table = SyntheticGenerator(SyntheticSpec(seed=0)).sample(1500, seed=0)
    registry = ModelRegistry(Storage(cfg.storage_path))
    champion = _champion_without_ray(cfg, table, registry)
    lines: list[str] = []
    start_embedded(log_to_driver=False)
    try:
        report = search_member(cfg, table, target="label", model="synthetic", member="mlp",
                               num_samples=TRIALS, max_epochs=MAX_EPOCHS, progress=lines.append)
    finally:
        ray.shutdown()
    return {"report": report, "registry": registry, "champion": champion, "cfg": cfg, "lines": lines, "tmp": tmp}


@pytest.mark.ray
def test_search_runs_every_trial_and_picks_the_lowest_validation_loss(searched):
    report = searched["report"]
    assert report.trials_run == TRIALS and report.trials_errored == 0
    assert all(1 <= o.epochs <= MAX_EPOCHS and o.stopped_early == (o.epochs < MAX_EPOCHS) for o in report.trials)
    assert report.trials_stopped_early == sum(o.stopped_early for o in report.trials)
    assert report.best_val_loss == min(o.best_val_loss for o in report.trials)
    assert set(report.best_config) == set(search_space("mlp"))
    # Optuna proposed distinct configurations, the first being the member's current one.
    assert len({tuple(sorted(o.config.items())) for o in report.trials}) == TRIALS
    assert report.default_trial is not None and report.default_trial.config["hidden"] == 64
    assert report.best_val_loss <= report.default_trial.best_val_loss
    assert sum("trial " in line for line in searched["lines"]) == TRIALS


@pytest.mark.ray
def test_best_is_registered_as_challenger_and_the_champion_does_not_move(searched):
    report, registry, champion = searched["report"], searched["registry"], searched["champion"]
    assert report.version.version == "v0002" and report.champion == champion.version == "v0001"
    assert registry.aliases("synthetic", "mlp") == {"champion": "v0001", "challenger": "v0002"}
    assert [m.alias for m in registry.alias_history("synthetic", "mlp")] == ["champion", "challenger"]
    meta = registry.info("synthetic", "mlp", "challenger").metadata
    assert meta["parent_version"] == "v0001"
    # Everything a trained version carries, so serving and the controller cannot tell them apart.
    assert set(champion.metadata) - {"version", "created_at", "files"} <= set(meta)
    assert meta["kind"] == "mlp" and meta["schema"] == champion.metadata["schema"]
    assert meta["data_fingerprint"] == champion.metadata["data_fingerprint"]
    search = meta["search"]
    assert search["trials"] == TRIALS and search["trials_stopped_early"] == report.trials_stopped_early
    assert search["best_config"] == report.best_config and search["best_val_loss"] == report.best_val_loss
    assert 0.5 < search["best_val_accuracy"] <= 1 and search["wall_s"] > 0
    assert search["tune_run"].startswith("raymedic-search-synthetic-mlp-")
    assert search["tune_path"].startswith(f"{searched['cfg'].storage_path}/ray_tune/")
    assert (searched["tmp"] / "storage" / "ray_tune" / search["tune_run"]).is_dir()
    _, arch = split_params("mlp", search["best_config"])
    assert meta["hyperparameters"] == arch
    assert meta["training"]["learning_rate"] == search["best_config"]["learning_rate"]


@pytest.mark.ray
def test_challenger_loads_predicts_and_beats_the_majority_baseline(searched):
    from train_jobs.artifacts import unpack

    loaded = searched["registry"].load("synthetic", "mlp", "challenger")
    served = unpack(loaded.files)
    assert served.spec.hyperparameters == loaded.info.metadata["hyperparameters"]
    # The golden probes replay to the stored answers (what the controller checks on every replica).
    np.testing.assert_allclose(served.predict_proba(served.golden.rows), served.golden.probabilities, atol=1e-5)
    fresh = SyntheticGenerator(SyntheticSpec(seed=0)).sample(1000, seed=99)
    names = served.schema.feature_names
    pred = served.predict_proba([list(r) for r in fresh[names].itertuples(index=False)]).argmax(1)
    accuracy = float((np.asarray(served.schema.classes)[pred] == fresh["label"].to_numpy()).mean())
    baseline = float(fresh["label"].value_counts(normalize=True).max())
    assert accuracy >= baseline + 0.15, (accuracy, baseline)
    assert loaded.info.metadata["metrics"]["val_accuracy"] > loaded.info.metadata["metrics"]["baseline_accuracy"]


@pytest.mark.ray
def test_job_entry_point_prints_only_the_json_report_on_stdout(tmp_path):
    """`python -m train_jobs.search` as `ray job submit` runs it; no champion yet, so none is created."""
    storage = tmp_path / "storage"
    proc = subprocess.run([sys.executable, "-m", "train_jobs.search", "--synthetic", "--member", "logistic",
                           "--trials", "2", "--max-epochs", "2", "--storage-path", str(storage), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["member"] == "logistic" and report["trials_run"] == 2 and report["trials_errored"] == 0
    assert set(report["best_config"]) == {"learning_rate", "weight_decay"}
    assert report["alias"] == "challenger" and report["champion"] is None
    assert "trial 2/2" in proc.stderr
    from raymedic.storage import Storage
    from train_jobs.registry import ModelRegistry

    assert ModelRegistry(Storage(str(storage))).aliases("synthetic", "logistic") == {"challenger": "v0001"}


def test_the_progress_callback_pickles_where_ray_has_wrapped_print(monkeypatch):
    """Tune pickles its callbacks; in a Ray job's driver `print` is not builtins.print (a retrain job's
    search on a rejected challenger failed with PicklingError). The reporter stays behind."""
    import builtins

    from ray import cloudpickle

    from train_jobs.search import _progress_callback

    lines: list[str] = []
    callback = _progress_callback(print, total=3, max_epochs=2)
    wrapped = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: wrapped(*a, **k))
    copy = cloudpickle.loads(cloudpickle.dumps(callback))
    assert (copy.done, copy.total, copy.report) == (0, 3, None)
    live = _progress_callback(lines.append, total=1, max_epochs=2)

    class Trial:
        config, last_result, path = {"hidden": 8}, {"training_iteration": 1, "best_val_loss": 0.5,
                                                    "best_val_accuracy": 0.8}, "/tmp/x"

    live.on_trial_complete(0, [], Trial())
    assert lines and "trial 1/1" in lines[0] and "stopped early by ASHA" in lines[0]
