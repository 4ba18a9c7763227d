"""Loading model configs: one YAML file per model in ``include/models/``.

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

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml
from pydantic import TypeAdapter, ValidationError

from include.mlops.config._fields import FieldProblem
from include.mlops.config.model import ModelConfig
from include.mlops.config.paths import models_dir


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
        kind = _unless_none(hints[part])
    if not dataclasses.is_dataclass(kind):
        return []
    return sorted(f.name for f in dataclasses.fields(kind) if f.name != "path")


def _unless_none(kind: Any) -> Any:
    """``X`` for an optional block typed ``X | None``; any other type as it is."""
    members = [member for member in get_args(kind) if member is not type(None)]
    if len(members) == 1 and type(None) in get_args(kind):
        return members[0]
    return kind


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """(dotted field, problem) for one pydantic error, in the words of a config file."""
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, FieldProblem):
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
