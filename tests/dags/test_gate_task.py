"""The gate task fails closed on a champion evaluate could not score, and the first task refuses impossible thresholds.

Both without a DAG run: the operator's ``choose_branch`` and the first task's
check on a hand-made context (the dag.test() runs are in tests/integration).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.mlops.artifacts import run_dir
from include.mlops.config import find_model_config
from mlops_airflow.gate_operators import GateOperator
from mlops_airflow.lifecycle import check_trigger_conf
from mlops_airflow.params import lifecycle_params

DIABETES = find_model_config("diabetes")
RUN_ID = "manual__2026-11-27T00:00:00+00:00"
METRICS = {"mae": 44.0, "mse": 3000.0, "rmse": 54.8, "r2": 0.47, "size_mb": 0.04, "latency_ms": 1.5}
UNSCORED = {"version": 2, "reason": "model expects 9 features, the config has 10", "model_uri": "/models/diabetes/2"}


def _gate_context(evaluation: dict[str, Any], **params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    pushed: dict[str, Any] = {}

    def xcom_pull(task_ids: str | None = None, key: str | None = None) -> Any:
        return evaluation if task_ids == "evaluate" else None

    context = {
        "ti": SimpleNamespace(xcom_pull=xcom_pull, xcom_push=lambda key, value: pushed.__setitem__(key, value)),
        "params": {"thresholds": {}, "max_regression": None, "force_deploy": False, "skip_deploy": False, **params},
        "dag_run": SimpleNamespace(run_id=RUN_ID, run_type="manual"),
    }
    return context, pushed


def _evaluation(**fields: Any) -> dict[str, Any]:
    return {"metrics": METRICS, "model_uri": "/runs/x/train/model", "tflite_uri": None, "champion": None, **fields}


def _gate() -> GateOperator:
    return GateOperator(task_id="gate", config=DIABETES, evaluate_task_id="evaluate", on_fail="optimize")


def test_an_unscored_champion_fails_the_gate_task_without_retry(artifact_root: Path) -> None:
    context, pushed = _gate_context(_evaluation(champion_unscored=UNSCORED), force_deploy=True)
    with pytest.raises(AirflowFailException) as caught:
        _gate().choose_branch(context)
    message = str(caught.value)
    assert message.startswith("the gate fails closed: the champion (version 2) could not be scored")
    assert UNSCORED["reason"] in message and "accept_without_champion=true" in message
    assert pushed == {}
    assert not (run_dir(DIABETES.dag_id, RUN_ID, "gate") / "decision.json").exists()


def test_accept_without_champion_lets_the_gate_decide_and_records_it(artifact_root: Path) -> None:
    context, pushed = _gate_context(_evaluation(champion_unscored=UNSCORED), accept_without_champion=True)
    assert _gate().choose_branch(context) == "register"
    record = json.loads((run_dir(DIABETES.dag_id, RUN_ID, "gate") / "decision.json").read_text())
    assert record["decision"]["accepted_without_champion"] is True
    assert record["decision"]["champion_unscored"] == UNSCORED
    assert record["accepted_without_champion"] is True and record["champion_unscored"] == UNSCORED
    assert record["params"]["accept_without_champion"] is True
    markdown = (run_dir(DIABETES.dag_id, RUN_ID, "gate") / "decision.md").read_text()
    assert "**Accepted without a champion**: the champion (version 2) could not be scored" in markdown
    assert pushed["decision"]["route"] == "register" and pushed["candidate"]["decision_uri"].endswith("decision.json")


def test_the_first_run_without_a_champion_is_not_an_acceptance(artifact_root: Path) -> None:
    context, _ = _gate_context(_evaluation(champion_unscored=None))
    assert _gate().choose_branch(context) == "register"
    record = json.loads((run_dir(DIABETES.dag_id, RUN_ID, "gate") / "decision.json").read_text())
    assert record["decision"]["accepted_without_champion"] is False and record["champion_unscored"] is None


def test_the_trigger_form_describes_accept_without_champion() -> None:
    param = lifecycle_params(DIABETES)["accept_without_champion"]
    assert param.value is False
    assert param.schema["type"] == ["null", "boolean"] and param.schema["title"] == "Accept without champion"
    assert "could not score" in param.description and "model card" in param.description


def _first_task_context(conf: dict[str, Any]) -> dict[str, Any]:
    params = {name: param.value for name, param in lifecycle_params(DIABETES).items()}
    return {
        "dag_run": SimpleNamespace(conf=conf),
        "dag": SimpleNamespace(params=params),
        "params": {**params, **conf},
    }


@pytest.mark.parametrize(
    ("thresholds", "reason"),
    [
        ({"r2": {"min": 1.5}}, "r2 min 1.5 can never be met: r2 is at most 1"),
        ({"mae": {"max": -1}}, "mae max -1 can never be met: mae is at least 0"),
        ({"r2": {"max": 0.1}}, "r2 max 0.1 is on the wrong side: higher r2 is better"),
    ],
)
def test_the_first_task_refuses_thresholds_no_model_can_meet(thresholds: dict[str, Any], reason: str) -> None:
    with pytest.raises(AirflowFailException) as caught:
        check_trigger_conf(_first_task_context({"thresholds": thresholds}), DIABETES)
    message = str(caught.value)
    assert message.startswith("the run was triggered with a gate setting that is refused: threshold override ")
    assert reason in message and "Nothing was run" in message


def test_the_first_task_accepts_thresholds_a_model_can_meet() -> None:
    check_trigger_conf(_first_task_context({"thresholds": {"r2": {"min": 1.0}, "mae": {"max": 0.0}}}), DIABETES)
    check_trigger_conf(_first_task_context({"max_regression": 0.0, "accept_without_champion": True}), DIABETES)
    check_trigger_conf(_first_task_context({}), DIABETES)
