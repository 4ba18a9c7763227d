"""The ``optimize`` block of a model config: retraining, hyperparameter search and compression.

The ``compress`` settings are defined beside the compression step, in
:mod:`include.mlops.optimize.compress_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Literal, get_args

from pydantic import Field, Strict, field_validator, model_validator
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, FieldProblem, Float, Int, PositiveFloat, PositiveInt, known_names
from include.mlops.optimize.compress_config import CompressConfig

SearchableHparam = Literal["epochs", "batch_size", "learning_rate", "patience"]
# The training hyperparameters that Keras reads as whole numbers (the others are floats).
INTEGER_HPARAMS = frozenset({"epochs", "batch_size", "patience"})


@dataclass(frozen=True, config=STRICT)
class SearchDimension:
    """One hyperparameter's Optuna distribution: ``float``/``int`` between ``low`` and ``high``, or ``categorical``.

    The hyperparameter it belongs to is checked by :class:`SearchConfig` (an
    integer hyperparameter takes ``int`` or whole-number choices, every value > 0).
    """

    type: Literal["float", "int", "categorical"]
    low: Float | None = None
    high: Float | None = None
    log: bool = False
    step: PositiveFloat | None = None
    choices: tuple[Float, ...] | None = None

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> SearchDimension:
        if self.type == "categorical":
            for name in ("low", "high", "step"):
                if getattr(self, name) is not None:
                    raise FieldProblem(name, "is not used by a 'categorical' distribution (it takes 'choices')")
            if not self.choices:
                raise FieldProblem("choices", "must list at least one value")
            if len(set(self.choices)) != len(self.choices):
                raise FieldProblem("choices", f"lists a value twice: {list(self.choices)}")
            return self
        if self.choices is not None:
            raise FieldProblem("choices", f"is not used by a {self.type!r} distribution (it takes 'low' and 'high')")
        for name in ("low", "high"):
            if getattr(self, name) is None:
                raise FieldProblem(name, f"is required for a {self.type!r} distribution")
        assert self.low is not None and self.high is not None
        if self.low > self.high:
            raise FieldProblem("low", f"must not exceed high ({self.high:g}), got {self.low:g}")
        if self.log and self.step is not None:
            raise FieldProblem("step", "cannot be combined with log: true (Optuna samples one or the other)")
        return self

    def values_checked(self, hparam: str) -> None:
        """Raise :class:`FieldProblem` when this distribution can yield a value ``hparam`` cannot take."""
        whole = hparam in INTEGER_HPARAMS
        if self.type == "categorical":
            assert self.choices is not None
            for i, value in enumerate(self.choices):
                if value <= 0 or (whole and value != int(value)):
                    kind = "a whole number > 0" if whole else "a number > 0"
                    raise FieldProblem(f"choices[{i}]", f"{hparam} must be {kind}, got {value!r}")
            return
        if whole != (self.type == "int"):
            raise FieldProblem("type", f"{hparam} takes type {'int' if whole else 'float'} or categorical")
        assert self.low is not None and self.high is not None
        for name in ("low", "high"):
            value = getattr(self, name)
            if value <= 0 or (whole and value != int(value)):
                kind = "a whole number > 0" if whole else "a number > 0"
                raise FieldProblem(name, f"{hparam} must be {kind}, got {value!r}")


def _default_space() -> dict[str, SearchDimension]:
    return {"learning_rate": SearchDimension(type="float", low=1e-4, high=1e-2, log=True)}


@dataclass(frozen=True, config=STRICT)
class SearchConfig:
    """The optimize branch's hyperparameter search: one mapped training task per trial.

    ``trials``: how many trials Optuna's seeded sampler proposes (= mapped tasks).
    ``min_successful``: fewer successful trials than this fails the branch.
    ``space``: hyperparameter -> Optuna distribution.
    """

    trials: Annotated[int, Strict(), Field(gt=0, le=1024)] = 4
    min_successful: PositiveInt = 1
    seed: Int = 42
    space: Mapping[SearchableHparam, SearchDimension] = dataclasses.field(default_factory=_default_space)

    @field_validator("space")
    @classmethod
    def _space_usable(cls, space: Mapping[str, SearchDimension]) -> Mapping[str, SearchDimension]:
        if not space:
            raise ValueError(
                f"must name at least one hyperparameter to search ({known_names(get_args(SearchableHparam))})"
            )
        for hparam, dimension in space.items():
            try:
                dimension.values_checked(hparam)
            except FieldProblem as problem:
                raise FieldProblem(f"{hparam}.{problem.field}", problem.problem) from None
        return space

    @model_validator(mode="after")
    def _enough_trials(self) -> SearchConfig:
        if self.min_successful > self.trials:
            raise FieldProblem("min_successful", f"must not exceed trials ({self.trials}), got {self.min_successful}")
        return self


@dataclass(frozen=True, config=STRICT)
class OptimizeConfig:
    """How the optimize branch retries a candidate that failed the gate."""

    epochs: PositiveInt | None = None
    patience: PositiveInt | None = None
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    compress: CompressConfig = dataclasses.field(default_factory=CompressConfig)
