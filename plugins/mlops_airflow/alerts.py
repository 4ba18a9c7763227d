"""Alerts: recorded under the artifact root, then sent through the SMTP notifier of an Airflow Connection.

The Connection (``config.monitor.alert_conn_id``, default ``mlops_alerts``)
is an SMTP connection whose extra names the recipients::

    AIRFLOW_CONN_MLOPS_ALERTS='{"conn_type": "smtp", "host": "smtp.example.com", "port": 587,
                                "login": "...", "password": "...",
                                "extra": {"to": "ml-oncall@example.com", "from_email": "airflow@example.com"}}'

Every alert is appended to ``<artifact root>/monitoring/<model>/alerts.jsonl``
before it is sent, so an alert whose Connection is missing, or whose mail
server is down, is still on record.  A missing Connection is a warning (the
run goes on); a mail server that refuses the message fails the task.

This module is imported when the lifecycle DAG is parsed (the deadline
callback's path is checked then), so the SMTP provider is imported only when
an alert is sent.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook, DeadlineAlert, DeadlineReference, SyncCallback
from airflow.sdk.exceptions import AirflowNotFoundException

from include.mlops import artifact_store
from include.mlops.artifacts import artifact_root, fsync_dir
from include.mlops.config import ModelConfig

log = logging.getLogger(__name__)

ALERTS_FILE = "alerts.jsonl"
# Used when the Connection's extra names no sender.
DEFAULT_FROM_EMAIL = "mlops-airflow@localhost"


def monitoring_dir(model: str, root: Path | None = None) -> Path:
    """``<artifact root>/monitoring/<model>/``: a model's alert log and retraining requests."""
    return (root if root is not None else artifact_root()) / "monitoring" / model


def record_alert(model: str, alert: Mapping[str, Any]) -> Path:
    """Append ``alert`` as one JSON line to the model's ``alerts.jsonl`` (flushed to disk) and return the file."""
    with artifact_store.synced(monitoring_dir(model)) as folder:
        path = folder / ALERTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(dict(alert), sort_keys=True, default=str) + "\n"
        # One write of one line in append mode: concurrent writers cannot interleave within a line.
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(path.parent)
    return path


def _recipients(extra: Mapping[str, Any]) -> list[str]:
    to = extra.get("to")
    if isinstance(to, str):
        return [address.strip() for address in to.replace(";", ",").split(",") if address.strip()]
    if isinstance(to, list):
        return [str(address) for address in to if str(address).strip()]
    return []


def send_alert(conn_id: str, subject: str, body: str, context: Mapping[str, Any] | None = None) -> bool:
    """Send ``subject``/``body`` with the SMTP notifier of Connection ``conn_id``; False when it cannot be sent.

    Returns False (with a warning that says how to fix it) when the
    Connection is not defined or names no recipients; raises when the mail
    server fails, so that the task fails and is retried.
    """
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.warning(
            "Alert not sent: Airflow Connection %r is not defined. Add an SMTP connection with the recipients "
            'in its extra, e.g. AIRFLOW_CONN_%s=\'{"conn_type": "smtp", "host": "smtp.example.com", '
            '"port": 587, "extra": {"to": "oncall@example.com"}}\' (or in the UI: Admin > Connections). '
            "The alert is recorded in the model's alerts.jsonl.",
            conn_id,
            conn_id.upper(),
        )
        return False
    extra = conn.extra_dejson
    recipients = _recipients(extra)
    if not recipients:
        log.warning(
            'Alert not sent: Connection %r has no recipients; set its extra to {"to": "oncall@example.com"}. '
            "The alert is recorded in the model's alerts.jsonl.",
            conn_id,
        )
        return False
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(
        to=recipients,
        from_email=extra.get("from_email") or DEFAULT_FROM_EMAIL,
        subject=subject,
        html_content=f"<pre>{html.escape(body)}</pre>",
        smtp_conn_id=conn_id,
    )
    # Subject and body are given, so notify() renders no template and needs no task context.
    notifier.notify(dict(context or {}))
    log.info("Alert %r sent through Connection %r to %s", subject, conn_id, ", ".join(recipients))
    return True


def alert(
    *, model: str, kind: str, subject: str, details: Mapping[str, Any], conn_id: str, context: Mapping[str, Any] | None
) -> bool:
    """Record the alert in the model's ``alerts.jsonl``, then send it; True when it was sent."""
    now = dt.datetime.now(dt.UTC).isoformat()
    entry = {"kind": kind, "model": model, "subject": subject, "conn_id": conn_id, "recorded_at": now, **details}
    path = record_alert(model, entry)
    log.warning("%s (recorded in %s)", subject, path)
    body = subject + "\n\n" + json.dumps(dict(details), indent=2, sort_keys=True, default=str)
    return send_alert(conn_id, subject, body, context)


def deadline_missed(
    context: Mapping[str, Any] | None = None,
    *,
    model: str,
    conn_id: str,
    deadline_minutes: float,
) -> bool:
    """Deadline callback of the lifecycle DAG: a run was not finished ``deadline_minutes`` after it was queued.

    Airflow calls it (a ``SyncCallback`` by import path) with ``context``
    holding the run (``dag_run``: its API fields) and the ``deadline``.
    """
    context = context or {}
    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id")
    dag_id = dag_run.get("dag_id") or f"lifecycle__{model}"
    subject = f"[mlops] {dag_id} run {run_id} missed its deadline ({deadline_minutes:g} min after it was queued)"
    details = {
        "dag_id": dag_id,
        "run_id": run_id,
        "queued_at": dag_run.get("queued_at"),
        "state": dag_run.get("state"),
        "deadline_time": deadline.get("deadline_time"),
        "deadline_minutes": deadline_minutes,
    }
    return alert(model=model, kind="deadline_missed", subject=subject, details=details, conn_id=conn_id, context={})


def deadline_alert(config: ModelConfig) -> DeadlineAlert | None:
    """The lifecycle DAG's deadline: alert when a run is not finished ``deadline_minutes`` after it was queued.

    None when the config sets no deadline.  The callback runs on the executor
    (``SyncCallback``) and imports :func:`deadline_missed` by path.
    """
    minutes = config.monitor.deadline_minutes
    if minutes is None:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(minutes=minutes),
        callback=SyncCallback(
            deadline_missed,
            kwargs={"model": config.name, "conn_id": config.monitor.alert_conn_id, "deadline_minutes": minutes},
        ),
    )
