"""Whether an SLO breach requests a rollback of ``stable``, and to which version: at most one per breach episode.

With ``monitor.rollback_on_slo_breach`` on, the monitor's ``request_rollback``
task asks the rollback DAG (``rollback__<name>``) to put ``stable`` back on
the version it named before (:func:`include.mlops.registry.previous_version.previous_version`).
:func:`decide_rollback` is a pure function of the label's audit log, the
requests already made and this run.  In order, no rollback is requested when:

1. the run is a backfill (it measures the past; what serves now is another matter);
2. the label names no version;
3. the current stable version was itself put there by a rollback within the
   cooldown (``monitor.cooldown_hours``, before or after this window): the
   breach outlived a rollback, so a person looks, instead of the monitor
   bouncing between versions;
4. a rollback was requested within the cooldown (the requested run may not
   have moved the label yet, or was refused): one request per episode;
5. there is no previous version (the current one was the first).

A rerun of a run that already requested asks again with the same
``version`` and ``reason``: the Airflow side names the rollback run after the
monitor run, so the second ask finds that run and triggers nothing.

Requests are recorded (before the rollback DAG is triggered) in
``monitoring/<name>/rollback_requests.json``, in the format of the retraining
requests (:func:`include.mlops.monitoring.retraining.append_request`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from include.mlops.registry.previous_version import is_rollback, last_move_to, previous_version

REQUESTS_FILE = "rollback_requests.json"
ROLLBACK_KIND = "rollback"
REQUEST, HOLD = "request", "hold"
MAX_REASON_CHARS = 500  # the rollback DAG's Param ``reason`` takes at most this many


@dataclass(frozen=True)
class RollbackDecision:
    """What an SLO breach leads to, and why (the sentence the task log and ``decision.json`` show)."""

    action: str  # REQUEST or HOLD
    reason: str
    current: int | None
    version: int | None = None  # the version to roll back to (REQUEST only)
    cooldown_ends_at: dt.datetime | None = None
    earlier_reason: str | None = None  # a rerun's: the reason its run already requested with

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "current": self.current,
            "version": self.version,
            "cooldown_ends_at": self.cooldown_ends_at.isoformat() if self.cooldown_ends_at else None,
        }


def rollback_reason(run_id: str, slo: Mapping[str, Any]) -> str:
    """The rollback run's ``reason``: ``SLO breach in <run id>: <each breach, figure against objective>``."""
    breaches = "; ".join(slo.get("breaches") or []) or f"figures {slo.get('figures')}"
    text = f"SLO breach in {run_id}: {breaches}"
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _utc(value: Any) -> dt.datetime | None:
    """An ISO time with a zone as UTC; None when it is missing or unreadable."""
    try:
        at = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        return None
    if not isinstance(at, dt.datetime) or at.tzinfo is None:
        return None
    return at.astimezone(dt.UTC)


def _within(at: dt.datetime, then: dt.datetime | None, period: dt.timedelta) -> bool:
    return then is not None and abs(at - then) < period


def decide_rollback(
    *,
    current: int | None,
    moves: Sequence[Mapping[str, Any]],
    requests: Sequence[Mapping[str, Any]],
    run_id: str,
    at: dt.datetime,
    backfill: bool,
    period: dt.timedelta,
    label: str = "stable",
) -> RollbackDecision:
    """Whether this run's SLO breach requests a rollback of ``label`` (see the module docstring); pure.

    ``moves``: the model's label moves, oldest first; ``requests``: the
    rollback requests made, any order; ``at``: the end of this run's window.
    """
    at = at.astimezone(dt.UTC)
    if backfill:
        return RollbackDecision(HOLD, "backfill runs never request a rollback", current)
    mine = next((r for r in requests if r.get("monitor_run_id") == run_id), None)
    if mine is not None:
        return RollbackDecision(
            REQUEST,
            f"this run already requested a rollback to version {mine['version']} at {mine['requested_at']}; "
            "asked again with the same run id, so no second rollback run starts",
            mine.get("current"),
            version=int(mine["version"]),
            earlier_reason=mine.get("reason"),
        )
    if current is None:
        return RollbackDecision(HOLD, f"label {label!r} names no version: nothing to roll back", None)
    arrived = last_move_to(moves, label, current)
    if arrived is not None and is_rollback(arrived) and _within(at, _utc(arrived.get("at")), period):
        moved_at = _utc(arrived.get("at"))
        return RollbackDecision(
            HOLD,
            f"already rolled back: {label!r} was moved to version {current} by a rollback at {arrived.get('at')} "
            f"({arrived.get('reason')}); the breach outlived it, so a person decides (the cooldown ends at "
            f"{(moved_at + period).isoformat() if moved_at else '?'})",
            current,
            cooldown_ends_at=moved_at + period if moved_at else None,
        )
    recent = [r for r in requests if _within(at, _utc(r.get("requested_at")), period)]
    if recent:
        last = max(recent, key=lambda r: _utc(r.get("requested_at")) or at)
        ends = (_utc(last["requested_at"]) or at) + period
        return RollbackDecision(
            HOLD,
            f"cooldown: a rollback to version {last.get('version')} was requested at {last['requested_at']} "
            f"(monitor run {last.get('monitor_run_id')}); the cooldown ends at {ends.isoformat()}",
            current,
            cooldown_ends_at=ends,
        )
    previous = previous_version(moves, current, label)
    if previous.version is None:
        return RollbackDecision(HOLD, f"no previous version to roll back to: {previous.reason}", current)
    return RollbackDecision(
        REQUEST,
        f"{label!r} version {current} breached its SLOs; rolling back to version {previous.version}: {previous.reason}",
        current,
        version=previous.version,
    )
