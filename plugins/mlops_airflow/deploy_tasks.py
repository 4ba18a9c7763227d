"""The arguments of the tasks that move serving labels: the model server's Connection and the audit details.

Shared by the lifecycle DAG's deploy (or canary) tasks and the rollback DAG.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.monitoring import connection_extra, connection_url

log = logging.getLogger(__name__)

DEPLOY_POOL = "model_deploy"
MODEL_SERVER_CONN_ID = "model_server_default"


def model_server_url(conn_id: str = MODEL_SERVER_CONN_ID) -> str | None:
    """The model server's base URL from the Airflow Connection, or None when it is not defined."""
    return connection_url(conn_id)


def model_server_poll_seconds(conn_id: str = MODEL_SERVER_CONN_ID) -> float | None:
    """How often the model server re-reads models.config: the Connection's extra ``config_poll_seconds``.

    None (the deploy step's default, 1 s: the local server and the compose
    file) when the Connection or the key is missing.  The in-cluster TF
    Serving polls every 30 s, so its Connection says ``?config_poll_seconds=30``.
    """
    value = connection_extra(conn_id, "config_poll_seconds")
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise AirflowFailException(
            f"Connection {conn_id!r}: extra config_poll_seconds={value!r} is not a number of seconds >= 0 "
            "(the model server's --model_config_file_poll_wait_seconds)"
        )
    return seconds


def deploy_arguments(
    context: Context, *, label: str = "stable", version_task: str = "register", reason: str | None = None
) -> dict[str, Any]:
    """The deploy step's arguments: the version ``version_task`` returned, onto ``label``, verified on the server."""
    server_url = model_server_url()
    if server_url is None:
        log.warning(
            "Connection %r is not defined: the label moves without checking that the server serves the new "
            "version (define it, e.g. AIRFLOW_CONN_MODEL_SERVER_DEFAULT=http://localhost:8501, to verify)",
            MODEL_SERVER_CONN_ID,
        )
    if reason is None:
        reason = "gate passed" if not context["params"].get("force_deploy") else "force_deploy"
    return {
        "version": context["ti"].xcom_pull(task_ids=version_task)["version"],
        "label": label,
        "server_url": server_url,
        "server_poll_seconds": model_server_poll_seconds() if server_url is not None else None,
        "data": context["ti"].xcom_pull(task_ids="snapshot")["data_uri"],
        **audit_arguments(context, reason),
    }


def audit_arguments(context: Context, reason: str) -> dict[str, Any]:
    """What a label move records about itself in the model's audit log: why, and who triggered the run."""
    dag_run = context["dag_run"]
    return {"reason": f"{reason} ({dag_run.run_id})", "requested_by": getattr(dag_run, "triggering_user_name", None)}
