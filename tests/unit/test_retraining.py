"""Whether drift requests retraining: persistence (k of n), cooldown, reruns, backfills and a loop that ends."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from include.mlops.config.monitor import PersistenceConfig
from include.mlops.monitoring.retraining import (
    DRIFT_PERSISTS,
    HOLD,
    PERSISTS_KIND,
    REQUEST,
    RETRAIN_KIND,
    append_request,
    decide_retrain,
    read_requests,
    read_windows,
    record_window,
    window_record,
)

T0 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(hours=24)


def drift(drifted: bool, version: int = 1, status: str = "ok") -> dict[str, Any]:
    return {
        "status": status,
        "drifted": drifted,
        "primary_version": version,
        "features": {"bmi": {"drifted": drifted}, "age": {"drifted": False}},
    }


class Monitor:
    """Hourly windows through the real window history and request log, as the monitor's tasks use them."""

    def __init__(self, folder: Path, k: int = 2, n: int = 3, max_retrains: int = 2) -> None:
        self.folder, self.k, self.n, self.max_retrains = folder, k, n, max_retrains
        self.requests = folder / "retrain_requests.json"

    def run(self, at: dt.datetime, result: dict[str, Any], *, run_id: str | None = None, backfill: bool = False):
        run_id = run_id or f"scheduled__{at.isoformat()}"
        window = window_record(result, run_id=run_id, window_end=at)
        record_window(self.folder, window)  # decide
        decision = decide_retrain(  # request_retrain
            window=window,
            history=read_windows(self.folder, until=at, n=self.n),
            requests=read_requests(self.requests),
            run_id=run_id,
            backfill=backfill,
            k=self.k,
            n=self.n,
            period=DAY,
            max_retrains=self.max_retrains,
        )
        if decision.action != HOLD:
            kind = RETRAIN_KIND if decision.action == REQUEST else PERSISTS_KIND
            append_request(self.requests, {"kind": kind, "requested_at": at.isoformat(), "monitor_run_id": run_id})
        return decision


def test_one_drifted_window_requests_nothing_two_of_three_do(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path)
    first = monitor.run(T0, drift(True))
    assert (
        first.action == HOLD and "drift in 1 of the last 1 windows" in first.reason and "needs 2 of 3" in first.reason
    )
    assert monitor.run(T0 + HOUR, drift(False)).action == HOLD
    third = monitor.run(T0 + 2 * HOUR, drift(True))
    assert third.action == REQUEST, third
    assert (third.drifted_windows, third.windows) == (2, 3)


def test_drift_of_an_older_version_does_not_count_for_the_new_one(tmp_path: Path) -> None:
    # After a retraining deploys version 2, its windows are judged against its own reference, from zero.
    monitor = Monitor(tmp_path)
    monitor.run(T0, drift(True, version=1))
    held = monitor.run(T0 + HOUR, drift(True, version=2))
    assert held.action == HOLD and "drift in 1 of the last 2 windows of version 2" in held.reason


def test_insufficient_data_is_no_drift(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path)
    monitor.run(T0, drift(True))
    monitor.run(T0 + HOUR, drift(True, status="insufficient_data"))
    monitor.run(T0 + 2 * HOUR, drift(False))
    assert monitor.run(T0 + 3 * HOUR, drift(True)).action == HOLD  # 1 of the last 3


def test_a_cleared_or_rerun_request_does_not_emit_again(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path)
    monitor.run(T0, drift(True))
    assert monitor.run(T0 + HOUR, drift(True)).action == REQUEST
    again = monitor.run(T0 + HOUR, drift(True))  # the same run id: a rerun or a cleared request_retrain
    assert again.action == HOLD and "already acted" in again.reason
    assert len(read_requests(monitor.requests)) == 1
    assert len(read_windows(tmp_path, until=T0 + HOUR, n=10)) == 2, "a rerun replaces its own window"


def test_the_cooldown_holds_the_next_request_and_says_when_it_ends(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path)
    monitor.run(T0, drift(True))
    monitor.run(T0 + HOUR, drift(True))
    held = monitor.run(T0 + 2 * HOUR, drift(True))
    assert held.action == HOLD and held.cooldown_ends_at == T0 + HOUR + DAY
    assert f"the cooldown ends at {(T0 + HOUR + DAY).isoformat()}" in held.reason
    # An older window rerun (a different run id) inside the cooldown is held back too.
    older = monitor.run(T0 - 2 * HOUR, drift(True), run_id="manual__older")
    assert older.action == HOLD
    assert monitor.run(T0 + HOUR + DAY, drift(True)).action == REQUEST


def test_backfill_runs_never_request(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path)
    monitor.run(T0 - 30 * DAY, drift(True), backfill=True)
    held = monitor.run(T0 - 30 * DAY + HOUR, drift(True), backfill=True)
    assert held.action == HOLD and "backfill" in held.reason
    assert read_requests(monitor.requests) == []


def test_drift_that_persists_after_max_retrains_alerts_instead_of_requesting(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path, max_retrains=2)
    # Each day a retraining deploys a new version, and its windows drift too.
    decisions = [monitor.run(T0 + hour * HOUR, drift(True, version=1 + hour // 24)) for hour in range(24 * 4)]
    requests = read_requests(monitor.requests)
    assert [r["kind"] for r in requests] == [RETRAIN_KIND, RETRAIN_KIND, PERSISTS_KIND, PERSISTS_KIND]
    assert [d.action for d in decisions].count(REQUEST) == 2
    persists = next(d for d in decisions if d.action == DRIFT_PERSISTS)
    assert "drift persists after 2 retraining request(s)" in persists.reason and "bmi" in persists.reason


def test_a_new_episode_after_two_quiet_cooldowns_may_request_again(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path, k=1, n=1, max_retrains=1)
    assert monitor.run(T0, drift(True)).action == REQUEST
    assert monitor.run(T0 + DAY, drift(True)).action == DRIFT_PERSISTS
    assert monitor.run(T0 + 4 * DAY, drift(True)).action == REQUEST


def test_the_single_request_file_of_before_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "retrain_requests.json"
    path.write_text('{"requested_at": "2026-11-27T10:00:00+00:00", "monitor_run_id": "scheduled__x"}')
    assert read_requests(path) == [
        {"kind": RETRAIN_KIND, "requested_at": "2026-11-27T10:00:00+00:00", "monitor_run_id": "scheduled__x"}
    ]


def test_persistence_needs_k_at_most_n() -> None:
    with pytest.raises(ValueError, match=r"must be at most n \(2\), got 3"):
        PersistenceConfig(k=3, n=2)
    assert PersistenceConfig() == PersistenceConfig(k=2, n=3)
