"""Which audit records an operator asked for: ``raymedic audit --kind/--target/--incident/--since/--limit``.

Pure: the flags' text becomes an :class:`AuditQuery` (a mistake is a
:class:`~raymedic.errors.RaymedicError` naming the flag and the forms it takes,
which the CLI prints and exits 2 on), and :func:`select` applies it to records
read from storage. Nothing here reads storage or imports pyarrow, so the CLI can
check its flags before it touches the trail.

How each filter matches (all of them must):

- ``kind``: any of the given kinds, each an exact kind or a prefix of one
  (``restart`` matches ``restart`` and ``restart-failed``, ``detected`` every
  ``detected-*``);
- ``target``: the record's target, or one ``/``-separated part of it, or a
  leading run of its parts (``mlp`` matches ``mlp/r1`` and ``synthetic/mlp``;
  ``synthetic/mlp`` matches ``synthetic/mlp/r1``);
- ``incident``: the record's ``incident`` (a replica incident, a data alert, a
  retrain or trial record id), or an incident an ``incident-group`` record names
  among its ``incidents``, or a ``group`` id (``--incident grp-inc-000004``: the group's
  records and those of its incidents that carry it);
- ``since``: records at or after that time;
- ``limit``: the newest that many of those that match, oldest first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from raymedic.errors import RaymedicError

__all__ = ["AuditQuery", "kinds_in", "parse_query", "parse_since", "select"]

_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)?", re.IGNORECASE)
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_SINCE_FORMS = ("a number of seconds (3600), a duration (90s, 30m, 2h, 1d, 1w) or an ISO time "
                "(2026-11-22T08:00, 2026-11-22 08:00:00+00:00; without a zone, local time)")


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """The filters of one ``raymedic audit``; an empty tuple or None means any."""

    kinds: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    incident: str | None = None
    since: float | None = None
    limit: int = 200

    @property
    def filtered(self) -> bool:
        """Whether anything but the limit narrows the records (the CLI then says what exists when none match)."""
        return bool(self.kinds or self.targets or self.incident is not None or self.since is not None)


def parse_since(text: str | float | None, *, now: float) -> float | None:
    """``--since`` as a Unix time: seconds back from ``now`` (a plain number, as before), a duration with a
    unit (``2h``), or an ISO time.

    >>> parse_since("2h", now=10_000.0), parse_since("90", now=100.0), parse_since(None, now=1.0)
    (2800.0, 10.0, None)
    >>> parse_since("1970-01-01T00:01:00+00:00", now=1e9)
    60.0
    """
    if text is None:
        return None
    raw = str(text).strip()
    m = _DURATION.fullmatch(raw)
    if m:
        seconds = float(m["n"]) * _UNIT_S[(m["unit"] or "s").lower()]
        if seconds <= 0:
            raise RaymedicError(f"--since {raw!r} is no time back: give more than 0, e.g. --since 2h")
        return now - seconds
    try:
        when = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("z", "Z")) else raw)
    except ValueError:
        raise RaymedicError(f"--since {raw!r} is not a time: give {_SINCE_FORMS}") from None
    ts = when.timestamp()  # a naive time is local, as the CLI prints times
    if ts > now:
        raise RaymedicError(f"--since {raw!r} is in the future (now is "
                            f"{datetime.fromtimestamp(now).isoformat(timespec='seconds')}): give an earlier time")
    return ts


def _split(values: Iterable[str] | None, flag: str) -> tuple[str, ...]:
    """Repeated flags and comma lists as one tuple; an empty item is a mistake, not 'anything'."""
    out: list[str] = []
    for value in values or ():
        parts = [p.strip() for p in str(value).split(",")]
        if not all(parts):
            raise RaymedicError(f"{flag} {value!r} has an empty item: give names separated by commas, "
                                f"e.g. {flag} restart,promote")
        out += parts
    return tuple(dict.fromkeys(out))


def parse_query(*, kinds: Sequence[str] | None = None, targets: Sequence[str] | None = None,
                incident: str | None = None, since: str | float | None = None, limit: int | None = 200,
                now: float) -> AuditQuery:
    """The query from the CLI's flags (``kinds``/``targets``: repeated flags, each may be a comma list).

    Raises:
        RaymedicError: A flag's value is unusable; the message names the flag and what it takes.
    """
    if limit is None:
        limit = 200
    if limit < 1:
        raise RaymedicError(f"--limit {limit} shows nothing: give 1 or more (default 200)")
    if incident is not None and not incident.strip():
        raise RaymedicError("--incident is empty: give an incident id, as `raymedic status` lists them")
    return AuditQuery(kinds=_split(kinds, "--kind"), targets=_split(targets, "--target"),
                      incident=incident.strip() if incident is not None else None,
                      since=parse_since(since, now=now), limit=limit)


def _target_matches(target: str, wanted: str) -> bool:
    if target == wanted:
        return True
    parts, want = target.split("/"), wanted.strip("/").split("/")
    return any(parts[i:i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def _matches(rec: dict[str, Any], q: AuditQuery) -> bool:
    if q.since is not None and float(rec.get("ts", 0)) < q.since:
        return False
    kind = str(rec.get("kind", ""))
    if q.kinds and not any(kind == k or kind.startswith(k) for k in q.kinds):
        return False
    if q.targets and not any(_target_matches(str(rec.get("target", "")), t) for t in q.targets):
        return False
    if q.incident is None:
        return True
    if rec.get("incident") is not None and str(rec["incident"]) == q.incident:
        return True
    if rec.get("group") is not None and str(rec["group"]) == q.incident:  # a group's id: its records, its members'
        return True
    grouped = rec.get("incidents")  # an incident-group record: every incident it says are one
    return isinstance(grouped, list) and q.incident in (str(i) for i in grouped)


def select(records: Iterable[dict[str, Any]], query: AuditQuery) -> list[dict[str, Any]]:
    """The records that match every filter, the newest ``query.limit`` of them, oldest first.

    >>> recs = [{"ts": 1, "kind": "restart", "target": "m/r1"}, {"ts": 2, "kind": "weights", "target": "syn"},
    ...         {"ts": 3, "kind": "restart-failed", "target": "m/r2", "incident": "i2"}]
    >>> [r["ts"] for r in select(recs, AuditQuery(kinds=("restart",)))]
    [1, 3]
    >>> [r["ts"] for r in select(recs, AuditQuery(targets=("m",), incident="i2"))]
    [3]
    >>> grouped = recs + [{"ts": 4, "kind": "incident-group", "target": "w1", "group": "grp-i2",
    ...                    "incidents": ["i2", "i3"]}]
    >>> [r["ts"] for r in select(grouped, AuditQuery(incident="i3"))]  # the group's record names i3
    [4]
    >>> [r["ts"] for r in select(grouped, AuditQuery(incident="grp-i2"))]
    [4]
    """
    out = sorted((r for r in records if _matches(r, query)), key=lambda r: float(r.get("ts", 0)))
    return out[-query.limit:]


def kinds_in(records: Iterable[dict[str, Any]]) -> list[str]:
    """The kinds present, sorted (what to say when a filter matched nothing)."""
    return sorted({str(r.get("kind", "")) for r in records})
