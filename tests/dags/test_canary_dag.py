"""The lifecycle DAG with ``deploy.canary``: the canary tasks, their order, the teardown, the approval."""

from __future__ import annotations

import dataclasses
import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.serialization.serialized_objects import DagSerialization

from include.mlops.config import ModelConfig, find_model_config
from include.mlops.config.deploy import CanaryConfig
from mlops_airflow.canary import CanaryCheckTrigger, end_reason, promote_reason
from mlops_airflow.lifecycle import build_lifecycle_dag


def with_canary(**fields: Any) -> ModelConfig:
    base = find_model_config("diabetes")
    return dataclasses.replace(base, deploy=dataclasses.replace(base.deploy, canary=CanaryConfig(**fields)))


def test_without_a_canary_block_the_gate_deploys_stable_directly() -> None:
    dag = build_lifecycle_dag(find_model_config("diabetes"))
    assert "deploy" in dag.task_ids
    assert not {"deploy_canary", "canary_analysis", "promote", "end_canary"} & set(dag.task_ids)


def test_the_canary_tasks_follow_register_and_end_in_a_teardown() -> None:
    dag = build_lifecycle_dag(with_canary())
    assert "deploy" not in dag.task_ids and "approve_canary" not in dag.task_ids
    tasks = dag.task_dict
    assert tasks["register"].downstream_task_ids == {"deploy_canary"}
    assert tasks["deploy_canary"].downstream_task_ids == {"canary_analysis", "end_canary"}
    assert tasks["canary_analysis"].downstream_task_ids == {"promote"}
    assert tasks["promote"].downstream_task_ids == {"end_canary"}
    # The run's verdict comes last and runs whatever ended before it.
    assert tasks["end_canary"].downstream_task_ids == {"canary_outcome"}
    assert tasks["canary_outcome"].trigger_rule == "all_done"
    assert tasks["deploy_canary"].is_setup and tasks["end_canary"].is_teardown
    # A canary left behind must fail the run: the teardown's failure counts.
    assert tasks["end_canary"].on_failure_fail_dagrun
    assert tasks["canary_analysis"].retries == 0
    assert {tasks[t].pool for t in ("deploy_canary", "promote", "end_canary")} == {"model_deploy"}


def test_approval_stands_before_promote_and_defaults_to_reject() -> None:
    dag = build_lifecycle_dag(with_canary(approval=True, approval_timeout_s=3600.0))
    approval = dag.task_dict["approve_canary"]
    assert dag.task_dict["canary_analysis"].downstream_task_ids == {"approve_canary"}
    assert approval.downstream_task_ids == {"promote"}
    assert approval.defaults == ["Reject"]
    assert approval.response_timeout == dt.timedelta(hours=1)
    assert "canary_analysis" in approval.body and "summary" in approval.body


@pytest.mark.parametrize("approval", [False, True])
def test_the_dag_serializes(approval: bool) -> None:
    dag = build_lifecycle_dag(with_canary(approval=approval))
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert set(restored.task_ids) == set(dag.task_ids)


def test_the_trigger_serializes_to_what_the_triggerer_rebuilds() -> None:
    trigger = CanaryCheckTrigger(prometheus_url="http://p:9090", model_name="diabetes", check_at=12.5,
                                 canary={"steps": [10, 50], "interval_s": 30.0}, weight=10)  # fmt: skip
    classpath, kwargs = trigger.serialize()
    assert classpath == "mlops_airflow.canary.CanaryCheckTrigger"
    assert CanaryCheckTrigger(**kwargs).serialize() == (classpath, kwargs)


class FakeTi:
    def __init__(self, xcoms: dict[tuple[str, str], Any]) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))


def context(**xcoms: Any) -> dict[str, Any]:
    pulled = {}
    for name, value in xcoms.items():
        task, _, key = name.partition("__")
        pulled[(task, key or "return_value")] = value
    return {"ti": FakeTi(pulled), "dag_run": SimpleNamespace(run_id="r1", triggering_user_name="ana")}


@pytest.mark.parametrize(
    ("xcoms", "expected"),
    [
        ({"promote": {"version": 4}}, "canary promoted: stable is version 4"),
        (
            {"canary_analysis__analysis": {"action": "abort", "summary": "aborted after 2 checks"}},
            "canary rolled back: analysis aborted it (aborted after 2 checks)",
        ),
        (
            {
                "approve_canary__decision": {
                    "chosen_options": ["Reject"],
                    "responded_by_user": {"id": "1", "name": "bo"},
                }
            },
            "canary rolled back: promotion Reject by bo",
        ),
        (
            {"approve_canary__decision": {"chosen_options": ["Reject"], "responded_by_user": None}},
            "canary rolled back: promotion Reject by nobody (timed out, default Reject)",
        ),
        ({}, "canary rolled back: the run ended before promotion (a failed or stopped task)"),
    ],
)
def test_the_end_says_why(xcoms: dict[str, Any], expected: str) -> None:
    assert end_reason(context(**xcoms)) == expected


def test_promote_names_the_analysis_and_the_approver() -> None:
    reason = promote_reason(
        context(
            canary_analysis__analysis={"summary": "passed every step after 2 checks"},
            approve_canary__decision={"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "cy"}},
        )
    )
    assert reason == "canary analysis passed (passed every step after 2 checks); approved by cy"


def test_without_a_prometheus_connection_a_window_is_inconclusive_never_a_pass() -> None:
    from mlops_airflow.canary import judge_window

    result = judge_window("", "diabetes", {"steps": [10, 50], "interval_s": 30.0}, weight=10)
    assert result["outcome"] == "inconclusive"
    assert "prometheus_default" in result["summary"]
