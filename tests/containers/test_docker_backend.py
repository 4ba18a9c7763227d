"""The docker backend for real: lifecycle runs whose steps are containers of the trainer image.

``.ci/run`` installs and starts the Docker engine and builds the image from a
locally debootstrapped base; these tests then run steps through real
containers and compare with the ``local`` backend.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException

from include.mlops.artifacts import run_dir
from include.mlops.registry import Registry
from mlops_airflow.container_operators import ContainerBackendError, DockerStepOperator

pytestmark = [pytest.mark.docker]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
FAST = {"epochs": 8, "batch_size": 64}


def containers_of(client: Any, image: str) -> list[Any]:
    return client.containers.list(all=True, filters={"ancestor": image})


def run_lifecycle(dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """One DagRun with ``dag.test()``; the task states and the XComs of the step tasks."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    dag_run = bag.dags[dag_id].test(logical_date=DAY, run_conf=conf)
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
            "tasks": {t.task_id: type(t).__name__ for t in bag.dags[dag_id].tasks},
        }


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db")
def test_docker_lifecycle_matches_local(
    docker_client: Any, trainer_image: str, shared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag_id = "lifecycle__diabetes"
    monkeypatch.setenv("MLOPS_BACKEND", "docker")
    before = {c.id for c in containers_of(docker_client, trainer_image)}
    docker = run_lifecycle(dag_id, FAST)
    assert docker["tasks"]["train"] == "DockerStepOperator"
    assert docker["state"] == "success", docker["states"]
    for task_id in ("snapshot", "validate", "train", "evaluate", "gate", "register", "deploy"):
        assert docker["states"][task_id] == "success", (task_id, docker["states"])
    # Containers are removed after their step.
    assert {c.id for c in containers_of(docker_client, trainer_image)} - before == set()

    # The paths in XComs are valid on the worker: the mount has the same path inside and out.
    snapshot = docker["xcoms"]["snapshot"]
    assert Path(snapshot["data_uri"]).is_file() and Path(snapshot["data_uri"]).is_relative_to(shared_root)
    assert Path(docker["xcoms"]["train"]["model_uri"], "saved_model.pb").is_file()
    registry = Registry(shared_root / "models")
    assert registry.versions("diabetes") == [1]
    assert registry.label_version("diabetes", "stable") == 1
    registry.verify("diabetes", 1)
    lineage = json.loads((registry.version_dir("diabetes", 1) / "assets.extra" / "lineage.json").read_text())
    assert lineage["run_id"] == docker["run_id"] and lineage["snapshot_sha256"] == snapshot["sha256"]
    # Written as the worker's user, like the local backend's files, so either backend can replace them.
    assert (shared_root / "models" / "diabetes" / "1").stat().st_uid == os.getuid()

    # The same interval on the local backend, in its own artifact root.
    local_root = tmp_path / "local-artifacts"
    local_root.mkdir()
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(local_root))
    monkeypatch.setenv("MLOPS_BACKEND", "local")
    local = run_lifecycle(dag_id, FAST)
    assert local["tasks"]["train"] == "LifecycleStepOperator"
    assert local["state"] == "success", local["states"]
    assert local["xcoms"]["snapshot"]["sha256"] == snapshot["sha256"]
    assert local["xcoms"]["snapshot"]["rows"] == snapshot["rows"]
    docker_metrics, local_metrics = docker["xcoms"]["evaluate"]["metrics"], local["xcoms"]["evaluate"]["metrics"]
    for metric in ("mae", "rmse", "r2"):
        # Same data, seeds and library versions; only thread scheduling may differ.
        assert math.isclose(docker_metrics[metric], local_metrics[metric], rel_tol=0.05, abs_tol=0.02), metric
    assert set(docker["xcoms"]["train"]) == set(local["xcoms"]["train"])


def operator(step: str, arguments: dict[str, Any], **kwargs: Any) -> DockerStepOperator:
    with DAG(dag_id="docker_backend_test", schedule=None):
        return DockerStepOperator(
            task_id=step, step=step, model="diabetes", resolve_arguments=lambda _: arguments, **kwargs
        )


def context() -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(run_id="manual__test")}


def test_failing_step_fails_the_task_with_the_step_error(
    docker_client: Any, trainer_image: str, shared_root: Path
) -> None:
    bad = shared_root / "not-a-snapshot.parquet"
    bad.write_text("this is not parquet")
    before = {c.id for c in containers_of(docker_client, trainer_image)}
    task = operator("validate", {"data": str(bad)})
    with pytest.raises(AirflowException) as raised:
        task.execute(context())
    message = str(raised.value)
    assert "step 'validate' of model 'diabetes' failed in container" in message
    # The step's own error (from the container's log) is in the task's failure message.
    assert "not-a-snapshot.parquet" in message or "parquet" in message.lower()
    assert not run_dir("docker_backend_test", "manual__test", "validate", root=shared_root).exists()
    assert not (shared_root / "models").exists()
    assert {c.id for c in containers_of(docker_client, trainer_image)} - before == set()


def test_missing_image_is_a_clear_error(docker_client: Any, shared_root: Path) -> None:
    # A registry on a closed local port fails the pull at once (no network wait).
    task = operator("validate", {"data": "/nowhere"}, image="localhost:1/mlops-trainer:missing")
    with pytest.raises(ContainerBackendError) as raised:
        task.execute(context())
    message = str(raised.value)
    assert "localhost:1/mlops-trainer:missing" in message
    assert "include/docker/trainer/Dockerfile" in message and "MLOPS_TRAINER_IMAGE" in message


def test_gpu_request_without_gpu_runtime_is_a_clear_error(
    docker_client: Any, trainer_image: str, shared_root: Path
) -> None:
    if "nvidia" in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("this Docker engine has the NVIDIA runtime, so a GPU request is valid here")
    task = operator("train", {"data": str(shared_root / "data.parquet")}, gpus=1)
    with pytest.raises(ContainerBackendError) as raised:
        task.execute(context())
    message = str(raised.value)
    assert "asks for 1 GPU(s)" in message and "no GPU runtime" in message
    assert "NVIDIA Container Toolkit" in message and "train.gpus: 0" in message
    assert not containers_of(docker_client, trainer_image) or all(
        c.attrs["Config"]["Cmd"][:4] != ["python", "-m", "include.mlops", "train"]
        for c in containers_of(docker_client, trainer_image)
    )


def test_image_runs_the_step_cli_as_non_root_without_airflow(docker_client: Any, trainer_image: str) -> None:
    script = (
        "import importlib.util, os, json;"
        "print(json.dumps({'uid': os.getuid(), 'airflow': importlib.util.find_spec('airflow') is not None}))"
    )
    out = docker_client.containers.run(trainer_image, ["python", "-c", script], remove=True).decode()
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts == {"uid": 1000, "airflow": False}
    usage = docker_client.containers.run(trainer_image, remove=True).decode()
    assert "snapshot" in usage and "train" in usage and "register" in usage
