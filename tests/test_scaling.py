"""Scaling on load as pure code: the config's bounds and checks, the deployment options Serve gets (none
changed without ``max_replicas``), the standby-aware policy Serve runs, the controller's audit of what Serve
decided (a fake clock), the SLO watch, and the status summary of a deployment's size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from controllers.policies.scaling import SLO_MIN_REQUESTS, ScaleWatch, Size
from raymedic.config import parse_config
from raymedic.errors import ConfigError
from serve_apps.application import gateway_scaling, member_scaling
from serve_apps.autoscale import POLICY_PATH, StandbyAware, desired_replicas
from serve_apps.serve_state import DeploymentView, ReplicaView, ScalingState, scaling_report
from serve_apps.telemetry import LatencyWindow


def _cfg(**member):
    return parse_config({"members": [{"name": "mlp", "kind": "mlp", **member},
                                     {"name": "logistic", "kind": "logistic", "fallback": True}]})


# ---- config and what Serve is given ---------------------------------------------------------------


def test_without_max_replicas_every_deployment_keeps_a_fixed_count():
    cfg = parse_config({})
    for m in cfg.members:
        assert member_scaling(m, cfg.scaling) == {"num_replicas": m.replicas + m.standby}
    assert gateway_scaling(cfg.gateway, cfg.scaling) == {"num_replicas": cfg.gateway.replicas}
    standby = _cfg(standby=1)
    assert member_scaling(standby.members[0], standby.scaling) == {"num_replicas": 3}


def test_an_autoscaled_member_scales_between_its_floor_and_ceiling_with_standbys_on_top():
    cfg = parse_config({"members": [{"name": "mlp", "kind": "mlp", "replicas": 2, "standby": 1, "max_replicas": 5,
                                     "target_ongoing_requests": 0.5},
                                    {"name": "logistic", "kind": "logistic", "fallback": True, "max_replicas": 3}],
                        "scaling": {"upscale_delay_s": 1, "downscale_delay_s": 30}})
    a = member_scaling(cfg.members[0], cfg.scaling)["autoscaling_config"]
    assert (a["min_replicas"], a["max_replicas"], a["target_ongoing_requests"]) == (3, 6, 0.5)
    assert (a["upscale_delay_s"], a["downscale_delay_s"]) == (1, 30)
    assert a["policy"] == {"policy_function": POLICY_PATH, "policy_kwargs": {"standby": 1}}
    plain = member_scaling(cfg.members[1], cfg.scaling)["autoscaling_config"]
    assert "policy" not in plain and (plain["min_replicas"], plain["max_replicas"]) == (2, 3)
    from ray.serve.config import AutoscalingConfig  # Serve accepts them as they are

    AutoscalingConfig(**a)
    AutoscalingConfig(**plain)


def test_the_gateway_scales_before_it_sheds():
    cfg = parse_config({"gateway": {"replicas": 1, "max_replicas": 4}})
    a = gateway_scaling(cfg.gateway, cfg.scaling)["autoscaling_config"]
    assert (a["min_replicas"], a["max_replicas"]) == (1, 4)
    assert a["target_ongoing_requests"] < cfg.gateway.max_inflight
    with pytest.raises(ConfigError, match="target_ongoing_requests .* must be < gateway.max_inflight"):
        parse_config({"gateway": {"max_replicas": 4, "target_ongoing_requests": 48}})


def test_bounds_that_cannot_hold_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"max_replicas \(1\) must be >= replicas \(2\)"):
        _cfg(replicas=2, max_replicas=1)
    with pytest.raises(ConfigError, match=r"gateway.max_replicas \(1\) must be >= gateway.replicas \(2\)"):
        parse_config({"gateway": {"replicas": 2, "max_replicas": 1}})
    with pytest.raises(ConfigError, match="latency_slo_ms"):
        parse_config({"gateway": {"latency_slo_ms": 0}})


# ---- the policy Serve runs ---------------------------------------------------------------------


def _ctx(*, running: int, target: int, in_flight: float, per_replica: float):
    return SimpleNamespace(current_num_replicas=running, target_num_replicas=target, total_num_requests=in_flight,
                           config=SimpleNamespace(get_target_ongoing_requests=lambda: per_replica))


def test_the_standby_aware_policy_adds_the_standbys_to_what_the_load_needs():
    policy = StandbyAware(standby=1)
    assert policy(_ctx(running=3, target=3, in_flight=8.0, per_replica=2.0)) == (5.0, {})  # 4 serving + 1 standby
    assert policy(_ctx(running=3, target=3, in_flight=0.0, per_replica=2.0)) == (1.0, {})  # Serve bounds it up
    assert policy(_ctx(running=0, target=2, in_flight=5.0, per_replica=2.0)) == (2, {})  # nothing running yet
    assert StandbyAware(standby=0)(_ctx(running=2, target=2, in_flight=3.0, per_replica=1.0))[0] == 3.0
    assert desired_replicas(total_in_flight=3.0, target_ongoing=1.0, standby=2) == 5.0
    with pytest.raises(ValueError):
        StandbyAware(standby=-1)


# ---- the controller's audit of Serve's decisions -------------------------------------------------------


def test_scale_out_then_capacity_then_scale_in_are_audited_once_each():
    w = ScaleWatch()
    assert w.observe(now=0.0, sizes={"mlp": Size(2, 2, 2, 4)}) == []  # the first view is the baseline
    out = w.observe(now=1.0, sizes={"mlp": Size(3, 2, 2, 4)})
    assert [(e.kind, e.target, e.evidence["from"], e.evidence["to"]) for e in out] == [("scale-out", "mlp", 2, 3)]
    assert w.observe(now=2.0, sizes={"mlp": Size(3, 2, 2, 4)}) == []  # still starting: nothing new
    done = w.observe(now=13.5, sizes={"mlp": Size(3, 3, 2, 4)})
    assert [(e.kind, e.evidence["took_s"]) for e in done] == [("scaled", 12.5)]
    back = w.observe(now=60.0, sizes={"mlp": Size(2, 3, 2, 4)})
    assert [(e.kind, e.evidence["to"]) for e in back] == [("scale-in", 2)]
    assert [e.kind for e in w.observe(now=65.0, sizes={"mlp": Size(2, 2, 2, 4)})] == ["scaled"]
    assert w.observe(now=66.0, sizes={"mlp": Size(2, 2, 2, 4)}) == []


def test_reaching_the_ceiling_is_audited_once_until_it_comes_down():
    w = ScaleWatch()
    w.observe(now=0.0, sizes={"mlp": Size(2, 2, 2, 4)})
    kinds = [e.kind for e in w.observe(now=1.0, sizes={"mlp": Size(4, 2, 2, 4)})]
    assert kinds == ["scale-out", "scale-at-max"]
    assert [e.kind for e in w.observe(now=2.0, sizes={"mlp": Size(4, 4, 2, 4)})] == ["scaled"]
    w.observe(now=3.0, sizes={"mlp": Size(3, 4, 2, 4)})
    assert "scale-at-max" in [e.kind for e in w.observe(now=4.0, sizes={"mlp": Size(4, 3, 2, 4)})]
    fixed = ScaleWatch()  # a fixed deployment (low == high) is never "at max"
    assert fixed.observe(now=0.0, sizes={"gateway": Size(2, 2, 2, 2)}) == []


def test_the_slo_watch_needs_enough_requests_and_flips_once_each_way():
    w = ScaleWatch()
    few = {"gw1": {"p99_ms": 900.0, "requests": SLO_MIN_REQUESTS - 1}}
    assert w.latency(reports=few, slo_ms=250) == []
    slow = {"gw1": {"p99_ms": 400.0, "p50_ms": 50.0, "requests": 200}}
    ev = w.latency(reports=slow, slo_ms=250)
    assert [(e.kind, e.target, e.evidence["p99_ms"]) for e in ev] == [("slo-breach", "gateway/gw1", 400.0)]
    assert w.latency(reports=slow, slo_ms=250) == [] and w.breached == ["gw1"]
    ok = {"gw1": {"p99_ms": 120.0, "requests": 200}}
    assert [e.kind for e in w.latency(reports=ok, slo_ms=250)] == ["slo-restored"] and w.breached == []
    w.latency(reports=slow, slo_ms=250)
    assert w.latency(reports=slow, slo_ms=250, gateways=[]) == [] and w.breached == []  # scaled in: forgotten


# ---- status ---------------------------------------------------------------------------------------


def _dep(target, *states):
    return DeploymentView("mlp", "HEALTHY", "", target, tuple(ReplicaView(str(i), s) for i, s in enumerate(states)))


@pytest.mark.parametrize(("dep", "autoscaled", "state"), [
    (_dep(2, "RUNNING", "RUNNING"), False, ScalingState.FIXED),
    (_dep(2, "RUNNING", "RUNNING"), True, ScalingState.STEADY),
    (_dep(3, "RUNNING", "RUNNING", "STARTING"), True, ScalingState.SCALING_OUT),
    (_dep(2, "RUNNING", "RUNNING", "RUNNING"), True, ScalingState.SCALING_IN),
    (_dep(4, "RUNNING", "RUNNING", "RUNNING", "RUNNING"), True, ScalingState.AT_MAX),
])
def test_status_says_where_a_deployment_size_is(dep, autoscaled, state):
    rep = scaling_report(dep, low=2, high=4, autoscaled=autoscaled, standby=1)
    assert rep["state"] == state and rep["target"] == dep.target_replicas and rep["standby"] == 1
    assert rep["running"] == sum(r.state == "RUNNING" for r in dep.replicas)


def test_the_latency_window_forgets_old_requests_and_counts_only_what_it_holds():
    w = LatencyWindow(window_s=5.0, kept=10)
    for i in range(20):
        w.add(0.1, now=float(i) / 10)
    assert w.report(now=2.0)["requests"] == 10  # bounded
    w.add(0.5, now=3.0)
    assert w.report(now=3.0)["p99_ms"] == 500.0
    assert w.report(now=100.0) == {"requests": 0, "p50_ms": None, "p99_ms": None, "window_s": 5.0}


def test_a_restored_slo_says_how_long_the_breach_lasted():
    w = ScaleWatch()
    slow, ok = {"gw1": {"p99_ms": 400.0, "requests": 200}}, {"gw1": {"p99_ms": 120.0, "requests": 200}}
    w.latency(reports=slow, slo_ms=250, now=100.0)
    (restored,) = w.latency(reports=ok, slo_ms=250, now=130.5)
    assert restored.kind == "slo-restored" and restored.evidence["breached_s"] == 30.5
