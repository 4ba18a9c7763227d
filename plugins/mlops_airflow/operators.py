"""The operator that runs one lifecycle step through the step CLI.

On the embedded default (the ``local`` backend) the worker runs
``python -m include.mlops <step> ...`` as a subprocess, streams its log into
the task log (:mod:`mlops_airflow.step_logs` decides each line's level), and
returns the step's JSON result as the task's XCom.

The step runs in its own process group, so that a task that times out
(``execution_timeout``) or is killed takes the step and every process the step
started with it: a hung training step cannot hold the machine.

Under ``make run`` the step runner (:mod:`include.mlops.warm`) has imported
TensorFlow and Great Expectations already, and forks the step instead: the same
CLI, environment, process group and exit status, without paying the imports.
A retry, or a machine without the runner, starts the step cold.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context

from include.mlops.config import PROJECT_ROOT
from include.mlops.warm.client import WarmStartError, WarmStep, start_warm
from mlops_airflow.step_logs import StepLogRouter
from mlops_airflow.steps import (
    ArgumentResolver,
    StepFailedError,
    raise_for_exit_code,
    resolve_step_arguments,
    step_command,
)

__all__ = ["LifecycleStepOperator", "step_command"]

# How long a step gets to exit after SIGTERM before its process group is sent SIGKILL.
TERMINATE_GRACE_S = 10.0


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
        self._proc: subprocess.Popen[str] | WarmStep | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        arguments = resolve_step_arguments(
            context,
            static=self.arguments,
            resolver=self.resolve_arguments,
            models_dir=self.models_dir,
            dag_id=self.dag_id,
            task_id=self.task_id,
        )
        with tempfile.TemporaryDirectory(prefix="mlops-step-") as tmp:
            result_file = Path(tmp) / "result.json"
            arguments["result_file"] = str(result_file)
            # A retry starts cold: whatever went wrong in the first try cannot have come from the runner.
            warm = context["ti"].try_number <= 1
            return self._run(step_command(self.step, self.model, arguments), result_file, warm=warm)

    def _start(self, argv: list[str], env: dict[str, str], *, warm: bool) -> subprocess.Popen[str] | WarmStep:
        """The step's process: forked by the step runner when one is up (:mod:`include.mlops.warm`), else new."""
        if warm:
            try:
                started = start_warm(argv, env, PROJECT_ROOT)
            except WarmStartError as exc:
                raise StepFailedError(f"step {self.step!r}: {exc}") from None
            if isinstance(started, WarmStep):
                self.log.info("Step %r started warm by the step runner (pid %d)", self.step, started.pid)
                return started
            self.log.info("Step %r starts cold: %s", self.step, started)
        return subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own process group: a timeout or kill ends the step and its children together.
            start_new_session=True,
        )

    def _run(self, argv: list[str], result_file: Path, *, warm: bool = False) -> dict[str, Any]:
        self.log.info("Running step %r: %s", self.step, " ".join(argv))
        router = StepLogRouter.for_this_machine()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        router.runtime_env(env)
        # Keep the last lines so the failure message can quote the step's own error.
        tail: deque[str] = deque(maxlen=15)
        proc = self._start(argv, env, warm=warm)
        self._proc = proc
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                level = router.level(line)
                if level is None:
                    continue
                tail.append(line)
                self.log.log(level, "%s", line)
            returncode = proc.wait()
        except BaseException:
            # AirflowTaskTimeout (execution_timeout) or a kill signal arrives here, while the step runs.
            self._terminate(proc)
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            self._proc = None
        if returncode != 0:
            raise_for_exit_code(
                returncode,
                f"step {self.step!r} of model {self.model!r} failed (exit {returncode}):\n" + "\n".join(tail),
            )
        result = json.loads(result_file.read_text())
        self.log.info("Step %r result: %s", self.step, json.dumps(result, sort_keys=True)[:2000])
        return result

    def _terminate(self, proc: subprocess.Popen[str] | WarmStep) -> None:
        """End the step's whole process group: SIGTERM, then SIGKILL after a grace period."""
        if proc.poll() is not None:
            return
        self.log.warning("Stopping step %r (pid %d) and its child processes", self.step, proc.pid)
        for sig, wait_s in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children that outlived the leader are still in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def on_kill(self) -> None:
        if self._proc is not None:
            self._terminate(self._proc)
