"""What a step declaration holds, and the registry of declared steps.

A :class:`Step` is everything the project needs to know about one step, in
one place: its CLI name, help and arguments, the function that runs it, its
default runtime cap, which of its library's errors mean bad input (exit 3),
whether it gets GPUs or the larger pod, and the keys its JSON result always
has.  The step CLI, the model configs' ``timeouts`` and the Airflow glue all
read the declarations; none keeps its own list of steps.

This module imports only the standard library, not even the model config
type: the model configs import it for the default runtime caps (at DAG parse
time), and the step functions are imported by their runners only when a step
runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

# Runs a step: the model config (an include.mlops.config.ModelConfig) and the parsed CLI arguments in,
# the step's JSON result (a few KB) out.
Runner = Callable[[Any, argparse.Namespace], Mapping[str, Any]]
# Modules of further step declarations, comma-separated, imported before the registry is first read.
STEP_MODULES_ENV = "MLOPS_STEP_MODULES"
# Runtime cap of a step that declares none.
DEFAULT_TIMEOUT_S = 900


def parse_datetime(value: str) -> dt.datetime:
    """An ISO 8601 datetime; a naive one is taken as UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 datetime, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(parsed).__name__}")
    return parsed


def parse_csv(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


@dataclasses.dataclass(frozen=True)
class Argument:
    """One option of a step's subcommand, as ``argparse`` takes it (``--data PATH``)."""

    flag: str
    help: str | None = None
    type: Callable[[str], Any] | None = None
    required: bool = False
    default: Any = None
    # "store_true": a switch (the operators pass True as the bare flag, False not at all).
    action: str | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.action is not None:
            parser.add_argument(self.flag, action=self.action, help=self.help)
            return
        options: dict[str, Any] = {"required": self.required, "help": self.help}
        if self.type is not None:
            options["type"] = self.type
        if self.default is not None:
            options["default"] = self.default
        parser.add_argument(self.flag, **options)


class StepResultError(RuntimeError):
    """A step returned a result without a key its declaration promises (a bug in the step: retried, exit 1)."""


class UnknownStepError(KeyError):
    """No step of that name is declared."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Step:
    """The declaration of one step: see the module docstring.

    :param name: the CLI subcommand (``tune-trial``); also the step's key in a
        model config's ``timeouts`` and the ``mlops/step`` label of its pods.
    :param help: one line, shown by ``--help`` and in the README's table.
    :param runner: runs the step; it imports the step's library module itself,
        so that declaring the step costs nothing.
    :param arguments: the subcommand's own options, after the common ones
        (``--model``, ``--models-dir``, ``--out``, ``--result-file``).
    :param timeout_s: the default runtime cap (a model config's ``timeouts`` overrides it).
    :param bad_input: exception types, as ``(module, class name)``, that mean
        the input is bad (exit 3); looked up only in modules already imported.
    :param gpus: the step trains, so it gets the model's ``train.gpus`` GPUs.
    :param heavy: the step gets the larger CPU and memory requests (kubernetes backend).
    :param result_keys: keys that every result of the step has (some may be
        null); the CLI refuses a result without one of them.
    """

    name: str
    help: str
    runner: Runner
    arguments: tuple[Argument, ...] = ()
    timeout_s: int = DEFAULT_TIMEOUT_S
    bad_input: tuple[tuple[str, str], ...] = ()
    gpus: bool = False
    heavy: bool = False
    result_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not all(part.isalnum() and part.islower() for part in self.name.split("-")):
            raise ValueError(f"step name must be lower-case words joined by '-', got {self.name!r}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int) or self.timeout_s <= 0:
            raise ValueError(f"step {self.name!r}: timeout_s must be a positive whole number, got {self.timeout_s!r}")

    def run(self, config: Any, args: argparse.Namespace) -> dict[str, Any]:
        """Run the step and check its result against :attr:`result_keys`."""
        result = dict(self.runner(config, args))
        missing = [key for key in self.result_keys if key not in result]
        if missing:
            raise StepResultError(f"step {self.name!r} returned a result without {missing} (got {sorted(result)})")
        return result


_REGISTRY: dict[str, Step] = {}


def register_step(step: Step) -> Step:
    """Add ``step`` to the registry (after the ones declared before it); returns it.

    Registering the same declaration again is a no-op; another step under a
    name already taken is an error, so that two declarations cannot disagree.
    """
    known = _REGISTRY.get(step.name)
    if known is not None and known != step:
        raise ValueError(f"step {step.name!r} is already declared differently")
    _REGISTRY[step.name] = step
    return step


def declare(name: str, help: str, runner: Runner, **fields: Any) -> Step:
    """Declare and register a step: ``declare("touch", "write a file", run_touch, timeout_s=60)``."""
    return register_step(Step(name=name, help=help, runner=runner, **fields))


def unregister_step(name: str) -> None:
    """Remove a declared step (tests that declare their own)."""
    _REGISTRY.pop(name, None)


def _import_step_modules() -> None:
    """Import the modules of further declarations named in ``$MLOPS_STEP_MODULES`` (cached by ``sys.modules``)."""
    for module in os.environ.get(STEP_MODULES_ENV, "").split(","):
        module = module.strip()
        if module and module not in sys.modules:
            importlib.import_module(module)


def registered_steps() -> Mapping[str, Step]:
    """Every declared step, by name, in declaration order: the lifecycle's, then those of ``$MLOPS_STEP_MODULES``.

    (The lifecycle's own steps are registered by the package's import, which precedes this module's.)
    """
    _import_step_modules()
    return types.MappingProxyType(_REGISTRY)


def get_step(name: str) -> Step:
    """The declaration of step ``name``; :class:`UnknownStepError` names the declared ones."""
    known = _REGISTRY.get(name)
    if known is not None:  # the DAG factory asks once per task at parse time: keep it a dict lookup
        return known
    steps = registered_steps()
    if name not in steps:
        raise UnknownStepError(f"unknown step {name!r} (declared: {', '.join(steps)})")
    return steps[name]


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input, from every declaration, whose modules are already imported.

    An error type means bad input whichever step raises it (a corrupt registry
    version found by evaluate's champion lookup is as bad as one found by
    deploy), so the declarations are pooled.
    """
    errors: list[type[BaseException]] = []
    for step in registered_steps().values():
        for module, name in step.bad_input:
            loaded = sys.modules.get(module)
            error = getattr(loaded, name, None) if loaded is not None else None
            if isinstance(error, type) and issubclass(error, BaseException) and error not in errors:
                errors.append(error)
    return tuple(errors)


def runtime_cap(step: str, timeouts: Mapping[str, int] | None = None) -> dt.timedelta:
    """How long ``step`` may run: its entry in ``timeouts`` (a model config's), else its declared default."""
    seconds = (timeouts or {}).get(step)
    return dt.timedelta(seconds=seconds if seconds is not None else get_step(step).timeout_s)


class _DeclaredTimeouts(Mapping[str, int]):
    """Step name -> default runtime cap in seconds, read from the registry on every access.

    A live view rather than a dict copied at import: a step declared later (a
    ``$MLOPS_STEP_MODULES`` module, a test) is known to the model configs loaded after it.
    """

    def __getitem__(self, name: str) -> int:
        try:
            return get_step(name).timeout_s
        except UnknownStepError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(registered_steps()))

    def __len__(self) -> int:
        return len(registered_steps())

    def __repr__(self) -> str:
        return repr(dict(self))


DEFAULT_STEP_TIMEOUTS: Mapping[str, int] = _DeclaredTimeouts()
