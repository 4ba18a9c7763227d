"""The kubernetes backend, offline: the pods the operators would submit, and the cluster manifests.

For every step of every model (plus a GPU variant of ``diabetes``), the DAG is
built with ``MLOPS_BACKEND=kubernetes`` and each step task builds its pod from
a fake task context, exactly as it would before submitting it.  The pod is
validated against the Kubernetes OpenAPI schema (``kubernetes-validate``) and
checked against the platform contract: namespace ``mlops-steps``, labels, the
step CLI's command and result file, CPU vs GPU image, pull secrets, GPU limits
and placement, the ``restricted`` security context, resources, the artifact
PVC, and no XCom sidecar.  ``kubectl kustomize`` renders every
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
from mlops_airflow import step_pods
from mlops_airflow.lifecycle import build_lifecycle_dag
from tools import pod_security

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
    "tune_plan": "tune-plan",
    "tune_trial": "tune-trial",
    "tune_select": "tune-select",
    "compress": "compress",
    "evaluate_optimized": "evaluate",
    "register": "register",
    "deploy": "deploy",
}
TRIAL = 1
CPU_IMAGE = "registry.example.com/mlops-trainer:1.0"
GPU_IMAGE = "registry.example.com/mlops-trainer:1.0-cuda"
PULL_SECRETS = "regcred, mirror-cred"
# diabetes_gpu gives its own placement; diabetes_gpu1 gives none, so it gets the defaults.
GPU_TOLERATIONS = [{"key": "gpu-pool", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
GPU_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
ENV_NODE_SELECTOR = {"nvidia.com/gpu.present": "true", "pool": "gpu"}
GPU_VARIANTS: dict[str, dict[str, Any]] = {
    "diabetes_gpu": {"gpus": 2, "node_selector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS},
    "diabetes_gpu1": {
        "gpus": 1,
        "runtime_class_name": "nvidia",
        "priority_class_name": "mlops-training",
        "schedule_timeout_seconds": 1800,
    },
}


@pytest.fixture(scope="module")
def gpu_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the GPU variants of diabetes (GPU_VARIANTS)."""
    folder = tmp_path_factory.mktemp("models")
    source = PROJECT_ROOT / "include" / "models"
    for name, variant in GPU_VARIANTS.items():
        raw = yaml.safe_load((source / "diabetes.yaml").read_text())
        raw.update(name=name, serving_name=name, **{k: v for k, v in variant.items() if k != "gpus"})
        raw["train"]["gpus"] = variant["gpus"]
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(source / "diabetes.py", folder / "diabetes.py")
    return folder


def model_cases(gpu_models_dir: Path) -> list[tuple[ModelConfig, str | None]]:
    cases: list[tuple[ModelConfig, str | None]] = [(c, None) for c in load_model_configs()]
    cases += [(load_model_config(gpu_models_dir / f"{name}.yaml"), str(gpu_models_dir)) for name in GPU_VARIANTS]
    return cases


def fake_context(dag: Any, task: Any, map_index: int = -1) -> dict[str, Any]:
    """What a task instance hands ``execute``: enough for the argument resolvers and pod labels."""
    pulls = {
        "snapshot": {"data_uri": f"{PODS_ROOT}/runs/x/snapshot/data.parquet", "sha256": "0" * 64},
        "train": {"model_uri": f"{PODS_ROOT}/runs/x/train/model"},
        "tune_plan": {
            "plan_uri": f"{PODS_ROOT}/runs/x/tune_plan/plan.json",
            "trials": [{"trial": i, "hparams": {"epochs": 3, "learning_rate": 0.001 * (i + 1)}} for i in range(3)],
            "min_successful": 2,
        },
        "tune_select": {
            "model_uri": f"{PODS_ROOT}/runs/x/tune_trial/1/model",
            "weights_uri": f"{PODS_ROOT}/runs/x/tune_trial/1/weights.npz",
            "hparams": {"epochs": 3, "learning_rate": 0.002},
            "trials_uri": f"{PODS_ROOT}/runs/x/tune_select/trials.json",
            "best": 1,
        },
        "compress": {"model_uri": f"{PODS_ROOT}/runs/x/compress/model", "tflite_uri": None},
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
        xcom_pull=xcom_pull, dag_id=dag.dag_id, task_id=task.task_id, map_index=map_index, try_number=1, run_id=RUN_ID
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
        mp.setenv("MLOPS_TRAINER_IMAGE", CPU_IMAGE)
        mp.setenv("MLOPS_TRAINER_GPU_IMAGE", GPU_IMAGE)
        mp.setenv("MLOPS_K8S_IMAGE_PULL_SECRETS", PULL_SECRETS)
        mp.setenv("MLOPS_K8S_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true, pool=gpu")
        for name in ("MLOPS_K8S_NAMESPACE", "MLOPS_K8S_ARTIFACT_ROOT", "MLOPS_K8S_ARTIFACT_PVC"):
            mp.delenv(name, raising=False)
        built = []
        for config, models_dir in model_cases(gpu_models_dir):
            dag = build_lifecycle_dag(config, models_dir=models_dir)
            # The optimize branch reads the first gate's record from the worker's artifact root.
            atomic_write_json(
                run_dir(dag.dag_id, RUN_ID, "gate", root=worker_root) / "decision.json",
                {"decision": {"passed": False, "checks": []}},
            )
            for task_id, step in STEP_TASKS.items():
                task, map_index = dag.get_task(task_id), -1
                if task_id == "tune_trial":
                    # The mapped trials: what the worker builds for map index 1.
                    task, map_index = task.unmap({"step_arguments": {"trial": TRIAL}}), TRIAL
                pod = task.build_pod_request_obj(fake_context(dag, task, map_index), dry_run=True)
                built.append({"config": config, "task": task, "step": step, "pod": pod, "manifest": as_manifest(pod)})
        yield built


def base_container(manifest: dict[str, Any]) -> dict[str, Any]:
    (base,) = [c for c in manifest["spec"]["containers"] if c["name"] == "base"]
    return base


def is_gpu_step(built: dict[str, Any]) -> bool:
    return bool(built["config"].train.gpus) and built["step"] in ("train", "tune-trial")


def test_every_step_of_every_model_has_a_pod(pods: list[dict[str, Any]]) -> None:
    assert len(pods) == (2 + len(GPU_VARIANTS)) * len(STEP_TASKS)
    assert {p["task"].__class__.__name__ for p in pods} == {"KubernetesStepOperator"}


def test_pods_validate_against_the_kubernetes_schema(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        validate_manifest(built["manifest"])


def test_pod_command_is_the_step_cli_writing_its_result_to_the_share(pods: list[dict[str, Any]]) -> None:
    parser = build_parser()
    for built in pods:
        config, task, step = built["config"], built["task"], built["step"]
        container = base_container(built["manifest"])
        assert container["command"] == ["python"]
        args = container["args"]
        assert args[:3] == ["-m", "include.mlops", step]
        parsed = parser.parse_args(args[2:])
        assert parsed.step == step and parsed.model == config.name
        run_folder = f"{PODS_ROOT}/runs/{config.dag_id}/{RUN_ID.replace(':', '_').replace('+', '_')}"
        if step == "tune-trial":
            # Each mapped trial in its own folder, with its own result file; the plan's trial TRIAL.
            assert parsed.out == f"{run_folder}/{task.task_id}/{TRIAL}"
            assert parsed.result_file == f"{run_folder}/.{task.task_id}.result-{TRIAL}-try1.json"
            assert parsed.trial == TRIAL and parsed.hparams == {"epochs": 3, "learning_rate": 0.002}
        else:
            assert parsed.out == f"{run_folder}/{task.task_id}"
            # On the share, in the run folder, beside the --out folder that the step swaps in as a whole.
            assert parsed.result_file == f"{run_folder}/.{task.task_id}.result-try1.json"
        if step in ("validate", "train", "evaluate", "tune-trial", "compress"):
            assert parsed.data == f"{PODS_ROOT}/runs/x/snapshot/data.parquet"
        if step in ("train", "tune-plan"):
            assert parsed.overrides == {"epochs": 3}
        if step == "tune-select":
            assert parsed.trials_dir == f"{PODS_ROOT}/runs/x/tune_trial"
        if step == "compress":
            assert parsed.candidate == f"{PODS_ROOT}/runs/x/tune_trial/1/model" and parsed.failed == ["size_mb"]
        if step == "deploy":
            assert parsed.version == 3 and parsed.label == "stable"
        if step == "register":
            assert parsed.lineage["run_id"] == RUN_ID


def test_gpu_steps_run_in_the_cuda_image_and_the_rest_in_the_cpu_image(pods: list[dict[str, Any]]) -> None:
    images = {(built["config"].name, built["step"]): base_container(built["manifest"])["image"] for built in pods}
    assert {key for key, image in images.items() if image == GPU_IMAGE} == {
        (name, step) for name in GPU_VARIANTS for step in ("train", "tune-trial")
    }
    assert {image for image in images.values() if image != GPU_IMAGE} == {CPU_IMAGE}


def test_pods_run_in_the_steps_namespace_with_the_contract_labels(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        metadata = built["manifest"]["metadata"]
        assert built["task"].namespace == metadata["namespace"] == "mlops-steps"
        assert {
            "app.kubernetes.io/name": "mlops-step",
            "app.kubernetes.io/part-of": "mlops",
            "mlops/step": built["step"],
            "mlops/model": built["config"].name,
        }.items() <= metadata["labels"].items()


def test_image_pull_secrets_come_from_the_setting(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        assert built["manifest"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}]


def test_gpu_limits_and_placement_only_for_gpu_steps(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        config, step, manifest = built["config"], built["step"], built["manifest"]
        limits = base_container(manifest)["resources"]["limits"]
        spec = manifest["spec"]
        mounts = {m["mountPath"]: m["name"] for m in base_container(manifest)["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        if not is_gpu_step(built):
            assert "nvidia.com/gpu" not in limits, (config.name, step)
            for field in ("nodeSelector", "tolerations", "runtimeClassName"):
                assert not spec.get(field), (config.name, step, field)
            assert "/dev/shm" not in mounts, (config.name, step)
            continue
        gpus = config.train.gpus
        assert limits["nvidia.com/gpu"] == str(gpus), (config.name, step)
        assert manifest["metadata"]["annotations"]["mlops/gpus"] == str(gpus)
        assert {"name": "MLOPS_GPUS", "value": str(gpus)} in base_container(manifest)["env"]
        if config.name == "diabetes_gpu":
            # The model config's own placement wins over the defaults and the setting.
            assert spec["tolerations"] == GPU_TOLERATIONS
            assert spec["nodeSelector"] == GPU_NODE_SELECTOR
            assert "runtimeClassName" not in spec
            # More than one GPU: NCCL gets a memory-backed /dev/shm.
            assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
        else:
            assert spec["tolerations"] == DEFAULT_TOLERATIONS
            assert spec["nodeSelector"] == ENV_NODE_SELECTOR
            assert spec["runtimeClassName"] == "nvidia"
            assert "/dev/shm" not in mounts


def test_priority_class_and_schedule_timeout_come_from_the_model_config(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        spec, task = built["manifest"]["spec"], built["task"]
        if built["config"].name == "diabetes_gpu1":
            assert spec["priorityClassName"] == "mlops-training"
            assert task.schedule_timeout_seconds == 1800
        else:
            assert "priorityClassName" not in spec
            assert task.schedule_timeout_seconds == 600


def test_security_context_is_the_restricted_profile_as_uid_gid_1000(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        spec = built["manifest"]["spec"]
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert spec["serviceAccountName"] == "mlops-step"
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]


def test_every_step_pod_passes_the_restricted_pod_security_standard(pods: list[dict[str, Any]]) -> None:
    # mlops-steps enforces `restricted`: a pod that fails it is refused by the API server, field by field.
    for built in pods:
        assert pod_security.restricted_violations(built["manifest"]) == [], (built["config"].name, built["step"])


def test_resources_and_volumes(pods: list[dict[str, Any]]) -> None:
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
        assert {"name": "MLOPS_ARTIFACT_ROOT", "value": PODS_ROOT} in container["env"]
        assert spec["restartPolicy"] == "Never"


def test_no_xcom_sidecar_so_no_pod_needs_exec(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        spec = built["manifest"]["spec"]
        # The sidecar's result can only be read with pods/exec, which the worker is not granted.
        assert [c["name"] for c in spec["containers"]] == ["base"]
        assert not spec.get("initContainers")
        assert "/airflow/xcom" not in {m["mountPath"] for m in base_container(built["manifest"])["volumeMounts"]}
        assert built["task"].do_xcom_push is False


def test_operator_lifecycle_settings(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        task = built["task"]
        assert task.deferrable is True
        assert task.on_finish_action.value == "delete_succeeded_pod"
        assert 0 < task.startup_timeout_seconds <= 3600


def test_pod_template_holds_what_the_operator_sets() -> None:
    """The template is what admission tooling and readers see: it must match the pods exactly."""
    template = yaml.safe_load((K8S_DIR / "pod_template.yaml").read_text())
    validate_manifest(template)
    assert template["spec"]["securityContext"] == as_manifest(step_pods.pod_security_context())
    (container,) = template["spec"]["containers"]
    assert container["securityContext"] == as_manifest(step_pods.container_security_context())
    assert template["metadata"]["labels"].items() <= step_pods.pod_labels("train", "m").items()
    assert template["spec"]["serviceAccountName"] == step_pods.DEFAULT_SERVICE_ACCOUNT


def build_one_pod(monkeypatch: pytest.MonkeyPatch, gpu_models_dir: Path, name: str, step: str = "train") -> Any:
    monkeypatch.setenv("MLOPS_BACKEND", "kubernetes")
    config = load_model_config(gpu_models_dir / f"{name}.yaml")
    dag = build_lifecycle_dag(config, models_dir=str(gpu_models_dir))
    return dag.get_task(step)


def test_no_pull_secrets_and_the_cpu_image_fallback_when_unset(
    monkeypatch: pytest.MonkeyPatch, gpu_models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("MLOPS_K8S_IMAGE_PULL_SECRETS", "MLOPS_TRAINER_GPU_IMAGE", "MLOPS_K8S_GPU_NODE_SELECTOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLOPS_TRAINER_IMAGE", CPU_IMAGE)
    with caplog.at_level("WARNING", logger="mlops_airflow.container_steps"):
        task = build_one_pod(monkeypatch, gpu_models_dir, "diabetes_gpu1")
    assert task.image == CPU_IMAGE
    assert "MLOPS_TRAINER_GPU_IMAGE is not set" in caplog.text and "'train' of model 'diabetes_gpu1'" in caplog.text
    assert task.image_pull_secrets == []
    assert not task.node_selector


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("MLOPS_K8S_IMAGE_PULL_SECRETS", "regcred,Reg_Cred", "'Reg_Cred' is not a Kubernetes object name"),
        ("MLOPS_K8S_GPU_NODE_SELECTOR", "pool", "'pool' is not key=value"),
        ("MLOPS_K8S_GPU_NODE_SELECTOR", "pool=gpu nodes", "is not a Kubernetes label value"),
    ],
)
def test_bad_settings_fail_the_dag_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, gpu_models_dir: Path, setting: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(setting, value)
    with pytest.raises(step_pods.StepPodSettingError, match=rf"^{setting}: .*{problem}"):
        build_one_pod(monkeypatch, gpu_models_dir, "diabetes_gpu1")


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
    # The step pods' Role (the scheduler's own, in mlops, is checked in test_cluster_install.py).
    (role,) = [o for o in render("base") if o["kind"] == "Role" and o["metadata"]["namespace"] == "mlops-steps"]
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert ("pods", "create") in granted and ("pods", "delete") in granted
    assert ("pods/log", "get") in granted
    assert ("events", "list") in granted
    # No XCom sidecar, so no shell into pods: the result comes back through the artifact share.
    assert not {resource for resource, _ in granted} & {"pods/exec", "pods/attach"}
    assert not any("*" in pair for pair in granted)
    assert {resource for resource, _ in granted} == {"pods", "pods/log", "events"}
    assert not any(verb in ("create", "delete", "patch") for resource, verb in granted if resource == "events")


def test_helm_values_match_the_manifests() -> None:
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


# --------------------------------------------------------------------------- object-storage mode

BUCKET_ROOT = "s3://mlops-bucket/team-a"


@pytest.fixture
def object_store_pods(monkeypatch: pytest.MonkeyPatch, gpu_models_dir: Path) -> list[dict[str, Any]]:
    """Every step pod of a GPU model (2 GPUs: /dev/shm too) with the worker's artifact root in a bucket.

    Built without a task context: the volumes, env and credentials are decided when the operator is made.
    """
    monkeypatch.setenv("MLOPS_BACKEND", "kubernetes")
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", BUCKET_ROOT)
    monkeypatch.setenv("MLOPS_TRAINER_IMAGE", CPU_IMAGE)
    monkeypatch.setenv("MLOPS_TRAINER_GPU_IMAGE", GPU_IMAGE)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://minio.storage.svc:9000")
    for name in ("MLOPS_K8S_ARTIFACT_ROOT", "MLOPS_K8S_ARTIFACT_PVC", "MLOPS_K8S_OBJECT_STORE_SECRET"):
        monkeypatch.delenv(name, raising=False)
    dag = build_lifecycle_dag(load_model_config(gpu_models_dir / "diabetes_gpu.yaml"), models_dir=str(gpu_models_dir))
    built = []
    for task_id in STEP_TASKS:
        task = dag.get_task(task_id)
        if task_id == "tune_trial":
            task = task.unmap({"step_arguments": {"trial": TRIAL}})
        built.append({"task": task, "manifest": as_manifest(task.build_pod_request_obj(None, dry_run=True))})
    return built


def test_object_store_pods_get_the_bucket_and_a_scratch_folder_instead_of_the_share(
    object_store_pods: list[dict[str, Any]],
) -> None:
    for built in object_store_pods:
        manifest, task_id = built["manifest"], built["task"].task_id
        validate_manifest(manifest)
        assert pod_security.restricted_violations(manifest) == [], task_id
        spec, container = manifest["spec"], base_container(manifest)
        # No share at all: nothing names the PVC, nothing is mounted at the share's path.
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], task_id
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert PODS_ROOT not in mounts, task_id
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/scratch"]]["emptyDir"]["sizeLimit"], task_id
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLOPS_ARTIFACT_ROOT"] == BUCKET_ROOT, task_id
        assert env["MLOPS_STAGING_DIR"] == env["TMPDIR"] == "/scratch", task_id
        assert env["AWS_REGION"] == "eu-west-1" and env["AWS_ENDPOINT_URL_S3"] == "https://minio.storage.svc:9000"
        # Credentials: the pod's ServiceAccount (cloud identity), or else the optional Secret.
        assert spec["serviceAccountName"] == "mlops-step"
        assert container["envFrom"] == [{"secretRef": {"name": "mlops-object-store", "optional": True}}], task_id
        if task_id == "train":
            assert "/dev/shm" in mounts, "the multi-GPU /dev/shm stays in object-storage mode"


def test_object_store_settings_not_passed_when_the_worker_has_none(
    monkeypatch: pytest.MonkeyPatch, gpu_models_dir: Path
) -> None:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", "gs://mlops-bucket")
    monkeypatch.setenv("MLOPS_K8S_OBJECT_STORE_SECRET", "gcs-keys")
    for name in ("AWS_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    manifest = as_manifest(
        build_one_pod(monkeypatch, gpu_models_dir, "diabetes_gpu1").build_pod_request_obj(None, dry_run=True)
    )
    validate_manifest(manifest)
    container = base_container(manifest)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLOPS_ARTIFACT_ROOT"] == "gs://mlops-bucket"
    assert not {"AWS_REGION", "AWS_ENDPOINT_URL_S3"} & env.keys()
    assert container["envFrom"] == [{"secretRef": {"name": "gcs-keys", "optional": True}}]


@pytest.mark.parametrize(
    ("root", "bucket"),
    [
        ("s3://b/p", "s3://b/p"),
        ("gs://b", "gs://b"),
        ("/mnt/mlops-artifacts", None),
        ("file:///mnt/mlops-artifacts", None),
        ("", None),
    ],
)
def test_the_one_rule_for_an_object_store_root(monkeypatch: pytest.MonkeyPatch, root: str, bucket: str | None) -> None:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", root)
    assert step_pods.object_store_root() == bucket
    volumes, _ = step_pods.step_volumes(0)
    assert [v.name for v in volumes] == (["scratch"] if bucket else ["artifacts"])
    assert bool(step_pods.step_env_from()) == bool(bucket)


def test_share_mode_pods_load_no_object_store_secret(pods: list[dict[str, Any]]) -> None:
    for built in pods:
        container = base_container(built["manifest"])
        assert not container.get("envFrom") and "MLOPS_STAGING_DIR" not in {e["name"] for e in container["env"]}


def test_a_bad_object_store_secret_name_fails_the_dag(monkeypatch: pytest.MonkeyPatch, gpu_models_dir: Path) -> None:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", BUCKET_ROOT)
    monkeypatch.setenv("MLOPS_K8S_OBJECT_STORE_SECRET", "Object_Store")
    with pytest.raises(step_pods.StepPodSettingError, match=r"^MLOPS_K8S_OBJECT_STORE_SECRET: "):
        build_one_pod(monkeypatch, gpu_models_dir, "diabetes_gpu1")
