"""Monitoring as a user runs it: real Airflow, Prometheus, Pushgateway, model server and SMTP server.

The stack of ``make run`` (``scripts/supervisord.conf``: Airflow, the model server, Prometheus and
the Pushgateway) on a private home and loopback ports, an aiosmtpd server as the alert
Connection's target, and the traffic generator's Python API.  One stack serves the module, so
the tests run in file order:

1. the nightly ``lifecycle__diabetes`` run deploys version 1 (and the first monitor run, with
   nothing served yet, ends ``insufficient_data``); it runs past the deadline the test's copy of the
   model config sets (0.2 minutes), so the deadline alert mails;
2. normal traffic -> a monitor run ends ``healthy``;
3. half the requests malformed -> ``slo_breach``, and the alert mail arrives;
4. drifted traffic -> ``request_retrain`` emits the retraining Asset event, and the scheduler
   starts a lifecycle run from it, whose note says so;
5. a second drift detection inside the cooldown requests nothing: still one such run; the
   retraining run trains on the same rows, config and seed as version 1, so its candidate is version 1
   itself: the gate registers nothing and the run ends in ``skip_deploy``, saying so.  (A drift-triggered
   version's lineage and model card naming the monitor run: tests/unit/test_register.py.)
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from airflow_stack import AirflowStack, airflow_stack
from smtp_server import Inbox, smtp_connection
from tooling import require_executable

from include.mlops.artifacts import run_dir
from include.mlops.config import find_model_config
from include.mlops.monitoring.traffic import latest_snapshot, send_traffic
from include.mlops.registry.filesystem import Registry

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODEL = "diabetes"
LIFECYCLE = f"lifecycle__{MODEL}"
MONITOR = f"monitor__{MODEL}"
BRANCHES = ("healthy", "insufficient_data", "slo_breach", "request_retrain")
CONFIG = find_model_config(MODEL)


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    from aiosmtpd.controller import Controller
    from smtp_server import free_port

    handler, port = Inbox(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.port = port  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        controller.stop()


DEADLINE_MINUTES = 0.2


def models_with_a_short_deadline(folder: Path) -> Path:
    """Only the diabetes model, whose lifecycle runs get a deadline every run misses, and drift acted on at once."""
    import shutil

    import yaml

    folder.mkdir(parents=True)
    shutil.copy(CONFIG.builder_path, folder / CONFIG.builder_path.name)
    document = yaml.safe_load(CONFIG.path.read_text())
    document["monitor"]["deadline_minutes"] = DEADLINE_MINUTES
    # One drifted window requests here; persistence over several windows (2 of 3 by default) is tested with
    # dag.test() in tests/integration/test_monitor_branches.py and tests/unit/test_retraining.py.
    document["monitor"].setdefault("drift", {})["persistence"] = {"k": 1, "n": 1}
    (folder / CONFIG.path.name).write_text(yaml.safe_dump(document))
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, inbox: Inbox) -> Iterator[AirflowStack]:
    require_executable("prometheus", "install it with: apt-get install prometheus prometheus-pushgateway")
    require_executable("prometheus-pushgateway", "install it with: apt-get install prometheus prometheus-pushgateway")
    env = {
        "MLOPS_MODELS_DIR": str(models_with_a_short_deadline(tmp_path_factory.mktemp("models") / "models")),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # Every request logged and written within seconds, so a monitor run sees the traffic just sent.
        "MLOPS_PREDLOG_SAMPLE_RATE": "1",
        "MLOPS_PREDLOG_FLUSH_SECONDS": "2",
        "AIRFLOW_CONN_MLOPS_ALERTS": smtp_connection(inbox.port),  # type: ignore[attr-defined]
    }
    with airflow_stack(tmp_path_factory.mktemp("monitor-e2e"), extra_env=env) as running:
        for dag_id in (LIFECYCLE, MONITOR):
            running.wait_for_dag(dag_id)
            response = running.api().patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
            assert response.status_code == 200, response.text
        yield running


def wait_for(condition: Any, timeout: float, what: str, every: float = 2) -> Any:
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


def monitor_run(stack: AirflowStack) -> tuple[str, dict[str, str | None]]:
    """Trigger ``monitor__diabetes`` now and wait for it; its run id and task states."""
    now = dt.datetime.now(dt.UTC).isoformat()
    response = stack.trigger(MONITOR, now)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    [run] = stack.wait_for_runs(MONITOR, {run_id}, timeout=600)
    states = stack.task_states(MONITOR, run_id)
    assert run["state"] == "success", states
    return run_id, states


def outcome(stack: AirflowStack, run_id: str) -> dict[str, Any]:
    return json.loads((run_dir(MONITOR, run_id, "decide", root=stack.artifact_root) / "outcome.json").read_text())


def taken(states: dict[str, str | None]) -> set[str]:
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


def mails(inbox: Inbox, subject: str) -> list[Any]:
    return [message for _, message in inbox.messages if subject in message["Subject"]]


def test_the_nightly_run_deploys_and_the_first_monitor_run_has_insufficient_data(
    stack: AirflowStack, inbox: Inbox
) -> None:
    [nightly] = stack.wait_for_runs(LIFECYCLE, count=1, run_type="scheduled", timeout=1800)
    assert nightly["state"] == "success", stack.task_states(LIFECYCLE, nightly["dag_run_id"])
    # The run still succeeds; the scheduler's deadline check mails that it was late.
    [late] = wait_for(lambda: mails(inbox, "missed its deadline"), 120, "the deadline mail")
    assert nightly["dag_run_id"] in late["Subject"] and f"{DEADLINE_MINUTES:g} min" in late["Subject"]
    # The monitor's own first (scheduled) run started while nothing was served yet.
    [first] = stack.wait_for_runs(MONITOR, count=1, run_type="scheduled", timeout=600)
    states = stack.task_states(MONITOR, first["dag_run_id"])
    assert first["state"] == "success", states
    assert taken(states) == {"insufficient_data"}, states


def test_normal_traffic_is_healthy(stack: AirflowStack) -> None:
    traffic(stack, 300)
    run_id, states = monitor_run(stack)
    assert taken(states) == {"healthy"}, (states, outcome(stack, run_id))
    report = Path(outcome(stack, run_id)["report_uri"])
    assert report.is_file() and "healthy" in report.read_text()
    # The drift step pushed its scores, and Prometheus scraped them from the Pushgateway.
    score = wait_for(
        lambda: prometheus_value(stack, f'mlops_drift_score{{model_name="{CONFIG.serving_name}"}}'),
        60,
        "the drift score in Prometheus",
    )
    assert 0 <= score < CONFIG.monitor.drift.psi_threshold


def test_malformed_traffic_breaches_the_slo_and_mails_the_alert(stack: AirflowStack, inbox: Inbox) -> None:
    assert mails(inbox, "SLO breach") == []
    traffic(stack, 200, errors=0.5)
    _, states = monitor_run(stack)
    assert "slo_breach" in taken(states) and "healthy" not in taken(states), states
    wait_for(lambda: mails(inbox, "SLO breach"), 30, "the alert mail")
    [(recipients, message)] = [(to, m) for to, m in inbox.messages if "SLO breach" in m["Subject"]]
    assert "oncall@example.com" in recipients
    assert MODEL in message["Subject"] and "error ratio" in message["Subject"]
    alerts = (stack.artifact_root / "monitoring" / MODEL / "alerts.jsonl").read_text().splitlines()
    assert any(json.loads(line).get("kind") == "slo_breach" for line in alerts)


def test_drift_requests_one_retraining_run_and_the_cooldown_holds_the_next(stack: AirflowStack) -> None:
    assert retrain_runs(stack) == []
    traffic(stack, 300, drift={"bmi": 3.0, "s5": 3.0})
    run_id, states = monitor_run(stack)
    assert "request_retrain" in taken(states), (states, outcome(stack, run_id))

    events = wait_for(lambda: asset_events(stack), 60, "the monitor's asset events")
    [event] = [e for e in events if e["source_run_id"] == run_id]
    assert "bmi" in event["extra"]["drifted_features"], event

    # The scheduler starts the lifecycle from that event, and the run's note says why.
    [retrain] = wait_for(lambda: retrain_runs(stack), 300, "a lifecycle run triggered by the retraining asset")
    note = wait_for(
        lambda: next(r for r in retrain_runs(stack) if r["dag_run_id"] == retrain["dag_run_id"]).get("note"),
        300,
        "the drift note on the retraining run",
    )
    assert note.startswith("Retraining requested by drift") and run_id in note, note

    # A second detection of the same episode, inside the cooldown, requests nothing.
    again, states = monitor_run(stack)
    assert states["request_retrain"] == "skipped", states
    assert outcome(stack, again)["outcomes"].count("drift") == 1
    assert len(retrain_runs(stack)) == 1

    # The retraining run trains on the data up to the drift event: every bundled row had arrived for the
    # nightly run already, so with the same config and seed its candidate is version 1 itself, and nothing
    # new is registered (the gate's record and skip_deploy say so).
    [done] = stack.wait_for_runs(LIFECYCLE, {retrain["dag_run_id"]}, timeout=900)
    states = stack.task_states(LIFECYCLE, retrain["dag_run_id"])
    assert done["state"] == "success", states
    assert states["skip_deploy"] == "success" and states["register"] == "skipped", states
    gate = run_dir(LIFECYCLE, retrain["dag_run_id"], "gate", root=stack.artifact_root)
    record = json.loads((gate / "decision.json").read_text())
    assert record["route"] == "identical" and record["identical_to_champion"]["champion_version"] == 1, record
    assert "candidate is identical to champion version 1" in record["identical_to_champion"]["message"]
    registry = Registry(stack.artifact_root / "models")
    assert registry.versions(MODEL) == [1] and registry.label_version(MODEL, "stable") == 1
