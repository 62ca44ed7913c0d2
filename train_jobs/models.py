"""The ensemble's member architectures: three built-ins, or the user's own module.

Three deliberately different built-in inductive biases, so their errors are not
the same errors: a linear model (cheap, well calibrated, the fallback), an MLP,
and a residual MLP with normalisation. A member may instead name its own
``torch.nn.Module`` subclass (``module: "package.module:ClassName"``), built as
``ClassName(input_shape=(...), n_classes=K, **hyperparameters)``; its ``forward``
takes a float tensor ``[N, *input_shape]`` and returns logits ``[N, K]``.

Either way an architecture is fully described by JSON stored next to its weights
(a kind or an import path, the shapes, the hyperparameters) and is rebuilt
without unpickling code: a user's class is imported again wherever the member
trains or serves, so it must be importable there. :func:`check_contract` builds
one and runs a forward pass on a zero batch, so a class that does not fit the
contract is refused with what to change before any training starts.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn

from raymedic.errors import ConfigError

__all__ = ["ArchSpec", "build_model", "check_contract", "load_module_class", "KINDS", "MODULE_KIND"]


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
MODULE_KIND = "module"
"""The stored kind of a member that runs the user's own module (its import path says which)."""


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a member's network: kind (or module), shapes, hyperparameters.

    Attributes:
        kind: a built-in kind, or ``"module"`` for the user's own class.
        input_dim: the width of one preprocessed input row.
        n_classes: the number of classes the logits cover.
        hyperparameters: the built-in's knobs with their defaults filled in, or the keyword
            arguments the user's constructor takes (stored as given).
        module: the user's class as ``package.module:ClassName`` (None for a built-in).
        input_shape: the shape of one input the user's ``forward`` takes (``(input_dim,)`` for a table).
    """

    kind: str
    input_dim: int
    n_classes: int
    hyperparameters: dict[str, Any]
    module: str | None = None
    input_shape: tuple[int, ...] | None = None

    @classmethod
    def create(cls, kind: str, *, input_dim: int, n_classes: int,
               hyperparameters: Mapping[str, Any] | None = None) -> "ArchSpec":
        """Validate ``hyperparameters`` for a built-in ``kind`` and fill in the defaults."""
        if kind not in _HP:
            raise ConfigError(f"unknown member kind {kind!r}: use one of {list(KINDS)}, or your own torch.nn.Module "
                              "with `module: \"package.module:ClassName\"`")
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
        _check_shapes(input_dim, n_classes)
        return cls(kind=kind, input_dim=input_dim, n_classes=n_classes, hyperparameters=asdict(hp))

    @classmethod
    def for_module(cls, module: str, *, input_dim: int, n_classes: int,
                   hyperparameters: Mapping[str, Any] | None = None,
                   input_shape: tuple[int, ...] | None = None) -> "ArchSpec":
        """The spec of a member that runs the user's class ``module`` (``package.module:ClassName``).

        The hyperparameters are the constructor's to judge: :func:`check_contract` builds the class.
        """
        _check_shapes(input_dim, n_classes)
        shape = tuple(int(d) for d in (input_shape or (input_dim,)))
        return cls(kind=MODULE_KIND, input_dim=input_dim, n_classes=n_classes,
                   hyperparameters=dict(hyperparameters or {}), module=module, input_shape=shape)

    @property
    def name(self) -> str:
        """The architecture in messages: the built-in kind or the module path."""
        return self.module or self.kind

    @property
    def reshapes(self) -> bool:
        """Whether the network takes its inputs in a shape other than the flat preprocessed row (a user's
        module on one tensor feature: ``[N, *input_shape]``)."""
        return self.input_shape is not None and tuple(self.input_shape) != (self.input_dim,)

    def shape_batch(self, x: Any) -> Any:
        """A flat batch ``[N, input_dim]`` (numpy or torch) as the network takes it: ``[N, *input_shape]``.

        The preprocessor flattens a tensor feature row-major, so this reshape restores it exactly.
        """
        return x.reshape((x.shape[0], *self.input_shape)) if self.reshapes else x

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored next to the weights: enough to rebuild the network without pickled code
        (a built-in's JSON is what it always was, so versions trained before modules existed load)."""
        d = {"kind": self.kind, "input_dim": self.input_dim, "n_classes": self.n_classes,
             "hyperparameters": dict(self.hyperparameters)}
        if self.module is not None:
            d.update(module=self.module, input_shape=list(self.input_shape or ()))
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArchSpec":
        """Rebuild (and re-validate, through :meth:`create`) a spec that :meth:`to_dict` stored."""
        if data.get("module"):
            return cls.for_module(str(data["module"]), input_dim=int(data["input_dim"]),
                                  n_classes=int(data["n_classes"]), hyperparameters=data.get("hyperparameters"),
                                  input_shape=tuple(data.get("input_shape") or ()) or None)
        return cls.create(str(data["kind"]), input_dim=int(data["input_dim"]),
                          n_classes=int(data["n_classes"]), hyperparameters=data.get("hyperparameters"))


def _check_shapes(input_dim: int, n_classes: int) -> None:
    if input_dim < 1 or n_classes < 2:
        raise ConfigError(f"a model needs input_dim >= 1 and n_classes >= 2, got {input_dim}, {n_classes}")


def load_module_class(path: str) -> type[nn.Module]:
    """The ``torch.nn.Module`` subclass ``path`` (``package.module:ClassName``) names.

    Raises:
        ConfigError: it is not importable here, has no such class, or the class is not a
            ``torch.nn.Module``; the message names the module and what to do.
    """
    module_name, _, class_name = path.partition(":")
    try:
        mod = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while it is imported
        raise ConfigError(
            f"module {path!r} is not importable here ({type(exc).__name__}: {exc}): install its package, put its "
            "directory on PYTHONPATH, or ship it with the config's runtime_env (py_modules / working_dir)"
        ) from None
    cls = getattr(mod, class_name, None)
    if cls is None:
        raise ConfigError(f"module {module_name!r} has no {class_name!r} (member module {path!r}): check the name "
                          "after the colon")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{path!r} is {type(cls).__name__}, not a torch.nn.Module subclass: a member's module "
                          "must be a class raymedic can build as ClassName(input_shape=..., n_classes=..., "
                          "**hyperparameters)")
    return cls


def _build_user_model(spec: ArchSpec) -> nn.Module:
    cls = load_module_class(str(spec.module))
    try:
        return cls(input_shape=tuple(spec.input_shape or (spec.input_dim,)), n_classes=spec.n_classes,
                   **spec.hyperparameters)
    except TypeError as exc:
        raise ConfigError(
            f"{spec.module}{inspect.signature(cls)} cannot be built as {cls.__name__}(input_shape="
            f"{tuple(spec.input_shape or ())}, n_classes={spec.n_classes}, **{spec.hyperparameters}): {exc}. "
            "raymedic passes input_shape and n_classes as keywords, then the member's hyperparameters: give the "
            "constructor those parameters, or fix the member's hyperparameters"
        ) from None


def check_contract(spec: ArchSpec) -> None:
    """Build a member's network and run a forward pass on a zero batch: refuse, with what to change, a
    user's class that does not fit raymedic's contract, before any training starts.

    Raises:
        ConfigError: the class cannot be imported or built, its forward raises, or it does not return
            finite float logits of shape ``[N, n_classes]``.
    """
    network = build_model(spec)
    shape = tuple(spec.input_shape or (spec.input_dim,))
    x = torch.zeros((2, *shape), dtype=torch.float32)
    network.eval()
    try:
        with torch.no_grad():
            out = network(x)
    except Exception as exc:
        raise ConfigError(f"{spec.name}.forward raised {type(exc).__name__}: {exc} on a float tensor of shape "
                          f"{list(x.shape)} ([N, *input_shape]): forward must take the batch as one tensor") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.n_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{spec.name}.forward returned {got} for an input of shape {list(x.shape)}; it must return "
                          f"logits of shape [N, n_classes] = [2, {spec.n_classes}] (one row per input, one column "
                          "per class)")
    if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise ConfigError(f"{spec.name}.forward must return finite float logits; got dtype {out.dtype} "
                          f"{'with NaN/inf' if out.is_floating_point() else ''} for a zero batch")


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, width * 2), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(width * 2, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


def build_model(spec: ArchSpec) -> nn.Module:
    """A freshly initialised network for ``spec`` that maps features to class logits.

    Raises:
        ConfigError: a user's module that cannot be imported or built (see :func:`load_module_class`).
    """
    if spec.module is not None:
        return _build_user_model(spec)
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
