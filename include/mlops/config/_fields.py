"""What the config sections share: strict field types, the pydantic settings, and :class:`FieldProblem`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, Strict


class FieldProblem(ValueError):
    """Raised inside a validator to name a field below the one pydantic reports."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field_name
        self.problem = problem


# Strict scalars: YAML's "5" is a string and stays one, and a bool is not a number.
# A float field takes an int (YAML reads 1 as int where 1.0 is meant).

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Str = Annotated[str, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0)]


def _open_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


Fraction = Annotated[float, Strict(), AfterValidator(_open_fraction)]
# Every config type refuses unknown fields.
STRICT = ConfigDict(extra="forbid")


def known_names(values: Sequence[str] | Mapping[str, Any]) -> str:
    """``values`` sorted and comma-separated, for the 'known: ...' part of a message."""
    return ", ".join(sorted(values))
