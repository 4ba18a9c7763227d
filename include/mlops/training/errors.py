"""The training stage's error: the data, the builder or a model does not fit what a step needs."""

from __future__ import annotations

from include.mlops.exit_codes import BadInputError


class ModelingError(BadInputError, ValueError):
    """The data, the builder or a model does not fit what the step needs.

    The message says what was found and what to change.  A bad-input error: the
    step exits 3 and the task is not retried, whichever module raised it.
    """
