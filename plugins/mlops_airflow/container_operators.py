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
- :class:`KubernetesStepOperator`: a deferrable ``KubernetesPodOperator`` in
  namespace ``mlops-steps``.  The artifact root is a PersistentVolumeClaim
  mounted at ``$MLOPS_K8S_ARTIFACT_ROOT`` (the Airflow workers mount the same
  share at the same path); GPU limits and placement come from the model config.
  There is no XCom sidecar (it needs ``pods/exec``, which the worker is not
  granted): the step writes its result file onto the share, and the worker
  reads it there once the pod has succeeded.

Both backends run CPU steps in ``$MLOPS_TRAINER_IMAGE`` and GPU steps in
``$MLOPS_TRAINER_GPU_IMAGE`` (the CUDA build of the same image); which image
and argv a step gets is :mod:`mlops_airflow.container_steps`.

The provider modules (docker, kubernetes client) are imported when this module
is, which the backend factory does only for a container backend, so the
default ``local`` DAGs never pay for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
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

from include.mlops import artifact_store
from include.mlops.artifacts import artifact_root, run_dir
from include.mlops.config import DEFAULT_SCHEDULE_TIMEOUT_S, PROJECT_ROOT, ModelConfig
from mlops_airflow import step_pods
from mlops_airflow.container_steps import IMAGE_ENV, container_command, step_image
from mlops_airflow.step_pods import pod_exit_code, read_pod_result, wants_gpus
from mlops_airflow.steps import ArgumentResolver, raise_for_exit_code, resolve_step_arguments, result_file_beside

log = logging.getLogger(__name__)

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
POD_TEMPLATE_FILE = PROJECT_ROOT / "include" / "k8s" / "pod_template.yaml"
# Pulling a multi-GB CUDA image onto a fresh node takes minutes.
STARTUP_TIMEOUT_S = 900


class ContainerBackendError(AirflowFailException):
    """A container backend is misconfigured (missing image, no GPU runtime): retrying cannot help."""


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
        super().__init__(image=image or step_image(step, model, gpus), command=None, **kwargs)
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
        result_file = result_file_beside(Path(arguments["out"]), uuid.uuid4().hex[:8])
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
        store = artifact_store.current()
        if store is not None:
            # On object storage the container works in its own mirror and pushes; it gets the worker's AWS settings.
            self.environment["MLOPS_ARTIFACT_ROOT"] = str(store.uri)
            self.environment.update({key: value for key, value in os.environ.items() if key.startswith("AWS_")})
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
            with contextlib.suppress(Exception):  # a missing result is reported below
                artifact_store.fetch(result_file)
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
    """Where the artifact share is mounted, in step pods and in the Airflow workers alike."""
    return step_pods.artifact_root_in_pods()


class KubernetesStepOperator(_StepArguments, KubernetesPodOperator):
    """Run lifecycle step ``step`` of model ``model`` as a pod of the trainer image.

    :param step: a step of the CLI.
    :param model: the model config name.
    :param config: the model config: GPU count and placement, priority class, scheduling timeout.
    :param step_arguments: step arguments (templated); ``--out`` and ``--result-file`` are added.
    :param resolve_arguments: a callable returning more arguments from the task context at run time.
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "step_arguments")
    ui_color = "#e0f0e8"
    result_file_wait_s: float = step_pods.RESULT_FILE_WAIT_S

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
        kwargs.setdefault("namespace", step_pods.namespace())
        kwargs.setdefault("service_account_name", step_pods.service_account())
        kwargs.setdefault("pod_template_file", str(POD_TEMPLATE_FILE))
        kwargs.setdefault("deferrable", True)
        # No XCom sidecar: reading it needs pods/exec, which the worker is not granted. The result comes
        # from the step's result file on the artifact share instead (execute_sync, trigger_reentry).
        kwargs.setdefault("do_xcom_push", False)
        kwargs.setdefault("on_finish_action", "delete_succeeded_pod")
        kwargs.setdefault("startup_timeout_seconds", STARTUP_TIMEOUT_S)
        kwargs.setdefault("get_logs", True)
        # The cluster ends a pod that runs past the step's runtime cap, even while the task is deferred (where
        # Airflow's execution_timeout does not act), so a hung training step cannot hold a GPU forever.
        if kwargs.get("execution_timeout") is not None:
            kwargs.setdefault("active_deadline_seconds", int(kwargs["execution_timeout"].total_seconds()))
        kwargs.setdefault("name", f"{model}-{step}".replace("_", "-"))
        kwargs.setdefault("labels", step_pods.pod_labels(step, model))
        kwargs.setdefault("security_context", step_pods.pod_security_context())
        kwargs.setdefault("container_security_context", step_pods.container_security_context())
        kwargs.setdefault("container_resources", step_pods.step_resources(step, gpus))
        kwargs.setdefault("image_pull_secrets", step_pods.image_pull_secrets())
        for key, value in {**step_pods.model_settings(config), **step_pods.gpu_placement(config, gpus)}.items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("schedule_timeout_seconds", DEFAULT_SCHEDULE_TIMEOUT_S)
        volumes, mounts = step_pods.step_volumes(gpus)
        kwargs.setdefault("volumes", volumes)
        kwargs.setdefault("volume_mounts", mounts)
        kwargs.setdefault("env_vars", step_pods.step_env(gpus))
        kwargs.setdefault("env_from", step_pods.step_env_from())
        super().__init__(image=image or step_image(step, model, gpus), cmds=["python"], arguments=[], **kwargs)
        self.step = step
        self.model = model
        self.gpus = gpus
        self.step_arguments = dict(step_arguments or {})
        self.resolve_arguments = resolve_arguments
        self.models_dir = models_dir

    def _result_file(self, context: Context, root: Path) -> Path:
        """This try's result file under ``root``: in the run folder, beside the step's ``--out``."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        attempt = f"try{ti.try_number}" if map_index is None or map_index < 0 else f"{map_index}-try{ti.try_number}"
        return result_file_beside(run_dir(self.dag_id, context["dag_run"].run_id, self.task_id, root=root), attempt)

    def _step_result(self, context: Context, pod_name: str) -> dict[str, Any]:
        """The succeeded pod's result, read through the worker's own mount of the share (or pulled from the bucket)."""
        path = self._result_file(context, artifact_root())
        artifact_store.fetch(path)
        result = read_pod_result(path, pod=pod_name, wait_s=self.result_file_wait_s)
        with contextlib.suppress(OSError):
            path.unlink()
        self.log.info("Step %r result: %s", self.step, json.dumps(result, sort_keys=True)[:2000])
        return result

    def execute_sync(self, context: Context) -> dict[str, Any]:
        super().execute_sync(context)
        return self._step_result(context, self.pod.metadata.name if self.pod is not None else self.name)

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        # The provider returns only for a pod that succeeded (also one already deleted by the cluster,
        # whose result is still on the share); a failed pod raises from its cleanup.
        super().trigger_reentry(context, event)
        return self._step_result(context, event["name"])

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
            # On object storage the worker's mirror paths go to the pod as URIs (steps.step_command).
            root = artifact_root() if artifact_store.current() is not None else k8s_artifact_root()
            if artifact_root() != root:
                self.log.warning(
                    "This worker's artifact root %s differs from the pods' %s: tasks that run on the worker "
                    "(the gates) will not see the steps' outputs. Mount the share at %s and set MLOPS_ARTIFACT_ROOT.",
                    artifact_root(),
                    root,
                    root,
                )
            arguments = self._resolved_arguments(context, root)
            arguments["result_file"] = str(self._result_file(context, root))
            self.arguments = container_command(self.step, self.model, arguments)[1:]
        return super().build_pod_request_obj(context, dry_run=dry_run)
