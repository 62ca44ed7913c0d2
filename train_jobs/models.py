"""The ensemble's member architectures.

Three deliberately different inductive biases, so their errors are not the same
errors: a linear model (cheap, well calibrated, the fallback), an MLP, and a
residual MLP with normalisation. Each is built from a kind name plus plain
hyperparameters, so an architecture is fully described by JSON stored next to its
weights and can be rebuilt without unpickling code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn

from raymedic.errors import ConfigError

__all__ = ["ArchSpec", "build_model", "KINDS"]


@dataclass(frozen=True)
class _LogisticHP:
    pass


@dataclass(frozen=True)
class _MLPHP:
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1


@dataclass(frozen=True)
class _TabResNetHP:
    hidden: int = 64
    blocks: int = 2
    dropout: float = 0.1


_HP = {"logistic": _LogisticHP, "mlp": _MLPHP, "tabresnet": _TabResNetHP}
KINDS = tuple(_HP)


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a member's network: kind, shapes, hyperparameters."""

    kind: str
    input_dim: int
    n_classes: int
    hyperparameters: dict[str, Any]

    @classmethod
    def create(cls, kind: str, *, input_dim: int, n_classes: int,
               hyperparameters: Mapping[str, Any] | None = None) -> "ArchSpec":
        """Validate ``hyperparameters`` for ``kind`` and fill in the defaults."""
        if kind not in _HP:
            raise ConfigError(f"unknown member kind {kind!r}: use one of {list(KINDS)}")
        hp_cls = _HP[kind]
        given = dict(hyperparameters or {})
        known = {f.name for f in fields(hp_cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(
                f"member kind {kind!r} has no hyperparameters {unknown}; it accepts {sorted(known) or 'none'}"
            )
        hp = hp_cls(**given)
        for name, value in asdict(hp).items():
            if name == "dropout" and not 0 <= value < 1:
                raise ConfigError(f"{kind}.dropout must be in [0, 1), got {value}")
            if name != "dropout" and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{kind}.{name} must be a positive integer, got {value!r}")
        if input_dim < 1 or n_classes < 2:
            raise ConfigError(f"a model needs input_dim >= 1 and n_classes >= 2, got {input_dim}, {n_classes}")
        return cls(kind=kind, input_dim=input_dim, n_classes=n_classes, hyperparameters=asdict(hp))

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored next to the weights: enough to rebuild the network without pickled code."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArchSpec":
        """Rebuild (and re-validate, through :meth:`create`) a spec that :meth:`to_dict` stored."""
        return cls.create(str(data["kind"]), input_dim=int(data["input_dim"]),
                          n_classes=int(data["n_classes"]), hyperparameters=data.get("hyperparameters"))


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, width * 2), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(width * 2, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


def build_model(spec: ArchSpec) -> nn.Module:
    """A freshly initialised network for ``spec`` that maps features to class logits."""
    hp = spec.hyperparameters
    d, k = spec.input_dim, spec.n_classes
    if spec.kind == "logistic":
        return nn.Sequential(nn.Linear(d, k))
    if spec.kind == "mlp":
        layers: list[nn.Module] = []
        width = d
        for _ in range(hp["layers"]):
            layers += [nn.Linear(width, hp["hidden"]), nn.ReLU(), nn.Dropout(hp["dropout"])]
            width = hp["hidden"]
        layers.append(nn.Linear(width, k))
        return nn.Sequential(*layers)
    if spec.kind == "tabresnet":
        w = hp["hidden"]
        return nn.Sequential(
            nn.Linear(d, w),
            *[_ResidualBlock(w, hp["dropout"]) for _ in range(hp["blocks"])],
            nn.LayerNorm(w),
            nn.ReLU(),
            nn.Linear(w, k),
        )
    raise ConfigError(f"unknown member kind {spec.kind!r}: use one of {list(KINDS)}")
