"""The ``train`` block of a model config: the training run's hyperparameters and GPUs."""

from __future__ import annotations

from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, Fraction, Int, NonNegativeInt, PositiveFloat, PositiveInt


@dataclass(frozen=True, config=STRICT)
class TrainConfig:
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 1e-3
    patience: PositiveInt = 10
    seed: Int = 42
    validation_fraction: Fraction = 0.2
    # GPUs the train and tune-trial steps ask for (0: CPU only).
    gpus: NonNegativeInt = 0
