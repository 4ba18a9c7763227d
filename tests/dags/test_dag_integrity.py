"""DAG integrity: every DAG file imports cleanly and every lifecycle DAG is well described."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from include.mlops.config import load_model_configs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_DAG_IDS = sorted(c.dag_id for c in load_model_configs())


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}


def test_one_lifecycle_dag_per_model_config(dagbag: DagBag) -> None:
    assert EXPECTED_DAG_IDS == ["lifecycle__diabetes", "lifecycle__digits"]
    assert sorted(d for d in dagbag.dag_ids if d.startswith("lifecycle__")) == EXPECTED_DAG_IDS


@pytest.mark.parametrize("dag_id", EXPECTED_DAG_IDS)
class TestLifecycleDag:
    def test_documented_and_tagged(self, dagbag: DagBag, dag_id: str) -> None:
        dag = dagbag.dags[dag_id]
        assert dag.doc_md and dag_id in dag.doc_md
        assert "lifecycle" in dag.tags
        assert dag.owner == "mlops"

    def test_every_task_retries_with_delay(self, dagbag: DagBag, dag_id: str) -> None:
        for task in dagbag.dags[dag_id].tasks:
            assert task.retries >= 1, task.task_id
            assert task.retry_delay.total_seconds() > 0, task.task_id

    def test_params_are_described_and_typed(self, dagbag: DagBag, dag_id: str) -> None:
        params = dagbag.dags[dag_id].params
        expected = {
            "epochs",
            "learning_rate",
            "batch_size",
            "thresholds",
            "max_regression",
            "force_deploy",
            "accept_without_champion",
            "skip_deploy",
        }
        assert set(params.keys()) == expected
        for name in expected:
            param = params.get_param(name)
            assert param.schema.get("type"), name
            assert param.schema.get("title") and param.description, name

    def test_nightly_data_interval_schedule_or_retraining_asset(self, dagbag: DagBag, dag_id: str) -> None:
        dag = dagbag.dags[dag_id]
        assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
        assert type(dag.timetable.timetable).__name__ == "CronDataIntervalTimetable"
        assert [a.name for a in dag.timetable.asset_condition.objects] == [
            f"retrain__{dag_id.removeprefix('lifecycle__')}"
        ]
        assert dag.catchup is False
        assert dag.max_active_runs == 1

    def test_lifecycle_shape(self, dagbag: DagBag, dag_id: str) -> None:
        dag = dagbag.dags[dag_id]
        chain = ["snapshot", "validate", "train", "evaluate", "gate"]
        for upstream, downstream in itertools.pairwise(chain):
            assert downstream in dag.get_task(upstream).downstream_task_ids
        assert dag.get_task("gate").downstream_task_ids == {"register", "tune_plan", "skip_deploy"}
        optimize_branch = ["tune_plan", "tune_trial", "tune_select", "compress", "evaluate_optimized", "gate_optimized"]
        for upstream, downstream in itertools.pairwise(optimize_branch):
            assert downstream in dag.get_task(upstream).downstream_task_ids, upstream
        # tune_plan also feeds tune_select directly (its trigger rule needs the plan's success).
        assert dag.get_task("tune_plan").downstream_task_ids == {"tune_trial", "tune_select"}
        for task_id, downstream in itertools.pairwise(optimize_branch[1:]):
            assert dag.get_task(task_id).downstream_task_ids == {downstream}, task_id
        assert dag.get_task("gate_optimized").downstream_task_ids == {"register", "reject", "skip_deploy"}
        assert dag.get_task("register").downstream_task_ids == {"deploy"}
        assert dag.get_task("register").trigger_rule == "none_failed_min_one_success"

    def test_single_deploy_at_a_time(self, dagbag: DagBag, dag_id: str) -> None:
        deploy = dagbag.dags[dag_id].get_task("deploy")
        assert deploy.pool == "model_deploy"


@pytest.mark.parametrize("dag_id", EXPECTED_DAG_IDS)
def test_tuning_trials_are_mapped_one_task_per_trial_in_the_tuning_pool(dagbag: DagBag, dag_id: str) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = dagbag.dags[dag_id]
    config = next(c for c in load_model_configs() if c.dag_id == dag_id)
    trial = dag.get_task("tune_trial")
    assert isinstance(trial, MappedOperator)
    assert trial.pool == "mlops_tuning"
    assert trial.expand_input.value == {"arguments": [{"trial": i} for i in range(config.optimize.search.trials)]}
    # Selection runs after failed trials too once the plan succeeded, but not when the gate routed
    # elsewhere (skipped plan and trials) nor when an earlier task failed (no plan).
    select = dag.get_task("tune_select")
    assert select.trigger_rule == "all_done_min_one_success"
    assert select.upstream_task_ids == {"tune_plan", "tune_trial"}
