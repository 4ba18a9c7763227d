"""Every PromQL expression the project ships runs on a real Prometheus and reads only metrics that exist.

A real model server (tests/serving's tiny SavedModels) serves a version under ``stable`` and another
under ``canary``, with the canary route at 50 %, and answers a few requests on both tracks; a drift
sample is pushed to a real Pushgateway under the monitoring contract's names.
Prometheus (tests/prometheus_stack.py) scrapes both and evaluates the committed rules.  Then each
rule's and each dashboard panel's expression must succeed, and each metric name it reads must be
among the names Prometheus knows: a rule that names a metric nobody exports fails here.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from prometheus_stack import PrometheusStack, prometheus_stack

from include.mlops.deploy.traffic_split import LocalRoute
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.serving.metrics import ROUTE_REQUESTS
from tests.monitoring.promql_sources import (
    RULES,
    dashboard_expressions,
    dashboards,
    metric_names,
    rule_expressions,
    variable_metric_names,
)
from tests.serving.conftest import MODEL, N_FEATURES, make_linear_model, register, serve

FEATURES = ("age", "bmi")
CANARY_WEIGHT = 50


def push_drift_sample(pushgateway_url: str, version: int) -> None:
    """What the drift step pushes (job mlops_drift, grouping key model_name), with the contract's names."""
    registry = CollectorRegistry()
    score = Gauge("mlops_drift_score", "max feature PSI", ["model_name", "version"], registry=registry)
    feature = Gauge("mlops_drift_feature_score", "PSI", ["model_name", "version", "feature"], registry=registry)
    threshold = Gauge("mlops_drift_threshold", "PSI threshold", ["model_name"], registry=registry)
    rows = Gauge("mlops_drift_rows", "rows compared", ["model_name"], registry=registry)
    checked = Gauge("mlops_drift_last_check_timestamp_seconds", "last check", ["model_name"], registry=registry)
    detected = Gauge("mlops_drift_detected", "the tests' verdict", ["model_name"], registry=registry)
    detected.labels(MODEL).set(1)
    score.labels(MODEL, str(version)).set(0.31)
    for name, value in zip(FEATURES, (0.31, 0.02), strict=True):
        feature.labels(MODEL, str(version), name).set(value)
    threshold.labels(MODEL).set(0.2)
    rows.labels(MODEL).set(240)
    checked.labels(MODEL).set_to_current_time()
    push_to_gateway(pushgateway_url, job="mlops_drift", grouping_key={"model_name": MODEL}, registry=registry)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusStack]:
    base = tmp_path_factory.mktemp("promql")
    registry = Registry(base / "artifacts" / "models")
    version = register(registry, make_linear_model(base / "x1", 1.0), run="run-1")
    registry.set_label(MODEL, "stable", version)
    registry.set_label(MODEL, "canary", register(registry, make_linear_model(base / "x2", 2.0), run="run-2"))
    LocalRoute(registry.root).set_canary_weight(MODEL, CANARY_WEIGHT)
    settings = ServerSettings(
        registry_root=registry.root,
        poll_seconds=0.1,
        predlog_root=base / "artifacts",
        predlog_sample_rate=1.0,
        predlog_flush_seconds=0.5,
    )
    with (
        serve(settings) as server,
        prometheus_stack(
            base / "prometheus", model_servers=[server.url.removeprefix("http://")], rule_files=[RULES]
        ) as prometheus,
    ):
        LocalRoute(registry.root).wait_applied(server.url, MODEL, CANARY_WEIGHT, timeout_s=30, steady_s=0.3)
        push_drift_sample(prometheus.pushgateway_url, version)
        prometheus.wait_for_targets_up()  # a scrape before the requests, so rate() sees them arrive
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(20):  # both tracks answer some (50 %: all 20 on one track has odds 2**-19)
                ok = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[1.0] * N_FEATURES]})
                assert ok.status_code == 200, ok.text
            assert client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[1.0]]}).status_code == 400
        try:
            # Two scrapes with the requests in them, so rate() and the recording rules have something to show.
            prometheus.wait_for(f'model_name:mlops_request_latency_p95_ms:5m{{model_name="{MODEL}"}}', timeout=60)
            prometheus.wait_for(f'mlops_serving_prediction_log_rows{{model_name="{MODEL}"}}', timeout=60)
            prometheus.wait_for(f'sum(increase({ROUTE_REQUESTS}{{model_name="{MODEL}"}}[1m])) > 0', timeout=60)
            yield prometheus
        finally:
            print(prometheus.log_tail())


def known_names(stack: PrometheusStack) -> set[str]:
    answer = httpx.get(f"{stack.url}/api/v1/label/__name__/values", timeout=10).json()
    assert answer["status"] == "success", answer
    return set(answer["data"])


def unknown_names(expressions: dict[str, str], known: set[str]) -> dict[str, set[str]]:
    return {where: names for where, expr in expressions.items() if (names := metric_names(expr) - known)}


def failing(stack: PrometheusStack, expressions: dict[str, str]) -> dict[str, str]:
    answers = {where: stack.query(expr) for where, expr in expressions.items()}
    return {where: str(answer.get("error")) for where, answer in answers.items() if answer.get("status") != "success"}


@pytest.mark.slow
def test_every_rule_expression_runs_and_reads_only_exported_metrics(stack: PrometheusStack) -> None:
    rules = rule_expressions()
    assert rules
    assert failing(stack, rules) == {}
    known = known_names(stack)
    assert unknown_names(rules, known) == {}
    # Each recording rule of the served model produced a series from what the server exported.
    for where in rules:
        group, name = where.split("/")
        if group == f"mlops-{MODEL}" and ":" in name:
            assert stack.query(f'{name}{{model_name="{MODEL}"}}')["data"]["result"], f"{name} recorded nothing"
    # The drift sample above its pushed threshold fires the drift alert (pending or firing: it has no `for`).
    assert stack.wait_for(f'ALERTS{{alertname="MlopsDriftAboveThreshold",model_name="{MODEL}"}}')


@pytest.mark.slow
def test_every_dashboard_expression_runs_reads_exported_metrics_and_shows_data(stack: PrometheusStack) -> None:
    known = known_names(stack)
    for name, dashboard in dashboards().items():
        expressions = dashboard_expressions(dashboard, MODEL)
        assert expressions, name
        assert failing(stack, expressions) == {}, name
        assert unknown_names(expressions, known) == {}, name
        assert variable_metric_names(dashboard) <= known, name
        # A panel that shows nothing while everything it depicts exists reads the wrong labels.
        empty = [where for where, expr in expressions.items() if not stack.query(expr)["data"]["result"]]
        assert empty == [], f"{name}: panels with no data: {empty}"


@pytest.mark.slow
def test_a_metric_nobody_exports_is_reported(stack: PrometheusStack) -> None:
    # The check above would catch a typo in a rule: the same functions, fed one, name it.
    typo = {"mlops-diabetes/typo": 'sum by (model_name) (rate(:tensorflow:serving:request_cnt{model_name="x"}[5m]))'}
    assert failing(stack, typo) == {}  # PromQL accepts it: only the name check can tell
    assert unknown_names(typo, known_names(stack)) == {"mlops-diabetes/typo": {":tensorflow:serving:request_cnt"}}


@pytest.mark.slow
def test_the_canary_panels_show_the_weight_and_both_tracks(stack: PrometheusStack) -> None:
    expressions = dashboard_expressions(dashboards()["lifecycle.json"], MODEL)

    def answer(panel: str) -> dict[str, float]:
        return {
            r["metric"].get("track", ""): float(r["value"][1])
            for r in stack.query(expressions[panel])["data"]["result"]
        }

    assert answer("Canary weight/A") == {"": CANARY_WEIGHT}
    assert {"stable", "canary"} <= set(answer("Requests per track/A"))
    p95_ms = answer("p95 latency per track (ms)/A")
    assert set(p95_ms) == {"stable", "canary"} and all(0 < ms < 10_000 for ms in p95_ms.values()), p95_ms
