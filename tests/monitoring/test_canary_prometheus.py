"""The canary measurements against a real Prometheus scraping route series whose values the test sets.

An in-test exporter (a prometheus_client collector behind a tiny HTTP server, in the text format the
model server writes) serves the route's per-track series under the names of
include/mlops/serving/metrics.py for three models: ``reg`` (one output: sums, squares, rows), ``clf``
(a classifier: rows per class) and ``bare`` (neither, as stock TF Serving).  Every series starts at a
large baseline, Prometheus scrapes it for a while, then one jump adds what the test feeds; the window
of one check spans the jump.  ``increase()`` extrapolates counts to the window's edges, so counts are
compared loosely and ratios (which one scrape's series share) exactly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from airflow_stack import free_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_stack import PrometheusStack, prometheus_stack

from include.mlops.config import CanaryConfig
from include.mlops.deploy.canary_analysis import Measurements, judge
from include.mlops.deploy.canary_metrics import SMD, TVD, measure_canary
from include.mlops.serving.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS_US,
    ROUTE_LATENCY,
    ROUTE_NONFINITE_ROWS,
    ROUTE_PREDICTED_CLASS,
    ROUTE_PREDICTION_ROWS,
    ROUTE_PREDICTION_VALUE_SQUARES,
    ROUTE_PREDICTION_VALUE_SUM,
    ROUTE_REQUESTS,
)

# Starts Prometheus and waits for a window of scrapes (~25 s).
pytestmark = pytest.mark.slow

INTERVAL_S = 10.0
BASELINE = 1000.0  # every series starts here, so increase() never extrapolates one series below zero
STATUSES = ("OK", "INVALID_ARGUMENT", "INTERNAL")
CLASSES = ("0", "1", "2", "3")
LE = tuple(float(f"{limit:.6g}") for limit in LATENCY_BUCKETS_US)  # the bounds as exported (6 digits)


class RouteExporter:
    """Counters and latency histograms under the route's names; the test adds to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self.latency: dict[tuple[str, str], tuple[np.ndarray, float]] = {}

    def add(self, name: str, amount: float, **labels: str) -> None:
        with self._lock:
            series = self.counters.setdefault(name, {})
            key = tuple(sorted(labels.items()))
            series[key] = series.get(key, 0.0) + amount

    def observe(self, model: str, track: str, micros: np.ndarray) -> None:
        counts = np.bincount(np.searchsorted(LE, micros, side="left"), minlength=len(LE) + 1)
        with self._lock:
            old, total = self.latency.get((model, track), (np.zeros(len(LE) + 1), 0.0))
            self.latency[(model, track)] = (old + counts, total + float(micros.sum()))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            for name, series in self.counters.items():
                metric = Metric(name, "route counter", "counter")
                for key, value in series.items():
                    metric.add_sample(name, dict(key), value)
                yield metric
            histogram = HistogramMetricFamily(ROUTE_LATENCY, "route latency", labels=["model_name", "track"])
            for (model, track), (counts, total) in self.latency.items():
                cumulative = np.cumsum(counts)
                buckets = [(f"{limit:.6g}", float(c)) for limit, c in zip(LATENCY_BUCKETS_US, cumulative, strict=False)]
                histogram.add_metric([model, track], [*buckets, ("+Inf", float(cumulative[-1]))], sum_value=total)
            yield histogram


def serve_exporter(exporter: RouteExporter) -> tuple[ThreadingHTTPServer, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{port}"


@dataclasses.dataclass(frozen=True)
class Fed:
    """What one track was fed in the jump."""

    ok: int
    failed: dict[str, int]
    nonfinite: int
    micros: np.ndarray
    outputs: np.ndarray | None = None  # one-output predictions
    classes: dict[str, int] | None = None  # rows per predicted class

    @property
    def requests(self) -> int:
        return self.ok + sum(self.failed.values())


def _rng_fed(seed: int, ok: int, failed: dict[str, int], nonfinite: int, median_us: float, **more: object) -> Fed:
    rng = np.random.default_rng(seed)
    return Fed(ok, failed, nonfinite, rng.lognormal(np.log(median_us), 0.4, ok + sum(failed.values())), **more)  # type: ignore[arg-type]


def _feed_baseline(exporter: RouteExporter, model: str) -> None:
    for track in ("stable", "canary"):
        for status in STATUSES:
            exporter.add(ROUTE_REQUESTS, BASELINE, model_name=model, track=track, status=status)
        exporter.add(ROUTE_NONFINITE_ROWS, BASELINE, model_name=model, track=track)
        exporter.observe(model, track, np.full(int(BASELINE), 5.0))  # all in the first bucket: every bucket > 0
        if model == "reg":
            exporter.add(ROUTE_PREDICTION_ROWS, BASELINE, model_name=model, track=track)
            exporter.add(ROUTE_PREDICTION_VALUE_SUM, -BASELINE, model_name=model, track=track)
            exporter.add(ROUTE_PREDICTION_VALUE_SQUARES, BASELINE, model_name=model, track=track)
        if model == "clf":
            for cls in CLASSES:
                exporter.add(ROUTE_PREDICTED_CLASS, BASELINE, model_name=model, track=track, **{"class": cls})


def _feed(exporter: RouteExporter, model: str, track: str, fed: Fed) -> None:
    labels = {"model_name": model, "track": track}
    exporter.add(ROUTE_REQUESTS, fed.ok, status="OK", **labels)
    for status, count in fed.failed.items():
        exporter.add(ROUTE_REQUESTS, count, status=status, **labels)
    exporter.add(ROUTE_NONFINITE_ROWS, fed.nonfinite, **labels)
    exporter.observe(model, track, fed.micros)
    if fed.outputs is not None:
        exporter.add(ROUTE_PREDICTION_ROWS, len(fed.outputs), **labels)
        exporter.add(ROUTE_PREDICTION_VALUE_SUM, float(fed.outputs.sum()), **labels)
        exporter.add(ROUTE_PREDICTION_VALUE_SQUARES, float((fed.outputs**2).sum()), **labels)
    for cls, count in (fed.classes or {}).items():
        exporter.add(ROUTE_PREDICTED_CLASS, count, **labels, **{"class": cls})


FEEDS: dict[str, dict[str, Fed]] = {
    "reg": {
        "stable": _rng_fed(
            1, 200, {"INVALID_ARGUMENT": 4}, 2, 2000.0, outputs=np.random.default_rng(11).normal(10.0, 2.0, 200)
        ),
        "canary": _rng_fed(
            2, 48, {"INTERNAL": 12}, 0, 3000.0, outputs=np.random.default_rng(12).normal(-11.0, 3.0, 48)
        ),
    },
    "clf": {
        "stable": _rng_fed(3, 100, {}, 0, 1500.0, classes={"0": 50, "1": 30, "2": 20}),
        "canary": _rng_fed(4, 30, {}, 0, 1600.0, classes={"0": 10, "1": 10, "3": 10}),
    },
    "bare": {"stable": _rng_fed(5, 80, {}, 0, 1000.0), "canary": _rng_fed(6, 25, {}, 0, 1100.0)},
}


@dataclasses.dataclass
class Window:
    prometheus: PrometheusStack
    end: dt.datetime

    def measure(self, model: str) -> Measurements:
        return measure_canary(self.prometheus.url, model, weight=25, interval_s=INTERVAL_S, end=self.end)


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Window]:
    exporter = RouteExporter()
    for model in FEEDS:
        _feed_baseline(exporter, model)
    server, target = serve_exporter(exporter)
    try:
        with prometheus_stack(tmp_path_factory.mktemp("canary") / "prometheus", model_servers=[target]) as prometheus:
            prometheus.wait_for_targets_up()
            time.sleep(INTERVAL_S * 0.7)  # baseline scrapes across the window's first part
            jump = time.time()
            for model, tracks in FEEDS.items():
                for track, fed in tracks.items():
                    _feed(exporter, model, track, fed)
            end = jump + INTERVAL_S * 0.3
            time.sleep(max(0.0, end - time.time()) + 1.5)  # until a scrape after the window's end is stored
            yield Window(prometheus, dt.datetime.fromtimestamp(end, dt.UTC))
    finally:
        server.shutdown()


def expected_p95_us(micros: np.ndarray) -> float:
    """Prometheus's histogram_quantile done by hand: linear within the bucket that holds the 95 % rank."""
    counts = np.bincount(np.searchsorted(LE, micros, side="left"), minlength=len(LE) + 1)
    cumulative = np.cumsum(counts)
    rank = 0.95 * cumulative[-1]
    b = int(np.argmax(cumulative >= rank))
    lower, below = (0.0, 0.0) if b == 0 else (LE[b - 1], cumulative[b - 1])
    return lower + (LE[b] - lower) * (rank - below) / counts[b]


def test_requests_error_ratio_latency_and_the_mean_difference_are_what_was_fed(window: Window) -> None:
    got = window.measure("reg")
    assert got.unavailable is None and got.problems == (), got
    fed = FEEDS["reg"]
    for track in ("stable", "canary"):
        figures, sent = getattr(got, track), fed[track]
        # increase() extrapolates the jump to the window's edges (at most ~1 scrape interval in 10 s).
        assert sent.requests <= figures.requests <= sent.requests * 1.25, (track, figures)
        expected_ratio = (sum(sent.failed.values()) + sent.nonfinite) / sent.requests
        assert figures.error_ratio == pytest.approx(expected_ratio, rel=1e-6)
        assert figures.p95_ms * 1000 == pytest.approx(expected_p95_us(sent.micros), rel=1e-6)
        true_p95 = np.percentile(sent.micros, 95)
        assert true_p95 / 1.8 < figures.p95_ms * 1000 < true_p95 * 1.8  # within one bucket's width
    stable, canary = fed["stable"].outputs, fed["canary"].outputs
    assert got.distance_method == SMD
    assert got.distance == pytest.approx(abs(canary.mean() - stable.mean()) / stable.std(), rel=1e-6)
    # 12/60 errors against 6/204 and a mean moved by ~10 std: a failed check.
    result = judge(got, CanaryConfig(interval_s=INTERVAL_S, min_requests=20))
    assert result.outcome == "fail", result.summary()
    assert {c.name for c in result.criteria if c.passed is False} == {"error_ratio", "prediction_distance"}


def test_the_class_shares_give_the_total_variation_distance(window: Window) -> None:
    got = window.measure("clf")
    stable, canary = FEEDS["clf"]["stable"].classes, FEEDS["clf"]["canary"].classes
    p = np.array([stable.get(c, 0) for c in CLASSES]) / sum(stable.values())
    q = np.array([canary.get(c, 0) for c in CLASSES]) / sum(canary.values())
    assert got.distance_method == TVD
    assert got.distance == pytest.approx(0.5 * np.abs(p - q).sum(), rel=1e-6)  # 0.5 * (1/6 + 1/30 + 0.2 + 1/3) = 11/30
    assert (got.stable.error_ratio, got.canary.error_ratio) == (0.0, 0.0)
    result = judge(got, CanaryConfig(interval_s=INTERVAL_S, min_requests=20, max_prediction_distance=0.2))
    assert result.outcome == "fail" and [c.name for c in result.criteria if c.passed is False] == [
        "prediction_distance"
    ]


def test_without_prediction_series_the_distance_is_not_measured_and_the_check_passes(window: Window) -> None:
    got = window.measure("bare")
    assert (got.distance, got.distance_method, got.problems) == (None, None, ())
    result = judge(got, CanaryConfig(interval_s=INTERVAL_S, min_requests=20))
    assert result.outcome == "pass", result.summary()
    assert "prediction distance not measured" in result.summary()


def test_a_model_prometheus_never_saw_is_inconclusive(window: Window) -> None:
    result = judge(window.measure("unknown_model"), CanaryConfig(interval_s=INTERVAL_S, min_requests=20))
    assert result.outcome == "inconclusive"
    assert result.reasons[:2] == (
        "stable: 0 requests in 10 s, fewer than min_requests (20)",
        "canary: 0 requests in 10 s, fewer than min_requests (20)",
    )


def test_prometheus_stopped_is_inconclusive_with_the_reason(window: Window) -> None:
    # Runs last in this module: it stops the module's Prometheus.
    process = window.prometheus.processes[-1]
    process.terminate()
    process.wait(timeout=15)
    got = window.measure("reg")
    assert got.unavailable is not None and "cannot be reached" in got.unavailable
    result = judge(got, CanaryConfig(interval_s=INTERVAL_S, min_requests=20))
    assert result.outcome == "inconclusive"
    assert result.reasons == (got.unavailable,)
    assert result.summary().startswith("step 25 %: inconclusive — Prometheus at http://127.0.0.1:")
