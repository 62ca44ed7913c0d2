"""What every way of fitting a member shares: the data, the epoch, the registration.

:mod:`train_jobs.train` (Ray Train, all members at once) and
:mod:`train_jobs.search` (Ray Tune, one member, many hyperparameters) both go
through these helpers, so the two agree on the split, the preprocessing, the
gradient steps and every field a registered version carries; a searched version
is served, probed and monitored exactly like a trained one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from raymedic.config import MemberConfig, RaymedicConfig
from raymedic.errors import ConfigError, RaymedicError
from raymedic.logs import get_logger
from train_jobs import artifacts
from train_jobs.devices import AmpPlan, choose_precision
from train_jobs.models import ArchSpec, build_model, check_contract
from train_jobs.preprocess import Preprocessor
from train_jobs.reference import Reference
from train_jobs.tensor_reference import TensorDriftSettings, with_tensors
from train_jobs.registry import CHAMPION, ModelRegistry, VersionInfo
from train_jobs.schema import ModelSchema, is_missing
from train_jobs.tables import fingerprint, infer_schema, json_row, split

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

GOLDEN_ROWS = 16
"""Probe inputs stored per version: enough to catch a wrong-answering replica, cheap to replay."""


@dataclass(frozen=True)
class PreparedData:
    """A table made ready to fit: schema, seeded split, preprocessing fitted on the train split.

    Only :func:`prepare_data` builds one, so every trainer sees the same rows in
    the same encoding for the same config seed.
    """

    schema: ModelSchema
    train_df: pd.DataFrame
    val_df: pd.DataFrame
    preprocessor: Preprocessor
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    data_fingerprint: str
    seed: int

    @property
    def baseline_accuracy(self) -> float:
        """Validation accuracy of always answering the majority class: the bar a model must clear."""
        counts = np.bincount(self.y_val, minlength=len(self.schema.classes))
        return float(counts.max() / len(self.y_val))

    def spec(self, kind: str, hyperparameters: Mapping[str, Any] | None = None) -> ArchSpec:
        """The architecture of a built-in ``kind`` member on these inputs (validates ``hyperparameters``)."""
        return ArchSpec.create(kind, input_dim=self.preprocessor.output_dim, n_classes=len(self.schema.classes),
                               hyperparameters=hyperparameters)

    def member_spec(self, member: MemberConfig, *, hyperparameters: Mapping[str, Any] | None = None,
                    check: bool = True) -> ArchSpec:
        """The architecture of ``member`` on these inputs: its built-in kind, or its own module checked
        against raymedic's contract (built, and a forward pass run) before anything trains.

        ``hyperparameters`` replaces the member's own (a search's best configuration); ``check=False``
        skips building a module (a search builds each trial's combination instead)."""
        hp = member.hyperparameters if hyperparameters is None else hyperparameters
        if member.module is None:
            return self.spec(str(member.kind), hp)
        tensor = self.schema.only_tensor  # one tensor feature: the module gets it in its own shape
        spec = ArchSpec.for_module(member.module, input_dim=self.preprocessor.output_dim,
                                   n_classes=len(self.schema.classes), hyperparameters=hp,
                                   input_shape=tuple(tensor.shape or ()) if tensor is not None else None)
        if not check:
            return spec
        try:
            check_contract(spec)
        except ConfigError as exc:
            raise ConfigError(f"member {member.name!r}: {exc}") from None
        return spec

    @cached_property
    def golden_rows(self) -> list[list[Any]]:
        """Raw validation rows (schema order, plain JSON) replayed by the controller's probes."""
        head = self.val_df[self.schema.feature_names].head(GOLDEN_ROWS)
        return [json_row(r) for r in head.itertuples(index=False)]

    @cached_property
    def reference(self) -> dict[str, Any]:
        """The training split's summary that drift monitoring compares live traffic against: per-feature
        summaries, and for each tensor feature its projection, reference sample and calibrated thresholds
        (:mod:`train_jobs.tensor_reference`; a few seconds per 8x8-image feature, paid once per version)."""
        doc = Reference.build(self.train_df, self.schema, seed=self.seed).to_dict()
        arrays = {f.name: np.stack([np.asarray(v, dtype=np.float32) for v in self.train_df[f.name]
                                    if not is_missing(v)])
                  for f in self.schema.features if f.tensor and self.train_df[f.name].notna().any()}
        settings = TensorDriftSettings(seed=self.seed)
        for name in [n for n, rows in arrays.items() if len(rows) < settings.min_rows]:
            # A model still trains and serves; only its drift on this tensor goes unwatched.
            log.warning("tensor feature %s: %d training rows, fewer than the %d its drift monitor needs (a third "
                        "each to fit the projection, to refer to and to calibrate on): its input drift is not "
                        "monitored; train on more rows to monitor it", name, len(arrays.pop(name)),
                        settings.min_rows)
        return with_tensors(doc, arrays, settings)


def prepare_data(config: RaymedicConfig, table: pd.DataFrame, *, target: str,
                 schema: ModelSchema | None = None) -> PreparedData:
    """Infer the schema (unless pinned), split with the config's seed, fit preprocessing on the train split.

    A pinned ``schema`` keeps the request format of an earlier version, whatever
    the new rows happen to contain.
    """
    schema = schema or infer_schema(table, target=target)
    train_df, val_df = split(table, val_fraction=config.training.val_fraction, seed=config.training.seed,
                             stratify_col=target)
    pre = Preprocessor.fit(train_df, schema)
    return PreparedData(
        schema=schema, train_df=train_df, val_df=val_df, preprocessor=pre,
        x_train=pre.transform_frame(train_df), y_train=pre.encode_labels(train_df[target]),
        x_val=pre.transform_frame(val_df), y_val=pre.encode_labels(val_df[target]),
        data_fingerprint=fingerprint(table), seed=config.training.seed,
    )


def fit_epoch(model: "torch.nn.Module", optimizer: "torch.optim.Optimizer", x: "torch.Tensor", y: "torch.Tensor",
              *, batch_size: int, generator: "torch.Generator", loss_fn: "torch.nn.Module",
              amp: AmpPlan | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    """One pass over ``(x, y)`` in a seeded random order, one optimiser step per batch.

    With an enabled ``amp`` plan the forward pass and loss run under ``torch.autocast`` in its
    dtype, and with a ``scaler`` (float16) the loss is scaled before backward and the step
    skipped on overflow; without one (CPU) the pass is plain float32, as it always was.
    """
    import torch

    model.train()
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    autocast = (torch.autocast(device_type=x.device.type, dtype=getattr(torch, amp.precision.value))
                if amp is not None and amp.enabled else contextlib.nullcontext())
    for start in range(0, len(perm), batch_size):
        idx = perm[start:start + batch_size]
        optimizer.zero_grad()
        with autocast:
            loss = loss_fn(model(x[idx]), y[idx])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()


def amp_plan(device: torch.device, *, enabled: bool) -> AmpPlan:
    """The mixed precision ``device`` supports (reads CUDA's capabilities; the decision is pure)."""
    import torch

    cuda = device.type == "cuda"
    return choose_precision(device_type=device.type, enabled=enabled,
                            bf16_supported=cuda and bool(torch.cuda.is_bf16_supported()))


def validate(model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor",
             loss_fn: "torch.nn.Module") -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on held-out ``(x, y)``, in eval mode."""
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(x)
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


def snapshot(model: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    """A detached CPU copy of the plain network's weights (unwrapping DistributedDataParallel)."""
    net = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def evaluate(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Validation accuracy, log loss and Brier score of class probabilities ``probs``."""
    eps = 1e-12
    pred = probs.argmax(1)
    onehot = np.eye(probs.shape[1])[y]
    return {
        "val_accuracy": float((pred == y).mean()),
        "val_log_loss": float(-np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)).mean()),
        "val_brier": float(((probs - onehot) ** 2).sum(1).mean()),
    }


def register_member(
    registry: ModelRegistry,
    data: PreparedData,
    *,
    model: str,
    member: MemberConfig,
    spec: ArchSpec,
    state: Mapping[str, "torch.Tensor"],
    metadata: Mapping[str, Any],
) -> tuple[VersionInfo, dict[str, float]]:
    """Evaluate trained weights ``state`` and register them as a new, unpromoted version.

    The version carries everything serving and the controller read (architecture,
    preprocessing, golden probes with their expected answers, training reference,
    schema, metrics); ``metadata`` adds the caller's own keys (how it was fitted).
    Its parent is the current champion, if any.
    """
    network = build_model(spec)
    network.load_state_dict(dict(state))
    served = artifacts.MemberModel(spec=spec, preprocessor=data.preprocessor, network=network, golden=None)
    metrics = evaluate(served.predict_proba_matrix(data.x_val), data.y_val)
    metrics["baseline_accuracy"] = data.baseline_accuracy
    golden = artifacts.GoldenSet(rows=data.golden_rows,
                                 probabilities=served.predict_proba(data.golden_rows).tolist())
    files = artifacts.pack(network=network, spec=spec, preprocessor=data.preprocessor, golden=golden,
                           reference=data.reference)
    try:
        parent = registry.resolve(model, member.name, CHAMPION)
    except RaymedicError:
        parent = None
    info = registry.register(model, member.name, files=files, parent_version=parent, metadata={
        "kind": spec.kind,
        **({"module": spec.module} if spec.module else {}),
        "hyperparameters": spec.hyperparameters,
        "metrics": metrics,
        "data_fingerprint": data.data_fingerprint,
        "schema": data.schema.to_dict(),
        "train_rows": len(data.train_df),
        "val_rows": len(data.val_df),
        **metadata,
    })
    return info, metrics
