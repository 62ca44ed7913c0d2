"""A member version's files: how a trained network becomes bytes and back.

Weights are safetensors (no pickled code can ride along, unlike ``torch.save``);
the architecture, the fitted preprocessor and the golden probe set are JSON. The
registry checksums every file, so :func:`unpack` only ever sees verified bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from raymedic.errors import ConfigError, SchemaError
from train_jobs.models import ArchSpec, build_model
from train_jobs.preprocess import Preprocessor
from train_jobs.schema import ModelSchema

__all__ = ["WEIGHTS", "ARCHITECTURE", "PREPROCESS", "GOLDEN", "REFERENCE", "GoldenSet", "MemberModel", "pack", "unpack"]

WEIGHTS = "weights.safetensors"
ARCHITECTURE = "architecture.json"
PREPROCESS = "preprocess.json"
GOLDEN = "golden.json"
REFERENCE = "reference.json"
"""Training-data summary for drift and data-quality monitoring (:mod:`train_jobs.reference`)."""


@dataclass(frozen=True)
class GoldenSet:
    """Raw inputs (schema order) and the probabilities this version gave them at training.

    Probes replay these through the real inference path: a replica that answers
    them differently is serving wrong answers, whatever its HTTP status says.
    """

    rows: list[list[Any]]
    probabilities: list[list[float]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored with the version (plain lists: no pickled objects in the registry)."""
        return {"rows": self.rows, "probabilities": self.probabilities}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GoldenSet":
        """Read back what :meth:`to_dict` stored."""
        return cls(rows=[list(r) for r in data["rows"]], probabilities=[list(p) for p in data["probabilities"]])


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel prefixes every key with "module."; store the plain network.
    return getattr(model, "module", model)


class MemberModel:
    """A loaded member version, ready to answer: preprocessing + network, on one device.

    Inference is pure tensor work with no shared mutable state, so one instance can
    serve concurrent requests from a Serve replica's event loop.
    """

    def __init__(self, *, spec: ArchSpec, preprocessor: Preprocessor, network: nn.Module,
                 golden: GoldenSet | None, device: str = "cpu") -> None:
        self.spec = spec
        self.preprocessor = preprocessor
        self.golden = golden
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()

    @property
    def schema(self) -> ModelSchema:
        """The request schema this version was trained on (the preprocessor's)."""
        return self.preprocessor.schema

    def predict_proba_matrix(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities for already-preprocessed features (float32, n x input_dim; reshaped to
        ``[n, *input_shape]`` for a module that takes a tensor in its own shape)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
            x = self.spec.shape_batch(x).to(self.device)
            return torch.softmax(self.network(x), dim=1).cpu().numpy().astype(np.float64)

    def predict_proba(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """Class probabilities for raw rows in schema order (the serving path)."""
        return self.predict_proba_matrix(self.preprocessor.transform_rows(rows))


def pack(*, network: nn.Module, spec: ArchSpec, preprocessor: Preprocessor,
         golden: GoldenSet, reference: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The files of one member version, ready for ``ModelRegistry.register``."""
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(network).state_dict().items()}
    extra = {} if reference is None else {REFERENCE: json.dumps(reference).encode()}
    return {
        **extra,
        WEIGHTS: st_save(state),
        ARCHITECTURE: json.dumps(spec.to_dict(), sort_keys=True).encode(),
        PREPROCESS: json.dumps(preprocessor.to_dict(), sort_keys=True).encode(),
        GOLDEN: json.dumps(golden.to_dict()).encode(),
    }


def unpack(files: Mapping[str, bytes], *, device: str = "cpu", where: str = "member version") -> MemberModel:
    """Rebuild a member from its (already verified) files.

    Args:
        files: the version's files, as the registry returns them.
        device: where the network runs (``cpu`` or ``cuda``).
        where: the version in messages (``model/member vNNNN``).

    Raises:
        SchemaError: files are missing, the version's module can no longer be imported or built (its
            code is never stored: it is imported again here), or the weights no longer fit the architecture
            (e.g. its constructor changed since the version was trained).
    """
    missing = [n for n in (WEIGHTS, ARCHITECTURE, PREPROCESS) if n not in files]
    if missing:
        raise SchemaError(f"{where} lacks the files {missing}; re-train it with `raymedic train`")
    spec = ArchSpec.from_dict(json.loads(files[ARCHITECTURE]))
    pre = Preprocessor.from_dict(json.loads(files[PREPROCESS]))
    try:
        network = build_model(spec)
    except ConfigError as exc:  # the user's module: gone, renamed, or its constructor changed
        raise SchemaError(f"{where} cannot be loaded: it needs module {spec.module!r}, and {exc}") from None
    try:
        network.load_state_dict(st_load(files[WEIGHTS]))
    except RuntimeError as exc:
        hint = (f" (did {spec.module}'s constructor or layers change since {where} was trained? restore it, or "
                "re-train the member)" if spec.module else "")
        raise SchemaError(f"the weights of {where} do not fit architecture {spec.name}{hint}: {exc}") from exc
    golden = GoldenSet.from_dict(json.loads(files[GOLDEN])) if GOLDEN in files else None
    return MemberModel(spec=spec, preprocessor=pre, network=network, golden=golden, device=device)
