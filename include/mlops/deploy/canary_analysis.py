"""Judging one canary check, as Flagger does: the canary track against the stable track over one window.

A check compares three figures of the canary with the stable's over the same
window (see :mod:`include.mlops.deploy.canary_metrics` for how they are
measured):

``error_ratio``          canary <= stable + ``max_error_ratio_increase``
``p95_latency``          canary <= stable * ``max_p95_latency_ratio``
``prediction_distance``  <= ``max_prediction_distance`` (not measured, and not blocking, when neither track
                         exports prediction series: stock TF Serving)

Outcome: ``inconclusive`` when Prometheus could not be asked, or either track
had fewer than ``min_requests`` requests; else ``fail`` when any figure is
beyond its limit; else ``inconclusive`` when a figure could not be measured
(NaN, no samples); else ``pass``.  Never a pass without evidence, never a fail
without a figure beyond its limit.

:class:`CheckResult` is plain data: :meth:`CheckResult.to_dict` is JSON (no NaN
or infinity: NaN is ``null``, infinity ``"inf"``) for XCom and reports, and
:meth:`CheckResult.summary` is one line for a log.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from include.mlops.config.deploy import CanaryConfig

Outcome = Literal["pass", "fail", "inconclusive"]
OUTCOMES: tuple[str, ...] = ("pass", "fail", "inconclusive")
TRACKS = ("stable", "canary")


@dataclasses.dataclass(frozen=True)
class TrackFigures:
    """One track's figures over the window: counts are Prometheus's ``increase()`` (extrapolated, so near)."""

    requests: float
    errors: float  # requests with a status other than OK, plus rows whose output was NaN or infinite
    p95_ms: float  # NaN when the track had no latency sample in the window

    @property
    def error_ratio(self) -> float:
        """``errors / requests``, at most 1 (a request of several non-finite rows counts each row); NaN without
        requests."""
        if not self.requests > 0:
            return math.nan
        return min(1.0, self.errors / self.requests)


@dataclasses.dataclass(frozen=True)
class Measurements:
    """What one window showed, for :func:`judge`.

    ``distance_method`` is None when neither track exports prediction series (the distance is then not
    measured and does not block); ``distance`` is None (with a line in ``problems``) when the series exist but
    give no distance.  ``unavailable`` says why Prometheus could not be asked at all; the tracks are then None.
    """

    weight: int
    end: float  # the window's end, Unix seconds
    interval_s: float
    stable: TrackFigures | None
    canary: TrackFigures | None
    distance: float | None = None
    distance_method: str | None = None
    problems: tuple[str, ...] = ()
    unavailable: str | None = None


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One comparison: the canary's ``value`` against ``threshold`` (derived from the stable's ``baseline``).

    ``passed`` is None when it could not be decided; such a criterion blocks a pass only when ``required``.
    """

    name: str
    value: float | None
    baseline: float | None
    threshold: float | None
    passed: bool | None
    required: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class CheckResult:
    outcome: Outcome
    weight: int
    end: float
    interval_s: float
    criteria: tuple[Criterion, ...]
    reasons: tuple[str, ...]  # why the check is inconclusive (or what could not be measured)
    requests: dict[str, float | None]  # per track; None when Prometheus could not be asked

    def summary(self) -> str:
        """One line: ``step 25 %: fail — error ratio 0.400 > 0.000 + 0.010; p95 1.2 ms <= 2.0 x 0.9 ms; ...``."""
        parts = [c.detail for c in self.criteria] + list(self.reasons)
        return f"step {self.weight} %: {self.outcome} — " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (NaN as None, infinities as ``"inf"``/``"-inf"``); :meth:`from_dict` reads it back."""
        return {
            "outcome": self.outcome,
            "weight": self.weight,
            "end": self.end,
            "interval_s": self.interval_s,
            "criteria": [
                {k: _to_json(v) for k, v in dataclasses.asdict(criterion).items()} for criterion in self.criteria
            ],
            "reasons": list(self.reasons),
            "requests": {track: _to_json(value) for track, value in self.requests.items()},
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        if data["outcome"] not in OUTCOMES:
            raise ValueError(f"unknown check outcome {data['outcome']!r} (known: {', '.join(OUTCOMES)})")
        return cls(
            outcome=data["outcome"],
            weight=int(data["weight"]),
            end=float(data["end"]),
            interval_s=float(data["interval_s"]),
            criteria=tuple(Criterion(**{k: _from_json(v) for k, v in item.items()}) for item in data["criteria"]),
            reasons=tuple(data["reasons"]),
            requests={track: _from_json(value) for track, value in data["requests"].items()},
        )


def _to_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _from_json(value: Any) -> Any:
    return float(value) if value in ("inf", "-inf") else value


# --------------------------------------------------------------------------- the comparisons


def _at_most(value: float, limit: float) -> bool | None:
    """``value <= limit`` (with float rounding forgiven); None when either is NaN or the limit is infinite."""
    if math.isnan(value) or not math.isfinite(limit):
        return None
    return value <= limit or math.isclose(value, limit, rel_tol=1e-9, abs_tol=1e-12)


def _verdict(passed: bool | None) -> str:
    return {True: "<=", False: ">", None: "?"}[passed]


def _error_ratio(stable: TrackFigures, canary: TrackFigures, config: CanaryConfig) -> Criterion:
    base, value = stable.error_ratio, canary.error_ratio
    threshold = base + config.max_error_ratio_increase
    passed = _at_most(value, threshold)
    detail = f"error ratio {value:.3f} {_verdict(passed)} {base:.3f} + {config.max_error_ratio_increase:.3f}"
    return Criterion("error_ratio", value, base, threshold, passed, True, detail)


def _p95_latency(stable: TrackFigures, canary: TrackFigures, config: CanaryConfig) -> Criterion:
    base, value = stable.p95_ms, canary.p95_ms
    threshold = base * config.max_p95_latency_ratio
    passed = _at_most(value, threshold)
    detail = f"p95 {value:.1f} ms {_verdict(passed)} {config.max_p95_latency_ratio:g} x {base:.1f} ms"
    if passed is None:
        detail += " (not measured: a track had no latency sample, or one beyond the largest bucket)"
    return Criterion("p95_latency", value, base, threshold, passed, True, detail)


def _distance(measurements: Measurements, config: CanaryConfig) -> Criterion:
    limit = config.max_prediction_distance
    method, value = measurements.distance_method, measurements.distance
    if method is None:
        detail = "prediction distance not measured (neither track exports prediction series; does not block)"
        return Criterion("prediction_distance", None, None, limit, None, False, detail)
    passed = None if value is None else _at_most(value, limit)
    shown = "?" if value is None else f"{value:.3f}"
    detail = f"prediction distance ({method}) {shown} {_verdict(passed)} {limit:.3f}"
    return Criterion("prediction_distance", value, None, limit, passed, True, detail)


def _too_few(measurements: Measurements, config: CanaryConfig) -> list[str]:
    reasons = []
    for track in TRACKS:
        figures: TrackFigures = getattr(measurements, track)
        if not figures.requests >= config.min_requests:
            reasons.append(
                f"{track}: {figures.requests:.0f} requests in {measurements.interval_s:g} s, fewer than "
                f"min_requests ({config.min_requests})"
            )
    return reasons


def judge(measurements: Measurements, config: CanaryConfig) -> CheckResult:
    """The outcome of one check (see the module docstring for the rules)."""
    m = measurements
    if m.unavailable is not None or m.stable is None or m.canary is None:
        reason = m.unavailable or "no figures for one of the tracks"
        return CheckResult("inconclusive", m.weight, m.end, m.interval_s, (), (reason,), dict.fromkeys(TRACKS))
    criteria = (
        _error_ratio(m.stable, m.canary, config),
        _p95_latency(m.stable, m.canary, config),
        _distance(m, config),
    )
    too_few = _too_few(m, config)
    reasons = tuple(too_few) + m.problems
    if too_few:
        outcome: Outcome = "inconclusive"
    elif any(c.passed is False for c in criteria):
        outcome = "fail"
    elif any(c.passed is None and c.required for c in criteria):
        outcome = "inconclusive"
    else:
        outcome = "pass"
    requests = {"stable": m.stable.requests, "canary": m.canary.requests}
    return CheckResult(outcome, m.weight, m.end, m.interval_s, criteria, reasons, requests)
