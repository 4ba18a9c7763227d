"""The ``monitor`` block of a model config: the monitoring DAG's schedule, SLOs, drift and alerts."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated

from pydantic import Field, Strict, model_validator
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, FieldProblem, PositiveFloat, PositiveInt, Str


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
class PersistenceConfig:
    """Drift must be found in ``k`` of the last ``n`` windows of the serving version before retraining is requested.

    One window is a sample: at ``false_alarm_rate`` 0.01, a clean model is
    flagged by one window in a hundred, but by 2 of 3 windows only about
    three times in ten thousand.
    """

    k: PositiveInt = 2
    n: PositiveInt = 3

    @model_validator(mode="after")
    def _k_at_most_n(self) -> PersistenceConfig:
        if self.k > self.n:
            raise FieldProblem("k", f"must be at most n ({self.n}), got {self.k}")
        return self


@dataclass(frozen=True, config=STRICT)
class DriftConfig:
    """Input drift: the window's logged requests against the served version's training reference.

    Drift is decided by a two-sample test per feature against the reference's
    sample of training rows (Kolmogorov-Smirnov for numeric features,
    chi-square for categorical ones), Holm-corrected across features:
    ``false_alarm_rate`` is the chance that a window drawn from the training
    population is flagged (per window, all features together).
    ``min_rows``: fewer logged rows of a version is ``insufficient_data``.
    ``reference_sample_rows``: register stores at most this many training rows
    (a seeded sample) with the reference for the tests.
    ``psi_threshold``: the effect size that the ``MlopsDriftAboveThreshold``
    alert compares the pushed PSI scores with, over the reference's ``bins``
    (quantile bins of the training rows); it decides drift only for versions
    whose reference predates the sample (0.1 is a small shift, 0.25 a large
    one, by the usual rule of thumb).
    ``mean_tolerance``: how far the window's mean may move from the reference
    mean, in reference standard deviations, before the Great Expectations mean
    expectation fails (recorded, not deciding).
    ``max_validation_rows``: Great Expectations validates at most this many of
    the window's rows (a seeded sample); the scores and tests use every row.
    ``persistence``: how many of the last windows must drift before a retraining request.
    """

    min_rows: PositiveInt = 100
    false_alarm_rate: Annotated[float, Strict(), Field(gt=0, lt=0.5)] = 0.01
    reference_sample_rows: PositiveInt = 10_000
    psi_threshold: PositiveFloat = 0.2
    bins: Annotated[int, Strict(), Field(ge=2, le=100)] = 10
    mean_tolerance: PositiveFloat = 0.5
    max_validation_rows: PositiveInt = 100_000
    persistence: PersistenceConfig = dataclasses.field(default_factory=PersistenceConfig)


@dataclass(frozen=True, config=STRICT)
class MonitorConfig:
    """The ``monitor__<name>`` DAG: schedule, window, SLOs, drift, retraining cooldown, alerts.

    ``cooldown_hours``: after a drift detection requests a retraining run, later
    detections within this many hours request none (one episode, one retrain).
    ``max_retrains``: after this many retraining requests in one drift episode
    (requests each within two cooldowns of the last), a drift that persists
    raises a ``drift_persists`` alert instead of another request.
    ``deadline_minutes``: a lifecycle run (nightly, triggered or retraining) not finished this long after
    it was queued notifies through ``alert_conn_id`` (null: no deadline).
    ``alert_conn_id``: the Airflow Connection alerts go to (an SMTP connection
    whose extra names the recipients: ``{"to": "a@example.com"}``).
    ``rollback_on_slo_breach``: on an SLO breach, also trigger ``rollback__<name>``
    to put ``stable`` back on the version it named before (off by default; at
    most one request per ``cooldown_hours``, none when the current version was
    itself put there by a rollback within the cooldown, none for a first
    version: :mod:`include.mlops.monitoring.rollback_request`).
    """

    schedule: Str = "@hourly"
    window_minutes: PositiveInt = 60
    cooldown_hours: PositiveFloat = 24.0
    max_retrains: PositiveInt = 2
    deadline_minutes: PositiveFloat | None = 360.0
    alert_conn_id: Str = "mlops_alerts"
    rollback_on_slo_breach: Annotated[bool, Strict()] = False
    slo: SloConfig = dataclasses.field(default_factory=SloConfig)
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)

    @property
    def window(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.window_minutes)

    @property
    def cooldown(self) -> dt.timedelta:
        return dt.timedelta(hours=self.cooldown_hours)
