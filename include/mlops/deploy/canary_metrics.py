"""Measuring one canary check's window from Prometheus: the route's per-track series, as PromQL.

Every query is an instant query at the window's end over ``[interval_s]``, summed
``by (track)`` (``stable`` or ``canary``) for the model's ``serving_name``; the
strings live in :data:`QUERY_TEMPLATES`:

``requests``            increase of the route's request counter, all statuses
``failed_requests``     the same for ``status!="OK"``
``nonfinite_rows``      increase of the rows whose output was NaN or infinite (errors too)
``p95_us``              ``histogram_quantile(0.95, ...)`` over the increase of the latency buckets
``prediction_*``        ``delta()`` of the rows, the sum and the sum of squares of the outputs (one-output
                        models): a sum of outputs may fall, which ``increase()`` would take for a counter reset
``predicted_class``     increase of the rows per argmax class (classifiers)

``increase()`` and ``delta()`` extrapolate to the window's edges, so counts are
near what was sent; the ratios judged (error ratio, quantile, mean, std, class
shares) come from series of one scrape and are not changed by it.

The distance: for one output, the standardized mean difference
``|mean_canary - mean_stable| / std_stable``; for a classifier, the total
variation distance ``1/2 sum |p_canary(c) - p_stable(c)|`` between the class
shares.  Neither series for either track (a model without a numeric output): not
measured.  Stock TF Serving exports none of these series itself; on Kubernetes the
request logger in front of it does (:mod:`include.mlops.serving.proxy_metrics`).
Prometheus not answering, or answering an error, makes the whole
check inconclusive (:attr:`Measurements.unavailable`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping

import httpx

from include.mlops.deploy.canary_analysis import TRACKS, Measurements, TrackFigures
from include.mlops.monitoring.slo import PrometheusApi, PrometheusUnavailableError, model_selector
from include.mlops.serving.metrics import (
    ROUTE_LATENCY,
    ROUTE_NONFINITE_ROWS,
    ROUTE_PREDICTED_CLASS,
    ROUTE_PREDICTION_ROWS,
    ROUTE_PREDICTION_VALUE_SQUARES,
    ROUTE_PREDICTION_VALUE_SUM,
    ROUTE_REQUESTS,
)

SMD, TVD = "standardized mean difference", "total variation distance"

PREDICTION_MOMENTS = ("prediction_rows", "prediction_sum", "prediction_squares")


def _duration(seconds: float) -> str:
    """A PromQL duration: whole seconds as ``60s``, else milliseconds (PromQL durations are integers)."""
    return f"{seconds:.0f}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


def canary_queries(serving_name: str, interval_s: float) -> dict[str, str]:
    """The PromQL of every figure for one model and window, by name (see the module docstring)."""
    sel, window = model_selector(serving_name), _duration(interval_s)

    def by_track(function: str, metric: str, matchers: str = "") -> str:
        return f"sum by (track) ({function}({metric}{{{sel}{matchers}}}[{window}]))"

    return {
        "requests": by_track("increase", ROUTE_REQUESTS),
        "failed_requests": by_track("increase", ROUTE_REQUESTS, ',status!="OK"'),
        "nonfinite_rows": by_track("increase", ROUTE_NONFINITE_ROWS),
        "p95_us": f"histogram_quantile(0.95, sum by (track, le) (increase({ROUTE_LATENCY}_bucket{{{sel}}}[{window}])))",
        "prediction_rows": by_track("delta", ROUTE_PREDICTION_ROWS),
        "prediction_sum": by_track("delta", ROUTE_PREDICTION_VALUE_SUM),
        "prediction_squares": by_track("delta", ROUTE_PREDICTION_VALUE_SQUARES),
        "predicted_class": f"sum by (track, class) (increase({ROUTE_PREDICTED_CLASS}{{{sel}}}[{window}]))",
    }


# --------------------------------------------------------------------------- distances (pure)


@dataclasses.dataclass(frozen=True)
class Moments:
    """A track's one-output predictions over the window: row count, sum and sum of squares."""

    rows: float
    total: float
    squares: float

    def mean_and_std(self) -> tuple[float, float]:
        """Population mean and standard deviation; a variance lost to rounding (<= 0) is 0."""
        mean = self.total / self.rows
        second = self.squares / self.rows
        variance = second - mean * mean
        if variance <= 1e-12 * max(1.0, second):
            variance = 0.0
        return mean, math.sqrt(variance)


def standardized_mean_difference(stable: Moments, canary: Moments) -> float:
    """``|mean_canary - mean_stable| / std_stable``; with a constant stable (std 0): 0 if the means are equal,
    else infinity (the canary moved away from a constant)."""
    if not (stable.rows > 0 and canary.rows > 0):
        raise ValueError("each track needs at least one prediction row")
    stable_mean, stable_std = stable.mean_and_std()
    canary_mean, _ = canary.mean_and_std()
    difference = abs(canary_mean - stable_mean)
    if stable_std > 0:
        return difference / stable_std
    return 0.0 if difference <= 1e-12 * max(1.0, abs(stable_mean)) else math.inf


def total_variation_distance(stable: Mapping[str, float], canary: Mapping[str, float]) -> float:
    """``1/2 * sum over classes of |share_canary - share_stable|`` (a class one track lacks has share 0)."""
    stable_total, canary_total = sum(stable.values()), sum(canary.values())
    if not (stable_total > 0 and canary_total > 0):
        raise ValueError("each track needs at least one predicted class")
    classes = set(stable) | set(canary)
    return 0.5 * sum(abs(canary.get(c, 0.0) / canary_total - stable.get(c, 0.0) / stable_total) for c in classes)


# --------------------------------------------------------------------------- from Prometheus's answers

Vector = list[tuple[dict[str, str], float]]


def _per_track(vector: Vector, default: float) -> dict[str, float]:
    found = {labels.get("track", ""): value for labels, value in vector}
    return {track: found.get(track, default) for track in TRACKS}


def _classes(vector: Vector, track: str) -> dict[str, float]:
    return {labels.get("class", ""): value for labels, value in vector if labels.get("track") == track}


def _distance(answers: Mapping[str, Vector]) -> tuple[float | None, str | None, str | None]:
    """``(distance, method, problem)``; method None when there are no prediction series at all."""
    if answers["predicted_class"]:
        stable, canary = (_classes(answers["predicted_class"], track) for track in TRACKS)
        try:
            return total_variation_distance(stable, canary), TVD, None
        except ValueError as exc:
            return None, TVD, f"prediction distance: {exc} in the window"
    if not any(answers[name] for name in PREDICTION_MOMENTS):
        return None, None, None
    parts = [_per_track(answers[name], math.nan) for name in PREDICTION_MOMENTS]
    stable, canary = (Moments(*(part[track] for part in parts)) for track in TRACKS)
    values = [v for m in (stable, canary) for v in dataclasses.astuple(m)]
    if not all(math.isfinite(v) for v in values):
        return None, SMD, "prediction distance: a track has no prediction series (or a non-finite one) in the window"
    try:
        return standardized_mean_difference(stable, canary), SMD, None
    except ValueError as exc:
        return None, SMD, f"prediction distance: {exc} in the window"


def figures_from_answers(answers: Mapping[str, Vector], *, weight: int, end: float, interval_s: float) -> Measurements:
    """The :class:`Measurements` that Prometheus's answers (one vector per :func:`canary_queries` name) hold."""
    requests = _per_track(answers["requests"], 0.0)
    failed = _per_track(answers["failed_requests"], 0.0)
    nonfinite = _per_track(answers["nonfinite_rows"], 0.0)
    p95_us = _per_track(answers["p95_us"], math.nan)
    tracks = {
        track: TrackFigures(requests[track], failed[track] + nonfinite[track], p95_us[track] / 1000.0)
        for track in TRACKS
    }
    distance, method, problem = _distance(answers)
    return Measurements(
        weight=weight,
        end=end,
        interval_s=interval_s,
        stable=tracks["stable"],
        canary=tracks["canary"],
        distance=distance,
        distance_method=method,
        problems=() if problem is None else (problem,),
    )


def measure_canary(
    prometheus_url: str,
    serving_name: str,
    *,
    weight: int,
    interval_s: float,
    end: dt.datetime | None = None,
    client: httpx.Client | None = None,
) -> Measurements:
    """The window of ``interval_s`` seconds ending at ``end`` (default now), per track, for :func:`judge`.

    Never raises for Prometheus's sake: unreachable, timed out, an HTTP error or a query error gives
    :class:`Measurements` whose ``unavailable`` says why (the check is then inconclusive).
    """
    at = end if end is not None else dt.datetime.now(dt.UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    window = {"weight": weight, "end": at.timestamp(), "interval_s": interval_s}
    api = PrometheusApi(prometheus_url, client)
    answers: dict[str, Vector] = {}
    try:
        for name, promql in canary_queries(serving_name, interval_s).items():
            vector, problem = api.vector(promql, at)
            if vector is None:
                return Measurements(stable=None, canary=None, unavailable=f"{name}: {problem}", **window)
            answers[name] = vector
    except PrometheusUnavailableError as exc:
        return Measurements(stable=None, canary=None, unavailable=str(exc), **window)
    finally:
        api.close()
    return figures_from_answers(answers, **window)
