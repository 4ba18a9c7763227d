"""What every backend's step task shares: the step's argv, its arguments at run time, and its exit code.

One place for each rule, so the ``local``, ``docker`` and ``kubernetes``
backends cannot drift apart:

- :func:`step_command`: the step CLI's argv (``python -m include.mlops <step> ...``).
- :func:`resolve_step_arguments`: the task's arguments at run time (static ones,
  the resolver's from upstream XComs, ``--models-dir`` and ``--out``).
- :func:`raise_for_exit_code`: exit 3 (bad input) fails the task without
  retrying; any other non-zero exit is retried.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from include.mlops import artifact_store
from include.mlops.artifacts import run_dir
from include.mlops.exit_codes import EXIT_BAD_INPUT

ArgumentResolver = Callable[[Context], Mapping[str, Any]]

__all__ = [
    "EXIT_BAD_INPUT",
    "ArgumentResolver",
    "StepBadInputError",
    "StepFailedError",
    "raise_for_exit_code",
    "resolve_step_arguments",
    "result_file_beside",
    "step_command",
]


class StepBadInputError(AirflowFailException):
    """The step exited 3: its input is bad (data, config, a contract), so a retry cannot help."""


class StepFailedError(AirflowException):
    """The step failed for another reason (exit code other than 0 and 3): the task is retried."""


def step_command(step: str, model: str, arguments: Mapping[str, Any]) -> list[str]:
    """The step CLI's argv for ``arguments`` (``{"data": "/x"}`` -> ``--data /x``)."""
    argv = [sys.executable, "-m", "include.mlops", step, "--model", model]
    # On object storage, paths in this worker's mirror go as URIs: the step pulls them into its own mirror.
    for key, value in artifact_store.portable(dict(arguments)).items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (dict, list)):
            argv += [flag, json.dumps(value, sort_keys=True)]
        else:
            argv += [flag, str(value)]
    return argv


def resolve_step_arguments(
    context: Context,
    *,
    static: Mapping[str, Any],
    resolver: ArgumentResolver | None,
    models_dir: str | None,
    dag_id: str,
    task_id: str,
    root: Path | None = None,
) -> dict[str, Any]:
    """The step's arguments for this try: ``static``, then the resolver's (upstream XComs), then ``--out``.

    ``--out`` is the task's run folder, ``runs/<dag_id>/<run_id>/<task_id>``
    under ``root`` (the artifact root as the step sees it; the worker's by default);
    a mapped task instance gets its own ``<map_index>`` folder inside it.
    """
    arguments: dict[str, Any] = dict(static)
    if resolver is not None:
        arguments.update(resolver(context))
    if models_dir:
        arguments["models_dir"] = models_dir
    out = run_dir(dag_id, context["dag_run"].run_id, task_id, root=root)
    map_index = getattr(context["ti"], "map_index", None)
    if map_index is not None and map_index >= 0:
        out = out / str(map_index)
    arguments["out"] = str(out)
    return arguments


def raise_for_exit_code(exit_code: int | None, message: str) -> NoReturn:
    """Fail the task for a step that exited ``exit_code``: without retries for bad input (3), else retried.

    ``None`` (the exit code is unknown, e.g. the container vanished) is retried:
    only a step that said so itself is treated as bad input.
    """
    if exit_code == EXIT_BAD_INPUT:
        raise StepBadInputError(f"{message}\n(exit {EXIT_BAD_INPUT}: bad input, so the task is not retried)")
    raise StepFailedError(message)


def result_file_beside(out: Path, attempt: str) -> Path:
    """Where a container step writes its JSON result (``--result-file``) for one attempt.

    In the run folder, beside the step's ``--out`` folder rather than inside it: the
    step replaces ``--out`` as a whole (staged, then renamed), and the file must be
    on the artifact share that the worker reads it from.
    """
    return out.parent / f".{out.name}.result-{attempt}.json"
