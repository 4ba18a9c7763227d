"""The operator that runs one lifecycle step through the step CLI.

On the embedded default (the ``local`` backend) the worker runs
``python -m include.mlops <step> ...`` as a subprocess, streams its log into
the task log, and returns the step's JSON result as the task's XCom.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from include.mlops.artifacts import run_dir
from include.mlops.config import PROJECT_ROOT

# Exit code of the step CLI for bad input (bad data, invalid config, corrupt
# model): retrying cannot help, so the task fails without retries.
EXIT_BAD_INPUT = 3

ArgumentResolver = Callable[[Context], Mapping[str, Any]]


def step_command(step: str, model: str, arguments: Mapping[str, Any]) -> list[str]:
    """The step CLI's argv for ``arguments`` (``{"data": "/x"}`` -> ``--data /x``)."""
    argv = [sys.executable, "-m", "include.mlops", step, "--model", model]
    for key, value in arguments.items():
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


class LifecycleStepOperator(BaseOperator):
    """Run lifecycle step ``step`` of model ``model`` as a local process.

    :param step: a step of the CLI (snapshot, validate, train, ...).
    :param model: the model config name.
    :param arguments: step arguments (templated); ``--out`` is added: the
        run's folder for this task, ``runs/<dag_id>/<run_id>/<task_id>``.
    :param resolve_arguments: a callable returning more arguments from the
        task context at run time, e.g. paths from upstream XComs.
    """

    template_fields: Sequence[str] = ("arguments",)
    template_fields_renderers = {"arguments": "json"}
    ui_color = "#e8f4ff"

    def __init__(
        self,
        *,
        step: str,
        model: str,
        arguments: Mapping[str, Any] | None = None,
        resolve_arguments: ArgumentResolver | None = None,
        models_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.model = model
        self.arguments = dict(arguments or {})
        self.resolve_arguments = resolve_arguments
        self.models_dir = models_dir

    def execute(self, context: Context) -> dict[str, Any]:
        dag_run = context["dag_run"]
        arguments: dict[str, Any] = dict(self.arguments)
        if self.resolve_arguments is not None:
            arguments.update(self.resolve_arguments(context))
        if self.models_dir:
            arguments["models_dir"] = self.models_dir
        arguments["out"] = str(run_dir(self.dag_id, dag_run.run_id, self.task_id))
        with tempfile.TemporaryDirectory(prefix="mlops-step-") as tmp:
            result_file = Path(tmp) / "result.json"
            arguments["result_file"] = str(result_file)
            return self._run(step_command(self.step, self.model, arguments), result_file)

    def _run(self, argv: list[str], result_file: Path) -> dict[str, Any]:
        self.log.info("Running step %r: %s", self.step, " ".join(argv))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # Keep the last lines so the failure message can quote the step's own error.
        tail: deque[str] = deque(maxlen=15)
        with subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                self.log.info("%s", line)
            returncode = proc.wait()
        if returncode != 0:
            message = f"step {self.step!r} of model {self.model!r} failed (exit {returncode}):\n" + "\n".join(tail)
            if returncode == EXIT_BAD_INPUT:
                raise AirflowFailException(message)
            raise AirflowException(message)
        result = json.loads(result_file.read_text())
        self.log.info("Step %r result: %s", self.step, json.dumps(result, sort_keys=True)[:2000])
        return result
