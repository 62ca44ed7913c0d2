"""The vocabulary gateways and the controller share over their sync call.

Gateways report how each member call went and the controller turns those
reports into evidence about replicas; the two sides never import each other (the
gateway reaches the controller actor by name), so the words they exchange are
declared here, in the kernel, once.
"""

from __future__ import annotations

from raymedic.enums import StrEnum

__all__ = ["CallOutcome", "actor_died"]


class CallOutcome(StrEnum):
    """How one member call ended, as a gateway saw it."""

    OK = "ok"
    ERROR = "error"
    """The replica raised: it is alive but failing its inference path."""
    DEAD = "dead"
    """The replica's actor died under the call (Ray says so)."""
    TIMEOUT = "timeout"
    """No answer within the member deadline."""
    HEDGED = "hedged"
    """A second call to another replica answered first: this one was slower."""


def actor_died(exc: BaseException) -> bool:
    """Whether ``exc`` says the actor behind a call died (or cannot be reached), as opposed to the
    actor raising an error of its own: a dead replica is Serve's to replace, a failing one is ours."""
    # lazy: Ray is not imported by the kernel at module load (keeps `raymedic --help` fast)
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError))
