"""DAG integrity of the monitor DAGs, and the monitoring links of the lifecycle DAGs (schedule, deadline)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization

from include.mlops.config import load_model_configs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {c.monitor_dag_id: c for c in load_model_configs()}
BRANCHES = {"healthy", "insufficient_data", "slo_breach", "request_retrain"}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_one_monitor_dag_per_model_config(dagbag: DagBag) -> None:
    assert sorted(CONFIGS) == ["monitor__diabetes", "monitor__digits"]
    assert dagbag.import_errors == {}
    assert sorted(d for d in dagbag.dag_ids if d.startswith("monitor__")) == sorted(CONFIGS)


@pytest.mark.parametrize("dag_id", sorted(CONFIGS))
class TestMonitorDag:
    def test_tasks_and_branches(self, dagbag: DagBag, dag_id: str) -> None:
        dag = dagbag.dags[dag_id]
        assert set(dag.task_ids) == {"slo", "drift", "decide", *BRANCHES}
        assert dag.get_task("decide").upstream_task_ids == {"slo", "drift"}
        assert dag.get_task("decide").downstream_task_ids == BRANCHES
        assert dag.get_task("drift").execution_timeout == CONFIGS[dag_id].step_timeout("drift")

    def test_schedule_from_the_config(self, dagbag: DagBag, dag_id: str) -> None:
        dag, config = dagbag.dags[dag_id], CONFIGS[dag_id]
        assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
        assert config.monitor.schedule == "@hourly"
        assert dag.timetable.expression == "0 * * * *"
        assert dag.catchup is False and dag.max_active_runs == 1

    def test_documented_tagged_and_retried(self, dagbag: DagBag, dag_id: str) -> None:
        dag = dagbag.dags[dag_id]
        assert "monitor" in dag.tags and dag.owner == "mlops"
        assert dag.doc_md and f"lifecycle__{dag_id.removeprefix('monitor__')}" in dag.doc_md
        assert all(task.retries >= 1 for task in dag.tasks)

    def test_request_retrain_emits_the_asset_the_lifecycle_is_scheduled_on(self, dagbag: DagBag, dag_id: str) -> None:
        name = dag_id.removeprefix("monitor__")
        [outlet] = dagbag.dags[dag_id].get_task("request_retrain").outlets
        lifecycle = dagbag.dags[f"lifecycle__{name}"]
        assert outlet.name == f"retrain__{name}"
        assert list(lifecycle.timetable.asset_condition.objects) == [outlet]

    def test_serializes(self, dagbag: DagBag, dag_id: str) -> None:
        # What the DAG processor stores: the scheduler never sees a DAG that does not serialize.
        name = dag_id.removeprefix("monitor__")
        for each in (dag_id, f"lifecycle__{name}"):
            restored = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags[each]))
            assert restored.dag_id == each


@pytest.mark.parametrize("dag_id", sorted(CONFIGS))
def test_lifecycle_deadline_from_the_config(dagbag: DagBag, dag_id: str) -> None:
    from airflow.sdk import DeadlineReference

    config = CONFIGS[dag_id]
    [deadline] = dagbag.dags[config.dag_id].deadline
    assert deadline.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert deadline.interval == dt.timedelta(minutes=config.monitor.deadline_minutes)
    assert deadline.callback.path == "mlops_airflow.alerts.deadline_missed"


def test_a_configured_cron_schedules_the_monitor() -> None:
    from mlops_airflow.monitoring import build_monitor_dag

    config = CONFIGS["monitor__diabetes"]
    config = dataclasses.replace(config, monitor=dataclasses.replace(config.monitor, schedule="*/15 * * * *"))
    assert build_monitor_dag(config).timetable.expression == "*/15 * * * *"


def test_a_run_triggered_by_hand_measures_up_to_when_it_was_triggered() -> None:
    # Airflow infers a manual run's data interval as the last whole hour before it; the monitor
    # must still see the traffic of the last minutes, so the window ends at run_after.
    from types import SimpleNamespace

    import pendulum

    from mlops_airflow.monitoring import monitoring_window

    run_after = pendulum.datetime(2026, 11, 27, 15, 45, tz="UTC")
    context = {
        "data_interval_start": pendulum.datetime(2026, 11, 27, 14, tz="UTC"),
        "data_interval_end": pendulum.datetime(2026, 11, 27, 15, tz="UTC"),
        "dag_run": SimpleNamespace(run_after=run_after),
    }
    start, end = monitoring_window(context, dt.timedelta(minutes=60))  # type: ignore[arg-type]
    assert (start, end) == (run_after - dt.timedelta(minutes=60), run_after)


def with_rollback(config: Any, enabled: bool = True) -> Any:
    return dataclasses.replace(config, monitor=dataclasses.replace(config.monitor, rollback_on_slo_breach=enabled))


def test_the_rollback_request_is_a_branch_only_when_the_config_enables_it() -> None:
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    from mlops_airflow.monitoring import build_monitor_dag

    config = CONFIGS["monitor__diabetes"]
    assert "request_rollback" not in build_monitor_dag(config).task_ids  # off in the demo configs
    dag = build_monitor_dag(with_rollback(config))
    task = dag.get_task("request_rollback")
    assert isinstance(task, TriggerDagRunOperator) and task.trigger_dag_id == "rollback__diabetes"
    assert task.upstream_task_ids == {"decide"} and task.retries >= 1
    assert dag.get_task("decide").downstream_task_ids == BRANCHES | {"request_rollback"}
    assert "`request_rollback` (on an SLO breach) triggers `rollback__diabetes`" in dag.doc_md
    assert "requests no rollback" in build_monitor_dag(config).doc_md


def test_a_monitor_with_the_rollback_request_serializes() -> None:
    from mlops_airflow.monitoring import build_monitor_dag

    dag = build_monitor_dag(with_rollback(CONFIGS["monitor__diabetes"]))
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert restored.get_task("request_rollback").downstream_task_ids == set()
    assert restored.get_task("decide").downstream_task_ids == BRANCHES | {"request_rollback"}


@pytest.mark.parametrize(
    ("outcomes", "enabled", "tasks"),
    [
        (["slo_breach"], True, ["slo_breach", "request_rollback"]),
        (["slo_breach", "drift"], True, ["slo_breach", "request_retrain", "request_rollback"]),
        (["slo_breach"], False, ["slo_breach"]),
        (["drift", "insufficient_data"], True, ["request_retrain", "insufficient_data"]),
        (["healthy"], True, ["healthy"]),
    ],
)
def test_decide_follows_a_breach_to_the_rollback_request_when_enabled(
    outcomes: list[str], enabled: bool, tasks: list[str]
) -> None:
    from mlops_airflow.monitoring import branch_tasks

    assert branch_tasks(with_rollback(CONFIGS["monitor__diabetes"], enabled), outcomes) == tasks
