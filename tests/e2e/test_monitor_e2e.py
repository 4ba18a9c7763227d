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

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow_stack import AirflowStack
from monitor_stack import (
    CONFIG,
    LIFECYCLE,
    MODEL,
    MONITOR,
    asset_events,
    diabetes_config,
    monitor_run,
    monitoring_stack,
    outcome,
    prometheus_value,
    retrain_runs,
    taken,
    traffic,
    wait_for,
)
from smtp_server import Inbox, running_inbox, smtp_connection

from include.mlops.artifacts import run_dir
from include.mlops.registry.filesystem import Registry

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    with running_inbox() as running:
        yield running


DEADLINE_MINUTES = 0.2


def short_deadline(document: dict[str, Any]) -> None:
    """Lifecycle runs get a deadline every run misses, and drift is acted on at once."""
    document["monitor"]["deadline_minutes"] = DEADLINE_MINUTES
    # One drifted window requests here; persistence over several windows (2 of 3 by default) is tested with
    # dag.test() in tests/integration/test_monitor_branches.py and tests/unit/test_retraining.py.
    document["monitor"].setdefault("drift", {})["persistence"] = {"k": 1, "n": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, inbox: Inbox) -> Iterator[AirflowStack]:
    models = diabetes_config(tmp_path_factory.mktemp("models") / "models", short_deadline)
    env = {"AIRFLOW_CONN_MLOPS_ALERTS": smtp_connection(inbox.port)}
    with monitoring_stack(tmp_path_factory.mktemp("monitor-e2e"), models, env) as running:
        yield running


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
