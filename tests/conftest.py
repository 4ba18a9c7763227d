"""Test settings shared by every tier.

Airflow reads its configuration when first imported, so the environment is
set here, at import time, before any test module imports Airflow: a private
AIRFLOW_HOME (SQLite), the project's dags/plugins folders and config, and a
private artifact root.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlops-tests-"))

os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow-home")
os.environ["AIRFLOW_CONFIG"] = str(PROJECT_ROOT / "airflow.cfg")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_urlsafe(48)
os.environ["MLOPS_ARTIFACT_ROOT"] = str(_SESSION_DIR / "artifacts")
os.environ["MLOPS_CACHE_DIR"] = str(_SESSION_DIR / "cache")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")])
for entry in (str(PROJECT_ROOT / "plugins"), str(PROJECT_ROOT)):
    if entry not in sys.path:
        sys.path.insert(0, entry)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in the session's AIRFLOW_HOME, with the deploy and tuning pools."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], check=True, capture_output=True)
    subprocess.run(
        [*airflow, "pools", "set", "model_deploy", "1", "one deploy at a time"], check=True, capture_output=True
    )
    subprocess.run(
        [*airflow, "pools", "set", "mlops_tuning", "2", "tuning trials training at once"],
        check=True,
        capture_output=True,
    )
    return home


@pytest.fixture
def artifact_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh artifact root for one test (runs and registry)."""
    root = tmp_path / "artifacts"
    root.mkdir()
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(root))
    return root


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a loopback port, with the AWS variables pointing at it (tests/s3_stand_in.py)."""
    from s3_stand_in import running_s3

    yield from running_s3()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from collection_order import long_modules_first

    long_modules_first(items)
