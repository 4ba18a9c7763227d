"""The monitor's ``slo`` task: a monitor that cannot see Prometheus says so (insufficient_data), never healthy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk import DAG
from smtp_server import free_port

from include.mlops.config import find_model_config
from include.mlops.monitoring.outcome import decide
from mlops_airflow.monitoring import SloOperator


def slo_task() -> SloOperator:
    with DAG(dag_id="monitor__diabetes", schedule=None):
        return SloOperator(task_id="slo", config=find_model_config("diabetes"))


def context() -> dict:
    run_after = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    return {"dag_run": SimpleNamespace(run_id="manual__slo", run_after=run_after)}


def test_prometheus_down_is_insufficient_data_naming_the_url(
    artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failing here would leave decide and every branch upstream_failed, dropping the drift the run did measure.
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AIRFLOW_CONN_PROMETHEUS_DEFAULT", closed)
    result = slo_task().execute(context())  # type: ignore[arg-type]
    assert result["status"] == "insufficient_data" and result["breaches"] == []
    [problem] = result["problems"]
    assert "SLOs not measured" in problem and closed in problem and "prometheus_default" in problem
    assert set(result["figures"].values()) == {None}
    assert Path(result["result_uri"]).is_file()
    # What decide makes of it: never healthy, and a drift found beside it is still acted on.
    assert decide(result, {"status": "ok", "drifted": True}) == ["drift", "insufficient_data"]


def test_a_missing_prometheus_connection_is_insufficient_data_saying_how_to_define_it(
    artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_PROMETHEUS_DEFAULT", raising=False)
    result = slo_task().execute(context())  # type: ignore[arg-type]
    assert result["status"] == "insufficient_data"
    assert "'prometheus_default' is not defined" in result["problems"][0]
    assert "AIRFLOW_CONN_PROMETHEUS_DEFAULT=http://" in result["problems"][0]


def test_a_connection_whose_host_holds_the_scheme_gives_one_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # Typed in the UI as host "http://model-server", port 8501: every Connection-derived URL reads it alike.
    from mlops_airflow.deploy_tasks import model_server_url

    conn = '{"conn_type": "http", "host": "http://model-server", "port": 8501}'
    monkeypatch.setenv("AIRFLOW_CONN_MODEL_SERVER_DEFAULT", conn)
    assert model_server_url() == "http://model-server:8501"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("", None), ("?config_poll_seconds=30", 30.0), ("?config_poll_seconds=0.5", 0.5)],
)
def test_the_model_server_connection_says_how_often_the_server_rereads_its_config(
    monkeypatch: pytest.MonkeyPatch, extra: str, expected: float | None
) -> None:
    from mlops_airflow.deploy_tasks import model_server_poll_seconds

    monkeypatch.setenv("AIRFLOW_CONN_MODEL_SERVER_DEFAULT", "http://model-server:8501" + extra)
    assert model_server_poll_seconds() == expected


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_config_poll_in_the_model_server_connection_fails_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.deploy_tasks import model_server_poll_seconds

    monkeypatch.setenv("AIRFLOW_CONN_MODEL_SERVER_DEFAULT", f"http://model-server:8501?config_poll_seconds={value}")
    with pytest.raises(AirflowFailException, match=r"extra config_poll_seconds=.* is not a number of seconds >= 0"):
        model_server_poll_seconds()
