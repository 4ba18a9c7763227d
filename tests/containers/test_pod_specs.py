"""The kubernetes backend, offline: the pods the operators would submit, and the cluster manifests.

For every step of every model (plus a GPU variant of ``diabetes``), the DAG is
built with ``MLOPS_BACKEND=kubernetes`` and each step task builds its pod from
a fake task context, exactly as it would before submitting it.  The pod is
validated against the Kubernetes OpenAPI schema (``kubernetes-validate``) and
checked for what the issue asks: the step CLI's command, GPU limits, node
selector and tolerations, the locked-down security context, resources, the
artifact PVC and the XCom sidecar.  ``kubectl kustomize`` renders every
overlay of ``include/k8s/`` and each rendered object validates too.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pendulum
import pytest
import yaml
from kubernetes.client import ApiClient
from tooling import require_executable

from include.mlops.artifacts import atomic_write_json, run_dir
from include.mlops.cli import build_parser
from include.mlops.config import ModelConfig, load_model_config, load_model_configs
from mlops_airflow.lifecycle import build_lifecycle_dag

PROJECT_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = PROJECT_ROOT / "include" / "k8s"
K8S_VERSION = "1.33"
RUN_ID = "manual__2026-11-20T00:00:00+00:00"
PODS_ROOT = "/mnt/mlops-artifacts"
STEP_TASKS = {
    "snapshot": "snapshot",
    "validate": "validate",
    "train": "train",
    "evaluate": "evaluate",
    "optimize": "optimize",
    "evaluate_optimized": "evaluate",
    "register": "register",
    "deploy": "deploy",
}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
GPU_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4"}


@pytest.fixture(scope="module")
def gpu_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with ``diabetes_gpu``: diabetes asking for 2 GPUs on tainted GPU nodes."""
    folder = tmp_path_factory.mktemp("models")
    source = PROJECT_ROOT / "include" / "models"
    raw = yaml.safe_load((source / "diabetes.yaml").read_text())
    raw.update(name="diabetes_gpu", node_selector=GPU_NODE_SELECTOR, tolerations=GPU_TOLERATIONS)
    raw["train"]["gpus"] = 2
    (folder / "diabetes_gpu.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(source / "diabetes.py", folder / "diabetes.py")
    return folder


def model_cases(gpu_models_dir: Path) -> list[tuple[ModelConfig, str | None]]:
    cases: list[tuple[ModelConfig, str | None]] = [(c, None) for c in load_model_configs()]
    cases.append((load_model_config(gpu_models_dir / "diabetes_gpu.yaml"), str(gpu_models_dir)))
    return cases


def fake_context(dag: Any, task: Any) -> dict[str, Any]:
    """What a task instance hands ``execute``: enough for the argument resolvers and pod labels."""
    pulls = {
        "snapshot": {"data_uri": f"{PODS_ROOT}/runs/x/snapshot/data.parquet", "sha256": "0" * 64},
        "train": {"model_uri": f"{PODS_ROOT}/runs/x/train/model"},
        "optimize": {"model_uri": f"{PODS_ROOT}/runs/x/optimize/model", "tflite_uri": None},
        "register": {"version": 3},
    }
    candidate = {
        "model_uri": f"{PODS_ROOT}/runs/x/train/model",
        "tflite_uri": None,
        "evaluation_uri": f"{PODS_ROOT}/runs/x/evaluate",
        "decision_uri": f"{PODS_ROOT}/runs/x/gate/decision.json",
    }

    def xcom_pull(task_ids: str | None = None, key: str | None = None) -> Any:
        if key == "candidate":
            return candidate if task_ids == "gate" else None
        if key == "decision":
            return {"route": "optimize", "passed": False, "failed_budgets": ["size_mb"]}
        return pulls.get(task_ids)

    ti = SimpleNamespace(
        xcom_pull=xcom_pull, dag_id=dag.dag_id, task_id=task.task_id, map_index=-1, try_number=1, run_id=RUN_ID
    )
    dag_run = SimpleNamespace(
        run_id=RUN_ID, dag_id=dag.dag_id, run_type="manual", run_after=pendulum.now("UTC"), conf={"epochs": 3}
    )
    return {
        "dag": dag,
        "task": task,
        "ti": ti,
        "task_instance": ti,
        "dag_run": dag_run,
        "run_id": RUN_ID,
        "params": {"epochs": 3, "learning_rate": None, "batch_size": None},
        "data_interval_start": pendulum.datetime(2026, 11, 19, tz="UTC"),
        "data_interval_end": pendulum.datetime(2026, 11, 20, tz="UTC"),
    }


def as_manifest(obj: Any) -> dict[str, Any]:
    return ApiClient().sanitize_for_serialization(obj)


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise when ``manifest`` is not a valid object of Kubernetes ``K8S_VERSION`` (unknown fields included)."""
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def pods(gpu_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """Every step pod of every model, built as the operator would before submitting it."""
    worker_root = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_BACKEND", "kubernetes")
        mp.setenv("MLOPS_ARTIFACT_ROOT", str(worker_root))
        mp.setenv("MLOPS_TRAINER_IMAGE", "registry.example.com/mlops-trainer:1.0-gpu")
        built = []
        for config, models_dir in model_cases(gpu_models_dir):
            dag = build_lifecycle_dag(config, models_dir=models_dir)
            # optimize reads the first gate's record from the worker's artifact root.
            atomic_write_json(
                run_dir(dag.dag_id, RUN_ID, "gate", root=worker_root) / "decision.json",
                {"decision": {"passed": False, "checks": []}},
            )
            for task_id, step in STEP_TASKS.items():
                task = dag.get_task(task_id)
                pod = task.build_pod_request_obj(fake_context(dag, task), dry_run=True)
                built.append({"config": config, "task": task, "step": step, "pod": pod, "manifest": as_manifest(pod)})
        yield built


def base_container(manifest: dict[str, Any]) -> dict[str, Any]:
    (base,) = [c for c in manifest["spec"]["containers"] if c["name"] == "base"]
    return base


def test_every_step_of_every_model_has_a_pod(pods: list[dict[str, Any]]) -> None:
    assert len(pods) == 3 * len(STEP_TASKS)
    assert {p["task"].__class__.__name__ for p in pods} == {"KubernetesStepOperator"}


def test_pods_validate_against_the_kubernetes_schema(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        validate_manifest(built["manifest"])


def test_pod_command_is_the_step_cli(pods: list[dict[str, Any]]) -> None:
    parser = build_parser()
    for built in pods:
        config, task, step = built["config"], built["task"], built["step"]
        container = base_container(built["manifest"])
        assert container["image"] == "registry.example.com/mlops-trainer:1.0-gpu"
        assert container["command"] == ["python"]
        args = container["args"]
        assert args[:3] == ["-m", "include.mlops", step]
        parsed = parser.parse_args(args[2:])
        assert parsed.step == step and parsed.model == config.name
        assert (
            parsed.out
            == f"{PODS_ROOT}/runs/{config.dag_id}/{RUN_ID.replace(':', '_').replace('+', '_')}/{task.task_id}"
        )
        assert parsed.result_file == "/airflow/xcom/return.json"
        if step in ("validate", "train", "evaluate", "optimize"):
            assert parsed.data == f"{PODS_ROOT}/runs/x/snapshot/data.parquet"
        if step in ("train", "optimize"):
            assert parsed.overrides == {"epochs": 3}
        if step == "deploy":
            assert parsed.version == 3 and parsed.label == "stable"
        if step == "register":
            assert parsed.lineage["run_id"] == RUN_ID


def test_gpu_limits_node_selector_and_tolerations_only_where_asked(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        config, step, manifest = built["config"], built["step"], built["manifest"]
        limits = base_container(manifest)["resources"]["limits"]
        spec = manifest["spec"]
        if config.train.gpus and step in ("train", "optimize"):
            assert limits["nvidia.com/gpu"] == "2", (config.name, step)
            assert spec["nodeSelector"] == GPU_NODE_SELECTOR
            assert spec["tolerations"] == GPU_TOLERATIONS
            assert manifest["metadata"]["annotations"]["mlops/gpus"] == "2"
            assert {"name": "MLOPS_GPUS", "value": "2"} in base_container(manifest)["env"]
        else:
            assert "nvidia.com/gpu" not in limits, (config.name, step)
            assert not spec.get("nodeSelector") and not spec.get("tolerations"), (config.name, step)


def test_security_context_is_locked_down(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        spec = built["manifest"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["serviceAccountName"] == "mlops-step"
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]


def test_resources_volumes_and_xcom_sidecar(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        spec = built["manifest"]["spec"]
        container = base_container(built["manifest"])
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        # The artifact root is the PVC at a fixed path, never the worker's own folder.
        assert volumes[mounts[PODS_ROOT]]["persistentVolumeClaim"]["claimName"] == "mlops-artifacts"
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert "/airflow/xcom" in mounts
        assert {"name": "MLOPS_ARTIFACT_ROOT", "value": PODS_ROOT} in container["env"]
        assert "airflow-xcom-sidecar" in {c["name"] for c in spec["containers"]}
        assert spec["restartPolicy"] == "Never"


def test_operator_lifecycle_settings(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        task = built["task"]
        assert task.deferrable is True
        assert task.do_xcom_push is True
        assert task.on_finish_action.value == "delete_succeeded_pod"
        assert 0 < task.schedule_timeout_seconds <= 3600
        assert 0 < task.startup_timeout_seconds <= 3600
        assert task.namespace == "mlops"


# --------------------------------------------------------------------------- manifests

OVERLAYS = ["base", "overlays/kind", "overlays/production"]


def render(path: str) -> list[dict[str, Any]]:
    kubectl = require_executable("kubectl", "the kustomize tests render include/k8s with `kubectl kustomize`")
    out = subprocess.run([kubectl, "kustomize", str(K8S_DIR / path)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_valid_objects(overlay: str) -> None:
    # The full contract checks (Pod Security, NetworkPolicies, storage, serving) are in test_manifests.py.
    objects = render(overlay)
    kinds = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    assert {
        ("Namespace", None, "mlops"),
        ("Namespace", None, "mlops-steps"),
        ("ServiceAccount", "mlops-steps", "mlops-step"),
        ("ServiceAccount", "mlops", "mlops-airflow-worker"),
        ("Role", "mlops-steps", "mlops-step-launcher"),
        ("RoleBinding", "mlops-steps", "mlops-step-launcher"),
        ("PersistentVolumeClaim", "mlops", "mlops-artifacts"),
        ("PersistentVolumeClaim", "mlops-steps", "mlops-artifacts"),
    } <= kinds
    for obj in objects:
        validate_manifest(obj)


def test_rbac_grants_only_what_the_pod_operator_needs() -> None:
    (role,) = [o for o in render("base") if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "mlops-steps"
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert ("pods", "create") in granted and ("pods", "delete") in granted
    assert ("pods/log", "get") in granted
    assert ("events", "list") in granted
    # No XCom sidecar, so no shell into pods: the result comes back through the artifact share.
    assert not {resource for resource, _ in granted} & {"pods/exec", "pods/attach"}
    assert not any("*" in pair for pair in granted)
    assert {resource for resource, _ in granted} == {"pods", "pods/log", "events"}
    assert not any(verb in ("create", "delete", "patch") for resource, verb in granted if resource == "events")


def test_pod_template_validates_and_helm_values_match_the_manifests() -> None:
    template = yaml.safe_load((K8S_DIR / "pod_template.yaml").read_text())
    validate_manifest(template)
    values = yaml.safe_load((K8S_DIR / "helm" / "values.yaml").read_text())
    assert values["executor"] == "KubernetesExecutor"
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["MLOPS_BACKEND"] == "kubernetes"
    assert env["MLOPS_ARTIFACT_ROOT"] == env["MLOPS_K8S_ARTIFACT_ROOT"] == PODS_ROOT
    assert values["workers"]["serviceAccount"]["name"] == "mlops-airflow-worker"
    assert values["triggerer"]["serviceAccount"]["name"] == "mlops-airflow-worker"
    (mount,) = values["workers"]["extraVolumeMounts"]
    (volume,) = values["workers"]["extraVolumes"]
    assert mount["mountPath"] == PODS_ROOT and volume["persistentVolumeClaim"]["claimName"] == "mlops-artifacts"


def test_every_pod_has_the_steps_runtime_cap_as_active_deadline(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        cap = built["config"].step_timeout(built["step"])
        # The same cap twice: Airflow's execution_timeout, and the cluster's own deadline for deferred pods.
        assert built["task"].execution_timeout == cap
        assert built["manifest"]["spec"]["activeDeadlineSeconds"] == int(cap.total_seconds())
    assert {built["manifest"]["spec"]["activeDeadlineSeconds"] for built in pods if built["step"] == "train"} == {7200}
