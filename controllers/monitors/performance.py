"""Model performance from delayed labels, and a label-free estimate before they arrive (pure).

Replicas can be perfectly healthy while the model is wrong for today's data. The
gateway joins each feedback label to the answer it gave (every member's and the
ensemble's probabilities, by ``inference_id``) and ships the pairs with its
telemetry; this module keeps the most recent ``label_window`` of them per source
and computes:

- accuracy, macro F1, ROC AUC (one-vs-rest, macro over classes) and expected
  calibration error per member and for the ensemble;
- a change test on the ensemble's 0/1 error stream: a sustained rise in the error
  rate (concept drift: same inputs, new answers) alarms after a number of labels
  inversely proportional to the rise, without waiting for a full window. By default
  Bernoulli CUSUMs (:class:`controllers.detectors.cusum.ErrorCusum`) against the error
  rate of the first labels of the serving versions, with simulated thresholds for a
  false-alarm budget; Page–Hinkley (:mod:`controllers.detectors.page_hinkley`) on request. The CUSUM is fed in :meth:`check`
  (off the controller's event loop: calibrating it takes a few tenths of a second);
- prediction drift: the ensemble's output distribution on the most recent answers
  (top-class confidence: KS and PSI; predicted classes: chi-squared and PSI) against
  its first answers since the serving versions started — no labels needed, so it
  is the first sign that the inputs moved somewhere that matters to the model;
- a label-free accuracy estimate from the ensemble's confidence on *all* recent
  answers (confidence-based performance estimation): each answer's top
  probability, recalibrated by histogram binning on the labelled window when
  there are enough labels, averaged. Its reliability is reported with it: how
  many labels calibrated it, the calibration error it corrected, its standard
  error, and how far it was from the realised accuracy on the labelled window.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from controllers.detectors.cusum import ErrorCusum, ErrorCusumConfig
from controllers.detectors.intervals import wilson_upper
from controllers.detectors.page_hinkley import PageHinkley
from controllers.detectors.two_sample import numeric_drift, psi
from controllers.monitors.data import AlertKind, Severity
from raymedic.config import PerformanceSettings
from raymedic.keys import ENSEMBLE
from raymedic.logs import get_logger
from train_jobs.evaluation import CAL_BINS, classification_metrics, expected_calibration_error

__all__ = ["PerformanceConfig", "PerformanceMonitor", "PerformanceReport"]

log = get_logger(__name__)

DECAY_Z = 2.576
"""Accuracy decay needs the window's upper 99.5 % Wilson bound under the bar (checked every few seconds)."""
CHANGE_DATE_SCORE = 0.5
"""An excursion of the error CUSUM at half its threshold or more dates an accuracy decay's change."""


PerformanceConfig = PerformanceSettings
"""The monitor's settings are the config's ``performance`` section (one definition, in the kernel)."""


@dataclass
class PerformanceReport:
    """One check: labelled metrics per source, the label-free estimate, prediction drift, and the breaches.

    ``breaches`` maps ``(kind, target)`` to ``(severity, evidence)``: what
    :meth:`controllers.monitors.data.DataAlerts.apply` opens, escalates or (when absent) clears.
    """

    at: float
    sources: dict[str, dict[str, Any]]
    estimate: dict[str, Any] | None
    concept_drift_at: float | None
    breaches: dict[tuple[str, str], tuple[str, dict[str, Any]]] = field(default_factory=dict)
    prediction: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as the status page shows it (``performance`` in the controller's status)."""
        return {"checked_at": self.at, "labelled": self.sources, "estimated": self.estimate,
                "concept_drift_at": self.concept_drift_at, "prediction_drift": self.prediction}


class PerformanceMonitor:
    """Windows of labelled answers per source, a confidence window, and the error-stream test.

    Labels and confidences are added on the controller's event loop; :meth:`check` runs in a worker
    thread (it feeds and, the first time, calibrates the CUSUM). What the two share is handed over in
    thread-safe deques or under ``_pred_lock``; :meth:`reset` bumps a generation so that a check racing
    it drops what it built for the replaced versions.
    """

    def __init__(self, n_classes: int, cfg: PerformanceConfig, *, reference_accuracy: float | None = None,
                 state: Mapping[str, Any] | None = None) -> None:
        self.n_classes, self.cfg, self.reference_accuracy = n_classes, cfg, reference_accuracy
        self._y: dict[str, deque[int]] = {}
        self._p: dict[str, deque[np.ndarray]] = {}
        self._conf: deque[float] = deque(maxlen=cfg.confidence_window)
        # Prediction drift: the first answers since the versions started, then a sliding window of the latest
        # (confidence, predicted class; -1 where the class was not sent). Filled on the event loop, read by
        # check() in a worker thread: the lock keeps the two apart.
        self._pred_ref: list[tuple[float, int]] = []
        self._pred_win: deque[tuple[float, int]] = deque(maxlen=cfg.prediction_window)
        self._pred_lock = threading.Lock()
        self._ph = PageHinkley.from_settings(cfg)
        self._drift_at: float | None = None
        self._drift_evidence: dict[str, Any] = {}
        # The CUSUM's input, appended on the event loop and drained by check() in a worker thread
        # (deque append/popleft are thread-safe): (error, confidence, when the label arrived, when answered).
        self._pending: deque[tuple[float, float, float, float]] = deque()
        self._answered: deque[float] = deque(maxlen=20_000)  # answer times of the rows fed to the CUSUM
        self._label_ts: deque[float] = deque(maxlen=20_000)  # answer times of the ensemble's labelled rows
        self._baseline: list[int] = []
        self._baseline_conf: list[float] = []
        self._cusum: ErrorCusum | None = None
        self._cusum_state: dict[str, Any] | None = None
        self._generation = 0  # bumped by reset(), so a check() racing it drops what it built
        self._since: float | None = None  # answers before this came from versions replaced since
        if state:
            self._ph.load(state["page_hinkley"])
            self._drift_at = state.get("concept_drift_at")
            self._drift_evidence = dict(state.get("concept_drift") or {})
            self._baseline = [int(e) for e in state.get("error_baseline") or ()]
            self._baseline_conf = [float(c) for c in state.get("error_baseline_confidence") or ()]
            if len(self._baseline_conf) != len(self._baseline):  # a checkpoint from before confidences
                self._baseline, self._baseline_conf = [], []
            self._cusum_state = state.get("error_cusum")
            self._since = state.get("since")
            self._pred_ref = [(float(c), int(k)) for c, k in state.get("prediction_reference") or ()]

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint: test statistics, baselines and the prediction reference (not the label windows)."""
        cusum = self._cusum.state() if self._cusum is not None else self._cusum_state
        return {"page_hinkley": self._ph.to_dict(), "concept_drift_at": self._drift_at,
                "concept_drift": self._drift_evidence, "error_baseline": list(self._baseline),
                "error_baseline_confidence": list(self._baseline_conf), "error_cusum": cusum, "since": self._since,
                "prediction_reference": [list(p) for p in self._pred_ref]}

    def add_labelled(self, pairs: Sequence[Mapping[str, Any]], now: float) -> bool:
        """``pairs``: {"y": class index, "p": {source: probabilities}}; True if concept drift fired."""
        fired = False
        for pair in pairs:
            y = int(pair["y"])
            if not 0 <= y < self.n_classes:
                continue
            if self._since is not None and pair.get("ts") is not None and float(pair["ts"]) < self._since:
                continue  # answered by the versions replaced since: says nothing about the new ones
            for source, probs in pair["p"].items():
                p = np.asarray(probs, dtype=float)
                if p.shape != (self.n_classes,):
                    continue
                self._y.setdefault(source, deque(maxlen=self.cfg.label_window)).append(y)
                self._p.setdefault(source, deque(maxlen=self.cfg.label_window)).append(p)
                if source != ENSEMBLE:
                    continue
                error = float(p.argmax() != y)
                ts = pair.get("ts")
                answered = float(ts) if ts is not None else now
                self._label_ts.append(answered)
                if self.cfg.error_test == "cusum":
                    self._pending.append((error, float(p.max()), now, answered))
                elif self._ph.update(error):
                    self._drift_at, fired = now, True
                    self._drift_evidence = {"test": "page-hinkley", "delta": self.cfg.ph_delta,
                                            "threshold": self.cfg.ph_lambda}
        return fired

    def reset(self, since: float | None = None) -> None:
        """New versions serve: their windows, the confidence window and the error-stream test start over
        (an old version's errors say nothing about the new one's). ``since``: when they started serving;
        labels that arrive later for answers given before it are not counted."""
        self._since = since
        self._y.clear()
        self._p.clear()
        self._conf.clear()
        self._ph.reset()
        self._drift_at = None
        self._drift_evidence = {}
        self._pending.clear()
        self._baseline, self._baseline_conf = [], []
        self._cusum, self._cusum_state = None, None
        self._answered.clear()
        self._label_ts.clear()
        with self._pred_lock:
            self._pred_ref, self._pred_win = [], deque(maxlen=self.cfg.prediction_window)
        self._generation += 1

    def add_confidence(self, values: Sequence[float], predicted: Sequence[int] | None = None) -> None:
        """Every answer's top-class confidence and (aligned, optional) predicted class."""
        conf = [float(v) for v in values]
        self._conf.extend(conf)
        classes = [int(k) for k in predicted] if predicted is not None and len(predicted) == len(conf) else \
            [-1] * len(conf)
        with self._pred_lock:
            room = max(0, self.cfg.prediction_reference - len(self._pred_ref))
            self._pred_ref.extend(zip(conf[:room], classes[:room]))
            self._pred_win.extend(zip(conf[room:], classes[room:]))

    def _prediction_drift(self) -> dict[str, Any]:
        """The latest window of outputs against the reference ones; ``drifted`` when both significant and
        large (PSI): thousands of answers make a negligible shift significant."""
        with self._pred_lock:
            ref, win = list(self._pred_ref), list(self._pred_win)
        out: dict[str, Any] = {"reference_answers": len(ref), "window_answers": len(win)}
        if len(ref) < self.cfg.prediction_reference or len(win) < self.cfg.prediction_window:
            return {**out, "drifted": False, "outputs": {}}
        r, w = np.asarray(ref), np.asarray(win)
        conf = numeric_drift(r[:, 0], w[:, 0])
        outputs = {"confidence": {"test": "ks", "p_value": conf["p_value"], "psi": conf["psi"],
                                  "wasserstein_sd": conf["wasserstein_sd"]}}
        if (r[:, 1] >= 0).all() and (w[:, 1] >= 0).all():
            k = self.n_classes
            p = np.bincount(r[:, 1].astype(int), minlength=k)[:k] + 0.5
            q = np.bincount(w[:, 1].astype(int), minlength=k)[:k] + 0.5
            p, q = p / p.sum(), q / q.sum()
            chi = stats.chisquare(q * len(w), p * len(w))
            outputs["predicted_class"] = {"test": "chi2", "p_value": float(chi.pvalue),
                                          "psi": psi(p, q),
                                          "shares": [round(float(x), 4) for x in q],
                                          "reference_shares": [round(float(x), 4) for x in p]}
        alpha = self.cfg.prediction_alpha / len(outputs)
        drifted = [name for name, o in outputs.items() if o["p_value"] < alpha and o["psi"] >= self.cfg.prediction_psi]
        return {**out, "drifted": bool(drifted), "drifted_outputs": drifted, "outputs": outputs,
                "alpha_per_test": alpha, "psi_limit": self.cfg.prediction_psi}

    def labels(self, source: str = ENSEMBLE) -> int:
        """Labelled answers of ``source`` in its window (what a retrain could learn from, at most)."""
        return len(self._y.get(source, ()))

    def labels_since(self, since: float) -> int:
        """Labels of the ensemble's answers given at or after ``since`` (what a retrain since a change
        point would learn from)."""
        return sum(1 for t in list(self._label_ts) if t >= since)

    def _estimate(self, y: np.ndarray | None, probs: np.ndarray | None) -> dict[str, Any] | None:
        if not self._conf:
            return None
        conf = np.asarray(self._conf)
        out: dict[str, Any] = {"answers": int(len(conf)), "raw_confidence": float(conf.mean())}
        calibrated = conf
        if y is not None and len(y) >= self.cfg.min_labels:
            top = probs.max(axis=1)
            correct = (probs.argmax(axis=1) == y).astype(float)
            edges = np.linspace(0, 1, CAL_BINS + 1)
            lab_bins = np.clip(np.digitize(top, edges) - 1, 0, CAL_BINS - 1)
            # Histogram binning: each bin's observed accuracy, shrunk to its mean confidence when thin.
            table = np.empty(CAL_BINS)
            for b in range(CAL_BINS):
                m = lab_bins == b
                k = float(m.sum())
                mid = (edges[b] + edges[b + 1]) / 2
                table[b] = (correct[m].sum() + 5 * (top[m].mean() if k else mid)) / (k + 5)
            calibrated = table[np.clip(np.digitize(conf, edges) - 1, 0, CAL_BINS - 1)]
            in_sample = table[lab_bins].mean()
            out["calibration"] = {"method": "histogram binning", "labels": int(len(y)),
                                  "ece_before": expected_calibration_error(correct, top),
                                  "estimate_error_on_labelled": float(abs(in_sample - correct.mean()))}
            out["reliability"] = "calibrated on labels"
        else:
            out["reliability"] = (f"uncalibrated: fewer than {self.cfg.min_labels} labels; the raw confidence "
                                  "is only as good as the model's calibration at training")
        out["accuracy"] = float(calibrated.mean())
        out["stderr"] = float(np.sqrt(np.sum(calibrated * (1 - calibrated))) / len(calibrated))
        return out

    def _feed_cusum(self) -> None:
        """Drain the labels that arrived since the last check into the baseline, then the CUSUM."""
        generation = self._generation
        items: list[tuple[float, float, float, float]] = []
        while self._pending:
            items.append(self._pending.popleft())
        if not items:
            return
        errors = np.array([e for e, _, _, _ in items])
        confidence = np.array([c for _, c, _, _ in items])
        times = [t for _, _, t, _ in items]
        answered = [a for _, _, _, a in items]
        cusum = self._cusum
        if cusum is None:
            # The baseline: the serving versions' own error rate on live labels (it needs both outcomes),
            # per confidence bin.
            take = 0
            while take < len(errors) and not self._baseline_ready():
                self._baseline.append(int(errors[take]))
                self._baseline_conf.append(float(confidence[take]))
                take += 1
            errors, confidence, times, answered = errors[take:], confidence[take:], times[take:], answered[take:]
            if not self._baseline_ready():
                keep = 10 * self.cfg.error_baseline_labels  # a model that never errs: bounded memory
                del self._baseline[:max(0, len(self._baseline) - keep)]
                del self._baseline_conf[:max(0, len(self._baseline_conf) - keep)]
                return
            cusum = ErrorCusum(np.asarray(self._baseline, dtype=float), ErrorCusumConfig.from_settings(self.cfg),
                               baseline_confidence=np.asarray(self._baseline_conf))
            if self._cusum_state:
                try:
                    cusum.restore(self._cusum_state)
                except Exception:  # a checkpoint of another shape: start the statistics over
                    log.warning("the error CUSUM's checkpoint does not fit its configured designs; its "
                                "statistics start over from the baseline", exc_info=True)
            if generation != self._generation:
                return  # new versions arrived while this was being built
            self._cusum, self._cusum_state = cusum, None
        if not len(errors):
            return
        cusum.update(errors, confidence)
        self._answered.extend(answered)
        if cusum.alarm and generation == self._generation:
            a = cusum.alarms[-1]
            first = cusum.labels_seen - len(errors)
            self._drift_at = times[min(len(times) - 1, max(0, a.index - first))]
            # When the rows that began the rise were answered: a retrain should learn from them on.
            change_at = self._answered_at(cusum, a.change_index)
            self._drift_evidence = {
                "test": "cusum", "statistic": a.statistic, "score": round(a.score, 3),
                "labels_since_change": a.index - a.change_index + 1, "change_at": change_at,
                "baseline_error_rate": round(cusum.baseline_rate, 4), "baseline_labels": cusum.n_baseline,
                "false_alarms_per_10k": self.cfg.error_false_alarms_per_10k}

    def _answered_at(self, cusum: ErrorCusum, index: int) -> float | None:
        """When the answer behind the CUSUM's label ``index`` was given (None if no longer remembered)."""
        answered = list(self._answered)
        oldest = cusum.labels_seen - len(answered)
        return answered[max(0, index - oldest)] if answered else None

    def _dated_change(self) -> dict[str, Any]:
        """The error CUSUM's running excursion as a change date, when it carries real evidence.

        Accuracy decay from the labelled window often fires before the CUSUM crosses; without a date a
        retrain would learn from the whole lookback window, mostly the old concept."""
        cusum = self._cusum
        exc = cusum.excursion() if cusum is not None else None
        if exc is None or exc[1] < CHANGE_DATE_SCORE:
            return {}
        change_at = self._answered_at(cusum, exc[0])
        return {} if change_at is None else {"change_at": change_at, "change_score": round(exc[1], 3)}

    def _baseline_ready(self) -> bool:
        n, k = len(self._baseline), sum(self._baseline)
        return n >= self.cfg.error_baseline_labels and 0 < k < n

    def check(self, now: float) -> PerformanceReport:
        """Metrics, estimate, prediction drift and breaches now (run off the event loop: see the class)."""
        if self.cfg.error_test == "cusum":
            self._feed_cusum()
        sources: dict[str, dict[str, Any]] = {}
        for source, ys in self._y.items():
            if len(ys) >= 1:
                sources[source] = classification_metrics(np.asarray(ys), np.stack(self._p[source]))
        ey = np.asarray(self._y[ENSEMBLE]) if ENSEMBLE in self._y else None
        ep = np.stack(self._p[ENSEMBLE]) if ENSEMBLE in self._p else None
        report = PerformanceReport(at=now, sources=sources, estimate=self._estimate(ey, ep),
                                   concept_drift_at=self._drift_at, prediction=self._prediction_drift())
        if report.prediction and report.prediction["drifted"]:
            pd = report.prediction
            report.breaches[(AlertKind.PREDICTION_DRIFT, ENSEMBLE)] = (Severity.WARN, {
                "outputs": {n: {k: (round(v, 6) if isinstance(v, float) else v) for k, v in pd["outputs"][n].items()}
                            for n in pd["drifted_outputs"]},
                "reference_answers": pd["reference_answers"], "window_answers": pd["window_answers"]})
        ens = sources.get(ENSEMBLE)
        # Significantly below the bar, not merely below it: a window of a hundred labels is off by ±4 points
        # at 85 % accuracy, and the reference (the best member's validation accuracy) flatters itself.
        upper = wilson_upper(ens["accuracy"], ens["labels"], DECAY_Z) if ens else 1.0
        if (ens and ens["labels"] >= self.cfg.min_labels and self.reference_accuracy is not None
                and upper < self.reference_accuracy - self.cfg.accuracy_drop):
            report.breaches[(AlertKind.ACCURACY_DECAY, ENSEMBLE)] = (Severity.ACT, {
                "accuracy": round(ens["accuracy"], 4), "reference_accuracy": round(self.reference_accuracy, 4),
                "labels": ens["labels"], "limit_drop": self.cfg.accuracy_drop,
                "accuracy_upper_bound": round(upper, 4), **self._dated_change()})
        if self._drift_at is not None and now - self._drift_at < 60.0:
            report.breaches[(AlertKind.CONCEPT_DRIFT, ENSEMBLE)] = (Severity.ACT, {
                **self._drift_evidence, "fired_at": self._drift_at,
                **({"accuracy": round(ens["accuracy"], 4)} if ens else {})})
        return report
