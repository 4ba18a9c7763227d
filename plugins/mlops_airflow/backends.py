"""The compute backend factory: one lifecycle step -> one task, on ``local``, ``docker`` or ``kubernetes``.

The DAG files are the same for every backend; which one runs the steps is
chosen when the DAG file is parsed, from ``$MLOPS_BACKEND`` (set it on the
scheduler, DAG processor and workers alike; default ``local``).  It is an
environment variable rather than an Airflow Variable because parsing a DAG
file must not query the metadata database.

An unknown name raises :class:`UnknownBackendError` at parse time, so the DAG
shows an import error that names the bad value and where it came from.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow.sdk import BaseOperator

from include.mlops.config import ModelConfig
from include.mlops.steps import get_step, runtime_cap

log = logging.getLogger(__name__)

BACKEND_ENV = "MLOPS_BACKEND"
DEFAULT_BACKEND = "local"
BACKENDS = ("local", "docker", "kubernetes")


class UnknownBackendError(ValueError):
    """The configured compute backend is not one this project knows."""


def resolve_backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else ``$MLOPS_BACKEND``, else ``local``."""
    if name:
        source = "the backend argument"
    elif os.environ.get(BACKEND_ENV):
        name, source = os.environ[BACKEND_ENV], f"environment variable {BACKEND_ENV}"
    else:
        return DEFAULT_BACKEND
    normalized = name.strip().lower()
    if normalized not in BACKENDS:
        raise UnknownBackendError(
            f"unknown compute backend {name!r} (from {source}); choose one of: {', '.join(BACKENDS)}. "
            f"Set {BACKEND_ENV} on the scheduler, DAG processor and workers."
        )
    return normalized


def _operator_class_and_kwargs(
    chosen: str,
    *,
    step: str,
    model: str,
    config: ModelConfig | None,
    models_dir: str | None,
    kwargs: dict[str, Any],
) -> tuple[type[BaseOperator], dict[str, Any], str]:
    """The operator class of ``chosen``, its keyword arguments, and the name of its step-arguments parameter."""
    # A step nobody declared is an import error of the DAG, not a failure of its first run.
    get_step(step)
    if config is not None and "execution_timeout" not in kwargs:
        kwargs["execution_timeout"] = runtime_cap(step, config.timeouts)
    common = {"step": step, "model": model, "models_dir": models_dir, **kwargs}
    if chosen == "local":
        from mlops_airflow.operators import LifecycleStepOperator

        return LifecycleStepOperator, common, "arguments"
    # Imported only here: the provider and client libraries cost parse time the local DAGs need not pay.
    from mlops_airflow import container_operators as containers

    if chosen == "docker":
        return containers.DockerStepOperator, {**common, "gpus": containers.wants_gpus(step, config)}, "step_arguments"
    return containers.KubernetesStepOperator, {**common, "config": config}, "step_arguments"


def step_operator(
    backend: str | None = None,
    *,
    task_id: str,
    step: str,
    model: str,
    config: ModelConfig | None = None,
    models_dir: str | None = None,
    arguments: dict[str, Any] | None = None,
    **kwargs: Any,
) -> BaseOperator:
    """The task running lifecycle step ``step`` of ``model`` on ``backend``.

    ``step`` is a declared step (:mod:`include.mlops.steps`).  ``config`` gives
    every backend the step's runtime cap (``execution_timeout`` from ``timeouts``
    in the model config, else the step's declared default; the kubernetes pods
    also get it as ``activeDeadlineSeconds``) and the container backends the GPU
    count, node selector and tolerations.  The other keyword arguments
    (``resolve_arguments``, ``trigger_rule``, ``pool``, ...) go to the operator.
    """
    operator_class, operator_kwargs, arguments_name = _operator_class_and_kwargs(
        resolve_backend(backend), step=step, model=model, config=config, models_dir=models_dir, kwargs=kwargs
    )
    return operator_class(task_id=task_id, **{arguments_name: arguments}, **operator_kwargs)


def mapped_step_operator(
    backend: str | None = None,
    *,
    task_id: str,
    step: str,
    model: str,
    expand_arguments: list[dict[str, Any]],
    config: ModelConfig | None = None,
    models_dir: str | None = None,
    **kwargs: Any,
) -> Any:
    """``step`` as a mapped task: one task instance per item of ``expand_arguments`` (``.partial().expand()``).

    Each instance gets its item as its step arguments (on top of what
    ``resolve_arguments`` adds) and writes under ``runs/<dag>/<run>/<task_id>/<map_index>/``.
    Everything else is as :func:`step_operator` gives it, GPUs and placement included.
    """
    operator_class, operator_kwargs, arguments_name = _operator_class_and_kwargs(
        resolve_backend(backend), step=step, model=model, config=config, models_dir=models_dir, kwargs=kwargs
    )
    return operator_class.partial(task_id=task_id, **operator_kwargs).expand(**{arguments_name: expand_arguments})
