"""The steps, each declared once: the CLI, the model configs and the Airflow glue read them here.

- :mod:`~include.mlops.steps.declaration`: what a :class:`Step` holds, and the registry.
- :mod:`~include.mlops.steps.lifecycle`: the lifecycle's steps (snapshot ... drift).
- :mod:`~include.mlops.steps.runners`: how each of them calls its step function.

More steps can be declared from outside the library: a module that calls
:func:`declare` (or :func:`register_step`), named in ``$MLOPS_STEP_MODULES``
(comma-separated, importable where the steps run), is imported before the
registry is first read.

Importing this package is cheap (the standard library only): the step
functions are imported by their runners when a step runs.
"""

from __future__ import annotations

from include.mlops.steps import lifecycle as _lifecycle  # noqa: F401  (registers the lifecycle's steps)
from include.mlops.steps.declaration import (
    DEFAULT_STEP_TIMEOUTS,
    STEP_MODULES_ENV,
    Argument,
    Runner,
    Step,
    StepResultError,
    UnknownStepError,
    bad_input_errors,
    declare,
    get_step,
    parse_csv,
    parse_datetime,
    parse_json_object,
    register_step,
    registered_steps,
    runtime_cap,
    unregister_step,
)

__all__ = [
    "DEFAULT_STEP_TIMEOUTS",
    "STEP_MODULES_ENV",
    "Argument",
    "Runner",
    "Step",
    "StepResultError",
    "UnknownStepError",
    "bad_input_errors",
    "declare",
    "get_step",
    "parse_csv",
    "parse_datetime",
    "parse_json_object",
    "register_step",
    "registered_steps",
    "runtime_cap",
    "unregister_step",
]
