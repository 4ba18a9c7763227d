"""The Grafana dashboard and its provisioning, checked offline (Grafana itself is not available here).

That each expression runs on a real Prometheus and reads only exported metrics is test_promql.py's job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from include.mlops.serving.metrics import CANARY_WEIGHT, ROUTE_LATENCY, ROUTE_REQUESTS
from tests.monitoring.promql_sources import ROOT, dashboard_expressions, dashboards, metric_names

PROVISIONING = ROOT / "include" / "monitoring" / "grafana" / "provisioning"
DASHBOARD = "lifecycle.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return dashboards()[DASHBOARD]


def test_the_model_variable_selects_served_models_and_every_query_uses_it(dashboard: dict) -> None:
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "model" and variable["type"] == "query"
    assert variable["query"]["query"] == "label_values(mlops_served_version, model_name)"
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert 'model_name="$model"' in target["expr"], (panel["title"], target["expr"])


def test_the_dashboard_shows_traffic_errors_latency_versions_drift_and_the_canary(dashboard: dict) -> None:
    read = set().union(*(metric_names(e) for e in dashboard_expressions(dashboard, "diabetes").values()))
    assert {
        ":tensorflow:serving:request_count",
        "model_name:mlops_error_ratio:rate5m",
        "model_name:mlops_request_latency_p50_ms:5m",
        "model_name:mlops_request_latency_p95_ms:5m",
        "model_name:mlops_request_latency_p99_ms:5m",
        "mlops_served_version",
        "mlops_drift_score",
        "mlops_drift_threshold",
        "mlops_drift_feature_score",
        CANARY_WEIGHT,
        ROUTE_REQUESTS,
        f"{ROUTE_LATENCY}_bucket",
    } <= read


def test_panels_have_unique_ids_titles_descriptions_and_do_not_overlap(dashboard: dict) -> None:
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["title"] and p["description"] for p in panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"{panel['title']!r} overlaps another panel"
        cells |= mine


def test_every_query_uses_the_provisioned_datasource(dashboard: dict) -> None:
    (datasource,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    used = [dashboard["templating"]["list"][0]["datasource"]]
    used += [p["datasource"] for p in dashboard["panels"]]
    used += [t["datasource"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(d == {"type": "prometheus", "uid": datasource["uid"]} for d in used), used


def test_the_dashboard_provider_reads_the_folder_compose_mounts() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "mlops.yml").read_text())["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    mounts = [str(v) for v in compose["services"]["grafana"]["volumes"]]
    assert any(m.endswith(f"include/monitoring/grafana/dashboards:{provider['options']['path']}:ro") for m in mounts)


def test_the_metric_name_scanner_skips_functions_keywords_labels_and_durations() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (model_name, le) (rate(:tensorflow:serving:request_latency_bucket"
        '{model_name="a",API="Predict"}[5m]))) / 1000 > on (model_name) group_left max by (model_name) '
        "(mlops_drift_threshold) unless absent(up offset 5m)"
    )
    assert metric_names(expr) == {":tensorflow:serving:request_latency_bucket", "mlops_drift_threshold", "up"}
    assert Path(ROOT / "include" / "monitoring" / "grafana" / "dashboards" / DASHBOARD).is_file()
