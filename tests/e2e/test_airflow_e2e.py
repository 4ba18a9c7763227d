"""As a user would run it: a real Airflow, a run triggered over REST, a backfill, then crashes.

Starts the stack of ``make run`` (API server, scheduler, DAG processor, triggerer and
model server under supervisord, from ``scripts/supervisord.conf``) on a private home and
loopback ports, with each schedule twelve hours away from the wall clock.  One stack serves
the whole module, so the tests run in file order: the first nightly runs of both DAGs succeed with no retry; a run triggered over REST
deploys; a backfill never moves ``stable``; a ``kill -9`` of the model server or of the
scheduler (during ``train``) heals by itself; stopping supervisord leaves no process.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import httpx
import psutil
import pytest
from airflow_stack import ADMIN_PASSWORD, AirflowStack, airflow_stack, wait_until
from browser import AirflowUI, headless_chromium, screenshot, screenshot_on_failure
from selenium.webdriver.common.by import By

from include.mlops.artifacts import run_dir
from include.mlops.registry.filesystem import Registry

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DAG_ID = "lifecycle__diabetes"
DAG_IDS = ("lifecycle__diabetes", "lifecycle__digits")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    with airflow_stack(tmp_path_factory.mktemp("airflow-e2e")) as running:
        for dag_id in DAG_IDS:
            running.wait_for_dag(dag_id)
        yield running


def test_dags_are_loaded_and_unpaused(stack: AirflowStack) -> None:
    dags = stack.api().get("/api/v2/dags").json()["dags"]
    by_id = {d["dag_id"]: d for d in dags}
    assert {"lifecycle__diabetes", "lifecycle__digits"} <= set(by_id)
    assert by_id[DAG_ID]["is_paused"] is False
    errors = stack.api().get("/api/v2/importErrors").json()
    assert errors["total_entries"] == 0, errors


def test_first_nightly_runs_succeed_on_first_try(stack: AirflowStack) -> None:
    # On a fresh home both DAGs start their latest nightly run at once, while the DAG processor
    # and the API server are still warming up: no task may need a second try (issue: ReadTimeout
    # from the task supervisor's execution API calls, then SIGKILL, on the first tasks).
    for dag_id in DAG_IDS:
        [nightly] = stack.wait_for_runs(dag_id, count=1, run_type="scheduled", timeout=1800)
        instances = stack.task_instances(dag_id, nightly["dag_run_id"])
        tries = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in instances}
        assert nightly["state"] == "success", tries
        assert {state for state, _ in tries.values()} <= {"success", "skipped"}, tries
        ran = {task: attempt for task, (state, attempt) in tries.items() if state == "success"}
        assert "snapshot" in ran and "deploy" in ran, tries
        assert set(ran.values()) == {1}, f"tasks of {dag_id}'s first run needed more than one try: {tries}"
        # The step runner (scripts/supervisord.conf) forked the steps that import TensorFlow or GX.
        for task_id in ("validate", "train", "evaluate"):
            log = stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={nightly['dag_run_id']}" / f"task_id={task_id}"
            text = (log / "attempt=1.log").read_text()
            assert "started warm by the step runner" in text, f"{dag_id}.{task_id} started cold:\n{text[-3000:]}"


@pytest.mark.browser
def test_models_view_in_a_real_browser(stack: AirflowStack) -> None:
    # As a person would, right after the first nightly run made version 1: log in through the UI's
    # form, open Models from the nav, then diabetes; see the versions and the quality plot; follow
    # the link to the run that made the version into the Airflow UI.
    [nightly] = stack.wait_for_runs(DAG_ID, count=1, run_type="scheduled", timeout=1800)
    assert nightly["state"] == "success", stack.task_states(DAG_ID, nightly["dag_run_id"])
    run_page = f"/dags/{DAG_ID}/runs/{nightly['dag_run_id']}"
    with headless_chromium() as driver, screenshot_on_failure(driver, "models-view"):
        ui = AirflowUI(driver, stack.base_url)
        ui.log_in("admin", ADMIN_PASSWORD)
        ui.nav_entry("Models").click()
        ui.enter_plugin_frame()
        ui.visible("table#models")
        screenshot(driver, "models-view-models")
        ui.link_to("table#models a.model-link", "/models/diabetes").click()

        ui.visible("table#versions")
        assert driver.find_elements(By.CSS_SELECTOR, "table#versions tr.version"), "no version row after a deploy"
        ui.assert_plot_drawn("#quality-history")
        screenshot(driver, "models-view-diabetes")

        ui.link_to("a.run-link", run_page).click()
        ui.wait_for_run_page(run_page, nightly["dag_run_id"])
        screenshot(driver, "models-view-run")


@pytest.mark.parametrize(
    "conf",
    [{"epochs": 0}, {"learning_rate": "fast"}, {"thresholds": {"auc": {"min": 0.5}}}, {"force_deploy": "yes"}],
)
def test_rest_api_refuses_bad_params(stack: AirflowStack, conf: dict) -> None:
    response = stack.trigger(DAG_ID, "2026-11-05T00:00:00Z", conf)
    assert response.status_code == 400, response.text
    assert next(iter(conf)) in response.text
    assert not [r for r in stack.dag_runs(DAG_ID) if r["logical_date"].startswith("2026-11-05")]


def test_a_misspelled_setting_fails_the_first_task_once_and_never_deploys(stack: AirflowStack) -> None:
    # Airflow 3.3 accepts unknown conf keys at trigger time (they become untyped Params), so the
    # run's first task refuses them before any work, naming them, and does not retry.
    registry = Registry(stack.artifact_root / "models")
    versions_before = registry.versions("diabetes")
    response = stack.trigger(DAG_ID, "2026-11-06T00:00:00Z", {"unknown_param": 1, "epochs": 3})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    [run] = stack.wait_for_runs(DAG_ID, {run_id}, timeout=600)
    tries = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in stack.task_instances(DAG_ID, run_id)}
    assert run["state"] == "failed", tries
    assert tries["snapshot"] == ("failed", 1), tries
    assert not [task for task, (state, _) in tries.items() if state == "success"], tries
    # Nothing else ran, tune_select included (it runs after failed trials, but only once the plan succeeded).
    assert {state for task, (state, _) in tries.items() if task != "snapshot"} == {"upstream_failed"}, tries
    log = stack.api().get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/snapshot/logs/1",
        params={"full_content": True},
        headers={"Accept": "application/json"},
    )
    assert log.status_code == 200, log.text
    assert "unknown_param" in log.text and "epochs" in log.text, log.text[-2000:]
    assert registry.versions("diabetes") == versions_before
    assert not run_dir(DAG_ID, run_id, "snapshot", root=stack.artifact_root).exists()


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

    # A run triggered over REST with a conf, as from the UI's trigger form: version 2.  Every bundled row has
    # arrived by then, as for the nightly run, so the conf must change training (batch size 16, not the config's
    # 32): a candidate identical to stable is not registered.  (Measured: mae 0.7% worse than batch size 32's.)
    response = stack.trigger(DAG_ID, "2026-11-20T00:00:00Z", {"batch_size": 16, "max_regression": 0.05})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    [run] = stack.wait_for_runs(DAG_ID, {run_id})
    states = stack.task_states(DAG_ID, run_id)
    assert run["state"] == "success", states
    assert states["deploy"] == "success" and states["tune_plan"] == "skipped"
    assert served_version(stack) == 2
    assert predict_through_stable(stack)

    registry = Registry(stack.artifact_root / "models")
    assert registry.versions("diabetes") == [1, 2]
    assert registry.label_version("diabetes", "stable") == 2
    config_before = (stack.artifact_root / "models" / "models.config").read_bytes()

    # The stack's nightly runs at an hour away from the wall clock (airflow_stack.models_off_the_clock),
    # so each day's run is reached by its end rather than its midnight.
    stack.create_backfill(DAG_ID, "2026-11-12", "2026-11-13T23:59:59")
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


def latest_backfill(stack: AirflowStack) -> dict:
    # The README's check before starting another backfill (Airflow 3.3 has no CLI to list them).
    response = stack.api().get("/api/v2/backfills", params={"dag_id": DAG_ID, "order_by": "-id", "limit": 1})
    response.raise_for_status()
    [latest] = response.json()["backfills"]
    return latest


def test_a_finished_backfill_is_marked_completed_then_the_next_one_may_start(stack: AirflowStack) -> None:
    wait_until(lambda: latest_backfill(stack)["completed_at"] is not None, 120, "the backfill's completion", every=2)
    stack.create_backfill(DAG_ID, "2026-11-14", "2026-11-14T23:59:59")
    assert latest_backfill(stack)["completed_at"] is None


def test_model_server_comes_back_after_kill_9(stack: AirflowStack) -> None:
    version = served_version(stack)
    crashed = stack.pid("model-server")
    os.kill(crashed, signal.SIGKILL)

    def serves_stable_again() -> bool:
        try:
            return stack.pid("model-server") not in (0, crashed) and served_version(stack) == version
        except httpx.HTTPError:
            return False

    wait_until(serves_stable_again, 120, "the model server's restart", every=2)
    assert predict_through_stable(stack)


def test_scheduler_kill_9_during_train_heals_without_help(stack: AirflowStack) -> None:
    response = stack.trigger(DAG_ID, "2026-11-21T00:00:00Z", {"max_regression": 0.5})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    wait_until(lambda: stack.task_states(DAG_ID, run_id).get("train") == "running", 900, "train running", every=2)
    crashed = stack.pid("scheduler")
    os.kill(crashed, signal.SIGKILL)

    [run] = stack.wait_for_runs(DAG_ID, {run_id}, timeout=1800)
    assert run["state"] == "success", stack.task_instances(DAG_ID, run_id)
    restarted = stack.pid("scheduler")
    assert restarted not in (0, crashed)
    # The crashed scheduler's LocalExecutor workers and log server were ended, so the log
    # server's port is held by the restarted scheduler's own log server.
    assert "address already in use" not in (stack.home / "scheduler.log").read_text().lower()
    [listener] = {
        c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == stack.worker_log_port
    }
    assert restarted in {p.pid for p in psutil.Process(listener).parents()}


def listening(ports: list[int]) -> set[int]:
    # A LISTEN socket, not a connection in TIME_WAIT, is what keeps the next server off its port.
    return {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port in ports}


def test_stopping_the_supervisor_leaves_no_process(stack: AirflowStack) -> None:
    assert stack.component_processes(), "the stack should be running before it is stopped"
    stack.stop()  # what Ctrl-C under `make run` does: SIGTERM to supervisord, then reap its session
    assert stack.component_processes() == []
    ports = [stack.port, stack.server_port, stack.worker_log_port, stack.triggerer_log_port]
    assert listening(ports) == set(), ports
