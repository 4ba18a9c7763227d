"""When a model's DAGs start: shared by the lifecycle, monitor and broken-config DAGs."""

from __future__ import annotations

import datetime as dt

import pendulum

from include.mlops.config import ModelConfig

# The first data interval of a model whose source names no start date.
DEFAULT_START_DATE = dt.date(2026, 1, 1)


def dag_start_date(config: ModelConfig) -> dt.datetime:
    """Midnight UTC of the model's first day of data: its source's ``start_date``, else ``DEFAULT_START_DATE``."""
    first_day = config.source.start_date or DEFAULT_START_DATE
    return pendulum.datetime(first_day.year, first_day.month, first_day.day, tz="UTC")
