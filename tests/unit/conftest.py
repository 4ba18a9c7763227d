"""Shared fixtures for the unit tests: the demo model configs, data intervals and file-backed sources."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from include.mlops.config import ModelConfig, SourceConfig, find_model_config
from include.mlops.data.sources import load_bundled


@pytest.fixture(scope="session")
def diabetes_config() -> ModelConfig:
    return find_model_config("diabetes")


@pytest.fixture(scope="session")
def digits_config() -> ModelConfig:
    return find_model_config("digits")


def daily_interval(ds: str) -> tuple[dt.datetime, dt.datetime]:
    """The data interval of a daily run whose logical date is ``ds`` (YYYY-MM-DD), in UTC."""
    start = dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


@pytest.fixture
def interval() -> Callable[[str], tuple[dt.datetime, dt.datetime]]:
    """``interval("2026-11-03")`` -> (2026-11-03T00:00Z, 2026-11-04T00:00Z)."""
    return daily_interval


@pytest.fixture
def uri_config() -> Callable[..., ModelConfig]:
    """``uri_config(config, template, lookback_days=1)``: the same model, reading ``{{ ds }}`` files instead."""

    def make(config: ModelConfig, template: str | Path, lookback_days: int = 1) -> ModelConfig:
        template = str(template)
        file_format = "parquet" if template.endswith(".parquet") else "csv"
        source = SourceConfig(kind="uri", uri=template, format=file_format, lookback_days=lookback_days)
        return dataclasses.replace(config, source=source)

    return make


@pytest.fixture(scope="session")
def reference_rows() -> Callable[[ModelConfig], pd.DataFrame]:
    """``reference_rows(config)``: a fresh copy of the model's whole bundled dataset (features + label)."""
    cache: dict[str, pd.DataFrame] = {}

    def rows(config: ModelConfig) -> pd.DataFrame:
        if config.name not in cache:
            frame = load_bundled(config.source.dataset or config.name, config.label)
            cache[config.name] = frame[[*config.features, config.label]]
        return cache[config.name].copy()

    return rows


@pytest.fixture
def write_partition() -> Callable[[pd.DataFrame, str | Path, str], Path]:
    """``write_partition(frame, template, ds)``: land one day's partition file where ``template`` points."""

    def write(frame: pd.DataFrame, template: str | Path, ds: str) -> Path:
        path = Path(str(template).replace("file://", "").replace("{{ ds }}", ds))
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        return path

    return write
