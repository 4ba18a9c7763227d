"""benchmarks/spine.py's breakdown of a run through the scheduler: task rows and the time some task ran."""

from __future__ import annotations

from benchmarks.spine import run_breakdown, union_seconds


def test_union_counts_overlaps_once_and_gaps_not_at_all() -> None:
    assert union_seconds([]) == 0.0
    assert union_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.5)]) == 4.5  # 0-3 and 5-6.5
    assert union_seconds([(4.0, 5.0), (0.0, 10.0)]) == 10.0  # one inside another, in any order


def test_a_runs_breakdown_has_its_length_busy_time_and_the_tasks_that_ran() -> None:
    run = {"start_date": "2026-12-07T10:00:00Z", "end_date": "2026-12-07T10:00:20Z"}
    instances = [
        {"task_id": "snapshot", "state": "success", "queued_when": "2026-12-07T10:00:00.500Z",
         "start_date": "2026-12-07T10:00:01Z", "end_date": "2026-12-07T10:00:03Z"},
        {"task_id": "train", "state": "success", "queued_when": "2026-12-07T10:00:04Z",
         "start_date": "2026-12-07T10:00:05Z", "end_date": "2026-12-07T10:00:15Z"},
        {"task_id": "reject", "state": "skipped", "queued_when": None, "start_date": None, "end_date": None},
    ]  # fmt: skip
    assert run_breakdown(run, instances) == {
        "run_s": 20.0,
        "busy_s": 12.0,
        "tasks": [
            {"task": "snapshot", "queued_s": 0.5, "start_s": 1.0, "duration_s": 2.0},
            {"task": "train", "queued_s": 4.0, "start_s": 5.0, "duration_s": 10.0},
        ],
    }
