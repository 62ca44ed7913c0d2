"""The replicas' latest process vitals as the controller's probes brought them back (pure: no Ray).

Each golden probe's answer carries the replica's own reading (:mod:`serve_apps.vitals`):
CPU share since the previous probe, open file descriptors, worst event-loop lag. The
board keeps the latest per replica for ``/v1/status`` (merged into each replica's
line, next to its memory) and the ``raymedic_replica_*`` gauges; a replica Serve
dropped is forgotten. No healing rule reads them yet: they are what an operator (or a
later rule) looks at when a replica is slow for a reason its probes cannot name.

>>> b = VitalsBoard()
>>> b.add("r1", {"cpu_share": 0.31, "open_fds": 42, "loop_lag_ms": 1.5}, ts=10.0)
Vitals(ts=10.0, cpu_share=0.31, open_fds=42, loop_lag_ms=1.5)
>>> b.add("r2", {"cpu_share": "x"}, ts=10.0) is None  # a reading that is not one is dropped
True
>>> b.report()
{'r1': {'cpu_share': 0.31, 'open_fds': 42, 'loop_lag_ms': 1.5}}
>>> b.retain(["r2"]); b.report()
{}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

__all__ = ["Vitals", "VitalsBoard"]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return None
    return float(v)


@dataclass(frozen=True)
class Vitals:
    """One replica's reading, stamped when the probe's answer came back; a field it lacked is None."""

    ts: float
    cpu_share: float | None
    open_fds: int | None
    loop_lag_ms: float | None

    @classmethod
    def parse(cls, reading: Any, *, ts: float) -> Vitals | None:
        """The reading of a probe answer, or None when it holds no usable figure (an older replica's
        answer has none; a malformed one must not break the probe)."""
        if not isinstance(reading, Mapping):
            return None
        cpu, fds, lag = (_number(reading.get(k)) for k in ("cpu_share", "open_fds", "loop_lag_ms"))
        if cpu is None and fds is None and lag is None:
            return None
        return cls(ts=ts, cpu_share=cpu, open_fds=None if fds is None else int(fds), loop_lag_ms=lag)

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_share": self.cpu_share, "open_fds": self.open_fds, "loop_lag_ms": self.loop_lag_ms}


class VitalsBoard:
    """The latest :class:`Vitals` per replica."""

    def __init__(self) -> None:
        self._latest: dict[str, Vitals] = {}

    def add(self, replica: str, reading: Any, *, ts: float) -> Vitals | None:
        """Keep ``replica``'s reading if it is one; returns what was kept."""
        vitals = Vitals.parse(reading, ts=ts)
        if vitals is not None:
            self._latest[replica] = vitals
        return vitals

    def retain(self, replicas: Iterable[str]) -> None:
        """Forget every replica not in ``replicas`` (Serve dropped it)."""
        keep = set(replicas)
        for rid in [r for r in self._latest if r not in keep]:
            del self._latest[rid]

    def report(self) -> dict[str, dict[str, Any]]:
        """Each replica's vitals for ``/v1/status``."""
        return {rid: v.to_dict() for rid, v in self._latest.items()}
