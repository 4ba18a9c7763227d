"""What a monitoring run concludes (whether its drift requests retraining: :mod:`.retraining`).

Pure functions of the SLO and drift results (the dicts of
:func:`include.mlops.monitoring.slo.measure_slo` and
:func:`include.mlops.monitoring.drift.check_drift`) and of times taken from
the monitoring run, so that the rules are unit-tested without Airflow,
Prometheus or a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEALTHY = "healthy"
INSUFFICIENT_DATA = "insufficient_data"
SLO_BREACH = "slo_breach"
DRIFT = "drift"
# The order the outcomes are listed (and branched to) in.
OUTCOMES = (SLO_BREACH, DRIFT, INSUFFICIENT_DATA, HEALTHY)

SLO_STATUSES = ("ok", "insufficient_data", "breach")
DRIFT_STATUSES = ("ok", "insufficient_data")


class UnknownStatusError(ValueError):
    """A measurement result carries a status this module does not know (a contract violation)."""


def _status(result: Mapping[str, Any] | None, known: tuple[str, ...], what: str) -> str | None:
    if result is None:
        return None
    status = result.get("status")
    if status not in known:
        raise UnknownStatusError(f"the {what} result has status {status!r}; expected one of {', '.join(known)}")
    return str(status)


def decide(slo: Mapping[str, Any] | None, drift: Mapping[str, Any] | None) -> list[str]:
    """The outcomes of one monitoring window, a non-empty subset of :data:`OUTCOMES` in that order.

    ``healthy`` only when both measurements are conclusive and neither found a
    problem.  A measurement that is missing (``None``) or has too little data
    adds ``insufficient_data``, so the window is never reported healthy on
    evidence it does not have; a breach or a drift found by the other
    measurement is still reported beside it.
    """
    slo_status = _status(slo, SLO_STATUSES, "SLO")
    drift_status = _status(drift, DRIFT_STATUSES, "drift")
    found: set[str] = set()
    if slo_status == "breach":
        found.add(SLO_BREACH)
    if drift_status == "ok" and drift is not None and drift.get("drifted"):
        found.add(DRIFT)
    if slo_status in (None, "insufficient_data") or drift_status in (None, "insufficient_data"):
        found.add(INSUFFICIENT_DATA)
    if not found:
        found.add(HEALTHY)
    return [outcome for outcome in OUTCOMES if outcome in found]
