"""The compute backend factory: one lifecycle step -> one task, on ``local``, ``docker`` or ``kubernetes``.

The DAG files are the same for every backend; which one runs the steps is
chosen when the DAG file is parsed, cheaply:

1. ``$MLOPS_BACKEND`` (set it on the scheduler, DAG processor and workers), else
2. the Airflow Variable ``mlops_backend``, read once per parsing process and
   given up on quickly when there is no metadata database or API to ask, else
3. ``local``.

An unknown name raises :class:`UnknownBackendError` at parse time, so the DAG
shows an import error that names the bad value and where it came from.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from airflow.sdk import BaseOperator

from include.mlops.config import ModelConfig

log = logging.getLogger(__name__)

BACKEND_ENV = "MLOPS_BACKEND"
BACKEND_VARIABLE = "mlops_backend"
DEFAULT_BACKEND = "local"
BACKENDS = ("local", "docker", "kubernetes")
ALIASES = {"k8s": "kubernetes", "kpo": "kubernetes", "process": "local", "subprocess": "local"}
# Parsing must stay fast: a Variable lookup that has not answered by then is skipped.
VARIABLE_TIMEOUT_S = 2.0
_VARIABLE_TTL_S = 60.0
_variable_cache: tuple[float, str | None] | None = None


class UnknownBackendError(ValueError):
    """The configured compute backend is not one this project knows."""


def _read_variable() -> str | None:
    """The Variable ``mlops_backend``, or None when unset or unreachable within the timeout."""
    global _variable_cache
    now = time.monotonic()
    if _variable_cache is not None and now - _variable_cache[0] < _VARIABLE_TTL_S:
        return _variable_cache[1]
    answer: list[str | None] = [None]

    def lookup() -> None:
        try:
            from airflow.sdk import Variable

            answer[0] = Variable.get(BACKEND_VARIABLE, default=None)
        except Exception as exc:  # no DB, no API server, not in a task: use the default
            log.debug("Variable %s not readable (%s); using the default backend", BACKEND_VARIABLE, exc)

    worker = threading.Thread(target=lookup, name="mlops-backend-variable", daemon=True)
    worker.start()
    worker.join(VARIABLE_TIMEOUT_S)
    if worker.is_alive():
        log.warning("Variable %s took over %.0fs to read; using %s", BACKEND_VARIABLE, VARIABLE_TIMEOUT_S, BACKEND_ENV)
    value = answer[0]
    _variable_cache = (now, value)
    return value


def resolve_backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else ``$MLOPS_BACKEND``, else the Variable, else ``local``."""
    if name:
        source = "the backend argument"
    elif os.environ.get(BACKEND_ENV):
        name, source = os.environ[BACKEND_ENV], f"environment variable {BACKEND_ENV}"
    else:
        name, source = _read_variable(), f"Airflow Variable {BACKEND_VARIABLE}"
        if not name:
            return DEFAULT_BACKEND
    normalized = name.strip().lower()
    normalized = ALIASES.get(normalized, normalized)
    if normalized not in BACKENDS:
        raise UnknownBackendError(
            f"unknown compute backend {name!r} (from {source}); choose one of: {', '.join(BACKENDS)}. "
            f"Set {BACKEND_ENV} or the Airflow Variable {BACKEND_VARIABLE}."
        )
    return normalized


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

    ``config`` gives the container backends the GPU count, node selector and
    tolerations; the local backend ignores it.  The other keyword arguments
    (``resolve_arguments``, ``trigger_rule``, ``pool``, ...) go to the operator.
    """
    chosen = resolve_backend(backend)
    if chosen == "local":
        from mlops_airflow.operators import LifecycleStepOperator

        return LifecycleStepOperator(
            task_id=task_id, step=step, model=model, models_dir=models_dir, arguments=arguments, **kwargs
        )
    # Imported only here: the provider and client libraries cost parse time the local DAGs need not pay.
    from mlops_airflow import container_operators as containers

    if chosen == "docker":
        return containers.DockerStepOperator(
            task_id=task_id,
            step=step,
            model=model,
            models_dir=models_dir,
            step_arguments=arguments,
            gpus=containers.wants_gpus(step, config),
            **kwargs,
        )
    return containers.KubernetesStepOperator(
        task_id=task_id,
        step=step,
        model=model,
        config=config,
        models_dir=models_dir,
        step_arguments=arguments,
        **kwargs,
    )
