"""SLO measurement against a real Prometheus scraping a real model server fed by the traffic generator.

One server and one Prometheus serve the whole module.  Each scenario has its
own served model name (the same tiny SavedModel registered under several
names), so the traffic of one scenario never lands in another's window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from prometheus_stack import PrometheusStack, prometheus_stack
from serving.conftest import RunningServer, free_port, make_linear_model, register, serve

from include.mlops.config import ModelConfig, find_model_config
from include.mlops.monitoring.slo import (
    QUERY_TEMPLATES,
    PrometheusApi,
    PrometheusUnavailableError,
    measure_slo,
    slo_queries,
)
from include.mlops.monitoring.traffic import TrafficSummary, held_out_rows, send_traffic
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.serving.metrics import REQUEST_COUNT

# Module setup starts a model server and Prometheus and sends traffic (~15 s).
pytestmark = pytest.mark.slow

SCENARIOS = ("slo_normal", "slo_errors", "slo_few", "slo_idle")
WINDOW_MINUTES = 2
# Loose latency objectives for the scenarios that are not about latency: a busy shared CI machine must not
# turn "normal traffic" into a latency breach.
LOOSE_LATENCY = {"p95_latency_ms": 5000.0, "p99_latency_ms": 10000.0}


@dataclasses.dataclass
class Stack:
    server: RunningServer
    prometheus: PrometheusStack
    base: ModelConfig
    rows: np.ndarray
    started: dt.datetime

    def config(self, serving_name: str, **slo: float) -> ModelConfig:
        monitor = self.base.monitor
        return dataclasses.replace(
            self.base,
            serving_name=serving_name,
            monitor=dataclasses.replace(
                monitor,
                window_minutes=WINDOW_MINUTES,
                slo=dataclasses.replace(monitor.slo, min_requests=20, **{**LOOSE_LATENCY, **slo}),
            ),
        )

    def traffic(self, serving_name: str, requests: int, **options: float) -> TrafficSummary:
        """Send ``requests`` requests and wait until Prometheus has scraped the last of them."""
        summary = send_traffic(
            self.config(serving_name), self.server.url, requests=requests, duration=None, rows=self.rows, **options
        )
        self.prometheus.wait_for(f'sum({REQUEST_COUNT}{{model_name="{serving_name}"}}) >= {summary.sent}')
        return summary


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base_dir = tmp_path_factory.mktemp("slo")
    base = find_model_config("diabetes")
    registry = Registry(base_dir / "models")
    model = make_linear_model(base_dir / "linear", 1.0, n_features=len(base.features))
    for name in SCENARIOS:
        registry.set_label(name, "stable", register(registry, model, f"run-{name}", name))
    settings = ServerSettings(registry_root=registry.root, poll_seconds=0.1)
    with serve(settings) as server:
        host_port = server.url.removeprefix("http://")
        with prometheus_stack(base_dir / "prometheus", model_servers=[host_port]) as prometheus:
            prometheus.wait_for_targets_up()
            started = dt.datetime.now(dt.UTC)
            yield Stack(server, prometheus, base, held_out_rows(base), started)


@pytest.fixture(scope="module")
def normal_traffic(stack: Stack) -> TrafficSummary:
    """Three seconds of well-formed traffic to ``slo_normal`` (several scrapes, so increase() has samples)."""
    return stack.traffic("slo_normal", requests=60, rate=20, seed=1)


def test_normal_traffic_is_ok(stack: Stack, normal_traffic: TrafficSummary) -> None:
    with httpx.Client(timeout=10) as client:  # a caller's client is used as it is, and left open
        result = measure_slo(stack.prometheus.url, stack.config("slo_normal"), client=client)
        assert not client.is_closed

    assert result["status"] == "ok", result
    assert result["breaches"] == [] and result["problems"] == []
    figures = result["figures"]
    # increase() extrapolates over the samples it has, so the count is near, not equal to, what was sent.
    assert 0.5 * normal_traffic.sent <= figures["requests"] <= 2 * normal_traffic.sent
    assert figures["request_rate"] == pytest.approx(figures["requests"] / (WINDOW_MINUTES * 60))
    assert figures["error_ratio"] == 0.0
    assert 0 < figures["p95_ms"] <= figures["p99_ms"] < LOOSE_LATENCY["p99_latency_ms"]
    assert result["window_minutes"] == WINDOW_MINUTES
    assert result["slo"]["min_requests"] == 20 and result["slo"]["p95_latency_ms"] == 5000.0
    assert result["queries"] == slo_queries("slo_normal", WINDOW_MINUTES)


def test_a_tight_latency_objective_is_breached(stack: Stack, normal_traffic: TrafficSummary) -> None:
    result = measure_slo(stack.prometheus.url, stack.config("slo_normal", p95_latency_ms=0.001))

    assert result["status"] == "breach", result
    assert len(result["breaches"]) == 1
    assert result["breaches"][0].startswith(f"p95 latency {result['figures']['p95_ms']:.1f} ms is above")
    assert "0.001 ms (monitor.slo.p95_latency_ms) over the last 2 min" in result["breaches"][0]


def test_half_malformed_traffic_breaches_the_error_ratio(stack: Stack) -> None:
    summary = stack.traffic("slo_errors", requests=60, rate=20, errors=0.5, seed=2)
    assert 0.25 < summary.errors / summary.sent < 0.75

    result = measure_slo(stack.prometheus.url, stack.config("slo_errors"))

    assert result["status"] == "breach", result
    ratio = result["figures"]["error_ratio"]
    assert 0.2 < ratio < 0.8
    assert result["breaches"] == [
        f"error ratio {ratio:.2%} is above the objective of 1.00% (monitor.slo.max_error_ratio) over the last 2 min."
    ]


def test_a_model_without_traffic_has_insufficient_data(stack: Stack) -> None:
    result = measure_slo(stack.prometheus.url, stack.config("slo_idle"))

    # The server starts a served model's counters at 0, so Prometheus knows it had no requests:
    # 0 requests and no latency or error ratio to compute (NaN), which is too little to judge.
    assert result["status"] == "insufficient_data", result
    figures = result["figures"]
    assert (figures["requests"], figures["request_rate"]) == (0.0, 0.0), figures
    assert figures["error_ratio"] is None and figures["p95_ms"] is None and figures["p99_ms"] is None, figures
    assert result["breaches"] == []
    assert any(p.startswith("requests: 0 requests in the last") for p in result["problems"]), result["problems"]


def test_a_model_prometheus_has_no_series_of_is_insufficient_data(stack: Stack) -> None:
    # An empty result (a serving name no scraped server serves) is no evidence of health.
    result = measure_slo(stack.prometheus.url, stack.config("slo_never_served"))

    assert result["status"] == "insufficient_data", result
    assert result["figures"] == dict.fromkeys(QUERY_TEMPLATES)
    assert any(p.startswith("requests: no samples in the window") for p in result["problems"]), result["problems"]


def test_fewer_requests_than_the_minimum_are_insufficient_data(stack: Stack) -> None:
    stack.traffic("slo_few", requests=5, rate=2, seed=3)  # over 2 s: several scrapes see it

    result = measure_slo(stack.prometheus.url, stack.config("slo_few"))

    assert result["status"] == "insufficient_data", result
    assert 0 < result["figures"]["requests"] < 20
    assert any("fewer than monitor.slo.min_requests (20)" in p for p in result["problems"]), result["problems"]


def test_the_window_ends_at_end(stack: Stack, normal_traffic: TrafficSummary) -> None:
    before_any_traffic = stack.started - dt.timedelta(minutes=5)
    result = measure_slo(stack.prometheus.url, stack.config("slo_normal"), end=before_any_traffic)
    assert result["status"] == "insufficient_data", result


def test_an_unreachable_prometheus_raises_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailableError) as caught:
        measure_slo(url, find_model_config("diabetes"))
    message = str(caught.value)
    assert f"Prometheus at {url} cannot be reached (ConnectError" in message
    assert "Airflow Connection 'prometheus_default'" in message
    assert time.monotonic() - started < 10  # a short retry, not a long hang


@pytest.mark.parametrize("where", ["pushgateway", "unknown path"])
def test_a_url_that_is_not_prometheus_api_is_insufficient_data(stack: Stack, where: str) -> None:
    url = stack.prometheus.pushgateway_url if where == "pushgateway" else f"{stack.prometheus.url}/nothing"

    result = measure_slo(url, stack.config("slo_normal"))

    assert result["status"] == "insufficient_data", result
    assert set(result["figures"].values()) == {None}
    assert len(result["problems"]) == len(QUERY_TEMPLATES)
    assert f"{url} did not answer with Prometheus's query API (HTTP 404" in result["problems"][0]


def test_a_query_prometheus_refuses_is_a_problem_not_a_number(stack: Stack) -> None:
    api = PrometheusApi(stack.prometheus.url)
    try:
        value, problem = api.instant("sum(", dt.datetime.now(dt.UTC))
    finally:
        api.close()
    assert value is None
    assert problem is not None and problem.startswith("Prometheus refused the query (HTTP 400, bad_data:")
