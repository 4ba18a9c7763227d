"""LocalRoute: the canary weight in ``<registry>/<model>/route.json``, and waiting for a server to apply it."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.mlops.deploy.traffic_split import LocalRoute, RouteNotAppliedError, TrafficSplit
from include.mlops.serving.canary_weights import ROUTE_FILE
from include.mlops.serving.metrics import METRICS_PATH, ServingMetrics
from tests.serving.round_robin import http_server

MODEL = "diabetes"


@pytest.fixture
def route(tmp_path: Path) -> LocalRoute:
    (tmp_path / MODEL).mkdir()
    return LocalRoute(tmp_path)


def test_no_file_is_weight_zero_and_set_writes_the_file(route: LocalRoute) -> None:
    assert route.canary_weight(MODEL) == 0
    route.set_canary_weight(MODEL, 25)
    assert json.loads((route.root / MODEL / ROUTE_FILE).read_text()) == {"canary_weight": 25}
    assert route.canary_weight(MODEL) == 25
    route.set_canary_weight(MODEL, 0)  # 0 is written, not removed
    assert json.loads((route.root / MODEL / ROUTE_FILE).read_text()) == {"canary_weight": 0}
    assert route.canary_weight(MODEL) == 0
    route.set_canary_weight(MODEL, 100)
    assert route.canary_weight(MODEL) == 100
    assert [p.name for p in (route.root / MODEL).iterdir()] == [ROUTE_FILE]  # no temporary file left behind


@pytest.mark.parametrize("percent", [-1, 101, 2.5, "10", True, None])
def test_set_canary_weight_refuses_what_is_not_a_whole_percent(route: LocalRoute, percent: object) -> None:
    with pytest.raises(ValueError, match="whole percent from 0 to 100"):
        route.set_canary_weight(MODEL, percent)  # type: ignore[arg-type]
    assert not (route.root / MODEL / ROUTE_FILE).exists()


def test_set_canary_weight_needs_a_registered_model_and_a_valid_name(route: LocalRoute) -> None:
    with pytest.raises(FileNotFoundError, match="no model 'other'"):
        route.set_canary_weight("other", 10)
    with pytest.raises(ValueError, match="model name"):
        route.set_canary_weight("../escape", 10)


@pytest.mark.parametrize(
    "text", ["not json", "[25]", '{"weight": 25}', '{"canary_weight": 150}', '{"canary_weight": "25"}']
)
def test_a_malformed_file_reads_as_zero_with_a_warning(
    route: LocalRoute, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (route.root / MODEL / ROUTE_FILE).write_text(text)
    assert route.canary_weight(MODEL) == 0
    assert "canary route file ignored" in caplog.text


def test_local_route_is_a_traffic_split(route: LocalRoute) -> None:
    split: TrafficSplit = route
    split.set_canary_weight(MODEL, 5)
    assert split.canary_weight(MODEL) == 5


@contextlib.contextmanager
def metrics_server(metrics: ServingMetrics) -> Iterator[str]:
    """A bare HTTP server exposing ``metrics`` at the model server's metrics path."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = (200, metrics.exposition()) if self.path == METRICS_PATH else (404, b"")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Handler, "metrics") as url:
        yield url


def test_wait_applied_returns_once_the_gauge_holds_the_weight(route: LocalRoute) -> None:
    metrics = ServingMetrics()
    metrics.set_canary_weights({MODEL: 0, "other": 30})
    with metrics_server(metrics) as url:
        route.wait_applied(url, MODEL, 0, timeout_s=5, steady_s=0.2)  # the series says 0
        threading.Timer(0.3, metrics.set_canary_weights, [{MODEL: 30}]).start()
        start = time.monotonic()
        route.wait_applied(url, MODEL, 30, timeout_s=10, steady_s=0.3)
        assert 0.6 <= time.monotonic() - start < 5  # applied after 0.3 s, then held for 0.3 s
        metrics.set_canary_weights({})
        route.wait_applied(url, MODEL, 0, timeout_s=5, steady_s=0)  # no series is weight 0


def test_wait_applied_raises_a_timeout_that_says_what_it_saw(route: LocalRoute) -> None:
    metrics = ServingMetrics()
    metrics.set_canary_weights({MODEL: 10})
    with metrics_server(metrics) as url:
        start = time.monotonic()
        with pytest.raises(RouteNotAppliedError, match=r"canary weight of 50% for 'diabetes'.*last seen: 10") as info:
            route.wait_applied(url, MODEL, 50, timeout_s=0.5, steady_s=0)
        assert isinstance(info.value, TimeoutError)
        assert time.monotonic() - start < 5
    with pytest.raises(RouteNotAppliedError, match="last seen: no metrics"):
        route.wait_applied(url, MODEL, 50, timeout_s=0.3, steady_s=0)  # the server is gone
    with pytest.raises(ValueError, match="whole percent"):
        route.wait_applied(url, MODEL, 150)
