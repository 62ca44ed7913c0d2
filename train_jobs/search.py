"""Hyperparameter search for one ensemble member: Ray Tune with Optuna and ASHA.

Entry point for both ``raymedic search`` and the cluster path::

    ray job submit --working-dir . -- python -m train_jobs.search --synthetic --member mlp --trials 8

Every trial trains the member's network on the same seeded split and fitted
preprocessing as ``raymedic train`` (:mod:`train_jobs._fit`) and reports
validation loss and accuracy after each epoch. Optuna's TPE sampler (seeded)
proposes each new configuration from the finished ones; ASHA stops trials that
fall behind at a rung, so the epochs go to promising configurations. The first
trial is the member's current configuration whenever it lies inside the search
space, so a report always says what the search gained over the default.

The best trial's best-epoch weights become a new version of the member with the
same files and metadata as a trained one (plus ``search``), under the alias
``challenger``. It is never promoted: serving it is a separate, deliberate step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from cluster.connect import connect_or_start
from raymedic.config import TRAINING_KNOBS, MemberConfig, RaymedicConfig, SearchDomain
from raymedic.errors import ConfigError, RaymedicError, SearchFailed
from raymedic.logs import get_logger

if TYPE_CHECKING:
    import pandas as pd

    from train_jobs._fit import PreparedData
    from train_jobs.registry import VersionInfo

# torch, pandas, pyarrow and Ray load inside the functions that use them: `raymedic --help` builds
# its parser from this module (add_arguments) and must stay instant; and Ray reads RAY_AUTH_MODE
# when it is imported, which `raymedic search` sets only after it has checked the flags here.

__all__ = [
    "Param",
    "Choice",
    "search_space",
    "member_search_space",
    "split_params",
    "split_point",
    "TrialOutcome",
    "SearchReport",
    "check_search_args",
    "choose_best",
    "search_member",
    "report_json",
    "format_report",
    "main",
]

log = get_logger(__name__)

DEFAULT_TRIALS = 8
"""Enough for TPE to move past its first random guesses on a laptop in a few minutes."""

DEFAULT_MAX_EPOCHS = 20
"""Epochs a trial may run if ASHA never stops it; small tables converge well within it."""

GRACE_EPOCHS = 2
"""ASHA judges no trial before this many epochs: the first epoch's loss says little about the last."""

REDUCTION_FACTOR = 2
"""ASHA keeps the best 1/2 at each rung (rungs at 2, 4, 8 … epochs): with a handful of trials a
larger factor would leave rungs too sparse to stop anything."""

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_PARAMS = ("learning_rate", "weight_decay")


# ---- the search space (pure: no Ray) ------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a float or integer range, optionally log-scaled.

    >>> Param("dropout", 0.0, 0.5).contains(0.1), Param("layers", 1, 4, integer=True).contains(5)
    (True, False)
    """

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False
    label: str | None = None
    """How the user wrote it (e.g. ``randint [1, 5)``), shown instead of the inclusive range."""

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"search range for {self.name!r} is empty: low ({self.low}) must be < high "
                              f"({self.high})")
        if self.log and self.low <= 0:
            raise ConfigError(f"log-scaled search range for {self.name!r} must be positive, got low={self.low}")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` can be proposed by this range (the type matters for integers)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def to_tune(self) -> Any:
        """The Ray Tune domain (bounds inclusive, as Optuna sees them)."""
        from ray import tune  # lazy: imports Ray (see the note at the top)

        if self.integer:
            low, high = int(self.low), int(self.high) + 1  # Tune's integer upper bound is exclusive
            return tune.lograndint(low, high) if self.log else tune.randint(low, high)
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)

    def describe(self) -> str:
        """The range as the search report prints it, e.g. ``float [0, 0.5]`` or ``int [16, 256] log``."""
        if self.label is not None:
            return self.label
        kind = "int" if self.integer else "float"
        return f"{kind} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")

    def plain(self, value: Any) -> Any:
        """A sampled value as a plain Python ``int``/``float`` (Optuna may hand back numpy scalars)."""
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Choice:
    """One searched hyperparameter drawn from a list of values (``tune.choice``).

    >>> Choice("channels", (8, 16)).contains(16), Choice("channels", (8, 16)).contains(12)
    (True, False)
    """

    name: str
    values: tuple[Any, ...]

    @property
    def integer(self) -> bool:
        """Whether every value is a whole number (so a sampled one comes back as ``int``)."""
        return all(isinstance(v, int) and not isinstance(v, bool) for v in self.values)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices (``True`` is not ``1`` here)."""
        return any(type(value) is type(v) and value == v for v in self.values)

    def to_tune(self) -> Any:
        """The Ray Tune domain."""
        from ray import tune  # lazy: imports Ray (see the note at the top)

        return tune.choice(list(self.values))

    def describe(self) -> str:
        """The choices as the search report prints them, e.g. ``choice [8, 16, 32]``."""
        return f"choice {list(self.values)}"

    def plain(self, value: Any) -> Any:
        """A sampled value as plain Python (numpy scalars → ``int``/``float``/``str``/``bool``)."""
        return value.item() if hasattr(value, "item") else value


Domain = Param | Choice
"""A searched hyperparameter of either shape."""


_OPTIMIZER_SPACE = (
    Param("learning_rate", 1e-4, 3e-2, log=True),
    Param("weight_decay", 1e-6, 1e-2, log=True),
)

# Per member kind: exactly the hyperparameters ArchSpec accepts for that kind.
_ARCH_SPACE: dict[str, tuple[Param, ...]] = {
    "logistic": (),
    "mlp": (
        Param("hidden", 16, 256, log=True, integer=True),
        Param("layers", 1, 4, integer=True),
        Param("dropout", 0.0, 0.5),
    ),
    "tabresnet": (
        Param("hidden", 16, 128, log=True, integer=True),
        Param("blocks", 1, 4, integer=True),
        Param("dropout", 0.0, 0.5),
    ),
}


def search_space(kind: str) -> dict[str, Param]:
    """The searched hyperparameters of a ``kind`` member: optimiser first, then architecture.

    >>> list(search_space("mlp"))
    ['learning_rate', 'weight_decay', 'hidden', 'layers', 'dropout']
    """
    if kind not in _ARCH_SPACE:
        raise ConfigError(f"no search space for member kind {kind!r}: use one of {sorted(_ARCH_SPACE)}")
    return {p.name: p for p in (*_OPTIMIZER_SPACE, *_ARCH_SPACE[kind])}


def split_params(kind: str, params: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """``(optimiser settings, architecture hyperparameters)`` of one sampled point of ``kind``'s default space.

    Values come back as plain ``int``/``float`` (Optuna may hand back numpy scalars).

    >>> split_params("mlp", {"learning_rate": 0.01, "weight_decay": 1e-4, "hidden": 64.0, "layers": 2,
    ...                      "dropout": 0.0})
    ({'learning_rate': 0.01, 'weight_decay': 0.0001}, {'hidden': 64, 'layers': 2, 'dropout': 0.0})
    """
    return split_point(search_space(kind), params, what=f"a {kind}")


def split_point(space: Mapping[str, Domain], params: Mapping[str, Any], *,
                what: str = "this") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(training knobs, architecture hyperparameters)`` of one sampled point of ``space``.

    Training knobs are the TrainingConfig fields a search may set (learning_rate, weight_decay,
    batch_size, epochs); everything else goes to the architecture. Values come back as plain Python.

    >>> split_point({"learning_rate": Param("learning_rate", 1e-4, 1e-1, log=True), "width": Choice("width", (8, 16))},
    ...             {"learning_rate": 0.01, "width": 16})
    ({'learning_rate': 0.01}, {'width': 16})
    """
    missing = sorted(set(space) - set(params))
    if missing:
        raise ConfigError(f"{what} search point lacks {missing}; it needs every one of {list(space)}")
    training: dict[str, Any] = {}
    arch: dict[str, Any] = {}
    for name, domain in space.items():
        value = domain.plain(params[name])
        if name in TRAINING_KNOBS:
            training[name] = int(value) if name in _INTEGER_KNOBS else float(value)
        else:
            arch[name] = value
    return training, arch


_INTEGER_KNOBS = ("batch_size", "epochs")


def _domain(name: str, d: SearchDomain) -> Domain:
    """A config ``search_space`` entry as a searched hyperparameter (Tune's semantics kept)."""
    label = f"{d.describe()}"
    if d.distribution == "choice":
        return Choice(name, tuple(d.values))
    lo, hi = d.values
    if d.distribution == "randint":
        if hi - lo == 1:
            return Choice(name, (int(lo),))
        # Param's bounds are inclusive (as Optuna sees them); Tune's randint upper bound is exclusive.
        return Param(name, int(lo), int(hi) - 1, integer=True, label=label)
    return Param(name, float(lo), float(hi), log=d.distribution == "loguniform", label=label)


def _check_knob(name: str, domain: Domain, member: str) -> None:
    """A searched training knob must draw values the supervised loop can use."""
    values = domain.values if isinstance(domain, Choice) else (domain.low, domain.high)
    where = f"member {member!r} search_space.{name}"
    if name in _INTEGER_KNOBS:
        if not domain.integer or any(v < 1 for v in values):
            raise ConfigError(f"{where} must draw whole numbers >= 1 ({{randint: [lo, hi]}} or {{choice: [...]}} of "
                              f"integers), got {domain.describe()}")
        return
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where} must draw numbers, got {domain.describe()}")
    if name == "learning_rate" and min(values) <= 0:
        raise ConfigError(f"{where} must draw positive learning rates, got {domain.describe()}: use "
                          "{loguniform: [0.0001, 0.1]}")
    if name == "weight_decay" and min(values) < 0:
        raise ConfigError(f"{where} must draw weight decays >= 0, got {domain.describe()}")


def member_search_space(member: MemberConfig) -> tuple[dict[str, Domain], str | None]:
    """The space a search of ``member`` explores, and a note for the user when it is not the obvious one.

    The member's own ``search_space`` when it has one (training knobs checked here; a built-in's
    architecture names must be knobs of its kind); otherwise a built-in kind's default space, or
    for a user's module, whose hyperparameters raymedic cannot guess, the optimiser knobs only.

    Raises:
        ConfigError: a parameter a built-in does not have, or a training knob drawing unusable values.
    """
    if member.search_space is None:
        if member.module is None:
            return search_space(str(member.kind)), None
        return ({p.name: p for p in _OPTIMIZER_SPACE},
                (f"member {member.name!r} runs your own module {member.module!r} and has no search_space: "
                 f"searching the training knobs only ({', '.join(p.name for p in _OPTIMIZER_SPACE)}); add "
                 "`search_space:` to the member to search its constructor's hyperparameters too"))
    space = {name: _domain(name, d) for name, d in member.search_space.items()}
    for name, domain in space.items():
        if name in TRAINING_KNOBS:
            _check_knob(name, domain, member.name)
    if member.module is None:
        from train_jobs.models import ArchSpec  # lazy: imports PyTorch (see the note at the top)

        known = set(ArchSpec.create(str(member.kind), input_dim=1, n_classes=2).hyperparameters)
        unknown = sorted(set(space) - known - set(TRAINING_KNOBS))
        if unknown:
            raise ConfigError(f"member {member.name!r} ({member.kind}) has no hyperparameters {unknown} to search: "
                              f"its search_space may name its knobs {sorted(known) or '(none)'} and the training "
                              f"knobs {sorted(TRAINING_KNOBS)} (lr is learning_rate)")
    return space, None


def _current_values(config: RaymedicConfig, member: MemberConfig) -> dict[str, Any]:
    """The member's configuration as it trains today: training knobs and architecture hyperparameters
    (a built-in's defaults filled in; a module's constructor defaults read from its signature)."""
    import inspect

    # lazy: imports PyTorch (see the note at the top)
    from train_jobs.models import ArchSpec, load_module_class

    t = config.training
    knobs = {"learning_rate": t.learning_rate, "weight_decay": t.weight_decay, "batch_size": t.batch_size,
             "epochs": t.epochs}
    if member.module is None:
        arch = ArchSpec.create(str(member.kind), input_dim=1, n_classes=2,
                               hyperparameters=member.hyperparameters).hyperparameters
    else:
        try:
            params = inspect.signature(load_module_class(member.module)).parameters.values()
        except (ConfigError, TypeError, ValueError):
            params = ()  # not importable here: its trials say why; no baseline point
        arch = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        arch.update(member.hyperparameters)
    return {**knobs, **arch}


def default_point(config: RaymedicConfig, member: MemberConfig) -> dict[str, Any] | None:
    """The member's current configuration as a search point, or None if it lies outside the space."""
    space, _ = member_search_space(member)
    current = _current_values(config, member)
    if not set(space) <= set(current):
        return None
    point = {k: current[k] for k in space}
    if not all(space[k].contains(v) for k, v in point.items()):
        return None
    return point


# ---- outcomes (pure: plain data in, plain data out) ---------------------------------------


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial achieved: its best epoch on the validation split, or its error."""

    config: dict[str, Any]
    epochs: int
    best_val_loss: float | None
    best_val_accuracy: float | None
    best_epoch: int | None
    stopped_early: bool
    error: str | None = None

    @property
    def usable(self) -> bool:
        """Whether the trial can be chosen: it finished with a finite validation loss."""
        return self.error is None and self.best_val_loss is not None and math.isfinite(self.best_val_loss)


def choose_best(outcomes: Sequence[TrialOutcome], *, run: str, where: str) -> int:
    """Index of the trial with the lowest validation loss; ``SearchFailed`` if none is usable."""
    if not outcomes:
        raise SearchFailed(f"search {run!r} ran no trials; check the cluster has free CPUs "
                           f"(`ray status`) and see the Tune logs under {where}")
    usable = [i for i, o in enumerate(outcomes) if o.usable]
    if usable:
        return min(usable, key=lambda i: (outcomes[i].best_val_loss, i))
    errors = [o.error for o in outcomes if o.error]
    if len(errors) == len(outcomes):
        raise SearchFailed(f"all {len(outcomes)} trials of search {run!r} failed; the first error: {errors[0]}. "
                           f"Fix its cause and search again (trial logs under {where})")
    raise SearchFailed(f"no trial of search {run!r} reached a finite validation loss (every one diverged): "
                       "check the table for extreme values, or lower the learning rate range")


# ---- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchReport:
    """A finished search: every trial, the best configuration and the version registered from it."""

    model: str
    member: str
    kind: str
    version: VersionInfo
    alias: str
    champion: str | None
    best_config: dict[str, Any]
    best_val_loss: float
    best_val_accuracy: float
    metrics: dict[str, float]
    baseline_accuracy: float
    trials: tuple[TrialOutcome, ...]
    default_trial: TrialOutcome | None
    tune_run: str
    tune_path: str
    wall_s: float
    space: dict[str, str] = field(default_factory=dict)

    @property
    def trials_run(self) -> int:
        """Trials Tune ran (finished, stopped early or failed)."""
        return len(self.trials)

    @property
    def trials_stopped_early(self) -> int:
        """Trials ASHA stopped before ``max_epochs``: the epochs the search saved."""
        return sum(o.stopped_early for o in self.trials)

    @property
    def trials_errored(self) -> int:
        """Trials that failed with an error."""
        return sum(o.error is not None for o in self.trials)


def report_json(report: SearchReport) -> dict[str, Any]:
    """The report as ``--json`` prints it: version ids rather than whole version records."""
    return {
        "model": report.model,
        "member": report.member,
        "kind": report.kind,
        "version": report.version.version,
        "alias": report.alias,
        "champion": report.champion,
        "best_config": report.best_config,
        "best_val_loss": report.best_val_loss,
        "best_val_accuracy": report.best_val_accuracy,
        "metrics": report.metrics,
        "baseline_accuracy": report.baseline_accuracy,
        "default_trial": asdict(report.default_trial) if report.default_trial else None,
        "trials": [asdict(o) for o in report.trials],
        "trials_run": report.trials_run,
        "trials_stopped_early": report.trials_stopped_early,
        "trials_errored": report.trials_errored,
        "space": report.space,
        "tune_run": report.tune_run,
        "tune_path": report.tune_path,
        "wall_s": round(report.wall_s, 2),
    }


def _fmt_config(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def format_report(report: SearchReport) -> str:
    """The human summary ``raymedic search`` prints."""
    lines = [
        f"best configuration: {_fmt_config(report.best_config)}",
        f"  val_loss {report.best_val_loss:.4f}  val_accuracy {report.best_val_accuracy:.3f}  "
        f"(majority baseline {report.baseline_accuracy:.3f})",
    ]
    if report.default_trial is not None and report.default_trial.usable:
        d = report.default_trial
        lines.append(f"  default configuration: val_loss {d.best_val_loss:.4f}  "
                     f"val_accuracy {d.best_val_accuracy:.3f}"
                     + ("  (the current configuration scored best)" if _same_point(d.config, report.best_config)
                        else ""))
    lines.append(f"trials: {report.trials_run} run, {report.trials_stopped_early} stopped early by ASHA, "
                 f"{report.trials_errored} failed ({report.wall_s:.1f} s; Tune run {report.tune_path})")
    champion = f"the champion stays {report.champion}" if report.champion else "no champion is set"
    lines.append(f"registered {report.member} {report.version.version} as {report.alias!r}, not promoted "
                 f"({champion}); ModelRegistry.promote({report.model!r}, {report.member!r}, "
                 f"{report.version.version!r}) makes it serve")
    return "\n".join(lines)


# ---- the search (needs a connected Ray cluster) -------------------------------------------


def check_search_args(config: RaymedicConfig, *, member: str, num_samples: int, max_epochs: int) -> MemberConfig:
    """Validate a search request before any Ray work; returns the member's config."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"the number of trials (--trials) must be a whole number >= 1, got {num_samples!r}: "
                          f"ask for a few, e.g. --trials {DEFAULT_TRIALS}")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or not 1 <= max_epochs <= 10_000:
        raise ConfigError(f"--max-epochs must be a whole number in [1, 10000], got {max_epochs!r}: "
                          f"e.g. --max-epochs {DEFAULT_MAX_EPOCHS}")
    names = [m.name for m in config.members]
    if member not in names:
        raise ConfigError(f"no ensemble member named {member!r}: pass --member with one of {names} "
                          "(the `members` of the config)")
    chosen = config.member(member)
    if chosen.train_loop is not None:
        raise ConfigError(f"member {member!r} trains with your own train_loop {chosen.train_loop!r}, which a search "
                          "cannot run: every trial runs raymedic's supervised loop, so its best configuration would "
                          "not be what your loop trains. Search inside your train_loop, or search a copy of the "
                          "member without `train_loop`")
    member_search_space(chosen)  # a bad space fails here, before any Ray work
    return chosen


def _trial(params: dict[str, Any], data: dict[str, Any]) -> None:
    """One Tune trial: train the member with ``params``, report every epoch, checkpoint improvements."""
    # lazy: PyTorch and Ray (see the note at the top); a trial runs in a Tune worker
    import torch
    from ray import tune
    from safetensors.torch import save_file

    # lazy: both import PyTorch; `raymedic --help` builds its parser from this module
    from train_jobs._fit import fit_epoch, snapshot, validate
    from train_jobs.models import ArchSpec, build_model, check_contract

    torch.manual_seed(data["seed"])
    torch.set_num_threads(1)  # fractional-CPU trials share cores; more threads only contend
    training, arch = split_point(data["space"], params)
    base = data["arch"]
    spec = ArchSpec.from_dict({**base, "hyperparameters": {**base["hyperparameters"], **arch}})
    if spec.module is not None:
        # A combination the user's constructor (or forward) rejects fails this trial, with the contract's
        # message, and the search goes on with the others.
        try:
            check_contract(spec)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's constructor may raise anything
            raise ConfigError(f"{spec.module} rejected the sampled hyperparameters {spec.hyperparameters} "
                              f"({type(exc).__name__}: {exc}): narrow the member's search_space to values its "
                              "constructor accepts") from None
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=training.get("learning_rate", data["learning_rate"]),
                            weight_decay=training.get("weight_decay", data["weight_decay"]))
    batch_size = int(training.get("batch_size", data["batch_size"]))
    epochs = min(int(training.get("epochs", data["max_epochs"])), data["max_epochs"])
    shape = tuple(spec.input_shape or (spec.input_dim,))
    # torch.tensor copies: the arrays arrive read-only from the object store.
    x_tr, y_tr = torch.tensor(data["x_train"]).reshape(-1, *shape), torch.tensor(data["y_train"])
    x_va, y_va = torch.tensor(data["x_val"]).reshape(-1, *shape), torch.tensor(data["y_val"])
    gen = torch.Generator().manual_seed(data["seed"])
    loss_fn = torch.nn.CrossEntropyLoss()
    best: dict[str, float] = {"best_val_loss": math.inf, "best_val_accuracy": 0.0, "best_epoch": 0}
    for epoch in range(1, epochs + 1):
        fit_epoch(model, opt, x_tr, y_tr, batch_size=batch_size, generator=gen, loss_fn=loss_fn)
        val_loss, val_acc = validate(model, x_va, y_va, loss_fn)
        if not math.isfinite(val_loss):
            val_loss = math.inf  # a diverged trial ranks last instead of poisoning ASHA's rung statistics
        improved = val_loss < best["best_val_loss"]
        if improved:
            best = {"best_val_loss": val_loss, "best_val_accuracy": val_acc, "best_epoch": epoch}
        metrics = {"val_loss": val_loss, "val_accuracy": val_acc, "epoch": epoch, "planned_epochs": epochs, **best}
        if not improved:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            save_file(snapshot(model), str(Path(tmp) / WEIGHTS_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _error_line(error: BaseException) -> str:
    """The last meaningful line of a (possibly remote) trial error: usually ``Type: message``."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def _outcome(result: Any, max_epochs: int) -> TrialOutcome:
    metrics = result.metrics or {}
    epochs = int(metrics.get("training_iteration") or 0)
    planned = min(int(metrics.get("planned_epochs") or max_epochs), max_epochs)  # a searched `epochs` ends sooner
    loss = metrics.get("best_val_loss")
    return TrialOutcome(
        config={k: v for k, v in sorted((result.config or {}).items())},
        epochs=epochs,
        best_val_loss=float(loss) if loss is not None else None,
        best_val_accuracy=float(metrics["best_val_accuracy"]) if "best_val_accuracy" in metrics else None,
        best_epoch=int(metrics["best_epoch"]) if metrics.get("best_epoch") else None,
        stopped_early=result.error is None and 0 < epochs < planned,
        error=_error_line(result.error) if result.error is not None else None,
    )


def _progress_callback(progress: Callable[[str], None], *, total: int, max_epochs: int) -> Any:
    """A Tune callback that reports each trial as it ends (Tune's own table is switched off)."""
    from ray.tune import Callback  # lazy: imports Ray (see the note at the top)

    class _Progress(Callback):
        def __init__(self, report: Callable[[str], None], total: int, max_epochs: int) -> None:
            # (arguments, not closure variables: Tune pickles this class by value, closures included)
            self.done, self.total, self.max_epochs = 0, total, max_epochs
            self.report: Callable[[str], None] | None = report

        # Tune pickles its callbacks into the experiment state; the reporter stays in this process
        # (a function such as `print` does not pickle where Ray has wrapped the builtins).
        def __getstate__(self) -> dict[str, Any]:
            return {k: v for k, v in self.__dict__.items() if k != "report"}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state, report=None)

        def _say(self, line: str) -> None:
            if self.report is not None:
                self.report(line)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            r = trial.last_result or {}
            epochs = int(r.get("training_iteration") or 0)
            planned = min(int(r.get("planned_epochs") or self.max_epochs), self.max_epochs)
            how = "stopped early by ASHA" if epochs < planned else "ran every epoch"
            self._say(f"  trial {self.done}/{self.total} {_fmt_config(trial.config)}: best val_loss "
                      f"{r.get('best_val_loss', math.nan):.4f} val_accuracy "
                      f"{r.get('best_val_accuracy', math.nan):.3f} after {epochs} epoch(s), {how}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            self._say(f"  trial {self.done}/{self.total} {_fmt_config(trial.config)}: failed (see its error.txt "
                      f"under {trial.path})")

    return _Progress(progress, total, max_epochs)


def _run_tuner(config: RaymedicConfig, data: PreparedData, *, member: MemberConfig, num_samples: int,
               max_epochs: int, run_name: str, storage_root: str, points: list[dict[str, Any]],
               progress: Callable[[str], None]) -> tuple[list[TrialOutcome], list[Any], str]:
    """One ``Tuner.fit()``; returns each trial's outcome, its Result and the experiment path."""
    # lazy: Optuna and Ray load only for a search (see the note at the top)
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    # Keeping only each trial's best checkpoint forces an experiment snapshot per improving
    # epoch; that is cheap at this size, and Tune's warning about it would drown the progress lines.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    space, _ = member_search_space(member)
    payload = {
        "x_train": data.x_train, "y_train": data.y_train, "x_val": data.x_val, "y_val": data.y_val,
        "space": space,
        # The member's architecture as configured; each trial overrides the searched hyperparameters. A
        # module's base hyperparameters are not built here: they may lack what only the space supplies.
        "arch": data.member_spec(member, check=False).to_dict(),
        "learning_rate": config.training.learning_rate, "weight_decay": config.training.weight_decay,
        "batch_size": config.training.batch_size, "seed": config.training.seed, "max_epochs": max_epochs,
    }
    trainable = tune.with_resources(tune.with_parameters(_trial, data=payload),
                                    {"cpu": config.training.search_cpus_per_trial})
    # TPE's default waits for 10 random trials before modelling; with a small budget it would never start.
    sampler = optuna.samplers.TPESampler(seed=config.training.seed,
                                         n_startup_trials=max(2, min(10, num_samples // 2)))
    tuner = tune.Tuner(
        trainable,
        param_space={name: p.to_tune() for name, p in space.items()},
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", num_samples=num_samples,
            search_alg=OptunaSearch(sampler=sampler, points_to_evaluate=points or None),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=max_epochs,
                                    grace_period=min(GRACE_EPOCHS, max_epochs), reduction_factor=REDUCTION_FACTOR),
            max_concurrent_trials=min(num_samples, config.training.search_max_concurrent_trials),
            reuse_actors=True,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",  # short and stable for operators
        ),
        run_config=tune.RunConfig(
            name=run_name, storage_path=storage_root, verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_loss",
                                                    checkpoint_score_order="min"),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_progress_callback(progress, total=num_samples, max_epochs=max_epochs)],
        ),
    )
    where = f"{storage_root}/{run_name}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial otherwise
    try:
        # Tune prints its banner to stdout whatever `verbose` says; stdout may be carrying --json.
        with contextlib.redirect_stdout(sys.stderr):
            grid = tuner.fit()
    except Exception as exc:  # Tune wraps driver-side failures; the user needs the cause, not our stack.
        raise SearchFailed(f"Ray Tune run {run_name!r} failed: {_error_line(exc)} (logs under {where})") from exc
    results = list(grid)
    return [_outcome(r, max_epochs) for r in results], results, grid.experiment_path


def _best_state(result: Any, run: str) -> dict[str, Any]:
    from safetensors.torch import load_file  # lazy: imports PyTorch (see the note at the top)

    try:
        checkpoint = result.get_best_checkpoint("val_loss", "min")
    except RuntimeError:
        checkpoint = None
    if checkpoint is None:
        raise SearchFailed(f"the best trial of search {run!r} left no checkpoint under {result.path}; "
                           "check the storage path is writable and search again")
    with checkpoint.as_directory() as d:
        return load_file(str(Path(d) / WEIGHTS_FILE))


def search_member(
    config: RaymedicConfig,
    table: pd.DataFrame,
    *,
    target: str,
    model: str | None = None,
    member: str,
    num_samples: int = DEFAULT_TRIALS,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    progress: Callable[[str], None] = print,
) -> SearchReport:
    """Search hyperparameters of ``member`` on ``table``; register the best as its ``challenger``.

    Runs ``num_samples`` trials of up to ``max_epochs`` epochs each on the
    connected Ray cluster. The champion alias never moves. Raises ``ConfigError``
    for bad arguments (before any Ray work), ``DataError`` for an unusable table
    and ``SearchFailed`` when no trial produced a usable model.
    """
    # lazy: pyarrow (storage) and PyTorch (_fit); `raymedic --help` builds its parser from this module
    from raymedic.storage import Storage
    from train_jobs._fit import prepare_data, register_member
    from train_jobs.registry import CHALLENGER, CHAMPION, ModelRegistry  # lazy: imports pyarrow, as above

    t0 = time.monotonic()
    member_cfg = check_search_args(config, member=member, num_samples=num_samples, max_epochs=max_epochs)
    model = model or config.model
    storage = Storage(config.resolved().storage_path)
    registry = ModelRegistry(storage)
    data = prepare_data(config, table, target=target)
    space, note = member_search_space(member_cfg)
    default = default_point(config, member_cfg)
    run_name = f"raymedic-search-{model}-{member}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_root = f"{storage.uri.rstrip('/')}/ray_tune"
    if note:
        log.info("%s", note)
        progress(note)
    progress(f"searching {num_samples} configuration(s) of member {member!r} ({member_cfg.architecture}) of model "
             f"{model!r} with Ray Tune (Optuna TPE, ASHA), up to {max_epochs} epoch(s) each, on "
             f"{len(data.train_df)} rows ({len(data.val_df)} held out); run {run_name!r} under {storage_root}")
    if default is None:
        progress("  the member's current configuration lies outside the search space: not tried as a baseline")

    outcomes, results, tune_path = _run_tuner(config, data, member=member_cfg, num_samples=num_samples,
                                              max_epochs=max_epochs, run_name=run_name, storage_root=storage_root,
                                              points=[default] if default else [], progress=progress)
    best_i = choose_best(outcomes, run=run_name, where=tune_path)
    best = outcomes[best_i]
    state = _best_state(results[best_i], run_name)
    optimizer, arch = split_point(space, best.config)
    best_config = {**optimizer, **arch}
    default_trial = next((o for o in outcomes if default is not None and _same_point(o.config, default)), None)
    search_wall_s = time.monotonic() - t0

    search_meta = {
        "best_config": best_config,
        "best_val_loss": best.best_val_loss,
        "best_val_accuracy": best.best_val_accuracy,
        "best_epoch": best.best_epoch,
        "trials": len(outcomes),
        "trials_stopped_early": sum(o.stopped_early for o in outcomes),
        "trials_errored": sum(o.error is not None for o in outcomes),
        "max_epochs": max_epochs,
        "space": {n: p.describe() for n, p in space.items()},
        "default": asdict(default_trial) if default_trial else None,
        "searcher": f"optuna TPE (seed {config.training.seed})",
        "scheduler": f"ASHA (grace {min(GRACE_EPOCHS, max_epochs)}, reduction {REDUCTION_FACTOR})",
        "tune_run": run_name,
        "tune_path": tune_path,
        "wall_s": round(search_wall_s, 2),
    }
    training = {**config.training.model_dump(), **optimizer, "epochs": best.best_epoch or best.epochs}
    spec = data.member_spec(member_cfg, hyperparameters={**member_cfg.hyperparameters, **arch})
    info, metrics = register_member(registry, data, model=model, member=member_cfg, spec=spec, state=state,
                                    metadata={"training": training, "search": search_meta})
    registry.set_alias(model, member, CHALLENGER, info.version)
    champion = registry.aliases(model, member).get(CHAMPION)
    progress(f"  {member}: {info.version} val_accuracy {metrics['val_accuracy']:.3f} (majority baseline "
             f"{data.baseline_accuracy:.3f}) → {CHALLENGER}, not promoted")
    return SearchReport(
        model=model, member=member, kind=member_cfg.architecture, version=info, alias=CHALLENGER, champion=champion,
        best_config=best_config, best_val_loss=float(best.best_val_loss), best_val_accuracy=float(best.best_val_accuracy),
        metrics=metrics, baseline_accuracy=data.baseline_accuracy, trials=tuple(outcomes), default_trial=default_trial,
        tune_run=run_name, tune_path=tune_path, wall_s=time.monotonic() - t0,
        space={n: p.describe() for n, p in space.items()},
    )


def _same_point(config: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    return set(config) == set(point) and all(math.isclose(float(config[k]), float(point[k]), rel_tol=1e-9)
                                             for k in point)


# ---- command line (also the `ray job submit` entry point) ----------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The search flags, shared by ``python -m train_jobs.search`` and ``raymedic search``."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="Parquet or CSV table (default: the built-in synthetic table).")
    src.add_argument("--synthetic", action="store_true", help="Use the built-in synthetic table (the default).")
    p.add_argument("--target", help="Target column of --data (class labels).")
    p.add_argument("--member", required=True, help="Ensemble member to search, e.g. mlp.")
    p.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                   help=f"Configurations to try (default {DEFAULT_TRIALS}).")
    p.add_argument("--max-epochs", type=int, default=DEFAULT_MAX_EPOCHS,
                   help=f"Epochs per trial unless ASHA stops it sooner (default {DEFAULT_MAX_EPOCHS}).")
    p.add_argument("--model", help="Model name to register under (default: the config's, or --data's stem).")
    p.add_argument("--storage-path", help="Override the config's storage_path.")
    p.add_argument("--json", action="store_true", help="Print the report as JSON.")


def resolve_search_inputs(args: argparse.Namespace) -> tuple[RaymedicConfig, pd.DataFrame, str, str]:
    """Config, table, target and model from the flags, every argument checked before Ray starts."""
    from train_jobs.train import resolve_cli_inputs  # lazy: imports PyTorch (see the note at the top)

    args.synthetic = not args.data
    config, table, target, model = resolve_cli_inputs(args)
    check_search_args(config, member=args.member, num_samples=args.trials, max_epochs=args.max_epochs)
    return config, table, target, model


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train_jobs.search",
        description="Search one member's hyperparameters with Ray Tune (Optuna + ASHA) and register the best "
                    "as its 'challenger' version, without promoting it. Runs on the cluster in RAY_ADDRESS "
                    "(or inside `ray job submit`), else on an embedded local cluster.",
    )
    p.add_argument("--config", help="raymedic YAML config (default: cluster/raymedic.yaml).")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train_jobs.search``: the ``ray job submit`` entry point of ``raymedic search``.

    Returns:
        0 once the best trial is registered, 2 with ``error: ...`` on stderr for anything the user can fix.
    """
    args = _parser().parse_args(argv)
    out = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else print
    try:
        config, table, target, model = resolve_search_inputs(args)
        with connect_or_start(log_to_driver=False):  # trials' own output would bury the progress lines
            report = search_member(config, table, target=target, model=model, member=args.member,
                                   num_samples=args.trials, max_epochs=args.max_epochs, progress=out)
    except RaymedicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report_json(report), indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
