"""The rollback DAG, ``rollback__<name>``: its trigger form, and runs with ``dag.test()`` against a real model server.

Each run's one task is the real deploy step through the local backend: it
infra-validates the target in a sandbox server, moves ``stable`` and verifies
it through the running server.  A target that does not exist or is corrupt is
refused without a retry, and nothing moves.  The move is in the model's audit
log with the reason.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import ParamValidationError
from dag_runner import project_dag, run_lifecycle
from model_factory import make_saved_model

from include.mlops.config import find_model_config
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.label_log import read_label_moves
from include.mlops.serving.app import ServerSettings
from tests.serving.conftest import RunningServer, corrupt_weights, serve

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

DAG_ID = "rollback__diabetes"
DAY = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("conf", "problem"),
    [
        ({"reason": "v2 is slow"}, "version"),
        ({"version": 0, "reason": "v2 is slow"}, "version"),
        ({"version": "two", "reason": "v2 is slow"}, "version"),
        ({"version": 1}, "reason"),
        ({"version": 1, "reason": ""}, "reason"),
    ],
)
def test_the_trigger_form_needs_a_version_and_a_reason(conf: dict, problem: str) -> None:
    params = copy.deepcopy(project_dag(DAG_ID).params)
    with pytest.raises(ParamValidationError, match=problem):  # on update (a value) or validate (a missing one)
        params.update(conf)
        params.validate()


def test_a_good_trigger_is_valid() -> None:
    params = copy.deepcopy(project_dag(DAG_ID).params)
    params.update({"version": 1, "reason": "v2 answers slowly"})
    assert params.validate() == {"version": 1, "reason": "v2 answers slowly"}


@pytest.fixture
def registry(artifact_root: Path, tmp_path: Path) -> Registry:
    """Versions 1 (x1), 2 (x2) and 3 (x3, its weights corrupted) of ``diabetes``; ``stable`` -> 2."""
    features = list(find_model_config("diabetes").features)
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(20, len(features))), columns=features)
    frame["split"] = "test"
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    reg = Registry(artifact_root / "models")
    for version in (1, 2, 3):
        model = make_saved_model(tmp_path / f"m{version}", len(features), scale=float(version))
        lineage = {"dag_id": "lifecycle__diabetes", "run_id": f"r{version}", "data_uri": str(tmp_path / "rows.parquet")}
        reg.register("diabetes", model, metrics={"mae": 1.0}, lineage=lineage)
    corrupt_weights(reg.version_dir("diabetes", 3))
    reg.set_label("diabetes", "stable", 2)
    return reg


@pytest.fixture
def server(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        monkeypatch.setenv("AIRFLOW_CONN_MODEL_SERVER_DEFAULT", running.url)
        yield running


def stable_answer(server: RunningServer) -> float:
    response = httpx.post(f"{server.url}/v1/models/diabetes/labels/stable:predict", json={"instances": [[1.0] * 10]})
    return float(response.json()["predictions"][0][0])


def test_a_rollback_moves_stable_verified_and_records_why(registry: Registry, server: RunningServer) -> None:
    run = run_lifecycle(DAG_ID, DAY, {"version": 1, "reason": "v2 answers too slowly"})

    assert run["state"] == "success", run
    result = run["xcoms"]["rollback"]
    assert (result["version"], result["previous"], result["verified"]) == (1, 2, True)
    assert result["infra_validation"]["max_abs_diff"] <= 1e-4
    assert registry.labels("diabetes") == {"stable": 1}
    assert stable_answer(server) == pytest.approx(10.0)
    last = read_label_moves(registry.model_dir("diabetes"))[-1]
    assert (last["label"], last["from"], last["to"]) == ("stable", 2, 1)
    assert last["reason"] == f"rollback: v2 answers too slowly ({run['run_id']})"
    assert last["task"].endswith("/rollback")


@pytest.mark.parametrize(("version", "why"), [(7, "unknown"), (3, "corrupt")])
def test_a_rollback_to_a_missing_or_corrupt_version_is_refused_without_a_retry(
    registry: Registry, server: RunningServer, version: int, why: str
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    moves_before = read_label_moves(registry.model_dir("diabetes"))
    run = run_lifecycle(DAG_ID, DAY, {"version": version, "reason": f"try the {why} one"})

    assert run["state"] == "failed"
    with create_session() as session:
        [ti] = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=run["run_id"]).all()
        assert (str(ti.state), ti.try_number) == ("failed", 1)  # bad input: exit 3, not retried
    assert registry.labels("diabetes") == {"stable": 2} and registry.served_versions("diabetes") == [2]
    assert read_label_moves(registry.model_dir("diabetes")) == moves_before
    assert stable_answer(server) == pytest.approx(20.0)
