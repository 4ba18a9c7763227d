"""Trigger-time overrides of the gate: thresholds and the change tolerance, refused when no model could meet them.

:func:`with_overrides` merges the trigger form's ``thresholds`` and
``max_regression`` into a model's gate config.  It is the one rule for what an
override may say, applied twice with the same code: by the run's first task,
which refuses an impossible override before any work, and by the gate itself.

An override bound is refused (:class:`~.rules.GateError`) when it

* lies outside the metric's range (:data:`include.mlops.config.gate.METRIC_RANGES`):
  ``r2 min 1.5`` (r2 is at most 1), ``mae max -1`` (an error is at least 0);
* is on the wrong side for the metric's direction: ``r2 max 0.1`` is a maximum
  on a metric where higher is better, which fails every model better than 0.1
  (likewise a ``min`` on an error metric such as mae);
* leaves a ``min`` above a ``max`` once merged with the config's own bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from include.mlops.config import BUDGET_METRICS, METRICS, GateConfig
from include.mlops.config.gate import METRIC_RANGES
from include.mlops.evaluation.gate.rules import GateError, fmt_number

# Every metric name any task knows, with its direction (True: higher is better).
KNOWN_DIRECTIONS: dict[str, bool] = {
    **{m: hib for task_metrics in METRICS.values() for m, hib in task_metrics.items()},
    **BUDGET_METRICS,
}


def with_overrides(
    gate: GateConfig,
    thresholds: Mapping[str, Any] | None,
    max_regression: float | None,
    *,
    metrics: Iterable[str] = (),
) -> GateConfig:
    """Merge trigger-form overrides into ``gate``; the result is a new ``GateConfig``.

    ``thresholds`` maps a metric to ``{"min": x}`` / ``{"max": y}`` (merged into
    the configured bounds of that metric; a bound set to ``None`` removes it) or
    to a bare number, which is the bound on the metric's bad side (``min`` when
    higher is better, ``max`` otherwise).  Every bound given is checked by
    :func:`check_bound`.  A threshold on a budget metric (``size_mb``,
    ``latency_ms``) replaces that budget; only ``max`` makes sense there.

    ``max_regression`` is one tolerance for the whole run.  It replaces the
    tolerance of every metric that has a configured change threshold: the config
    chose which metrics guard against regressions, the form only tunes how much.
    When the config has no change threshold at all, it applies to ``metrics``
    (pass the config's ``metrics``), because a user who sets a tolerance expects
    a regression check to happen; with no ``metrics`` either it is an error.
    """
    new_thresholds = {m: dict(b) for m, b in gate.thresholds.items()}
    new_budgets = dict(gate.budgets)
    for metric, spec in (thresholds or {}).items():
        if metric not in KNOWN_DIRECTIONS:
            raise GateError(
                f"threshold override names unknown metric {metric!r} (known: {', '.join(sorted(KNOWN_DIRECTIONS))})"
            )
        bounds = _override_bounds(metric, spec)
        if metric in BUDGET_METRICS and "min" in bounds:
            raise GateError(f"budget {metric!r} is an upper bound: override it with {{'max': value}}, not 'min'")
        for side, bound in bounds.items():
            if bound is not None:  # None removes a configured bound, whichever side it is on
                check_bound(metric, side, bound)
        if metric in BUDGET_METRICS:
            if bounds.get("max") is None:
                new_budgets.pop(metric, None)
            else:
                new_budgets[metric] = _positive(metric, bounds["max"])
            continue
        merged = new_thresholds.get(metric, {})
        for side, bound in bounds.items():
            if bound is None:
                merged.pop(side, None)
            else:
                merged[side] = bound
        if "min" in merged and "max" in merged and merged["min"] > merged["max"]:
            raise GateError(
                f"threshold override for {metric!r} leaves min {fmt_number(merged['min'])} above max "
                f"{fmt_number(merged['max'])} (merged with the config's bounds), so no model can meet both"
            )
        if merged:
            new_thresholds[metric] = merged
        else:
            new_thresholds.pop(metric, None)

    new_regression = dict(gate.max_regression)
    if max_regression is not None:
        tolerance = _tolerance(max_regression)
        targets = list(new_regression) or list(metrics)
        if not targets:
            raise GateError(
                "max_regression override given but the gate has no change threshold and no metrics were "
                "passed to apply it to (pass metrics=config.metrics)"
            )
        unknown = [m for m in targets if m not in KNOWN_DIRECTIONS]
        if unknown:
            raise GateError(f"max_regression override: unknown metric(s) {', '.join(unknown)}")
        new_regression = dict.fromkeys(targets, tolerance)
    return replace(gate, thresholds=new_thresholds, max_regression=new_regression, budgets=new_budgets)


def check_bound(metric: str, side: str, value: float) -> None:
    """Refuse a ``min``/``max`` bound on ``metric`` that no model can meet, or that fails the better models.

    The range comes from :data:`~include.mlops.config.gate.METRIC_RANGES`, the
    direction from :data:`KNOWN_DIRECTIONS`; a bound at the edge of the range
    (``accuracy min 1``) is allowed, since a perfect model meets it.
    """
    higher_is_better = KNOWN_DIRECTIONS[metric]
    good_side = "min" if higher_is_better else "max"
    if side != good_side:
        better = "higher" if higher_is_better else "lower"
        raise GateError(
            f"threshold override {metric} {side} {fmt_number(value)} is on the wrong side: {better} {metric} is "
            f"better, so a {side} would fail the better models; bound {metric} with a {good_side}, e.g. "
            f'{{"{metric}": {{"{good_side}": {fmt_number(value)}}}}}'
        )
    lowest, highest = METRIC_RANGES[metric]
    if lowest is not None and value < lowest:
        raise GateError(
            f"threshold override {metric} {side} {fmt_number(value)} can never be met: "
            f"{metric} is at least {fmt_number(lowest)}"
        )
    if highest is not None and value > highest:
        raise GateError(
            f"threshold override {metric} {side} {fmt_number(value)} can never be met: "
            f"{metric} is at most {fmt_number(highest)}"
        )


def _override_bounds(metric: str, spec: Any) -> dict[str, float | None]:
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"min", "max"}
        if unknown or not spec:
            raise GateError(f"threshold override for {metric!r} must use 'min' and/or 'max', got {dict(spec)!r}")
        return {side: (None if v is None else _finite(metric, v)) for side, v in spec.items()}
    return {"min" if KNOWN_DIRECTIONS[metric] else "max": _finite(metric, spec)}


def _finite(metric: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GateError(f"threshold override for {metric!r} must be a finite number, got {value!r}")
    return float(value)


def _positive(metric: str, value: float | None) -> float:
    if value is None or value <= 0:
        raise GateError(f"budget override for {metric!r} must be > 0, got {value!r}")
    return value


def _tolerance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GateError(f"max_regression override must be a number >= 0 (0.05 = 5 % worse allowed), got {value!r}")
    return float(value)


__all__ = ["KNOWN_DIRECTIONS", "check_bound", "with_overrides"]
