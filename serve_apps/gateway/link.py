"""The gateway's link to the healing controller: one sync call per period, and admin calls.

Once per ``gateway.sync_period_s`` the gateway sends what it saw (call outcomes per
replica, feedback losses, input statistics) to the controller in one call and takes
back the ensemble weights, the avoid and standby lists, the pause flag, the
challenger trial and the member versions: never one RPC per request. The two sides
never import each other; the gateway finds the controller actor by name
(:data:`raymedic.keys.CONTROLLER_NAME`). When the controller is away (down,
restarting, slow) the gateway keeps serving with the last state it received
(:class:`LinkState`), and looks the controller up again on the next period.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import ray

from raymedic import metrics
from raymedic.errors import ServiceUnavailable
from raymedic.keys import CONTROLLER_NAME, CONTROLLER_NAMESPACE
from raymedic.logs import get_logger
from raymedic.protocol import CallOutcome

__all__ = ["LinkState", "ControllerLink", "lookup_controller", "export_call_metrics"]

log = get_logger(__name__)


@dataclass
class LinkState:
    """What this gateway last heard from the controller (its deploy-time values before the first sync).

    Only :meth:`apply` changes it after start-up, on the event loop; readers take
    whatever is current, so a request is served with the newest weights and lists.

    Attributes:
        weights: member → ensemble weight.
        versions: member → the version it serves (promotions swap versions in place).
        avoid: member → replicas the controller flagged.
        standby: member → healthy replicas held out of traffic.
        paused: whether the controller's healing is paused.
        trial: the challenger trial as the controller published it
            (``{"record", "mode", "share", "members"}``), or None.
        epoch: the controller's epoch of the last reply (-1 before the first).
        seen_at: when the controller last answered (Unix s), or None.
    """

    weights: dict[str, float]
    versions: dict[str, str]
    avoid: dict[str, list[str]] = field(default_factory=dict)
    standby: dict[str, list[str]] = field(default_factory=dict)
    paused: bool = False
    trial: dict[str, Any] | None = None
    epoch: int = -1
    seen_at: float | None = None

    def apply(self, reply: Mapping[str, Any], order: Sequence[str]) -> None:
        """Take a controller's sync reply: weights for the members in ``order``, the lists, the trial,
        the versions it changed, and its epoch."""
        self.weights = {m: float(reply["weights"].get(m, 0.0)) for m in order}
        self.avoid = {m: list(v) for m, v in reply.get("avoid", {}).items()}
        self.standby = {m: list(v) for m, v in reply.get("standby", {}).items()}
        self.paused = bool(reply.get("paused"))
        self.trial = reply.get("trial") or None
        self.versions.update(reply.get("versions") or {})  # promotions swap versions in place
        self.epoch = int(reply["epoch"])

    def model_version(self, members: Sequence[str]) -> str:
        """``member:version,...`` for ``members``: the model version clients see."""
        return ",".join(f"{m}:{self.versions[m]}" for m in members)

    def sync_age_s(self, now: float) -> float | None:
        """Seconds since the controller last answered (rounded for display), or None if it never did."""
        return None if self.seen_at is None else round(now - self.seen_at, 2)


def lookup_controller() -> Any:
    """The controller actor's handle, found by its name (raises ValueError while it does not exist)."""
    return ray.get_actor(CONTROLLER_NAME, namespace=CONTROLLER_NAMESPACE)


def export_call_metrics(batch: Mapping[str, Any], *, model: str) -> None:
    """Member-call metrics from a drained telemetry batch: one export per period, not per call.

    Args:
        batch: :meth:`serve_apps.telemetry.CallRecorder.drain`'s batch.
        model: the model served.
    """
    for key, st in (batch.get("replicas") or {}).items():
        member, _, replica = key.partition("/")
        for outcome in CallOutcome:
            metrics.inc("raymedic_member_calls_total", st.get(outcome, 0), model=model, member=member,
                        replica=replica, outcome=outcome)
        for x in st.get("latencies") or ():
            metrics.observe("raymedic_member_call_seconds", x, model=model, member=member, replica=replica)


class ControllerLink:
    """The gateway's calls to the controller; only the event loop uses it.

    Args:
        state: the state to keep current (read by the rest of the gateway).
        tag: this gateway replica's id (the controller keeps one slot per gateway).
        order: the members, in the ensemble's order.
        period_s: the sync period.
        enabled: whether a controller is deployed at all (``controller.enabled``).
        lookup: finds the controller's handle (blocking; run in a thread).
    """

    def __init__(self, state: LinkState, *, tag: str, order: Sequence[str], period_s: float, enabled: bool,
                 lookup: Callable[[], Any] = lookup_controller, model: str | None = None) -> None:
        self.state = state
        # The controller heals every model of the service, each apart: every call names this link's model
        # (None: the service's first).
        self._model = model
        self._tag = tag
        self._order = list(order)
        self._period_s = period_s
        self.enabled = enabled
        self._lookup = lookup
        self._controller: Any = None
        self._seq = 0  # numbers this gateway's batches: the controller takes each once (a replayed call is not)

    async def sync_forever(self, telemetry: Callable[[], dict[str, Any]]) -> None:
        """Every period: ``telemetry()`` out, the controller's state in (kept as it was if it is away)."""
        while True:
            await asyncio.sleep(self._period_s)
            await self.sync_once(telemetry())

    async def sync_once(self, batch: dict[str, Any]) -> None:
        """One sync call with ``batch``; on any failure the last state stays and the handle is looked up
        again next time (the controller may have restarted under a new actor)."""
        self._seq += 1
        batch = {**batch, "seq": self._seq}
        try:
            if self._controller is None:
                self._controller = await asyncio.to_thread(self._lookup)
            reply = await asyncio.wait_for(self._controller.sync.remote(self._tag, batch, self.state.epoch,
                                                                            model=self._model),
                                           timeout=max(1.0, 4 * self._period_s))
            self.state.seen_at = time.time()
            if reply:
                self.state.apply(reply, self._order)
        except Exception as exc:  # controller down or restarting: keep the last weights
            if not isinstance(exc, (ValueError, asyncio.TimeoutError)):
                log.debug("controller sync failed: %r", exc)
            self._controller = None

    async def _actor(self) -> Any:
        return self._controller or await asyncio.to_thread(self._lookup)

    async def status(self) -> dict[str, Any] | None:
        """The controller's status document, or None when it is disabled or does not answer in 2 s
        (``/v1/status`` then says so and shows what this gateway knows)."""
        if not self.enabled:
            return None
        try:
            return await asyncio.wait_for((await self._actor()).status.remote(model=self._model), timeout=2.0)
        except Exception:
            return None

    async def call(self, method: str, *args: Any) -> Any:
        """An operator's call to the controller (pause, approve, trial, ...), within 10 s.

        Raises:
            ServiceUnavailable: the controller is not reachable (it is restarted automatically).
        """
        try:
            ctl = await self._actor()
            return await asyncio.wait_for(getattr(ctl, method).remote(*args, model=self._model), timeout=10.0)
        except Exception as exc:
            raise ServiceUnavailable(f"the healing controller is not reachable ({type(exc).__name__}); "
                                     "it is restarted automatically, retry shortly", retry_after_s=2) from None

    async def note(self, kind: str, target: str, evidence: dict[str, Any]) -> None:
        """Record an event (a chaos injection) in the controller's audit log; never raises, since the
        event already happened and the caller's answer must not depend on the audit log."""
        evidence = {**evidence, "note_id": uuid.uuid4().hex}  # the controller records a replayed call once
        try:
            ctl = await self._actor()
            await asyncio.wait_for(ctl.note.remote(kind, target, evidence, model=self._model), timeout=2.0)
        except Exception:
            log.warning("could not record %s in the audit log (controller unreachable)", kind)
