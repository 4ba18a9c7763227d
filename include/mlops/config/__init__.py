"""Model configs: the typed, validated form of each ``include/models/<name>.yaml``.

One module per section of a config (source, train, gate, optimize, monitor,
placement), :class:`ModelConfig` in ``model``, and reading the files in ``loading``.
"""

from __future__ import annotations

from include.mlops.config.deploy import CanaryConfig, DeployConfig
from include.mlops.config.gate import BUDGET_METRICS, METRICS, GateConfig
from include.mlops.config.loading import (
    ConfigError,
    find_model_config,
    load_model_config,
    load_model_configs,
    scan_model_configs,
)
from include.mlops.config.model import TASKS, ModelConfig, Task
from include.mlops.config.monitor import DriftConfig, MonitorConfig, SloConfig
from include.mlops.config.optimize import (
    INTEGER_HPARAMS,
    OptimizeConfig,
    SearchableHparam,
    SearchConfig,
    SearchDimension,
)
from include.mlops.config.paths import DEFAULT_GX_DIR, DEFAULT_MODELS_DIR, PROJECT_ROOT, gx_dir, models_dir
from include.mlops.config.placement import DEFAULT_SCHEDULE_TIMEOUT_S, DEFAULT_STEP_TIMEOUTS, Toleration
from include.mlops.config.source import BUNDLED_DATASETS, SOURCE_FORMATS, BundledDataset, SourceConfig, SourceFormat
from include.mlops.config.train import TrainConfig

__all__ = [
    "BUDGET_METRICS",
    "BUNDLED_DATASETS",
    "DEFAULT_GX_DIR",
    "DEFAULT_MODELS_DIR",
    "DEFAULT_SCHEDULE_TIMEOUT_S",
    "DEFAULT_STEP_TIMEOUTS",
    "INTEGER_HPARAMS",
    "METRICS",
    "PROJECT_ROOT",
    "SOURCE_FORMATS",
    "TASKS",
    "BundledDataset",
    "CanaryConfig",
    "ConfigError",
    "DeployConfig",
    "DriftConfig",
    "GateConfig",
    "ModelConfig",
    "MonitorConfig",
    "OptimizeConfig",
    "SearchConfig",
    "SearchDimension",
    "SearchableHparam",
    "SloConfig",
    "SourceConfig",
    "SourceFormat",
    "Task",
    "Toleration",
    "TrainConfig",
    "find_model_config",
    "gx_dir",
    "load_model_config",
    "load_model_configs",
    "models_dir",
    "scan_model_configs",
]
