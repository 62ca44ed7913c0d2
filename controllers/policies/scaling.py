"""Scaling as the controller sees it: Serve decides, the controller observes and audits (pure: no Ray).

Ray Serve's autoscaler sizes every member with ``max_replicas`` (and the gateway with
``gateway.max_replicas``); why Serve and not the controller is in
:mod:`serve_apps.autoscale`. The controller reads each deployment's target and running
replicas in Serve's view every ``controller.view_period_s`` and hands them to
:class:`ScaleWatch`, which turns changes into audit events:

- ``scale-out`` / ``scale-in``: Serve's target moved (from, to, running, bounds);
- ``scaled``: the running replicas reached the target after a move, with how long
  capacity took to arrive (``took_s``);
- ``scale-at-max``: the target reached the ceiling (no capacity left to add: past it
  the gateways shed load with 503 + Retry-After);
- ``slo-breach`` / ``slo-restored``: a gateway's p99 over its recent predictions went
  above ``gateway.latency_slo_ms`` (with at least :data:`SLO_MIN_REQUESTS` in its
  window), and came back under it.

A scale-in is never a fault: the replicas Serve stops go STOPPING in its view (never
assessed by the healing policy) and leave with an intended death record, which
:mod:`controllers.policies.vanish` drops; the standbys are chosen again from the
replicas left (:func:`controllers.policies.replica.choose_standby`), and the policy's
target is Serve's target less the standbys, so a member is "at strength" at whatever
size Serve has chosen.

>>> w = ScaleWatch()
>>> w.observe(now=0.0, sizes={"mlp": Size(target=2, running=2, low=2, high=4)})
[]
>>> [e.kind for e in w.observe(now=1.0, sizes={"mlp": Size(target=3, running=2, low=2, high=4)})]
['scale-out']
>>> [(e.kind, e.evidence["took_s"]) for e in w.observe(now=9.0, sizes={"mlp": Size(3, 3, 2, 4)})]
[('scaled', 8.0)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from controllers.policies.replica import AuditEvent

__all__ = ["Size", "ScaleWatch", "SLO_MIN_REQUESTS"]

SLO_MIN_REQUESTS = 20
"""A gateway's window needs this many answered predictions before its p99 says anything (with fewer, one
slow request is the p99)."""

OBSERVED = "observed (Serve's autoscaler)"
"""The ``action`` of a scaling event: Serve acted; the controller records what it saw."""


@dataclass(frozen=True)
class Size:
    """One deployment's size in one Serve view: Serve's ``target``, replicas ``running``, and the bounds
    it scales between (``low`` = ``replicas + standby``, ``high`` = ``max_replicas + standby``)."""

    target: int
    running: int
    low: int
    high: int


@dataclass
class ScaleWatch:
    """Remembers each deployment's last target and turns Serve's scaling into audit events.

    Invariant: only :meth:`observe` and :meth:`latency` change the memory; the first view of a
    deployment is its baseline (no event: a controller that restarts does not re-announce sizes).
    """

    _target: dict[str, int] = field(default_factory=dict)
    _moved_at: dict[str, float] = field(default_factory=dict)  # deployment → when its target last moved
    _at_max: set[str] = field(default_factory=set)
    _breached: set[str] = field(default_factory=set)  # gateways whose p99 is over the SLO
    _breached_at: dict[str, float] = field(default_factory=dict)  # gateway → when its breach was seen

    def observe(self, *, now: float, sizes: Mapping[str, Size]) -> list[AuditEvent]:
        """The events of one Serve view: ``sizes`` maps a deployment (member name, or ``gateway``) to its
        :class:`Size`. A deployment no longer listed is forgotten."""
        events: list[AuditEvent] = []
        for name, size in sizes.items():
            before = self._target.get(name)
            self._target[name] = size.target
            bounds = {"min": size.low, "max": size.high}
            if before is not None and size.target != before:
                kind = "scale-out" if size.target > before else "scale-in"
                self._moved_at[name] = now
                events.append(AuditEvent(kind, name, {"from": before, "to": size.target, "running": size.running,
                                                      **bounds}, OBSERVED, "ok"))
            elif name in self._moved_at and size.running == size.target:
                took = now - self._moved_at.pop(name)
                events.append(AuditEvent("scaled", name, {"replicas": size.running, "took_s": round(took, 3),
                                                          **bounds}, OBSERVED, "ok"))
            if size.target >= size.high > size.low and name not in self._at_max:
                self._at_max.add(name)
                events.append(AuditEvent("scale-at-max", name, {"replicas": size.target, **bounds},
                                         "none: no capacity left to add; gateways shed past max_inflight",
                                         "ok"))
            elif size.target < size.high:
                self._at_max.discard(name)
        for gone in set(self._target) - set(sizes):
            self._target.pop(gone, None)
            self._moved_at.pop(gone, None)
            self._at_max.discard(gone)
        return events

    def latency(self, *, reports: Mapping[str, Mapping[str, Any]], slo_ms: float,
                gateways: Sequence[str] | None = None, now: float | None = None) -> list[AuditEvent]:
        """``slo-breach`` / ``slo-restored`` events from the gateways' latest latency ``reports`` (gateway →
        :meth:`serve_apps.telemetry.LatencyWindow.report`); ``gateways``: those still connected (default:
        every reporter). A window with fewer than :data:`SLO_MIN_REQUESTS` keeps the gateway's state. With
        ``now``, a restore's evidence says how long the breach lasted (``breached_s``: a load episode's time to
        recover)."""
        events: list[AuditEvent] = []
        live = set(reports) if gateways is None else set(gateways)
        for gw, rep in sorted(reports.items()):
            if gw not in live:
                continue
            p99, n = rep.get("p99_ms"), int(rep.get("requests") or 0)
            if p99 is None or n < SLO_MIN_REQUESTS:
                continue
            evidence = {"p99_ms": p99, "p50_ms": rep.get("p50_ms"), "requests": n, "slo_ms": slo_ms}
            if p99 > slo_ms and gw not in self._breached:
                self._breached.add(gw)
                if now is not None:
                    self._breached_at[gw] = now
                events.append(AuditEvent("slo-breach", f"gateway/{gw}", evidence, OBSERVED, "p99 above the SLO"))
            elif p99 <= slo_ms and gw in self._breached:
                self._breached.discard(gw)
                since = self._breached_at.pop(gw, None)
                if now is not None and since is not None:
                    evidence["breached_s"] = round(now - since, 3)
                events.append(AuditEvent("slo-restored", f"gateway/{gw}", evidence, OBSERVED, "ok"))
        self._breached &= live
        self._breached_at = {gw: t for gw, t in self._breached_at.items() if gw in self._breached}
        return events

    @property
    def breached(self) -> list[str]:
        """Gateways whose p99 is above the SLO now."""
        return sorted(self._breached)
