"""The backend factory and the images' definitions, without a Docker engine or a cluster."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from dag_runner import LIFECYCLE_STEP_TASKS

from include.mlops.config import load_model_config
from mlops_airflow import backends
from mlops_airflow.lifecycle import build_lifecycle_dag

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = PROJECT_ROOT / "include" / "docker"
STEP_TASKS = LIFECYCLE_STEP_TASKS


@pytest.fixture(autouse=True)
def no_backend_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_BACKEND", raising=False)


def step_types(dag_id_model: str = "diabetes") -> dict[str, str]:
    dag = build_lifecycle_dag(load_model_config(PROJECT_ROOT / "include" / "models" / f"{dag_id_model}.yaml"))
    return {task_id: type(dag.get_task(task_id)).__name__ for task_id in STEP_TASKS}


def test_default_backend_is_local() -> None:
    assert backends.resolve_backend() == "local"
    assert set(step_types().values()) == {"LifecycleStepOperator"}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("docker", "DockerStepOperator"),
        ("kubernetes", "KubernetesStepOperator"),
        ("Kubernetes", "KubernetesStepOperator"),
    ],
)
def test_env_var_picks_the_backend(monkeypatch: pytest.MonkeyPatch, setting: str, expected: str) -> None:
    monkeypatch.setenv("MLOPS_BACKEND", setting)
    assert set(step_types().values()) == {expected}


def test_removed_aliases_are_unknown_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_BACKEND", "k8s")
    with pytest.raises(backends.UnknownBackendError, match="unknown compute backend 'k8s'"):
        backends.resolve_backend()


@pytest.mark.parametrize("setting", ["local", "docker", "kubernetes"])
def test_every_step_task_gets_its_runtime_cap_from_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setting: str
) -> None:
    import yaml

    monkeypatch.setenv("MLOPS_BACKEND", setting)
    raw = yaml.safe_load((PROJECT_ROOT / "include" / "models" / "diabetes.yaml").read_text())
    raw["timeouts"] = {"train": 60, "deploy": 30}
    (tmp_path / "diabetes.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "diabetes.py").write_text((PROJECT_ROOT / "include" / "models" / "diabetes.py").read_text())
    dag = build_lifecycle_dag(load_model_config(tmp_path / "diabetes.yaml"), models_dir=str(tmp_path))
    caps = {task_id: dag.get_task(task_id).execution_timeout for task_id in STEP_TASKS}
    assert caps["train"] == dt.timedelta(seconds=60)
    assert caps["deploy"] == dt.timedelta(seconds=30)
    # Steps the config does not name keep their defaults.
    assert caps["snapshot"] == dt.timedelta(seconds=900)
    assert caps["compress"] == dt.timedelta(seconds=7200)
    assert dag.get_task("tune_trial").partial_kwargs["execution_timeout"] == dt.timedelta(seconds=7200)
    assert caps["evaluate_optimized"] == dt.timedelta(seconds=1800)


def test_unknown_step_in_timeouts_is_a_config_error(tmp_path: Path) -> None:
    import yaml

    from include.mlops.config import ConfigError

    raw = yaml.safe_load((PROJECT_ROOT / "include" / "models" / "diabetes.yaml").read_text())
    raw["timeouts"] = {"trian": 60}
    (tmp_path / "diabetes.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "diabetes.py").write_text((PROJECT_ROOT / "include" / "models" / "diabetes.py").read_text())
    with pytest.raises(ConfigError, match=r"field 'timeouts.trian': unknown step"):
        load_model_config(tmp_path / "diabetes.yaml")


def test_unknown_backend_is_an_import_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_BACKEND", "dokcer")
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.dag_ids == []
    # Every DAG file builds step tasks, so each reports the deployment's mistake.
    assert sorted(Path(path).name for path in bag.import_errors) == ["lifecycle.py", "monitor.py", "rollback.py"]
    for error in bag.import_errors.values():
        assert "unknown compute backend 'dokcer'" in error
    assert "MLOPS_BACKEND" in error and "local, docker, kubernetes" in error


def test_local_dags_do_not_import_the_container_providers() -> None:
    probe = (
        "import sys\n"
        "from include.mlops.config import load_model_configs\n"
        "from mlops_airflow.lifecycle import build_lifecycle_dag\n"
        "[build_lifecycle_dag(c) for c in load_model_configs()]\n"
        "heavy = [m for m in ('docker', 'kubernetes', 'mlops_airflow.container_operators',"
        " 'airflow.providers.cncf.kubernetes.operators.pod') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("MLOPS_BACKEND", "AIRFLOW_VAR_MLOPS_BACKEND")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def gpu_diabetes_dag(tmp_path: Path) -> object:
    import yaml

    raw = yaml.safe_load((PROJECT_ROOT / "include" / "models" / "diabetes.yaml").read_text())
    raw["train"]["gpus"] = 2
    (tmp_path / "diabetes.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "diabetes.py").write_text((PROJECT_ROOT / "include" / "models" / "diabetes.py").read_text())
    return build_lifecycle_dag(load_model_config(tmp_path / "diabetes.yaml"), models_dir=str(tmp_path))


def test_docker_operators_mount_remove_and_request_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLOPS_BACKEND", "docker")
    monkeypatch.delenv("MLOPS_TRAINER_IMAGE", raising=False)
    monkeypatch.setenv("MLOPS_TRAINER_GPU_IMAGE", "mlops-trainer:local-cuda")
    dag = gpu_diabetes_dag(tmp_path)
    for task_id in STEP_TASKS:
        task = dag.get_task(task_id)
        assert task.auto_remove == "force"
        assert task.mount_tmp_dir is False
        # Only the steps that get GPUs run in the CUDA image.
        assert task.image == ("mlops-trainer:local-cuda" if task_id == "train" else "mlops-trainer:local")
        requests = task.device_requests or []
        if task_id == "train":
            assert [(r.count, r.capabilities) for r in requests] == [(2, [["gpu"]])], task_id
        else:
            assert requests == [], task_id
    # Parse time stays cheap: no engine is contacted while building the DAG.
    assert dag.get_task("train").container is None


@pytest.mark.parametrize("backend", ["docker", "kubernetes"])
def test_gpu_steps_fall_back_to_the_cpu_image_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture, backend: str
) -> None:
    monkeypatch.setenv("MLOPS_BACKEND", backend)
    monkeypatch.setenv("MLOPS_TRAINER_IMAGE", "registry.example.com/mlops-trainer:2.0")
    monkeypatch.delenv("MLOPS_TRAINER_GPU_IMAGE", raising=False)
    with caplog.at_level("WARNING", logger="mlops_airflow.container_steps"):
        dag = gpu_diabetes_dag(tmp_path)
    assert {dag.get_task(task_id).image for task_id in STEP_TASKS} == {"registry.example.com/mlops-trainer:2.0"}
    warned = [r.getMessage() for r in caplog.records if "MLOPS_TRAINER_GPU_IMAGE is not set" in r.getMessage()]
    # The mapped tuning trials build their operator when each runs, and warn then (below).
    assert len(warned) == 1 and "Step 'train' of model 'diabetes' asks for 2 GPU(s)" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mlops_airflow.container_steps"):
        arguments = next(iter(dag.get_task("tune_trial").expand_input.value))
        trial = dag.get_task("tune_trial").unmap({arguments: {"trial": 0}})
    assert trial.image == "registry.example.com/mlops-trainer:2.0"
    assert any("Step 'tune-trial' of model 'diabetes' asks for 2 GPU(s)" in r.getMessage() for r in caplog.records)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.parametrize("image", ["trainer", "server"])
def test_image_requirements_use_the_project_pins(image: str) -> None:
    project = _pins(PROJECT_ROOT / "requirements.txt")
    slim = _pins(DOCKER_DIR / image / "requirements.txt")
    assert "tensorflow" in slim
    assert {name: version for name, version in slim.items() if project.get(name) != version} == {}
    assert not any(name.startswith("apache-airflow") for name in slim)


@pytest.mark.parametrize(
    ("backend", "arguments_field"),
    [("local", "arguments"), ("docker", "step_arguments"), ("kubernetes", "step_arguments")],
)
def test_tuning_trials_map_on_every_backend_with_gpus_as_train_gets_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, backend: str, arguments_field: str
) -> None:
    monkeypatch.setenv("MLOPS_BACKEND", backend)
    monkeypatch.setenv("MLOPS_TRAINER_GPU_IMAGE", "mlops-trainer:local-cuda")
    dag = gpu_diabetes_dag(tmp_path)
    mapped = dag.get_task("tune_trial")
    assert mapped.pool == "mlops_tuning"
    assert mapped.expand_input.value == {arguments_field: [{"trial": 0}, {"trial": 1}, {"trial": 2}]}
    # What a worker runs for map index 1: the backend's operator with that trial's arguments.
    trial = mapped.unmap({arguments_field: {"trial": 1}})
    assert getattr(trial, arguments_field) == {"trial": 1}
    assert trial.step == "tune-trial" and trial.execution_timeout == dt.timedelta(seconds=7200)
    if backend == "docker":
        assert trial.image == "mlops-trainer:local-cuda"
        assert [(r.count, r.capabilities) for r in trial.device_requests] == [(2, [["gpu"]])]
    if backend == "kubernetes":
        assert trial.image == "mlops-trainer:local-cuda"
        assert trial.container_resources.limits["nvidia.com/gpu"] == "2"
