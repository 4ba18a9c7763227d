"""The monitor DAG's branch tasks in real DagRuns (``dag.test()``): the retraining Asset event and the alert.

The ``slo`` and ``drift`` tasks are stood in for by tasks that return result
dicts in the shape of ``measure_slo`` / ``check_drift`` (the contract), and
``decide`` by one that pushes its XCom: what is under test is what follows
them, run by Airflow with a real metadata DB, real Asset events and a real
SMTP server.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG
from smtp_server import Inbox, smtp_connection, smtp_server

from include.mlops.config import load_model_config
from mlops_airflow.monitoring import RetrainRequestOperator, SloBreachOperator, retrain_asset

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
    "pushed": False,
    "result_uri": "/x/result.json",
    "validation_uri": None,
}


def push_outcome(ti: Any) -> None:
    ti.xcom_push(key="outcome", value={"outcomes": ["slo_breach", "drift"], "report_uri": "/r/report.html"})


def monitor_dag(dag_id: str) -> DAG:
    with DAG(dag_id, schedule=None, start_date=T0 - dt.timedelta(days=1), catchup=False) as dag:
        slo = PythonOperator(task_id="slo", python_callable=lambda: SLO_BREACHED)
        drift = PythonOperator(task_id="drift", python_callable=lambda: DRIFTED)
        decide = PythonOperator(task_id="decide", python_callable=push_outcome)
        breach = SloBreachOperator(task_id="slo_breach", config=CONFIG)
        retrain = RetrainRequestOperator(task_id="request_retrain", config=CONFIG)
        [slo, drift] >> decide >> [breach, retrain]
    return dag


def register(dag: DAG, folder: Path) -> None:
    """Write ``dag`` to the metadata DB as the DAG processor would (dag.test() runs only stored DAGs)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(folder))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


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


def test_two_drift_detections_inside_the_cooldown_emit_one_retraining_event(
    artifact_root: Path, monkeypatch: pytest.MonkeyPatch, smtp_server: tuple[Inbox, int]
) -> None:
    inbox, port = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", smtp_connection(port))
    dag = monitor_dag("monitor_branches__diabetes")
    register(dag, artifact_root.parent)
    before = len(retrain_events())

    first = dag.test(logical_date=T0)
    second = dag.test(logical_date=T0 + dt.timedelta(hours=1))

    assert states_of(first) | {} == {
        "slo": "success",
        "drift": "success",
        "decide": "success",
        "slo_breach": "success",
        "request_retrain": "success",
        "__run__": "success",
    }
    assert states_of(second)["request_retrain"] == "skipped"
    events = retrain_events()[before:]
    assert len(events) == 1, events
    source_run_id, extra = events[0]
    assert source_run_id == first.run_id
    assert extra["monitor_run_id"] == first.run_id
    assert extra["score"] == 0.41 and extra["drifted_features"] == ["bmi"]
    assert extra["report_uri"] == "/r/report.html"
    request = json.loads((artifact_root / "monitoring/diabetes/retrain_requests.json").read_text())
    assert request["monitor_run_id"] == first.run_id

    # Each breach is an alert: two runs, two mails, two recorded lines.
    assert len(inbox.messages) == 2
    assert all("p95 latency 180 ms > 100 ms" in message["Subject"] for _, message in inbox.messages)
    lines = (artifact_root / "monitoring/diabetes/alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == [first.run_id, second.run_id]


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
    monitor_run = dag.test(logical_date=T0)
    run_id = "asset_triggered__2026-11-27T11:00:00+00:00"
    with create_session() as session:
        event = (
            session.query(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetModel.name == retrain_asset(CONFIG).name, AssetEvent.source_run_id == monitor_run.run_id)
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
