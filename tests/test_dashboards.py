"""The shipped Grafana dashboard and Prometheus config only use metrics raymedic records."""

from __future__ import annotations

import json
import re

import yaml

from raymedic.metrics import SPECS
from tests.conftest import REPO


def test_dashboard_queries_name_only_recorded_metrics():
    dash = json.loads((REPO / "cluster" / "grafana" / "raymedic-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"ray_(raymedic_\w+)", e)}
    assert used and used <= set(SPECS), sorted(used - set(SPECS))
    histograms = {n for n, spec in SPECS.items() if spec[0] == "histogram"}
    for e in exprs:  # quantiles only over histograms' buckets
        for m in re.findall(r"ray_(raymedic_\w+)_bucket", e):
            assert m in histograms
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_prometheus_config_scrapes_rays_service_discovery_file():
    cfg = yaml.safe_load((REPO / "cluster" / "prometheus.yml").read_text())
    files = cfg["scrape_configs"][0]["file_sd_configs"][0]["files"]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_metric_names_follow_the_naming_contract():
    for name, (kind, desc, tags, _) in SPECS.items():
        assert name.startswith("raymedic_") and desc and "model" in tags
        assert name.endswith("_total") == (kind == "counter")
        assert kind != "histogram" or name.endswith("_seconds")
