"""Progressive delivery under a real scheduler, triggerer, model server and Prometheus.

One stack (tests/canary_stack.py: ``make run``'s processes, Prometheus
scraping every second) runs the lifecycle's canary tasks behind a stand-in
``register``.  A client loop sends predictions to the model's ``stable``
label for the whole module and no request may fail.  In file order:

- a good version (answers within a few percent of stable) is promoted step by step;
- a version that answers NaN for production-like rows (but not for the held-out
  rows the deploy checks) is rolled back by the analysis;
- with approval asked for, a person's Reject (over the REST API, as the UI sends it) rolls it back, and so
  does nobody answering within the approval's timeout;
- the scheduler killed (SIGKILL) while the analysis waits on the triggerer: the run resumes and promotes.

After each: ``canary`` is gone (file and server), the route's weight is 0,
``stable`` is where it should be, and the audit log says why.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from airflow_stack import AirflowStack, wait_until
from canary_stack import MODEL, N_FEATURES, ClientLoop, canary_stack, client_loop, run, trigger
from model_factory import make_misbehaving_model, make_saved_model

from include.mlops.deploy.traffic_split import LocalRoute
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.label_log import read_label_moves

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canary-e2e")


@pytest.fixture(scope="module")
def registry(workdir: Path) -> Registry:
    """1: sum(x) (stable); 2, 4, 5: 1.02, 1.01, 1.03 x sum(x) (good); 3: NaN where x0 > 0.5 (bad)."""
    reg = Registry(workdir / "artifacts" / "models")
    saved = workdir / "saved"
    models = [
        make_saved_model(saved / "1", N_FEATURES, scale=1.0),
        make_saved_model(saved / "2", N_FEATURES, scale=1.02),
        make_misbehaving_model(saved / "3", N_FEATURES, fault="nan", threshold=0.5),
        make_saved_model(saved / "4", N_FEATURES, scale=1.01),
        make_saved_model(saved / "5", N_FEATURES, scale=1.03),
    ]
    for version, model in enumerate(models, start=1):
        reg.register(MODEL, model, metrics={"mae": 1.0}, lineage={"dag_id": "setup", "run_id": f"r{version}"})
    reg.set_label(MODEL, "stable", 1)
    return reg


@pytest.fixture(scope="module")
def stack(workdir: Path, registry: Registry) -> Iterator[AirflowStack]:
    with canary_stack(workdir) as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def load(stack: AirflowStack) -> Iterator[ClientLoop]:
    with client_loop(stack) as loop:
        yield loop
    assert loop.sent > 1000
    assert loop.failed == [], f"{len(loop.failed)} of {loop.sent} requests on stable failed: {loop.failed[:5]}"


def states(tasks: dict[str, dict]) -> dict[str, str | None]:
    return {task_id: ti["state"] for task_id, ti in tasks.items()}


def assert_canary_gone(stack: AirflowStack, registry: Registry, stable: int) -> None:
    assert registry.labels(MODEL) == {"stable": stable}
    assert LocalRoute(registry.root).canary_weight(MODEL) == 0
    response = httpx.get(f"{stack.server_url}/v1/models/{MODEL}/labels/stable/metadata", timeout=10)
    assert int(response.json()["model_spec"]["version"]) == stable
    canary = httpx.post(f"{stack.server_url}/v1/models/{MODEL}/labels/canary:predict",
                        json={"instances": [[1.0] * N_FEATURES]}, timeout=10)  # fmt: skip
    assert canary.status_code in (400, 404)


def last_reason(registry: Registry, label: str) -> str:
    return [m for m in read_label_moves(registry.model_dir(MODEL)) if m["label"] == label][-1]["reason"]


def test_a_good_version_is_promoted_step_by_step(stack: AirflowStack, registry: Registry) -> None:
    state, tasks = run(stack, "canary", 2, "2026-12-01T00:00:00+00:00")
    assert state == "success", states(tasks)
    assert {tasks[t]["state"] for t in ("promote", "end_canary", "canary_outcome")} == {"success"}
    assert_canary_gone(stack, registry, stable=2)
    assert "canary analysis passed" in last_reason(registry, "stable")
    assert "canary promoted" in last_reason(registry, "canary")


def test_a_version_answering_nan_is_rolled_back(stack: AirflowStack, registry: Registry) -> None:
    state, tasks = run(stack, "canary", 3, "2026-12-02T00:00:00+00:00")
    assert state == "failed", states(tasks)
    assert tasks["canary_analysis"]["state"] == "failed"
    assert tasks["promote"]["state"] == "upstream_failed"
    assert tasks["end_canary"]["state"] == "success" and tasks["canary_outcome"]["state"] == "failed"
    assert_canary_gone(stack, registry, stable=2)
    assert "analysis aborted" in last_reason(registry, "canary")


def test_a_rejected_approval_rolls_back(stack: AirflowStack, registry: Registry) -> None:
    run_id = trigger(stack, "canary_approval", 4, "2026-12-03T00:00:00+00:00")
    hitl = f"/api/v2/dags/canary_approval/dagRuns/{run_id}/taskInstances/approve_canary/-1/hitlDetails"

    def awaiting() -> bool:
        return stack.task_states("canary_approval", run_id).get("approve_canary") == "awaiting_input"

    wait_until(awaiting, 300, "the approval task waiting for a person")
    # Airflow 3.3.2 races an answer against the scheduler's handling of the paused process's exit: an answer
    # that lands first requeues the task, and the late executor event then marks it failed ("state changed
    # externally").  People answer minutes later; the test waits until the scheduler logged that event.
    event = "state success for task instance TaskInstanceKey(dag_id='canary_approval', task_id='approve_canary'"
    wait_until(lambda: event in (stack.home / "scheduler.log").read_text(), 120, "the paused process's exit handled")
    details = stack.api().get(hitl).json()
    assert "Canary analysis" in details["body"] and "passed every step" in details["body"]
    answer = stack.api().patch(hitl, json={"chosen_options": ["Reject"]})
    assert answer.status_code == 200, answer.text
    (finished,) = stack.wait_for_runs("canary_approval", {run_id}, timeout=300)
    tasks = stack.task_states("canary_approval", run_id)
    # A person's decision is not a failure: the run succeeds, promote is skipped, the canary is removed.
    assert finished["state"] == "success", tasks
    assert tasks["promote"] == "skipped" and tasks["end_canary"] == "success", tasks
    assert_canary_gone(stack, registry, stable=2)
    assert "promotion Reject by admin" in last_reason(registry, "canary")


def test_an_approval_nobody_answers_rolls_back_when_it_times_out(stack: AirflowStack, registry: Registry) -> None:
    state, tasks = run(stack, "canary_approval_timeout", 4, "2026-12-05T00:00:00+00:00")
    assert state == "success", states(tasks)
    assert tasks["promote"]["state"] == "skipped" and tasks["end_canary"]["state"] == "success", states(tasks)
    assert_canary_gone(stack, registry, stable=2)
    assert "promotion Reject by nobody (timed out, default Reject)" in last_reason(registry, "canary")


def test_a_scheduler_killed_during_the_analysis_window_resumes_and_promotes(
    stack: AirflowStack, registry: Registry
) -> None:
    run_id = trigger(stack, "canary", 5, "2026-12-04T00:00:00+00:00")
    wait_until(
        lambda: stack.task_states("canary", run_id).get("canary_analysis") == "deferred",
        300,
        "the analysis waiting on the triggerer",
    )
    scheduler = stack.pid("scheduler")
    os.kill(scheduler, signal.SIGKILL)
    wait_until(lambda: stack.pid("scheduler") not in (0, scheduler), 120, "supervisord restarting the scheduler")
    (finished,) = stack.wait_for_runs("canary", {run_id}, timeout=600)
    assert finished["state"] == "success", stack.task_states("canary", run_id)
    assert_canary_gone(stack, registry, stable=5)
