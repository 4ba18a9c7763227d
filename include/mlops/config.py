"""Model configs: one YAML file per model in ``include/models/``.

Loading a config is cheap (PyYAML and the standard library only), because the
DAG files call it at parse time.  Every problem is reported as a
:class:`ConfigError` that names the file and the dotted field, so that an
Airflow import error reads e.g. ``diabetes.yaml: field 'metrics[1]': unknown
metric 'auc' for task 'regression' (known: mae, mse, r2, rmse)``.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = PROJECT_ROOT / "include" / "models"
DEFAULT_GX_DIR = PROJECT_ROOT / "include" / "gx"

TASKS = ("regression", "classification")
# Metric name -> True when higher is better.  Evaluate computes exactly these.
METRICS: dict[str, dict[str, bool]] = {
    "regression": {"mae": False, "mse": False, "rmse": False, "r2": True},
    "classification": {"accuracy": True, "macro_f1": True, "log_loss": False},
}
# Measured by evaluate for every task; budgets apply to them.
BUDGET_METRICS = {"size_mb": False, "latency_ms": False}
# Runtime cap per step, in seconds (``timeouts`` in a model config overrides them): the task's
# execution_timeout, and a Kubernetes pod's activeDeadlineSeconds.
DEFAULT_STEP_TIMEOUTS: dict[str, int] = {
    "snapshot": 900,
    "validate": 900,
    "train": 7200,
    "evaluate": 1800,
    "optimize": 14400,
    "register": 900,
    "deploy": 1200,
}
BUNDLED_DATASETS = ("diabetes", "digits", "breast_cancer", "wine")
SOURCE_FORMATS = ("csv", "parquet")


class ConfigError(ValueError):
    """A model config is invalid.  The message names the file and the field."""

    def __init__(self, path: str | os.PathLike[str], field_name: str, problem: str) -> None:
        self.path = str(path)
        self.field = field_name
        self.problem = problem
        super().__init__(f"{self.path}: field '{field_name}': {problem}")


@dataclass(frozen=True)
class SourceConfig:
    """Where the training data comes from.

    ``bundled``: a scikit-learn dataset, released as daily arrivals from
    ``start_date`` (``initial_fraction`` on the first day, then ``daily_rows``
    more per day) so that nightly runs see the data grow.

    ``uri``: a file or object-store URI template with a ``{{ ds }}`` partition,
    read for each day of the ``lookback_days`` ending with the run's interval.
    """

    kind: str
    dataset: str | None = None
    start_date: dt.date | None = None
    initial_fraction: float = 0.5
    daily_rows: int = 10
    uri: str | None = None
    format: str | None = None
    lookback_days: int = 1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 10
    seed: int = 42
    validation_fraction: float = 0.2
    gpus: int = 0


@dataclass(frozen=True)
class GateConfig:
    """TFX-Evaluator-style gate: absolute thresholds, change thresholds, budgets.

    ``thresholds``: metric -> {"min": x} and/or {"max": y}.
    ``max_regression``: metric -> largest allowed relative worsening against the
    champion (0.0 = must not be worse; 0.05 = may be up to 5 % worse).
    ``budgets``: {"size_mb": x, "latency_ms": y} upper bounds.
    """

    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    max_regression: Mapping[str, float] = field(default_factory=dict)
    budgets: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizeConfig:
    """How the optimize branch retries a candidate that failed the gate."""

    epochs: int | None = None
    patience: int | None = None
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    quantize: str = "auto"  # auto: when a size or latency budget failed; always; never


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path
    task: str
    builder: str
    source: SourceConfig
    features: tuple[str, ...]
    label: str
    metrics: tuple[str, ...]
    train: TrainConfig
    gate: GateConfig
    optimize: OptimizeConfig
    description: str = ""
    owner: str = "mlops"
    schedule: str = "@daily"
    test_fraction: float = 0.2
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    serving_name: str = ""
    tags: tuple[str, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    timeouts: Mapping[str, int] = field(default_factory=dict)

    @property
    def dag_id(self) -> str:
        return f"lifecycle__{self.name}"

    @property
    def builder_path(self) -> Path:
        return self.path.parent / f"{self.builder}.py"

    @property
    def suite_path(self) -> Path:
        """The model's Great Expectations suite: ``<gx dir>/<name>.json``."""
        return gx_dir() / f"{self.name}.json"

    def step_timeout(self, step: str) -> dt.timedelta:
        """The runtime cap of ``step``: ``timeouts[step]`` from the config, else the step's default."""
        seconds = {**DEFAULT_STEP_TIMEOUTS, **self.timeouts}.get(step)
        if seconds is None:
            raise ValueError(f"no runtime cap for unknown step {step!r} (steps: {', '.join(DEFAULT_STEP_TIMEOUTS)})")
        return dt.timedelta(seconds=seconds)

    def higher_is_better(self, metric: str) -> bool:
        known = {**METRICS[self.task], **BUDGET_METRICS}
        return known[metric]


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to one mapping of the YAML document, with field paths in errors."""

    def __init__(self, path: Path, data: Any, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix
        if not isinstance(data, Mapping):
            raise ConfigError(path, prefix or "<root>", f"expected a mapping, got {type(data).__name__}")
        self.data = data

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self._name(key), problem)

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, choices: Iterable[Any] | None = None
    ) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        # YAML reads 1 as int where a float is meant; accept it.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind in (int, float):
            raise self.error(key, f"expected {kind.__name__}, got bool")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(key, f"expected {want}, got {type(value).__name__} {value!r}")
        if choices is not None and value not in tuple(choices):
            raise self.error(key, f"unknown value {value!r} (known: {', '.join(map(str, choices))})")
        return value

    def child(self, key: str, required: bool = False) -> _Reader:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            value = {}
        return _Reader(self.path, value, self._name(key))

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            raise self.error(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _positive(reader: _Reader, key: str, value: float | int, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise reader.error(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _fraction(reader: _Reader, key: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise reader.error(key, f"must be between 0 and 1 (exclusive), got {value}")


def _builder_defines_build(path: Path) -> bool:
    """True when the builder module defines a top-level ``build`` function.

    Read with :mod:`ast` rather than imported, so that parsing a DAG never
    imports Keras.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(node, ast.FunctionDef) and node.name == "build" for node in tree.body)


def _parse_source(reader: _Reader) -> SourceConfig:
    kind = reader.get("kind", str, choices=("bundled", "uri"))
    if kind == "bundled":
        reader.reject_unknown({"kind", "dataset", "start_date", "initial_fraction", "daily_rows"})
        start = reader.get("start_date", (dt.date, str))
        if isinstance(start, str):
            try:
                start = dt.date.fromisoformat(start)
            except ValueError:
                raise reader.error("start_date", f"expected an ISO date (YYYY-MM-DD), got {start!r}") from None
        fraction = reader.get("initial_fraction", float, 0.5)
        _fraction(reader, "initial_fraction", fraction)
        daily_rows = reader.get("daily_rows", int, 10)
        _positive(reader, "daily_rows", daily_rows, allow_zero=True)
        return SourceConfig(
            kind=kind,
            dataset=reader.get("dataset", str, choices=BUNDLED_DATASETS),
            start_date=start,
            initial_fraction=fraction,
            daily_rows=daily_rows,
        )
    reader.reject_unknown({"kind", "uri", "format", "lookback_days"})
    uri = reader.get("uri", str)
    if "{{ ds }}" not in uri and "{{ds}}" not in uri:
        raise reader.error("uri", f"must contain a '{{{{ ds }}}}' partition placeholder, got {uri!r}")
    default_format = "parquet" if uri.endswith(".parquet") else "csv" if uri.endswith(".csv") else ...
    lookback = reader.get("lookback_days", int, 1)
    _positive(reader, "lookback_days", lookback)
    return SourceConfig(
        kind=kind,
        uri=uri,
        format=reader.get("format", str, default_format, choices=SOURCE_FORMATS),
        lookback_days=lookback,
    )


def _parse_gate(reader: _Reader, task: str) -> GateConfig:
    reader.reject_unknown({"thresholds", "max_regression", "budgets"})
    known = METRICS[task]
    thresholds: dict[str, dict[str, float]] = {}
    t_reader = reader.child("thresholds")
    for metric in t_reader.data:
        if metric not in known:
            raise t_reader.error(
                metric, f"unknown metric {metric!r} for task {task!r} (known: {', '.join(sorted(known))})"
            )
        bounds = t_reader.child(metric)
        bounds.reject_unknown({"min", "max"})
        thresholds[metric] = {k: bounds.get(k, float) for k in ("min", "max") if k in bounds.data}
        if not thresholds[metric]:
            raise t_reader.error(metric, "needs 'min' and/or 'max'")
    r_reader = reader.child("max_regression")
    max_regression: dict[str, float] = {}
    for metric in r_reader.data:
        if metric not in known:
            raise r_reader.error(
                metric, f"unknown metric {metric!r} for task {task!r} (known: {', '.join(sorted(known))})"
            )
        max_regression[metric] = r_reader.get(metric, float)
        _positive(r_reader, metric, max_regression[metric], allow_zero=True)
    b_reader = reader.child("budgets")
    b_reader.reject_unknown(BUDGET_METRICS)
    budgets = {k: b_reader.get(k, float) for k in BUDGET_METRICS if k in b_reader.data}
    for key, value in budgets.items():
        _positive(b_reader, key, value)
    return GateConfig(thresholds=thresholds, max_regression=max_regression, budgets=budgets)


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Parse and validate one model config file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(path, "<root>", f"invalid YAML: {exc}") from None
    root = _Reader(path, raw)
    root.reject_unknown(
        {
            "name", "description", "owner", "task", "builder", "source", "features", "label", "metrics",
            "train", "gate", "optimize", "schedule", "test_fraction", "num_classes", "input_shape",
            "serving_name", "tags", "node_selector", "tolerations", "timeouts",
        }
    )  # fmt: skip
    name = root.get("name", str)
    if not name.replace("_", "").isalnum() or not name[0].isalpha():
        raise root.error("name", f"must be letters, digits and underscores, starting with a letter; got {name!r}")
    if name != path.stem:
        raise root.error("name", f"must match the file name {path.stem!r}, got {name!r}")
    task = root.get("task", str, choices=TASKS)

    builder = root.get("builder", str)
    builder_path = path.parent / f"{builder}.py"
    if not builder_path.is_file():
        raise root.error("builder", f"unknown builder {builder!r}: no module {builder_path.name} beside the config")
    if not _builder_defines_build(builder_path):
        raise root.error("builder", f"builder module {builder_path.name} defines no top-level 'build' function")

    features = root.get("features", list)
    if not features or not all(isinstance(f, str) for f in features):
        raise root.error("features", "must be a non-empty list of column names")
    if len(set(features)) != len(features):
        raise root.error("features", "contains duplicate column names")
    label = root.get("label", str)
    if label in features:
        raise root.error("label", f"label {label!r} is also listed as a feature")

    metrics = root.get("metrics", list)
    for i, metric in enumerate(metrics):
        if metric not in METRICS[task]:
            raise ConfigError(
                path,
                f"metrics[{i}]",
                f"unknown metric {metric!r} for task {task!r} (known: {', '.join(sorted(METRICS[task]))})",
            )
    if not metrics:
        raise root.error("metrics", "must name at least one metric")

    t = root.child("train")
    t.reject_unknown(TrainConfig.__dataclass_fields__)
    train = TrainConfig(
        epochs=t.get("epochs", int, TrainConfig.epochs),
        batch_size=t.get("batch_size", int, TrainConfig.batch_size),
        learning_rate=t.get("learning_rate", float, TrainConfig.learning_rate),
        patience=t.get("patience", int, TrainConfig.patience),
        seed=t.get("seed", int, TrainConfig.seed),
        validation_fraction=t.get("validation_fraction", float, TrainConfig.validation_fraction),
        gpus=t.get("gpus", int, TrainConfig.gpus),
    )
    for key in ("epochs", "batch_size", "learning_rate", "patience"):
        _positive(t, key, getattr(train, key))
    _positive(t, "gpus", train.gpus, allow_zero=True)
    _fraction(t, "validation_fraction", train.validation_fraction)

    o = root.child("optimize")
    o.reject_unknown({"epochs", "patience", "grid", "quantize"})
    grid_reader = o.child("grid")
    grid: dict[str, tuple[Any, ...]] = {}
    for key in grid_reader.data:
        if key not in ("epochs", "batch_size", "learning_rate", "patience"):
            raise grid_reader.error(key, "only epochs, batch_size, learning_rate and patience can be searched")
        values = grid_reader.get(key, list)
        if not values:
            raise grid_reader.error(key, "must list at least one value")
        grid[key] = tuple(values)
    optimize = OptimizeConfig(
        epochs=o.get("epochs", int, None),
        patience=o.get("patience", int, None),
        grid=grid,
        quantize=o.get("quantize", str, "auto", choices=("auto", "always", "never")),
    )

    num_classes = root.get("num_classes", int, None)
    if task == "classification" and num_classes is None:
        raise root.error("num_classes", "is required for a classification model")
    if num_classes is not None and num_classes < 2:
        raise root.error("num_classes", f"must be >= 2, got {num_classes}")
    input_shape = root.get("input_shape", list, None)
    if input_shape is not None:
        size = 1
        for dim in input_shape:
            size *= dim
        if size != len(features):
            raise root.error("input_shape", f"{input_shape} holds {size} values but there are {len(features)} features")

    test_fraction = root.get("test_fraction", float, 0.2)
    _fraction(root, "test_fraction", test_fraction)
    tolerations = root.get("tolerations", list, [])
    caps = root.child("timeouts")
    caps.reject_unknown(DEFAULT_STEP_TIMEOUTS)
    timeouts = {step: caps.get(step, int) for step in DEFAULT_STEP_TIMEOUTS if step in caps.data}
    for step, seconds in timeouts.items():
        _positive(caps, step, seconds)
    return ModelConfig(
        name=name,
        path=path.resolve(),
        task=task,
        builder=builder,
        source=_parse_source(root.child("source", required=True)),
        features=tuple(features),
        label=label,
        metrics=tuple(metrics),
        train=train,
        gate=_parse_gate(root.child("gate"), task),
        optimize=optimize,
        description=root.get("description", str, ""),
        owner=root.get("owner", str, "mlops"),
        schedule=root.get("schedule", str, "@daily"),
        test_fraction=test_fraction,
        num_classes=num_classes,
        input_shape=tuple(input_shape) if input_shape else None,
        serving_name=root.get("serving_name", str, name),
        tags=tuple(root.get("tags", list, [])),
        node_selector=dict(root.get("node_selector", dict, {})),
        tolerations=tuple(tolerations),
        timeouts=timeouts,
    )


def models_dir() -> Path:
    """The folder holding model configs: ``$MLOPS_MODELS_DIR`` or ``include/models``."""
    return Path(os.environ.get("MLOPS_MODELS_DIR", DEFAULT_MODELS_DIR))


def gx_dir() -> Path:
    """The folder holding the Great Expectations suites: ``$MLOPS_GX_DIR`` or ``include/gx``."""
    return Path(os.environ.get("MLOPS_GX_DIR", DEFAULT_GX_DIR))


def load_model_configs(directory: str | os.PathLike[str] | None = None) -> list[ModelConfig]:
    """Every ``*.yaml`` config in ``directory``, sorted by name.

    Raises on the first invalid config: an import error in Airflow is the
    loudest place to report it.
    """
    directory = Path(directory) if directory is not None else models_dir()
    return [load_model_config(p) for p in sorted(directory.glob("*.yaml"))]


def find_model_config(name: str, directory: str | os.PathLike[str] | None = None) -> ModelConfig:
    directory = Path(directory) if directory is not None else models_dir()
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(directory.glob("*.yaml"))) or "none"
        raise ConfigError(path, "name", f"no model config named {name!r} in {directory} (known: {known})")
    return load_model_config(path)
