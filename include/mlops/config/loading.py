"""Model configs: one YAML file per model in ``include/models/``.

The config types are pydantic dataclasses: the YAML document is validated by
pydantic (types, ranges, unknown fields), and the rules that span fields
(metrics known for the task, the builder module beside the file, ...) are
validators on the types.  Every problem is reported as a :class:`ConfigError`
that names the file and the dotted field, so that an Airflow task or log reads
e.g. ``diabetes.yaml: field 'metrics[1]': unknown metric 'auc' for task
'regression' (known: mae, mse, r2, rmse)``.

Loading a config is cheap (PyYAML, pydantic and the standard library only),
because the DAG files call it at parse time.  :func:`scan_model_configs` keeps
one broken file from hiding the others.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_type_hints

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from include.mlops.names import k8s_label_problem, k8s_object_name_problem, serving_name_problem
from include.mlops.optimize.compress_config import CompressConfig

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODELS_DIR = PROJECT_ROOT / "include" / "models"
DEFAULT_GX_DIR = PROJECT_ROOT / "include" / "gx"

Task = Literal["regression", "classification"]
BundledDataset = Literal["diabetes", "digits", "breast_cancer", "wine"]
SourceFormat = Literal["csv", "parquet"]
TASKS: tuple[str, ...] = get_args(Task)
# Metric name -> True when higher is better.  Evaluate computes exactly these.
METRICS: dict[str, dict[str, bool]] = {
    "regression": {"mae": False, "mse": False, "rmse": False, "r2": True},
    "classification": {"accuracy": True, "macro_f1": True, "log_loss": False},
}
# Measured by evaluate for every task; budgets apply to them.
BUDGET_METRICS = {"size_mb": False, "latency_ms": False}
BUNDLED_DATASETS: tuple[str, ...] = get_args(BundledDataset)
SOURCE_FORMATS: tuple[str, ...] = get_args(SourceFormat)
# Seconds each step may run before Airflow stops it (the task's execution_timeout);
# a config's ``timeouts`` overrides some of them.  Training and optimizing get hours,
# so that a hung step frees its GPU the same night.
DEFAULT_STEP_TIMEOUTS: dict[str, int] = {
    "snapshot": 900,
    "validate": 900,
    "train": 7200,
    "evaluate": 1800,
    "tune-plan": 300,
    "tune-trial": 7200,
    "tune-select": 900,
    "compress": 7200,
    "register": 900,
    "deploy": 1200,
    "drift": 900,
}
# Keys of the YAML document that each source kind reads.
_SOURCE_KEYS = {
    "bundled": ("kind", "dataset", "start_date", "initial_fraction", "daily_rows"),
    "uri": ("kind", "uri", "format", "lookback_days"),
}


class ConfigError(ValueError):
    """A model config is invalid.  The message names the file and the field.

    ``more`` holds further problems of the same file, one line each, so that a
    user can fix them all in one go.
    """

    def __init__(self, path: str | os.PathLike[str], field_name: str, problem: str, more: Sequence[str] = ()) -> None:
        self.path = str(path)
        self.field = field_name
        self.problem = problem
        self.more = tuple(more)
        super().__init__("\n".join([f"{self.path}: field '{field_name}': {problem}", *self.more]))


class _FieldProblem(ValueError):
    """Raised inside a validator to name a field below the one pydantic reports."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field_name
        self.problem = problem


# --------------------------------------------------------------------------- field types
# Strict scalars: YAML's "5" is a string and stays one, and a bool is not a number.
# A float field takes an int (YAML reads 1 as int where 1.0 is meant).

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Str = Annotated[str, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0)]


def _open_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


Fraction = Annotated[float, Strict(), AfterValidator(_open_fraction)]
_CONFIG = ConfigDict(extra="forbid")


def _known(values: Sequence[str] | Mapping[str, Any]) -> str:
    return ", ".join(sorted(values))


# --------------------------------------------------------------------------- config types


@dataclass(frozen=True, config=_CONFIG)
class SourceConfig:
    """Where the training data comes from.

    ``bundled``: a scikit-learn dataset, released as daily arrivals from
    ``start_date`` (``initial_fraction`` on the first day, then ``daily_rows``
    more per day) so that nightly runs see the data grow.

    ``uri``: a file or object-store URI template with a ``{{ ds }}`` partition,
    read for each day of the ``lookback_days`` ending with the run's interval.
    """

    kind: Literal["bundled", "uri"]
    dataset: BundledDataset | None = None
    start_date: dt.date | None = None
    initial_fraction: Fraction = 0.5
    daily_rows: NonNegativeInt = 10
    uri: Str | None = None
    format: SourceFormat | None = None
    lookback_days: PositiveInt = 1

    @model_validator(mode="before")
    @classmethod
    def _keys_of_the_kind(cls, data: Any) -> Any:
        """In a YAML document, each kind takes its own keys; a uri's format defaults from its extension."""
        if not isinstance(data, Mapping) or data.get("kind") not in _SOURCE_KEYS:
            return data
        kind = data["kind"]
        for key in data:
            if key not in _SOURCE_KEYS[kind] and key in cls.__dataclass_fields__:
                raise _FieldProblem(key, f"not used by a {kind!r} source (its fields: {_known(_SOURCE_KEYS[kind])})")
        if kind == "bundled":
            for key in ("dataset", "start_date"):
                if data.get(key) is None:
                    raise _FieldProblem(key, "is required for a 'bundled' source")
            return data
        uri = data.get("uri")
        if not isinstance(uri, str):
            raise _FieldProblem("uri", "is required for a 'uri' source: a file or object-store URI template")
        if "{{ ds }}" not in uri and "{{ds}}" not in uri:
            raise _FieldProblem("uri", f"must contain a '{{{{ ds }}}}' partition placeholder, got {uri!r}")
        if data.get("format") is None:
            default = "parquet" if uri.endswith(".parquet") else "csv" if uri.endswith(".csv") else None
            if default is None:
                raise _FieldProblem("format", f"is required when the uri does not end in .csv or .parquet ({uri!r})")
            data = {**data, "format": default}
        return data


@dataclass(frozen=True, config=_CONFIG)
class TrainConfig:
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 1e-3
    patience: PositiveInt = 10
    seed: Int = 42
    validation_fraction: Fraction = 0.2
    gpus: NonNegativeInt = 0


@dataclass(frozen=True, config=_CONFIG)
class GateConfig:
    """TFX-Evaluator-style gate: absolute thresholds, change thresholds, budgets.

    ``thresholds``: metric -> {"min": x} and/or {"max": y}.
    ``max_regression``: metric -> largest allowed relative worsening against the
    champion (0.0 = must not be worse; 0.05 = may be up to 5 % worse).
    ``budgets``: {"size_mb": x, "latency_ms": y} upper bounds.
    The metric names are checked against the model's task by :class:`ModelConfig`.
    """

    thresholds: Mapping[str, Mapping[Literal["min", "max"], Float]] = dataclasses.field(default_factory=dict)
    max_regression: Mapping[str, NonNegativeFloat] = dataclasses.field(default_factory=dict)
    budgets: Mapping[Literal["size_mb", "latency_ms"], PositiveFloat] = dataclasses.field(default_factory=dict)

    @field_validator("thresholds")
    @classmethod
    def _bounds_given(cls, value: Mapping[str, Mapping[str, float]]) -> Mapping[str, Mapping[str, float]]:
        for metric, bounds in value.items():
            if not bounds:
                raise _FieldProblem(metric, "needs 'min' and/or 'max'")
        return value


SearchableHparam = Literal["epochs", "batch_size", "learning_rate", "patience"]
# The training hyperparameters that Keras reads as whole numbers (the others are floats).
INTEGER_HPARAMS = frozenset({"epochs", "batch_size", "patience"})


@dataclass(frozen=True, config=_CONFIG)
class SearchDimension:
    """One hyperparameter's Optuna distribution: ``float``/``int`` between ``low`` and ``high``, or ``categorical``.

    The hyperparameter it belongs to is checked by :class:`SearchConfig` (an
    integer hyperparameter takes ``int`` or whole-number choices, every value > 0).
    """

    type: Literal["float", "int", "categorical"]
    low: Float | None = None
    high: Float | None = None
    log: bool = False
    step: PositiveFloat | None = None
    choices: tuple[Float, ...] | None = None

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> SearchDimension:
        if self.type == "categorical":
            for name in ("low", "high", "step"):
                if getattr(self, name) is not None:
                    raise _FieldProblem(name, "is not used by a 'categorical' distribution (it takes 'choices')")
            if not self.choices:
                raise _FieldProblem("choices", "must list at least one value")
            if len(set(self.choices)) != len(self.choices):
                raise _FieldProblem("choices", f"lists a value twice: {list(self.choices)}")
            return self
        if self.choices is not None:
            raise _FieldProblem("choices", f"is not used by a {self.type!r} distribution (it takes 'low' and 'high')")
        for name in ("low", "high"):
            if getattr(self, name) is None:
                raise _FieldProblem(name, f"is required for a {self.type!r} distribution")
        assert self.low is not None and self.high is not None
        if self.low > self.high:
            raise _FieldProblem("low", f"must not exceed high ({self.high:g}), got {self.low:g}")
        if self.log and self.step is not None:
            raise _FieldProblem("step", "cannot be combined with log: true (Optuna samples one or the other)")
        return self

    def values_checked(self, hparam: str) -> None:
        """Raise :class:`_FieldProblem` when this distribution can yield a value ``hparam`` cannot take."""
        whole = hparam in INTEGER_HPARAMS
        if self.type == "categorical":
            assert self.choices is not None
            for i, value in enumerate(self.choices):
                if value <= 0 or (whole and value != int(value)):
                    kind = "a whole number > 0" if whole else "a number > 0"
                    raise _FieldProblem(f"choices[{i}]", f"{hparam} must be {kind}, got {value!r}")
            return
        if whole != (self.type == "int"):
            raise _FieldProblem("type", f"{hparam} takes type {'int' if whole else 'float'} or categorical")
        assert self.low is not None and self.high is not None
        for name in ("low", "high"):
            value = getattr(self, name)
            if value <= 0 or (whole and value != int(value)):
                kind = "a whole number > 0" if whole else "a number > 0"
                raise _FieldProblem(name, f"{hparam} must be {kind}, got {value!r}")


def _default_space() -> dict[str, SearchDimension]:
    return {"learning_rate": SearchDimension(type="float", low=1e-4, high=1e-2, log=True)}


@dataclass(frozen=True, config=_CONFIG)
class SearchConfig:
    """The optimize branch's hyperparameter search: one mapped training task per trial.

    ``trials``: how many trials Optuna's seeded sampler proposes (= mapped tasks).
    ``min_successful``: fewer successful trials than this fails the branch.
    ``space``: hyperparameter -> Optuna distribution.
    """

    trials: Annotated[int, Strict(), Field(gt=0, le=1024)] = 4
    min_successful: PositiveInt = 1
    seed: Int = 42
    space: Mapping[SearchableHparam, SearchDimension] = dataclasses.field(default_factory=_default_space)

    @field_validator("space")
    @classmethod
    def _space_usable(cls, space: Mapping[str, SearchDimension]) -> Mapping[str, SearchDimension]:
        if not space:
            raise ValueError(f"must name at least one hyperparameter to search ({_known(get_args(SearchableHparam))})")
        for hparam, dimension in space.items():
            try:
                dimension.values_checked(hparam)
            except _FieldProblem as problem:
                raise _FieldProblem(f"{hparam}.{problem.field}", problem.problem) from None
        return space

    @model_validator(mode="after")
    def _enough_trials(self) -> SearchConfig:
        if self.min_successful > self.trials:
            raise _FieldProblem("min_successful", f"must not exceed trials ({self.trials}), got {self.min_successful}")
        return self


@dataclass(frozen=True, config=_CONFIG)
class OptimizeConfig:
    """How the optimize branch retries a candidate that failed the gate."""

    epochs: PositiveInt | None = None
    patience: PositiveInt | None = None
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    compress: CompressConfig = dataclasses.field(default_factory=CompressConfig)


@dataclass(frozen=True, config=_CONFIG)
class SloConfig:
    """Service-level objectives of the served model, measured over the monitoring window.

    Fewer than ``min_requests`` requests in the window is ``insufficient_data``,
    never ``healthy``.
    """

    min_requests: PositiveInt = 20
    max_error_ratio: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.01
    p95_latency_ms: PositiveFloat = 100.0
    p99_latency_ms: PositiveFloat = 250.0


@dataclass(frozen=True, config=_CONFIG)
class DriftConfig:
    """Input drift: the window's logged requests against the served version's training reference.

    ``psi_threshold``: a feature whose population stability index over the
    reference's ``bins`` (quantile bins of the training rows) exceeds this has
    drifted (0.1 is a small shift, 0.25 a large one, by the usual rule of thumb).
    ``mean_tolerance``: how far the window's mean may move from the reference
    mean, in reference standard deviations, before the mean expectation fails.
    ``max_validation_rows``: Great Expectations validates at most this many of
    the window's rows (a seeded sample); the drift scores use every row.
    """

    min_rows: PositiveInt = 100
    psi_threshold: PositiveFloat = 0.2
    bins: Annotated[int, Strict(), Field(ge=2, le=100)] = 10
    mean_tolerance: PositiveFloat = 0.5
    max_validation_rows: PositiveInt = 100_000


@dataclass(frozen=True, config=_CONFIG)
class MonitorConfig:
    """The ``monitor__<name>`` DAG: schedule, window, SLOs, drift, retraining cooldown, alerts.

    ``cooldown_hours``: after a drift detection requests a retraining run, later
    detections within this many hours request none (one episode, one retrain).
    ``deadline_minutes``: a lifecycle run (nightly, triggered or retraining) not finished this long after
    it was queued notifies through ``alert_conn_id`` (null: no deadline).
    ``alert_conn_id``: the Airflow Connection alerts go to (an SMTP connection
    whose extra names the recipients: ``{"to": "a@example.com"}``).
    """

    schedule: Str = "@hourly"
    window_minutes: PositiveInt = 60
    cooldown_hours: PositiveFloat = 24.0
    deadline_minutes: PositiveFloat | None = 360.0
    alert_conn_id: Str = "mlops_alerts"
    slo: SloConfig = dataclasses.field(default_factory=SloConfig)
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)

    @property
    def window(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.window_minutes)

    @property
    def cooldown(self) -> dt.timedelta:
        return dt.timedelta(hours=self.cooldown_hours)


def _k8s_object_name(name: str) -> str:
    problem = k8s_object_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


K8sObjectName = Annotated[str, Strict(), AfterValidator(_k8s_object_name)]
# A pod that cannot be scheduled (no GPU node free, no matching toleration) fails after this many
# seconds, with the scheduler's reason in the task log, instead of waiting forever.
DEFAULT_SCHEDULE_TIMEOUT_S = 600


@dataclass(frozen=True, config=_CONFIG)
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
            raise _FieldProblem("value", "must be empty when operator is 'Exists'")
        if self.operator == "Equal" and not self.key:
            raise _FieldProblem("key", "is required when operator is 'Equal' (or use operator: Exists)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise _FieldProblem("toleration_seconds", "is only allowed with effect 'NoExecute'")
        return self


@dataclass(frozen=True, config=_CONFIG)
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
    description: Str = ""
    owner: Str = "mlops"
    schedule: Str = "@daily"
    test_fraction: Fraction = 0.2
    num_classes: Annotated[int, Strict(), Field(ge=2)] | None = None
    input_shape: tuple[PositiveInt, ...] | None = None
    serving_name: Str = ""
    tags: tuple[Str, ...] = ()
    # Where the GPU steps' pods run (kubernetes backend); see docs/backends.md.
    node_selector: Mapping[Str, Str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    runtime_class_name: K8sObjectName | None = None
    priority_class_name: K8sObjectName | None = None
    schedule_timeout_seconds: Annotated[int, Strict(), Field(gt=0, le=86400)] = DEFAULT_SCHEDULE_TIMEOUT_S
    # Step -> seconds; every step of DEFAULT_STEP_TIMEOUTS is present after validation.
    timeouts: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_STEP_TIMEOUTS))

    @property
    def dag_id(self) -> str:
        return f"lifecycle__{self.name}"

    @property
    def monitor_dag_id(self) -> str:
        return f"monitor__{self.name}"

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
            raise KeyError(f"no timeout for step {step!r} (steps: {_known(self.timeouts)})")
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

    @field_validator("node_selector")
    @classmethod
    def _node_labels(cls, selector: Mapping[str, str]) -> Mapping[str, str]:
        for key, value in selector.items():
            problem = k8s_label_problem(key, value)
            if problem is not None:
                raise _FieldProblem(key, problem)
        return selector

    @field_validator("timeouts", mode="before")
    @classmethod
    def _merge_default_timeouts(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        for step, seconds in value.items():
            if step not in DEFAULT_STEP_TIMEOUTS:
                raise _FieldProblem(str(step), f"unknown step (steps: {_known(DEFAULT_STEP_TIMEOUTS)})")
            if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
                raise _FieldProblem(str(step), f"must be a positive whole number of seconds, got {seconds!r}")
        return {**DEFAULT_STEP_TIMEOUTS, **value}

    # ------------------------------------------------------------------ rules across fields

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.label in self.features:
            raise _FieldProblem("label", f"label {self.label!r} is also listed as a feature")
        known = METRICS[self.task]

        def check_metric(field_name: str, metric: str) -> None:
            if metric not in known:
                raise _FieldProblem(
                    field_name, f"unknown metric {metric!r} for task {self.task!r} (known: {_known(known)})"
                )

        if not self.metrics:
            raise _FieldProblem("metrics", f"must name at least one metric (known for {self.task!r}: {_known(known)})")
        for i, metric in enumerate(self.metrics):
            check_metric(f"metrics[{i}]", metric)
        for metric in self.gate.thresholds:
            check_metric(f"gate.thresholds.{metric}", metric)
        for metric in self.gate.max_regression:
            check_metric(f"gate.max_regression.{metric}", metric)
        if self.task == "classification" and self.num_classes is None:
            raise _FieldProblem("num_classes", "is required for a classification model")
        if self.input_shape is not None:
            size = 1
            for dim in self.input_shape:
                size *= dim
            if size != len(self.features):
                raise _FieldProblem(
                    "input_shape",
                    f"{list(self.input_shape)} holds {size} values but there are {len(self.features)} features",
                )
        if not self.serving_name:
            # Served under the model's own name unless the config says otherwise.
            object.__setattr__(self, "serving_name", self.name)
        problem = serving_name_problem(self.serving_name)
        if problem is not None:
            raise _FieldProblem("serving_name", problem)
        return self


def _defines_build(path: Path) -> bool:
    """True when the builder module defines a top-level ``build`` function.

    Read with :mod:`ast` rather than imported, so that parsing a DAG never
    imports Keras.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(node, ast.FunctionDef) and node.name == "build" for node in tree.body)


# --------------------------------------------------------------------------- pydantic errors -> ConfigError

_MODEL_CONFIG = TypeAdapter(ModelConfig)


def _field_name(loc: Sequence[str | int]) -> str:
    name = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "<root>"


def _allowed_fields(loc: Sequence[str | int]) -> list[str]:
    """The field names of the config type found at ``loc`` (for 'unknown field' messages)."""
    kind: Any = ModelConfig
    for part in loc:
        if isinstance(part, int) and get_args(kind):
            # An item of a list field, e.g. tolerations[0]: tuple[Toleration, ...] -> Toleration.
            kind = get_args(kind)[0]
            continue
        hints = get_type_hints(kind) if dataclasses.is_dataclass(kind) else {}
        if part not in hints:
            return []
        kind = hints[part]
    if not dataclasses.is_dataclass(kind):
        return []
    return sorted(f.name for f in dataclasses.fields(kind) if f.name != "path")


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """(dotted field, problem) for one pydantic error, in the words of a config file."""
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _FieldProblem):
        return _field_name((*loc, *cause.field.split("."))), cause.problem
    # pydantic lists a Literal's values as "'a', 'b' or 'c'".
    expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
    if "[key]" in loc and kind == "literal_error":
        return _field_name(loc), f"unknown field (allowed: {expected})"
    got = f"{type(value).__name__} {value!r}"
    unknown_field = f"unknown field (allowed: {', '.join(_allowed_fields(loc[:-1]))})"
    problems = {
        "missing": "is required",
        "extra_forbidden": unknown_field,
        "unexpected_keyword_argument": unknown_field,
        "literal_error": f"unknown value {value!r} (known: {expected})",
        "int_type": f"expected int, got {got}",
        "int_from_float": f"expected int, got {got}",
        "float_type": f"must be a number, got {got}",
        "string_type": f"expected a string, got {got}",
        "bool_type": f"expected true or false, got {got}",
        "dict_type": f"expected a mapping, got {got}",
        "tuple_type": f"expected a list, got {got}",
        "dataclass_type": f"expected a mapping, got {got}",
        "greater_than": f"must be > {ctx.get('gt', 0):g}, got {value}",
        "greater_than_equal": f"must be >= {ctx.get('ge', 0):g}, got {value}",
        "less_than_equal": f"must be <= {ctx.get('le', 0):g}, got {value}",
        "date_type": f"expected an ISO date (YYYY-MM-DD), got {value!r}",
        "date_parsing": f"expected an ISO date (YYYY-MM-DD), got {value!r}",
        "date_from_datetime_parsing": f"expected an ISO date (YYYY-MM-DD), got {value!r}",
        "date_from_datetime_inexact": f"expected an ISO date (YYYY-MM-DD), got {value!r}",
    }
    if kind in problems:
        return _field_name(loc), problems[kind]
    if kind == "value_error" and cause is not None:
        return _field_name(loc), str(cause)
    return _field_name(loc), error["msg"]


def _config_error(path: Path, exc: ValidationError) -> ConfigError:
    described = [_describe(e) for e in exc.errors()]
    field_name, problem = described[0]
    more = [f"{path}: field '{f}': {p}" for f, p in described[1:]]
    return ConfigError(path, field_name, problem, more)


# --------------------------------------------------------------------------- loading


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Parse and validate one model config file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(path, "<root>", f"invalid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(path, "<root>", f"cannot read the file: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "<root>", f"expected a mapping of fields, got {type(raw).__name__}")
    if "path" in raw:
        raise ConfigError(path, "path", "unknown field (the config's path is where the file lies)")
    document = {key: value for key, value in raw.items() if value is not None}
    try:
        return _MODEL_CONFIG.validate_python(
            {**document, "path": path.resolve()}, context={"source_file": path.resolve()}
        )
    except ValidationError as exc:
        raise _config_error(path, exc) from None


def models_dir() -> Path:
    """The folder holding model configs: ``$MLOPS_MODELS_DIR`` or ``include/models``."""
    return Path(os.environ.get("MLOPS_MODELS_DIR", DEFAULT_MODELS_DIR))


def gx_dir() -> Path:
    """The folder holding the Great Expectations suites: ``$MLOPS_GX_DIR`` or ``include/gx``."""
    return Path(os.environ.get("MLOPS_GX_DIR", DEFAULT_GX_DIR))


def _serving_name_clashes(configs: Sequence[ModelConfig]) -> dict[Path, ConfigError]:
    """A ConfigError for every config whose serving name another config also uses.

    Both sides are refused: two models under one serving name would interleave
    their versions and move each other's labels, and neither file is more right.
    """
    users: dict[str, list[ModelConfig]] = {}
    for config in configs:
        users.setdefault(config.serving_name, []).append(config)
    errors: dict[Path, ConfigError] = {}
    for serving_name, sharing in users.items():
        if len(sharing) < 2:
            continue
        files = ", ".join(str(c.path) for c in sharing)
        for config in sharing:
            errors[config.path] = ConfigError(
                config.path,
                "serving_name",
                f"serving name {serving_name!r} is used by more than one model config ({files}); "
                "give each model its own serving_name",
            )
    return errors


def scan_model_configs(
    directory: str | os.PathLike[str] | None = None,
) -> tuple[list[ModelConfig], dict[Path, ConfigError]]:
    """Every valid config in ``directory`` (sorted by name), and the error of every invalid one.

    One broken file never hides the others; the DAG files use this so that
    each broken config shows up as its own failing DAG.
    """
    directory = Path(directory) if directory is not None else models_dir()
    configs: list[ModelConfig] = []
    errors: dict[Path, ConfigError] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            configs.append(load_model_config(path))
        except ConfigError as exc:
            errors[path.resolve()] = exc
    clashes = _serving_name_clashes(configs)
    errors.update(clashes)
    return [c for c in configs if c.path not in clashes], dict(sorted(errors.items()))


def load_model_configs(directory: str | os.PathLike[str] | None = None) -> list[ModelConfig]:
    """Every ``*.yaml`` config in ``directory``, sorted by name; raises on the first invalid one."""
    configs, errors = scan_model_configs(directory)
    if errors:
        raise next(iter(errors.values()))
    return configs


def find_model_config(name: str, directory: str | os.PathLike[str] | None = None) -> ModelConfig:
    """The config named ``name``, refused if its serving name clashes with another config's."""
    directory = Path(directory) if directory is not None else models_dir()
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(directory.glob("*.yaml"))) or "none"
        raise ConfigError(path, "name", f"no model config named {name!r} in {directory} (known: {known})")
    config = load_model_config(path)
    # The siblings that fail to load cannot claim the name; their own DAGs report them.
    siblings = [config]
    for other in sorted(directory.glob("*.yaml")):
        if other.resolve() != config.path:
            try:
                siblings.append(load_model_config(other))
            except ConfigError:
                continue
    clash = _serving_name_clashes(siblings).get(config.path)
    if clash is not None:
        raise clash
    return config
