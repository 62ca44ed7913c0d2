"""Train ensemble members with Ray Train and register them as versions.

Entry point for both ``raymedic train`` and the cluster path::

    ray job submit --working-dir . -- python -m train_jobs.train --data table.parquet --target label

The driver does the cheap, deterministic work (schema inference, split,
preprocessing fit, evaluation, registration); the gradient work runs inside one
``TorchTrainer`` run that trains every requested member in turn, because worker and
process-group start-up dominates on small tables and should be paid once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file

from cluster.connect import connect_or_start
from raymedic.config import MemberConfig, RaymedicConfig, load_config
from raymedic.errors import ConfigError, RaymedicError, TrainingFailed
from raymedic.logs import get_logger
from raymedic.storage import Storage
from train_jobs._fit import (
    PreparedData,
    amp_plan,
    fit_epoch,
    prepare_data,
    register_member,
    snapshot,
    validate,
)
from train_jobs.devices import TrainDevice, choose_training_device
from train_jobs.models import ArchSpec, build_model
from train_jobs.own_loop import REPORT_HOWTO, load_train_loop, read_weights
from train_jobs.own_loop import loop_config as loop_config_for
from train_jobs.registry import ModelRegistry, VersionInfo
from train_jobs.schema import ModelSchema
from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec
from train_jobs.tables import frame_to_arrow, load_table
from train_jobs.train_flags import add_arguments

# Ray itself is imported inside the functions that run it: Ray reads RAY_AUTH_MODE when it is
# imported, and `raymedic train` imports this module before it chooses the cluster (and the auth).

__all__ = ["TrainReport", "train_ensemble", "synthetic_table", "add_arguments", "resolve_cli_inputs",
           "report_json", "main"]

log = get_logger(__name__)

PATIENCE_EPOCHS = 8
"""Stop a member once validation loss has not improved for this many epochs."""


@dataclass(frozen=True)
class TrainReport:
    """What a training run produced: one registered version per member, and how good it is."""

    model: str
    versions: dict[str, VersionInfo]
    metrics: dict[str, dict[str, float]]
    baseline_accuracy: float
    train_rows: int
    val_rows: int
    wall_s: float
    promoted: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: fit each member on this worker's shard."""
    # lazy: Ray reads RAY_AUTH_MODE when it is imported (see the note at the top)
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(1)
    device = ray.train.torch.get_device()
    amp = amp_plan(device, enabled=config["mixed_precision"])
    if rank == 0 and amp.enabled:
        print(f"[raymedic train] mixed precision on {device}: {amp.precision.value}"
              + (" with a GradScaler" if amp.scaler else ""), flush=True)
    x_tr = torch.from_numpy(config["x_train"][rank::world]).to(device)
    y_tr = torch.from_numpy(config["y_train"][rank::world]).to(device)
    x_va = torch.from_numpy(config["x_val"]).to(device)
    y_va = torch.from_numpy(config["y_val"]).to(device)
    gen = torch.Generator().manual_seed(config["seed"] + rank)
    loss_fn = torch.nn.CrossEntropyLoss()
    states: dict[str, dict[str, torch.Tensor]] = {}
    summary: dict[str, float] = {}

    for member in config["members"]:
        spec = ArchSpec.from_dict(member["arch"])
        model = ray.train.torch.prepare_model(build_model(spec))
        # a module on one tensor feature takes [N, *input_shape]; the built-ins the flat rows
        m_tr, m_va = spec.shape_batch(x_tr), spec.shape_batch(x_va)
        opt = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"],
                                weight_decay=config["weight_decay"])
        scaler = torch.amp.GradScaler(device.type) if amp.scaler else None
        best_loss, best_state, stale, epochs_run = math.inf, None, 0, 0
        for epoch in range(config["epochs"]):
            fit_epoch(model, opt, m_tr, y_tr, batch_size=config["batch_size"], generator=gen, loss_fn=loss_fn,
                      amp=amp, scaler=scaler)
            val_loss, val_acc = validate(model, m_va, y_va, loss_fn)
            epochs_run = epoch + 1
            if val_loss < best_loss - 1e-4:
                best_loss, stale = val_loss, 0
                best_state = snapshot(model)
            else:
                stale += 1
            if rank == 0 and (epoch % 10 == 0 or stale >= PATIENCE_EPOCHS or epoch + 1 == config["epochs"]):
                print(f"[raymedic train] {member['name']}: epoch {epoch + 1}/{config['epochs']} "
                      f"val_loss {val_loss:.4f} val_acc {val_acc:.3f}", flush=True)
            if stale >= PATIENCE_EPOCHS:
                break
        states[member["name"]] = best_state
        summary[f"{member['name']}/val_loss"] = best_loss
        summary[f"{member['name']}/epochs"] = float(epochs_run)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            for name, state in states.items():
                save_file(state, str(Path(tmp) / f"{name}.safetensors"))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(summary, checkpoint=checkpoint)


def training_device(config: RaymedicConfig) -> TrainDevice:
    """Whether this run trains on GPUs: ``training.use_gpu``, unless the cluster has none to give."""
    import ray  # lazy: Ray reads RAY_AUTH_MODE when it is imported (see the note at the top)

    gpus = float(ray.cluster_resources().get("GPU", 0)) if config.training.use_gpu else 0.0
    device = choose_training_device(requested_gpu=config.training.use_gpu, cluster_gpus=gpus,
                                    num_workers=config.training.num_workers)
    if device.warning:
        log.warning("%s", device.warning)
    return device


def _fit_trainer(config: RaymedicConfig, storage: Storage, loop: Callable[..., Any], loop_config: dict[str, Any],
                 run_name: str, *, use_gpu: bool) -> Any:
    """One ``TorchTrainer`` run of ``loop``; its Result (raises the cause, not Ray's stack, on failure)."""
    # lazy: Ray reads RAY_AUTH_MODE when it is imported (see the note at the top)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.training.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": config.training.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=f"{storage.uri.rstrip('/')}/ray_train",
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    return trainer.fit()


def _run_trainer(config: RaymedicConfig, storage: Storage, loop_config: dict[str, Any],
                 run_name: str, *, use_gpu: bool) -> dict[str, dict[str, Any]]:
    """One ``TorchTrainer`` run of raymedic's loop; returns each member's state dict from the checkpoint."""
    try:
        result = _fit_trainer(config, storage, _train_loop, loop_config, run_name, use_gpu=use_gpu)
    except Exception as exc:  # Ray wraps worker errors; the user needs the cause, not our stack.
        raise TrainingFailed(f"Ray Train run {run_name!r} failed: {exc}") from exc
    if result.error is not None or result.checkpoint is None:
        raise TrainingFailed(f"Ray Train run {run_name!r} produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        return {m["name"]: load_file(str(Path(d) / f"{m['name']}.safetensors"))
                for m in loop_config["members"]}


def _run_own_loop(config: RaymedicConfig, storage: Storage, data: PreparedData, *, member: MemberConfig,
                  spec: ArchSpec, run_name: str, use_gpu: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """One ``TorchTrainer`` run of the member's own train_loop; its checked weights and last metrics."""
    path = str(member.train_loop)
    loop = load_train_loop(path, member=member.name)
    torch.manual_seed(config.training.seed)  # config["model"] starts from the same weights every run
    cfg = loop_config_for(config, data, member=member, spec=spec, model=build_model(spec), use_gpu=use_gpu)
    try:
        result = _fit_trainer(config, storage, loop, cfg, run_name, use_gpu=use_gpu)
    except Exception as exc:  # the user's loop raised: their traceback is in the run's logs
        raise TrainingFailed(f"member {member.name!r}: train_loop {path!r} failed in Ray Train run {run_name!r}: "
                             f"{_last_line(exc)}; fix the function (full traceback in the run's logs under "
                             f"{storage.uri.rstrip('/')}/ray_train/{run_name})") from exc
    if result.error is not None:
        raise TrainingFailed(f"member {member.name!r}: train_loop {path!r} failed in Ray Train run {run_name!r}: "
                             f"{_last_line(result.error)}")
    reported = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float)) and not
                isinstance(v, bool)}
    if result.checkpoint is None:
        raise TrainingFailed(f"member {member.name!r}: train_loop {path!r} reported no checkpoint, so there are no "
                             f"weights to register: {REPORT_HOWTO}")
    with result.checkpoint.as_directory() as d:
        state = read_weights(d, member=member.name, path=path, spec=spec)
    return state, reported


def _last_line(error: BaseException) -> str:
    """The last meaningful line of a (possibly remote) error: usually ``Type: message``."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


TRAIN_SAMPLE_ROWS = 5000
"""Labelled training rows kept per training table: what a retrain mixes back in so the
new version does not forget the reference distribution."""


def _save_train_sample(storage: Storage, model: str, train_df: pd.DataFrame, data_fp: str, *,
                       seed: int) -> str | None:
    """Store a seeded sample of the labelled training rows; None (and a warning) if it cannot be."""
    key = f"samples/{model}/{data_fp[:16]}.parquet"
    try:
        if not storage.exists(key):
            sample = train_df.sample(n=min(TRAIN_SAMPLE_ROWS, len(train_df)), random_state=seed)
            storage.write_parquet(key, frame_to_arrow(sample.reset_index(drop=True)))  # tensors as fixed-size lists
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        log.warning("could not store a training sample for later retrains (%s); retrains will use recent "
                    "labels only", exc)
        return None
    return key


def train_ensemble(
    config: RaymedicConfig,
    table: pd.DataFrame,
    *,
    target: str,
    model: str | None = None,
    members: Sequence[str] | None = None,
    promote: bool = True,
    progress: Callable[[str], None] = print,
    schema: ModelSchema | None = None,
    alias: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainReport:
    """Train ``members`` (default: all) on ``table`` and register one version each.

    ``schema`` pins the feature schema (a retrain must keep serving the same
    request format, whatever the new rows happen to contain); ``alias`` points an
    extra alias (e.g. ``challenger``) at each new version; ``metadata`` is merged
    into every version's metadata.

    With ``promote`` the new versions become champions (the previous ones stay
    reachable through the ``previous`` alias). Requires a connected Ray cluster.
    """
    t0 = time.monotonic()
    model = model or config.model
    config = config.for_model(model)  # a model of the config's `models` has members of its own
    storage = Storage(config.resolved().storage_path)
    registry = ModelRegistry(storage)
    chosen = [config.member(n) for n in members] if members else list(config.members)

    data = prepare_data(config, table, target=target, schema=schema)
    schema, train_df, val_df = data.schema, data.train_df, data.val_df
    specs = {m.name: data.member_spec(m) for m in chosen}  # a user's module is checked here, before training
    for m in chosen:
        if m.train_loop:
            load_train_loop(m.train_loop, member=m.name)  # importable, before any training
    own = [m for m in chosen if m.train_loop]
    ours = [m for m in chosen if not m.train_loop]
    progress(f"training {len(chosen)} member(s) of model {model!r} with Ray Train on "
             f"{len(train_df)} rows ({len(val_df)} held out), {len(schema.features)} features, "
             f"{len(schema.classes)} classes")
    device = training_device(config)
    loop_config = {
        "members": [{"name": m.name, "arch": specs[m.name].to_dict()} for m in ours],
        "x_train": data.x_train, "y_train": data.y_train, "x_val": data.x_val, "y_val": data.y_val,
        "epochs": config.training.epochs, "batch_size": config.training.batch_size,
        "learning_rate": config.training.learning_rate, "weight_decay": config.training.weight_decay,
        "seed": config.training.seed, "mixed_precision": config.training.mixed_precision,
    }
    stamp = time.strftime('%Y%m%d-%H%M%S')
    run_name = f"raymedic-train-{model}-{stamp}"
    runs = {m.name: run_name for m in ours}
    states = _run_trainer(config, storage, loop_config, run_name, use_gpu=device.use_gpu) if ours else {}
    reported: dict[str, dict[str, Any]] = {}
    for m in own:  # each member with its own loop gets its own run: its function is the run's loop
        runs[m.name] = f"raymedic-train-{model}-{m.name}-{stamp}"
        progress(f"  {m.name}: training with its own train_loop {m.train_loop!r} (Ray Train run {runs[m.name]!r})")
        states[m.name], reported[m.name] = _run_own_loop(config, storage, data, member=m, spec=specs[m.name],
                                                         run_name=runs[m.name], use_gpu=device.use_gpu)

    baseline = data.baseline_accuracy
    sample_key = _save_train_sample(storage, model, train_df, data.data_fingerprint, seed=config.training.seed)
    versions: dict[str, VersionInfo] = {}
    all_metrics: dict[str, dict[str, float]] = {}
    for m in chosen:
        info, metrics = register_member(registry, data, model=model, member=m, spec=specs[m.name],
                                        state=states[m.name], metadata={
            "training": {**config.training.model_dump(), "use_gpu": device.use_gpu,
                         **({"train_loop": m.train_loop, "reported": reported.get(m.name, {})}
                            if m.train_loop else {})},
            "ray_train_run": runs[m.name],
            "train_sample": sample_key,
            **(metadata or {}),
        })
        if promote:
            registry.promote(model, m.name, info.version)
        if alias:
            registry.set_alias(model, m.name, alias, info.version)
        versions[m.name] = info
        all_metrics[m.name] = metrics
        progress(f"  {m.name}: {info.version} val_accuracy {metrics['val_accuracy']:.3f} "
                 f"(majority baseline {baseline:.3f})" + (" → champion" if promote else ""))
    return TrainReport(model=model, versions=versions, metrics=all_metrics, baseline_accuracy=baseline,
                       train_rows=len(train_df), val_rows=len(val_df), wall_s=time.monotonic() - t0,
                       promoted=promote)


def synthetic_table(config: RaymedicConfig) -> pd.DataFrame:
    """The built-in synthetic table used when the registry is empty (and by ``--synthetic``).

    Seeded by ``training.seed``, so every fresh registry trains on the same rows.
    """
    gen = SyntheticGenerator(SyntheticSpec(seed=config.training.seed))
    return gen.sample(config.training.synthetic_rows, seed=config.training.seed)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train_jobs.train",
        description="Train every ensemble member on a table with Ray Train and register the versions "
                    "as champions. Runs on the cluster in RAY_ADDRESS (or inside `ray job submit`), "
                    "else on an embedded local cluster.",
    )
    p.add_argument("--config", help="raymedic YAML config (default: cluster/raymedic.yaml).")
    add_arguments(p)
    return p


def resolve_cli_inputs(args: argparse.Namespace) -> tuple[RaymedicConfig, pd.DataFrame, str, str]:
    """Config, table, target and model name from the CLI flags, with clear errors.

    Everything that can be wrong with the flags or the table fails here, before a
    cluster starts: a user should not wait for Ray to learn a column is missing.

    Raises:
        ConfigError: ``--data`` without ``--target``, or a bad config.
        DataError: The table cannot be trained on (e.g. a single class).
    """
    config = load_config(args.config).config
    if args.storage_path:
        config = config.model_copy(update={"storage_path": args.storage_path})
    if args.synthetic:
        table, target, model = synthetic_table(config), "label", args.model or config.model
    else:
        if not args.target:
            raise ConfigError("--target is required with --data: name the column that holds the labels")
        table, target = load_table(args.data), args.target
        model = args.model or Path(args.data).stem
        prepare_data(config, table, target=target)  # a bad table fails here, before a cluster starts
    return config, table, target, model


def report_json(report: TrainReport) -> dict[str, Any]:
    """The report as ``--json`` prints it: version ids rather than whole version records."""
    return {
        "model": report.model,
        "versions": {m: v.version for m, v in report.versions.items()},
        "metrics": report.metrics,
        "baseline_accuracy": report.baseline_accuracy,
        "train_rows": report.train_rows,
        "val_rows": report.val_rows,
        "wall_s": round(report.wall_s, 2),
        "promoted": report.promoted,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train_jobs.train``: the ``ray job submit`` entry point of ``raymedic train``.

    Returns:
        0 once trained, 2 with ``error: ...`` on stderr for anything the user can fix.
    """
    args = _parser().parse_args(argv)
    try:
        config, table, target, model = resolve_cli_inputs(args)
        with connect_or_start(log_to_driver=not args.json):
            report = train_ensemble(config, table, target=target, model=model, members=args.members,
                                    promote=not args.no_promote,
                                    progress=(lambda s: print(s, file=sys.stderr)) if args.json else print)
    except RaymedicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(f"done in {report.wall_s:.1f} s; serve it with `raymedic up` (model {report.model!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
