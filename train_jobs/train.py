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
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from raymedic.config import RaymedicConfig, load_config
from raymedic.errors import ConfigError, RaymedicError
from raymedic.storage import Storage
from train_jobs import artifacts
from train_jobs.models import ArchSpec, build_model
from train_jobs.preprocess import Preprocessor
from train_jobs.reference import Reference
from train_jobs.registry import ModelRegistry, VersionInfo
from train_jobs.schema import ModelSchema
from train_jobs.tables import fingerprint, infer_schema, load_table, split

__all__ = ["TrainReport", "TrainingFailed", "train_ensemble", "main"]

log = logging.getLogger(__name__)

GOLDEN_ROWS = 16
"""Probe inputs stored per version: enough to catch a wrong-answering replica, cheap to replay."""

PATIENCE_EPOCHS = 8
"""Stop a member once validation loss has not improved for this many epochs."""


class TrainingFailed(RaymedicError):
    """The Ray Train run failed; nothing was registered."""


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
    import ray.train
    import ray.train.torch
    import torch
    from safetensors.torch import save_file

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(1)
    device = ray.train.torch.get_device()
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
        opt = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"],
                                weight_decay=config["weight_decay"])
        best_loss, best_state, stale, epochs_run = math.inf, None, 0, 0
        for epoch in range(config["epochs"]):
            model.train()
            perm = torch.randperm(len(x_tr), generator=gen).to(device)
            for start in range(0, len(perm), config["batch_size"]):
                idx = perm[start:start + config["batch_size"]]
                opt.zero_grad()
                loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                logits = model(x_va)
                val_loss = float(loss_fn(logits, y_va))
                val_acc = float((logits.argmax(1) == y_va).float().mean())
            epochs_run = epoch + 1
            if val_loss < best_loss - 1e-4:
                best_loss, stale = val_loss, 0
                net = getattr(model, "module", model)
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
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


def _json_row(values: Sequence[Any]) -> list[Any]:
    """Plain-JSON values (numpy scalars → Python, NaN → None) for a golden row."""
    out = []
    for v in values:
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            v = None
        out.append(v)
    return out


def _evaluate(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    eps = 1e-12
    pred = probs.argmax(1)
    onehot = np.eye(probs.shape[1])[y]
    return {
        "val_accuracy": float((pred == y).mean()),
        "val_log_loss": float(-np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)).mean()),
        "val_brier": float(((probs - onehot) ** 2).sum(1).mean()),
    }


def _run_trainer(config: RaymedicConfig, storage: Storage, loop_config: dict[str, Any],
                 run_name: str) -> dict[str, dict[str, Any]]:
    """One ``TorchTrainer`` run; returns each member's state dict from the checkpoint."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.training.num_workers,
            use_gpu=config.training.use_gpu,
            resources_per_worker={"CPU": config.training.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=f"{storage.uri.rstrip('/')}/ray_train",
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; the user needs the cause, not our stack.
        raise TrainingFailed(f"Ray Train run {run_name!r} failed: {exc}") from exc
    if result.error is not None or result.checkpoint is None:
        raise TrainingFailed(f"Ray Train run {run_name!r} produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        return {m["name"]: load_file(str(Path(d) / f"{m['name']}.safetensors"))
                for m in loop_config["members"]}


def train_ensemble(
    config: RaymedicConfig,
    table: pd.DataFrame,
    *,
    target: str,
    model: str | None = None,
    members: Sequence[str] | None = None,
    promote: bool = True,
    progress: Callable[[str], None] = print,
) -> TrainReport:
    """Train ``members`` (default: all) on ``table`` and register one version each.

    With ``promote`` the new versions become champions (the previous ones stay
    reachable through the ``previous`` alias). Requires a connected Ray cluster.
    """
    t0 = time.monotonic()
    model = model or config.model
    storage = Storage(config.resolved().storage_path)
    registry = ModelRegistry(storage)
    chosen = [config.member(n) for n in members] if members else list(config.members)

    schema: ModelSchema = infer_schema(table, target=target)
    train_df, val_df = split(table, val_fraction=config.training.val_fraction, seed=config.training.seed,
                             stratify_col=target)
    pre = Preprocessor.fit(train_df, schema)
    x_tr, y_tr = pre.transform_frame(train_df), pre.encode_labels(train_df[target])
    x_va, y_va = pre.transform_frame(val_df), pre.encode_labels(val_df[target])
    specs = {m.name: ArchSpec.create(m.kind, input_dim=pre.output_dim, n_classes=len(schema.classes),
                                     hyperparameters=m.hyperparameters) for m in chosen}
    progress(f"training {len(chosen)} member(s) of model {model!r} with Ray Train on "
             f"{len(train_df)} rows ({len(val_df)} held out), {len(schema.features)} features, "
             f"{len(schema.classes)} classes")
    loop_config = {
        "members": [{"name": m.name, "arch": specs[m.name].to_dict()} for m in chosen],
        "x_train": x_tr, "y_train": y_tr, "x_val": x_va, "y_val": y_va,
        "epochs": config.training.epochs, "batch_size": config.training.batch_size,
        "learning_rate": config.training.learning_rate, "weight_decay": config.training.weight_decay,
        "seed": config.training.seed,
    }
    run_name = f"raymedic-train-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    states = _run_trainer(config, storage, loop_config, run_name)

    baseline = float(np.bincount(y_va, minlength=len(schema.classes)).max() / len(y_va))
    data_fp = fingerprint(table)
    golden_raw = [_json_row(r) for r in val_df[schema.feature_names].head(GOLDEN_ROWS).itertuples(index=False)]
    reference = Reference.build(train_df, schema, seed=config.training.seed).to_dict()
    versions: dict[str, VersionInfo] = {}
    all_metrics: dict[str, dict[str, float]] = {}
    for m in chosen:
        network = build_model(specs[m.name])
        network.load_state_dict(states[m.name])
        served = artifacts.MemberModel(spec=specs[m.name], preprocessor=pre, network=network, golden=None)
        metrics = _evaluate(served.predict_proba_matrix(x_va), y_va)
        metrics["baseline_accuracy"] = baseline
        golden = artifacts.GoldenSet(rows=golden_raw, probabilities=served.predict_proba(golden_raw).tolist())
        files = artifacts.pack(network=network, spec=specs[m.name], preprocessor=pre, golden=golden,
                               reference=reference)
        try:
            parent = registry.resolve(model, m.name, "champion")
        except RaymedicError:
            parent = None
        info = registry.register(model, m.name, files=files, parent_version=parent, metadata={
            "kind": m.kind,
            "hyperparameters": specs[m.name].hyperparameters,
            "training": config.training.model_dump(),
            "metrics": metrics,
            "data_fingerprint": data_fp,
            "schema": schema.to_dict(),
            "train_rows": len(train_df),
            "val_rows": len(val_df),
            "ray_train_run": run_name,
        })
        if promote:
            registry.promote(model, m.name, info.version)
        versions[m.name] = info
        all_metrics[m.name] = metrics
        progress(f"  {m.name}: {info.version} val_accuracy {metrics['val_accuracy']:.3f} "
                 f"(majority baseline {baseline:.3f})" + (" → champion" if promote else ""))
    return TrainReport(model=model, versions=versions, metrics=all_metrics, baseline_accuracy=baseline,
                       train_rows=len(train_df), val_rows=len(val_df), wall_s=time.monotonic() - t0,
                       promoted=promote)


def synthetic_table(config: RaymedicConfig) -> pd.DataFrame:
    """The built-in synthetic table used when the registry is empty."""
    from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

    gen = SyntheticGenerator(SyntheticSpec(seed=config.training.seed))
    return gen.sample(config.training.synthetic_rows, seed=config.training.seed)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train_jobs.train",
        description="Train every ensemble member on a table with Ray Train and register the versions "
                    "as champions. Runs on the cluster in RAY_ADDRESS (or inside `ray job submit`), "
                    "else on an embedded local cluster.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="Parquet or CSV table with one row per example.")
    src.add_argument("--synthetic", action="store_true", help="Use the built-in synthetic table.")
    p.add_argument("--target", help="Target column of --data (class labels).")
    p.add_argument("--model", help="Model name to register under (default: the file's stem).")
    p.add_argument("--config", help="raymedic YAML config (default: cluster/raymedic.yaml).")
    p.add_argument("--storage-path", help="Override the config's storage_path.")
    p.add_argument("--members", nargs="+", help="Train only these members.")
    p.add_argument("--no-promote", action="store_true", help="Register without moving the champion alias.")
    p.add_argument("--json", action="store_true", help="Print the report as JSON.")
    return p


def resolve_cli_inputs(args: argparse.Namespace) -> tuple[RaymedicConfig, pd.DataFrame, str, str]:
    """Config, table, target and model name from the CLI flags, with clear errors."""
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
    return config, table, target, model


def report_json(report: TrainReport) -> dict[str, Any]:
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
    from cluster.local import connect_or_start

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
