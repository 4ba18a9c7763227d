"""One trained digits model per test session, shared by the compression tests of every tier.

Training costs ~15 s, so the model is trained once and kept under pytest's
session temp folder, where a second test module finds it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from include.mlops.config import ModelConfig, find_model_config

# Enough epochs for ~96 % validation accuracy, so that a 2 % loss budget is meaningful.
EPOCHS = 8


@dataclass(frozen=True)
class TrainedDigits:
    config: ModelConfig
    snapshot: Path
    model: Path


def trained_digits(tmp_path_factory: pytest.TempPathFactory) -> TrainedDigits:
    """The digits snapshot (all 1,797 rows) and a SavedModel trained on it, made once per session."""
    from unit.ml_fixtures import make_snapshot

    from include.mlops.training.train import train

    config = find_model_config("digits")
    base = tmp_path_factory.getbasetemp() / "compressed-digits"
    model = base / "train" / "model"
    if not (model / "saved_model.pb").is_file():
        make_snapshot(config, base / "snapshot")
        train(config, base / "snapshot", base / "train", overrides={"epochs": EPOCHS})
    return TrainedDigits(config=config, snapshot=base / "snapshot", model=model)
