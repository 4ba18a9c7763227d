"""Lifecycle steps in containers: the ``docker`` and ``kubernetes`` backends.

Both operators run the very command the ``local`` backend runs
(``python -m include.mlops <step> --model M ... --out DIR --result-file F``),
in the trainer image (``include/docker/trainer/Dockerfile``), and return the
step's JSON result as the task's XCom, so the DAG and every downstream task
are the same whichever backend runs the steps.

- :class:`DockerStepOperator`: a ``DockerOperator``.  The artifact root is
  bind-mounted at the same absolute path inside the container as outside, so
  the paths in XComs are valid on both sides; GPUs are requested through
  ``device_requests``; the result is read back from a file in the mount.
- :class:`KubernetesStepOperator`: a deferrable ``KubernetesPodOperator``.
  The artifact root is a PersistentVolumeClaim mounted at
  ``$MLOPS_K8S_ARTIFACT_ROOT`` (the Airflow workers mount the same claim at
  the same path); GPU limits, node selector and tolerations come from the model
  config; the result goes through the XCom sidecar.

The provider modules (docker, kubernetes client) are imported when this module
is, which the backend factory does only for a container backend, so the
default ``local`` DAGs never pay for them.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Mount
from kubernetes.client import models as k8s

from include.mlops.artifacts import artifact_root
from include.mlops.config import PROJECT_ROOT, ModelConfig
from mlops_airflow.steps import ArgumentResolver, raise_for_exit_code, resolve_step_arguments, step_command

DEFAULT_IMAGE = "mlops-trainer:local"
IMAGE_ENV = "MLOPS_TRAINER_IMAGE"
# Steps that train, and so may use GPUs (config.train.gpus).
GPU_STEPS = frozenset({"train", "optimize"})

# --- docker
DOCKER_URL_ENV = "MLOPS_DOCKER_URL"
DOCKER_USER_ENV = "MLOPS_DOCKER_USER"
DOCKER_NETWORK_ENV = "MLOPS_DOCKER_NETWORK"
DEFAULT_DOCKER_URL = "unix://var/run/docker.sock"
# The step containers share the worker host's network by default, so the deploy step reaches a model server
# listening on the host's loopback (make run).  Under compose, set the compose network instead.
DEFAULT_DOCKER_NETWORK = "host"
# The container's exit status in the provider's failure message: "Docker container failed: {'StatusCode': 3, ...}".
_DOCKER_STATUS_CODE = re.compile(r"'StatusCode':\s*(-?\d+)\b")

# --- kubernetes
K8S_NAMESPACE_ENV = "MLOPS_K8S_NAMESPACE"
K8S_ARTIFACT_ROOT_ENV = "MLOPS_K8S_ARTIFACT_ROOT"
K8S_PVC_ENV = "MLOPS_K8S_ARTIFACT_PVC"
K8S_SERVICE_ACCOUNT_ENV = "MLOPS_K8S_SERVICE_ACCOUNT"
DEFAULT_NAMESPACE = "mlops"
DEFAULT_K8S_ARTIFACT_ROOT = "/mnt/mlops-artifacts"
DEFAULT_PVC = "mlops-artifacts"
DEFAULT_SERVICE_ACCOUNT = "mlops-step"
POD_TEMPLATE_FILE = PROJECT_ROOT / "include" / "k8s" / "pod_template.yaml"
XCOM_RESULT_FILE = "/airflow/xcom/return.json"
ARTIFACT_VOLUME = "artifacts"
# A pod that cannot be scheduled (no GPU node, no matching toleration) fails after this,
# with the scheduler's reason in the task log, instead of waiting forever.
SCHEDULE_TIMEOUT_S = 600
# Pulling a multi-GB CUDA image onto a fresh node takes minutes.
STARTUP_TIMEOUT_S = 900
# Requests and limits per step: a training step gets more than a bookkeeping one.
STEP_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "light": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
    "heavy": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
}
HEAVY_STEPS = frozenset({"train", "optimize", "evaluate"})


class ContainerBackendError(AirflowFailException):
    """A container backend is misconfigured (missing image, no GPU runtime): retrying cannot help."""


def trainer_image() -> str:
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def container_command(step: str, model: str, arguments: Mapping[str, Any]) -> list[str]:
    """The step CLI's argv inside the image: the local backend's, with the image's ``python``."""
    return ["python", *step_command(step, model, arguments)[1:]]


def wants_gpus(step: str, config: ModelConfig | None) -> int:
    """GPUs a step asks for: ``train.gpus`` for the training steps, none for the others."""
    if config is None or step not in GPU_STEPS:
        return 0
    return int(config.train.gpus)


class _StepArguments:
    """The part both container operators share: resolving the step's arguments at run time."""

    step_arguments: dict[str, Any]
    resolve_arguments: ArgumentResolver | None
    models_dir: str | None
    dag_id: str
    task_id: str

    def _resolved_arguments(self, context: Context, root: Path) -> dict[str, Any]:
        return resolve_step_arguments(
            context,
            static=self.step_arguments,
            resolver=self.resolve_arguments,
            models_dir=self.models_dir,
            dag_id=self.dag_id,
            task_id=self.task_id,
            root=root,
        )


# --------------------------------------------------------------------------- docker


def docker_exit_code(exc: DockerContainerFailedException) -> int | None:
    """The failed container's exit status, from the provider's message (it keeps no attribute for it)."""
    match = _DOCKER_STATUS_CODE.search(str(exc))
    return int(match.group(1)) if match else None


def _docker_user() -> str:
    """The worker's uid:gid (``$MLOPS_DOCKER_USER`` overrides it).

    Steps then own their files in the shared artifact root exactly as with the
    local backend, so reruns, the gate tasks on the worker and a later switch of
    backend can all replace them.  (Access to the Docker socket is root-equivalent
    anyway; the image's own default user, used by plain ``docker run`` and on
    Kubernetes, is non-root.)
    """
    return os.environ.get(DOCKER_USER_ENV) or f"{os.getuid()}:{os.getgid()}"


class DockerStepOperator(_StepArguments, DockerOperator):
    """Run lifecycle step ``step`` of model ``model`` in the trainer image on a Docker engine.

    :param step: a step of the CLI (snapshot, validate, train, ...).
    :param model: the model config name.
    :param step_arguments: step arguments (templated); ``--out`` and ``--result-file`` are added.
    :param resolve_arguments: a callable returning more arguments from the task context at run time.
    :param models_dir: a folder of model configs on the worker, mounted read-only at the same path.
    :param gpus: GPUs to request (``-1``: all); 0 for none.
    """

    template_fields: Sequence[str] = (*DockerOperator.template_fields, "step_arguments")
    template_fields_renderers = {**DockerOperator.template_fields_renderers, "step_arguments": "json"}
    ui_color = "#d6ecff"

    def __init__(
        self,
        *,
        step: str,
        model: str,
        step_arguments: Mapping[str, Any] | None = None,
        resolve_arguments: ArgumentResolver | None = None,
        models_dir: str | None = None,
        gpus: int = 0,
        image: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("docker_url", os.environ.get(DOCKER_URL_ENV) or DEFAULT_DOCKER_URL)
        kwargs.setdefault("auto_remove", "force")
        # A host temp dir bind mount breaks when the worker itself runs in a container; steps use --out.
        kwargs.setdefault("mount_tmp_dir", False)
        kwargs.setdefault("user", _docker_user())
        kwargs.setdefault("cpus", 1.0)
        kwargs.setdefault("network_mode", os.environ.get(DOCKER_NETWORK_ENV) or DEFAULT_DOCKER_NETWORK)
        super().__init__(image=image or trainer_image(), command=None, **kwargs)
        self.step = step
        self.model = model
        self.step_arguments = dict(step_arguments or {})
        self.resolve_arguments = resolve_arguments
        self.models_dir = models_dir
        self.gpus = gpus
        if gpus:
            self.device_requests = [DeviceRequest(count=gpus, capabilities=[["gpu"]])]

    def execute(self, context: Context) -> dict[str, Any]:
        root = artifact_root()
        root.mkdir(parents=True, exist_ok=True)
        arguments = self._resolved_arguments(context, root)
        # The result file sits in the mounted root, beside (not inside) the step's output folder,
        # whose contents the step replaces atomically.
        result_file = Path(arguments["out"]).parent / f".{self.task_id}.result-{uuid.uuid4().hex[:8]}.json"
        result_file.parent.mkdir(parents=True, exist_ok=True)
        arguments["result_file"] = str(result_file)
        self.command = container_command(self.step, self.model, arguments)
        self.mounts = [Mount(target=str(root), source=str(root), type="bind")]
        if self.models_dir:
            models = str(Path(self.models_dir).resolve())
            self.mounts.append(Mount(target=models, source=models, type="bind", read_only=True))
        self.environment = {
            **(self.environment or {}),
            "MLOPS_ARTIFACT_ROOT": str(root),
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
        self._check_image()
        self.log.info("Running step %r in %s: %s", self.step, self.image, " ".join(self.command))
        try:
            super().execute(context)
        except DockerContainerFailedException as exc:
            tail = [line.decode() if isinstance(line, bytes) else str(line) for line in (exc.logs or [])][-15:]
            message = f"step {self.step!r} of model {self.model!r} failed in container {self.image}:\n" + "\n".join(
                line.rstrip() for line in tail
            )
            raise_for_exit_code(docker_exit_code(exc), message)
        except APIError as exc:
            if self.device_requests and ("device driver" in str(exc) or "gpu" in str(exc).lower()):
                raise ContainerBackendError(
                    f"step {self.step!r} of model {self.model!r} asks for {self.gpus} GPU(s) (train.gpus in its "
                    f"config), but the Docker engine at {self.docker_url} has no GPU runtime ({exc.explanation}). "
                    "Install the NVIDIA Container Toolkit on that host, or set train.gpus: 0."
                ) from None
            raise
        finally:
            result = self._read_result(result_file)
        if result is None:
            raise AirflowException(f"step {self.step!r} exited 0 but wrote no result file {result_file}")
        self.log.info("Step %r result: %s", self.step, json.dumps(result, sort_keys=True)[:2000])
        return result

    def _check_image(self) -> None:
        """Fail with what to do when the image is neither on the engine nor pullable."""
        try:
            self.cli.inspect_image(self.image)
            return
        except ImageNotFound:
            pass
        except DockerException as exc:
            raise ContainerBackendError(
                f"cannot reach the Docker engine at {self.docker_url} ({exc}); start it, or set "
                f"{DOCKER_URL_ENV}, or choose another backend with MLOPS_BACKEND"
            ) from None
        try:
            self.log.info("Image %s is not on the engine; pulling it", self.image)
            self.cli.pull(self.image)
            self.cli.inspect_image(self.image)
        except (DockerException, NotFound) as exc:
            raise ContainerBackendError(
                f"trainer image {self.image!r} is not on the Docker engine at {self.docker_url} and cannot be "
                f"pulled ({exc}). Build it with `docker build -f include/docker/trainer/Dockerfile -t "
                f"{self.image} .` or set {IMAGE_ENV} to an image the engine can pull."
            ) from None

    @staticmethod
    def _read_result(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        finally:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- kubernetes


def k8s_artifact_root() -> Path:
    """Where the artifact PVC is mounted, in step pods and in the Airflow workers alike."""
    return Path(os.environ.get(K8S_ARTIFACT_ROOT_ENV) or DEFAULT_K8S_ARTIFACT_ROOT)


def step_resources(step: str, gpus: int) -> k8s.V1ResourceRequirements:
    size = STEP_RESOURCES["heavy" if step in HEAVY_STEPS else "light"]
    requests, limits = dict(size["requests"]), dict(size["limits"])
    if gpus:
        # Extended resources are limits-only (requests default to them); a pod asking for N
        # GPUs lands on a node with N free, and MirroredStrategy trains on all of them.
        limits["nvidia.com/gpu"] = str(gpus)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _toleration(item: Mapping[str, Any]) -> k8s.V1Toleration:
    return k8s.V1Toleration(
        key=item.get("key"),
        operator=item.get("operator"),
        value=item.get("value"),
        effect=item.get("effect"),
        toleration_seconds=item.get("toleration_seconds", item.get("tolerationSeconds")),
    )


def pod_exit_code(pod: k8s.V1Pod | None, container: str) -> int | None:
    """The exit code of ``container`` in ``pod`` once it terminated, else None."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    terminated = status.state.terminated if status is not None and status.state else None
    return terminated.exit_code if terminated is not None else None


class KubernetesStepOperator(_StepArguments, KubernetesPodOperator):
    """Run lifecycle step ``step`` of model ``model`` as a pod of the trainer image.

    :param step: a step of the CLI.
    :param model: the model config name.
    :param config: the model config: GPU count, node selector and tolerations.
    :param step_arguments: step arguments (templated); ``--out`` and ``--result-file`` are added.
    :param resolve_arguments: a callable returning more arguments from the task context at run time.
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "step_arguments")
    ui_color = "#e0f0e8"

    def __init__(
        self,
        *,
        step: str,
        model: str,
        config: ModelConfig | None = None,
        step_arguments: Mapping[str, Any] | None = None,
        resolve_arguments: ArgumentResolver | None = None,
        models_dir: str | None = None,
        image: str | None = None,
        **kwargs: Any,
    ) -> None:
        gpus = wants_gpus(step, config)
        root = str(k8s_artifact_root())
        kwargs.setdefault("namespace", os.environ.get(K8S_NAMESPACE_ENV) or DEFAULT_NAMESPACE)
        kwargs.setdefault("service_account_name", os.environ.get(K8S_SERVICE_ACCOUNT_ENV) or DEFAULT_SERVICE_ACCOUNT)
        kwargs.setdefault("pod_template_file", str(POD_TEMPLATE_FILE))
        kwargs.setdefault("deferrable", True)
        kwargs.setdefault("do_xcom_push", True)
        kwargs.setdefault("on_finish_action", "delete_succeeded_pod")
        kwargs.setdefault("startup_timeout_seconds", STARTUP_TIMEOUT_S)
        kwargs.setdefault("schedule_timeout_seconds", SCHEDULE_TIMEOUT_S)
        kwargs.setdefault("get_logs", True)
        # The cluster ends a pod that runs past the step's runtime cap, even while the task is deferred (where
        # Airflow's execution_timeout does not act), so a hung training step cannot hold a GPU forever.
        if kwargs.get("execution_timeout") is not None:
            kwargs.setdefault("active_deadline_seconds", int(kwargs["execution_timeout"].total_seconds()))
        # The sidecar shares the pod, so it gets the same restrictions as the step (pod_template.yaml).
        kwargs.setdefault(
            "xcom_sidecar_container_security_context",
            k8s.V1SecurityContext(
                run_as_non_root=True,
                allow_privilege_escalation=False,
                read_only_root_filesystem=True,
                privileged=False,
                capabilities=k8s.V1Capabilities(drop=["ALL"]),
            ),
        )
        kwargs.setdefault("name", f"{model}-{step}".replace("_", "-"))
        kwargs.setdefault("labels", {"app.kubernetes.io/part-of": "mlops", "mlops/model": model, "mlops/step": step})
        kwargs.setdefault("container_resources", step_resources(step, gpus))
        if gpus:
            kwargs.setdefault("node_selector", dict(config.node_selector) if config else None)
            kwargs.setdefault("tolerations", [_toleration(t) for t in config.tolerations] if config else None)
            kwargs.setdefault("annotations", {"mlops/gpus": str(gpus)})
        kwargs.setdefault(
            "volumes",
            [
                k8s.V1Volume(
                    name=ARTIFACT_VOLUME,
                    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                        claim_name=os.environ.get(K8S_PVC_ENV) or DEFAULT_PVC
                    ),
                )
            ],
        )
        kwargs.setdefault("volume_mounts", [k8s.V1VolumeMount(name=ARTIFACT_VOLUME, mount_path=root)])
        kwargs.setdefault(
            "env_vars",
            [
                k8s.V1EnvVar(name="MLOPS_ARTIFACT_ROOT", value=root),
                k8s.V1EnvVar(name="MLOPS_GPUS", value=str(gpus)),
            ],
        )
        super().__init__(image=image or trainer_image(), cmds=["python"], arguments=[], **kwargs)
        self.step = step
        self.model = model
        self.gpus = gpus
        self.step_arguments = dict(step_arguments or {})
        self.resolve_arguments = resolve_arguments
        self.models_dir = models_dir

    def cleanup(
        self,
        pod: k8s.V1Pod,
        remote_pod: k8s.V1Pod,
        xcom_result: dict[str, Any] | None = None,
        context: Context | None = None,
    ) -> None:
        """The provider's cleanup, with the step's exit code deciding whether a failed pod is retried."""
        try:
            super().cleanup(pod=pod, remote_pod=remote_pod, xcom_result=xcom_result, context=context)
        except (AirflowSkipException, AirflowFailException):
            raise
        except AirflowException as exc:
            raise_for_exit_code(
                pod_exit_code(remote_pod, self.base_container_name),
                f"step {self.step!r} of model {self.model!r} failed in pod {pod.metadata.name if pod else '?'}: {exc}",
            )

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        # The argv depends on upstream XComs, so it is made here, when the pod is about to be
        # submitted, not at parse time.
        if context is not None:
            root = k8s_artifact_root()
            if artifact_root() != root:
                self.log.warning(
                    "This worker's artifact root %s differs from the pods' %s: tasks that run on the worker "
                    "(the gates) will not see the steps' outputs. Mount the PVC at %s and set MLOPS_ARTIFACT_ROOT.",
                    artifact_root(),
                    root,
                    root,
                )
            arguments = self._resolved_arguments(context, root)
            arguments["result_file"] = XCOM_RESULT_FILE
            self.arguments = container_command(self.step, self.model, arguments)[1:]
        return super().build_pod_request_obj(context, dry_run=dry_run)
