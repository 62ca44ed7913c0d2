"""Which publications of the ensemble weights become an audit record.

The controller publishes new weights whenever Hedge moves any of them by 1e-4
(every labelled batch does), so recording every publication buried the audit in
``weights`` records (246–380 in a four-minute labelled stream). The gateways still
get every publication and the ``raymedic_member_weight`` gauges still show every
value; the audit keeps the moves an operator would want to read:

- the set of members changed (one left or joined the weighting);
- a member's weight crossed zero or the floor (``controller.min_weight``): it
  was dropped from, or came back into, the ensemble, or Hedge pushed it to the
  floor or lifted it off;
- the replicas routed around (``avoid``) changed;
- some member's weight moved at least ``large_change`` since the last
  *recorded* weights: recorded at once;
- some member's weight moved at least ``min_change`` since the last recorded
  weights, at most once per ``min_interval_s``. A move held back by the interval
  is recorded when the interval has passed (:meth:`WeightsAudit.due`), even if no
  publication follows, so the trail always ends at the weights that serve.

Comparing with the last *recorded* weights (not the last published) means slow
drift adds up and is recorded once it amounts to a material move.

Pure: plain data and ``now``; the recorder does the writing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from raymedic.config import ControllerConfig
from raymedic.enums import StrEnum

__all__ = ["WeightsAudit", "WeightsAuditConfig", "WeightsReason", "WeightsRecord"]

_ZERO = 1e-9
"""A weight at or below this is off (a member left out of the weighting)."""
_FLOOR_TOL = 1e-6
"""A weight within this of the floor is at the floor (bounding leaves it exactly there, up to rounding)."""


class WeightsReason(StrEnum):
    """Why a publication of weights was recorded (the record's ``evidence.reason``)."""

    MEMBERS = "members-changed"
    FLOOR = "crossed-floor"
    AVOID = "avoid-changed"
    LARGE = "large-move"
    MOVED = "moved"


@dataclass(frozen=True, kw_only=True)
class WeightsAuditConfig:
    """When weights are worth a record (``controller.weights_audit_*`` and ``controller.min_weight``).

    No defaults here: the shipped values are the config's (:meth:`from_settings`).
    """

    min_change: float
    large_change: float
    min_interval_s: float
    floor: float

    @classmethod
    def from_settings(cls, cfg: ControllerConfig) -> WeightsAuditConfig:
        """The thresholds from the controller's config."""
        return cls(min_change=cfg.weights_audit_min_change, large_change=cfg.weights_audit_large_change,
                   min_interval_s=cfg.weights_audit_interval_s, floor=cfg.min_weight)


@dataclass(frozen=True)
class WeightsRecord:
    """A publication to record: the state published and why it is worth it."""

    weights: dict[str, float]
    avoid: dict[str, tuple[str, ...]]
    epoch: int
    reason: WeightsReason
    max_change: float
    publications: int
    """Publications since the last record, this one included (those not recorded are folded into it)."""


def _zone(w: float, floor: float) -> int:
    """0: off; 1: at the floor; 2: above it."""
    if w <= _ZERO:
        return 0
    return 1 if w <= floor + _FLOOR_TOL else 2


class WeightsAudit:
    """Decides, publication by publication, which weights are recorded.

    Invariant: the baseline (``_weights``, ``_avoid``, ``_at``) is the last recorded state, or the first
    publication after a start (which only restates the checkpoint and is not recorded); only
    :meth:`offer` and :meth:`due` move it, and only when they return a record.

    >>> wa = WeightsAudit(WeightsAuditConfig(min_change=0.05, large_change=0.2, min_interval_s=30, floor=0.05))
    >>> wa.offer({"a": 0.5, "b": 0.5}, {}, epoch=1, now=0.0, announce=False) is None  # the restated checkpoint
    True
    >>> wa.offer({"a": 0.52, "b": 0.48}, {}, epoch=2, now=1.0) is None  # a small move: not worth a record
    True
    >>> wa.offer({"a": 0.57, "b": 0.43}, {}, epoch=3, now=2.0) is None  # material, but too soon after the last
    True
    >>> r = wa.due(now=31.0)  # the interval passed: the held-back move is recorded
    >>> str(r.reason), r.epoch, round(r.max_change, 2), r.publications
    ('moved', 3, 0.07, 2)
    >>> str(wa.offer({"a": 0.8, "b": 0.2}, {}, epoch=4, now=32.0).reason)  # a large move is recorded at once
    'large-move'
    """

    def __init__(self, cfg: WeightsAuditConfig) -> None:
        self.cfg = cfg
        self._weights: dict[str, float] | None = None
        self._avoid: dict[str, tuple[str, ...]] = {}
        self._at = float("-inf")
        self._latest: tuple[dict[str, float], dict[str, tuple[str, ...]], int] | None = None
        self._publications = 0

    def offer(self, weights: Mapping[str, float], avoid: Mapping[str, tuple[str, ...]], *, epoch: int,
              now: float, announce: bool = True) -> WeightsRecord | None:
        """A publication: the record to write for it, or None (``announce`` False: the first after a start,
        the baseline, never recorded)."""
        state = (dict(weights), {k: tuple(v) for k, v in avoid.items()}, epoch)
        if not announce or self._weights is None:
            self._weights, self._avoid, _ = state
            self._at, self._latest, self._publications = now, None, 0
            return None
        self._latest = state
        self._publications += 1
        return self._decide(now)

    def due(self, now: float) -> WeightsRecord | None:
        """The latest publication, if it was held back only by the interval and the interval has passed."""
        return self._decide(now)

    def _decide(self, now: float) -> WeightsRecord | None:
        if self._latest is None or self._weights is None:  # nothing offered since the last record
            return None
        weights, avoid, epoch = self._latest
        old = self._weights
        cfg = self.cfg
        change = max((abs(weights.get(m, 0.0) - old.get(m, 0.0)) for m in set(weights) | set(old)), default=0.0)
        if set(weights) != set(old):
            reason: WeightsReason | None = WeightsReason.MEMBERS
        elif any(_zone(weights[m], cfg.floor) != _zone(old[m], cfg.floor) for m in weights):
            reason = WeightsReason.FLOOR
        elif _avoid_key(avoid) != _avoid_key(self._avoid):
            reason = WeightsReason.AVOID
        elif change >= cfg.large_change:
            reason = WeightsReason.LARGE
        elif change >= cfg.min_change and now - self._at >= cfg.min_interval_s:
            reason = WeightsReason.MOVED
        else:
            return None
        record = WeightsRecord(weights=weights, avoid=avoid, epoch=epoch, reason=reason, max_change=change,
                               publications=self._publications)
        self._weights, self._avoid, self._at, self._latest, self._publications = weights, avoid, now, None, 0
        return record


def _avoid_key(avoid: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The avoid list, order-free, members with nothing to avoid left out."""
    return tuple(sorted((m, tuple(sorted(r))) for m, r in avoid.items() if r))
