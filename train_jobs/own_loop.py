"""A member's own Ray Train loop: ``train_loop: "package.module:function"`` in its config.

The function is a Ray Train ``train_loop_per_worker`` that replaces raymedic's supervised
loop for that member; everything around it stays raymedic's: the split and preprocessing
before it, and after it the network rebuilt from the member's spec, the reported weights
loaded into it, evaluation on the validation split, the gate and the registry. So the
registry still stores only the spec and safetensors weights, never the user's code or a
pickled model, and a version trained this way is served, probed and healed like any other.

What the function receives: one dict, built by :func:`loop_config` (the keys are a
contract, listed in ``MemberConfig.train_loop``'s description and the README).

What it must do: from rank 0, at least once, ::

    with tempfile.TemporaryDirectory() as d:
        safetensors.torch.save_file(net.state_dict(), os.path.join(d, "weights.safetensors"))
        ray.train.report({"epoch": e, "val_loss": ...}, checkpoint=ray.train.Checkpoint.from_directory(d))

raymedic registers the *last* reported checkpoint, so report the weights you want served
last (or only once, at the end). The metrics are free-form numbers, kept in the version's
metadata (``training.reported``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raymedic.config import MemberConfig, RaymedicConfig
from raymedic.errors import ConfigError, TrainingFailed

if TYPE_CHECKING:
    import torch

    from train_jobs._fit import PreparedData
    from train_jobs.models import ArchSpec

__all__ = ["REPORT_HOWTO", "WEIGHTS_FILE", "check_fits", "class_weights", "load_train_loop", "loop_config",
           "read_weights"]

WEIGHTS_FILE = "weights.safetensors"
"""The file a train_loop's checkpoint must hold: safetensors of the plain network's state_dict."""

REPORT_HOWTO = ("from rank 0, save the plain network's state_dict (unwrap DistributedDataParallel: model.module) "
                f"with safetensors.torch.save_file(state_dict, os.path.join(d, {WEIGHTS_FILE!r})) and call "
                "ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d)); the last reported "
                "checkpoint is registered")


def load_train_loop(path: str, *, member: str) -> Callable[..., Any]:
    """The function ``path`` (``package.module:function``) names, checked before any training starts.

    Raises:
        ConfigError: it is not importable here, has no such name, or is not a function of at most one
            argument (Ray Train calls it with the config dict); the message names member and path.
    """
    module_name, _, name = path.partition(":")
    try:
        mod = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or whatever the module raises while imported
        raise ConfigError(
            f"member {member!r}: train_loop {path!r} is not importable here ({type(exc).__name__}: {exc}): install "
            "its package, put its directory on PYTHONPATH, or ship it with the config's runtime_env "
            "(py_modules / working_dir)") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise ConfigError(f"member {member!r}: module {module_name!r} has no {name!r} (train_loop {path!r}): check "
                          "the name after the colon")
    if not callable(fn) or isinstance(fn, type):
        raise ConfigError(f"member {member!r}: train_loop {path!r} is {type(fn).__name__}, not a function: it must "
                          "be a Ray Train train_loop_per_worker, def train_loop(config: dict) -> None")
    return fn


def class_weights(y: np.ndarray, n_classes: int) -> list[float]:
    """Balanced class weights ``n / (K · count_k)``, K the classes present (sklearn's "balanced"; 0 for an
    absent class), so a weighted loss counts every class as much as the others.

    >>> class_weights(np.array([0, 0, 0, 1]), 2)
    [0.6666666666666666, 2.0]
    """
    counts = np.bincount(y, minlength=n_classes).astype(float)
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, len(y) / (max(1, int((counts > 0).sum())) * counts), 0.0)
    return [float(v) for v in w]


def loop_config(config: RaymedicConfig, data: PreparedData, *, member: MemberConfig, spec: ArchSpec,
                model: torch.nn.Module, use_gpu: bool) -> dict[str, Any]:
    """The dict a member's train_loop receives (``train_loop_config`` of its ``TorchTrainer``).

    Keys: ``member``; ``arch`` (the ArchSpec dict: kind, module, hyperparameters, input_dim,
    n_classes, input_shape); ``model`` (a freshly built, seeded network on CPU, the same weights
    on every worker: wrap it with ``ray.train.torch.prepare_model``); ``input_shape``;
    ``n_classes``; ``classes`` (labels in probability-column order); ``x_train``/``x_val``
    (float32 numpy ``[N, *input_shape]``, preprocessed as served; whole splits, shard them by
    ``ray.train.get_context().get_world_rank()`` yourself with several workers);
    ``y_train``/``y_val`` (int64 class indices); ``class_counts``; ``class_weights``
    (balanced); ``learning_rate``, ``weight_decay``, ``epochs``, ``batch_size``, ``seed``
    (from ``training``); ``use_gpu`` (after the no-GPU fallback) and ``mixed_precision``.
    """
    t = config.training
    shape = tuple(spec.input_shape or (spec.input_dim,))
    n_classes = len(data.schema.classes)
    return {
        "member": member.name,
        "arch": spec.to_dict(),
        "model": model,
        "input_shape": list(shape),
        "n_classes": n_classes,
        "classes": list(data.schema.classes),
        "x_train": np.ascontiguousarray(data.x_train.reshape(len(data.x_train), *shape), dtype=np.float32),
        "y_train": data.y_train.astype(np.int64),
        "x_val": np.ascontiguousarray(data.x_val.reshape(len(data.x_val), *shape), dtype=np.float32),
        "y_val": data.y_val.astype(np.int64),
        "class_counts": [int(c) for c in np.bincount(data.y_train, minlength=n_classes)],
        "class_weights": class_weights(data.y_train, n_classes),
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "seed": t.seed,
        "use_gpu": use_gpu,
        "mixed_precision": t.mixed_precision,
    }


def read_weights(checkpoint_dir: str | Path | None, *, member: str, path: str,
                 spec: ArchSpec) -> dict[str, torch.Tensor]:
    """The weights a train_loop reported, checked to fit a network rebuilt from ``spec``.

    Raises:
        TrainingFailed: no checkpoint was reported, or it holds no ``weights.safetensors`` (or an unreadable one).
        ConfigError: the weights do not fit the member's architecture (missing, unexpected or misshapen tensors).
    """
    # lazy: both import PyTorch; only a member with its own loop needs them
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = f"member {member!r}: train_loop {path!r}"
    if checkpoint_dir is None:
        raise TrainingFailed(f"{where} reported no checkpoint, so there are no weights to register: {REPORT_HOWTO}")
    file = Path(checkpoint_dir) / WEIGHTS_FILE
    if not file.is_file():
        found = sorted(p.name for p in Path(checkpoint_dir).iterdir()) if Path(checkpoint_dir).is_dir() else []
        raise TrainingFailed(f"{where} reported a checkpoint without {WEIGHTS_FILE} (it holds {found or 'nothing'}): "
                             f"{REPORT_HOWTO}")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TrainingFailed(f"{where} reported an unreadable {WEIGHTS_FILE} ({exc}): {REPORT_HOWTO}") from None
    check_fits(state, spec, where=where)
    return state


def check_fits(state: Mapping[str, torch.Tensor], spec: ArchSpec, *, where: str) -> None:
    """Refuse weights that do not load into a network built from ``spec``, naming the tensors that differ."""
    from train_jobs.models import build_model  # lazy: imports PyTorch

    expected = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshapen = sorted(f"{k} {list(got[k])} (expected {list(expected[k])})"
                       for k in set(expected) & set(got) if got[k] != expected[k])
    if not (missing or unexpected or misshapen):
        return
    detail = "; ".join(part for part in (
        f"missing {missing[:5]}" + ("..." if len(missing) > 5 else "") if missing else "",
        f"unexpected {unexpected[:5]}" + ("..." if len(unexpected) > 5 else "") if unexpected else "",
        f"misshapen {misshapen[:5]}" if misshapen else "") if part)
    hint = (" (keys start with 'module.': save model.module.state_dict(), not the DistributedDataParallel "
            "wrapper's)" if unexpected and all(k.startswith("module.") for k in unexpected) else "")
    raise ConfigError(f"{where} reported weights that do not fit the member's architecture {spec.name} "
                      f"{dict(spec.hyperparameters)}: {detail}{hint}. Train and save the network built from "
                      "config['arch'] (config['model'] is one), with the member's hyperparameters")
