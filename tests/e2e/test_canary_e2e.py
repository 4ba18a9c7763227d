"""Progressive delivery under a real scheduler, triggerer, model server and Prometheus.

One stack (``make run``'s processes, Prometheus scraping every second) runs a
DAG folder with the lifecycle's canary tasks (``mlops_airflow.canary``) behind
a stand-in ``register`` that returns the version given in the trigger form.
A client loop sends predictions to the model's ``stable`` label for the whole
test and counts every failed request.

- a good version (answers within a few percent of stable) is promoted step by step;
- a version that answers NaN for production-like rows (but not for the held-out
  rows the deploy checks) is rolled back by the analysis;
- with approval asked for, a person's Reject (over the REST API, as the UI sends it) rolls it back.

After each: ``canary`` is gone (file and server), the route's weight is 0,
``stable`` is where it should be, and the audit log says why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from airflow_stack import AirflowStack, airflow_stack
from model_factory import make_misbehaving_model, make_saved_model

from include.mlops.config import find_model_config
from include.mlops.deploy.traffic_split import LocalRoute
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.label_log import read_label_moves

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODEL = "diabetes"
N_FEATURES = len(find_model_config(MODEL).features)
DAGS = """
import dataclasses
import datetime as dt

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Param

from include.mlops.config import find_model_config
from include.mlops.config.deploy import CanaryConfig
from mlops_airflow.backends import step_operator
from mlops_airflow.canary import canary_delivery

BASE = find_model_config("{model}")
for dag_id, approval in (("canary", False), ("canary_approval", True)):
    canary = CanaryConfig(steps=(20, 50), interval_s=6.0, min_requests=10, failure_limit=1, inconclusive_limit=3,
                          approval=approval, approval_timeout_s=600.0)
    config = dataclasses.replace(BASE, deploy=dataclasses.replace(BASE.deploy, canary=canary))
    with DAG(dag_id=dag_id, schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
             params={{"version": Param(2, type="integer")}}, is_paused_upon_creation=False,
             default_args={{"retries": 0}}):
        snapshot = PythonOperator(task_id="snapshot", python_callable=lambda: {{"data_uri": "{data}"}})
        register = PythonOperator(task_id="register", python_callable=lambda params: {{"version": params["version"]}})
        snapshot >> register

        def step(task_id, step_name, config=config, **kwargs):
            return step_operator(task_id=task_id, step=step_name, model=config.name, config=config, **kwargs)

        canary_delivery(config, register, step)
"""


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


class ClientLoop:
    """Predictions on ``stable`` from a thread, about 40 a second, each with one production-like row."""

    def __init__(self, server_url: str) -> None:
        self.url = f"{server_url}/v1/models/{MODEL}/labels/stable:predict"
        self.sent = 0
        self.failed: list[str] = []
        self.answers: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                row = rng.normal(1.0, 1.0, size=N_FEATURES).round(4).tolist()
                try:
                    response = client.post(self.url, json={"instances": [row]})
                    if response.status_code != 200:
                        self.failed.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        self.answers.append(response.json()["predictions"][0][0])
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))
                self.sent += 1
                time.sleep(0.025)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canary-e2e")


@pytest.fixture(scope="module")
def registry(workdir: Path) -> Registry:
    """1: sum(x) (stable); 2: 1.02 * sum(x) (good); 3: NaN where x0 > 0.5 (bad); 4: like 2, for the approval."""
    reg = Registry(workdir / "artifacts" / "models")
    saved = workdir / "saved"
    models = [
        make_saved_model(saved / "1", N_FEATURES, scale=1.0),
        make_saved_model(saved / "2", N_FEATURES, scale=1.02),
        make_misbehaving_model(saved / "3", N_FEATURES, fault="nan", threshold=0.5),
        make_saved_model(saved / "4", N_FEATURES, scale=1.01),
    ]
    for version, model in enumerate(models, start=1):
        reg.register(MODEL, model, metrics={"mae": 1.0}, lineage={"dag_id": "setup", "run_id": f"r{version}"})
    reg.set_label(MODEL, "stable", 1)
    return reg


@pytest.fixture(scope="module")
def stack(workdir: Path, registry: Registry) -> Iterator[AirflowStack]:
    # The deploy's held-out rows stay below the NaN model's threshold: only the traffic shows its fault.
    rows = pd.DataFrame(np.random.default_rng(0).uniform(-1.0, 0.0, size=(20, N_FEATURES)))
    rows.columns = list(find_model_config(MODEL).features)
    rows["split"] = "test"
    rows.to_parquet(workdir / "rows.parquet", index=False)
    dags = workdir / "dags"
    dags.mkdir()
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "MLOPS_PROMETHEUS_SCRAPE_INTERVAL": "1s"}
    with airflow_stack(workdir, env) as running:
        (dags / "canary.py").write_text(DAGS.format(model=MODEL, data=workdir / "rows.parquet"))
        for dag_id in ("canary", "canary_approval"):
            running.wait_for_dag(dag_id)
        yield running


@pytest.fixture(scope="module")
def client_loop(stack: AirflowStack) -> Iterator[ClientLoop]:
    with ClientLoop(stack.server_url) as loop:
        yield loop
    assert loop.failed == [], f"{len(loop.failed)} of {loop.sent} requests on stable failed: {loop.failed[:5]}"


def run(stack: AirflowStack, dag_id: str, version: int, logical_date: str) -> tuple[str, dict[str, str | None]]:
    response = stack.trigger(dag_id, logical_date, {"version": version})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    (finished,) = stack.wait_for_runs(dag_id, {run_id}, timeout=600)
    return finished["state"], stack.task_states(dag_id, run_id)


def assert_canary_gone(stack: AirflowStack, registry: Registry, stable: int) -> None:
    assert registry.labels(MODEL) == {"stable": stable}
    assert LocalRoute(registry.root).canary_weight(MODEL) == 0
    response = httpx.get(f"{stack.server_url}/v1/models/{MODEL}/labels/stable/metadata", timeout=10)
    assert int(response.json()["model_spec"]["version"]) == stable
    canary = httpx.post(f"{stack.server_url}/v1/models/{MODEL}/labels/canary:predict",
                        json={"instances": [[1.0] * N_FEATURES]}, timeout=10)  # fmt: skip
    assert canary.status_code in (400, 404)


def last_reasons(registry: Registry, label: str) -> str:
    return [m for m in read_label_moves(registry.model_dir(MODEL)) if m["label"] == label][-1]["reason"]


def test_a_good_version_is_promoted_step_by_step(
    stack: AirflowStack, registry: Registry, client_loop: ClientLoop
) -> None:
    state, tasks = run(stack, "canary", 2, "2026-12-01T00:00:00+00:00")
    assert state == "success", tasks
    assert tasks["promote"] == "success" and tasks["end_canary"] == "success"
    assert tasks["canary_outcome"] == "success"
    assert_canary_gone(stack, registry, stable=2)
    assert "canary analysis passed" in last_reasons(registry, "stable")
    assert "canary promoted" in last_reasons(registry, "canary")


def test_a_version_answering_nan_is_rolled_back(
    stack: AirflowStack, registry: Registry, client_loop: ClientLoop
) -> None:
    state, tasks = run(stack, "canary", 3, "2026-12-02T00:00:00+00:00")
    assert state == "failed", tasks
    assert tasks["canary_analysis"] == "failed"
    assert tasks["promote"] == "upstream_failed"
    assert tasks["end_canary"] == "success" and tasks["canary_outcome"] == "failed"
    assert_canary_gone(stack, registry, stable=2)
    assert "analysis aborted" in last_reasons(registry, "canary")


def test_a_rejected_approval_rolls_back(stack: AirflowStack, registry: Registry, client_loop: ClientLoop) -> None:
    response = stack.trigger("canary_approval", "2026-12-03T00:00:00+00:00", {"version": 4})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    hitl = f"/api/v2/dags/canary_approval/dagRuns/{run_id}/taskInstances/approve_canary/-1/hitlDetails"

    def awaiting() -> bool:
        return stack.task_states("canary_approval", run_id).get("approve_canary") == "awaiting_input"

    wait_until(awaiting, 300, "the approval task waiting for a person")
    # A person answers after seconds at least.  An answer within ~1 s of the pause races the executor's report
    # of the paused process in Airflow 3.3.2 (the requeued task is then marked failed, "state changed
    # externally"); waiting a few seconds stays clear of that race, as any human answer does.
    time.sleep(5)
    details = stack.api().get(hitl).json()
    assert "Canary analysis" in details["body"] and "pass" in details["body"]
    answer = stack.api().patch(hitl, json={"chosen_options": ["Reject"]})
    assert answer.status_code == 200, answer.text
    (finished,) = stack.wait_for_runs("canary_approval", {run_id}, timeout=300)
    tasks = stack.task_states("canary_approval", run_id)
    # A person's decision is not a failure: the run succeeds, promote is skipped, the canary is removed.
    assert finished["state"] == "success", tasks
    assert tasks["promote"] == "skipped" and tasks["end_canary"] == "success", tasks
    assert_canary_gone(stack, registry, stable=2)
    assert "Reject" in last_reasons(registry, "canary")
