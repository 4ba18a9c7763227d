"""What a lifecycle step's pod looks like on the ``kubernetes`` backend, as plain Kubernetes objects.

:class:`~mlops_airflow.container_operators.KubernetesStepOperator` assembles
its pod from these pieces; ``include/k8s/pod_template.yaml`` holds the same
security settings and labels for readers and admission tooling (a test keeps
the two equal).  The rules are the platform contract's:

- pods run in ``$MLOPS_K8S_NAMESPACE`` (``mlops-steps``, Pod Security
  ``restricted``) as uid/gid 1000, the artifact share's group;
- every pod carries the labels the NetworkPolicies select on;
- the step leaves its JSON result on the artifact share (no XCom sidecar,
  whose reading needs ``pods/exec``), where the worker reads it;
- when the worker's ``$MLOPS_ARTIFACT_ROOT`` is an object store
  (``s3://bucket/prefix``, ``gs://...``; :func:`object_store_root`), pods get
  that same root instead of the share, a local ``/scratch`` (``emptyDir``) as
  the step CLI's staging folder, credentials from their ServiceAccount
  (IRSA, Workload Identity) or else from the optional Secret
  ``$MLOPS_K8S_OBJECT_STORE_SECRET``, and the worker's ``AWS_REGION`` and
  ``AWS_ENDPOINT_URL_S3``;
- each step's declaration (:mod:`include.mlops.steps`) says whether it gets
  GPUs (``gpus``) and the larger requests (``heavy``);
- GPU steps get ``nvidia.com/gpu`` limits, a toleration for the GPU taint
  unless the model config gives its own, a node selector from the model config
  or ``$MLOPS_K8S_GPU_NODE_SELECTOR``, the model's RuntimeClass, and a memory
  ``/dev/shm`` when they use more than one GPU (NCCL exchanges through it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException
from kubernetes.client import models as k8s
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from include.mlops import artifact_store
from include.mlops.config import ModelConfig, Toleration
from include.mlops.names import k8s_label_problem, k8s_object_name_problem
from include.mlops.steps import get_step

NAMESPACE_ENV = "MLOPS_K8S_NAMESPACE"
ARTIFACT_ROOT_ENV = "MLOPS_K8S_ARTIFACT_ROOT"
PVC_ENV = "MLOPS_K8S_ARTIFACT_PVC"
SERVICE_ACCOUNT_ENV = "MLOPS_K8S_SERVICE_ACCOUNT"
PULL_SECRETS_ENV = "MLOPS_K8S_IMAGE_PULL_SECRETS"
GPU_NODE_SELECTOR_ENV = "MLOPS_K8S_GPU_NODE_SELECTOR"
OBJECT_STORE_SECRET_ENV = "MLOPS_K8S_OBJECT_STORE_SECRET"
WORKER_ARTIFACT_ROOT_ENV = "MLOPS_ARTIFACT_ROOT"
STAGING_DIR_ENV = "MLOPS_STAGING_DIR"
DEFAULT_NAMESPACE = "mlops-steps"
DEFAULT_ARTIFACT_ROOT = "/mnt/mlops-artifacts"
DEFAULT_PVC = "mlops-artifacts"
DEFAULT_SERVICE_ACCOUNT = "mlops-step"
# The credentials' fallback where the ServiceAccount has no cloud identity (IRSA, Workload Identity): a Secret
# with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, loaded only if it exists.
DEFAULT_OBJECT_STORE_SECRET = "mlops-object-store"
# Passed from the worker to the pods as they are: the bucket's region, and the endpoint of an S3-compatible
# store (MinIO, Ceph...).  Unset on the worker: not set in the pod either.
OBJECT_STORE_PASSTHROUGH_ENV = ("AWS_REGION", "AWS_ENDPOINT_URL_S3")
SCRATCH_VOLUME = "scratch"
# The step CLI's local mirror of what it reads and writes in the bucket (pods have a read-only root
# filesystem, so TMPDIR points here too).  A training step stages its data and model, hence the size.
SCRATCH_DIR = "/scratch"
SCRATCH_SIZE_LIMIT = "20Gi"
ARTIFACT_VOLUME = "artifacts"
SHM_VOLUME = "dshm"
# A memory-backed /dev/shm counts against the container's memory limit; NCCL needs well under this.
SHM_SIZE_LIMIT = "2Gi"
# The artifact share's group: step pods run as 1000:1000 and new files and folders stay group-writable.
STEP_UID = STEP_GID = 1000
# Requests and limits per step: a step declared heavy (training, compressing, evaluating) gets more than a
# bookkeeping one.
STEP_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "light": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
    "heavy": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
}
# On a shared filesystem (NFS) the worker may see a file the pod wrote only after its attribute cache
# expires; a step's result file is waited for this long before it counts as missing.
RESULT_FILE_WAIT_S = 30.0
# Used when a GPU step's model config names no tolerations: GPU node pools carry this taint (GKE, AKS,
# the NVIDIA GPU operator), so that only pods asking for GPUs land there.
DEFAULT_GPU_TOLERATION = Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


class StepPodSettingError(ValueError):
    """An ``MLOPS_K8S_*`` setting cannot be turned into a valid pod (shown as the DAG's import error)."""


def wants_gpus(step: str, config: ModelConfig | None) -> int:
    """GPUs a step asks for: ``train.gpus`` for the steps declared with ``gpus`` (they train), none for the others."""
    if config is None or not get_step(step).gpus:
        return 0
    return int(config.train.gpus)


def namespace() -> str:
    return os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


def service_account() -> str:
    return os.environ.get(SERVICE_ACCOUNT_ENV) or DEFAULT_SERVICE_ACCOUNT


def artifact_root_in_pods() -> Path:
    """Where the artifact share is mounted, in step pods and in the Airflow workers alike."""
    return Path(os.environ.get(ARTIFACT_ROOT_ENV) or DEFAULT_ARTIFACT_ROOT)


def object_store_root() -> str | None:
    """The worker's ``$MLOPS_ARTIFACT_ROOT`` when it is an object store (``s3://...``, ``gs://...``), else None.

    A ``file://`` URI or a path is the share mode (:func:`include.mlops.artifact_store.is_object_store_uri`).
    """
    root = os.environ.get(WORKER_ARTIFACT_ROOT_ENV, "").strip()
    return root if artifact_store.is_object_store_uri(root) else None


def object_store_secret() -> str:
    """``$MLOPS_K8S_OBJECT_STORE_SECRET``: the optional Secret with the store's keys, for pods without a cloud identity."""
    name = os.environ.get(OBJECT_STORE_SECRET_ENV) or DEFAULT_OBJECT_STORE_SECRET
    problem = k8s_object_name_problem(name)
    if problem is not None:
        raise StepPodSettingError(
            f"{OBJECT_STORE_SECRET_ENV}: {problem}. Give the name of a Secret in the steps' namespace."
        )
    return name


def pod_labels(step: str, model: str) -> dict[str, str]:
    """The labels of every step pod (the NetworkPolicies select on ``mlops/step``)."""
    return {
        "app.kubernetes.io/name": "mlops-step",
        "app.kubernetes.io/part-of": "mlops",
        "mlops/step": step,
        "mlops/model": model,
    }


def pod_security_context() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=STEP_UID,
        run_as_group=STEP_GID,
        fs_group=STEP_GID,
        # The share's root is prepared as 1000:1000 2775, so the kubelet never walks the whole share to
        # re-own it on mount (which takes minutes on a large artifact root).
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        privileged=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )


def step_resources(step: str, gpus: int) -> k8s.V1ResourceRequirements:
    size = STEP_RESOURCES["heavy" if get_step(step).heavy else "light"]
    requests, limits = dict(size["requests"]), dict(size["limits"])
    if gpus:
        # Extended resources are limits-only (requests default to them); a pod asking for N
        # GPUs lands on a node with N free, and MirroredStrategy trains on all of them.
        limits["nvidia.com/gpu"] = str(gpus)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _settings_list(env: str) -> list[str]:
    return [item.strip() for item in os.environ.get(env, "").split(",") if item.strip()]


def image_pull_secrets() -> list[k8s.V1LocalObjectReference]:
    """``$MLOPS_K8S_IMAGE_PULL_SECRETS`` (comma-separated Secret names in the steps' namespace)."""
    names = _settings_list(PULL_SECRETS_ENV)
    for name in names:
        problem = k8s_object_name_problem(name)
        if problem is not None:
            raise StepPodSettingError(f"{PULL_SECRETS_ENV}: {problem}. Give Secret names separated by commas.")
    return [k8s.V1LocalObjectReference(name=name) for name in names]


def gpu_node_selector_setting() -> dict[str, str]:
    """``$MLOPS_K8S_GPU_NODE_SELECTOR`` (``key=value,key=value``) as a node selector."""
    selector: dict[str, str] = {}
    for item in _settings_list(GPU_NODE_SELECTOR_ENV):
        key, sep, value = (part.strip() for part in item.partition("="))
        problem = k8s_label_problem(key, value) if sep and key else f"{item!r} is not key=value"
        if problem is not None:
            raise StepPodSettingError(
                f"{GPU_NODE_SELECTOR_ENV}: {problem}. Write node labels as key=value,key=value "
                "(e.g. cloud.google.com/gke-accelerator=nvidia-l4)."
            )
        selector[key] = value
    return selector


def as_k8s_toleration(toleration: Toleration) -> k8s.V1Toleration:
    return k8s.V1Toleration(
        key=toleration.key,
        operator=toleration.operator,
        value=toleration.value,
        effect=toleration.effect,
        toleration_seconds=toleration.toleration_seconds,
    )


def gpu_placement(config: ModelConfig, gpus: int) -> dict[str, object]:
    """KubernetesPodOperator arguments that place a step asking for ``gpus`` GPUs (none for 0)."""
    if not gpus:
        return {}
    tolerations = config.tolerations or (DEFAULT_GPU_TOLERATION,)
    placement: dict[str, object] = {
        "tolerations": [as_k8s_toleration(t) for t in tolerations],
        "node_selector": dict(config.node_selector) or gpu_node_selector_setting() or None,
        "runtime_class_name": config.runtime_class_name,
        "annotations": {"mlops/gpus": str(gpus)},
    }
    return placement


def step_volumes(gpus: int) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The artifact share, or with an object store a local ``/scratch`` (every step), and a memory ``/dev/shm``
    (steps on more than one GPU)."""
    if object_store_root() is not None:
        volumes = [
            k8s.V1Volume(name=SCRATCH_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=SCRATCH_SIZE_LIMIT))
        ]
        mounts = [k8s.V1VolumeMount(name=SCRATCH_VOLUME, mount_path=SCRATCH_DIR)]
    else:
        claim = os.environ.get(PVC_ENV) or DEFAULT_PVC
        volumes = [
            k8s.V1Volume(
                name=ARTIFACT_VOLUME,
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
            )
        ]
        mounts = [k8s.V1VolumeMount(name=ARTIFACT_VOLUME, mount_path=str(artifact_root_in_pods()))]
    if gpus > 1:
        # The container runtime's default /dev/shm is 64 MiB; NCCL's all-reduce between GPUs of one
        # pod goes through shared memory and fails or crawls with that.
        volumes.append(
            k8s.V1Volume(
                name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=SHM_SIZE_LIMIT)
            )
        )
        mounts.append(k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"))
    return volumes, mounts


def step_env(gpus: int) -> list[k8s.V1EnvVar]:
    bucket = object_store_root()
    if bucket is None:
        return [
            k8s.V1EnvVar(name=WORKER_ARTIFACT_ROOT_ENV, value=str(artifact_root_in_pods())),
            k8s.V1EnvVar(name="MLOPS_GPUS", value=str(gpus)),
        ]
    # The worker's own root: a bucket is the same address everywhere.
    env = [
        k8s.V1EnvVar(name=WORKER_ARTIFACT_ROOT_ENV, value=bucket),
        k8s.V1EnvVar(name=STAGING_DIR_ENV, value=SCRATCH_DIR),
        k8s.V1EnvVar(name="TMPDIR", value=SCRATCH_DIR),
        k8s.V1EnvVar(name="MLOPS_GPUS", value=str(gpus)),
    ]
    env += [
        k8s.V1EnvVar(name=name, value=os.environ[name]) for name in OBJECT_STORE_PASSTHROUGH_ENV if os.environ.get(name)
    ]
    return env


def step_env_from() -> list[k8s.V1EnvFromSource]:
    """With an object store, the optional credentials Secret (``optional``: a pod with a cloud identity runs without it)."""
    if object_store_root() is None:
        return []
    return [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=object_store_secret(), optional=True))]


def model_settings(config: ModelConfig | None) -> Mapping[str, object]:
    """Per-model settings for every step pod of the model: priority class and scheduling timeout."""
    if config is None:
        return {}
    return {
        "priority_class_name": config.priority_class_name,
        "schedule_timeout_seconds": config.schedule_timeout_seconds,
    }


# --------------------------------------------------------------------------- after the pod finished


def pod_exit_code(pod: k8s.V1Pod | None, container: str) -> int | None:
    """The exit code of ``container`` in ``pod`` once it terminated, else None."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    terminated = status.state.terminated if status is not None and status.state else None
    return terminated.exit_code if terminated is not None else None


class StepResultError(AirflowException):
    """A pod succeeded but its result file is missing or unreadable (retried: the share may lag)."""


def read_pod_result(path: Path, *, pod: str, wait_s: float) -> dict[str, Any]:
    """The JSON result a step pod wrote to ``path`` on the artifact share, waiting up to ``wait_s`` for it."""
    try:
        for attempt in Retrying(
            stop=stop_after_delay(wait_s),
            wait=wait_fixed(min(2.0, wait_s) or 0.0),
            retry=retry_if_exception_type(FileNotFoundError),
            reraise=True,
        ):
            with attempt:
                text = path.read_text()
    except FileNotFoundError:
        raise StepResultError(
            f"pod {pod} succeeded, but its result file {path} does not exist (waited {wait_s:g} s). The worker "
            "reads step results from the artifact share: mount the same share at the same path as the step "
            f"pods ({ARTIFACT_ROOT_ENV}) and set MLOPS_ARTIFACT_ROOT to it."
        ) from None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StepResultError(f"result file {path} of pod {pod} is not valid JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(result, dict):
        raise StepResultError(f"result file {path} of pod {pod} holds a {type(result).__name__}, not a JSON object")
    return result
