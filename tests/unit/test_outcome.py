"""The monitoring outcome rules and the retraining cooldown (pure functions)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from include.mlops.monitoring.outcome import (
    DRIFT,
    HEALTHY,
    INSUFFICIENT_DATA,
    SLO_BREACH,
    UnknownStatusError,
    cooldown,
    decide,
)

T0 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


def slo(status: str) -> dict[str, Any]:
    return {"status": status, "figures": {}, "breaches": ["p95_ms 180 > 100"] if status == "breach" else []}


def drift(status: str, drifted: bool = False) -> dict[str, Any]:
    return {"status": status, "drifted": drifted, "score": 0.4 if drifted else 0.01}


@pytest.mark.parametrize(
    ("slo_result", "drift_result", "expected"),
    [
        (slo("ok"), drift("ok"), [HEALTHY]),
        (slo("insufficient_data"), drift("ok"), [INSUFFICIENT_DATA]),
        (slo("ok"), drift("insufficient_data"), [INSUFFICIENT_DATA]),
        (slo("insufficient_data"), drift("insufficient_data"), [INSUFFICIENT_DATA]),
        (None, drift("ok"), [INSUFFICIENT_DATA]),
        (slo("ok"), None, [INSUFFICIENT_DATA]),
        (slo("breach"), drift("ok"), [SLO_BREACH]),
        (slo("ok"), drift("ok", drifted=True), [DRIFT]),
        (slo("breach"), drift("ok", drifted=True), [SLO_BREACH, DRIFT]),
        (slo("breach"), drift("insufficient_data"), [SLO_BREACH, INSUFFICIENT_DATA]),
        (slo("insufficient_data"), drift("ok", drifted=True), [DRIFT, INSUFFICIENT_DATA]),
    ],
)
def test_decide(slo_result: Any, drift_result: Any, expected: list[str]) -> None:
    assert decide(slo_result, drift_result) == expected


def test_insufficient_drift_data_never_reports_drift_or_healthy() -> None:
    # A drift result without enough rows cannot claim drift even if a flag says so.
    assert decide(slo("ok"), drift("insufficient_data", drifted=True)) == [INSUFFICIENT_DATA]


@pytest.mark.parametrize(("slo_result", "drift_result"), [({"status": "healthy"}, drift("ok")), (slo("ok"), {})])
def test_unknown_status_is_a_contract_error(slo_result: Any, drift_result: Any) -> None:
    with pytest.raises(UnknownStatusError, match="expected one of"):
        decide(slo_result, drift_result)


def test_first_request_is_allowed() -> None:
    verdict = cooldown(None, at=T0, period=DAY, run_id="scheduled__a")
    assert verdict.allowed and verdict.last_request_at is None


def test_two_detections_inside_the_cooldown_request_exactly_once() -> None:
    requests = []
    last = None
    for hour, run_id in enumerate(["scheduled__10", "scheduled__11", "scheduled__12"]):
        at = T0 + dt.timedelta(hours=hour)
        verdict = cooldown(last, at=at, period=DAY, run_id=run_id)
        if verdict.allowed:
            last = {"requested_at": at.isoformat(), "monitor_run_id": run_id}
            requests.append(run_id)
    assert requests == ["scheduled__10"]
    held = cooldown(last, at=T0 + dt.timedelta(hours=1), period=DAY, run_id="scheduled__11")
    assert not held.allowed
    assert held.ends_at == T0 + DAY
    assert (T0 + DAY).isoformat() in held.message


def test_a_detection_after_the_cooldown_requests_again() -> None:
    last = {"requested_at": T0.isoformat(), "monitor_run_id": "scheduled__10"}
    assert cooldown(last, at=T0 + DAY, period=DAY, run_id="scheduled__x").allowed
    assert not cooldown(last, at=T0 + DAY - dt.timedelta(seconds=1), period=DAY, run_id="scheduled__x").allowed


def test_an_older_window_rerun_inside_the_cooldown_is_held_back() -> None:
    last = {"requested_at": T0.isoformat(), "monitor_run_id": "scheduled__10"}
    assert not cooldown(last, at=T0 - dt.timedelta(hours=2), period=DAY, run_id="scheduled__08").allowed


def test_a_rerun_of_the_requesting_run_may_request_again() -> None:
    last = {"requested_at": T0.isoformat(), "monitor_run_id": "scheduled__10"}
    assert cooldown(last, at=T0, period=DAY, run_id="scheduled__10").allowed


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        cooldown(None, at=dt.datetime(2026, 1, 1), period=DAY)
