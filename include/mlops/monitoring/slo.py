"""Measure a served model against its SLOs, from Prometheus.

The figures are PromQL instant queries over the config's monitoring window
(``monitor.window_minutes``) on the metrics the model server exports under
TF Serving's names, for the model's ``serving_name``:

``requests``       increase of ``:tensorflow:serving:request_count`` over the window
``request_rate``   its per-second rate
``error_ratio``    the share of those requests whose ``status`` is not ``OK``
``p95_ms``/``p99_ms``  ``histogram_quantile`` of ``:tensorflow:serving:request_latency`` (microseconds,
                   successful ``Predict`` calls), in milliseconds

The query strings live in :data:`QUERY_TEMPLATES` and nowhere else; the result
reports the ones it ran, so an operator can paste them into Prometheus.

Outcome: a figure Prometheus cannot give (an error answer, an empty vector,
NaN) or fewer than ``slo.min_requests`` requests is ``insufficient_data``, never
``ok``; a figure beyond its objective is a ``breach`` with one sentence per
objective missed.  Prometheus that cannot be reached at all raises
:class:`PrometheusUnavailableError`: that is an outage of the monitoring, not a
fact about the model; the monitor records it as :func:`unmeasured`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from typing import Any

import httpx
import tenacity

from include.mlops.config import ModelConfig
from include.mlops.serving.metrics import REQUEST_COUNT, REQUEST_LATENCY

log = logging.getLogger(__name__)

PROMETHEUS_CONN_ID = "prometheus_default"
OK, INSUFFICIENT_DATA, BREACH = "ok", "insufficient_data", "breach"
FIGURES = ("requests", "request_rate", "error_ratio", "p95_ms", "p99_ms")

# One PromQL spelling per figure.  {count} and {latency} are the server's metric names, {sel} the
# model's label matcher and {window} the range ("60m").  The error count falls back to 0 when no
# request failed (a failing status has no series until one does), so the ratio is 0/total, and NaN
# (insufficient data) when there was no request at all.
_REQUESTS = "sum(increase({count}{{{sel}}}[{window}]))"
_QUANTILE = 'histogram_quantile({q}, sum by (le) (rate({latency}_bucket{{{sel},API="Predict"}}[{window}]))) / 1000'
QUERY_TEMPLATES: dict[str, str] = {
    "requests": _REQUESTS,
    "request_rate": "sum(rate({count}{{{sel}}}[{window}]))",
    "error_ratio": '(sum(increase({count}{{{sel},status!="OK"}}[{window}])) or vector(0)) / ' + _REQUESTS,
    "p95_ms": _QUANTILE.replace("{q}", "0.95"),
    "p99_ms": _QUANTILE.replace("{q}", "0.99"),
}

# Connection refused or DNS hiccups get a short retry; anything Prometheus answers is final.
_CONNECT_ATTEMPTS = 3
_CONNECT_WAIT_S = 0.5
_REQUEST_TIMEOUT_S = 15.0


class PrometheusUnavailableError(ConnectionError):
    """Prometheus gave no HTTP answer at all (refused, timed out, unknown host)."""


def model_selector(serving_name: str) -> str:
    """The label matcher ``model_name="<serving_name>"``, its value escaped as a PromQL string."""
    # PromQL string literals take Go's escapes; a serving name never needs them, but a quote must not end the matcher.
    escaped = serving_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'model_name="{escaped}"'


def slo_queries(serving_name: str, window_minutes: int) -> dict[str, str]:
    """The PromQL of every figure for one model and window (see :data:`QUERY_TEMPLATES`)."""
    selector = model_selector(serving_name)
    names = {"count": REQUEST_COUNT, "latency": REQUEST_LATENCY, "sel": selector, "window": f"{window_minutes}m"}
    return {name: template.format(**names) for name, template in QUERY_TEMPLATES.items()}


class PrometheusApi:
    """Instant queries against Prometheus's HTTP API; an answer that holds no number comes back as a problem."""

    def __init__(self, url: str, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=_REQUEST_TIMEOUT_S)
        self._owns_client = client is None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _get(self, promql: str, at: dt.datetime) -> httpx.Response:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(_CONNECT_ATTEMPTS),
            wait=tenacity.wait_fixed(_CONNECT_WAIT_S),
            retry=tenacity.retry_if_exception_type((httpx.ConnectError, httpx.ConnectTimeout)),
            reraise=True,
        )
        params = {"query": promql, "time": f"{at.timestamp():.3f}"}
        try:
            return retrying(self._client.get, f"{self.url}/api/v1/query", params=params)
        except httpx.TransportError as exc:
            raise PrometheusUnavailableError(
                f"Prometheus at {self.url} cannot be reached ({type(exc).__name__}: {exc}). "
                f"Check that Prometheus is running and that the Airflow Connection {PROMETHEUS_CONN_ID!r} "
                "points at its base URL (e.g. http://127.0.0.1:9090)."
            ) from exc

    def instant(self, promql: str, at: dt.datetime) -> tuple[float | None, str | None]:
        """``(value, None)`` for a one-sample vector holding a finite number, else ``(None, why not)``."""
        series, problem = self.vector(promql, at)
        if series is None:
            return None, problem
        if not series:
            return None, "no samples in the window (the metric has no series for this model yet)"
        if len(series) > 1:
            return None, f"expected one series, got {len(series)}"
        value = series[0][1]
        if not math.isfinite(value):
            return None, f"the value is {value} (no requests to compute it from in the window)"
        return value, None

    def vector(self, promql: str, at: dt.datetime) -> tuple[list[tuple[dict[str, str], float]] | None, str | None]:
        """``([(labels, value), ...], None)`` for an instant vector (values as Prometheus gives them, NaN
        included), else ``(None, why not)``.  Raises :class:`PrometheusUnavailableError` when there is no answer.
        """
        response = self._get(promql, at)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            return None, (
                f"{self.url} did not answer with Prometheus's query API (HTTP {response.status_code}: "
                f"{response.text[:200].strip()!r}); is this the Prometheus base URL?"
            )
        if body["status"] != "success":
            return None, (
                f"Prometheus refused the query (HTTP {response.status_code}, {body.get('errorType', 'error')}: "
                f"{body.get('error', '')})"
            )
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, list):
            return None, f"Prometheus answered a {data.get('resultType')!r}, not an instant vector"
        if response.status_code != 200:
            return None, f"Prometheus answered HTTP {response.status_code}"
        return [(dict(sample["metric"]), float(sample["value"][1])) for sample in result], None


def _breaches(figures: dict[str, float | None], config: ModelConfig) -> list[str]:
    slo = config.monitor.slo
    window = f"over the last {config.monitor.window_minutes} min"
    sentences = []
    ratio = figures["error_ratio"]
    if ratio is not None and ratio > slo.max_error_ratio:
        sentences.append(
            f"error ratio {ratio:.2%} is above the objective of {slo.max_error_ratio:.2%} "
            f"(monitor.slo.max_error_ratio) {window}."
        )
    for figure, objective, field in (
        ("p95_ms", slo.p95_latency_ms, "p95_latency_ms"),
        ("p99_ms", slo.p99_latency_ms, "p99_latency_ms"),
    ):
        value = figures[figure]
        if value is not None and value > objective:
            sentences.append(
                f"{figure[:3]} latency {value:.1f} ms is above the objective of {objective:g} ms "
                f"(monitor.slo.{field}) {window}."
            )
    return sentences


def measure_slo(
    prometheus_url: str,
    config: ModelConfig,
    *,
    end: dt.datetime | None = None,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """The model's SLO figures over the window ending at ``end`` (default now), and the verdict.

    Returns ``{"status", "figures", "slo", "breaches", "problems", "window_minutes", "queries"}``
    (see the module docstring).  Raises :class:`PrometheusUnavailableError` when Prometheus
    cannot be reached.
    """
    at = end if end is not None else dt.datetime.now(dt.UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    monitor = config.monitor
    queries = slo_queries(config.serving_name, monitor.window_minutes)
    figures: dict[str, float | None] = {}
    problems: list[str] = []
    api = PrometheusApi(prometheus_url, client)
    try:
        for name in FIGURES:
            value, problem = api.instant(queries[name], at)
            figures[name] = value
            if problem is not None:
                problems.append(f"{name}: {problem}")
    finally:
        api.close()

    requests = figures["requests"]
    breaches: list[str] = []
    if requests is None:
        status = INSUFFICIENT_DATA
    elif requests < monitor.slo.min_requests:
        status = INSUFFICIENT_DATA
        problems.append(
            f"requests: {requests:.0f} requests in the last {monitor.window_minutes} min, fewer than "
            f"monitor.slo.min_requests ({monitor.slo.min_requests}); too few to judge the SLOs"
        )
    else:
        breaches = _breaches(figures, config)
        # A missed objective is a fact even when another figure is missing; "ok" needs every figure.
        status = BREACH if breaches else INSUFFICIENT_DATA if problems else OK
    log.info(
        "SLO of %s at %s over %d min: %s %s%s",
        config.serving_name,
        at.isoformat(),
        monitor.window_minutes,
        status,
        {k: None if v is None else round(v, 4) for k, v in figures.items()},
        f" problems: {problems}" if problems else "",
    )
    return {
        "status": status,
        "figures": figures,
        "slo": dataclasses.asdict(monitor.slo),
        "breaches": breaches,
        "problems": problems,
        "window_minutes": monitor.window_minutes,
        "queries": queries,
    }


def unmeasured(config: ModelConfig, problem: str) -> dict[str, Any]:
    """The result of a window whose SLOs could not be measured (Prometheus down): ``insufficient_data``."""
    monitor = config.monitor
    return {
        "status": INSUFFICIENT_DATA,
        "figures": dict.fromkeys(FIGURES),
        "slo": dataclasses.asdict(monitor.slo),
        "breaches": [],
        "problems": [problem],
        "window_minutes": monitor.window_minutes,
        "queries": slo_queries(config.serving_name, monitor.window_minutes),
    }
