"""What the controller publishes to the gateways: weights, the avoid list, standbys, the trial, versions.

Gateways sync once per period with the epoch of the state they hold; the
controller answers only when its epoch differs. The epoch moves only when what is
published actually changes (weights rounded to 4 decimals), so a steady service
costs each gateway a tiny call and no answer. A restarted controller starts one
epoch past its checkpoint, so every gateway takes its state once.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["ControlState"]


class ControlState:
    """The published routing state and its epoch.

    Invariant: ``epoch`` changes exactly when :meth:`offer` is given a state that differs
    from the last one published.
    """

    def __init__(self, *, epoch: int, weights: Mapping[str, float]) -> None:
        self.epoch = epoch
        self.weights: dict[str, float] = dict(weights)
        self.avoid: dict[str, tuple[str, ...]] = {}
        self.standby: dict[str, tuple[str, ...]] = {}
        self._published: tuple[Any, ...] | None = None
        self._published_before = False

    @property
    def published(self) -> bool:
        """Whether a state was published since this controller started (gateways wait for it)."""
        return self._published is not None

    def offer(self, *, weights: Mapping[str, float], avoid: Mapping[str, tuple[str, ...]], paused: bool,
              trial: Mapping[str, Any] | None, standby: Mapping[str, tuple[str, ...]],
              versions: Mapping[str, str]) -> tuple[bool, bool]:
        """Publish this state if it differs from the last: ``(changed, announce)``.

        ``announce`` is True for every change but the first after a start, which only restates
        the checkpoint (the audit may record a ``weights`` publication for the others, if material:
        :mod:`controllers.policies.weights_audit`).
        """
        key = (tuple(sorted((k, round(v, 4)) for k, v in weights.items())),
               tuple(sorted(avoid.items())), paused,
               json.dumps(trial, sort_keys=True), tuple(sorted(standby.items())),
               tuple(sorted(versions.items())))
        if key == self._published:
            return False, False
        self._published = key
        self.epoch += 1
        self.weights = dict(weights)
        self.avoid = dict(avoid)
        self.standby = dict(standby)
        announce, self._published_before = self._published_before, True
        return True, announce

    def document(self, *, paused: bool, trial: Mapping[str, Any] | None, versions: Mapping[str, str]
                 ) -> dict[str, Any]:
        """The gateways' copy (``sync``'s answer and ``control_state``): plain data only."""
        return {"epoch": self.epoch, "weights": dict(self.weights),
                "avoid": {k: list(v) for k, v in self.avoid.items()}, "paused": paused,
                "standby": {k: list(v) for k, v in self.standby.items()},
                "trial": trial, "versions": dict(versions)}
