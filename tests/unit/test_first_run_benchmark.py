"""benchmarks/first_run.py: a model status read as AVAILABLE or not, task instances as relative times, medians, ratios."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from benchmarks import first_run

START = dt.datetime(2026, 12, 7, 22, 0, 0, tzinfo=dt.UTC)


def status(*states: str) -> dict[str, object]:
    return {
        "model_version_status": [
            {"version": str(i + 1), "state": state, "status": {"error_code": "OK", "error_message": ""}}
            for i, state in enumerate(states)
        ]
    }


@pytest.mark.parametrize(
    ("answer", "available"),
    [
        (status("AVAILABLE"), True),
        (status("END", "AVAILABLE"), True),  # version 1 unloaded, version 2 serving
        (status("LOADING"), False),
        (status("START", "UNLOADING", "END"), False),
        (status(), False),
        ({}, False),
        (None, False),
    ],
)
def test_a_model_is_available_when_any_version_is(answer: dict[str, object] | None, available: bool) -> None:
    assert first_run.any_available(answer) is available


def test_task_instances_become_rows_relative_to_the_start_in_the_order_they_started() -> None:
    tis = [
        {
            "task_id": "train",
            "map_index": -1,
            "state": "success",
            "try_number": 1,
            "scheduled_when": "2026-12-07T22:01:00.000000Z",
            "queued_when": "2026-12-07T22:01:02.500000Z",
            "start_date": "2026-12-07T22:01:05.000000Z",
            "end_date": "2026-12-07T22:01:45.250000Z",
        },
        {
            "task_id": "snapshot",
            "map_index": -1,
            "state": "success",
            "try_number": 2,
            "scheduled_when": "2026-12-07T22:00:40+00:00",
            "queued_when": "2026-12-07T22:00:41+00:00",
            "start_date": "2026-12-07T22:00:50+00:00",
            "end_date": "2026-12-07T22:00:58+00:00",
        },
        {"task_id": "reject", "map_index": -1, "state": "skipped", "try_number": 0},
        {
            "task_id": "tune_trial",
            "map_index": 1,
            "state": "running",
            "try_number": 1,
            "scheduled_when": None,
            "queued_when": "2026-12-07T22:02:00Z",
            "start_date": "2026-12-07T22:02:01Z",
            "end_date": None,
        },
    ]
    rows = first_run.task_rows(tis, START)
    assert [r["task"] for r in rows] == ["snapshot", "train", "tune_trial[1]", "reject"]
    assert rows[0] == {
        "task": "snapshot",
        "state": "success",
        "try_number": 2,
        "scheduled_s": 40.0,
        "queued_s": 41.0,
        "start_s": 50.0,
        "end_s": 58.0,
        "wait_to_queue_s": 1.0,
        "wait_to_start_s": 9.0,
        "duration_s": 8.0,
    }
    assert rows[1]["queued_s"] == 62.5 and rows[1]["wait_to_start_s"] == 2.5 and rows[1]["duration_s"] == 40.2
    # Times a task does not have yet (still running, never scheduled, skipped) stay None.
    assert rows[2]["wait_to_queue_s"] is None and rows[2]["end_s"] is None and rows[2]["duration_s"] is None
    assert rows[3]["start_s"] is None and rows[3]["wait_to_start_s"] is None


def test_the_first_run_is_the_earliest_by_run_after() -> None:
    runs = [
        {"dag_run_id": "manual__2", "run_after": "2026-12-07T22:05:00Z", "state": "running"},
        {"dag_run_id": "scheduled__1", "run_after": "2026-12-07T00:00:00Z", "state": "success"},
    ]
    assert first_run.first_run(runs)["dag_run_id"] == "scheduled__1"
    with pytest.raises(ValueError, match="no run"):
        first_run.first_run([])


def sample(ui: float, diabetes: float, digits: float) -> dict[str, object]:
    return {"ui_up_s": ui, "available_s": {"diabetes": diabetes, "digits": digits}, "runs": {}}


def test_milestones_name_each_model_and_the_last_of_them() -> None:
    assert first_run.milestones(sample(40.0, 150.0, 210.5)) == {
        "ui_up_s": 40.0,
        "diabetes_available_s": 150.0,
        "digits_available_s": 210.5,
        "all_available_s": 210.5,
    }


def test_medians_over_the_repeats_of_a_variant() -> None:
    repeats = [sample(40.0, 150.0, 210.0), sample(50.0, 140.0, 230.0), sample(45.0, 160.0, 190.0)]
    assert first_run.medians(repeats) == {
        "ui_up_s": 45.0,
        "diabetes_available_s": 150.0,
        "digits_available_s": 210.0,
        "all_available_s": 210.0,
    }


def test_ratios_compare_every_variant_with_the_first() -> None:
    figures = {
        "default": {"ui_up_s": 40.0, "all_available_s": 200.0},
        "no_warm": {"ui_up_s": 40.0, "all_available_s": 150.0},
        "slow": {"ui_up_s": 60.0, "all_available_s": 250.0},
    }
    assert first_run.ratios(figures) == {
        "no_warm": {"ui_up_s": 1.0, "all_available_s": 0.75},
        "slow": {"ui_up_s": 1.5, "all_available_s": 1.25},
    }
    assert first_run.ratios({"default": figures["default"]}) == {}


def test_the_environment_is_make_runs_on_a_private_home_and_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")  # the caller's Airflow settings do not leak in
    env = first_run.make_run_env(tmp_path, {"MLOPS_WARM_STEPS": "0"})
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow-home")
    assert env["MLOPS_ARTIFACT_ROOT"] == str(tmp_path / "artifacts")
    assert env["AIRFLOW_CONFIG"] == str(first_run.PROJECT_ROOT / "airflow.cfg")
    assert "AIRFLOW__CORE__EXECUTOR" not in env and env["MLOPS_WARM_STEPS"] == "0"
    ports = [env[name] for name in first_run.PORTS]
    assert len(set(ports)) == len(ports) and "8080" not in ports


def test_the_demo_models_are_the_configs_of_the_models_folder() -> None:
    models = first_run.demo_models()
    assert models["diabetes"] == {"dag_id": "lifecycle__diabetes", "serving_name": "diabetes"}
    assert models["digits"]["dag_id"] == "lifecycle__digits"
