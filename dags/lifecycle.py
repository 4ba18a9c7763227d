"""One lifecycle DAG per model config in ``include/models/`` (``lifecycle__<name>``).

Add a model by adding ``include/models/<name>.yaml`` and its Keras builder
module; this file does not change.  Parsing it reads the YAML configs only.
"""

from __future__ import annotations

from include.mlops.config import load_model_configs
from mlops_airflow.lifecycle import build_lifecycle_dag

for _config in load_model_configs():
    globals()[_config.dag_id] = build_lifecycle_dag(_config)
