"""What a monitoring run concludes, and whether a drift detection may request a retraining run.

Pure functions of the SLO and drift results (the dicts of
:func:`include.mlops.monitoring.slo.measure_slo` and
:func:`include.mlops.monitoring.drift.check_drift`) and of times taken from
the monitoring run, so that the rules are unit-tested without Airflow,
Prometheus or a model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CooldownDecision:
    """Whether a retraining request is allowed at ``at``, and if not, until when it is held back."""

    allowed: bool
    at: dt.datetime
    last_request_at: dt.datetime | None
    ends_at: dt.datetime | None

    @property
    def message(self) -> str:
        if self.last_request_at is None:
            return "no retraining was requested before"
        if self.allowed:
            return f"the last retraining request ({self.last_request_at.isoformat()}) is outside the cooldown"
        assert self.ends_at is not None
        return (
            f"a retraining run was requested at {self.last_request_at.isoformat()}; "
            f"the cooldown ends at {self.ends_at.isoformat()}"
        )


def cooldown(
    last_request: Mapping[str, Any] | None,
    *,
    at: dt.datetime,
    period: dt.timedelta,
    run_id: str | None = None,
) -> CooldownDecision:
    """Whether the monitoring run ``run_id`` at time ``at`` may request a retraining run.

    ``last_request`` is the record of the last request (``requested_at`` ISO
    time, ``monitor_run_id``), or None.  One drift episode requests one
    retraining: a request within ``period`` of the last one (before or after
    it, so a rerun of an older window cannot request again either) is held
    back.  A rerun of the run that made the last request may request again:
    its earlier event is the same request.
    """
    if at.tzinfo is None:
        raise ValueError(f"cooldown time {at!r} has no time zone")
    if not last_request:
        return CooldownDecision(True, at, None, None)
    last_at = dt.datetime.fromisoformat(str(last_request["requested_at"]))
    ends_at = last_at + period
    if run_id is not None and last_request.get("monitor_run_id") == run_id:
        return CooldownDecision(True, at, last_at, ends_at)
    return CooldownDecision(abs(at - last_at) >= period, at, last_at, ends_at)
