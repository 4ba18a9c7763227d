"""scripts/prepare_home.py: `make run`'s pools and Connections, set in one process on a migrated SQLite DB."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT_ROOT / "scripts" / "prepare_home.py"
PORTS = {"MLOPS_SERVER_PORT": "18501", "MLOPS_PROMETHEUS_PORT": "19090", "MLOPS_PUSHGATEWAY_PORT": "19091"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("prepare-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(folder),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{folder / 'airflow.db'}",
        **PORTS,
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    return env


def prepare(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT)], env={**env, **extra}, capture_output=True, text=True)


def rows(env: dict[str, str], query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return sorted(db.execute(query).fetchall())


def test_pools_and_connections_are_set_and_an_edited_connection_is_kept(home: dict[str, str]) -> None:
    first = prepare(home)
    assert first.returncode == 0, first.stderr
    assert rows(home, "SELECT pool, slots FROM slot_pool WHERE pool != 'default_pool'") == [
        ("mlops_tuning", 2),
        ("model_deploy", 1),
    ]
    assert rows(home, "SELECT conn_id, conn_type, host, port FROM connection") == [
        ("model_server_default", "http", "localhost", 18501),
        ("prometheus_default", "http", "localhost", 19090),
        ("pushgateway_default", "http", "localhost", 19091),
    ]
    # A user points the model server elsewhere in the UI, and changes the tuning pool's size: the next
    # `make run` keeps the Connection and sets the pool to what the environment says.
    with sqlite3.connect(Path(home["AIRFLOW_HOME"]) / "airflow.db") as db:
        db.execute("UPDATE connection SET host = 'models.internal' WHERE conn_id = 'model_server_default'")
    again = prepare(home, MLOPS_TUNING_POOL_SLOTS="3")
    assert again.returncode == 0, again.stderr
    assert "added Connection" not in again.stdout
    assert ("model_server_default", "models.internal") in rows(home, "SELECT conn_id, host FROM connection")
    assert ("mlops_tuning", 3) in rows(home, "SELECT pool, slots FROM slot_pool")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"MLOPS_TUNING_POOL_SLOTS": "two"}, "MLOPS_TUNING_POOL_SLOTS='two' is not a whole number"),
        ({"MLOPS_TUNING_POOL_SLOTS": "0"}, "MLOPS_TUNING_POOL_SLOTS='0' must be at least 1"),
        ({"MLOPS_SERVER_PORT": ""}, "set MLOPS_SERVER_PORT before preparing the Airflow home"),
    ],
    ids=["slots-not-a-number", "no-slots", "no-server-port"],
)
def test_a_bad_setting_is_named_and_nothing_is_written(
    home: dict[str, str], extra: dict[str, str], message: str
) -> None:
    before = rows(home, "SELECT pool, slots FROM slot_pool"), rows(home, "SELECT conn_id, host, port FROM connection")
    done = prepare(home, **extra)
    assert done.returncode == 1 and message in done.stderr
    after = rows(home, "SELECT pool, slots FROM slot_pool"), rows(home, "SELECT conn_id, host, port FROM connection")
    assert after == before
