"""Every way a deploy task can end under a real scheduler leaves ``stable`` on a verified version.

One stack of ``make run`` (scheduler, API server, DAG processor, model server)
runs a DAG folder with one DAG per ending.  Each DAG's only task is the real
deploy step through the local backend's operator; a fault file
(``$MLOPS_TEST_FAULT_AFTER_LABEL_MOVE=@file``) makes the step stop right after
its label moved, the worst moment, in the way each ending needs:

- ``execution_timeout`` (the step hangs; Airflow times the task out: SIGTERM);
- "mark failed" from the UI, through the REST API (the step hangs; SIGTERM);
- retries exhausted (SIGKILL in every attempt);
- the next run of a DAG finding the journal the last one left.

After each, ``stable`` answers through the model server with a verified
version, and the champion lookup (what the next gate compares against)
names it.  The tests run in file order on versions 1 (x1), 2 (x2), 3 (x3).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from airflow_stack import AirflowStack, airflow_stack, wait_until
from model_factory import make_saved_model

from include.mlops.config import find_model_config
from include.mlops.deploy.deploy import FAULT_AFTER_LABEL_MOVE_ENV
from include.mlops.deploy.journal import journal_path
from include.mlops.registry.catalog import Catalog
from include.mlops.registry.filesystem import Registry
from include.mlops.steps.runners import champion

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODEL = "diabetes"
DAGS = """
import datetime as dt

from airflow.sdk import DAG, Param

from mlops_airflow.operators import LifecycleStepOperator

ENDINGS = {{
    "deploy_times_out": dict(execution_timeout=dt.timedelta(seconds=90), retries=0),
    "deploy_marked_failed": dict(retries=0),
    "deploy_retried": dict(retries=1, retry_delay=dt.timedelta(seconds=1)),
    "deploy_next_run": dict(retries=0),
}}
for dag_id, task_args in ENDINGS.items():
    with DAG(dag_id=dag_id, schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
             params={{"version": Param(2, type="integer")}}, is_paused_upon_creation=False):
        LifecycleStepOperator(
            task_id="deploy", step="deploy", model="{model}",
            arguments={{"version": "{{{{ params.version }}}}", "server_url": "{server_url}", "data": "{data}",
                        "timeout": 60}},
            **task_args,
        )
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-endings")


@pytest.fixture(scope="module")
def registry(workdir: Path) -> Registry:
    """Versions 1-3 answer ``sum(x) * version``; ``stable`` names version 1, verified by the setup."""
    reg = Registry(workdir / "artifacts" / "models")
    n = len(find_model_config(MODEL).features)
    for version in (1, 2, 3):
        model = make_saved_model(workdir / "saved" / str(version), n, scale=float(version))
        reg.register(MODEL, model, metrics={"mae": 1.0}, lineage={"dag_id": "setup", "run_id": f"r{version}"})
    reg.set_label(MODEL, "stable", 1)
    return reg


@pytest.fixture(scope="module")
def fault_file(workdir: Path) -> Path:
    return workdir / "fault"


@pytest.fixture(scope="module")
def stack(workdir: Path, registry: Registry, fault_file: Path) -> Iterator[AirflowStack]:
    features = list(find_model_config(MODEL).features)
    rows = pd.DataFrame(np.random.default_rng(0).normal(size=(20, len(features))), columns=features)
    rows["split"] = "test"
    rows.to_parquet(workdir / "rows.parquet", index=False)
    dags = workdir / "dags"
    dags.mkdir()
    env = {FAULT_AFTER_LABEL_MOVE_ENV: f"@{fault_file}", "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    with airflow_stack(workdir, env) as running:
        text = DAGS.format(model=MODEL, server_url=running.server_url, data=workdir / "rows.parquet")
        (dags / "deploy_endings.py").write_text(text)
        for dag_id in ("deploy_times_out", "deploy_marked_failed", "deploy_retried", "deploy_next_run"):
            running.wait_for_dag(dag_id)
        yield running


def label_answers(stack: AirflowStack) -> int | None:
    response = httpx.get(f"{stack.server_url}/v1/models/{MODEL}/labels/stable/metadata", timeout=10)
    return int(response.json()["model_spec"]["version"]) if response.status_code == 200 else None


def stable_prediction(stack: AirflowStack) -> float:
    url = f"{stack.server_url}/v1/models/{MODEL}/labels/stable:predict"
    response = httpx.post(url, json={"instances": [[1.0] * 10]}, timeout=10)
    return float(response.json()["predictions"][0][0])


def assert_stable_is_verified(stack: AirflowStack, registry: Registry, version: int, monkeypatch: pytest.MonkeyPatch):
    """``stable`` names ``version`` in the file and through the server, and the next gate compares against it."""
    assert registry.labels(MODEL) == {"stable": version}
    assert not journal_path(registry.model_dir(MODEL), "stable").exists()
    wait_until(lambda: label_answers(stack) == version, 30, f"stable answering with version {version}")
    assert stable_prediction(stack) == pytest.approx(10.0 * version)
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(stack.artifact_root))
    assert champion(find_model_config(MODEL), "auto") == (str(registry.version_dir(MODEL, version)), version)


def trigger(stack: AirflowStack, dag_id: str, version: int) -> str:
    response = stack.trigger(dag_id, "2026-12-01T00:00:00+00:00", {"version": version})
    assert response.status_code == 200, response.text
    return response.json()["dag_run_id"]


def finished(stack: AirflowStack, dag_id: str, run_id: str, timeout: float = 300) -> dict:
    [run] = stack.wait_for_runs(dag_id, {run_id}, timeout=timeout)
    return run


def task_log(stack: AirflowStack, dag_id: str, run_id: str, try_number: int) -> str:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/deploy/logs/{try_number}"
    response = stack.api().get(path, params={"full_content": True}, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    return response.text


def test_execution_timeout_puts_the_label_back(
    stack: AirflowStack, registry: Registry, fault_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_file.write_text("hang")
    run_id = trigger(stack, "deploy_times_out", 2)
    wait_until(lambda: registry.label_version(MODEL, "stable") == 2, 120, "the label move to version 2")
    run = finished(stack, "deploy_times_out", run_id)
    assert run["state"] == "failed"
    assert_stable_is_verified(stack, registry, 1, monkeypatch)


def test_mark_failed_through_the_rest_api_puts_the_label_back(
    stack: AirflowStack, registry: Registry, fault_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_file.write_text("hang")
    run_id = trigger(stack, "deploy_marked_failed", 2)
    wait_until(lambda: registry.label_version(MODEL, "stable") == 2, 120, "the label move to version 2")
    path = f"/api/v2/dags/deploy_marked_failed/dagRuns/{run_id}/taskInstances/deploy"
    response = stack.api().patch(path, json={"new_state": "failed"})
    assert response.status_code == 200, response.text
    # The supervisor's next heartbeat hears that the task should stop, and SIGTERM reaches the step.
    wait_until(lambda: registry.label_version(MODEL, "stable") == 1, 120, "the label back on version 1")
    assert finished(stack, "deploy_marked_failed", run_id)["state"] == "failed"
    wait_until(lambda: not journal_path(registry.model_dir(MODEL), "stable").exists(), 30, "the journal removed")
    assert_stable_is_verified(stack, registry, 1, monkeypatch)


def test_retries_exhausted_leave_a_journal_that_readers_see_through(
    stack: AirflowStack, registry: Registry, fault_file: Path
) -> None:
    fault_file.write_text("sigkill")
    run_id = trigger(stack, "deploy_retried", 2)
    run = finished(stack, "deploy_retried", run_id)
    assert run["state"] == "failed"
    [ti] = stack.task_instances("deploy_retried", run_id)
    assert ti["try_number"] == 2
    # The second attempt repaired what the first left, then died the same way.
    assert "did not finish; repaired" in task_log(stack, "deploy_retried", run_id, 2)
    # SIGKILL cleans nothing up: the label names the unverified version until a deploy or a lookup repairs it,
    # and the Models view shows the last verified one with the unfinished move.
    assert registry.labels(MODEL) == {"stable": 2}
    assert journal_path(registry.model_dir(MODEL), "stable").is_file()
    record = Catalog(stack.artifact_root).model(MODEL)
    assert record.stable_version == 1 and [u["version"] for u in record.unfinished_deploys] == [2]


def test_the_next_run_repairs_the_label_before_it_deploys(
    stack: AirflowStack, registry: Registry, fault_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_file.write_text("")
    run_id = trigger(stack, "deploy_next_run", 3)
    run = finished(stack, "deploy_next_run", run_id)
    log = task_log(stack, "deploy_next_run", run_id, 1)
    assert run["state"] == "success", log[-3000:]
    assert "was moving label 'stable' from version 1 to version 2 and did not finish; repaired" in log
    assert_stable_is_verified(stack, registry, 3, monkeypatch)
