"""Where the project lies, and the folders of model configs and Great Expectations suites."""

from __future__ import annotations

import os
from pathlib import Path

# include/mlops/config/paths.py -> the repository root.
PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODELS_DIR = PROJECT_ROOT / "include" / "models"
DEFAULT_GX_DIR = PROJECT_ROOT / "include" / "gx"


def models_dir() -> Path:
    """The folder holding model configs: ``$MLOPS_MODELS_DIR`` or ``include/models``."""
    return Path(os.environ.get("MLOPS_MODELS_DIR", DEFAULT_MODELS_DIR))


def gx_dir() -> Path:
    """The folder holding the Great Expectations suites: ``$MLOPS_GX_DIR`` or ``include/gx``."""
    return Path(os.environ.get("MLOPS_GX_DIR", DEFAULT_GX_DIR))
