"""Whether a drift verdict becomes a retraining request: persistence, cooldown, and a loop that ends.

The monitor keeps two records per model under ``monitoring/<name>/`` on the
artifact root:

* ``drift_windows/<window end>.json``: one verdict per monitoring window,
  named by the window's end, so a rerun (or a second run of the same window)
  replaces its own record and a backfill adds its windows in time order, not
  in the order they ran;
* ``retrain_requests.json``: the requests made (``kind: retrain``) and the
  ``drift_persists`` alerts raised, newest last.

:func:`decide_retrain` is a pure function of those records and the current
window.  In order, a request is held back when: the run is a backfill; this
run already requested (a rerun or a cleared task never emits twice); drift was
found in fewer than ``k`` of the last ``n`` windows judged against the serving
version; the last request or alert is within the cooldown (before or after
this window). Otherwise, once ``max_retrains`` requests were made in this
drift episode (each within two cooldowns of the one before) and drift still
persists, the monitor raises ``drift_persists`` instead of requesting again.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.mlops import artifacts

WINDOWS_DIR = "drift_windows"
REQUESTS_FILE = "retrain_requests.json"
KEEP_REQUESTS = 200

REQUEST, HOLD, DRIFT_PERSISTS = "request", "hold", "drift_persists"
RETRAIN_KIND, PERSISTS_KIND = "retrain", "drift_persists"


def _utc(value: str | dt.datetime) -> dt.datetime:
    at = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if at.tzinfo is None:
        raise ValueError(f"time {at!r} has no time zone")
    return at.astimezone(dt.UTC)


def window_record(drift: Mapping[str, Any] | None, *, run_id: str, window_end: dt.datetime) -> dict[str, Any]:
    """One window's verdict as the history keeps it (a missing or insufficient drift result is not drift)."""
    drift = drift or {}
    features = drift.get("features") or {}
    conclusive = drift.get("status") == "ok"
    return {
        "window_end": _utc(window_end).isoformat(),
        "run_id": run_id,
        "status": drift.get("status") or "missing",
        "drifted": bool(conclusive and drift.get("drifted")),
        "version": drift.get("primary_version") if conclusive else None,
        "drifted_features": sorted(name for name, f in features.items() if f.get("drifted")),
    }


def _window_file(window_end: dt.datetime) -> str:
    return _utc(window_end).strftime("%Y%m%dT%H%M%S.%fZ") + ".json"


def record_window(monitoring_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write ``record`` as its window's verdict (replacing an earlier verdict of the same window)."""
    path = Path(monitoring_dir) / WINDOWS_DIR / _window_file(_utc(record["window_end"]))
    return artifacts.atomic_write_json(path, dict(record))


def read_windows(monitoring_dir: str | os.PathLike[str], *, until: dt.datetime, n: int) -> list[dict[str, Any]]:
    """The verdicts of the last ``n`` windows ending at or before ``until``, oldest first."""
    folder = Path(monitoring_dir) / WINDOWS_DIR
    if not folder.is_dir():
        return []
    last = _window_file(until)
    names = sorted(name for name in os.listdir(folder) if name.endswith("Z.json") and name <= last)
    return [artifacts.read_json(folder / name) for name in names[-n:]]


def read_requests(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The recorded requests and alerts, oldest first (a file of the single-request format reads as one)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = artifacts.read_json(path)
    if isinstance(data, dict) and "requests" not in data:
        return [{"kind": RETRAIN_KIND, **data}]
    return list(data.get("requests") or [])


def append_request(path: str | os.PathLike[str], entry: Mapping[str, Any]) -> Path:
    """Add ``entry`` (replacing one of the same run and kind) and keep the newest :data:`KEEP_REQUESTS`."""
    kept = [
        r
        for r in read_requests(path)
        if (r.get("monitor_run_id"), r.get("kind")) != (entry.get("monitor_run_id"), entry.get("kind"))
    ]
    kept = sorted([*kept, dict(entry)], key=lambda r: _utc(r["requested_at"]))[-KEEP_REQUESTS:]
    return artifacts.atomic_write_json(Path(path), {"requests": kept})


@dataclass(frozen=True)
class RetrainDecision:
    """What the drift of one window leads to, and why (the sentence the task log and the record show)."""

    action: str  # REQUEST, HOLD or DRIFT_PERSISTS
    reason: str
    drifted_windows: int
    windows: int
    cooldown_ends_at: dt.datetime | None = None
    retrains_in_episode: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "drifted_windows": self.drifted_windows,
            "windows": self.windows,
            "cooldown_ends_at": self.cooldown_ends_at.isoformat() if self.cooldown_ends_at else None,
            "retrains_in_episode": self.retrains_in_episode,
        }


def episode_requests(requests: Sequence[Mapping[str, Any]], *, at: dt.datetime, period: dt.timedelta) -> int:
    """Retraining requests of the episode that ``at`` belongs to: a chain back from ``at``, links under two cooldowns."""
    chain_end, count = _utc(at), 0
    for entry in sorted(requests, key=lambda r: _utc(r["requested_at"]), reverse=True):
        entry_at = _utc(entry["requested_at"])
        if entry_at > chain_end:
            continue
        if chain_end - entry_at >= 2 * period:
            break
        count += entry.get("kind", RETRAIN_KIND) == RETRAIN_KIND
        chain_end = entry_at
    return count


def decide_retrain(
    *,
    window: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    requests: Sequence[Mapping[str, Any]],
    run_id: str,
    backfill: bool,
    k: int,
    n: int,
    period: dt.timedelta,
    max_retrains: int,
) -> RetrainDecision:
    """Whether this window's drift requests retraining (see the module docstring); pure."""
    at = _utc(window["window_end"])
    version = window.get("version")
    # The current window counts once, whether or not the history holds it yet.
    recent = [w for w in history if w.get("window_end") != window["window_end"]][-(n - 1) :] if n > 1 else []
    judged = [*recent, window]
    drifted = sum(1 for w in judged if w.get("drifted") and w.get("version") == version)
    counts = {"drifted_windows": drifted, "windows": len(judged)}
    if backfill:
        return RetrainDecision(HOLD, "backfill runs record drift but never request retraining", **counts)
    mine = next((r for r in requests if r.get("monitor_run_id") == run_id), None)
    if mine is not None:
        return RetrainDecision(
            HOLD,
            f"this run already acted at {mine['requested_at']} ({mine.get('kind', RETRAIN_KIND)}); a rerun or a cleared "
            "task does not request again (trigger the lifecycle DAG by hand for a retraining now)",
            **counts,
        )
    if drifted < k:
        return RetrainDecision(
            HOLD,
            f"drift in {drifted} of the last {len(judged)} windows of version {version}; a retraining request needs "
            f"{k} of {n} (monitor.drift.persistence)",
            **counts,
        )
    nearest = min(requests, key=lambda r: abs(_utc(r["requested_at"]) - at), default=None)
    if nearest is not None:
        last_at = _utc(nearest["requested_at"])
        if abs(at - last_at) < period:
            ends = last_at + period
            return RetrainDecision(
                HOLD,
                f"cooldown: {nearest.get('kind', RETRAIN_KIND)} at {last_at.isoformat()} (monitor run "
                f"{nearest.get('monitor_run_id')}); the cooldown ends at {ends.isoformat()}",
                cooldown_ends_at=ends,
                **counts,
            )
    retrains = episode_requests(requests, at=at, period=period)
    if retrains >= max_retrains:
        return RetrainDecision(
            DRIFT_PERSISTS,
            f"drift persists after {retrains} retraining request(s) in this episode (monitor.max_retrains "
            f"{max_retrains}): no further request; drifted features: {', '.join(window.get('drifted_features') or [])}",
            retrains_in_episode=retrains,
            **counts,
        )
    return RetrainDecision(
        REQUEST,
        f"drift in {drifted} of the last {len(judged)} windows of version {version} (needs {k} of {n}); "
        f"retraining request {retrains + 1} of at most {max_retrains} in this episode",
        retrains_in_episode=retrains,
        **counts,
    )
