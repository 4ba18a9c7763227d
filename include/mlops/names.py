"""The naming rule a served model's name must follow, in one place.

A model's ``serving_name`` becomes its TF Serving model folder
(``models/<serving_name>/<version>/``) and the ``name`` of its entry in the
model config file, so the registry (when it writes) and the model configs
(when they are parsed) check the same rule.  Kept free of heavy imports:
the DAG files use it at parse time.
"""

from __future__ import annotations

import re

_SERVING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SERVING_NAME_RULE = "letters, digits, '_', '-' and '.', starting with a letter or digit, and not all digits"


def serving_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a TF Serving model folder, or None when it can.

    All-digit names are refused because TF Serving reads all-digit folders as versions.
    """
    if not isinstance(name, str) or not _SERVING_NAME.match(name) or name.isdigit():
        return f"{name!r} is not usable as a TF Serving model folder: use {SERVING_NAME_RULE}"
    return None
