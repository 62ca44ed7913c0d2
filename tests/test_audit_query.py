"""``raymedic audit``'s filters over records (pure; issue 20, a readable audit)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from controllers.audit_query import AuditQuery, kinds_in, parse_query, parse_since, select
from raymedic.errors import RaymedicError

NOW = 1_800_000_000.0

RECORDS = [
    {"ts": NOW - 7200, "kind": "detected-crash", "target": "mlp/r1", "incident": "i1"},
    {"ts": NOW - 7100, "kind": "restart", "target": "mlp/r1", "incident": "i1"},
    {"ts": NOW - 3000, "kind": "weights", "target": "synthetic"},
    {"ts": NOW - 2000, "kind": "restart-failed", "target": "lr/r7", "incident": "i2"},
    {"ts": NOW - 1000, "kind": "promote", "target": "synthetic", "incident": "p1-mlp"},
    {"ts": NOW - 10, "kind": "trial-started", "target": "synthetic/mlp", "incident": "t5-mlp"},
]


def kinds(query: AuditQuery) -> list[str]:
    return [r["kind"] for r in select(RECORDS, query)]


def test_kind_matches_exactly_or_as_a_prefix_and_takes_several() -> None:
    assert kinds(AuditQuery(kinds=("restart",))) == ["restart", "restart-failed"]
    assert kinds(AuditQuery(kinds=("detected",))) == ["detected-crash"]
    assert kinds(parse_query(kinds=["promote,weights", "trial"], now=NOW)) == ["weights", "promote", "trial-started"]
    assert kinds(AuditQuery(kinds=("nothing",))) == []


def test_target_matches_the_whole_target_or_a_run_of_its_parts() -> None:
    assert kinds(AuditQuery(targets=("mlp",))) == ["detected-crash", "restart", "trial-started"]
    assert kinds(AuditQuery(targets=("mlp/r1",))) == ["detected-crash", "restart"]
    assert kinds(AuditQuery(targets=("synthetic",))) == ["weights", "promote", "trial-started"]
    assert kinds(AuditQuery(targets=("r",))) == []  # a part, not a substring


def test_incident_since_and_limit_combine() -> None:
    assert kinds(AuditQuery(incident="i1")) == ["detected-crash", "restart"]
    assert kinds(AuditQuery(since=NOW - 2500)) == ["restart-failed", "promote", "trial-started"]
    assert kinds(AuditQuery(since=NOW - 2500, limit=2)) == ["promote", "trial-started"]  # the newest, oldest first
    assert kinds(AuditQuery(kinds=("restart",), targets=("lr",), incident="i2")) == ["restart-failed"]


def test_a_group_record_is_found_by_its_kind_any_of_its_incidents_and_its_id() -> None:
    grouped = RECORDS + [
        {"ts": NOW - 7000, "kind": "incident-group", "target": "worker-1", "group": "grp-i1",
         "incidents": ["i1", "i2"], "outcome": "formed"},
        {"ts": NOW - 6990, "kind": "detected-hung", "target": "lr/r7", "incident": "i3", "group": "grp-i1"},
    ]
    assert [r["ts"] for r in select(grouped, parse_query(kinds=["incident-group"], now=NOW))] == [NOW - 7000]
    # From an effect it names: the group's record beside the incident's own.
    assert [r["kind"] for r in select(grouped, AuditQuery(incident="i2"))] == ["incident-group", "restart-failed"]
    # By the group's id: its record and the records of its incidents that carry the group.
    assert [r["kind"] for r in select(grouped, AuditQuery(incident="grp-i1"))] == ["incident-group", "detected-hung"]
    assert select(grouped, AuditQuery(incident="i9")) == []


def test_since_takes_seconds_as_before_durations_and_iso_times() -> None:
    assert parse_since("3600", now=NOW) == NOW - 3600
    assert parse_since(3600.0, now=NOW) == NOW - 3600
    assert parse_since("2h", now=NOW) == parse_since("120m", now=NOW) == NOW - 7200
    assert parse_since("1d", now=NOW) == NOW - 86400
    assert parse_since("1.5H", now=NOW) == NOW - 5400
    utc = datetime.fromtimestamp(NOW - 60, tz=timezone.utc)
    assert parse_since(utc.isoformat(), now=NOW) == NOW - 60
    assert parse_since(utc.strftime("%Y-%m-%dT%H:%M:%SZ"), now=NOW) == NOW - 60
    local = datetime.fromtimestamp(NOW - 60).strftime("%Y-%m-%d %H:%M:%S")  # no zone: local time
    assert parse_since(local, now=NOW) == NOW - 60


@pytest.mark.parametrize(("flags", "says"), [
    ({"since": "yesterday"}, "--since 'yesterday' is not a time: give a number of seconds"),
    ({"since": "2x"}, "is not a time"),
    ({"since": "0"}, "--since '0' is no time back"),
    ({"since": "2099-01-01T00:00"}, "is in the future"),
    ({"limit": 0}, "--limit 0 shows nothing: give 1 or more"),
    ({"kinds": ["restart,"]}, "--kind 'restart,' has an empty item"),
    ({"targets": [""]}, "--target '' has an empty item"),
    ({"incident": " "}, "--incident is empty"),
])
def test_bad_filter_values_name_the_flag_and_the_fix(flags: dict, says: str) -> None:
    with pytest.raises(RaymedicError, match=None) as err:
        parse_query(now=NOW, **flags)
    assert says in str(err.value)


def test_kinds_in_lists_what_a_trail_holds() -> None:
    assert kinds_in(RECORDS[:3]) == ["detected-crash", "restart", "weights"]
    assert not AuditQuery().filtered and AuditQuery(limit=5).filtered is False
    assert AuditQuery(incident="i1").filtered
