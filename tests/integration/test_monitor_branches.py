"""The monitor DAG's branch tasks in real DagRuns (``dag.test()``): the retraining Asset event and the alert.

The ``slo`` and ``drift`` tasks are stood in for by tasks that return result
dicts in the shape of ``measure_slo`` / ``check_drift`` (the contract), and
``decide`` by one that pushes its XCom: what is under test is what follows
them, run by Airflow with a real metadata DB, real Asset events and a real
SMTP server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG
from smtp_server import Inbox, smtp_connection, smtp_server

from include.mlops.artifacts import run_dir
from include.mlops.config import load_model_config
from mlops_airflow.monitoring import RetrainRequestOperator, SloBreachOperator, retrain_asset
from mlops_airflow.retraining import record_window

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]
__all__ = ["smtp_server"]  # the fixture, imported for pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_model_config(PROJECT_ROOT / "include/models/diabetes.yaml")
T0 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)

SLO_BREACHED = {
    "status": "breach",
    "figures": {"requests": 500.0, "request_rate": 0.14, "error_ratio": 0.0, "p95_ms": 180.0, "p99_ms": 240.0},
    "slo": {"p95_latency_ms": 100.0},
    "breaches": ["p95 latency 180 ms > 100 ms"],
    "problems": [],
    "window_minutes": 60,
    "queries": {},
}
DRIFTED = {
    "status": "ok",
    "drifted": True,
    "score": 0.41,
    "threshold": 0.2,
    "rows": 400,
    "features": {
        "bmi": {"psi": 0.41, "drifted": True, "reason": None},
        "age": {"psi": 0.02, "drifted": False, "reason": None},
    },
    "failed_expectations": [],
    "problems": [],
    "versions": {"1": 400},
    "primary_version": 1,
    "pushed": False,
    "result_uri": "/x/result.json",
    "validation_uri": None,
}


def push_outcome(config: Any, **context: Any) -> None:
    # What the real decide does besides its report: the XCom, and the window's verdict in the history.
    context["ti"].xcom_push(key="outcome", value={"outcomes": ["slo_breach", "drift"], "report_uri": "/r/report.html"})
    record_window(config, context, DRIFTED)


def monitor_dag(dag_id: str, config: Any = CONFIG) -> DAG:
    with DAG(dag_id, schedule=None, start_date=T0 - dt.timedelta(days=1), catchup=False) as dag:
        slo = PythonOperator(task_id="slo", python_callable=lambda: SLO_BREACHED)
        drift = PythonOperator(task_id="drift", python_callable=lambda: DRIFTED)
        decide = PythonOperator(task_id="decide", python_callable=push_outcome, op_args=[config])
        breach = SloBreachOperator(task_id="slo_breach", config=config)
        retrain = RetrainRequestOperator(task_id="request_retrain", config=config)
        [slo, drift] >> decide >> [breach, retrain]
    return dag


def register(dag: DAG, folder: Path, *others: DAG) -> None:
    """Write ``dag`` (and ``others``) to the metadata DB as the DAG processor would (dag.test() runs only stored DAGs)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(folder))
    for each in (dag, *others):
        bag.bag_dag(each)
    sync_bag_to_db(bag, "dags-folder", None)


def run_at(dag: DAG, at: dt.datetime) -> Any:
    """A run of ``dag`` due at ``at``: the monitor's window ends at the run's ``run_after``."""
    return dag.test(logical_date=at, run_after=at)


def states_of(dag_run: Any) -> dict[str, str]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one()
        return {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)} | {
            "__run__": str(run.state)
        }


def retrain_events() -> list[Any]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    asset = retrain_asset(CONFIG)
    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetModel.name == asset.name)
            .all()
        )
        return [(e.source_run_id, dict(e.extra)) for e in rows]


def test_persistent_drift_emits_one_retraining_event_per_cooldown_whatever_is_rerun(
    artifact_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: tuple[Inbox, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox, port = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", smtp_connection(port))
    dag = monitor_dag("monitor_branches__diabetes")
    register(dag, artifact_root.parent)
    before = len(retrain_events())

    first = run_at(dag, T0)  # drift in 1 of the last 1 windows: not yet persistent
    first_states = states_of(first)
    second = run_at(dag, T0 + dt.timedelta(hours=1))  # 2 of 2: requests
    second_states = states_of(second)
    with caplog.at_level(logging.WARNING):
        third = run_at(dag, T0 + dt.timedelta(hours=2))  # inside the cooldown

    assert second_states == {
        "slo": "success",
        "drift": "success",
        "decide": "success",
        "slo_breach": "success",
        "request_retrain": "success",
        "__run__": "success",
    }
    assert [s["request_retrain"] for s in (first_states, states_of(third))] == ["skipped"] * 2
    events = retrain_events()[before:]
    assert len(events) == 1, events
    source_run_id, extra = events[0]
    assert source_run_id == second.run_id
    assert extra["monitor_run_id"] == second.run_id
    assert extra["score"] == 0.41 and extra["drifted_features"] == ["bmi"] and extra["version"] == 1
    assert extra["report_uri"] == "/r/report.html"
    [request] = json.loads((artifact_root / "monitoring/diabetes/retrain_requests.json").read_text())["requests"]
    assert request["monitor_run_id"] == second.run_id

    # Each skip says why, in the task log and in the run folder; the cooldown's says when it ends.
    def skip_reason(run: Any) -> str:
        path = run_dir(dag.dag_id, run.run_id, "request_retrain") / "decision.json"
        return json.loads(path.read_text())["reason"]

    assert "needs 2 of 3" in skip_reason(first)
    cooldown_ends = (T0 + dt.timedelta(hours=1) + CONFIG.monitor.cooldown).isoformat()
    assert f"the cooldown ends at {cooldown_ends}" in skip_reason(third)
    assert "No retraining requested for diabetes: cooldown" in caplog.text and cooldown_ends in caplog.text

    # Each breach is an alert: three runs, three mails (a rerun of a request: tests/unit/test_retraining.py).
    assert len(inbox.messages) == 3
    assert all("p95 latency 180 ms > 100 ms" in message["Subject"] for _, message in inbox.messages)


def test_drift_that_persists_after_the_retrains_alerts_naming_the_features(
    artifact_root: Path, monkeypatch: pytest.MonkeyPatch, smtp_server: tuple[Inbox, int]
) -> None:
    inbox, port = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", smtp_connection(port))
    drift = dataclasses.replace(CONFIG.monitor.drift, persistence=type(CONFIG.monitor.drift.persistence)(k=1, n=1))
    config = dataclasses.replace(CONFIG, monitor=dataclasses.replace(CONFIG.monitor, drift=drift, max_retrains=1))
    dag = monitor_dag("monitor_persists__diabetes", config)
    register(dag, artifact_root.parent)
    before = len(retrain_events())

    requested = run_at(dag, T0)
    persists = run_at(dag, T0 + config.monitor.cooldown)

    assert states_of(requested)["request_retrain"] == "success"
    assert states_of(persists)["request_retrain"] == "skipped"
    assert len(retrain_events()[before:]) == 1
    subjects = [message["Subject"] for _, message in inbox.messages]
    assert "[mlops] drift persists for model diabetes after retraining: bmi" in subjects
    lines = [json.loads(line) for line in (artifact_root / "monitoring/diabetes/alerts.jsonl").read_text().splitlines()]
    [alert] = [line for line in lines if line["kind"] == "drift_persists"]
    assert alert["run_id"] == persists.run_id and alert["drifted_features"] == ["bmi"]


def test_a_drift_triggered_lifecycle_run_gets_a_note_from_the_scheduler_listener(
    artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener the scheduler calls when a run starts, on a real DagRun that consumed the real event."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    from mlops_airflow import run_notes

    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_ALERTS", raising=False)
    dag = monitor_dag("monitor_notes__diabetes")
    register(dag, artifact_root.parent)
    run_at(dag, T0 - dt.timedelta(hours=1))  # drift must persist: 2 of the last 3 windows
    monitor_run = run_at(dag, T0)
    run_id = "asset_triggered__2026-11-27T11:00:00+00:00"
    with create_session() as session:
        event = (
            session.query(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(
                AssetModel.name == retrain_asset(CONFIG).name,
                AssetEvent.source_dag_id == dag.dag_id,
                AssetEvent.source_run_id == monitor_run.run_id,
            )
            .one()
        )
        lifecycle_run = DagRun(
            dag_id=CONFIG.dag_id,
            run_id=run_id,
            run_type=DagRunType.ASSET_TRIGGERED,
            run_after=T0 + dt.timedelta(hours=1),
            state=DagRunState.RUNNING,
        )
        lifecycle_run.consumed_asset_events.append(event)
        session.add(lifecycle_run)
        session.flush()
        run_notes.on_dag_run_running(dag_run=lifecycle_run, msg="started")
    with create_session() as session:
        note = session.query(DagRun).filter_by(dag_id=CONFIG.dag_id, run_id=run_id).one().note
    assert note.startswith("Retraining requested by drift: asset retrain__diabetes")
    assert monitor_run.run_id in note and "drift score 0.41" in note and "bmi" in note
