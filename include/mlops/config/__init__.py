"""Model configs: one YAML file per model in ``include/models/``, validated by pydantic (see ``loading``)."""

from include.mlops.config.loading import *  # noqa: F403
from include.mlops.config.loading import _FieldProblem  # noqa: F401
