"""Replicas that left Serve's view: a crash to heal, or a replica stopped on purpose? (pure: no Ray)

Serve drops a replica whose process died from its view within a second, often
before a poll of the view or a probe sees it. Whether that was a fault comes from
the actor's death record, which the observe layer reads
(:func:`controllers.observe.vanish_cause`) and hands in as a :class:`VanishCause`.
Right after a node is lost the record may not be settled yet (Serve gives up on a
node's replicas before the GCS declares the node dead), so a replica whose cause
is still ``unknown`` is asked about again every ``recheck_s`` for up to
``settle_s``; after that, one whose last probe had failed counts as a fault too.

>>> watch = VanishWatch()
>>> watch.track(now=10.0, running={"r1": ("mlp", "a1")}, present={"r1"}, last_probe={})
>>> watch.track(now=11.0, running={}, present=set(), last_probe={"r1": "timeout"})
>>> [p.replica for p in watch.due(now=11.0, present=set(), handled=lambda rid: False)]
['r1']
>>> watch.settle("r1", VanishCause(VanishVerdict.UNKNOWN, "actor is ALIVE"), now=11.0) is None
True
>>> watch.due(now=12.0, present=set(), handled=lambda rid: False)  # asked again after recheck_s
[]
>>> [p.replica for p in watch.due(now=14.0, present=set(), handled=lambda rid: False)]
['r1']
>>> watch.settle("r1", VanishCause(VanishVerdict.CRASH, "WORKER_DIED: SIGKILL", died_at=10.6), now=14.0)
Vanished(replica='r1', member='mlp', seen_at=14.0, reason='WORKER_DIED: SIGKILL', missed_at=11.0, died_at=10.6)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

from raymedic.enums import StrEnum

__all__ = ["VANISH_SETTLE_S", "VANISH_RECHECK_S", "VanishVerdict", "VanishCause", "Pending", "Vanished",
           "VanishWatch"]

VANISH_SETTLE_S = 45.0
"""How long a replica that left Serve's view may take to show why: a lost node is declared dead after
the GCS's health checks give up on its raylet (~15-30 s)."""
VANISH_RECHECK_S = 3.0
"""Between two looks at one such replica's death record (each look is a state-API call)."""

_NOT_FAILING = (None, "ok", "wrong")
"""Last probe outcomes that do not make an unexplained disappearance a fault (no probe, a pass, or a
wrong answer, which says the process was alive)."""


class VanishVerdict(StrEnum):
    """What an actor's death record says about a replica that left Serve's view."""

    CRASH = "crash"
    """Its process or node died: a fault to record and confirm."""
    INTENDED = "intended"
    """Serve or raymedic stopped it (scale-down, redeploy, our own restart)."""
    UNKNOWN = "unknown"
    """Not settled yet (or not readable): ask again."""


@dataclass(frozen=True)
class VanishCause:
    """Why a replica actor left Serve's view, as its death record tells: a verdict and the detail."""

    verdict: VanishVerdict
    reason: str = ""
    died_at: float | None = None
    """When the GCS says the actor died (its worker's exit time, :func:`controllers.observe.death_time`), if read."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", VanishVerdict(self.verdict))


@dataclass(frozen=True)
class Pending:
    """A replica gone from Serve's view whose cause is not known yet."""

    replica: str
    member: str
    actor_id: str
    since: float
    """When it was first missed."""
    last_probe: str | None
    """The outcome of its last probe before it left (None: never probed)."""


@dataclass(frozen=True)
class Vanished:
    """A replica that vanished for a reason that is a fault: the policy opens an incident on it."""

    replica: str
    member: str
    seen_at: float
    reason: str
    missed_at: float | None = None
    """When it was first missed from Serve's view (``seen_at`` is when its cause settled, up to ``settle_s``
    later): the controller's own first evidence of the crash."""
    died_at: float | None = None
    """When the GCS says it died (its worker's exit time), when that was read."""


@dataclass
class VanishWatch:
    """Tracks RUNNING replicas across views and settles why the ones that left did.

    Invariant: a replica is pending from the view in which it is first missed until it
    is back, handled (it has an incident), or settled; ``_next`` holds recheck times of
    pending replicas only.
    """

    settle_s: float = VANISH_SETTLE_S
    recheck_s: float = VANISH_RECHECK_S
    _was_running: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    _pending: dict[str, Pending] = field(default_factory=dict)
    _next: dict[str, float] = field(default_factory=dict)
    _vanished: dict[str, Vanished] = field(default_factory=dict)

    def track(self, *, now: float, running: Mapping[str, tuple[str, str | None]], present: Collection[str],
              last_probe: Mapping[str, str | None]) -> None:
        """Take one Serve view: ``running`` replica id → (member, actor id), ``present`` every replica
        id listed in any state, ``last_probe`` each replica's latest probe outcome.

        A replica stays tracked through STOPPING until it is gone: Serve stops one whose
        health checks fail (or whose node is unreachable) before it leaves the view.
        """
        for rid, (member, actor_id) in self._was_running.items():
            if rid not in present and actor_id and rid not in self._pending:
                self._pending[rid] = Pending(rid, member, actor_id, now, last_probe.get(rid))
        self._was_running = {rid: v for rid, v in self._was_running.items() if rid in present} | dict(running)

    def due(self, *, now: float, present: Collection[str], handled: Callable[[str], bool]) -> list[Pending]:
        """The pending replicas whose death record to read now (each at most every ``recheck_s``).

        One that is back in the view, or already handled (an incident of its own, e.g. we
        restarted it ourselves), is no longer pending.
        """
        out = []
        for rid, p in list(self._pending.items()):
            if rid in present or handled(rid):
                self._drop(rid)
                continue
            if now < self._next.get(rid, 0.0):
                continue
            self._next[rid] = now + self.recheck_s
            out.append(p)
        return out

    def settle(self, replica: str, cause: VanishCause, *, now: float) -> Vanished | None:
        """Judge one pending replica on its death record; the vanished replica if it is a fault.

        A crash is a fault at once. Within ``settle_s`` of being missed, anything else waits
        for another look. After that, an unknown cause after a failed probe is a fault, and
        anything else was a replica stopped on purpose (dropped without an incident).
        """
        p = self._pending.get(replica)
        if p is None:
            return None
        if cause.verdict == VanishVerdict.CRASH:
            reason = cause.reason
        elif now - p.since < self.settle_s:
            return None  # ask again later: the GCS may not have declared its node dead yet
        elif p.last_probe not in _NOT_FAILING and cause.verdict == VanishVerdict.UNKNOWN:
            reason = f"gone from Serve after a failed probe ({p.last_probe}); {cause.reason}"
        else:
            self._drop(replica)  # stopped on purpose (scale-down, redeploy, our restart)
            return None
        self._drop(replica)
        found = Vanished(replica, p.member, now, reason, missed_at=p.since, died_at=cause.died_at)
        self._vanished[replica] = found
        return found

    def take(self) -> list[Vanished]:
        """The vanished replicas not yet handed to the policy (one observation is enough to open the
        incident), oldest first; they are forgotten here."""
        out, self._vanished = list(self._vanished.values()), {}
        return out

    def _drop(self, replica: str) -> None:
        self._pending.pop(replica, None)
        self._next.pop(replica, None)
