"""The ``monitor`` block of a model config: the monitoring DAG's schedule, SLOs, drift and alerts."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated

from pydantic import Field, Strict
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, PositiveFloat, PositiveInt, Str


@dataclass(frozen=True, config=STRICT)
class SloConfig:
    """Service-level objectives of the served model, measured over the monitoring window.

    Fewer than ``min_requests`` requests in the window is ``insufficient_data``,
    never ``healthy``.
    """

    min_requests: PositiveInt = 20
    max_error_ratio: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.01
    p95_latency_ms: PositiveFloat = 100.0
    p99_latency_ms: PositiveFloat = 250.0


@dataclass(frozen=True, config=STRICT)
class DriftConfig:
    """Input drift: the window's logged requests against the served version's training reference.

    ``psi_threshold``: a feature whose population stability index over the
    reference's ``bins`` (quantile bins of the training rows) exceeds this has
    drifted (0.1 is a small shift, 0.25 a large one, by the usual rule of thumb).
    ``mean_tolerance``: how far the window's mean may move from the reference
    mean, in reference standard deviations, before the mean expectation fails.
    ``max_validation_rows``: Great Expectations validates at most this many of
    the window's rows (a seeded sample); the drift scores use every row.
    """

    min_rows: PositiveInt = 100
    psi_threshold: PositiveFloat = 0.2
    bins: Annotated[int, Strict(), Field(ge=2, le=100)] = 10
    mean_tolerance: PositiveFloat = 0.5
    max_validation_rows: PositiveInt = 100_000


@dataclass(frozen=True, config=STRICT)
class MonitorConfig:
    """The ``monitor__<name>`` DAG: schedule, window, SLOs, drift, retraining cooldown, alerts.

    ``cooldown_hours``: after a drift detection requests a retraining run, later
    detections within this many hours request none (one episode, one retrain).
    ``deadline_minutes``: a lifecycle run (nightly, triggered or retraining) not finished this long after
    it was queued notifies through ``alert_conn_id`` (null: no deadline).
    ``alert_conn_id``: the Airflow Connection alerts go to (an SMTP connection
    whose extra names the recipients: ``{"to": "a@example.com"}``).
    """

    schedule: Str = "@hourly"
    window_minutes: PositiveInt = 60
    cooldown_hours: PositiveFloat = 24.0
    deadline_minutes: PositiveFloat | None = 360.0
    alert_conn_id: Str = "mlops_alerts"
    slo: SloConfig = dataclasses.field(default_factory=SloConfig)
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)

    @property
    def window(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.window_minutes)

    @property
    def cooldown(self) -> dt.timedelta:
        return dt.timedelta(hours=self.cooldown_hours)
