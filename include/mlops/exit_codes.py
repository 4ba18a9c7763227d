"""The step contract's exit codes, shared by the step CLI, the other CLIs and the Airflow glue.

0 success; 3 the input is bad, so retrying cannot help (the task fails without retrying on every
backend); 1 anything else, which the task retries.  A module of its own so that a library module can
exit with these codes without importing the CLI, which imports the steps.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_BAD_INPUT = 3


class BadInputError(Exception):
    """An error that a retry cannot fix: reported with exit code 3."""
