"""The gate task fails closed on a champion evaluate could not score, ends a run whose candidate is the champion
without registering it, and the first task refuses impossible thresholds.

All without a DAG run: the operator's ``choose_branch`` and the first task's
check on a hand-made context (the dag.test() runs are in tests/integration).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException

from include.mlops.artifacts import run_dir
from include.mlops.config import find_model_config
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.fingerprint import LINEAGE_KEY, OPTIMIZE_STAGE, candidate_fingerprint, version_fingerprint
from mlops_airflow.gate_operators import GateOperator, SkipDeployOperator, accepted_candidate
from mlops_airflow.lifecycle import check_trigger_conf
from mlops_airflow.params import lifecycle_params

DIABETES = find_model_config("diabetes")
RUN_ID = "manual__2026-11-27T00:00:00+00:00"
METRICS = {"mae": 44.0, "mse": 3000.0, "rmse": 54.8, "r2": 0.47, "size_mb": 0.04, "latency_ms": 1.5}
UNSCORED = {"version": 2, "reason": "model expects 9 features, the config has 10", "model_uri": "/models/diabetes/2"}


def _gate_context(
    evaluation: dict[str, Any], trained: dict[str, Any] | None = None, **params: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A gate task's context: evaluate's and train's results; what the gate pushes is what a later task pulls."""
    pushed: dict[str, Any] = {}

    def xcom_pull(task_ids: str | None = None, key: str | None = None) -> Any:
        if key is not None:
            return pushed.get(key) if task_ids == "gate" else None
        return {"evaluate": evaluation, "train": trained}.get(task_ids or "")

    context = {
        "ti": SimpleNamespace(xcom_pull=xcom_pull, xcom_push=lambda key, value: pushed.__setitem__(key, value)),
        "params": {"thresholds": {}, "max_regression": None, "force_deploy": False, "skip_deploy": False, **params},
        "dag_run": SimpleNamespace(run_id=RUN_ID, run_type="manual"),
    }
    return context, pushed


def _evaluation(**fields: Any) -> dict[str, Any]:
    return {"metrics": METRICS, "model_uri": "/runs/x/train/model", "tflite_uri": None, "champion": None, **fields}


def _gate() -> GateOperator:
    return GateOperator(
        task_id="gate", config=DIABETES, evaluate_task_id="evaluate", on_fail="optimize", train_task_id="train"
    )


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


# --------------------------------------------------------------------------- a candidate identical to the champion

FINGERPRINT = candidate_fingerprint(
    DIABETES, data_sha256="5" * 64, hparams={"epochs": 300, "batch_size": 32}, code="c0de" * 10
)


def _registry_with_champion(root: Path, fingerprint: dict[str, Any] | None) -> Registry:
    """Version 1 of diabetes labelled stable, its lineage holding ``fingerprint`` as register writes it."""
    model = root.parent / "champion-model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"a SavedModel")
    registry = Registry(root / "models")
    lineage = {"dag_id": DIABETES.dag_id, "run_id": "scheduled__2026-11-26T00:00:00+00:00"}
    registry.register("diabetes", model, metrics=METRICS, lineage={**lineage, LINEAGE_KEY: fingerprint})
    registry.set_label("diabetes", "stable", 1)
    return registry


def _champion(registry: Registry) -> dict[str, Any]:
    """The champion as evaluate reports it, its fingerprint read from its version folder as evaluate reads it."""
    return {"version": 1, "metrics": METRICS, "fingerprint": version_fingerprint(registry.version_dir("diabetes", 1))}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [False, True], ids=["gate passed", "force_deploy"])
def test_a_candidate_identical_to_the_champion_registers_nothing_and_says_so(
    artifact_root: Path, force: bool, caplog: pytest.LogCaptureFixture
) -> None:
    registry = _registry_with_champion(artifact_root, FINGERPRINT)
    before = _files(artifact_root / "models")
    context, pushed = _gate_context(
        _evaluation(champion=_champion(registry)), {"fingerprint": dict(FINGERPRINT)}, force_deploy=force
    )

    with caplog.at_level(logging.INFO):
        assert _gate().choose_branch(context) == "skip_deploy"
        with DAG(DIABETES.dag_id, schedule=None):
            ending = SkipDeployOperator(task_id="skip_deploy")
        said = ending.execute(context)

    message = f"candidate is identical to champion version 1 (same data sha256 {'5' * 64} and config"
    assert said.startswith(message) and said.endswith("nothing registered")
    assert message in caplog.text
    assert "candidate" not in pushed and pushed["decision"]["route"] == "identical"
    with pytest.raises(RuntimeError, match="no gate accepted a candidate"):
        accepted_candidate(context)  # what register would do with this run
    record = json.loads((run_dir(DIABETES.dag_id, RUN_ID, "gate") / "decision.json").read_text())
    assert record["route"] == "identical" and record["decision"]["passed"] is True
    assert record["identical_to_champion"]["champion_version"] == 1
    assert record["identical_to_champion"]["fingerprint"]["sha256"] == FINGERPRINT["sha256"]
    assert message in (run_dir(DIABETES.dag_id, RUN_ID, "gate") / "decision.md").read_text()
    assert _files(artifact_root / "models") == before
    assert registry.versions("diabetes") == [1] and registry.labels("diabetes") == {"stable": 1}


@pytest.mark.parametrize(
    ("champion_fingerprint", "trained_fingerprint"),
    [
        (None, FINGERPRINT),  # a champion registered before fingerprints never matches
        (FINGERPRINT, {**FINGERPRINT, "sha256": "f" * 64}),  # other inputs
        (FINGERPRINT, None),  # a train result without one
    ],
    ids=["old champion", "another candidate", "no candidate fingerprint"],
)
def test_any_other_candidate_goes_on_to_register(
    artifact_root: Path, champion_fingerprint: dict | None, trained_fingerprint: dict | None
) -> None:
    registry = _registry_with_champion(artifact_root, champion_fingerprint)
    context, pushed = _gate_context(_evaluation(champion=_champion(registry)), {"fingerprint": trained_fingerprint})
    assert _gate().choose_branch(context) == "register"
    assert pushed["decision"]["identical_to_champion"] is None and pushed["candidate"]


def test_register_records_the_candidates_fingerprint_marked_after_the_optimize_branch() -> None:
    candidate = {"model_uri": "/runs/x/model", "decision_uri": "/runs/x/gate/decision.json"}

    def context(gate_task: str) -> dict[str, Any]:
        results = {("train", None): {"fingerprint": FINGERPRINT}, (gate_task, "candidate"): candidate}
        return {"ti": SimpleNamespace(xcom_pull=lambda task_ids, key=None: results.get((task_ids, key)))}

    assert accepted_candidate(context("gate"))["fingerprint"] == FINGERPRINT
    optimized = accepted_candidate(context("gate_optimized"))["fingerprint"]
    assert optimized["stage"] == OPTIMIZE_STAGE and optimized["sha256"] != FINGERPRINT["sha256"]
    assert {k: v for k, v in optimized.items() if k not in ("sha256", "stage")} == {
        k: v for k, v in FINGERPRINT.items() if k not in ("sha256", "stage")
    }


@pytest.mark.parametrize(
    ("route", "skipped"),
    [
        (
            "register",
            {"tune_plan", "skip_deploy", "tune_trial", "tune_select", "compress", "evaluate_optimized",
             "gate_optimized", "reject"},
        ),
        (
            "skip_deploy",
            {"tune_plan", "register", "deploy", "tune_trial", "tune_select", "compress", "evaluate_optimized",
             "gate_optimized", "reject"},
        ),
        ("tune_plan", None),
    ],
    ids=["register", "identical", "optimize"],
)  # fmt: skip
def test_the_first_gate_skips_everything_only_the_routes_not_taken_lead_to_at_once(
    route: str, skipped: set[str] | None
) -> None:
    # The scheduler would find them one level per pass (about a second each) on the way to register.
    from airflow.sdk.exceptions import DownstreamTasksSkipped

    from mlops_airflow.lifecycle import build_lifecycle_dag

    gate = build_lifecycle_dag(DIABETES).get_task("gate")
    ti = SimpleNamespace(task=gate, map_index=-1, xcom_push=lambda **_: None)
    if skipped is None:  # register and skip_deploy follow the optimize branch too: nothing is skipped
        gate.skip_all_except(ti, route)
        return
    with pytest.raises(DownstreamTasksSkipped) as skipping:
        gate.skip_all_except(ti, route)
    tasks = skipping.value.tasks
    assert {task_id for task_id, _ in tasks} == skipped
    assert {map_index for _, map_index in tasks} == {-1} and len(tasks) == len(skipped)
