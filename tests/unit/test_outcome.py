"""The monitoring outcome rules (pure functions); the retraining rules are in test_retraining.py."""

from __future__ import annotations

from typing import Any

import pytest

from include.mlops.monitoring.outcome import (
    DRIFT,
    HEALTHY,
    INSUFFICIENT_DATA,
    SLO_BREACH,
    UnknownStatusError,
    decide,
)


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
