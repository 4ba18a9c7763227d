"""As a user would run it: a real Airflow, a run triggered over REST, then a backfill.

Starts ``airflow api-server``, ``scheduler`` and ``dag-processor`` on a private
home and a loopback port, triggers ``lifecycle__diabetes`` through the REST API
with a conf, waits for success, then backfills two past days with
``airflow backfill create`` and checks that they succeed and never move
``stable``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from airflow_stack import AirflowStack, airflow_stack

from include.mlops.artifacts import run_dir
from include.mlops.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DAG_ID = "lifecycle__diabetes"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    with airflow_stack(tmp_path_factory.mktemp("airflow-e2e")) as running:
        running.wait_for_dag(DAG_ID)
        yield running


def test_dags_are_loaded_and_unpaused(stack: AirflowStack) -> None:
    dags = stack.api().get("/api/v2/dags").json()["dags"]
    by_id = {d["dag_id"]: d for d in dags}
    assert {"lifecycle__diabetes", "lifecycle__digits"} <= set(by_id)
    assert by_id[DAG_ID]["is_paused"] is False
    errors = stack.api().get("/api/v2/importErrors").json()
    assert errors["total_entries"] == 0, errors


@pytest.mark.parametrize(
    "conf",
    [{"epochs": 0}, {"learning_rate": "fast"}, {"thresholds": {"auc": {"min": 0.5}}}, {"force_deploy": "yes"}],
)
def test_rest_api_refuses_bad_params(stack: AirflowStack, conf: dict) -> None:
    response = stack.trigger(DAG_ID, "2026-11-05T00:00:00Z", conf)
    assert response.status_code == 400, response.text
    assert next(iter(conf)) in response.text
    assert not [r for r in stack.dag_runs(DAG_ID) if r["logical_date"].startswith("2026-11-05")]


def served_version(stack: AirflowStack, label: str = "stable") -> int:
    response = httpx.get(f"{stack.server_url}/v1/models/diabetes/labels/{label}", timeout=10)
    response.raise_for_status()
    [status] = response.json()["model_version_status"]
    assert status["state"] == "AVAILABLE"
    return int(status["version"])


def predict_through_stable(stack: AirflowStack) -> list[list[float]]:
    row = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]
    response = httpx.post(
        f"{stack.server_url}/v1/models/diabetes/labels/stable:predict", json={"instances": [row, row]}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_nightly_then_triggered_run_deploy_and_serve_then_backfill_never_moves_stable(stack: AirflowStack) -> None:
    # The DAG is unpaused, so the scheduler starts the latest nightly run by itself: version 1.
    [nightly] = stack.wait_for_runs(DAG_ID, count=1, run_type="scheduled")
    assert nightly["state"] == "success", stack.task_states(DAG_ID, nightly["dag_run_id"])
    assert served_version(stack) == 1
    first_answers = predict_through_stable(stack)
    assert len(first_answers) == 2 and 25 < first_answers[0][0] < 350

    # A run triggered over REST with a conf, as from the UI's trigger form: version 2.
    response = stack.trigger(DAG_ID, "2026-11-20T00:00:00Z", {"batch_size": 32, "max_regression": 0.05})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    [run] = stack.wait_for_runs(DAG_ID, {run_id})
    states = stack.task_states(DAG_ID, run_id)
    assert run["state"] == "success", states
    assert states["deploy"] == "success" and states["optimize"] == "skipped"
    assert served_version(stack) == 2
    assert predict_through_stable(stack)

    registry = Registry(stack.artifact_root / "models")
    assert registry.versions("diabetes") == [1, 2]
    assert registry.label_version("diabetes", "stable") == 2
    config_before = (stack.artifact_root / "models" / "models.config").read_bytes()

    stack.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", "2026-11-12", "--to-date", "2026-11-13")
    backfill_runs = stack.wait_for_runs(DAG_ID, count=2, run_type="backfill")
    assert sorted(r["logical_date"][:10] for r in backfill_runs) == ["2026-11-12", "2026-11-13"]
    for backfill_run in backfill_runs:
        states = stack.task_states(DAG_ID, backfill_run["dag_run_id"])
        assert backfill_run["state"] == "success", states
        assert states["evaluate"] == "success" and states["skip_deploy"] == "success"
        assert states["register"] == "skipped" and states["deploy"] == "skipped"
        evaluation = run_dir(DAG_ID, backfill_run["dag_run_id"], "evaluate", root=stack.artifact_root)
        assert json.loads((evaluation / "metrics.json").read_text())["metrics"], "backfill keeps the quality history"

    assert registry.versions("diabetes") == [1, 2]
    assert registry.label_version("diabetes", "stable") == 2
    assert served_version(stack) == 2
    assert (stack.artifact_root / "models" / "models.config").read_bytes() == config_before
