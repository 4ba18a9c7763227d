"""The gate's rules: threshold, change and budget checks.

A candidate passes when every check passes:

* **threshold** checks: absolute bounds from ``gate.thresholds`` (``min`` and/or
  ``max`` per metric), e.g. ``r2 >= 0.2``;
* **change** checks: relative worsening against the champion (the version
  labelled ``stable``) of at most ``gate.max_regression[metric]``.  The
  direction comes from ``higher_is_better``.  With no champion (the first run)
  they are recorded as *skipped* and do not block;
* **budget** checks: upper bounds from ``gate.budgets`` (``size_mb``,
  ``latency_ms``).

The allowed worsening is relative to the champion's magnitude, so the bound is
``champion - tol * |champion|`` when higher is better and
``champion + tol * |champion|`` when lower is better.  That stays meaningful for
negative values (an r2 below zero) and for a champion value of exactly zero,
where the candidate must simply not be worse.  A metric that is missing, not a
number, NaN or infinite fails every check that needs it.

Overrides of the configured bounds from the trigger form are merged, and
refused when no model could meet them, by :mod:`.overrides`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from include.mlops.config import GateConfig
from include.mlops.exit_codes import BadInputError

CHECK_KINDS = ("threshold", "change", "budget")
# Float noise must not fail a candidate that sits exactly on a bound (0.8 * 0.95 != 0.76 in binary).
_REL_TOL = 1e-9
_ABS_TOL = 1e-12


class GateError(BadInputError, ValueError):
    """The gate's inputs are invalid (an unknown metric, a bad override value): bad input, exit 3."""


@dataclass(frozen=True)
class GateCheck:
    """One check of the gate and its outcome.

    ``comparison`` is ``">="`` or ``"<="``: the check passes when
    ``value <comparison> bound``.  ``skipped`` checks (change checks with no
    champion value to compare against) count as passed.
    """

    kind: str
    metric: str
    value: float | None
    bound: float | None
    comparison: str
    passed: bool
    message: str
    champion_value: float | None = None
    tolerance: float | None = None
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # NaN/inf are not JSON; the message still carries the original value.
        for key in ("value", "bound", "champion_value", "tolerance"):
            data[key] = _json_number(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateCheck:
        if data.get("kind") not in CHECK_KINDS:
            raise GateError(f"gate check has unknown kind {data.get('kind')!r} (known: {', '.join(CHECK_KINDS)})")
        return cls(
            kind=str(data["kind"]),
            metric=str(data["metric"]),
            value=data.get("value"),
            bound=data.get("bound"),
            comparison=str(data.get("comparison", "")),
            passed=bool(data["passed"]),
            message=str(data.get("message", "")),
            champion_value=data.get("champion_value"),
            tolerance=data.get("tolerance"),
            skipped=bool(data.get("skipped", False)),
        )


def run_checks(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    gate: GateConfig,
    higher_is_better: Mapping[str, bool],
    *,
    champion_unavailable: str | None = None,
) -> tuple[GateCheck, ...]:
    """Every check ``gate`` configures, in order: thresholds, change thresholds, budgets.

    ``champion`` is None when there is nothing to compare against;
    ``champion_unavailable`` then says why, in the skipped change checks.
    """
    checks: list[GateCheck] = []
    for metric, bounds in gate.thresholds.items():
        for side in ("min", "max"):
            if side in bounds:
                checks.append(_bound_check("threshold", metric, candidate, float(bounds[side]), side))
    for metric, tolerance in gate.max_regression.items():
        checks.append(
            _change_check(
                metric,
                candidate,
                champion,
                float(tolerance),
                _direction(metric, higher_is_better),
                champion_unavailable=champion_unavailable,
            )
        )
    for metric, budget in gate.budgets.items():
        checks.append(_bound_check("budget", metric, candidate, float(budget), "max"))
    return tuple(checks)


def _direction(metric: str, higher_is_better: Mapping[str, bool]) -> bool:
    if metric not in higher_is_better:
        raise GateError(
            f"the gate has a change threshold on {metric!r} but its direction is unknown "
            f"(higher_is_better names: {', '.join(sorted(higher_is_better)) or 'none'})"
        )
    return bool(higher_is_better[metric])


def _number(metrics: Mapping[str, Any] | None, metric: str) -> tuple[float | None, str | None]:
    """The metric as a finite float, or None and why not."""
    if metrics is None or metric not in metrics or metrics[metric] is None:
        available = ", ".join(sorted(metrics)) if metrics else "none"
        return None, f"is missing (available: {available})"
    raw = metrics[metric]
    # numbers.Real admits numpy scalars; strings and bools are a bug upstream, not a metric.
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        return None, f"is not a number ({raw!r})"
    value = float(raw)
    if not math.isfinite(value):
        return None, f"is {value} (not a finite number)"
    return value, None


def _meets(value: float, bound: float, comparison: str) -> bool:
    if math.isclose(value, bound, rel_tol=_REL_TOL, abs_tol=_ABS_TOL):
        return True
    return value >= bound if comparison == ">=" else value <= bound


def _bound_check(kind: str, metric: str, candidate: Mapping[str, Any], bound: float, side: str) -> GateCheck:
    comparison = ">=" if side == "min" else "<="
    label = "budget" if kind == "budget" else "threshold"
    value, problem = _number(candidate, metric)
    if value is None:
        return GateCheck(
            kind, metric, _raw_float(candidate, metric), bound, comparison, False,
            f"{metric}: the candidate's value {problem}; the {label} needs {metric} {comparison} {fmt_number(bound)}",
        )  # fmt: skip
    passed = _meets(value, bound, comparison)
    verdict = "meets" if passed else "violates"
    return GateCheck(
        kind, metric, value, bound, comparison, passed,
        f"{metric} = {fmt_number(value)} {verdict} the {label} {comparison} {fmt_number(bound)}",
    )  # fmt: skip


def _change_check(
    metric: str,
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    tolerance: float,
    higher_is_better: bool,
    *,
    champion_unavailable: str | None = None,
) -> GateCheck:
    comparison = ">=" if higher_is_better else "<="
    allowed = f"{tolerance:.1%} worse than the champion"
    if champion is None:
        value, _ = _number(candidate, metric)
        why = champion_unavailable or "no champion yet (first version)"
        return GateCheck(
            "change", metric, value, None, comparison, True,
            f"{metric}: {why}, change threshold skipped",
            tolerance=tolerance, skipped=True,
        )  # fmt: skip
    champ_value, champ_problem = _number(champion, metric)
    value, problem = _number(candidate, metric)
    if value is None:
        return GateCheck(
            "change", metric, _raw_float(candidate, metric), None, comparison, False,
            f"{metric}: the candidate's value {problem}; the change threshold allows at most {allowed}",
            champion_value=champ_value, tolerance=tolerance,
        )  # fmt: skip
    if champ_value is None:
        # A champion that predates the metric cannot be compared against; that must not block forever.
        return GateCheck(
            "change", metric, value, None, comparison, True,
            f"{metric}: the champion's value {champ_problem}, change threshold skipped",
            tolerance=tolerance, skipped=True,
        )  # fmt: skip
    slack = tolerance * abs(champ_value)
    bound = champ_value - slack if higher_is_better else champ_value + slack
    passed = _meets(value, bound, comparison)
    worse = (champ_value - value) if higher_is_better else (value - champ_value)
    if worse == 0:
        change = "unchanged"
    elif champ_value == 0:
        change = "worse" if worse > 0 else "better"
    else:
        change = f"{abs(worse) / abs(champ_value):.2%} {'worse' if worse > 0 else 'better'}"
    verdict = "within" if passed else "beyond"
    return GateCheck(
        "change", metric, value, bound, comparison, passed,
        f"{metric} = {fmt_number(value)} vs champion {fmt_number(champ_value)} ({change}): {verdict} the allowed {allowed} "
        f"(needs {comparison} {fmt_number(bound)})",
        champion_value=champ_value, tolerance=tolerance,
    )  # fmt: skip


def _raw_float(metrics: Mapping[str, Any] | None, metric: str) -> float | None:
    """The value as given, for the record, when it is a float at all (NaN included)."""
    raw = (metrics or {}).get(metric)
    return float(raw) if isinstance(raw, numbers.Real) and not isinstance(raw, bool) else None


def _json_number(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def fmt_number(value: float | None) -> str:
    """A metric or bound as the gate's messages and tables show it (``-`` for none)."""
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.6g}"


__all__ = [
    "CHECK_KINDS",
    "GateCheck",
    "GateError",
    "fmt_number",
    "run_checks",
]
