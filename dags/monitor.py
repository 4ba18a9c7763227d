"""One monitor DAG per model config in ``include/models/`` (``monitor__<name>``).

Each run measures the served model's SLOs (Prometheus) and its input drift
(the prediction log against the training reference) over the config's
``monitor.window_minutes``, writes a report, alerts on an SLO breach and, when
drift persists, requests one retraining run of ``lifecycle__<name>`` per cooldown.
Parsing it reads the YAML configs only.  A config that cannot be loaded becomes
a ``monitor__<file stem>`` DAG that shows the error and fails every run with it
(the model may still be serving: its monitoring must not vanish quietly).
"""

from __future__ import annotations

from include.mlops.config import scan_model_configs
from mlops_airflow.broken_config import broken_config_dag_id, build_broken_config_dag
from mlops_airflow.monitoring import build_monitor_dag

_configs, _errors = scan_model_configs()
for _config in _configs:
    globals()[_config.monitor_dag_id] = build_monitor_dag(_config)
for _path, _error in _errors.items():
    globals()[broken_config_dag_id(_path, "monitor")] = build_broken_config_dag(_path, _error, "monitor")
