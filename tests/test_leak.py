"""The memory-leak rule as pure code on a fake clock: a sustained growth whose forecast crosses the limit
within the horizon fires (with the forecast in the evidence); noise, one spike, a one-off step and too
few samples do not; a leaking replica is avoided at once, drained, then restarted through the usual
restart limits."""

from __future__ import annotations

import random

import pytest

from controllers.policies.leak import (LeakState, LimitSource, MemorySample, MemorySeries, assess_leak,
                                       memory_limit, ray_memory_threshold)
from controllers.policies.replica import CallStats, HealingPolicy, Observation, Probe, ReplicaSnapshot
from raymedic.config import ControllerConfig, parse_config
from raymedic.errors import ConfigError

CFG = ControllerConfig()
MB = 1e6
GB = 1e9
BASE = 400 * MB
LIMIT_MB = 700.0  # 300 MB above the replica's usual memory, as in the real-cluster test


def series(n: int, *, rate_mb_s: float = 0.0, t0: float = 1000.0, dt: float = 1.0, noise_mb: float = 0.0,
           seed: int = 0, extra=lambda i: 0.0) -> tuple[MemorySample, ...]:
    """``n`` samples one ``dt`` apart: BASE + rate × t + seeded Gaussian noise + ``extra(i)`` bytes."""
    rng = random.Random(seed)
    return tuple(MemorySample(t0 + i * dt, BASE + rate_mb_s * MB * i * dt + rng.gauss(0, noise_mb) * MB + extra(i),
                              16 * GB, 8 * GB) for i in range(n))


def verdict(samples, limit_mb: float = LIMIT_MB, cfg: ControllerConfig = CFG):
    return assess_leak(samples, limit_bytes=limit_mb * MB, limit_source=LimitSource.CONFIG,
                       min_samples=cfg.leak_min_samples, min_span_s=cfg.leak_min_span_s,
                       horizon_s=cfg.leak_horizon_s, confidence=cfg.leak_confidence)


# ---- the rule --------------------------------------------------------------------------------


def test_a_steady_leak_fires_before_the_limit_with_the_forecast_in_the_evidence():
    s = series(30, rate_mb_s=5.0, noise_mb=2.0, seed=1)  # 30 s of a 5 MB/s leak: ~545 MB of a 700 MB limit
    v = verdict(s)
    assert v.state == LeakState.LEAK and v.fires
    assert v.slope_bytes_per_s == pytest.approx(5 * MB, rel=0.1)
    assert v.slope_low_bytes_per_s > 0 and v.recent_slope_low_bytes_per_s > 0
    ev = v.evidence(CFG.leak_horizon_s)
    assert ev["limit_mb"] == LIMIT_MB and ev["limit_source"] == "memory_limit_mb" and ev["samples"] == 30
    assert 20 < ev["time_to_limit_s"] < 40  # (700 - ~545) / 5 MB/s
    assert ev["forecast_limit_at"] == pytest.approx(s[-1].ts + ev["time_to_limit_s"], abs=0.2)
    assert ev["rss_mb"] < LIMIT_MB  # caught before it got there
    assert ev["slope_mb_per_min"] == pytest.approx(300, rel=0.1)


@pytest.mark.parametrize("seed", range(10))
def test_a_flat_noisy_series_does_not_fire(seed):
    v = verdict(series(60, noise_mb=15.0, seed=seed), limit_mb=420.0)  # noise right under a close limit
    assert not v.fires and v.state == LeakState.STEADY


def test_a_single_high_reading_does_not_fire():
    spike = series(40, noise_mb=1.0, extra=lambda i: 250 * MB if i == 35 else 0.0)
    v = verdict(spike)
    assert not v.fires and v.state == LeakState.STEADY
    high = series(40, noise_mb=1.0, extra=lambda i: 290 * MB if i == 39 else 0.0)  # the latest, near the limit
    assert not verdict(high).fires


@pytest.mark.parametrize("at", [5, 15, 20, 25, 30, 35])
def test_a_one_off_step_up_does_not_fire(at):
    """A model load or a warm cache: memory jumps once and stays; the whole window's slope is positive,
    but one of its halves is flat."""
    step = series(40, noise_mb=1.0, seed=at, extra=lambda i: 200 * MB if i >= at else 0.0)
    v = verdict(step)
    assert not v.fires, (at, v)


def test_too_few_samples_or_too_short_a_span_do_not_fire():
    few = series(CFG.leak_min_samples - 1, rate_mb_s=50.0)
    assert verdict(few).state == LeakState.TOO_FEW
    short = series(40, rate_mb_s=50.0, dt=0.25)  # 40 samples over 10 s, under leak_min_span_s
    assert verdict(short).state == LeakState.TOO_FEW
    assert verdict(()).state == LeakState.TOO_FEW


def test_a_growth_whose_forecast_stays_past_the_horizon_only_grows():
    slow = series(60, rate_mb_s=0.2, noise_mb=0.5)  # 12 MB/min with ~290 MB to go: ~24 min
    v = verdict(slow)
    assert v.state == LeakState.GROWING and not v.fires and v.time_to_limit_s > CFG.leak_horizon_s


def test_a_leak_that_stopped_does_not_fire():
    stopped = series(60, noise_mb=1.0, extra=lambda i: min(i, 30) * 5 * MB)  # grew for 30 s, flat since
    assert not verdict(stopped).fires


def test_the_limit_is_the_config_or_the_nodes_headroom_to_rays_memory_monitor():
    s = MemorySample(0.0, 1 * GB, 16 * GB, 2 * GB)  # 14 GB used of 16
    assert memory_limit(s, limit_mb=1500, threshold=0.95) == (1500 * MB, LimitSource.CONFIG)
    limit, source = memory_limit(s, limit_mb=None, threshold=0.95)
    assert source == LimitSource.NODE and limit == pytest.approx(1 * GB + 0.95 * 16 * GB - 14 * GB)
    assert ray_memory_threshold({"RAY_memory_usage_threshold": "0.8"}) == 0.8
    assert ray_memory_threshold({}) == 0.95 == ray_memory_threshold({"RAY_memory_usage_threshold": "x"})


def test_memory_series_is_bounded_and_windowed():
    ms = MemorySeries(kept=5)
    for i in range(8):
        ms.add("a", MemorySample(float(i), BASE, 16 * GB, 8 * GB))
    assert [s.ts for s in ms.window("a", now=7.0, window_s=100.0)] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert [s.ts for s in ms.window("a", now=7.0, window_s=2.0)] == [5.0, 6.0, 7.0]
    assert ms.latest("a").ts == 7.0
    ms.retain({"b"})
    assert ms.window("a", now=7.0, window_s=100.0) == () and ms.latest("a") is None


def test_the_config_refuses_a_span_longer_than_the_window():
    with pytest.raises(ConfigError, match="leak_min_span_s"):
        parse_config({"controller": {"leak_window_s": 10, "leak_min_span_s": 20}})


# ---- the policy: avoid, drain, restart ---------------------------------------------------------------


def ok_probes(now: float) -> tuple[Probe, ...]:
    return tuple(Probe(now - 2 + i, "ok", 0.01) for i in range(3))


def replica(name: str, now: float, memory=(), inflight: int = 0) -> ReplicaSnapshot:
    return ReplicaSnapshot(member="mlp", replica=name, state="RUNNING", probes=ok_probes(now),
                           calls=CallStats(ok=5, inflight=inflight), memory=tuple(memory),
                           memory_limit_mb=LIMIT_MB)


def leaking_until(now: float) -> tuple[MemorySample, ...]:
    """A 5 MB/s leak sampled once a second up to ``now``, within the leak window."""
    n = int(CFG.leak_window_s)
    return tuple(MemorySample(now - n + 1 + i, BASE + 5 * MB * (i + 1), 16 * GB, 8 * GB) for i in range(n))


def step(pol: HealingPolicy, now: float, *, inflight: int = 0):
    flat = series(30, t0=now - 29, noise_mb=1.0)
    return pol.step(Observation(now=now, replicas=(replica("a", now, leaking_until(now), inflight),
                                                   replica("b", now, flat)), targets={"mlp": 2}))


def test_a_leaking_replica_is_avoided_at_once_drained_then_restarted():
    pol = HealingPolicy(CFG)
    r = step(pol, 1000.0, inflight=2)
    inc = pol.incidents[0]
    assert [e.kind for e in r.events] == ["detected-leak"] and inc.kind == "leak" and inc.replica == "a"
    assert r.avoid["mlp"] == ("a",) and r.actions == ()  # avoided now, not killed with calls in flight
    assert inc.evidence["time_to_limit_s"] is not None and inc.evidence["limit_mb"] == LIMIT_MB
    assert inc.first_evidence_at < inc.detected_at  # the growth was visible before the verdict
    # Still answering the calls it had: wait (the settle time has passed, the calls have not).
    assert step(pol, 1000.0 + CFG.leak_drain_settle_s, inflight=1).actions == ()
    r = step(pol, 1000.0 + CFG.leak_drain_settle_s + 0.5, inflight=0)
    assert [a.replica for a in r.actions] == ["a"] and inc.action == "restart"
    drained = next(e for e in r.events if e.kind == "drained")
    assert drained.evidence["inflight"] == 0 and drained.evidence["deadline_reached"] is False
    assert drained.incident == inc.id
    # Only once: a restart is in flight for the member.
    assert step(pol, 1002.0).actions == ()


def test_an_idle_leaking_replica_still_waits_for_the_gateways_to_have_the_avoid_list():
    pol = HealingPolicy(CFG)
    assert step(pol, 1000.0).actions == ()  # no call in flight, but gateways may not know yet
    assert [a.replica for a in step(pol, 1000.0 + CFG.leak_drain_settle_s).actions] == ["a"]


def test_a_drain_that_never_empties_ends_at_its_deadline():
    pol = HealingPolicy(CFG)
    step(pol, 1000.0, inflight=3)
    assert step(pol, 1000.0 + CFG.leak_drain_timeout_s - 0.1, inflight=3).actions == ()
    r = step(pol, 1000.0 + CFG.leak_drain_timeout_s, inflight=3)
    assert [a.replica for a in r.actions] == ["a"]
    assert next(e for e in r.events if e.kind == "drained").evidence["deadline_reached"] is True


def test_a_paused_policy_records_the_leak_and_restarts_nothing():
    pol = HealingPolicy(CFG)
    pol.paused = True
    r = step(pol, 1000.0)
    assert [e.kind for e in r.events] == ["detected-leak", "suppressed"]
    assert step(pol, 1010.0).actions == ()


def test_the_status_shows_each_replicas_memory_and_slope():
    pol = HealingPolicy(CFG)
    step(pol, 1000.0)
    rep = pol.memory_report()
    assert rep["a"]["memory_state"] == "leak" and rep["a"]["rss_slope_mb_per_min"] == pytest.approx(300, rel=0.01)
    assert rep["a"]["memory_limit_mb"] == LIMIT_MB and rep["a"]["memory_limit_source"] == "memory_limit_mb"
    assert rep["b"]["memory_state"] == "steady" and rep["b"]["rss_mb"] == pytest.approx(400, abs=5)
    # A replica Serve dropped leaves the report.
    pol.step(Observation(now=1001.0, replicas=(replica("b", 1001.0, series(30, t0=972.0)),), targets={"mlp": 2}))
    assert set(pol.memory_report()) == {"b"}


def test_a_verdict_is_computed_once_per_new_sample():
    pol = HealingPolicy(CFG)
    s = replica("a", 1000.0, leaking_until(1000.0))
    first = pol._leak(s, 0.95)
    assert pol._leak(s, 0.95) is first  # same samples: the cached verdict
    newer = replica("a", 1001.0, leaking_until(1001.0))
    assert pol._leak(newer, 0.95) is not first
