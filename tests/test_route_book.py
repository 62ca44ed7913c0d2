"""The replica a member call went to reaches the gateway's fan-out, through the router Serve actually runs.

Serve does not run :class:`serve_apps.routing.AvoidingRouter` itself in the caller: it runs the class
``RequestRouterConfig`` pickled *by value*, a copy with copies of its module's globals. A route kept
in the router's module was written in the copy and never seen by the fan-out, so no failed, timed-out
or hedged member call was ever charged to its replica (nor was the replica ejected, nor a hedge sent:
a call whose replica is unknown is not hedged). This test round-trips the router exactly as Serve
does, without a cluster, and asks the fan-out's reader.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from ray.serve.config import RequestRouterConfig

from serve_apps.route_book import MAX_TRACKED, record_route, routed_replica
from serve_apps.routing import AvoidingRouter


_GATEWAY = """
import pickle, sys, types
from ray import cloudpickle
from serve_apps.route_book import routed_replica
shipped = cloudpickle.loads(sys.stdin.buffer.read())  # what the gateway's handle instantiates
router = shipped.__new__(shipped)  # on_request_routed needs no router state
router.on_request_routed(types.SimpleNamespace(kwargs={"call_id": "c1", "avoid": ["x"]}),
                         types.SimpleNamespace(unique_id="replica-7"), None)
print(routed_replica("c1"))
"""


def test_the_router_serve_ships_records_routes_where_the_fanout_reads_them():
    """Another process (as a gateway replica is) unpickles the router bytes Serve made, routes a call
    through the copy and asks the fan-out's reader where it went."""
    shipped = RequestRouterConfig(request_router_class=AvoidingRouter).get_serialized_request_router_cls()
    out = subprocess.run([sys.executable, "-c", _GATEWAY], input=shipped, capture_output=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().split() == ["replica-7"]


def test_the_route_book_is_bounded():
    first = uuid.uuid4().hex
    record_route(first, "a")
    for i in range(MAX_TRACKED):
        record_route(f"filler-{i}", "b")
    assert routed_replica(first) is None and routed_replica(f"filler-{MAX_TRACKED - 1}") == "b"
