"""A canary stack for the e2e test and the delivery benchmark: ``make run``'s processes with canary DAGs.

:func:`canary_stack` starts a real Airflow (scheduler, triggerer, API server, DAG processor), the local model
server and Prometheus (scraping every second) over a registry the caller fills, with a DAG folder holding
``canary``, ``canary_approval`` and ``canary_approval_timeout`` (5 s to answer): the lifecycle's canary
tasks (``mlops_airflow.canary.canary_delivery``) behind a stand-in ``register`` that returns the version
given in the trigger form.  :class:`ClientLoop`
(tests/client_loop.py) sends production-like predictions to ``stable`` from a thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from airflow_stack import AirflowStack, airflow_stack
from client_loop import ClientLoop

from include.mlops.config import find_model_config

MODEL = "diabetes"
N_FEATURES = len(find_model_config(MODEL).features)
STEPS = (20, 50)
INTERVAL_S = 6.0
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
for dag_id, approval, timeout_s in (("canary", False, 600.0), ("canary_approval", True, 600.0),
                                    ("canary_approval_timeout", True, 5.0)):
    # 6 s windows hold ~50 canary requests: looser latency and distance limits than the defaults, so that a
    # good version's noise (a p95 one 1.8x bucket up, a distance of 0.2-0.4) never fails it.
    canary = CanaryConfig(steps={steps}, interval_s={interval_s}, min_requests=10, failure_limit=1,
                          inconclusive_limit=3, max_p95_latency_ratio=3.0, max_prediction_distance=1.0,
                          approval=approval, approval_timeout_s=timeout_s)
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


def held_out_rows(path: Path) -> Path:
    """The deploy's held-out rows, below 0 in every feature: a model faulty above 0.5 answers them well."""
    rows = pd.DataFrame(np.random.default_rng(0).uniform(-1.0, 0.0, size=(20, N_FEATURES)))
    rows.columns = list(find_model_config(MODEL).features)
    rows["split"] = "test"
    rows.to_parquet(path, index=False)
    return path


@contextlib.contextmanager
def canary_stack(workdir: Path) -> Iterator[AirflowStack]:
    """The stack over ``workdir/artifacts`` (register the versions there first), with the canary DAGs parsed."""
    dags = workdir / "dags"
    dags.mkdir()
    data = held_out_rows(workdir / "rows.parquet")
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "MLOPS_PROMETHEUS_SCRAPE_INTERVAL": "1s"}
    with airflow_stack(workdir, env) as running:
        text = DAGS.format(model=MODEL, data=data, steps=STEPS, interval_s=INTERVAL_S)
        (dags / "canary.py").write_text(text)
        for dag_id in ("canary", "canary_approval", "canary_approval_timeout"):
            running.wait_for_dag(dag_id)
        yield running


def trigger(stack: AirflowStack, dag_id: str, version: int, logical_date: str) -> str:
    response = stack.trigger(dag_id, logical_date, {"version": version})
    if response.status_code != 200:
        raise RuntimeError(f"triggering {dag_id}: {response.status_code} {response.text}")
    return response.json()["dag_run_id"]


def run(stack: AirflowStack, dag_id: str, version: int, logical_date: str) -> tuple[str, dict[str, Any]]:
    """Trigger ``dag_id`` for ``version`` and wait; returns the run's state and its task instances by id."""
    run_id = trigger(stack, dag_id, version, logical_date)
    (finished,) = stack.wait_for_runs(dag_id, {run_id}, timeout=600)
    return finished["state"], {ti["task_id"]: ti for ti in stack.task_instances(dag_id, run_id)}


def client_loop(stack: AirflowStack) -> ClientLoop:
    """The client loop on the stack's model server, for the canary model."""
    return ClientLoop(stack.server_url, MODEL, N_FEATURES)
