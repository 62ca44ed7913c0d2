"""Autoscaling that knows about hot standbys: the policy Ray Serve's controller runs for a member.

Why Serve's autoscaler and not the healing controller: Serve already measures what
scaling needs (the calls in flight and queued at every handle and replica, pushed
every ``scaling.metrics_interval_s``), decides every 0.1 s inside its own control
loop, applies the delays, bounds and hysteresis, and starts and stops replicas
itself, draining a stopped replica's requests first. The healing controller can
only change a deployment's replica count by redeploying the application, which
restarts replicas (RAY_NOTES §4). So Serve decides; the controller observes the
decisions in Serve's view, audits each one and keeps its own bookkeeping right
(:mod:`controllers.policies.scaling`).

One thing Serve cannot know is that ``standby`` replicas of a member are kept out
of user traffic by raymedic's router (:mod:`serve_apps.routing`): its default
policy, ``total_in_flight / target_ongoing_requests``, would count them as serving
and leave the member that many replicas short under load. :class:`StandbyAware`
adds them back: the replicas Serve runs are the ones the load needs *plus* the
standbys. Serve's wrapper then applies the delays and the bounds
(``replicas + standby`` .. ``max_replicas + standby``).

Serve pickles this module *by value* into its controller (``AutoscalingPolicy``
registers the policy's module with cloudpickle), so it must import nothing but the
standard library: no raymedic module has to be importable in Serve's controller.

>>> desired_replicas(total_in_flight=6.0, target_ongoing=2.0, standby=1)
4.0
>>> desired_replicas(total_in_flight=0.0, target_ongoing=2.0, standby=1)
1.0
"""

from __future__ import annotations

from typing import Any

__all__ = ["desired_replicas", "StandbyAware", "POLICY_PATH"]

POLICY_PATH = "serve_apps.autoscale:StandbyAware"
"""The import path given to Serve's ``AutoscalingPolicy`` for a member with standbys."""


def desired_replicas(*, total_in_flight: float, target_ongoing: float, standby: int) -> float:
    """The replicas a member needs: enough to keep ``target_ongoing`` calls in flight on each serving
    replica, plus its ``standby`` replicas that never take user traffic (Serve rounds up and bounds it)."""
    return total_in_flight / target_ongoing + standby


class StandbyAware:
    """Serve's class-callable autoscaling policy (``policy_kwargs``: ``standby``); called with Serve's
    ``AutoscalingContext`` every control-loop period, returns ``(desired replicas, policy state)``."""

    def __init__(self, standby: int = 0) -> None:
        if standby < 0:
            raise ValueError(f"standby must be >= 0, got {standby}")
        self.standby = standby

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        """Serve's contract: with no replica running yet keep the current target (Serve's cold-start path
        handles 0 → 1); otherwise :func:`desired_replicas` on the requests in flight."""
        if ctx.current_num_replicas == 0:
            return ctx.target_num_replicas, {}
        return desired_replicas(total_in_flight=float(ctx.total_num_requests),
                                target_ongoing=float(ctx.config.get_target_ongoing_requests()),
                                standby=self.standby), {}
