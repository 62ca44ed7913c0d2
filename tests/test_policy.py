"""The healing policy as pure code: what counts as dead, hung, wrong and slow; one
incident per replica; restarts under cooldown, caps and pause; recovery only when
the member is back at strength; memory survives a checkpoint round trip."""

from __future__ import annotations

import json

import pytest

from controllers.policies.replica import CallStats, HealingPolicy, Observation, Probe, ReplicaSnapshot, assess
from raymedic.config import ControllerConfig

CFG = ControllerConfig()


def probes(*outcomes: str, latency: float = 0.01, t0: float = 100.0, step: float = 0.5) -> tuple[Probe, ...]:
    return tuple(Probe(t0 + i * step, o, latency if o == "ok" else 0.8, "") for i, o in enumerate(outcomes))


def snap(replica: str, ps: tuple[Probe, ...] = (), member: str = "mlp", state: str = "RUNNING",
         calls: CallStats = CallStats()) -> ReplicaSnapshot:
    return ReplicaSnapshot(member=member, replica=replica, state=state, probes=ps, calls=calls)


def healthy(replica: str, member: str = "mlp", latency: float = 0.01) -> ReplicaSnapshot:
    return snap(replica, probes("ok", "ok", "ok", latency=latency), member=member)


# ---- assess ------------------------------------------------------------------------------


def test_healthy_replica_has_no_finding():
    a, b = healthy("a"), healthy("b")
    assert assess(a, [a, b], CFG) is None


def test_dead_probe_or_dead_calls_mean_dead():
    s = snap("a", probes("ok", "dead"))
    f = assess(s, [s], CFG)
    assert f.kind == "dead" and f.first_evidence_at == s.probes[-1].ts
    s2 = snap("a", probes("ok", "ok"), calls=CallStats(dead=2))
    assert assess(s2, [s2], CFG) is None  # the latest probe succeeded after those calls: not dead
    s3 = snap("a", probes("timeout"), calls=CallStats(dead=1))
    assert assess(s3, [s3], CFG).kind == "dead"


def test_consecutive_probe_timeouts_mean_hung_but_one_is_not_enough_alone():
    one = snap("a", probes("ok", "timeout"))
    assert assess(one, [one], CFG) is None
    two = snap("a", probes("ok", "timeout", "timeout"))
    f = assess(two, [two], CFG)
    assert f.kind == "hung" and f.evidence["probe_timeouts"] == 2
    assert f.first_evidence_at == two.probes[1].ts  # detection time is measured from the first timeout


def test_one_probe_timeout_plus_user_timeouts_with_nothing_completing_is_hung():
    s = snap("a", probes("ok", "timeout"), calls=CallStats(timeouts=3, ok=0))
    assert assess(s, [s], CFG).kind == "hung"
    busy = snap("a", probes("ok", "timeout"), calls=CallStats(timeouts=3, ok=20))
    assert assess(busy, [busy], CFG) is None  # it still completes work: a blip, not a hang


def test_one_probe_timeout_plus_calls_lost_since_with_a_peer_answering_is_hung_a_probe_sooner():
    """At 50 req/s a hung replica still has answered calls from before the hang in the window; calls lost
    to hedges with none answered since, one probe timeout and a peer that answers are enough."""
    b = healthy("b")
    lost = CallStats(ok=20, timeouts=2, first_timeout_at=100.6, ok_after_timeout=0)
    s = snap("a", probes("ok", "timeout", t0=100.0), calls=lost)
    f = assess(s, [s, b], CFG)
    assert f.kind == "hung" and f.evidence == {"probe_timeouts": 1, "call_timeouts": 2, "calls_ok_since": 0}
    assert f.first_evidence_at == 100.5  # the probe that timed out was sent before the first lost call arrived
    # It answered a call since the first loss (slow, not hung), or no peer answers (shared overload), or a
    # single lost call: not this rule's.
    again = CallStats(ok=20, timeouts=2, first_timeout_at=100.6, ok_after_timeout=1)
    assert assess(snap("a", probes("ok", "timeout"), calls=again), [b], CFG) is None
    stuck = snap("b", probes("ok", "timeout"))
    assert assess(s, [s, stuck], CFG) is None
    one = CallStats(ok=20, timeouts=1, first_timeout_at=100.6)
    assert assess(snap("a", probes("ok", "timeout"), calls=one), [b], CFG) is None


def test_consecutive_probe_errors_mean_the_replica_is_failing():
    one = snap("a", probes("ok", "error"))
    b = healthy("b")
    assert assess(one, [one, b], CFG) is None  # one probe error alone: could be a blip
    two = snap("a", probes("ok", "error", "error"))
    f = assess(two, [two], CFG)  # on their own, with no peer at all
    assert f.kind == "error" and f.evidence["probe_errors"] == 2
    assert f.first_evidence_at == two.probes[1].ts


def test_user_call_errors_against_a_peer_that_answers_mean_failing():
    b = healthy("b")
    a = snap("a", probes("ok"), calls=CallStats(errors=2, first_error_at=100.7))
    f = assess(a, [a, b], CFG)
    assert f.kind == "error" and f.evidence["call_errors"] == 2 and f.first_evidence_at == 100.7
    # One call error is not enough alone, but it is with a probe error beside it.
    assert assess(snap("a", probes("ok"), calls=CallStats(errors=1)), [b], CFG) is None
    both = snap("a", probes("ok", "error"), calls=CallStats(errors=1, first_error_at=99.0))
    assert assess(both, [both, b], CFG).first_evidence_at == 99.0
    # Calls it answered after the errors: a transient error, not a failing replica ...
    assert assess(snap("a", probes("ok"), calls=CallStats(errors=3, ok=40, ok_after_error=20)), [b], CFG) is None
    # ... but answers from before the first error, still in the window, do not vouch for it now.
    before = snap("a", probes("ok"), calls=CallStats(errors=2, ok=40, first_error_at=100.7))
    assert assess(before, [before, b], CFG).kind == "error"


def test_errors_on_every_replica_of_a_member_are_not_a_replica_fault():
    """Shared cause (the version, the inputs): restarting every replica would only take the member down."""
    a = snap("a", probes("ok"), calls=CallStats(errors=4))
    b = snap("b", probes("ok"), calls=CallStats(errors=5))
    b_failing = snap("b", probes("error"), calls=CallStats(errors=5))
    assert assess(a, [a, b_failing], CFG) is None
    # A peer whose probe passes but whose calls raise too does not vouch for the member either.
    assert assess(a, [a, b], CFG) is None


def test_a_failing_replica_is_avoided_and_restarted_like_any_fault():
    pol = HealingPolicy(CFG)
    bad = snap("a", probes("ok"), calls=CallStats(errors=3, first_error_at=100.9))
    r = pol.step(obs(101.0, bad, healthy("b")))
    assert [e.kind for e in r.events] == ["detected-error"]
    assert [a.replica for a in r.actions] == ["a"] and r.avoid["mlp"] == ("a",)
    assert pol.incidents[0].kind == "error" and pol.incidents[0].time_to_detect_s == pytest.approx(0.1)


def test_wrong_golden_answer_is_wrong_even_with_good_latency():
    s = snap("a", probes("ok", "wrong"))
    assert assess(s, [s, healthy("b")], CFG).kind == "wrong"


def test_slow_is_relative_to_peers_and_needs_repeated_evidence():
    slow = snap("a", probes("ok", "ok", "ok", "ok", latency=0.5))
    peers = [slow, healthy("b"), healthy("c")]
    f = assess(slow, peers, CFG)
    assert f.kind == "slow" and f.evidence["median_latency_s"] == 0.5
    assert f.evidence["seen_in"] == "probes" and f.evidence["peer_latency_s"] < f.evidence["limit_s"] < 0.5
    once = snap("a", probes("ok", "ok", "ok", latency=0.01) + probes("ok", latency=0.5, t0=200))
    assert assess(once, [once, healthy("b")], CFG) is None  # a single slow probe is noise
    short = snap("a", probes("ok", "ok", latency=0.5))
    assert assess(short, [short, healthy("b")], CFG) is None  # not enough evidence yet
    # Everyone equally slow (load, not a gray failure): no finding.
    all_slow = [snap(r, probes("ok", "ok", "ok", "ok", latency=0.5)) for r in "abc"]
    assert all(assess(s, all_slow, CFG) is None for s in all_slow)


def test_slow_without_peers_uses_the_member_baseline():
    s = snap("a", probes("ok", "ok", "ok", "ok", latency=0.5))
    assert assess(s, [s], CFG) is None
    assert assess(s, [s], CFG, baseline_latency_s=0.01).kind == "slow"


def test_slowness_is_not_judged_while_replicas_start_or_across_members():
    slow = snap("a", probes("ok", "ok", "ok", "ok", latency=0.5))
    pol = HealingPolicy(CFG)
    r = pol.step(obs(101.0, slow, healthy("b"), snap("c", state="STARTING")))
    assert r.actions == () and pol.incidents == []  # a replica is starting: latency is not comparable
    other = snap("x", probes("ok", "ok", "ok", "ok", latency=0.5), member="lr")
    r = pol.step(obs(102.0, slow, healthy("b"), other, healthy("y", member="lr")))
    assert pol.incidents == []  # two members slow at once: shared contention
    r = pol.step(obs(103.0, slow, healthy("b"), healthy("x", member="lr"), healthy("y", member="lr")))
    assert [i.kind for i in pol.incidents] == ["slow"]


def test_a_survivor_carrying_a_down_peers_load_is_not_slow():
    survivor = snap("a", probes("ok", "ok", "ok", "ok", latency=0.25))
    down = snap("b", probes("ok", "timeout", "timeout"))
    assert assess(survivor, [survivor, down], CFG, baseline_latency_s=0.05) is None


def test_small_absolute_differences_are_not_slow():
    s = snap("a", probes("ok", "ok", "ok", "ok", latency=0.004))
    fast_peer = snap("b", probes("ok", "ok", "ok", "ok", latency=0.001))
    assert assess(s, [s, fast_peer], CFG) is None  # 4× but only 3 ms: below slow_min_excess_s


def test_slowness_in_user_calls_is_seen_before_the_probes_can_show_it():
    """Under traffic a replica answers dozens of calls per probe: its latest calls all slow against its
    peers' calls is slowness within a second, while the probes (one per second) still look fine."""
    def calls(*latencies: float) -> CallStats:
        return CallStats(ok=len(latencies), latencies_s=latencies)

    fast = (0.01, 0.012, 0.011, 0.009, 0.01, 0.013)
    a = snap("a", probes("ok", "ok"), calls=calls(*fast, 0.51, 0.52, 0.5, 0.49, 0.55, 0.53))  # newest last
    b = snap("b", probes("ok", "ok"), calls=calls(*fast, *fast))
    f = assess(a, [a, b], CFG)
    assert f.kind == "slow" and f.evidence["calls"] == 6 and f.evidence["peer_latency_s"] < 0.02
    assert f.evidence["seen_in"] == "calls" and f.evidence["median_latency_s"] > f.evidence["limit_s"]
    # Older slow calls followed by fast ones (it recovered), one slow call among fast ones, or too few calls:
    assert assess(snap("a", calls=calls(0.5, 0.5, 0.5, *fast)), [b], CFG) is None
    assert assess(snap("a", calls=calls(*fast[:5], 0.5)), [b], CFG) is None
    assert assess(snap("a", calls=calls(0.5, 0.5, 0.5)), [b], CFG) is None
    # No peer answering calls to compare with (the probe rule covers a lone replica), or all equally slow:
    assert assess(a, [a, snap("b", probes("ok"))], CFG) is None
    slow_b = snap("b", probes("ok"), calls=calls(0.5, 0.52, 0.49, 0.5, 0.51, 0.5))
    assert assess(a, [a, slow_b], CFG) is None
    assert assess(a, [a, b], ControllerConfig(slow_calls=0)) is None  # off: probes only


def test_a_slow_probe_with_user_calls_lost_to_hedges_is_slow_at_once():
    """A gateway hedges a slow replica's calls and then avoids it, so its calls stop showing latencies;
    calls lost to hedges plus one slow probe (not a timeout) are enough, without three more probes."""
    b, c = healthy("b"), healthy("c")
    a = snap("a", probes("ok", "ok") + probes("ok", latency=0.5, t0=101.0), calls=CallStats(timeouts=2, ok=30))
    f = assess(a, [a, b, c], CFG)
    assert f.kind == "slow" and f.evidence["lost_calls"] == 2 and f.evidence["median_latency_s"] == 0.5
    assert f.evidence["seen_in"] == "probe and lost calls" and f.evidence["peer_latency_s"] < f.evidence["limit_s"]
    # One lost call, a fast probe, or a probe that timed out (the hang rules' case) is not this rule's:
    assert assess(snap("a", probes("ok", latency=0.5), calls=CallStats(timeouts=1)), [b, c], CFG) is None
    assert assess(snap("a", probes("ok"), calls=CallStats(timeouts=5)), [b, c], CFG) is None
    assert assess(snap("a", probes("ok", "timeout"), calls=CallStats(timeouts=2, ok=30)), [b, c], CFG).kind == "hung"
    # Nobody to compare with: not judged here.
    assert assess(snap("a", probes("ok", latency=0.5), calls=CallStats(timeouts=3)), [], CFG) is None


# ---- step: incidents, actions, limits ------------------------------------------------------


def obs(now: float, *snaps: ReplicaSnapshot, targets: dict[str, int] | None = None,
        standby: dict[str, int] | None = None) -> Observation:
    members = {s.member for s in snaps}
    return Observation(now=now, replicas=tuple(snaps), targets=targets or {m: 2 for m in members},
                       standby=standby or {})


def test_fault_opens_one_incident_avoids_the_replica_and_requests_one_restart():
    pol = HealingPolicy(CFG)
    bad = snap("a", probes("ok", "wrong"))
    r1 = pol.step(obs(101.0, bad, healthy("b")))
    assert [a.replica for a in r1.actions] == ["a"] and r1.avoid["mlp"] == ("a",)
    assert [e.kind for e in r1.events] == ["detected-wrong"]
    assert r1.healthy["mlp"] == ("b",)
    r2 = pol.step(obs(101.5, bad, healthy("b")))
    assert r2.actions == () and not [e for e in r2.events if e.kind.startswith("detected")]
    assert len(pol.incidents) == 1


def test_recovery_needs_the_replica_gone_and_the_member_back_at_strength():
    pol = HealingPolicy(CFG)
    pol.step(obs(101.0, snap("a", probes("ok", "dead")), healthy("b")))
    inc = pol.incidents[0]
    pol.action_done(inc.id, "ok")
    r = pol.step(obs(103.0, healthy("b"), snap("c", state="STARTING")))
    assert inc.status == "open" and r.avoid["mlp"] == ("a",)
    r = pol.step(obs(104.0, healthy("b"), snap("c")))  # running but not yet probed
    assert inc.status == "open"
    r = pol.step(obs(105.0, healthy("b"), healthy("c")))
    assert inc.status == "recovered" and inc.recovered_at == 105.0
    assert [e.kind for e in r.events] == ["recovered"] and r.avoid["mlp"] == ()
    # From the onset (the probe that died at 100.5), not the detection: detection is part of what it cost.
    assert inc.to_dict()["time_to_recover_s"] == pytest.approx(4.5)


def test_a_standby_takes_over_at_once_and_the_replacement_becomes_the_next_standby():
    pol = HealingPolicy(CFG)
    spare = {"mlp": 1}
    r = pol.step(obs(100.0, healthy("a"), healthy("b"), healthy("c"), standby=spare))
    assert r.standby == {"mlp": ("a",)} and r.healthy["mlp"] == ("a", "b", "c")  # held out, still healthy
    assert pol.step(obs(100.5, healthy("a"), healthy("b"), healthy("c"), standby=spare)).standby == {"mlp": ("a",)}
    # b hangs: flagged, and the standby serves in the same step (no room left for one).
    r = pol.step(obs(101.0, healthy("a"), snap("b", probes("ok", "timeout", "timeout")), healthy("c"), standby=spare))
    assert r.avoid["mlp"] == ("b",) and r.standby == {} and [a.replica for a in r.actions] == ["b"]
    assert [e.kind for e in r.events] == ["detected-hung", "standby-serves"]
    inc = pol.incidents[0]
    pol.action_done(inc.id, "ok")
    # b killed: Serve stops it and starts a replacement; a and c are the member's full strength.
    r = pol.step(obs(102.0, healthy("a"), snap("b", probes("ok", "timeout", "timeout"), state="STOPPING"),
                     healthy("c"), snap("d", state="STARTING"), standby=spare))
    assert inc.status == "recovered" and inc.recovered_at == 102.0 and r.standby == {}
    # Serve still lists the killed replica as RUNNING for a moment (Ray already reports it dead): it was
    # healed away, so it opens no new incident.
    dead_b = ReplicaSnapshot(member="mlp", replica="b", state="RUNNING", probes=probes("ok", "timeout", "timeout"),
                             alive=False, seen_dead_at=102.5)
    r = pol.step(obs(103.0, healthy("a"), dead_b, healthy("c"), snap("d", state="STARTING"), standby=spare))
    assert len(pol.incidents) == 1 and r.events == () and r.actions == ()
    # The replacement passes its probes: it stands by; a and c keep their traffic.
    r = pol.step(obs(110.0, healthy("a"), healthy("c"), healthy("d"), standby=spare))
    assert r.standby == {"mlp": ("d",)}
    restored = HealingPolicy(CFG, json.loads(json.dumps(pol.to_dict())))  # the role survives a restart
    assert restored.step(obs(111.0, healthy("a"), healthy("c"), healthy("d"), standby=spare)).standby == {
        "mlp": ("d",)}


def test_no_standby_is_held_back_while_the_member_is_short_or_unprobed():
    pol = HealingPolicy(CFG)
    spare = {"mlp": 1}
    assert pol.step(obs(100.0, healthy("a"), healthy("b"), snap("c"), standby=spare)).standby == {}  # c unprobed
    assert pol.step(obs(100.5, healthy("a"), healthy("b"), standby=spare)).standby == {}  # exactly at strength
    late = snap("c", probes("ok", "ok", "timeout"))  # serving, but its latest probe was late: not a standby
    assert pol.step(obs(101.0, late, healthy("a"), healthy("b"), standby=spare)).standby["mlp"] in (("a",), ("b",))
    assert pol.step(obs(101.5, healthy("a"), healthy("b"), healthy("c"))).standby == {}  # none configured


def test_an_idle_standby_is_not_the_yardstick_for_slowness():
    cfg = ControllerConfig()
    pol = HealingPolicy(cfg)
    spare = {"mlp": 1}
    busy = dict(latency=0.05)
    pol.step(obs(100.0, healthy("a", latency=0.005), healthy("b", **busy), healthy("c", **busy), standby=spare))
    assert pol.step(obs(100.5, healthy("a", latency=0.005), healthy("b", **busy), healthy("c", **busy),
                        standby=spare)).standby == {"mlp": ("a",)}
    # Against the idle standby the loaded replicas would look 10× slower; against each other they are fine.
    r = pol.step(obs(101.0, healthy("a", latency=0.005), healthy("b", **busy), healthy("c", **busy), standby=spare))
    assert not pol.incidents and r.avoid["mlp"] == ()


def test_one_restart_in_flight_per_member_and_a_cooldown_between_them():
    cfg = ControllerConfig(member_cooldown_s=5.0)
    pol = HealingPolicy(cfg)
    a, b = snap("a", probes("ok", "wrong")), snap("b", probes("ok", "wrong"))
    r = pol.step(obs(100.0, a, b, healthy("c"), targets={"mlp": 3}))
    assert len(r.actions) == 1
    first = pol.incidents[0]
    r = pol.step(obs(100.5, a, b, healthy("c"), targets={"mlp": 3}))
    assert r.actions == ()  # the first restart is still in flight
    pol.action_done(first.id, "ok")
    r = pol.step(obs(101.0, b, healthy("c"), snap("d", state="STARTING"), targets={"mlp": 3}))
    assert r.actions == ()  # a's replacement is not serving yet: b waits
    r = pol.step(obs(102.0, b, healthy("c"), healthy("d"), targets={"mlp": 3}))
    assert first.status == "recovered" and r.actions == ()  # confirmed, but the cooldown holds b
    r = pol.step(obs(105.5, b, healthy("c"), healthy("d"), targets={"mlp": 3}))
    assert [x.replica for x in r.actions] == ["b"]


def test_restart_cap_per_window_prevents_storms():
    cfg = ControllerConfig(max_restarts=2, restart_window_s=60, member_cooldown_s=0)
    pol = HealingPolicy(cfg)
    bad = [snap(f"r{i}", probes("ok", "wrong"), member=f"m{i}") for i in range(5)]
    done = 0
    for i in range(5):  # a fault appears in one more member every second; all stay in Serve's view
        r = pol.step(obs(100.0 + i, *bad[: i + 1], *(healthy(f"h{k}", member=f"m{k}") for k in range(5))))
        for a in r.actions:
            pol.action_done(a.incident_id, "ok")
            done += 1
    assert done == 2 and len(pol.incidents) == 5
    r = pol.step(obs(170.0, *bad, *(healthy(f"h{k}", member=f"m{k}") for k in range(5))))
    assert len(r.actions) == 2  # the window moved on


def test_paused_policy_detects_and_records_but_does_not_act():
    pol = HealingPolicy(CFG)
    pol.paused = True
    r = pol.step(obs(101.0, snap("a", probes("ok", "timeout", "timeout")), healthy("b")))
    assert r.actions == () and [e.kind for e in r.events] == ["detected-hung", "suppressed"]
    r = pol.step(obs(102.0, snap("a", probes("ok", "timeout", "timeout")), healthy("b")))
    assert r.actions == () and r.events == ()  # suppressed once, not every step
    pol.paused = False
    r = pol.step(obs(103.0, snap("a", probes("ok", "timeout", "timeout")), healthy("b")))
    assert [a.replica for a in r.actions] == ["a"]


def test_member_without_healthy_replicas_is_quarantined_then_restored():
    pol = HealingPolicy(CFG)
    r = pol.step(obs(101.0, snap("a", probes("ok", "wrong")), snap("b", probes("ok", "wrong"))))
    assert pol.quarantined == ["mlp"] and "quarantine" in [e.kind for e in r.events]
    r = pol.step(obs(110.0, healthy("c"), healthy("d")))
    assert pol.quarantined == [] and "unquarantine" in [e.kind for e in r.events]


def test_unconfirmed_restart_fails_after_the_confirm_timeout():
    cfg = ControllerConfig(confirm_timeout_s=10)
    pol = HealingPolicy(cfg)
    bad = snap("a", probes("ok", "wrong"))
    pol.step(obs(100.0, bad, healthy("b")))
    pol.action_done(pol.incidents[0].id, "ok")
    r = pol.step(obs(111.0, bad, healthy("b")))
    assert pol.incidents[0].status == "failed" and r.events[-1].kind == "recovery-failed"


def test_memory_round_trip_keeps_incidents_and_does_not_repeat_actions():
    pol = HealingPolicy(CFG)
    bad = snap("a", probes("ok", "wrong"))
    r = pol.step(obs(100.0, bad, healthy("b")))
    assert len(r.actions) == 1  # requested; the controller "crashes" before reporting the outcome
    restored = HealingPolicy(CFG, json.loads(json.dumps(pol.to_dict())))
    assert [a.replica for a in restored.pending_actions()] == ["a"]  # re-executed idempotently, once
    r2 = restored.step(obs(100.5, bad, healthy("b")))
    assert r2.actions == () and len(restored.incidents) == 1
    restored.action_done(restored.incidents[0].id, "ok: already gone")
    assert restored.pending_actions() == []


def test_step_handles_fifty_members_by_ten_replicas():
    pol = HealingPolicy(CFG)
    snaps = [snap(f"m{m}-r{r}", probes("ok", "ok", "ok", latency=0.01 + r * 1e-4), member=f"m{m}")
             for m in range(50) for r in range(10)]
    observation = obs(200.0, *snaps, targets={f"m{m}": 10 for m in range(50)})
    pol.step(observation)
    r = pol.step(observation)  # (its speed is measured by `raymedic bench controller-step`)
    assert r.actions == () and len(r.healthy) == 50 and all(len(v) == 10 for v in r.healthy.values())


def test_timeouts_across_most_of_the_fleet_are_systemic_and_restart_nothing():
    pol = HealingPolicy(CFG)
    late = [snap(r, probes("ok", "timeout", "timeout"), member=m) for m, r in
            [("mlp", "a"), ("mlp", "b"), ("lr", "c"), ("lr", "d")]]
    r = pol.step(obs(101.0, *late, healthy("e", member="tree")))
    assert r.actions == () and [e.kind for e in r.events] == ["systemic-timeouts"]
    assert pol.incidents == [] and set(r.healthy["mlp"]) == {"a", "b"}  # a late probe alone is no proof
    one = pol.step(obs(102.0, late[0], healthy("b"), healthy("c", member="lr"), healthy("d", member="lr")))
    assert [a.replica for a in one.actions] == ["a"]  # a single hung replica is a replica fault


def test_a_replica_ray_reports_dead_is_dead_before_serve_notices():
    s = ReplicaSnapshot(member="mlp", replica="a", state="RUNNING", probes=probes("ok", "ok"), alive=False,
                        seen_dead_at=100.7)
    f = assess(s, [s], CFG)
    assert f.kind == "dead" and f.first_evidence_at == 100.7
    pol = HealingPolicy(CFG)
    r = pol.step(obs(101.0, s, healthy("b")))
    assert [a.replica for a in r.actions] == ["a"] and pol.incidents[0].time_to_detect_s == pytest.approx(0.3)


class FakeClock:
    """The step's ``now``, moved by the test alone."""

    def __init__(self, now: float) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_a_sigkilled_replica_is_dated_by_its_death_record_and_recovers_after_it_even_on_a_standby():
    """A crash's onset is Ray's GCS death time, not the step that read it: a standby taking the dead one's
    traffic in the detecting step still leaves time to detect and to recover above 0."""
    clock = FakeClock(100.0)
    spare = {"mlp": 1}
    pol = HealingPolicy(CFG)
    pol.step(obs(clock.now, healthy("a"), healthy("b"), healthy("c"), standby=spare))
    died_at = clock.now + 0.1  # SIGKILL; the GCS records it
    clock.advance(0.7)  # the next liveness read shows it, a view period later
    dead = ReplicaSnapshot(member="mlp", replica="b", state="RUNNING", probes=probes("ok", "ok", "ok"), alive=False,
                           seen_dead_at=clock.now, died_at=died_at)
    r = pol.step(obs(clock.now, healthy("a"), dead, healthy("c"), standby=spare))
    (inc,) = pol.incidents
    assert inc.kind == "dead" and inc.first_evidence_at == died_at and inc.evidence["died_at"] == round(died_at, 3)
    assert inc.time_to_detect_s == pytest.approx(0.6)
    # The standby serves in b's place from this step: recovered at once, but after the death, not at 0 s.
    assert "standby-serves" in [e.kind for e in r.events] and inc.status == "recovered"
    assert inc.recovered_at == inc.detected_at and inc.time_to_recover_s == pytest.approx(0.6)
    assert inc.to_dict()["time_to_detect_s"] > 0 and inc.to_dict()["time_to_recover_s"] > 0


def test_a_crash_without_a_standby_recovers_when_its_replacement_serves_and_the_gateways_date_it_first():
    clock = FakeClock(200.0)
    pol = HealingPolicy(CFG)
    # The gateways reported calls that died with b before Ray's liveness read showed it (no death record read).
    calls = CallStats(ok=5, dead=2, first_dead_at=clock.now - 0.3)
    dead = ReplicaSnapshot(member="mlp", replica="b", state="RUNNING", probes=probes("ok", "ok"), alive=False,
                           seen_dead_at=clock.now, calls=calls)
    pol.step(obs(clock.now, healthy("a"), dead))
    (inc,) = pol.incidents
    assert inc.first_evidence_at == clock.now - 0.3 and inc.time_to_detect_s == pytest.approx(0.3)
    assert inc.evidence["first_dead_call_at"] == round(clock.now - 0.3, 3)
    pol.action_done(inc.id, "ok: already gone")
    pol.step(obs(clock.advance(2.0), healthy("a"), snap("c", state="STARTING")))
    assert inc.status == "open"  # a alone is not the member's strength: nothing serves in b's place yet
    pol.step(obs(clock.advance(8.0), healthy("a"), healthy("c")))  # c, the replacement, passes its probes
    assert inc.status == "recovered" and inc.time_to_recover_s == pytest.approx(10.3)


def test_a_gcs_clock_ahead_of_the_controller_never_makes_a_negative_time_to_detect():
    dead = ReplicaSnapshot(member="mlp", replica="a", state="RUNNING", probes=probes("ok"), alive=False,
                           seen_dead_at=300.0, died_at=300.4)  # the head node's clock runs ahead
    pol = HealingPolicy(CFG)
    pol.step(obs(300.0, dead, healthy("b")))
    assert pol.incidents[0].time_to_detect_s == 0.0 and pol.incidents[0].first_evidence_at == 300.0
    # Nothing dates a crash at all (no probe, no record, no call): detected now, not 56 years late.
    assert assess(ReplicaSnapshot(member="mlp", replica="x", state="RUNNING", alive=False), [], CFG
                  ).first_evidence_at == float("inf")
    pol.step(obs(301.0, ReplicaSnapshot(member="mlp", replica="x", state="RUNNING", alive=False), healthy("b")))
    assert pol.incidents[-1].time_to_detect_s == 0.0


def test_a_crashed_replica_serve_already_dropped_is_recorded_and_its_replacement_confirmed():
    gone = ReplicaSnapshot(member="mlp", replica="a", state="GONE", alive=False, seen_dead_at=100.2)
    pol = HealingPolicy(CFG)
    r = pol.step(obs(100.5, gone, healthy("b")))
    inc = pol.incidents[0]
    assert inc.kind == "dead" and r.actions == () and inc.action == "await-replacement"
    assert [e.kind for e in r.events] == ["detected-dead", "await-replacement"]
    pol.step(obs(101.0, healthy("b"), snap("c", state="STARTING")))
    assert inc.status == "open"
    pol.step(obs(106.0, healthy("b"), healthy("c")))
    assert inc.status == "recovered" and inc.time_to_recover_s == pytest.approx(5.8)  # from when it was seen gone


# ---- approval mode (human in the loop) ----------------------------------------------------------


def test_approval_mode_proposes_once_and_restarts_only_after_approval():
    pol = HealingPolicy(CFG.model_copy(update={"mode": "approve"}))
    bad = snap("a", probes("ok", "wrong"))
    r = pol.step(obs(101.0, bad, healthy("b")))
    assert r.actions == () and r.avoid["mlp"] == ("a",)  # avoided at once, restarted only when approved
    assert [e.kind for e in r.events] == ["detected-wrong", "proposed"]
    assert pol.step(obs(101.5, bad, healthy("b"))).events == ()  # proposed once
    inc = pol.proposals()[0]
    with pytest.raises(KeyError):
        pol.decide("inc-nope", True, "ops", 102.0)
    ev = pol.decide(inc.id, True, "ops", 102.0)
    assert ev.kind == "approved" and ev.evidence == {"by": "ops"}
    r = pol.step(obs(102.5, bad, healthy("b")))
    assert [a.replica for a in r.actions] == ["a"] and pol.proposals() == []
    with pytest.raises(ValueError, match="no pending proposal"):
        pol.decide(inc.id, True, "ops", 103.0)


def test_a_rejected_proposal_closes_the_incident_and_stops_avoiding_the_replica():
    pol = HealingPolicy(CFG.model_copy(update={"mode": "approve"}))
    pol.step(obs(101.0, snap("a", probes("ok", "wrong")), healthy("b")))
    inc = pol.proposals()[0]
    assert pol.decide(inc.id, False, "ops", 102.0).kind == "rejected"
    r = pol.step(obs(102.5, healthy("a"), healthy("b")))
    assert inc.status == "rejected" and r.actions == () and r.avoid["mlp"] == ()
    restored = HealingPolicy(CFG, json.loads(json.dumps(pol.to_dict())))
    assert restored.approval and restored.incidents[0].approval == "rejected"  # survives a restart


def test_calls_answered_after_the_first_error_report_are_told_from_those_before():
    from controllers.policies.calls import CallLog

    log = CallLog()
    log.ingest("gw1", now=100.0, replicas={"mlp/a": {"ok": 30}})
    log.ingest("gw1", now=100.5, replicas={"mlp/a": {"ok": 3, "error": 1}})  # the fault began in this period
    log.ingest("gw2", now=100.6, replicas={"mlp/a": {"error": 1}})
    failing = log.stats("mlp/a", now=101.0, window_s=5.0)
    assert (failing.ok, failing.errors, failing.ok_after_error, failing.first_error_at) == (33, 2, 0, 100.5)
    log.ingest("gw1", now=101.0, replicas={"mlp/a": {"ok": 4}})
    assert log.stats("mlp/a", now=101.2, window_s=5.0).ok_after_error == 4
