"""``raymedic bench tensor-drift``: how fast drift on an image input is caught, and how often it cries wolf.

Figures, not assertions, on scikit-learn's 8×8 handwritten digits (1,797 images, shipped with
the package: no download). Each seed splits the images four ways at random — fitting the
projection, the reference sample, the rows held out to calibrate the MMD, the live
stream (about 450 images each) — so that no image is both reference and live. Every row
is an image of its part moved by up to one pixel in each direction, plus pixel noise of
sd 0.5 (of 16): the training distribution is these jittered digits, and a stream does not
repeat exact rows (an image seen twice in a window is not what live traffic looks like).
The reference and held-out parts hold each of their images once, as a training set of
distinct rows would; the live stream draws from its ~450 images again and again, so a
seed's control is a population a little off the reference for good (the calibration's
bootstrap of the held-out rows is what covers that). The detectors are the controller's
(:class:`controllers.detectors.tensor_drift.TensorDriftMonitor`, built from the
reference entry :func:`train_jobs.tensor_reference.tensor_entry_from_splits` makes), fed
in batches of ``batch_rows`` as the gateway's tallies would.

- control: ``control_rows`` unchanged rows per seed: false alarms per 10,000 rows of the
  MMD, of the per-coordinate CUSUMs and of both (the budget, 0.05, is for both);
- scenarios: ``pre_rows`` unchanged rows, then ``post_rows`` changed ones — Gaussian pixel
  noise, rotation (``scipy.ndimage.rotate``) by 20° and 45°, brightness (+2 of 16 on every
  pixel), contrast (ink ×0.7), and class-mix (prior) shifts (digits 0–4 three times as
  likely as 5–9; digits 0–4 only). Delay: rows from the change to the first alarm at or after it, median
  and IQR over seeds, for the MMD, the CUSUMs and the first of the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from controllers.detectors.tensor_drift import TensorDriftMonitor, TensorTest
from raymedic.bench.drift import delay_stats, format_delay
from raymedic.bench.report import dumps
from raymedic.errors import ConfigError, RaymedicError
from train_jobs.tensor_reference import TensorDriftSettings, tensor_entry_from_splits

__all__ = ["SCENARIOS", "TensorBenchSettings", "dumps", "format_table", "load_digits_images",
           "run_tensor_drift_bench"]

Progress = Callable[[str], None]
JITTER_SD = 0.5
"""Pixel noise of every row (pixels are 0–16): the training distribution itself, not a drift."""


@dataclass(frozen=True)
class TensorScenario:
    """One change applied to the stream's images after ``pre_rows`` rows."""

    name: str
    noise_sd: float = 0.0
    rotation_deg: float = 0.0
    brightness: float = 0.0
    contrast: float = 1.0
    low_digits_weight: float = 1.0
    """Weight of digits 0–4 against 5–9 when drawing images (1: the training mix)."""


SCENARIOS: tuple[TensorScenario, ...] = (
    TensorScenario("noise sd 2", noise_sd=2.0),
    TensorScenario("rotate 20 deg", rotation_deg=20.0),
    TensorScenario("rotate 45 deg", rotation_deg=45.0),
    TensorScenario("brightness +2", brightness=2.0),
    TensorScenario("contrast x0.7", contrast=0.7),
    TensorScenario("digits 0-4 x3", low_digits_weight=3.0),
    TensorScenario("digits 0-4 only", low_digits_weight=1e6),
)


@dataclass(frozen=True)
class TensorBenchSettings:
    """The bench's sizes (``raymedic bench tensor-drift`` flags feed some of them)."""

    seeds: int = 5
    control_rows: int = 200_000
    """Per seed: 5 seeds give 1M control rows, ~5 false alarms at 0.05 per 10,000."""
    pre_rows: int = 1000
    post_rows: int = 4000
    batch_rows: int = 256
    fit_rows: int = 3000
    false_alarms_per_10k: float = 0.05
    calibration_paths: int = 600

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        if self.control_rows < 1000 or self.pre_rows < 200 or self.post_rows < 200:
            raise ConfigError(f"control_rows must be >= 1000 and pre_rows, post_rows >= 200, got "
                              f"{self.control_rows}, {self.pre_rows}, {self.post_rows}")


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(1797, 8, 8)`` images (0–16) and labels.

    Raises:
        RaymedicError: scikit-learn is not installed (it is an optional dependency).
    """
    try:
        from sklearn.datasets import (
            load_digits,  # third party, optional: only this bench needs it
        )
    except ImportError as exc:
        raise RaymedicError("bench tensor-drift reads scikit-learn's 8x8 digits: pip install scikit-learn "
                            "(or the raymedic extra that ships it)") from exc
    d = load_digits()
    return d.images.astype(float), d.target.astype(np.int64)


def _jittered(images: np.ndarray, n: int, rng: np.random.Generator, p: np.ndarray | None = None, *,
              each: bool = False) -> np.ndarray:
    """``n`` rows: images drawn (with weights ``p``; or every image once, ``each``), each moved by up to a
    pixel and noised by ``JITTER_SD``."""
    base = images if each else images[rng.choice(len(images), n, p=p)]
    n = len(base)
    padded = np.pad(base, ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, n), rng.integers(0, 3, n)
    rows = np.arange(8)[None, :, None] + dy[:, None, None]
    cols = np.arange(8)[None, None, :] + dx[:, None, None]
    out = padded[np.arange(n)[:, None, None], rows, cols]
    return out + rng.normal(0.0, JITTER_SD, out.shape)


def _changed(x: np.ndarray, sc: TensorScenario, rng: np.random.Generator) -> np.ndarray:
    if sc.rotation_deg:
        x = ndimage.rotate(x, sc.rotation_deg, axes=(1, 2), reshape=False, order=1, mode="constant")
    if sc.noise_sd:
        x = x + rng.normal(0.0, sc.noise_sd, x.shape)
    return x * sc.contrast + sc.brightness


def _feed(monitor: TensorDriftMonitor, rows: np.ndarray, batch: int) -> None:
    for a in range(0, len(rows), batch):
        monitor.update(rows[a:a + batch])


def run_tensor_drift_bench(settings: TensorBenchSettings = TensorBenchSettings(), *,
                           progress: Progress | None = None) -> dict[str, Any]:
    """The control and every scenario over ``settings.seeds`` seeds; a JSON-able report."""
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    images, labels = load_digits_images()
    det = TensorDriftSettings(false_alarms_per_10k=settings.false_alarms_per_10k,
                              calibration_paths=settings.calibration_paths)
    control = {t: 0 for t in ("mmd", "cusum")}
    delays: dict[str, dict[str, list[float | None]]] = {sc.name: {"mmd": [], "cusum": [], "either": []}
                                                        for sc in SCENARIOS}
    before = {sc.name: 0 for sc in SCENARIOS}
    fit_s, calib_s, k, explained, thresholds = [], [], 0, 0.0, []
    for s in range(settings.seeds):
        rng = np.random.default_rng([s, 17])
        parts = np.array_split(rng.permutation(len(images)), 4)
        fit_i, ref_i, held_i, live_i = parts
        say(f"seed {s + 1}/{settings.seeds}: projection, MMD calibration, CUSUM calibration")
        t = time.perf_counter()
        # One (jittered) row per image in the reference and held-out parts: rows of a training set are
        # distinct draws, and a held-out set of 450 images is what the calibration resamples.
        entry = tensor_entry_from_splits(_jittered(images[fit_i], settings.fit_rows, rng),
                                         _jittered(images[ref_i], len(ref_i), rng, each=True),
                                         _jittered(images[held_i], len(held_i), rng, each=True), det)
        fit_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        monitor = TensorDriftMonitor("image", entry)
        calib_s.append(time.perf_counter() - t)
        k, thresholds = len(entry["coordinates"]) - 1, thresholds + [entry["mmd"]["threshold"]]
        explained = float(np.sum(entry["projection"]["explained_variance"]))
        live = images[live_i]
        say(f"seed {s + 1}/{settings.seeds}: {settings.control_rows:,} control rows")
        _feed(monitor, _jittered(live, settings.control_rows, rng), settings.batch_rows)
        for f in monitor.findings:
            control[str(f.test)] += 1
        low = labels[live_i] < 5
        for sc in SCENARIOS:
            m = TensorDriftMonitor("image", entry)  # the CUSUM calibration is cached: no new simulation
            pre = _jittered(live, settings.pre_rows, rng)
            p = None
            if sc.low_digits_weight != 1.0:
                w = np.where(low, sc.low_digits_weight, 1.0)
                p = w / w.sum()
            post = _changed(_jittered(live, settings.post_rows, rng, p), sc, rng)
            _feed(m, np.concatenate([pre, post]), settings.batch_rows)
            change = settings.pre_rows
            before[sc.name] += sum(1 for f in m.findings if f.row < change)
            first: dict[str, float | None] = {}
            for test in (TensorTest.MMD, TensorTest.CUSUM):
                rows = [f.row for f in m.findings if f.test == test and f.row >= change]
                first[str(test)] = rows[0] - change + 1 if rows else None
            both = [v for v in first.values() if v is not None]
            first["either"] = min(both) if both else None
            for key, v in first.items():
                delays[sc.name][key].append(v)
    rows = settings.seeds * settings.control_rows

    def rate(n: int) -> float:
        return round(n / rows * 10_000, 4)

    return {
        "bench": "tensor-drift",
        "settings": asdict(settings),
        "detector": {"components": k, "explained_variance": round(explained, 3), "window": det.window,
                     "step": det.step, "mmd_share": det.mmd_share,
                     "mmd_threshold_median": round(float(np.median(thresholds)), 6),
                     "fit_s_median": round(float(np.median(fit_s)), 2),
                     "cusum_calibration_s_median": round(float(np.median(calib_s)), 2)},
        "control": {"rows": rows, "target_per_10k": settings.false_alarms_per_10k,
                    "mmd": {"alarms": control["mmd"], "per_10k": rate(control["mmd"])},
                    "cusum": {"alarms": control["cusum"], "per_10k": rate(control["cusum"])},
                    "either": {"alarms": sum(control.values()), "per_10k": rate(sum(control.values()))}},
        "detection": [{"scenario": sc.name, "false_before_change": before[sc.name],
                       **{key: delay_stats(v, len(v)) for key, v in delays[sc.name].items()}} for sc in SCENARIOS],
        "runtime_s": round(time.perf_counter() - t0, 1),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as the text ``raymedic bench tensor-drift`` prints (the JSON form is ``dumps``)."""
    st, d, c = report["settings"], report["detector"], report["control"]
    lines = [
        f"tensor drift bench: 8x8 digits, {st['seeds']} seeds, change after {st['pre_rows']} rows, "
        f"{st['post_rows']} rows after it ({report['runtime_s']} s)",
        f"projection: {d['components']} components ({d['explained_variance']:.0%} of the variance) + residual; "
        f"MMD window {d['window']} rows, test every {d['step']}, threshold {d['mmd_threshold_median']:.5f} "
        f"(median), {d['mmd_share']:.0%} of the budget; fit {d['fit_s_median']} s, CUSUM calibration "
        f"{d['cusum_calibration_s_median']} s per seed",
        "",
        f"false alarms on the no-drift control ({c['rows']:,} rows), per 10k (target {c['target_per_10k']}): "
        f"MMD {c['mmd']['per_10k']} ({c['mmd']['alarms']}), CUSUMs {c['cusum']['per_10k']} "
        f"({c['cusum']['alarms']}), either {c['either']['per_10k']} ({c['either']['alarms']})",
        "",
        "detection delay after the change, rows, median [IQR]",
        f"{'scenario':<16} {'MMD':<24} {'CUSUMs':<24} {'either':<24} {'false before':>12}",
    ]
    for r in report["detection"]:
        lines.append(f"{r['scenario']:<16} {format_delay(r['mmd']):<24} {format_delay(r['cusum']):<24} "
                     f"{format_delay(r['either']):<24} {r['false_before_change']:>12}")
    return "\n".join(lines)
