"""The monitor's rollback on an SLO breach: which version is the previous one, and when no request is made.

The audit logs are written by hand in the shape ``label_log`` writes (``at``,
``label``, ``from``, ``to``, ``reason``), with the reasons the deploy, its roll
back, the repair and the rollback DAG give.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from include.mlops.config import ConfigError, load_model_config
from include.mlops.monitoring.retraining import append_request, read_requests
from include.mlops.monitoring.rollback_request import (
    HOLD,
    MAX_REASON_CHARS,
    REQUEST,
    RollbackDecision,
    decide_rollback,
    rollback_reason,
)
from include.mlops.registry.label_log import read_label_moves
from include.mlops.registry.previous_version import previous_version

PROJECT_ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(hours=24)


def move(frm: int | None, to: int | None, reason: str | None = None, *, at: dt.datetime = T0, label: str = "stable"):
    line: dict[str, Any] = {"at": at.isoformat(timespec="milliseconds"), "label": label, "from": frm, "to": to,
                            "pid": 7, "host": "worker-1"}  # fmt: skip
    if reason is not None:
        line["reason"] = reason
    return line


GATE = "gate passed (scheduled__2026-11-20T00:00:00+00:00)"
FAILED = "roll back of a failed deploy (DeployVerificationError: version 3 answered wrongly)"
REPAIR = "repair: a deploy (pid 4242 on worker-1, started 2026-11-26T00:00:00+00:00) was moving 'stable'"
ROLLED_BACK = "rollback: SLO breach in scheduled__2026-11-27T09:00:00+00:00: p95 latency 180 ms > 100 ms (manual__x)"


# --------------------------------------------------------------------------- the previous version


def test_the_previous_version_is_the_from_of_the_last_move_to_the_current_one() -> None:
    moves = [move(None, 1, GATE), move(1, 2, GATE), move(2, 3, GATE), move(None, 1, label="canary")]
    found = previous_version(moves, 3)
    assert found.version == 2 and "'stable' named version 2 before version 3" in found.reason
    assert previous_version(moves, 2).version == 1  # a current version that an older move put there


def test_a_label_set_by_hand_without_a_reason_counts_as_a_move() -> None:
    assert previous_version([move(None, 1), move(1, 2)], 2).version == 1


@pytest.mark.parametrize("undo", [FAILED, REPAIR])
def test_a_move_that_undid_a_failed_or_unfinished_deploy_is_skipped(undo: str) -> None:
    # v2 serves; v3's deploy fails (or dies) and the label goes back to v2: v3 never served verified.
    moves = [move(None, 1, GATE), move(1, 2, GATE), move(2, 3, "deploy"), move(3, 2, undo)]
    found = previous_version(moves, 2)
    assert found.version == 1 and found.move == moves[1]


def test_a_rollback_is_skipped_so_that_the_next_one_goes_further_back_never_forth() -> None:
    moves = [move(None, 1, GATE), move(1, 2, GATE), move(2, 3, GATE), move(3, 2, ROLLED_BACK)]
    assert previous_version(moves, 2).version == 1  # not 3, the version that was rolled back


def test_no_previous_version_for_a_first_version_saying_why() -> None:
    found = previous_version([move(None, 1, GATE)], 1)
    assert found.version is None and found.reason == "version 1 was the first version of 'stable'"
    # The same after a rollback back to the first version.
    found = previous_version([move(None, 1, GATE), move(1, 2, GATE), move(2, 1, ROLLED_BACK)], 1)
    assert found.version is None and "first version" in found.reason


def test_no_previous_version_without_a_label_or_a_recorded_move() -> None:
    assert previous_version([], None).reason == "label 'stable' names no version"
    assert previous_version([], 4).reason == "the audit log has no move of 'stable' to version 4"
    only_undone = previous_version([move(3, 4, REPAIR)], 4)
    assert only_undone.version is None and "1 move(s) back to it only undid others" in only_undone.reason


def test_the_rule_reads_the_log_as_label_log_writes_it(tmp_path: Path) -> None:
    lines = [move(None, 1, GATE), move(1, 2, GATE), move(2, 3, "deploy"), move(3, 2, FAILED)]
    (tmp_path / "label-moves.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"at": "cut\n')
    assert previous_version(read_label_moves(tmp_path), 2).version == 1


# --------------------------------------------------------------------------- the guard


def decide(
    moves: list[dict[str, Any]], current: int | None, *, requests=(), at=T0, run_id="scheduled__r", backfill=False
) -> RollbackDecision:
    return decide_rollback(
        current=current, moves=moves, requests=list(requests), run_id=run_id, at=at, backfill=backfill, period=DAY
    )


HISTORY = [move(None, 1, GATE, at=T0 - 9 * DAY), move(1, 2, GATE, at=T0 - 2 * DAY)]


def request(at: dt.datetime, version: int = 1, run_id: str = "scheduled__earlier") -> dict[str, Any]:
    return {"kind": "rollback", "requested_at": at.isoformat(), "monitor_run_id": run_id, "current": 2,
            "version": version, "reason": f"SLO breach in {run_id}: p99 latency 400 ms > 250 ms"}  # fmt: skip


def test_a_breach_requests_the_previous_version() -> None:
    decision = decide(HISTORY, 2)
    assert (decision.action, decision.current, decision.version) == (REQUEST, 2, 1)
    assert "version 2 breached its SLOs; rolling back to version 1" in decision.reason


def test_no_request_without_a_previous_version_or_a_label_or_in_a_backfill() -> None:
    first = decide(HISTORY[:1], 1)
    assert first.action == HOLD and first.reason == (
        "no previous version to roll back to: version 1 was the first version of 'stable'"
    )
    assert decide([], None).reason == "label 'stable' names no version: nothing to roll back"
    assert decide(HISTORY, 2, backfill=True).reason == "backfill runs never request a rollback"


def test_no_request_when_a_rollback_put_the_current_version_there_within_the_cooldown() -> None:
    moves = [*HISTORY, move(2, 3, GATE, at=T0 - 5 * HOUR), move(3, 2, ROLLED_BACK, at=T0 - 3 * HOUR)]
    decision = decide(moves, 2)
    assert decision.action == HOLD and decision.reason.startswith(
        "already rolled back: 'stable' was moved to version 2"
    )
    assert decision.cooldown_ends_at == T0 + 21 * HOUR
    # After the cooldown it is a new episode, and the rollback goes further back, never to version 3 again.
    later = decide(moves, 2, at=T0 + DAY)
    assert (later.action, later.version) == (REQUEST, 1)


def test_one_request_per_cooldown_even_before_the_label_moved() -> None:
    earlier = request(T0 - 2 * HOUR)
    decision = decide(HISTORY, 2, requests=[earlier])
    assert decision.action == HOLD
    ends = (T0 + 22 * HOUR).isoformat()
    assert decision.reason == (
        f"cooldown: a rollback to version 1 was requested at {earlier['requested_at']} (monitor run "
        f"scheduled__earlier); the cooldown ends at {ends}"
    )
    assert decide(HISTORY, 2, requests=[request(T0 - DAY)]).action == REQUEST  # the cooldown is over


def test_a_rerun_asks_again_for_the_same_version_with_the_same_reason() -> None:
    mine = request(T0, version=1, run_id="scheduled__r")
    decision = decide([*HISTORY, move(2, 1, "rollback: SLO breach (x)", at=T0 + HOUR)], 1, requests=[mine])
    assert (decision.action, decision.version, decision.earlier_reason) == (REQUEST, 1, mine["reason"])
    assert "asked again with the same run id" in decision.reason


def test_requests_are_kept_with_the_retraining_request_format(tmp_path: Path) -> None:
    path = tmp_path / "rollback_requests.json"
    append_request(path, request(T0))
    append_request(path, request(T0))  # a rerun replaces its own entry
    assert [r["monitor_run_id"] for r in read_requests(path)] == ["scheduled__earlier"]
    assert decide(HISTORY, 2, requests=read_requests(path), at=T0 + HOUR).action == HOLD


def test_the_reason_names_the_monitor_run_and_each_breach_within_the_params_limit() -> None:
    slo = {"breaches": ["p95 latency 180 ms > 100 ms", "error ratio 0.05 > 0.01"], "figures": {"p95_ms": 180.0}}
    assert rollback_reason("scheduled__r", slo) == (
        "SLO breach in scheduled__r: p95 latency 180 ms > 100 ms; error ratio 0.05 > 0.01"
    )
    assert rollback_reason("r", {"figures": {"p95_ms": 180.0}}) == "SLO breach in r: figures {'p95_ms': 180.0}"
    long = rollback_reason("r", {"breaches": ["x" * 600]})
    assert len(long) == MAX_REASON_CHARS and long.endswith("...")


# --------------------------------------------------------------------------- the config field


def test_the_option_is_off_by_default_and_strictly_a_bool(tmp_path: Path) -> None:
    source = (PROJECT_ROOT / "include/models/diabetes.yaml").read_text()
    shutil.copy(PROJECT_ROOT / "include/models/diabetes.py", tmp_path)  # the builder beside the config
    assert load_model_config(PROJECT_ROOT / "include/models/diabetes.yaml").monitor.rollback_on_slo_breach is False
    for value, ok in (("true", True), ("false", True), ('"yes"', False), ("1", False)):
        path = tmp_path / "diabetes.yaml"
        path.write_text(source.replace("  alert_conn_id: mlops_alerts\n", f"  rollback_on_slo_breach: {value}\n"))
        if ok:
            assert load_model_config(path).monitor.rollback_on_slo_breach is (value == "true")
        else:
            with pytest.raises(ConfigError, match="rollback_on_slo_breach"):
                load_model_config(path)
