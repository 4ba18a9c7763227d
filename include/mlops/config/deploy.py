"""The ``deploy`` block of a model config: how a version is checked before any label moves to it."""

from __future__ import annotations

import itertools
from typing import Annotated

from pydantic import Field, Strict, field_validator
from pydantic.dataclasses import dataclass

from include.mlops.config._fields import STRICT, NonNegativeFloat, PositiveFloat

# A canary step: the percent of the stable label's traffic sent to the canary (0 and 100 are not steps).
StepPercent = Annotated[int, Strict(), Field(ge=1, le=99)]
AtLeastOne = Annotated[int, Strict(), Field(ge=1)]


@dataclass(frozen=True, config=STRICT)
class CanaryConfig:
    """Progressive delivery, judged as Flagger judges a canary (see docs/delivery.md).

    ``steps``: the canary weights in percent, strictly increasing, each 1 to 99
    (Flagger's ``stepWeights``); the canary is promoted after the last step
    passes.  ``interval_s``: the analysis window of one check, in seconds (at
    least 5: a few scrapes).  ``failure_limit``: failed checks, counted over the
    whole analysis, that abort it (Flagger's ``threshold``).
    ``inconclusive_limit``: inconclusive checks (too few requests, Prometheus
    unreachable, a figure it cannot give) that abort it.  ``min_requests``:
    requests per track and window below which a check is inconclusive; the
    prediction distance's noise between two equal versions is about
    ``sqrt(1/n_canary + 1/n_stable)`` (0.14 at 100 each, 0.32 at 20), so the
    default keeps a good canary well under ``max_prediction_distance``.
    ``max_error_ratio_increase``: the canary's error ratio may exceed the
    stable's by at most this (0.01 = one percentage point).
    ``max_p95_latency_ratio``: the canary's p95 latency may be at most this
    multiple of the stable's (above 1).  ``max_prediction_distance``: the
    largest distance between the two tracks' predictions (standardized mean
    difference for one output, total variation distance of the class shares
    for a classifier).  ``approval``: wait for a person to approve the
    promotion after the last step passes (Flagger's confirm-promotion gate),
    for at most ``approval_timeout_s`` seconds.
    """

    steps: tuple[StepPercent, ...] = (10, 25, 50)
    interval_s: Annotated[float, Strict(), Field(ge=5)] = 60.0
    failure_limit: AtLeastOne = 2
    inconclusive_limit: AtLeastOne = 3
    min_requests: AtLeastOne = 100
    max_error_ratio_increase: NonNegativeFloat = 0.01
    max_p95_latency_ratio: Annotated[float, Strict(), Field(gt=1)] = 2.0
    max_prediction_distance: NonNegativeFloat = 0.5
    approval: Annotated[bool, Strict()] = False
    approval_timeout_s: PositiveFloat = 86400.0

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if not steps:
            raise ValueError("must list at least one canary weight in percent (e.g. [10, 25, 50])")
        for before, after in itertools.pairwise(steps):
            if after <= before:
                raise ValueError(f"must be strictly increasing, got {list(steps)} ({after} follows {before})")
        return steps


@dataclass(frozen=True, config=STRICT)
class DeployConfig:
    """Infra validation, as TFX's InfraValidator does it, before a deploy moves any label.

    ``infra_validation``: load the version alone in a sandbox model server (the
    project's server in its ``tfserving`` behaviour, on a spare loopback port,
    reading the registry's files as TF Serving would) and query it with the
    version's own held-out rows; a version that does not load, or answers other
    than it does offline, is never labelled.  ``infra_validation_timeout_s``:
    how long the sandbox may take to start and report the version AVAILABLE.
    ``canary``: unset (the default), no canary analysis; set, how a new version
    behind the ``canary`` label is judged and promoted step by step (see
    :class:`CanaryConfig`).
    """

    infra_validation: Annotated[bool, Strict()] = True
    infra_validation_timeout_s: PositiveFloat = 120.0
    canary: CanaryConfig | None = None
