"""One rollback DAG per model config in ``include/models/`` (``rollback__<name>``): manual, with Params.

Trigger it from the UI with the version to put back on ``stable`` and a
reason.  Parsing it reads the YAML configs only.  A broken config is reported
by ``dags/lifecycle.py``; this file skips it.
"""

from __future__ import annotations

from include.mlops.config import scan_model_configs
from mlops_airflow.rollback import build_rollback_dag

_configs, _ = scan_model_configs()
for _config in _configs:
    globals()[f"rollback__{_config.name}"] = build_rollback_dag(_config)
