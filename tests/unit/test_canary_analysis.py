"""The canary analysis without a Prometheus: judging one check, the distances, the progression, JSON.

Expected values are computed here from raw numbers (numpy on the rows, plain arithmetic on the counts),
never with the module's own helpers.
"""

from __future__ import annotations

import dataclasses
import json
import math

import httpx
import numpy as np
import pytest

from include.mlops.config import CanaryConfig
from include.mlops.deploy.canary_analysis import CheckResult, Measurements, TrackFigures, judge
from include.mlops.deploy.canary_metrics import (
    SMD,
    TVD,
    Moments,
    canary_queries,
    figures_from_answers,
    measure_canary,
    standardized_mean_difference,
    total_variation_distance,
)
from include.mlops.deploy.canary_progress import CanaryState, advance, current_weight
from include.mlops.serving.metrics import ROUTE_LATENCY, ROUTE_PREDICTED_CLASS, ROUTE_REQUESTS

CONFIG = CanaryConfig(min_requests=20)  # steps 10/25/50, +0.01 error ratio, x2 p95, distance 0.5


def measured(
    stable: tuple[float, float, float] = (200, 2, 10.0),
    canary: tuple[float, float, float] = (50, 1, 15.0),
    distance: float | None = 0.1,
    method: str | None = TVD,
    **more: object,
) -> Measurements:
    """Figures as (requests, errors, p95 ms) per track."""
    return Measurements(
        weight=25,
        end=1_700_000_000.0,
        interval_s=60.0,
        stable=TrackFigures(*stable),
        canary=TrackFigures(*canary),
        distance=distance,
        distance_method=method,
        **more,  # type: ignore[arg-type]
    )


def by_name(result: CheckResult) -> dict[str, object]:
    return {c.name: c for c in result.criteria}


# --------------------------------------------------------------------------- judge


def test_a_canary_within_every_limit_passes_even_at_the_limits() -> None:
    # stable 2/200 = 0.01, so the canary may have 0.02: 1/50 is exactly that. p95 15 ms <= 2 x 10 ms.
    result = judge(measured(), CONFIG)
    assert result.outcome == "pass", result.summary()
    criteria = by_name(result)
    error = criteria["error_ratio"]
    assert (error.value, error.baseline, error.passed) == (pytest.approx(0.02), pytest.approx(0.01), True)
    assert error.threshold == pytest.approx(0.02)
    assert (criteria["p95_latency"].threshold, criteria["p95_latency"].passed) == (20.0, True)
    assert criteria["prediction_distance"].passed is True
    assert result.requests == {"stable": 200, "canary": 50}
    assert result.summary() == (
        "step 25 %: pass — error ratio 0.020 <= 0.010 + 0.010; p95 15.0 ms <= 2 x 10.0 ms; "
        f"prediction distance ({TVD}) 0.100 <= 0.500"
    )


def test_a_canary_with_more_errors_fails_and_says_which_limit() -> None:
    result = judge(measured(canary=(50, 20, 9.0)), CONFIG)  # 20/50 = 0.4 > 0.01 + 0.01
    assert result.outcome == "fail"
    assert by_name(result)["error_ratio"].passed is False
    assert result.summary().startswith("step 25 %: fail — error ratio 0.400 > 0.010 + 0.010; p95 9.0 ms <= 2 x")


@pytest.mark.parametrize(
    ("canary_p95", "distance", "failing"),
    [(20.5, 0.1, "p95_latency"), (math.inf, 0.1, "p95_latency"), (15.0, 0.51, "prediction_distance")],
)
def test_latency_or_distance_beyond_its_limit_fails(canary_p95: float, distance: float, failing: str) -> None:
    result = judge(measured(canary=(50, 1, canary_p95), distance=distance), CONFIG)
    assert result.outcome == "fail"
    assert [c.name for c in result.criteria if c.passed is False] == [failing]


def test_too_few_requests_on_either_track_is_inconclusive_even_with_errors() -> None:
    result = judge(measured(canary=(19, 19, 15.0)), CONFIG)
    assert result.outcome == "inconclusive"
    assert result.reasons == ("canary: 19 requests in 60 s, fewer than min_requests (20)",)
    # The figures are still reported.
    assert by_name(result)["error_ratio"].passed is False
    assert judge(measured(stable=(0, 0, math.nan)), CONFIG).outcome == "inconclusive"


def test_prometheus_unavailable_is_inconclusive_with_the_reason() -> None:
    m = Measurements(weight=10, end=1.0, interval_s=60.0, stable=None, canary=None, unavailable="connection refused")
    result = judge(m, CONFIG)
    assert (result.outcome, result.reasons, result.criteria) == ("inconclusive", ("connection refused",), ())
    assert result.summary() == "step 10 %: inconclusive — connection refused"


@pytest.mark.parametrize(
    "change",
    [
        {"canary": (50, 1, math.nan)},  # no canary latency sample
        {"stable": (200, 2, math.inf)},  # the stable beyond the largest bucket: no finite limit
        {"distance": None, "problems": ("prediction distance: a track has no prediction series",)},
        {"distance": math.nan},
    ],
)
def test_a_figure_that_cannot_be_measured_is_inconclusive_not_a_pass(change: dict[str, object]) -> None:
    result = judge(measured(**change), CONFIG)
    assert result.outcome == "inconclusive", result.summary()
    assert [c.passed for c in result.criteria].count(None) == 1


def test_an_unmeasured_figure_does_not_hide_a_failed_one() -> None:
    assert judge(measured(canary=(50, 30, math.nan)), CONFIG).outcome == "fail"


def test_no_prediction_series_at_all_is_not_measured_and_does_not_block() -> None:
    result = judge(measured(distance=None, method=None), CONFIG)
    assert result.outcome == "pass"
    distance = by_name(result)["prediction_distance"]
    assert (distance.passed, distance.required, distance.value) == (None, False, None)
    assert "prediction distance not measured" in result.summary()


def test_the_error_ratio_counts_nonfinite_rows_and_stays_at_most_one() -> None:
    assert TrackFigures(requests=10, errors=25, p95_ms=1.0).error_ratio == 1.0
    assert math.isnan(TrackFigures(requests=0, errors=0, p95_ms=math.nan).error_ratio)


# --------------------------------------------------------------------------- distances and Prometheus's answers


def test_standardized_mean_difference_matches_numpy() -> None:
    rng = np.random.default_rng(7)
    stable, canary = rng.normal(3.0, 2.0, 500), rng.normal(3.5, 1.0, 300)
    expected = abs(canary.mean() - stable.mean()) / stable.std()  # population std, as from the sums
    got = standardized_mean_difference(*(Moments(len(x), x.sum(), (x**2).sum()) for x in (stable, canary)))
    assert got == pytest.approx(expected, rel=1e-9)


def test_standardized_mean_difference_of_a_constant_stable() -> None:
    constant = Moments(rows=4, total=8.0, squares=16.0)  # four rows of 2.0
    assert standardized_mean_difference(constant, Moments(2, 4.0, 8.0)) == 0.0
    assert standardized_mean_difference(constant, Moments(2, 5.0, 12.5)) == math.inf
    with pytest.raises(ValueError, match="at least one prediction row"):
        standardized_mean_difference(constant, Moments(0, 0.0, 0.0))


def test_total_variation_distance_matches_the_class_shares() -> None:
    stable_rows, canary_rows = np.array([0] * 60 + [1] * 30 + [2] * 10), np.array([0] * 10 + [1] * 5 + [3] * 5)
    p = np.bincount(stable_rows, minlength=4) / len(stable_rows)
    q = np.bincount(canary_rows, minlength=4) / len(canary_rows)
    expected = 0.5 * np.abs(p - q).sum()  # 0.5 * (0.1 + 0.05 + 0.1 + 0.25) = 0.25
    got = total_variation_distance({"0": 60, "1": 30, "2": 10}, {"0": 10, "1": 5, "3": 5})
    assert got == pytest.approx(expected) == pytest.approx(0.25)


def vector(*samples: tuple[dict[str, str], float]) -> list[tuple[dict[str, str], float]]:
    return list(samples)


def answers(**given: list[tuple[dict[str, str], float]]) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {name: given.get(name, []) for name in canary_queries("m", 60)}


def test_figures_from_answers_sum_errors_and_read_the_moments() -> None:
    got = figures_from_answers(
        answers(
            requests=vector(({"track": "stable"}, 100.0), ({"track": "canary"}, 40.0)),
            failed_requests=vector(({"track": "canary"}, 3.0)),
            nonfinite_rows=vector(({"track": "canary"}, 1.0)),
            p95_us=vector(({"track": "stable"}, 1500.0), ({"track": "canary"}, math.nan)),
            prediction_rows=vector(({"track": "stable"}, 4.0), ({"track": "canary"}, 2.0)),
            prediction_sum=vector(({"track": "stable"}, 10.0), ({"track": "canary"}, 8.0)),
            prediction_squares=vector(({"track": "stable"}, 30.0), ({"track": "canary"}, 32.0)),
        ),
        weight=10,
        end=5.0,
        interval_s=60.0,
    )
    assert (got.stable.requests, got.stable.errors, got.stable.p95_ms) == (100.0, 0.0, 1.5)
    assert (got.canary.requests, got.canary.errors) == (40.0, 4.0) and math.isnan(got.canary.p95_ms)
    # stable mean 2.5, variance 30/4 - 6.25 = 1.25; canary mean 4: |4 - 2.5| / sqrt(1.25)
    assert got.distance_method == SMD and got.distance == pytest.approx(1.5 / math.sqrt(1.25))
    assert got.problems == ()


def test_figures_without_prediction_series_leave_the_distance_unmeasured_and_classes_win() -> None:
    requests = vector(({"track": "stable"}, 100.0))
    bare = figures_from_answers(answers(requests=requests), weight=10, end=0.0, interval_s=60.0)
    assert (bare.distance, bare.distance_method, bare.problems) == (None, None, ())
    assert bare.canary.requests == 0.0
    one_sided = figures_from_answers(
        answers(predicted_class=vector(({"track": "stable", "class": "1"}, 5.0))), weight=10, end=0.0, interval_s=60
    )
    assert (one_sided.distance, one_sided.distance_method) == (None, TVD)
    assert one_sided.problems == ("prediction distance: each track needs at least one predicted class in the window",)


def test_the_queries_name_the_route_series() -> None:
    queries = canary_queries("diabetes", 7.5)
    assert queries["requests"] == f'sum by (track) (increase({ROUTE_REQUESTS}{{model_name="diabetes"}}[7500ms]))'
    assert f'{ROUTE_LATENCY}_bucket{{model_name="diabetes"}}[7500ms]' in queries["p95_us"]
    assert queries["predicted_class"].startswith(f"sum by (track, class) (increase({ROUTE_PREDICTED_CLASS}")
    assert canary_queries("m", 60)["requests"].endswith("[60s]))")


@pytest.mark.parametrize(
    ("respond", "reason"),
    [
        (lambda r: httpx.Response(503, text="down for maintenance"), "HTTP 503"),
        (
            lambda r: httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error"}),
            "bad_data: parse error",
        ),
        (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("timed out", request=r)), "ReadTimeout"),
    ],
)
def test_prometheus_errors_make_the_measurement_unavailable(respond: object, reason: str) -> None:
    with httpx.Client(transport=httpx.MockTransport(respond)) as client:  # type: ignore[arg-type]
        got = measure_canary("http://prometheus:9090", "m", weight=10, interval_s=60, client=client)
    assert got.stable is None and got.canary is None
    assert reason in got.unavailable
    assert judge(got, CONFIG).outcome == "inconclusive"


# --------------------------------------------------------------------------- progression


def result(outcome: str, weight: int = 10) -> CheckResult:
    return CheckResult(outcome, weight, 0.0, 60.0, (), (), {"stable": 100.0, "canary": 20.0})  # type: ignore[arg-type]


def test_passes_walk_the_steps_and_promote_after_the_last() -> None:
    state = CanaryState()
    weights, actions = [current_weight(state, CONFIG)], []
    for _ in CONFIG.steps:
        state, action = advance(state, result("pass"), CONFIG)
        weights.append(current_weight(state, CONFIG))
        actions.append(action)
    assert actions == ["next_step", "next_step", "promote"]
    assert weights == [10, 25, 50, 100]
    assert state.finished == "promoted" and len(state.history) == 3
    with pytest.raises(ValueError, match="is over"):
        advance(state, result("pass"), CONFIG)


def test_failures_repeat_the_step_then_abort_at_the_limit_and_a_pass_resets_nothing() -> None:
    state, action = advance(CanaryState(), result("fail"), CONFIG)
    assert (action, state.failed_checks, state.step_index) == ("repeat", 1, 0)
    state, action = advance(state, result("pass"), CONFIG)
    assert (action, state.failed_checks, current_weight(state, CONFIG)) == ("next_step", 1, 25)
    state, action = advance(state, result("fail"), CONFIG)
    assert (action, state.failed_checks, state.finished) == ("abort", 2, "aborted")
    assert current_weight(state, CONFIG) == 0


def test_inconclusive_checks_count_apart_and_abort_at_their_own_limit() -> None:
    config = dataclasses.replace(CONFIG, inconclusive_limit=2, failure_limit=1)
    state, action = advance(CanaryState(), result("inconclusive"), config)
    assert (action, state.inconclusive_checks, state.failed_checks) == ("repeat", 1, 0)
    state, action = advance(state, result("inconclusive"), config)
    assert (action, state.finished) == ("abort", "aborted")
    state, action = advance(CanaryState(), result("fail"), config)  # failure_limit 1: the first fail aborts
    assert action == "abort"


def test_a_single_step_canary_promotes_on_its_first_pass() -> None:
    config = dataclasses.replace(CONFIG, steps=(50,))
    assert advance(CanaryState(), result("pass", 50), config)[1] == "promote"


def test_a_state_beyond_the_configured_steps_is_refused() -> None:
    with pytest.raises(ValueError, match=r"was deploy\.canary\.steps changed"):
        current_weight(CanaryState(step_index=3), CONFIG)
    with pytest.raises(ValueError, match="whole number >= 0"):
        CanaryState(failed_checks=-1)


def test_results_and_state_survive_a_json_round_trip() -> None:
    checks = [
        judge(measured(canary=(50, 1, math.inf)), CONFIG),
        judge(measured(distance=None, method=None, canary=(50, 1, math.nan)), CONFIG),
        judge(Measurements(weight=10, end=1.0, interval_s=5.0, stable=None, canary=None, unavailable="down"), CONFIG),
    ]
    for check in checks:
        text = json.dumps(check.to_dict(), allow_nan=False)
        back = CheckResult.from_dict(json.loads(text))
        assert back.summary() == check.summary()
        assert back.to_dict() == check.to_dict()
    assert checks[0].to_dict()["criteria"][1]["value"] == "inf"
    assert checks[1].to_dict()["criteria"][1]["value"] is None
    state = CanaryState(step_index=1, failed_checks=1, inconclusive_checks=2, history=tuple(checks))
    text = json.dumps(state.to_dict(), allow_nan=False)
    assert CanaryState.from_dict(json.loads(text)).to_dict() == state.to_dict()
    with pytest.raises(ValueError, match="unknown check outcome"):
        CheckResult.from_dict({**checks[0].to_dict(), "outcome": "maybe"})
