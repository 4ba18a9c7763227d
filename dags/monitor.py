"""One monitor DAG per model config in ``include/models/`` (``monitor__<name>``).

Each run measures the served model's SLOs (Prometheus) and its input drift
(the prediction log against the training reference) over the config's
``monitor.window_minutes``, writes a report, alerts on an SLO breach and, on
drift, requests one retraining run of ``lifecycle__<name>`` per cooldown.
Parsing it reads the YAML configs only.  A broken config is reported by
``dags/lifecycle.py``; this file skips it.
"""

from __future__ import annotations

from include.mlops.config import scan_model_configs
from mlops_airflow.monitoring import build_monitor_dag

_configs, _ = scan_model_configs()
for _config in _configs:
    globals()[_config.monitor_dag_id] = build_monitor_dag(_config)
