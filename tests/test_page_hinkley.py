"""The one Page–Hinkley test (controllers.detectors.page_hinkley): online and batch forms agree (pure)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from controllers.detectors.page_hinkley import PageHinkley, page_hinkley_alarms
from raymedic.config import PerformanceSettings
from raymedic.errors import ConfigError


def error_stream(seed: int, rates: tuple[float, ...] = (0.2, 0.3), n: int = 10_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(n) < r for r in rates]).astype(float)


def one_by_one(test: PageHinkley, x: np.ndarray) -> list[int]:
    return [i for i, v in enumerate(x) if test.update(float(v))]


@pytest.mark.parametrize("chunk", [1, 50, 777, 4096, 100_000])
def test_batch_alarms_are_the_online_alarms_whatever_the_chunk(chunk: int) -> None:
    x = error_stream(1)
    want = one_by_one(PageHinkley(delta=0.02, threshold=8.0, min_samples=50), x)
    got = page_hinkley_alarms(x, delta=0.02, threshold=8.0, min_samples=50, chunk=chunk)
    assert len(want) > 3 and [row for row, _ in got] == want
    # The start of each rise lies after the previous alarm and at or before its own alarm.
    previous = -1
    for row, start in got:
        assert previous < start <= row
        previous = row


def test_batches_continue_the_online_state_and_leave_it_as_the_online_test_would() -> None:
    x = error_stream(2)
    online = PageHinkley(delta=0.02, threshold=8.0, min_samples=50)
    want = one_by_one(online, x)
    batched = PageHinkley(delta=0.02, threshold=8.0, min_samples=50)
    got: list[int] = []
    for lo in range(0, len(x), 3_001):  # batch boundaries fall inside excursions
        got += [lo + row for row, _ in batched.update_many(x[lo:lo + 3_001])]
    assert got == want
    assert batched.n == online.n
    assert batched.cum == pytest.approx(online.cum, abs=1e-9)
    assert batched.low == pytest.approx(online.low, abs=1e-9)
    assert batched.mean == pytest.approx(online.mean, abs=1e-12)


def test_alarm_property_reports_the_last_update_and_the_test_restarts_after_it() -> None:
    test = PageHinkley(delta=0.0, threshold=2.0, min_samples=3)
    assert not test.alarm
    assert not any(test.update(0.0) for _ in range(20))
    fired = [test.update(1.0) for _ in range(20)]
    first = fired.index(True)
    assert test.n == 20 - first - 1  # the statistics restarted at the alarm
    assert test.update(1.0) == test.alarm
    test.update(1.0)
    test.update_many(np.zeros(10))
    assert not test.alarm and test.cum < 0  # after a batch without an alarm


def test_min_samples_hold_back_an_alarm_on_a_short_stream() -> None:
    x = np.ones(30)
    x[:10] = 0.0
    assert page_hinkley_alarms(x, delta=0.0, threshold=1.0, min_samples=1)
    assert not page_hinkley_alarms(x, delta=0.0, threshold=1.0, min_samples=31)


def test_a_larger_threshold_alarms_later_and_less() -> None:
    x = error_stream(3, rates=(0.15, 0.45), n=3_000)
    rows = {lam: [r for r, _ in page_hinkley_alarms(x, delta=0.02, threshold=lam, min_samples=50)]
            for lam in (5.0, 15.0, 40.0)}
    firsts = [next(r for r in rows[lam] if r >= 3_000) for lam in (5.0, 15.0, 40.0)]
    assert firsts[0] < firsts[1] < firsts[2]
    assert len(rows[5.0]) > len(rows[15.0]) > len(rows[40.0])


def test_limit_stops_at_the_alarm_past_it() -> None:
    x = error_stream(4, rates=(0.5,), n=20_000)
    every = page_hinkley_alarms(x, delta=0.0, threshold=3.0, min_samples=10)
    assert len(every) > 5
    assert page_hinkley_alarms(x, delta=0.0, threshold=3.0, min_samples=10, limit=2) == every[:3]
    assert page_hinkley_alarms(x, delta=0.0, threshold=3.0, min_samples=10, limit=0) == every[:1]


def test_checkpoint_round_trip_through_json_continues_the_same_statistics() -> None:
    x = error_stream(5)
    test = PageHinkley(delta=0.02, threshold=8.0, min_samples=50)
    one_by_one(test, x[:12_345])
    state = json.loads(json.dumps(test.to_dict()))
    assert set(state) == {"n", "mean", "cum", "low"}  # the checkpoint's keys, as stored by older versions
    again = PageHinkley(delta=0.02, threshold=8.0, min_samples=50)
    again.load(state)
    assert one_by_one(again, x[12_345:]) == one_by_one(test, x[12_345:])


def test_from_settings_reads_the_shipped_config() -> None:
    cfg = PerformanceSettings()
    test = PageHinkley.from_settings(cfg)
    assert (test.delta, test.threshold, test.min_samples) == (cfg.ph_delta, cfg.ph_lambda, cfg.ph_min_samples)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"delta": -0.1}, r"`delta` \(performance.ph_delta\).*>= 0"),
    ({"delta": math.nan}, r"`delta`"),
    ({"threshold": 0.0}, r"`threshold` \(performance.ph_lambda\).*> 0"),
    ({"threshold": math.inf}, r"`threshold`.*finite"),
    ({"min_samples": 0}, r"`min_samples` \(performance.ph_min_samples\).*>= 1"),
    ({"min_samples": 2.5}, r"`min_samples`.*whole number"),
])
def test_hyperparameters_are_validated_with_the_fix(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PageHinkley(**{"delta": 0.02, "threshold": 8.0, "min_samples": 50, **kwargs})
