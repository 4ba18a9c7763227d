"""One lifecycle DAG per model config in ``include/models/`` (``lifecycle__<name>``).

Add a model by adding ``include/models/<name>.yaml`` and its Keras builder
module; this file does not change.  Parsing it reads the YAML configs only.

A config that cannot be loaded hides no other model: it becomes a ``lifecycle__<file stem>`` DAG that shows the error and
fails every run with it.
"""

from __future__ import annotations

import logging

from include.mlops.config import scan_model_configs
from mlops_airflow.broken_config import broken_config_dag_id, build_broken_config_dag
from mlops_airflow.lifecycle import build_lifecycle_dag

_log = logging.getLogger(__name__)
_configs, _errors = scan_model_configs()
# A problem of the deployment (e.g. an unknown MLOPS_BACKEND) is every model's, so it
# stays an import error of this file; only a model's own config error is contained.
for _config in _configs:
    globals()[_config.dag_id] = build_lifecycle_dag(_config)
for _path, _error in _errors.items():
    _log.error("model config %s is broken: %s", _path, _error)
    globals()[broken_config_dag_id(_path)] = build_broken_config_dag(_path, _error)
