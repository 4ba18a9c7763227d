"""Alerts: recorded in alerts.jsonl, then sent through a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from smtp_server import Inbox, free_port, smtp_connection, smtp_server

from include.mlops.config import load_model_config
from mlops_airflow import alerts

PROJECT_ROOT = Path(__file__).resolve().parents[2]
__all__ = ["smtp_server"]  # the fixture, imported for pytest


def alert_lines(root: Path, model: str = "diabetes") -> list[dict[str, Any]]:
    path = root / "monitoring" / model / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def send_breach() -> bool:
    return alerts.alert(
        model="diabetes",
        kind="slo_breach",
        subject="[mlops] SLO breach of model diabetes: p95_ms 180 > 100",
        details={"run_id": "scheduled__x", "breaches": ["p95_ms 180 > 100"]},
        conn_id="mlops_alerts",
        context={},
    )


def test_alert_is_recorded_and_mailed_to_the_connections_recipients(
    smtp_server: tuple[Inbox, int], artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, port = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", smtp_connection(port))
    assert send_breach() is True
    assert len(inbox.messages) == 1
    recipients, message = inbox.messages[0]
    assert sorted(recipients) == ["lead@example.com", "oncall@example.com"]
    assert message["From"] == "airflow@example.com"
    assert message["Subject"] == "[mlops] SLO breach of model diabetes: p95_ms 180 > 100"
    assert "p95_ms 180 &gt; 100" in message.get_payload()[0].get_payload(decode=True).decode()
    [line] = alert_lines(artifact_root)
    assert line["kind"] == "slo_breach" and line["breaches"] == ["p95_ms 180 > 100"]
    assert line["conn_id"] == "mlops_alerts"


def test_missing_connection_warns_and_still_records(
    artifact_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_ALERTS", raising=False)
    with caplog.at_level(logging.WARNING, logger="mlops_airflow.alerts"):
        assert send_breach() is False
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "'mlops_alerts' is not defined" in warning and "AIRFLOW_CONN_MLOPS_ALERTS" in warning
    assert [line["kind"] for line in alert_lines(artifact_root)] == ["slo_breach"]


def test_connection_without_recipients_warns_and_still_records(
    smtp_server: tuple[Inbox, int],
    artifact_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox, port = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", smtp_connection(port, to=None))
    with caplog.at_level(logging.WARNING, logger="mlops_airflow.alerts"):
        assert send_breach() is False
    assert "has no recipients" in caplog.text
    assert inbox.messages == []
    assert len(alert_lines(artifact_root)) == 1


def test_unreachable_mail_server_fails_after_recording(artifact_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", smtp_connection(free_port()))
    with pytest.raises(OSError):
        send_breach()
    assert len(alert_lines(artifact_root)) == 1


def test_deadline_alert_carries_the_configs_interval_and_an_importable_callback() -> None:
    from airflow.sdk import DeadlineReference
    from airflow.sdk._shared.module_loading import import_string

    config = load_model_config(PROJECT_ROOT / "include/models/diabetes.yaml")
    deadline = alerts.deadline_alert(config)
    assert deadline is not None
    assert deadline.interval == dt.timedelta(minutes=config.monitor.deadline_minutes)
    assert deadline.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert import_string(deadline.callback.path) is alerts.deadline_missed
    assert deadline.callback.kwargs == {
        "model": "diabetes",
        "conn_id": config.monitor.alert_conn_id,
        "deadline_minutes": config.monitor.deadline_minutes,
    }


def test_no_deadline_when_the_config_sets_none() -> None:
    import dataclasses

    config = load_model_config(PROJECT_ROOT / "include/models/diabetes.yaml")
    config = dataclasses.replace(config, monitor=dataclasses.replace(config.monitor, deadline_minutes=None))
    assert alerts.deadline_alert(config) is None


def test_deadline_callback_mails_through_the_alert_connection(
    smtp_server: tuple[Inbox, int], artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, port = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", smtp_connection(port))
    # The context Airflow's deadline handling passes (airflow.models.deadline.Deadline.handle_miss).
    context = {
        "dag_run": {"dag_id": "lifecycle__diabetes", "dag_run_id": "scheduled__2026-11-27", "state": "running"},
        "deadline": {"id": "d1", "deadline_time": "2026-11-27T06:00:00+00:00"},
    }
    assert alerts.deadline_missed(context, model="diabetes", conn_id="mlops_alerts", deadline_minutes=360)
    [(_, message)] = inbox.messages
    assert "lifecycle__diabetes run scheduled__2026-11-27 missed its deadline (360 min" in message["Subject"]
    [line] = alert_lines(artifact_root)
    assert line["kind"] == "deadline_missed" and line["deadline_time"] == "2026-11-27T06:00:00+00:00"
