"""The monitoring end-to-end tests' stack and helpers: the diabetes model served, traffic sent, monitor runs.

:func:`monitoring_stack` starts :func:`airflow_stack.airflow_stack` (Airflow, the model server, Prometheus
and the Pushgateway) over a copy of the diabetes model config (:func:`diabetes_config`) with every request
logged and written within seconds, and unpauses ``lifecycle__diabetes`` and ``monitor__diabetes``; the
helpers below send traffic, trigger monitor runs by hand over REST and read what they decided.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from airflow_stack import AirflowStack, airflow_stack
from tooling import require_executable

from include.mlops.artifacts import run_dir
from include.mlops.config import find_model_config
from include.mlops.monitoring.traffic import latest_snapshot, send_traffic

MODEL = "diabetes"
LIFECYCLE = f"lifecycle__{MODEL}"
MONITOR = f"monitor__{MODEL}"
BRANCHES = ("healthy", "insufficient_data", "slo_breach", "request_retrain")
CONFIG = find_model_config(MODEL)


def diabetes_config(folder: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A models folder with only the diabetes model, its config document changed by ``edit`` (in place)."""
    folder.mkdir(parents=True)
    shutil.copy(CONFIG.builder_path, folder / CONFIG.builder_path.name)
    document = yaml.safe_load(CONFIG.path.read_text())
    edit(document)
    (folder / CONFIG.path.name).write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


@contextmanager
def monitoring_stack(
    workdir: Path,
    models_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    *,
    lifecycle_schedule: str | None = None,
) -> Iterator[AirflowStack]:
    """The stack over ``models_dir``, the lifecycle and monitor DAGs unpaused (their latest scheduled runs start)."""
    require_executable("prometheus", "install it with: apt-get install prometheus prometheus-pushgateway")
    require_executable("prometheus-pushgateway", "install it with: apt-get install prometheus prometheus-pushgateway")
    env = {
        "MLOPS_MODELS_DIR": str(models_dir),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # Every request logged and written within seconds, so a monitor run sees the traffic just sent.
        "MLOPS_PREDLOG_SAMPLE_RATE": "1",
        "MLOPS_PREDLOG_FLUSH_SECONDS": "2",
        **(extra_env or {}),
    }
    with airflow_stack(workdir, extra_env=env, lifecycle_schedule=lifecycle_schedule) as running:
        for dag_id in (LIFECYCLE, MONITOR):
            running.wait_for_dag(dag_id)
            response = running.api().patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
            assert response.status_code == 200, response.text
        yield running


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


def prometheus_value(stack: AirflowStack, promql: str) -> float | None:
    answer = httpx.get(
        f"http://127.0.0.1:{stack.prometheus_port}/api/v1/query", params={"query": promql}, timeout=10
    ).json()
    result = answer.get("data", {}).get("result") or []
    return float(result[0]["value"][1]) if result else None


def traffic(stack: AirflowStack, requests: int, **kwargs: Any) -> None:
    """Send ``requests`` requests, then wait until Prometheus has scraped all of them."""
    query = f'sum(:tensorflow:serving:request_count{{model_name="{CONFIG.serving_name}"}})'
    before = prometheus_value(stack, query) or 0.0
    rows_from = latest_snapshot(CONFIG, root=stack.artifact_root)
    summary = send_traffic(
        CONFIG,
        stack.server_url,
        rate=25,
        requests=requests,
        duration=None,
        seed=7,
        rows_from=rows_from,
        report=lambda line: None,
        **kwargs,
    )
    assert summary.sent == requests and summary.transport_errors == 0, summary
    wait_for(
        lambda: (prometheus_value(stack, query) or 0.0) >= before + requests,
        90,
        f"Prometheus scraping {requests} more requests",
    )
    time.sleep(3)  # the prediction log writes every 2 s


def monitor_run(stack: AirflowStack, at: dt.datetime | None = None) -> tuple[str, dict[str, str | None]]:
    """Trigger ``monitor__diabetes`` for ``at`` (now by default) and wait; its run id and task states.

    A run triggered by hand measures the window that ends at ``at``, and its retraining request is dated ``at``.
    """
    response = stack.trigger(MONITOR, (at or dt.datetime.now(dt.UTC)).isoformat())
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    [run] = stack.wait_for_runs(MONITOR, {run_id}, timeout=600)
    states = stack.task_states(MONITOR, run_id)
    assert run["state"] == "success", states
    return run_id, states


def outcome(stack: AirflowStack, run_id: str) -> dict[str, Any]:
    return json.loads((run_dir(MONITOR, run_id, "decide", root=stack.artifact_root) / "outcome.json").read_text())


def taken(states: Mapping[str, str | None]) -> set[str]:
    return {task for task in BRANCHES if states.get(task) == "success"}


def asset_events(stack: AirflowStack) -> list[dict[str, Any]] | None:
    """The monitor DAG's asset events, or None while Airflow cannot list them yet.

    Airflow 3.3's events endpoint answers 500 while a dag run the event created is queued and has no
    start_date yet (AssetEventResponse requires one), so the listing is retried until that run starts.
    """
    response = stack.api().get("/api/v2/assets/events", params={"source_dag_id": MONITOR})
    if response.status_code == 500:
        return None
    assert response.status_code == 200, response.text
    return response.json()["asset_events"]


def retrain_runs(stack: AirflowStack) -> list[dict[str, Any]]:
    return [r for r in stack.dag_runs(LIFECYCLE) if r["run_type"] == "asset_triggered"]
