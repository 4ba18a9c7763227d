"""Exit code 3 (bad input) fails a step task once; any other failure is retried, on every backend.

The local backend is checked through real Airflow runs (``dag.test()``) of
real step subprocesses, counting the tries; the kubernetes backend offline,
through the pod operator's own cleanup with a pod object carrying the step's
exit code; the docker backend in ``test_docker_backend.py``.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag
from stub_kube_api import stub_kubeconfig

from include.mlops.config import DEFAULT_MODELS_DIR
from mlops_airflow.steps import StepBadInputError, StepFailedError, raise_for_exit_code

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
TRIES_ALLOWED = 3  # retries=2

DAG_FILE = """
import datetime as dt
import http.server
import json

from airflow.sdk import DAG

from mlops_airflow.operators import LifecycleStepOperator

TASKS = json.loads({tasks!r})

with DAG(dag_id={dag_id!r}, schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)):
    for task_id, spec in TASKS.items():
        LifecycleStepOperator(
            task_id=task_id,
            step=spec["step"],
            model=spec["model"],
            arguments=spec["arguments"],
            models_dir=spec.get("models_dir"),
            retries={retries},
            retry_delay=dt.timedelta(0),
            execution_timeout=dt.timedelta(seconds=spec["timeout_s"]) if "timeout_s" in spec else None,
        )
"""


def run_tasks(dag_id: str, tasks: dict[str, dict[str, Any]], folder: Path) -> dict[str, Any]:
    """Run ``tasks`` (independent step tasks) in one real DagRun.

    Returns ``{"states": {task_id: (state, tries)}, "durations": {task_id: seconds of the last try}}``.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import sync_bag_to_db
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    folder.mkdir(parents=True, exist_ok=True)
    source = DAG_FILE.format(tasks=json.dumps(tasks), dag_id=dag_id, retries=TRIES_ALLOWED - 1)
    (folder / f"{dag_id}.py").write_text(source)
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    # dag.test() runs only serialized DAGs of a known bundle.
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dag_run = bag.dags[dag_id].test(logical_date=DAY)
    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=dag_run.run_id).all()
        return {
            "states": {ti.task_id: (str(ti.state), ti.try_number) for ti in rows},
            "durations": {ti.task_id: ti.duration for ti in rows},
        }


def model_variant(models_dir: Path, name: str, **changes: Any) -> str:
    """A copy of the diabetes model config named ``name``, with top-level ``changes``."""
    raw = yaml.safe_load((DEFAULT_MODELS_DIR / "diabetes.yaml").read_text())
    raw.update(name=name, **changes)
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    (models_dir / "diabetes.py").write_text((DEFAULT_MODELS_DIR / "diabetes.py").read_text())
    return name


def step_processes(marker: str) -> list[Any]:
    """Live processes whose command line mentions ``marker``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def local_run(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real DagRun of local step tasks that fail in different ways (retries=2, no delay)."""
    tmp_path = tmp_path_factory.mktemp("local-backend")
    models = tmp_path / "models"
    no_suite = model_variant(models, "no_suite_model")
    landing = model_variant(
        models,
        "landing_model",
        source={"kind": "uri", "uri": str(tmp_path / "landing" / "{{ ds }}.csv"), "format": "csv"},
    )
    interval = {"interval_start": (DAY - dt.timedelta(days=1)).isoformat(), "interval_end": DAY.isoformat()}
    tasks = {
        # argparse rejects an unknown flag: the same argv fails the same way on every try.
        "bad_usage": {"step": "snapshot", "model": "diabetes", "arguments": {**interval, "no_such_flag": 1}},
        "missing_suite": {
            "step": "validate",
            "model": no_suite,
            "arguments": {"data": str(tmp_path / "data.parquet")},
            "models_dir": str(models),
        },
        # Not bad input: the partition may still land, so every try is used (each waits briefly).
        "not_landed": {
            "step": "snapshot",
            "model": landing,
            "arguments": {**interval, "wait_for_data": 0.3},
            "models_dir": str(models),
        },
        # A step that would wait a minute for its data; its runtime cap is 3 seconds.
        "hangs": {
            "step": "snapshot",
            "model": landing,
            "arguments": {**interval, "wait_for_data": 60},
            "models_dir": str(models),
            "timeout_s": 3,
        },
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
        return {**run_tasks("exit_codes_local", tasks, tmp_path / "dags"), "marker": str(models)}


def test_local_backend_retries_everything_but_bad_input(local_run: dict[str, Any]) -> None:
    states = local_run["states"]
    assert states["bad_usage"] == ("failed", 1)
    assert states["missing_suite"] == ("failed", 1)
    assert states["not_landed"] == ("failed", TRIES_ALLOWED)


def test_local_step_is_killed_at_its_runtime_cap(local_run: dict[str, Any]) -> None:
    # A timeout is not bad input, so it is retried; each try is cut at 3 s instead of waiting 60 s.
    assert local_run["states"]["hangs"] == ("failed", TRIES_ALLOWED)
    assert 3 <= local_run["durations"]["hangs"] < 30
    # No step process of this run outlives its task.
    assert step_processes(local_run["marker"]) == []


def test_partition_not_landed_exits_retryable_with_the_clear_message(tmp_path: Path, artifact_root: Path) -> None:
    models = tmp_path / "models"
    landing = model_variant(
        models,
        "landing_model",
        source={"kind": "uri", "uri": str(tmp_path / "landing" / "{{ ds }}.csv"), "format": "csv"},
    )
    argv = [sys.executable, "-m", "include.mlops", "snapshot", "--model", landing, "--models-dir", str(models)]
    argv += ["--out", str(tmp_path / "out"), "--interval-start", "2026-11-19", "--interval-end", "2026-11-20"]
    done = subprocess.run([*argv, "--wait-for-data", "0.2"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert f"{tmp_path / 'landing' / '2026-11-19.csv'} does not exist" in done.stderr
    assert "Land the file, or clear and rerun the task once it exists" in done.stderr


@pytest.fixture
def diabetes_snapshot(tmp_path: Path) -> Path:
    from include.mlops.config import find_model_config
    from include.mlops.data.snapshot import snapshot

    return Path(snapshot(find_model_config("diabetes"), DAY - dt.timedelta(days=1), DAY, tmp_path / "snap")["data_uri"])


@pytest.mark.slow
def test_training_that_diverges_under_fixed_seeds_is_bad_input(
    tmp_path: Path, artifact_root: Path, diabetes_snapshot: Path
) -> None:
    argv = [sys.executable, "-m", "include.mlops", "train", "--model", "diabetes", "--out", str(tmp_path / "train")]
    argv += ["--data", str(diabetes_snapshot), "--overrides", json.dumps({"epochs": 1, "learning_rate": 1e30})]
    done = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "the validation loss is not finite" in done.stderr


@pytest.mark.parametrize(("code", "error"), [(3, StepBadInputError), (30, StepFailedError), (1, StepFailedError)])
def test_one_rule_maps_exit_codes(code: int, error: type[Exception]) -> None:
    with pytest.raises(error) as raised:
        raise_for_exit_code(code, "step 'x' failed")
    assert type(raised.value) is error


def test_unknown_exit_code_is_retried() -> None:
    with pytest.raises(StepFailedError):
        raise_for_exit_code(None, "container vanished")


# --------------------------------------------------------------------------- kubernetes, offline


def failed_pod(exit_code: int) -> Any:
    from kubernetes.client import models as k8s

    terminated = k8s.V1ContainerStateTerminated(exit_code=exit_code, reason="Error")
    status = k8s.V1ContainerStatus(
        name="base",
        image="mlops-trainer:local",
        image_id="",
        ready=False,
        restart_count=0,
        state=k8s.V1ContainerState(terminated=terminated),
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="diabetes-validate-abc", namespace="mlops-steps", annotations={}),
        status=k8s.V1PodStatus(phase="Failed", container_statuses=[status]),
    )


class _PodGone(http.server.BaseHTTPRequestHandler):
    """An API server that has no pods: the operator's best-effort calls (label the pod) get a 404 at once."""

    def _not_found(self) -> None:
        body = b'{"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = do_DELETE = do_POST = _not_found

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    with stub_kubeconfig(_PodGone, tmp_path) as path:
        yield path


@pytest.mark.parametrize(("exit_code", "retried"), [(3, False), (30, True), (137, True)])
def test_kubernetes_pod_exit_code_decides_the_retry(exit_code: int, retried: bool, kubeconfig: Path) -> None:
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.container_operators import KubernetesStepOperator

    with DAG(dag_id="k8s_exit_codes", schedule=None):
        task = KubernetesStepOperator(
            task_id="validate",
            step="validate",
            model="diabetes",
            # Nothing to delete or patch on a cluster: the pod is kept and no API call is made.
            on_finish_action="keep_pod",
            in_cluster=False,
            config_file=str(kubeconfig),
            retries=2,
        )
    pod = failed_pod(exit_code)
    with pytest.raises(Exception) as raised:
        task.cleanup(pod=pod, remote_pod=pod)
    assert isinstance(raised.value, AirflowFailException) is not retried
    assert isinstance(raised.value, StepFailedError) is retried
    assert "step 'validate' of model 'diabetes' failed in pod diabetes-validate-abc" in str(raised.value)
