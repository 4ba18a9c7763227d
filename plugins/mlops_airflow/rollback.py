"""The rollback DAG of one model: ``rollback__<name>``, manual, back to a version a person names, with a reason.

Its one task is the deploy step for ``stable`` with the Params' version: the
step repairs any unfinished move first, verifies the target's checksums and
served bytes, infra-validates it in a sandbox server, moves the label by
compare-and-set and verifies it through the model server (Connection
``model_server_default``), or puts it back (``docs/serving.md``, "Deploy
verification").  A version that does not exist, is corrupt, or fails in the
sandbox is refused with the reason, without a retry, and nothing moves.  The
reason and the triggering user go into the model's audit log of label moves
(``python -m include.mlops history <name>``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Context, Param

from include.mlops.config import ModelConfig
from include.mlops.registry.label_log import ROLLBACK_REASON
from mlops_airflow.backends import step_operator
from mlops_airflow.deploy_tasks import DEPLOY_POOL, audit_arguments, model_server_poll_seconds, model_server_url
from mlops_airflow.params import SCHEMA_DIALECT
from mlops_airflow.schedules import dag_start_date

__all__ = ["build_rollback_dag", "rollback_params"]


def rollback_params() -> dict[str, Param]:
    """The trigger form: the version to put back on ``stable`` and why (both required)."""
    return {
        "version": Param(
            description="the registered version to point stable at (the model page of the Models view lists them)",
            schema={"$schema": SCHEMA_DIALECT, "type": "integer", "minimum": 1},
        ),
        "reason": Param(
            description="why: recorded with the label move in the model's audit log",
            schema={"$schema": SCHEMA_DIALECT, "type": "string", "minLength": 3, "maxLength": 500},
        ),
    }


def _rollback_arguments(context: Context) -> dict[str, Any]:
    server_url = model_server_url()
    params = context["params"]
    return {
        "version": params["version"],
        "label": "stable",
        "server_url": server_url,
        "server_poll_seconds": model_server_poll_seconds() if server_url is not None else None,
        **audit_arguments(context, f"{ROLLBACK_REASON} {params['reason']}"),
    }


def build_rollback_dag(config: ModelConfig, *, models_dir: str | None = None) -> DAG:
    """The rollback DAG of ``config``'s model.  Pure: reads only ``config``."""
    with DAG(
        dag_id=config.rollback_dag_id,
        description=f"Point {config.serving_name}'s stable label back at a version you name, with a reason",
        doc_md=__doc__,
        schedule=None,
        start_date=dag_start_date(config),
        catchup=False,
        max_active_runs=1,
        tags=["rollback", *config.tags],
        params=rollback_params(),
        default_args={"owner": config.owner, "retries": 1, "retry_delay": dt.timedelta(seconds=30)},
    ) as dag:
        step_operator(
            task_id="rollback",
            step="deploy",
            model=config.name,
            config=config,
            models_dir=models_dir,
            resolve_arguments=_rollback_arguments,
            pool=DEPLOY_POOL,
            pool_slots=1,
        )
    return dag
