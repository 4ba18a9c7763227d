"""The ``optimize.compress`` block of a model config: which compressed variants to try and which to keep.

Kept apart from :mod:`include.mlops.config` (which imports this module) so
that the compression step's settings live beside it without an import cycle.
Loading it stays cheap: pydantic and the standard library only.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, get_args

from pydantic import ConfigDict, Field, Strict, field_validator
from pydantic.dataclasses import dataclass

# Converter variants (TensorFlow's TFLite converter) and TF Model Optimization variants.
Variant = Literal["dynamic", "float16", "int8", "pruned", "qat"]
VARIANTS: tuple[str, ...] = get_args(Variant)
CONVERTER_VARIANTS = ("dynamic", "float16", "int8")
TFMOT_VARIANTS = ("pruned", "qat")

_CONFIG = ConfigDict(extra="forbid")
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0)]
Sparsity = Annotated[float, Strict(), Field(gt=0, lt=1)]


@dataclass(frozen=True, config=_CONFIG)
class PruningConfig:
    """Magnitude pruning (PolynomialDecay to ``target_sparsity``), fine-tuned for ``epochs``."""

    target_sparsity: Sparsity = 0.5
    epochs: PositiveInt = 4


@dataclass(frozen=True, config=_CONFIG)
class QatConfig:
    """Quantization-aware training for ``epochs`` before the int8 conversion."""

    epochs: PositiveInt = 3


@dataclass(frozen=True, config=_CONFIG)
class CompressConfig:
    """Which compressed variants the optimize branch tries, which it keeps, and when one is served.

    ``max_metric_loss``: the largest relative worsening of the primary gate
    metric (see :func:`include.mlops.optimize.compress.primary_metric`) against
    the float model on the validation rows, like ``gate.max_regression``
    (0.02 = up to 2 % worse).  ``max_latency_ms`` / ``max_size_mb``: a kept
    variant must be within each of them; unset, they default to
    ``gate.budgets``.  ``serve``: ``tflite`` serves the best kept variant,
    ``auto`` only when the gate failed a size or latency budget, ``savedmodel``
    never (the variants are still measured and reported).
    """

    variants: tuple[Variant, ...] = VARIANTS
    serve: Literal["auto", "tflite", "savedmodel"] = "auto"
    max_metric_loss: NonNegativeFloat = 0.02
    max_latency_ms: PositiveFloat | None = None
    max_size_mb: PositiveFloat | None = None
    representative_rows: PositiveInt = 100
    pruning: PruningConfig = dataclasses.field(default_factory=PruningConfig)
    qat: QatConfig = dataclasses.field(default_factory=QatConfig)

    @field_validator("variants")
    @classmethod
    def _each_once(cls, variants: tuple[str, ...]) -> tuple[str, ...]:
        duplicates = sorted({v for v in variants if variants.count(v) > 1})
        if duplicates:
            raise ValueError(f"lists {duplicates} more than once; name each variant once")
        return variants
