"""The ensemble re-weighting rule: members' weights follow their recent accuracy.

Serving is online learning: labels for some requests arrive later as feedback, and
every member that answered such a request is charged a loss in ``[0, 1]`` for it.
A member that has been wrong lately should count less in the combined prediction,
and a member that recovers (retrained, or the data drifted back its way) should
earn its weight back, so we use Hedge (exponential weights) over *decayed*
cumulative losses: old mistakes fade by ``decay`` per sample, which lets the
weights track drift instead of remembering a bad week forever.

Hedge alone can starve a member (weight ``~ 0``) or crown one (weight ``~ 1``) on a
short unlucky streak. Both are silent failures for a self-healing service: a
starved member is never observed to recover, and a crowned member turns the
ensemble into a single point of failure. So the weights of healthy members are
bounded to ``[min_weight, max_weight]``; only when every other member is down
does one member get all the weight.

Pure logic on plain data (no Ray), so the controller's decisions unit-test in
milliseconds; only ``to_dict``/``from_dict`` exist for the controller's checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymedic.config import ControllerConfig
from raymedic.errors import ConfigError

__all__ = ["WeightingConfig", "HedgeWeights", "bound_weights"]

_STATE_VERSION = 1
_MASS_TOL = 1e-12
_NEGLIGIBLE_SHARE = 1e-300


@dataclass(frozen=True, kw_only=True)
class WeightingConfig:
    """Hyperparameters of the re-weighting rule (``controller.weight_eta``, ``controller.weight_decay``,
    ``controller.min_weight``, ``controller.max_weight`` in the YAML).

    No defaults here: the shipped values are the config's (:class:`raymedic.config.ControllerConfig`),
    and :meth:`from_settings` builds this from it, so what ships is said in one place.

    Attributes:
        eta: Hedge learning rate per unit of loss. A member whose decayed loss is
            ``1/eta`` above the best healthy member's weighs ``e`` times less
            before bounding; the shipped 0.5 moves weights noticeably after a
            handful of errors without reacting to a single one.
        decay: Per-sample forgetting factor in ``(0, 1]``. Losses older than
            about ``1 / (1 - decay)`` samples (100 at the shipped 0.99) barely
            count, so the weights follow drift; ``1.0`` is classic Hedge with no
            forgetting.
        min_weight: Floor for every healthy member, so a member on a bad streak
            still contributes and keeps being scored, and can therefore recover.
        max_weight: Cap for any member while another healthy member exists, so
            the ensemble never silently degenerates to one model.
    """

    eta: float
    decay: float
    min_weight: float
    max_weight: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eta) and self.eta > 0):
            raise ConfigError(
                f"`eta` (controller.weight_eta) is {self.eta!r} but must be a finite number > 0: "
                "use e.g. 0.5 (larger reacts faster to errors)"
            )
        if not (math.isfinite(self.decay) and 0 < self.decay <= 1):
            raise ConfigError(
                f"`decay` (controller.weight_decay) is {self.decay!r} but must be in (0, 1]: "
                "use e.g. 0.99 to forget losses older than ~100 samples, or 1.0 to never forget"
            )
        if not (math.isfinite(self.min_weight) and self.min_weight >= 0):
            raise ConfigError(
                f"`min_weight` is {self.min_weight!r} but must be a finite number >= 0: use e.g. 0.05"
            )
        if not (math.isfinite(self.max_weight) and 0 < self.max_weight <= 1):
            raise ConfigError(f"`max_weight` is {self.max_weight!r} but must be in (0, 1]: use e.g. 0.7")
        if self.min_weight * 2 > 1:
            raise ConfigError(
                f"`min_weight` ({self.min_weight}) must be <= 0.5, or two healthy members could not both "
                "get their floor: lower `min_weight`"
            )
        if self.min_weight > self.max_weight:
            raise ConfigError(
                f"`min_weight` ({self.min_weight}) must be <= `max_weight` ({self.max_weight}): "
                "lower `min_weight` or raise `max_weight`"
            )

    @classmethod
    def from_settings(cls, settings: ControllerConfig) -> WeightingConfig:
        """The rule the config asks for (``controller.weight_*``, ``controller.min/max_weight``): the
        controller and the benches weight members with what ships."""
        return cls(eta=settings.weight_eta, decay=settings.weight_decay, min_weight=settings.min_weight,
                   max_weight=settings.max_weight)


def _equal(names: Sequence[str]) -> dict[str, float]:
    share = 1.0 / len(names)
    return {name: share for name in names}


def _clipped_mass(t: float, r: np.ndarray, floor: float, cap: float) -> float:
    """Total of ``clip(t * r, floor, cap)``: non-decreasing and continuous in ``t``."""
    return float(np.clip(t * r, floor, cap).sum())


def _scale_for_unit_mass(r: np.ndarray, floor: float, cap: float) -> float | None:
    """The scale ``t`` with ``sum(clip(t * r, floor, cap)) == 1``, or None if no finite one exists.

    This is the fixed point of water-filling (members at a bound are fixed, the rest
    share the remaining mass in proportion to ``r``), found exactly rather than by
    fixing violators greedily: fixing every over-cap and under-floor member in one
    pass can overshoot (``r = (100, 1, 1)``, floor 0.3, cap 0.5 would give
    ``0.5 + 0.3 + 0.3``). The mass is piecewise linear in ``t`` with breakpoints where
    a member hits a bound, so we find the piece where it crosses 1 and solve there.
    """
    if _clipped_mass(0.0, r, floor, cap) >= 1.0 - _MASS_TOL:
        return 0.0  # n * floor == 1: everyone at the floor
    positive = r[r > 0]
    breakpoints = np.unique(np.concatenate([floor / positive, cap / positive]))
    lower = 0.0
    for upper in breakpoints:
        # The tolerance keeps a crossing exactly at a breakpoint (e.g. n * cap == 1)
        # from being missed to rounding.
        if _clipped_mass(float(upper), r, floor, cap) >= 1.0 - _MASS_TOL:
            mid = (lower + float(upper)) / 2
            scaled = mid * r
            at_floor = scaled <= floor
            at_cap = scaled >= cap
            free = ~(at_floor | at_cap)
            fixed_mass = floor * int(at_floor.sum()) + cap * int(at_cap.sum())
            slope = float(r[free].sum())
            # The slope is > 0 on a piece where the mass crosses 1; 0 only if the piece
            # is too narrow for floats to resolve, and then its end is the answer.
            return (1.0 - fixed_mass) / slope if slope > 0 else float(upper)
        lower = float(upper)
    return None


def bound_weights(raw: Mapping[str, float], *, floor: float, cap: float) -> dict[str, float]:
    """Normalise non-negative ``raw`` weights to sum 1 and bound each to ``[floor, cap]``.

    Members clipped at a bound are fixed there and the others share the remaining
    mass in proportion to their raw weights (water-filling), so the result sums to 1,
    respects the bounds whenever that is feasible (``n * floor <= 1 <= n * cap``) and
    keeps the order of the raw weights.

    When the bounds are infeasible the offending one is relaxed, since a weight
    vector must sum to 1: a single member gets 1.0, and if ``n * cap < 1`` (or
    ``n * floor > 1``) every member gets ``1 / n``. Raw weights that are all zero
    carry no preference and give equal weights; members with raw weight 0 among
    positive ones sit at the floor, unless the others are all at the cap and mass is
    left over, which they then share equally.

    Args:
        raw: Non-negative, finite raw weight per member.
        floor: Lower bound for each member, ``>= 0``.
        cap: Upper bound for each member, ``>= floor``.

    Returns:
        The bounded weight of every member of ``raw`` (``{}`` for an empty input).

    Raises:
        ValueError: A raw weight is negative or not finite, or the bounds are malformed.

    >>> bound_weights({"a": 8.0, "b": 1.0, "c": 1.0}, floor=0.1, cap=0.6)
    {'a': 0.6, 'b': 0.2, 'c': 0.2}
    """
    if not (math.isfinite(floor) and math.isfinite(cap) and 0 <= floor <= cap):
        raise ValueError(f"bounds must satisfy 0 <= floor <= cap, got floor={floor!r}, cap={cap!r}")
    names = list(raw)
    if not names:
        return {}
    r = np.array([float(raw[name]) for name in names], dtype=float)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"raw weights must be finite and >= 0, got {dict(zip(names, r.tolist()))}")
    n = len(names)
    if n * cap < 1 or n * floor > 1 or r.sum() == 0:
        return _equal(names)
    r = r / r.sum()
    # A share this small can never reach the floor at a finite scale (its breakpoint
    # would overflow), so it counts as zero.
    r[r < _NEGLIGIBLE_SHARE] = 0.0
    t = _scale_for_unit_mass(r, floor, cap)
    if t is None:
        # Every positive member is at the cap and zero-raw members at the floor, yet
        # mass is left: the zero-raw members share it (each stays within the bounds
        # because n * cap >= 1).
        zero = r == 0
        weights = np.where(zero, (1.0 - cap * int((~zero).sum())) / int(zero.sum()), cap)
    else:
        weights = np.clip(t * r, floor, cap)
    return {name: float(w) for name, w in zip(names, weights)}


class HedgeWeights:
    """Exponentially weighted (Hedge) weights over members from per-sample losses in ``[0, 1]``.

    State is each member's decayed cumulative loss ``L_m`` and decayed sample count;
    only ``update`` mutates it. Decay is applied per sample a member answered, so a
    member that was down keeps its loss as it was instead of being forgiven for
    its absence.

    >>> hedge = HedgeWeights(["a", "b", "c"], WeightingConfig.from_settings(ControllerConfig()))
    >>> rng = np.random.default_rng(0)
    >>> hedge.update({"a": (rng.random(50) < 0.1).astype(float),
    ...               "b": (rng.random(50) < 0.3).astype(float),
    ...               "c": (rng.random(50) < 0.3).astype(float)})
    >>> {m: round(w, 3) for m, w in hedge.weights(["a", "b", "c"]).items()}
    {'a': 0.7, 'b': 0.219, 'c': 0.081}
    >>> hedge.weights(["b"])
    {'a': 0.0, 'b': 1.0, 'c': 0.0}
    """

    def __init__(self, members: Sequence[str], config: WeightingConfig) -> None:
        names = list(members)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"ensemble members must have unique names, {duplicates} appear more than once")
        self.config = config
        self._members: tuple[str, ...] = tuple(names)
        self._loss: dict[str, float] = {name: 0.0 for name in names}
        self._samples: dict[str, float] = {name: 0.0 for name in names}

    @property
    def members(self) -> tuple[str, ...]:
        """The ensemble's members, in the order given."""
        return self._members

    def loss(self, member: str) -> float:
        """Decayed cumulative loss of ``member``."""
        return self._loss[self._known(member)]

    def samples(self, member: str) -> float:
        """Decayed number of feedback samples ``member`` has been scored on."""
        return self._samples[self._known(member)]

    def update(self, losses: Mapping[str, Sequence[float]]) -> None:
        """Charge each member its losses on newly labelled feedback, oldest first.

        Per sample a member answered, its cumulative loss is multiplied by ``decay``
        and the sample's loss added. Members absent from ``losses`` did not answer
        and are left as they are. Names outside the ensemble are ignored (feedback
        may still arrive for a member just removed), losses are clipped to
        ``[0, 1]`` and NaN losses (no answer for that sample) are skipped.
        """
        decay = self.config.decay
        for member, values in losses.items():
            if member not in self._loss:
                continue
            x = np.asarray(values, dtype=float).reshape(-1)
            x = np.clip(x[~np.isnan(x)], 0.0, 1.0)
            k = x.size
            if k == 0:
                continue
            ages = decay ** np.arange(k - 1, -1, -1, dtype=float)  # newest sample has age 0
            self._loss[member] = self._loss[member] * decay**k + float(ages @ x)
            self._samples[member] = self._samples[member] * decay**k + float(ages.sum())

    def restart(self, member: str, loss_rate: float | None = None) -> None:
        """``member`` answers with another version now: the losses it earned belong to the old one.

        Carried over, a retrained member would start at the floor for its predecessor's
        mistakes and the ensemble would trail its own best member for a hundred labels
        after every heal. Its decayed sample count is kept (it weighs as much evidence as
        before) and its loss becomes ``loss_rate`` per sample: the rate the new version
        showed on a live trial, or, with no such evidence, the median rate of the other
        members (no better, no worse than the pack).
        """
        self._known(member)
        if loss_rate is None:
            others = [self._loss[m] / self._samples[m] for m in self._members
                      if m != member and self._samples[m] > 0]
            loss_rate = float(np.median(others)) if others else 0.0
        if not (math.isfinite(loss_rate) and loss_rate >= 0):
            raise ValueError(f"loss_rate must be a finite number >= 0, got {loss_rate!r}")
        self._loss[member] = min(1.0, loss_rate) * self._samples[member]

    def weights(self, healthy: Collection[str]) -> dict[str, float]:
        """The combining weight of every member: 0 if unhealthy, bounded Hedge otherwise.

        Losses are taken relative to the best healthy member, so the raw weights
        never underflow together. Unknown names in ``healthy`` are ignored. With no
        healthy member every weight is 0.0; with one, it gets 1.0.
        """
        up = [m for m in self._members if m in healthy]
        result = {m: 0.0 for m in self._members}
        if not up:
            return result
        best = min(self._loss[m] for m in up)
        raw = {m: math.exp(-self.config.eta * (self._loss[m] - best)) for m in up}
        result.update(bound_weights(raw, floor=self.config.min_weight, cap=self.config.max_weight))
        return result

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for the controller's checkpoint (the config is not included)."""
        return {
            "version": _STATE_VERSION,
            "members": list(self._members),
            "loss": dict(self._loss),
            "samples": dict(self._samples),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: WeightingConfig) -> HedgeWeights:
        """Rebuild the state saved by ``to_dict``.

        Raises:
            ValueError: ``data`` is not a state written by ``to_dict``.
        """
        try:
            if data["version"] != _STATE_VERSION:
                raise ValueError(f"unsupported version {data['version']!r}, expected {_STATE_VERSION}")
            hedge = cls(data["members"], config)
            for member in hedge._members:
                loss = float(data["loss"][member])
                samples = float(data["samples"][member])
                if not (math.isfinite(loss) and loss >= 0 and math.isfinite(samples) and samples >= 0):
                    raise ValueError(f"member {member!r} has loss {loss!r} and samples {samples!r}")
                hedge._loss[member] = loss
                hedge._samples[member] = samples
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"not a HedgeWeights state (delete the checkpoint to start afresh): {exc!r}"
            ) from None
        return hedge

    def _known(self, member: str) -> str:
        if member not in self._loss:
            raise KeyError(f"{member!r} is not an ensemble member; members are {list(self._members)}")
        return member

    def __repr__(self) -> str:
        losses = ", ".join(f"{m}={self._loss[m]:.3g}" for m in self._members)
        return f"HedgeWeights({losses}, {self.config})"
