"""Data quality and drift checks, pure: gateway tally → monitor window → alerts (no Ray)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from controllers.detectors.two_sample import categorical_drift, numeric_drift
from controllers.monitors.data import MODEL_KINDS, AlertKind, DataAlerts, DataMonitor, Severity
from raymedic.config import DataConfig
from serve_apps.quality import InputTally
from train_jobs.reference import Reference
from train_jobs.schema import is_missing
from train_jobs.tables import infer_schema

CFG = DataConfig(window_rows=600, min_rows=200)


def table(n: int, seed: int, *, shift: float = 0.0, channel_p=(0.5, 0.3, 0.2), missing: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.normal(50 + 10 * shift, 10, n)
    if missing:
        amount[rng.random(n) < missing] = np.nan
    return pd.DataFrame({
        "amount": amount,
        "visits": rng.integers(0, 10, n),
        "channel": rng.choice(["web", "store", "app"], n, p=list(channel_p)),
        "member": rng.random(n) < 0.4,
        "label": rng.choice(["churn", "stay"], n),
    })


TRAIN = table(3000, seed=0)
SCHEMA = infer_schema(TRAIN, target="label")
REF = Reference.from_dict(json.loads(json.dumps(Reference.build(TRAIN, SCHEMA).to_dict())))


def rows(df: pd.DataFrame) -> list[list]:
    out = df[SCHEMA.feature_names].astype(object).values.tolist()
    return [[None if is_missing(v) else v for v in r] for r in out]


def monitor_with(df: pd.DataFrame, batch: int = 50, *, start: float | None = None, **cfg) -> DataMonitor:
    """A monitor fed ``df`` in tallies of ``batch`` rows (with ``start``: one tally a second from then)."""
    mon = DataMonitor(SCHEMA, REF, CFG.model_copy(update=cfg))
    tally = InputTally(SCHEMA, sample_per_batch=64, seed=1)
    r = rows(df)
    for i in range(0, len(r), batch):
        tally.add(r[i:i + batch])
        mon.add(json.loads(json.dumps(tally.drain())),  # through JSON, as over the wire
                now=None if start is None else start + i // batch)
    return mon


def test_reference_summarises_the_training_split():
    amount, channel = REF.features[0], REF.features[2]
    assert amount.numeric and len(amount.sample) == 2000 and np.all(np.diff(amount.sample) >= 0)
    assert not channel.numeric and channel.counts.sum() == 3000 and channel.counts[-1] == 0  # no "other" in training
    assert abs(channel.probabilities[list(SCHEMA.features[2].levels).index("web")] - 0.5) < 0.03


def test_tally_counts_missing_out_of_range_unseen_and_bounds_its_sample():
    tally = InputTally(SCHEMA, sample_per_batch=8, seed=0)
    tally.add([[None, 3, "web", True], [1e6, 3, "kiosk", False]] + [[50.0, 1, "app", True]] * 20)
    out = tally.drain()
    assert out["rows"] == 22
    assert out["features"]["amount"]["missing"] == 1 and out["features"]["amount"]["out_of_range"] == 1
    assert len(out["features"]["amount"]["values"]) == 8 and out["features"]["amount"]["sampled_from"] == 21
    assert out["features"]["channel"]["unseen"] == 1 and sum(out["features"]["channel"]["counts"]) == 22
    assert tally.drain() is None  # drained


def test_no_verdict_below_min_rows_and_the_window_slides():
    mon = monitor_with(table(150, seed=1))
    assert mon.check() is None
    mon = monitor_with(table(2000, seed=1))
    assert 600 <= mon.rows < 650  # the newest window_rows (plus at most one batch)


def test_same_distribution_raises_nothing():
    for seed in range(1, 6):
        report = monitor_with(table(600, seed=seed)).check()
        assert all(not f.breaches for f in report.features), [f.to_dict() for f in report.features if f.breaches]


def test_categorical_drift_is_found_by_the_categorical_test():
    report = monitor_with(table(600, seed=2, channel_p=(0.2, 0.2, 0.6))).check()
    ch = next(f for f in report.features if f.name == "channel")
    assert ch.test == "chi2" and ch.p_adjusted < 1e-6 and ch.js > CFG.js_warn and ch.drift in ("warn", "act")
    others = [f.name for f in report.features if f.breaches and f.name != "channel"]
    assert others == []


def test_numeric_shift_is_found_by_ks_and_psi_and_sized_by_wasserstein():
    report = monitor_with(table(600, seed=3, shift=1.0)).check()
    amount = report.features[0]
    assert amount.test == "ks" and amount.p_adjusted < 1e-6 and amount.psi > CFG.psi_act and amount.drift == "act"
    assert amount.wasserstein_sd == pytest.approx(1.0, abs=0.25)


def test_quality_breaches_missing_out_of_range_unseen():
    df = table(600, seed=4, missing=0.3)
    df.loc[:99, "visits"] = 1000  # far outside the training range
    df.loc[:99, "channel"] = "kiosk"
    report = monitor_with(df).check()
    by = {f.name: f for f in report.features}
    assert "missing_values" in by["amount"].breaches and by["amount"].missing_rate == pytest.approx(0.3, abs=0.06)
    assert "out_of_range" in by["visits"].breaches and "unseen_levels" in by["channel"].breaches


def test_alerts_open_once_escalate_and_clear_after_clean_checks_and_survive_a_restart():
    alerts = DataAlerts(CFG)
    bad = monitor_with(table(600, seed=5, channel_p=(0.35, 0.3, 0.35))).check()  # JS ≈ 0.17: warn
    events = alerts.update(bad)
    assert [(e, a.kind, a.feature) for e, a in events] == [("opened", "drift", "channel")]
    assert alerts.update(bad) == []  # still open, not raised twice
    worse = monitor_with(table(600, seed=6, channel_p=(0.05, 0.05, 0.9))).check()
    assert [e for e, _ in alerts.update(worse)] == ["escalated"]
    restarted = DataAlerts(CFG, json.loads(json.dumps(alerts.to_dict())))
    assert restarted.update(worse) == []
    good = monitor_with(table(600, seed=7)).check()
    assert restarted.update(good) == []  # one clean check is not enough
    events = restarted.update(good)
    assert [(e, a.status) for e, a in events] == [("cleared", "cleared")]
    assert restarted.alerts[0].recovered_at is not None and restarted.alerts[0].to_dict()["target"] == "channel"


def test_what_leaves_the_monitor_holds_plain_strings_with_the_stored_values():
    """Alerts, events and evidence travel in checkpoints, audit records and Ray calls to the gateway and the
    CLI: the states are the Enums' values as plain ``str``, which unpickle without importing the monitor."""
    alerts = DataAlerts(CFG)
    report = monitor_with(table(600, seed=6, channel_p=(0.05, 0.05, 0.9))).check()
    channel = report.to_dict()["features"]["channel"]
    assert (channel["kind"], channel["drift"], channel["breaches"]) == ("categorical", "act", ["drift"])
    assert all(type(v) is str for v in (channel["kind"], channel["drift"], *channel["breaches"]))
    events = alerts.update(report)
    alerts.apply({(AlertKind.ACCURACY_DECAY, "ensemble"): (Severity.ACT, {"accuracy": 0.3})}, 10.0,
                 kinds=MODEL_KINDS)
    events += alerts.supersede(MODEL_KINDS, 20.0, "new versions")
    assert [(e, a.kind) for e, a in events] == [("opened", "drift"), ("cleared", "accuracy_decay")]
    for what, alert in events:
        for value in (what, alert.kind, alert.status, alert.severity):
            assert type(value) is str
        assert b"controllers" not in pickle.dumps((what, alert.kind, alert.status, alert.severity, alert.evidence))
    assert {a["severity"] for a in json.loads(json.dumps(alerts.to_dict()))["alerts"]} == {"act"}


def test_new_versions_supersede_model_and_drift_alerts_but_not_data_quality():
    """A decay or drift judged against the replaced champions must not retrain the new ones."""
    alerts = DataAlerts(CFG)
    df = table(600, seed=4, missing=0.3, channel_p=(0.05, 0.05, 0.9))
    alerts.update(monitor_with(df).check())
    alerts.apply({("accuracy_decay", "ensemble"): ("act", {"accuracy": 0.3})}, 10.0,
                 kinds=frozenset({"accuracy_decay"}))
    kinds = {a.kind for a in alerts.open()}
    assert {"drift", "missing_values", "accuracy_decay"} <= kinds
    events = alerts.supersede(frozenset({"accuracy_decay", "concept_drift", "drift"}), 20.0, "new versions")
    assert {a.kind for _, a in events} == {"drift", "accuracy_decay"} and all(e == "cleared" for e, _ in events)
    assert all(a.recovered_at == 20.0 and a.evidence["cleared_by"] == "new versions" for _, a in events)
    assert {a.kind for a in alerts.open()} == {"missing_values"}


def test_the_cusum_stands_on_every_training_value_not_the_sample():
    amount = REF.features[0]
    assert amount.moments is not None and amount.moments[2] == 3000 > len(amount.sample)
    assert amount.moments[0] == pytest.approx(TRAIN["amount"].mean())
    assert amount.moments[1] == pytest.approx(TRAIN["amount"].std(ddof=1))
    cusum = DataMonitor(SCHEMA, REF, CFG)._cusums["amount"]
    assert cusum.n_reference == 3000  # the discount and threshold of a 3,000-row reference
    old = json.loads(json.dumps(REF.to_dict()))
    for f in old["features"]:
        f.pop("moments", None)  # a version stored before the moments were kept: its sample, as before
    assert DataMonitor(SCHEMA, Reference.from_dict(old), CFG)._cusums["amount"].n_reference == 2000


def test_drift_statistics_on_known_inputs():
    rng = np.random.default_rng(0)
    ref = np.sort(rng.normal(0, 1, 2000))
    same, moved = numeric_drift(ref, rng.normal(0, 1, 500)), numeric_drift(ref, rng.normal(0.5, 1, 500))
    assert same["p_value"] > 0.01 and same["psi"] < 0.1
    assert moved["p_value"] < 1e-6 and moved["wasserstein_sd"] == pytest.approx(0.5, abs=0.15)
    r = REF.features[2]
    expected = r.counts / r.counts.sum() * 600
    assert categorical_drift(r.probabilities, np.round(expected))["js"] < 0.05
    assert categorical_drift(r.probabilities, np.array([0.0, 0.0, 600.0, 0.0]))["p_value"] < 1e-12


def test_sequential_cusum_flags_a_half_sd_shift_and_stays_quiet_on_the_control():
    calm = monitor_with(table(3000, seed=6))
    assert calm.sequential_hits() == {}
    assert all(f.sequential is None and f.drift == "none" for f in calm.check().features)
    shifted = monitor_with(pd.concat([table(400, seed=7), table(400, seed=8, shift=0.5)], ignore_index=True))
    hits = shifted.sequential_hits()
    assert set(hits) == {"amount"} and hits["amount"]["cusum"] == "mean_up", hits
    assert 0 < hits["amount"]["rows_after_change"] < 400  # its own estimate of where the change began
    amount = shifted.check().features[0]
    assert amount.sequential == "mean_up" and amount.drift in ("warn", "act") and "drift" in amount.breaches
    off = monitor_with(pd.concat([table(400, seed=7), table(400, seed=8, shift=0.5)], ignore_index=True),
                       sequential=False)
    assert off.sequential_hits() == {} and off.check().features[0].sequential is None


def test_a_drift_the_cusum_finds_is_dated_when_its_rows_arrived_so_it_has_a_time_to_detect():
    # 8 calm tallies (t = 1000..1007), then 8 shifted ones from t = 1008: the change's rows arrived at 1008.
    shifted = monitor_with(pd.concat([table(400, seed=7), table(400, seed=8, shift=0.5)], ignore_index=True),
                           start=1000.0)
    moved_at = shifted.sequential_hits()["amount"]["moved_at"]
    # The CUSUM's own estimate (the start of the excursion that crossed: a little late for a small shift), dated
    # by the tally its row came in; never in the calm stretch's first half.
    assert 1004.0 <= moved_at <= 1015.0, moved_at
    alerts = DataAlerts(CFG)
    (opened,) = [a for what, a in alerts.update(shifted.check(now=1020.0)) if a.kind == "drift"]
    assert opened.evidence["moved_at"] == moved_at
    assert opened.to_dict()["time_to_detect_s"] == round(1020.0 - moved_at, 3)


def test_an_open_decay_takes_the_change_date_found_after_it_opened_and_keeps_the_first():
    """A retrain since the change needs its date; the CUSUM may find it a check or two after the decay."""
    alerts = DataAlerts(CFG)
    kinds = frozenset({"accuracy_decay"})
    key = ("accuracy_decay", "ensemble")
    assert alerts.apply({key: ("act", {"accuracy": 0.7})}, 10.0, kinds=kinds)[0][0] == "opened"
    assert alerts.apply({key: ("act", {"accuracy": 0.69, "change_at": 5.0})}, 12.0, kinds=kinds) == []
    alerts.apply({key: ("act", {"accuracy": 0.68, "change_at": 9.0})}, 14.0, kinds=kinds)
    (alert,) = alerts.open()
    assert alert.evidence == {"accuracy": 0.7, "change_at": 5.0}  # opening evidence kept, first date kept


def test_closed_data_alerts_kept_in_memory_are_bounded():
    """A controller that runs for months opens and clears alerts all along: every open one is kept, the
    closed ones only up to CLOSED_ALERTS_KEPT (the audit holds the history)."""
    from controllers.monitors.data import CLOSED_ALERTS_KEPT, MODEL_KINDS, DataAlerts
    from raymedic.config import DataConfig

    alerts = DataAlerts(DataConfig())
    kind = sorted(MODEL_KINDS)[0]
    for i in range(CLOSED_ALERTS_KEPT + 50):
        alerts.apply({(kind, f"f{i}"): ("warn", {})}, float(i), kinds=MODEL_KINDS)
        alerts.supersede(MODEL_KINDS, float(i) + 0.5, "test")
    alerts.apply({(kind, "still-open"): ("warn", {})}, 1e6, kinds=MODEL_KINDS)
    alerts.apply({(kind, "next"): ("warn", {})}, 1e6 + 1, kinds=MODEL_KINDS)
    kept = alerts.alerts
    assert len([a for a in kept if a.status != "open"]) == CLOSED_ALERTS_KEPT
    assert {a.feature for a in alerts.open()} == {"still-open", "next"}
    assert kept[-1].feature == "next" and f"f{CLOSED_ALERTS_KEPT + 49}" in {a.feature for a in kept}
