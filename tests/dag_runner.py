"""Run a DAG from ``dags/`` with ``dag.test()``, as the integration and docker-backend tests do.

Airflow 3.3.2's ``dag.test()`` cannot finish a run of a DAG that carries a
``DeadlineAlert``: it runs a copy of the DAG whose deadlines are inline
definitions, and when the run succeeds ``DagRun.update_state`` looks them up
as stored alert ids (``'dict' object has no attribute 'hex'``).  The
scheduler stores them first, so real runs are fine.  These tests therefore
run the lifecycle DAG without its deadline; the deadline itself is tested
with a real scheduler in ``tests/e2e/test_monitor_e2e.py``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.dag_processing.dagbag import DagBag

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# The lifecycle tasks that run a step on the configured backend (tune_trial is mapped: one task per trial).
LIFECYCLE_STEP_TASKS = (
    "snapshot",
    "validate",
    "train",
    "evaluate",
    "tune_plan",
    "tune_select",
    "compress",
    "evaluate_optimized",
    "register",
    "deploy",
)


def project_dag(dag_id: str) -> Any:
    """``dag_id`` as the DAG processor parses it from ``dags/`` (no import errors allowed)."""
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def run_dag_test(dag_id: str, logical_date: dt.datetime, conf: dict[str, Any] | None = None) -> Any:
    """One DagRun of ``dag_id`` with ``dag.test()``, without the DAG's deadline (see the module docstring)."""
    dag = project_dag(dag_id)
    dag.deadline = None
    return dag.test(logical_date=logical_date, run_conf=conf or {})


def run_lifecycle(dag_id: str, logical_date: dt.datetime, conf: dict[str, Any]) -> dict[str, Any]:
    """One DagRun of ``dag_id`` with ``dag.test()``: its state, the task states and types, the step XComs."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_run = run_dag_test(dag_id, logical_date, conf)
    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=dag_run.run_id).one()
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}
        xcoms = {
            row.task_id: XComModel.deserialize_value(row)
            for row in session.query(XComModel).filter_by(dag_id=dag_id, run_id=run.run_id, key="return_value")
        }
        return {
            "state": str(run.state),
            "run_id": run.run_id,
            "states": states,
            "xcoms": xcoms,
            "tasks": {t.task_id: type(t).__name__ for t in project_dag(dag_id).tasks},
        }
