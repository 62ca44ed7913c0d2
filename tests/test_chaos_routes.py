"""Which replica a chaos fault goes to, and what a chaos body must say (pure)."""

from __future__ import annotations

import pytest

from raymedic.errors import InvalidRequest, ServiceUnavailable
from serve_apps.gateway.chaos_routes import parse_chaos, pick_target
from serve_apps.serve_state import ReplicaView

REPLICAS = [ReplicaView("r1", "RUNNING"), ReplicaView("r2", "RUNNING"), ReplicaView("r3", "RUNNING")]


def test_by_default_a_fault_hits_a_replica_serving_traffic():
    assert pick_target(REPLICAS, member="m", wanted=None, standby=["r1"]).id == "r2"
    assert pick_target(REPLICAS, member="m", wanted=None, standby=[]).id == "r1"
    assert pick_target(REPLICAS, member="m", wanted=None, standby=["r1", "r2", "r3"]).id == "r1"  # all spare


def test_a_named_replica_must_be_running():
    assert pick_target(REPLICAS, member="m", wanted="r3", standby=["r3"]).id == "r3"  # named: even a standby
    with pytest.raises(InvalidRequest, match="no running replica 'r9'") as err:
        pick_target(REPLICAS, member="m", wanted="r9", standby=[])
    assert err.value.http_status == 404
    with pytest.raises(ServiceUnavailable):
        pick_target([], member="m", wanted=None, standby=[])


@pytest.mark.parametrize(("body", "fragment"), [
    ([], '"fault": "kill|hang|slow|wrong|error|leak|gpu-fault"'),
    ({"fault": "melt", "member": "m"}, "fault must be one of"),
    ({"fault": "kill"}, "member is required: one of ['a', 'b']"),
    ({"fault": "slow", "member": "a", "delay_ms": True}, "delay_ms must be a number"),
])
def test_chaos_bodies_say_what_to_send(body, fragment):
    with pytest.raises(InvalidRequest) as err:
        parse_chaos(body, ["a", "b"])
    assert fragment in str(err.value) and err.value.http_status == 422


def test_a_good_chaos_body():
    assert parse_chaos({"fault": "slow", "member": "a", "delay_ms": 250}, ["a"]) == ("slow", "a", 250)
