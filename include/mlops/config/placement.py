"""Where and how long the steps of a model run: step timeouts, and the GPU step pods' placement.

These are top-level fields of a model config (``timeouts``, ``node_selector``,
``tolerations``, ``runtime_class_name``, ``priority_class_name``,
``schedule_timeout_seconds``); the GPUs a model asks for are ``train.gpus``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, Strict, model_validator
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, FieldProblem, Int, Str, known_names
from include.mlops.names import k8s_label_problem, k8s_object_name_problem
from include.mlops.steps.declaration import DEFAULT_STEP_TIMEOUTS

# DEFAULT_STEP_TIMEOUTS: step -> seconds each step may run before Airflow stops it (the task's
# execution_timeout), from the step declarations (include/mlops/steps/lifecycle.py); a config's
# ``timeouts`` overrides some of them.
# A pod that cannot be scheduled (no GPU node free, no matching toleration) fails after this many
# seconds, with the scheduler's reason in the task log, instead of waiting forever.
DEFAULT_SCHEDULE_TIMEOUT_S = 600


def _merge_default_timeouts(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    for step, seconds in value.items():
        if step not in DEFAULT_STEP_TIMEOUTS:
            raise FieldProblem(str(step), f"unknown step (steps: {known_names(DEFAULT_STEP_TIMEOUTS)})")
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise FieldProblem(str(step), f"must be a positive whole number of seconds, got {seconds!r}")
    return {**DEFAULT_STEP_TIMEOUTS, **value}


# Step -> seconds; every step of DEFAULT_STEP_TIMEOUTS is present after validation.
StepTimeouts = Annotated[Mapping[str, int], BeforeValidator(_merge_default_timeouts)]


def _node_labels(selector: Mapping[str, str]) -> Mapping[str, str]:
    for key, value in selector.items():
        problem = k8s_label_problem(key, value)
        if problem is not None:
            raise FieldProblem(key, problem)
    return selector


NodeSelector = Annotated[Mapping[Str, Str], AfterValidator(_node_labels)]


def _k8s_object_name(name: str) -> str:
    problem = k8s_object_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


K8sObjectName = Annotated[str, Strict(), AfterValidator(_k8s_object_name)]
ScheduleTimeoutSeconds = Annotated[int, Strict(), Field(gt=0, le=86400)]


@dataclass(frozen=True, config=STRICT)
class Toleration:
    """A Kubernetes toleration for the GPU step pods, checked as the API server would check it."""

    key: Str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: Str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    # Manifests copied from Kubernetes docs spell it tolerationSeconds.
    toleration_seconds: Int | None = Field(
        default=None, validation_alias=AliasChoices("toleration_seconds", "tolerationSeconds")
    )

    @model_validator(mode="after")
    def _as_the_api_server_checks_it(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise FieldProblem("value", "must be empty when operator is 'Exists'")
        if self.operator == "Equal" and not self.key:
            raise FieldProblem("key", "is required when operator is 'Equal' (or use operator: Exists)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise FieldProblem("toleration_seconds", "is only allowed with effect 'NoExecute'")
        return self
