"""raymedic's Prometheus metrics, exported the Ray way (``ray.util.metrics``).

Metrics recorded in any Ray worker (gateway replicas, the controller actor) go
through the node's metrics agent to Ray's metrics endpoint on every node (Ray
adds the ``ray_`` prefix: ``raymedic_member_weight`` is scraped as
``ray_raymedic_member_weight``), which is what the Ray dashboard's Grafana
integration reads. ``prometheus_client`` would need a port per replica and a
scrape target per process; Ray's exporter already aggregates them per node.

Names follow ARCHITECTURE.md: prefix ``raymedic_``, ``_total`` counters,
``_seconds`` histograms, labels model/member/replica/action/outcome. Recording
never raises: a metrics hiccup must not fail a request or a healing step.
"""

from __future__ import annotations

from typing import Any, Mapping

from raymedic.logs import get_logger

__all__ = ["inc", "observe", "set_gauge", "outcome_label", "SPECS"]

log = get_logger(__name__)

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
RECOVERY_BUCKETS = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0]
STEP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]

# name → (kind, description, tag keys, buckets)
SPECS: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "raymedic_requests_total": ("counter", "HTTP requests answered by the gateway, by route and status code.",
                                ("model", "route", "code"), None),
    "raymedic_request_seconds": ("histogram", "Gateway time per predict request.", ("model",), LATENCY_BUCKETS),
    "raymedic_member_calls_total": ("counter", "Gateway calls to member replicas, by outcome "
                                    "(ok, error, dead, timeout, hedged).", ("model", "member", "replica", "outcome"),
                                    None),
    "raymedic_member_call_seconds": ("histogram", "Latency of successful member calls.",
                                     ("model", "member", "replica"), LATENCY_BUCKETS),
    "raymedic_replica_memory_bytes": ("gauge", "A member replica's resident memory as it read it on its last "
                                      "golden probe (the leak rule's signal).", ("model", "member", "replica"), None),
    "raymedic_replica_cpu_share": ("gauge", "A member replica's CPU time over wall time between its last two golden "
                                   "probes (1.0 = one core).", ("model", "member", "replica"), None),
    "raymedic_replica_open_fds": ("gauge", "A member replica's open file descriptors on its last golden probe.",
                                  ("model", "member", "replica"), None),
    "raymedic_replica_loop_lag_ms": ("gauge", "The worst lateness of a timer on a member replica's event loop "
                                     "between its last two golden probes.", ("model", "member", "replica"), None),
    "raymedic_replica_gpu_memory_bytes": ("gauge", "A GPU member replica's allocated GPU memory (torch's caching "
                                          "allocator) on its last golden probe.", ("model", "member", "replica"),
                                          None),
    "raymedic_replica_gpu_utilization_ratio": ("gauge", "The utilisation (0..1) of a GPU member replica's device "
                                               "as NVML read it on the replica's last golden probe.",
                                               ("model", "member", "replica"), None),
    "raymedic_replica_gpu_healthy": ("gauge", "1 when a GPU member replica's last GPU reading was healthy, 0 when "
                                     "it reported a fault (a CUDA error, a failed NVML read, ECC errors).",
                                     ("model", "member", "replica"), None),
    "raymedic_gpu_node_faults": ("gauge", "GPU faults counted on a node within controller.gpu_node_window_s "
                                 "(the drain rule's count).", ("model", "node"), None),
    "raymedic_gpu_node_healthy": ("gauge", "1 when every GPU reading from a node's replicas was healthy (NVML read "
                                  "fine, no uncorrected ECC error), 0 otherwise.", ("model", "node"), None),
    "raymedic_replicas": ("gauge", "A deployment's replicas in Serve's view: kind=running, or kind=target (what "
                          "Serve's autoscaler wants; above running while scaling out).",
                          ("model", "deployment", "kind"), None),
    "raymedic_member_weight": ("gauge", "Ensemble weight the controller published.", ("model", "member"), None),
    "raymedic_healing_actions_total": ("counter", "Controller actions and what came of them.",
                                       ("model", "action", "outcome"), None),
    "raymedic_incidents_total": ("counter", "Incidents opened, by kind.", ("model", "kind"), None),
    "raymedic_open_incidents": ("gauge", "Incidents open now.", ("model",), None),
    "raymedic_incident_detect_seconds": ("histogram", ("Time from first evidence (the onset, where something "
                                         "dates it) to detection, every incident kind; cause: its diagnosed cause "
                                         "then."),
                                         ("model", "kind", "cause"), RECOVERY_BUCKETS),
    "raymedic_incident_recover_seconds": ("histogram", ("Time from detection to confirmed recovery (a data or "
                                          "model incident: to its clearing); cause: its diagnosed cause."),
                                          ("model", "kind", "cause"), RECOVERY_BUCKETS),
    "raymedic_controller_step_seconds": ("histogram", "One whole observe-decide-act-record step of the controller "
                                         "(the model checks included when they are due).",
                                         ("model",), STEP_BUCKETS),
    "raymedic_controller_phase_seconds": ("histogram", "One phase of a controller step (model, observe, decide, "
                                          "act, record).", ("model", "phase"), STEP_BUCKETS),
    "raymedic_controller_last_success_timestamp_seconds": ("gauge", "Unix time of the controller's last step in "
                                                           "which every phase succeeded (alert when it is old).",
                                                           ("model",), None),
    "raymedic_drift_psi": ("gauge", "Population stability index of a numeric feature's window.",
                           ("model", "feature"), None),
    "raymedic_drift_js": ("gauge", "Jensen-Shannon distance of a categorical feature's window.",
                          ("model", "feature"), None),
    "raymedic_drift_p_adjusted": ("gauge", "Drift test p-value after Benjamini-Hochberg.", ("model", "feature"),
                                  None),
    "raymedic_feature_missing_rate": ("gauge", "Share of missing values in the window.", ("model", "feature"), None),
    "raymedic_accuracy": ("gauge", "Accuracy on the recent labelled window.", ("model", "source"), None),
    "raymedic_estimated_accuracy": ("gauge", "Label-free accuracy estimate from the ensemble's confidence.",
                                    ("model",), None),
    "raymedic_prediction_psi": ("gauge", "PSI of the ensemble's recent outputs against its first ones since the "
                                "serving versions started (output: top-class confidence or predicted class).",
                                ("model", "output"), None),
    "raymedic_disk_free_bytes": ("gauge", "Free bytes of a filesystem the service writes to (volume: storage, "
                                 "the one holding storage_path; ray_dir, Ray's session directory on the "
                                 "controller's node).", ("model", "volume"), None),
    "raymedic_disk_free_ratio": ("gauge", "Free share (0-1) of that filesystem.", ("model", "volume"), None),
    "raymedic_disk_time_to_floor_seconds": ("gauge", "Forecast seconds until that filesystem's free share reaches "
                                            "controller.disk_alert_free_fraction (-1: not falling steadily).",
                                            ("model", "volume"), None),
    "raymedic_prediction_log_bytes": ("gauge", "Bytes of the prediction and feedback logs under storage_path.",
                                      ("model", "log"), None),
    "raymedic_prediction_log_files": ("gauge", "Parquet parts of the prediction and feedback logs.",
                                      ("model", "log"), None),
    "raymedic_node_cpu_share": ("gauge", "CPU its own processes (its raylet and everything under it) used, as a "
                                "share of the cores the node may use (above 1: more than its share of a shared "
                                "host).", ("model", "node"), None),
    "raymedic_node_memory_used_ratio": ("gauge", "Used share (0-1) of the node's memory.", ("model", "node"), None),
    "raymedic_node_memory_threshold": ("gauge", "The memory-monitor threshold the node's raylet runs with "
                                       "(RAY_memory_usage_threshold): past it Ray kills workers.", ("model", "node"), None),
    "raymedic_node_pressure": ("gauge", "1 while the node is under sustained memory or CPU pressure, else 0.",
                               ("model", "node"), None),
    "raymedic_prediction_log_writable": ("gauge", "1 while a gateway replica's last prediction-log flush "
                                         "succeeded, 0 while writes fail (a full disk); requests are answered "
                                         "either way.", ("model", "replica"), None),
    "raymedic_review_queued_total": ("counter", "Answers queued for review (top-class probability below "
                                     "review.threshold), counted by the gateway replica that gave them: its rate is "
                                     "the review rate.", ("model",), None),
    "raymedic_review_cleared_total": ("counter", "Review items cleared by a label sent through :feedback, counted "
                                      "by the gateway replica that took the label.", ("model",), None),
    "raymedic_review_dropped_total": ("counter", "Review items dropped because the queue was full "
                                      "(review.max_items; the oldest goes). Two replicas may both count one drop "
                                      "decided within one refresh.", ("model",), None),
    "raymedic_review_queue_size": ("gauge", "Answers waiting for review, as a gateway replica sees the queue (every "
                                   "replica's items merged from storage: take the max over replicas).",
                                   ("model", "replica"), None),
    "raymedic_review_oldest_age_seconds": ("gauge", "Age of the oldest answer waiting for review (0 when none), as a "
                                           "gateway replica sees the queue.", ("model", "replica"), None),
    "raymedic_prediction_log_dropped_rows_total": ("counter", "Prediction rows a gateway replica dropped because "
                                                   "the log could not be written and its buffer was full.",
                                                   ("model", "replica"), None),
}

_objects: dict[str, Any] = {}


def _metric(name: str) -> Any:
    m = _objects.get(name)
    if m is None:
        from ray.util import metrics

        kind, desc, tags, buckets = SPECS[name]
        if kind == "counter":
            m = metrics.Counter(name, description=desc, tag_keys=tags)
        elif kind == "gauge":
            m = metrics.Gauge(name, description=desc, tag_keys=tags)
        else:
            m = metrics.Histogram(name, description=desc, boundaries=buckets, tag_keys=tags)
        _objects[name] = m
    return m


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in tags.items()}


def inc(name: str, value: float = 1.0, **tags: Any) -> None:
    """Add ``value`` to a counter; never raises (a metrics hiccup must not fail a request or a step)."""
    try:
        if value:
            _metric(name).inc(value, tags=_tags(tags))
    except Exception:  # never let metrics break the caller
        log.debug("metric %s not recorded", name, exc_info=True)


def observe(name: str, value: float, **tags: Any) -> None:
    """Record one observation in a histogram; never raises."""
    try:
        _metric(name).observe(float(value), tags=_tags(tags))
    except Exception:
        log.debug("metric %s not recorded", name, exc_info=True)


def set_gauge(name: str, value: float, **tags: Any) -> None:
    """Set a gauge; never raises."""
    try:
        _metric(name).set(float(value), tags=_tags(tags))
    except Exception:
        log.debug("metric %s not recorded", name, exc_info=True)


def outcome_label(outcome: str | None) -> str:
    """``"error: ActorDiedError: ..."`` → ``"error"``: a bounded label set for Prometheus."""
    if not outcome:
        return "none"
    return outcome.split(":", 1)[0].strip().lower().replace(" ", "_")[:32]
