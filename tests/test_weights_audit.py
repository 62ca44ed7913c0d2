"""Which publications of ensemble weights become audit records (pure, fake clock; issue 20, a readable audit)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from controllers.audit import AuditLog
from controllers.policies.weights_audit import WeightsAudit, WeightsAuditConfig, WeightsReason
from controllers.recorder import Recorder
from raymedic.config import ControllerConfig
from raymedic.storage import Storage

CFG = WeightsAuditConfig(min_change=0.05, large_change=0.2, min_interval_s=30.0, floor=0.05)


def started(weights: dict[str, float], avoid: dict | None = None) -> WeightsAudit:
    """A decider whose baseline is ``weights`` (the first publication after a start, not recorded)."""
    wa = WeightsAudit(CFG)
    assert wa.offer(weights, avoid or {}, epoch=1, now=0.0, announce=False) is None
    return wa


def test_the_first_publication_is_the_baseline_never_a_record() -> None:
    wa = WeightsAudit(CFG)
    assert wa.offer({"a": 0.9, "b": 0.1}, {}, epoch=5, now=0.0) is None  # nothing recorded yet: baseline
    assert wa.offer({"a": 0.5, "b": 0.5}, {}, epoch=6, now=100.0).reason == WeightsReason.LARGE


def test_small_moves_are_not_recorded_but_add_up_against_the_last_record() -> None:
    wa = started({"a": 0.5, "b": 0.5})
    now = 100.0
    for i in range(4):  # 0.01 each: under min_change on its own, 0.04 in all
        now += 1
        assert wa.offer({"a": 0.5 + 0.01 * (i + 1), "b": 0.5 - 0.01 * (i + 1)}, {}, epoch=2 + i, now=now) is None
    rec = wa.offer({"a": 0.55, "b": 0.45}, {}, epoch=6, now=now + 1)  # 0.05 since the baseline
    assert rec is not None and rec.reason == WeightsReason.MOVED and rec.epoch == 6 and rec.publications == 5
    assert rec.max_change == pytest.approx(0.05)
    assert wa.offer({"a": 0.56, "b": 0.44}, {}, epoch=7, now=now + 100) is None  # the record is the new baseline


def test_material_moves_are_rate_limited_and_a_held_back_one_is_recorded_when_due() -> None:
    wa = started({"a": 0.5, "b": 0.5})
    first = wa.offer({"a": 0.6, "b": 0.4}, {}, epoch=2, now=40.0)
    assert first is not None and first.reason == WeightsReason.MOVED
    assert wa.offer({"a": 0.7, "b": 0.3}, {}, epoch=3, now=50.0) is None  # material, 10 s after the last
    assert wa.due(now=69.9) is None
    held = wa.due(now=70.0)  # 30 s after the last record, with no publication since
    assert held is not None and held.epoch == 3 and held.weights == {"a": 0.7, "b": 0.3}
    assert wa.due(now=200.0) is None  # recorded once


def test_a_large_move_skips_the_interval() -> None:
    wa = started({"a": 0.5, "b": 0.5})
    assert wa.offer({"a": 0.6, "b": 0.4}, {}, epoch=2, now=40.0) is not None
    rec = wa.offer({"a": 0.3, "b": 0.7}, {}, epoch=3, now=41.0)
    assert rec is not None and rec.reason == WeightsReason.LARGE


@pytest.mark.parametrize(("before", "after", "reason"), [
    ({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.49, "c": 0.01}, WeightsReason.MEMBERS),  # a member joined
    ({"a": 0.5, "b": 0.48, "c": 0.02}, {"a": 0.5, "b": 0.5}, WeightsReason.MEMBERS),  # one left
    ({"a": 0.95, "b": 0.05}, {"a": 0.92, "b": 0.08}, WeightsReason.FLOOR),  # lifted off the floor
    ({"a": 0.93, "b": 0.07}, {"a": 0.95, "b": 0.05}, WeightsReason.FLOOR),  # pushed to the floor
    ({"a": 0.95, "b": 0.05}, {"a": 1.0, "b": 0.0}, WeightsReason.FLOOR),  # dropped out (unhealthy)
])
def test_structural_changes_are_recorded_at_once(before: dict, after: dict, reason: WeightsReason) -> None:
    wa = started(before)
    assert wa.offer(before, {}, epoch=2, now=1.0) is None  # same weights: nothing
    rec = wa.offer(after, {}, epoch=3, now=2.0)  # 2 s after the baseline: the interval would hold a move back
    assert rec is not None and rec.reason == reason


def test_a_change_of_the_replicas_routed_around_is_recorded() -> None:
    wa = started({"a": 0.5, "b": 0.5})
    rec = wa.offer({"a": 0.5, "b": 0.5}, {"a": ("r1",)}, epoch=2, now=1.0)
    assert rec is not None and rec.reason == WeightsReason.AVOID and rec.avoid == {"a": ("r1",)}
    assert wa.offer({"a": 0.5, "b": 0.5}, {"a": ("r1",), "b": ()}, epoch=3, now=2.0) is None  # nothing new


def test_a_labelled_stream_leaves_a_handful_of_records() -> None:
    """Hedge-like jitter every 0.5 s for 4 minutes (what gave 246-380 records): a bounded number remain."""
    rng = random.Random(3)
    wa = started({"a": 0.4, "b": 0.3, "c": 0.3})
    w = {"a": 0.4, "b": 0.3, "c": 0.3}
    recorded = 0
    for step in range(480):
        a = min(0.7, max(0.05, w["a"] + rng.uniform(-0.01, 0.012)))
        w = {"a": a, "b": (1 - a) / 2, "c": (1 - a) / 2}
        now = 0.5 * (step + 1)
        recorded += (wa.offer(w, {}, epoch=step + 2, now=now) is not None) + (wa.due(now) is not None)
    assert 1 <= recorded <= 240 / CFG.min_interval_s + 2  # one per interval at most, bar large moves


def test_the_recorder_writes_only_material_publications_and_gauges_every_one(tmp_path) -> None:
    audit = AuditLog(Storage(str(tmp_path)), "m", writer="t")
    rec = Recorder(audit, "m", incident_of=lambda _: None, weights_audit=WeightsAudit(CFG))
    rec.published({"a": 0.5, "b": 0.5}, {}, epoch=1, announce=False, ts=0.0)
    for i in range(1, 20):
        rec.published({"a": 0.5 + 0.001 * i, "b": 0.5 - 0.001 * i}, {}, epoch=1 + i, announce=True, ts=float(i))
    assert [r for r in audit.tail(100) if r["kind"] == "weights"] == []
    rec.published({"a": 0.9, "b": 0.1}, {}, epoch=30, announce=True, ts=25.0)
    (only,) = [r for r in audit.tail(100) if r["kind"] == "weights"]
    assert only["evidence"]["reason"] == "large-move" and only["evidence"]["publications"] == 20
    assert only["weights"] == {"a": 0.9, "b": 0.1} and only["epoch"] == 30 and only["ts"] == 25.0


def test_config_thresholds_are_checked() -> None:
    assert WeightsAuditConfig.from_settings(ControllerConfig()).min_interval_s == 30.0
    with pytest.raises(ValidationError, match="weights_audit_min_change"):
        ControllerConfig(weights_audit_min_change=0.3, weights_audit_large_change=0.2)
