"""The metrics a model is measured on, and the ``gate`` block that judges a candidate by them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from pydantic import field_validator
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, FieldProblem, Float, NonNegativeFloat, PositiveFloat

# Metric name -> True when higher is better.  Evaluate computes exactly these.
METRICS: dict[str, dict[str, bool]] = {
    "regression": {"mae": False, "mse": False, "rmse": False, "r2": True},
    "classification": {"accuracy": True, "macro_f1": True, "log_loss": False},
}
# Measured by evaluate for every task; budgets apply to them.
BUDGET_METRICS = {"size_mb": False, "latency_ms": False}
# Metric name -> (lowest, highest) value any model can score (None: unbounded).  A bound outside
# it can never be met, so the gate refuses it (include.mlops.evaluation.gate.overrides).
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "mae": (0.0, None),
    "mse": (0.0, None),
    "rmse": (0.0, None),
    "r2": (None, 1.0),
    "accuracy": (0.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "log_loss": (0.0, None),
    "size_mb": (0.0, None),
    "latency_ms": (0.0, None),
}


@dataclass(frozen=True, config=STRICT)
class GateConfig:
    """TFX-Evaluator-style gate: absolute thresholds, change thresholds, budgets.

    ``thresholds``: metric -> {"min": x} and/or {"max": y}.
    ``max_regression``: metric -> largest allowed relative worsening against the
    champion (0.0 = must not be worse; 0.05 = may be up to 5 % worse).
    ``budgets``: {"size_mb": x, "latency_ms": y} upper bounds.
    The metric names are checked against the model's task by :class:`ModelConfig`.
    """

    thresholds: Mapping[str, Mapping[Literal["min", "max"], Float]] = dataclasses.field(default_factory=dict)
    max_regression: Mapping[str, NonNegativeFloat] = dataclasses.field(default_factory=dict)
    budgets: Mapping[Literal["size_mb", "latency_ms"], PositiveFloat] = dataclasses.field(default_factory=dict)

    @field_validator("thresholds")
    @classmethod
    def _bounds_given(cls, value: Mapping[str, Mapping[str, float]]) -> Mapping[str, Mapping[str, float]]:
        for metric, bounds in value.items():
            if not bounds:
                raise FieldProblem(metric, "needs 'min' and/or 'max'")
        return value
