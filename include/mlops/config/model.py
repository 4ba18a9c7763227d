"""The model config itself: :class:`ModelConfig`, its top-level fields and the rules across sections."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, Strict, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, FieldProblem, Fraction, PositiveInt, Str, known_names
from include.mlops.config.deploy import DeployConfig
from include.mlops.config.gate import BUDGET_METRICS, METRICS, GateConfig
from include.mlops.config.monitor import MonitorConfig
from include.mlops.config.optimize import OptimizeConfig
from include.mlops.config.paths import gx_dir
from include.mlops.config.placement import (
    DEFAULT_SCHEDULE_TIMEOUT_S,
    DEFAULT_STEP_TIMEOUTS,
    K8sObjectName,
    NodeSelector,
    ScheduleTimeoutSeconds,
    StepTimeouts,
    Toleration,
)
from include.mlops.config.source import SourceConfig
from include.mlops.config.train import TrainConfig
from include.mlops.names import serving_name_problem

Task = Literal["regression", "classification"]
TASKS: tuple[str, ...] = get_args(Task)


@dataclass(frozen=True, config=STRICT)
class ModelConfig:
    name: Str
    path: Path
    task: Task
    builder: Str
    source: SourceConfig
    features: tuple[Str, ...]
    label: Str
    metrics: tuple[Str, ...]
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    gate: GateConfig = dataclasses.field(default_factory=GateConfig)
    optimize: OptimizeConfig = dataclasses.field(default_factory=OptimizeConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    deploy: DeployConfig = dataclasses.field(default_factory=DeployConfig)
    description: Str = ""
    owner: Str = "mlops"
    schedule: Str = "@daily"
    test_fraction: Fraction = 0.2
    num_classes: Annotated[int, Strict(), Field(ge=2)] | None = None
    input_shape: tuple[PositiveInt, ...] | None = None
    serving_name: Str = ""
    tags: tuple[Str, ...] = ()
    # Where the GPU steps' pods run (kubernetes backend); see docs/backends.md.
    node_selector: NodeSelector = dataclasses.field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    runtime_class_name: K8sObjectName | None = None
    priority_class_name: K8sObjectName | None = None
    schedule_timeout_seconds: ScheduleTimeoutSeconds = DEFAULT_SCHEDULE_TIMEOUT_S
    timeouts: StepTimeouts = dataclasses.field(default_factory=lambda: dict(DEFAULT_STEP_TIMEOUTS))

    @property
    def dag_id(self) -> str:
        return f"lifecycle__{self.name}"

    @property
    def monitor_dag_id(self) -> str:
        return f"monitor__{self.name}"

    @property
    def rollback_dag_id(self) -> str:
        return f"rollback__{self.name}"

    @property
    def builder_path(self) -> Path:
        return self.path.parent / f"{self.builder}.py"

    @property
    def suite_path(self) -> Path:
        """The model's Great Expectations suite: ``<gx dir>/<name>.json``."""
        return gx_dir() / f"{self.name}.json"

    def higher_is_better(self, metric: str) -> bool:
        known = {**METRICS[self.task], **BUDGET_METRICS}
        return known[metric]

    def step_timeout(self, step: str) -> dt.timedelta:
        """How long ``step`` (a step CLI name such as ``train``) may run."""
        if step not in self.timeouts:
            raise KeyError(f"no timeout for step {step!r} (steps: {known_names(self.timeouts)})")
        return dt.timedelta(seconds=self.timeouts[step])

    # ------------------------------------------------------------------ rules over one field

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str, info: ValidationInfo) -> str:
        if not name or not name.replace("_", "").isalnum() or not name[0].isalpha() or not name.isascii():
            raise ValueError(f"must be letters, digits and underscores, starting with a letter; got {name!r}")
        source_file = (info.context or {}).get("source_file")
        if source_file is not None and name != source_file.stem:
            raise ValueError(f"must match the file name {source_file.stem!r}, got {name!r}")
        return name

    @field_validator("builder")
    @classmethod
    def _builder_beside_the_file(cls, builder: str, info: ValidationInfo) -> str:
        source_file = (info.context or {}).get("source_file")
        if source_file is None:
            return builder
        module = source_file.parent / f"{builder}.py"
        if not module.is_file():
            raise ValueError(f"unknown builder {builder!r}: no module {module.name} beside the config")
        if not _defines_build(module):
            raise ValueError(f"builder module {module.name} defines no top-level 'build' function")
        return builder

    @field_validator("features")
    @classmethod
    def _feature_names(cls, features: tuple[str, ...]) -> tuple[str, ...]:
        if not features:
            raise ValueError("must be a non-empty list of column names")
        if len(set(features)) != len(features):
            duplicates = sorted({f for f in features if features.count(f) > 1})
            raise ValueError(f"contains duplicate column names {duplicates}")
        return features

    # ------------------------------------------------------------------ rules across fields

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.label in self.features:
            raise FieldProblem("label", f"label {self.label!r} is also listed as a feature")
        known = METRICS[self.task]

        def check_metric(field_name: str, metric: str) -> None:
            if metric not in known:
                raise FieldProblem(
                    field_name, f"unknown metric {metric!r} for task {self.task!r} (known: {known_names(known)})"
                )

        if not self.metrics:
            raise FieldProblem(
                "metrics", f"must name at least one metric (known for {self.task!r}: {known_names(known)})"
            )
        for i, metric in enumerate(self.metrics):
            check_metric(f"metrics[{i}]", metric)
        for metric in self.gate.thresholds:
            check_metric(f"gate.thresholds.{metric}", metric)
        for metric in self.gate.max_regression:
            check_metric(f"gate.max_regression.{metric}", metric)
        if self.task == "classification" and self.num_classes is None:
            raise FieldProblem("num_classes", "is required for a classification model")
        if self.input_shape is not None:
            size = 1
            for dim in self.input_shape:
                size *= dim
            if size != len(self.features):
                raise FieldProblem(
                    "input_shape",
                    f"{list(self.input_shape)} holds {size} values but there are {len(self.features)} features",
                )
        if not self.serving_name:
            # Served under the model's own name unless the config says otherwise.
            object.__setattr__(self, "serving_name", self.name)
        problem = serving_name_problem(self.serving_name)
        if problem is not None:
            raise FieldProblem("serving_name", problem)
        return self


def _defines_build(path: Path) -> bool:
    """True when the builder module defines a top-level ``build`` function.

    Read with :mod:`ast` rather than imported, so that parsing a DAG never
    imports Keras.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(node, ast.FunctionDef) and node.name == "build" for node in tree.body)
