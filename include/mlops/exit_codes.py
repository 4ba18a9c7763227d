"""The step contract's exit codes, shared by the step CLI, the other CLIs and the Airflow glue.

0 success; 3 the input is bad, so retrying cannot help (the task fails without retrying on every
backend); 143 (128 + SIGTERM) the step was asked to stop and cleaned up; 1 anything else, which the
task retries.  A module of its own so that a library module can
exit with these codes without importing the CLI, which imports the steps.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_BAD_INPUT = 3
EXIT_TERMINATED = 143


class BadInputError(Exception):
    """An error that a retry cannot fix: reported with exit code 3."""


class StepTerminated(BaseException):
    """SIGTERM reached the step (Airflow's "mark failed", ``execution_timeout``, a pod deletion, a shutdown).

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception``
    does not swallow it while clean-up code (``finally``, ``except BaseException``)
    still runs: a deploy puts its label back before the process exits.
    """
