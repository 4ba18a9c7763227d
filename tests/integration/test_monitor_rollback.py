"""The monitor's rollback request in real DagRuns (``dag.test()``): an SLO breach triggers ``rollback__<name>``.

As in ``test_monitor_branches.py``, ``slo`` and ``decide`` are stood in for by
tasks that push their results; ``request_rollback`` is the real operator, the
rollback DAG the real one (stored, not run: its run is queued for the
scheduler).  The registry holds versions 1 and 2 with ``stable`` on 2 and a
hand-written audit log; the label-move rule itself is in
``tests/unit/test_rollback_request.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from include.mlops.artifacts import run_dir
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.label_log import LOG_NAME
from mlops_airflow.rollback import build_rollback_dag
from mlops_airflow.rollback_request import RollbackRequestOperator
from tests.integration.test_monitor_branches import CONFIG, SLO_BREACHED, T0, register, run_at, states_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

ROLLBACK_CONFIG = dataclasses.replace(CONFIG, monitor=dataclasses.replace(CONFIG.monitor, rollback_on_slo_breach=True))
MOVES = [
    {"at": (T0 - dt.timedelta(days=9)).isoformat(), "label": "stable", "from": None, "to": 1, "reason": "gate passed"},
    {"at": (T0 - dt.timedelta(days=2)).isoformat(), "label": "stable", "from": 1, "to": 2, "reason": "gate passed"},
    {"at": (T0 - dt.timedelta(days=2)).isoformat(), "label": "canary", "from": None, "to": 2, "reason": "canary"},
]


@pytest.fixture
def registry(artifact_root: Path) -> Registry:
    """Versions 1 and 2 of diabetes (empty folders: nothing is served), ``stable`` on 2, and its audit log."""
    reg = Registry()
    for version in (1, 2):
        reg.version_dir("diabetes", version).mkdir(parents=True)
    reg.set_label("diabetes", "stable", 2)
    (reg.model_dir("diabetes") / LOG_NAME).write_text("".join(json.dumps(m) + "\n" for m in MOVES))
    return reg


def push_outcome(**context: Any) -> None:
    context["ti"].xcom_push(key="outcome", value={"outcomes": ["slo_breach"], "report_uri": "/r/report.html"})


def monitor_dag(dag_id: str) -> DAG:
    with DAG(dag_id, schedule=None, start_date=T0 - dt.timedelta(days=1), catchup=False) as dag:
        slo = PythonOperator(task_id="slo", python_callable=lambda: SLO_BREACHED)
        decide = PythonOperator(task_id="decide", python_callable=push_outcome)
        slo >> decide >> RollbackRequestOperator(task_id="request_rollback", config=ROLLBACK_CONFIG)
    return dag


def rollback_runs() -> list[tuple[str, str, dict[str, Any], str | None]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter_by(dag_id="rollback__diabetes").all()
        return [(r.run_id, str(r.run_type), dict(r.conf or {}), r.note) for r in runs]


def test_an_slo_breach_triggers_one_rollback_to_the_previous_stable_version_per_cooldown(
    registry: Registry, artifact_root: Path
) -> None:
    dag = monitor_dag("monitor_rollback__diabetes")
    register(dag, artifact_root.parent, build_rollback_dag(ROLLBACK_CONFIG))

    first = run_at(dag, T0)
    second = run_at(dag, T0 + dt.timedelta(hours=1))  # the breach goes on: inside the cooldown

    assert states_of(first)["request_rollback"] == "success"
    assert states_of(second)["request_rollback"] == "skipped"
    reason = f"SLO breach in {first.run_id}: p95 latency 180 ms > 100 ms"
    [(run_id, run_type, conf, note)] = rollback_runs()
    assert run_id == f"slo_breach__{first.run_id}" and run_type == "operator_triggered"
    assert conf == {"version": 1, "reason": reason}
    assert note == f"Rollback requested by {dag.dag_id} run {first.run_id}: {reason}"
    [request] = json.loads((artifact_root / "monitoring/diabetes/rollback_requests.json").read_text())["requests"]
    assert (request["monitor_run_id"], request["current"], request["version"]) == (first.run_id, 2, 1)

    def decision(run: Any) -> dict[str, Any]:
        return json.loads((run_dir(dag.dag_id, run.run_id, "request_rollback") / "decision.json").read_text())

    assert decision(first)["action"] == "request" and decision(first)["version"] == 1
    ends = (T0 + CONFIG.monitor.cooldown).isoformat()
    assert decision(second)["reason"].startswith("cooldown: a rollback to version 1 was requested at")
    assert f"the cooldown ends at {ends}" in decision(second)["reason"]
