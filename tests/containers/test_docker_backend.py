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
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException
from dag_runner import run_lifecycle

from include.mlops.artifacts import run_dir
from include.mlops.registry.filesystem import Registry
from mlops_airflow.container_operators import ContainerBackendError, DockerStepOperator
from mlops_airflow.steps import StepBadInputError, StepFailedError

pytestmark = [pytest.mark.docker]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
FAST = {"epochs": 8, "batch_size": 64}


def containers_of(client: Any, image: str) -> list[Any]:
    return client.containers.list(all=True, filters={"ancestor": image})


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db")
def test_docker_lifecycle_matches_local(
    docker_client: Any, trainer_image: str, shared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag_id = "lifecycle__diabetes"
    monkeypatch.setenv("MLOPS_BACKEND", "docker")
    before = {c.id for c in containers_of(docker_client, trainer_image)}
    docker = run_lifecycle(dag_id, DAY, FAST)
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
    local = run_lifecycle(dag_id, DAY, FAST)
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
    return {"dag_run": SimpleNamespace(run_id="manual__test"), "ti": SimpleNamespace(map_index=-1, try_number=1)}


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


@pytest.fixture
def served_registry(shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Registry, str, Path]]:
    """Versions 1 (x1, stable) and 2 (x2) of ``diabetes`` served by a real model server on the host loopback."""
    import numpy as np
    import pandas as pd
    from serving.conftest import make_linear_model, serve

    from include.mlops.config import find_model_config
    from include.mlops.serving.app import ServerSettings

    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    features = find_model_config("diabetes").features
    registry = Registry(shared_root / "models")
    for scale in (1.0, 2.0):
        model = make_linear_model(shared_root / "incoming" / f"x{scale:g}", scale, n_features=len(features))
        registry.register(
            "diabetes",
            model,
            metrics={"mae": 1.0},
            lineage={"dag_id": "lifecycle__diabetes", "run_id": f"run-{scale:g}"},
        )
    registry.set_label("diabetes", "stable", 1)
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(20, len(features))), columns=list(features))
    frame["split"] = "test"
    (shared_root / "snapshot").mkdir()
    frame.to_parquet(shared_root / "snapshot" / "data.parquet", index=False)
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        yield registry, running.url, shared_root / "snapshot"


def deploy_arguments(server_url: str, snapshot: Path) -> dict[str, Any]:
    return {"version": 2, "label": "stable", "server_url": server_url, "data": str(snapshot), "timeout": 20}


@pytest.mark.slow
def test_deploy_step_in_a_container_reaches_the_model_server_on_the_host(
    docker_client: Any, trainer_image: str, served_registry: tuple[Registry, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, server_url, snapshot = served_registry
    monkeypatch.delenv("MLOPS_DOCKER_NETWORK", raising=False)  # the default: the host's network
    task = operator("deploy", deploy_arguments(server_url, snapshot))
    assert task.network_mode == "host"
    result = task.execute(context())
    assert result["verified"] is True and result["changed"] is True
    assert (result["version"], result["previous"]) == (2, 1)
    assert registry.label_version("diabetes", "stable") == 2
    # Verified through the label on the server itself: stable answers as version 2 (x2).
    assert result["server_url"] == server_url and result["smoke"]["rows"] > 0


@pytest.mark.slow
def test_deploy_on_a_network_without_the_server_fails_retryably_and_keeps_stable(
    docker_client: Any, trainer_image: str, served_registry: tuple[Registry, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, server_url, snapshot = served_registry
    monkeypatch.setenv("MLOPS_DOCKER_NETWORK", "bridge")  # what every step got before: the server is unreachable
    task = operator("deploy", deploy_arguments(server_url, snapshot))
    assert task.network_mode == "bridge"
    with pytest.raises(StepFailedError) as raised:
        task.execute(context())
    assert "did not become AVAILABLE" in str(raised.value)
    assert registry.label_version("diabetes", "stable") == 1


def test_bad_usage_in_a_container_fails_without_retry(
    docker_client: Any, trainer_image: str, shared_root: Path
) -> None:
    interval = {"interval_start": "2026-11-19", "interval_end": "2026-11-20"}
    task = operator("snapshot", {**interval, "no_such_flag": 1})
    with pytest.raises(StepBadInputError) as raised:
        task.execute(context())
    assert "unrecognized arguments: --no-such-flag" in str(raised.value)


@pytest.mark.parametrize(("status", "error"), [(3, StepBadInputError), (30, StepFailedError), (31, StepFailedError)])
def test_container_exit_status_is_read_exactly(
    docker_client: Any, trainer_image: str, status: int, error: type[Exception]
) -> None:
    """The provider's real failure for a container exiting ``status``; 30-39 used to pass for 3."""
    from airflow.providers.docker.exceptions import DockerContainerFailedException
    from airflow.providers.docker.operators.docker import DockerOperator

    from mlops_airflow.container_operators import docker_exit_code
    from mlops_airflow.steps import raise_for_exit_code

    with DAG(dag_id="docker_exit_status", schedule=None):
        exits = DockerOperator(
            task_id="exits",
            image=trainer_image,
            command=["python", "-c", f"raise SystemExit({status})"],
            auto_remove="force",
            mount_tmp_dir=False,
        )
    with pytest.raises(DockerContainerFailedException) as failed:
        exits.execute(context())
    assert docker_exit_code(failed.value) == status
    with pytest.raises(error):
        raise_for_exit_code(docker_exit_code(failed.value), "step failed")


@pytest.mark.slow
def test_drift_step_in_a_container_scores_the_log_and_pushes_to_the_host_pushgateway(
    docker_client: Any, trainer_image: str, shared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer image holds what the drift step imports (GX, prometheus-client) and reaches the host."""
    import httpx
    import numpy as np
    import pandas as pd
    from prometheus_stack import prometheus_stack
    from serving.conftest import make_linear_model

    from include.mlops.config import find_model_config
    from include.mlops.monitoring.reference import REFERENCE_FILE, build_reference
    from include.mlops.serving.predlog import PredictionLogger

    monkeypatch.delenv("MLOPS_DOCKER_NETWORK", raising=False)
    config = find_model_config("diabetes")
    rng = np.random.default_rng(0)
    training = pd.DataFrame(rng.normal(size=(500, len(config.features))), columns=list(config.features))
    reference = build_reference(training, config.features, config.monitor.drift.bins)
    model = make_linear_model(shared_root / "incoming" / "x1", 1.0, n_features=len(config.features))
    Registry(shared_root / "models").register(
        "diabetes",
        model,
        metrics={"mae": 1.0},
        lineage={"dag_id": "lifecycle__diabetes", "run_id": "r1"},
        metadata={Path(REFERENCE_FILE).name: reference},
    )
    logged = rng.normal(size=(300, len(config.features))).astype("float32")
    logged[:, config.features.index("bmi")] += 3.0  # bmi drifts by three training standard deviations
    predlog = PredictionLogger(shared_root, sample_rate=1.0, max_rows_per_request=300)
    predlog.start()
    predlog.offer("diabetes", 1, logged, np.zeros((300, 1), "float32"))
    predlog.stop()
    now = dt.datetime.now(dt.UTC)
    with prometheus_stack(tmp_path / "prometheus") as prom:
        window = {
            "window_start": (now - dt.timedelta(hours=1)).isoformat(),
            "window_end": (now + dt.timedelta(minutes=1)).isoformat(),
        }
        result = operator("drift", {**window, "pushgateway": prom.pushgateway_url}).execute(context())
        pushed = httpx.get(f"{prom.pushgateway_url}/metrics", timeout=10).text
    assert result["status"] == "ok" and result["rows"] == 300, result
    assert result["features"]["bmi"]["drifted"] and not result["features"]["age"]["drifted"], result["features"]
    assert result["pushed"] is True, result["problems"]
    assert 'mlops_drift_feature_score{feature="bmi"' in pushed or 'feature="bmi"' in pushed
