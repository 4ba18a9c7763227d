"""The ``source`` block of a model config: where the training data comes from."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import model_validator
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import (
    STRICT,
    FieldProblem,
    Fraction,
    NonNegativeInt,
    PositiveInt,
    Str,
    known_names,
)

BundledDataset = Literal["diabetes", "digits", "breast_cancer", "wine"]
SourceFormat = Literal["csv", "parquet"]
BUNDLED_DATASETS: tuple[str, ...] = get_args(BundledDataset)
SOURCE_FORMATS: tuple[str, ...] = get_args(SourceFormat)
# Keys of the YAML document that each source kind reads.
_SOURCE_KEYS = {
    "bundled": ("kind", "dataset", "start_date", "initial_fraction", "daily_rows"),
    "uri": ("kind", "uri", "format", "lookback_days"),
}


@dataclass(frozen=True, config=STRICT)
class SourceConfig:
    """Where the training data comes from.

    ``bundled``: a scikit-learn dataset, released as daily arrivals from
    ``start_date`` (``initial_fraction`` on the first day, then ``daily_rows``
    more per day) so that nightly runs see the data grow.

    ``uri``: a file or object-store URI template with a ``{{ ds }}`` partition,
    read for each day of the ``lookback_days`` ending with the run's interval.
    """

    kind: Literal["bundled", "uri"]
    dataset: BundledDataset | None = None
    start_date: dt.date | None = None
    initial_fraction: Fraction = 0.5
    daily_rows: NonNegativeInt = 10
    uri: Str | None = None
    format: SourceFormat | None = None
    lookback_days: PositiveInt = 1

    @model_validator(mode="before")
    @classmethod
    def _keys_of_the_kind(cls, data: Any) -> Any:
        """In a YAML document, each kind takes its own keys; a uri's format defaults from its extension."""
        if not isinstance(data, Mapping) or data.get("kind") not in _SOURCE_KEYS:
            return data
        kind = data["kind"]
        for key in data:
            if key not in _SOURCE_KEYS[kind] and key in cls.__dataclass_fields__:
                raise FieldProblem(
                    key, f"not used by a {kind!r} source (its fields: {known_names(_SOURCE_KEYS[kind])})"
                )
        if kind == "bundled":
            for key in ("dataset", "start_date"):
                if data.get(key) is None:
                    raise FieldProblem(key, "is required for a 'bundled' source")
            return data
        uri = data.get("uri")
        if not isinstance(uri, str):
            raise FieldProblem("uri", "is required for a 'uri' source: a file or object-store URI template")
        if "{{ ds }}" not in uri and "{{ds}}" not in uri:
            raise FieldProblem("uri", f"must contain a '{{{{ ds }}}}' partition placeholder, got {uri!r}")
        if data.get("format") is None:
            default = "parquet" if uri.endswith(".parquet") else "csv" if uri.endswith(".csv") else None
            if default is None:
                raise FieldProblem("format", f"is required when the uri does not end in .csv or .parquet ({uri!r})")
            data = {**data, "format": default}
        return data
