"""The gate's decision function: thresholds, change thresholds, budgets, force, overrides."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from include.mlops.config import BUDGET_METRICS, METRICS, PROJECT_ROOT, GateConfig, ModelConfig
from include.mlops.evaluation import gate as gate_lib
from include.mlops.evaluation.gate import (
    ChampionUnscoredError,
    GateCheck,
    GateDecision,
    GateError,
    UnscoredChampion,
    decide,
    decide_for_config,
    with_overrides,
)
from include.mlops.exit_codes import BadInputError

REGRESSION = {**METRICS["regression"], **BUDGET_METRICS}
CLASSIFICATION = {**METRICS["classification"], **BUDGET_METRICS}

GATE = GateConfig(
    thresholds={"r2": {"min": 0.2}, "mae": {"max": 65.0}},
    max_regression={"mae": 0.05, "r2": 0.10},
    budgets={"size_mb": 5.0, "latency_ms": 50.0},
)
GOOD = {"mae": 45.0, "rmse": 56.0, "r2": 0.45, "mse": 3136.0, "size_mb": 0.1, "latency_ms": 2.0}


def check(decision: GateDecision, kind: str, metric: str, side: str | None = None) -> GateCheck:
    matches = [
        c
        for c in decision.checks
        if c.kind == kind and c.metric == metric and (side is None or c.comparison == (">=" if side == "min" else "<="))
    ]
    assert len(matches) == 1, decision.checks
    return matches[0]


# --------------------------------------------------------------------------- first run and thresholds


def test_first_run_skips_change_thresholds_and_records_them_as_skipped() -> None:
    decision = decide(GOOD, None, GATE, REGRESSION)
    assert decision.passed and not decision.override and not decision.has_champion
    changes = [c for c in decision.checks if c.kind == "change"]
    assert {c.metric for c in changes} == {"mae", "r2"}
    assert all(c.skipped and c.passed and c.bound is None for c in changes)
    assert all("no champion" in c.message for c in changes)
    assert "change thresholds were skipped" in decision.to_markdown()
    # Every configured check is present: 2 thresholds, 2 changes, 2 budgets.
    assert [c.kind for c in decision.checks].count("threshold") == 2
    assert [c.kind for c in decision.checks].count("budget") == 2


UNSCORED = {
    "version": 3,
    "reason": "model /models/diabetes/3 expects 10 features, the config has 11",
    "model_uri": "/models/diabetes/3",
}


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force_deploy"])
def test_an_unscored_champion_fails_the_gate_closed_naming_the_version_and_why(force: bool) -> None:
    # The candidate meets every absolute check: without the champion it would pass, however much worse it is.
    with pytest.raises(ChampionUnscoredError) as caught:
        decide(GOOD, None, GATE, REGRESSION, force=force, champion_unscored=UNSCORED)
    message = str(caught.value)
    assert "the gate fails closed: the champion (version 3) could not be scored" in message
    assert UNSCORED["reason"] in message
    assert "accept_without_champion=true" in message
    assert caught.value.unscored == UnscoredChampion(3, UNSCORED["reason"], "/models/diabetes/3")
    # Bad input: exit 3 from a CLI, no retry; a GateError like the gate's other refusals.
    assert isinstance(caught.value, BadInputError) and isinstance(caught.value, GateError)


def test_an_unscored_champion_given_by_path_is_named_by_its_path(diabetes_config: ModelConfig) -> None:
    unscored = {"version": None, "reason": "no model at /tmp/champ", "model_uri": "/tmp/champ"}
    with pytest.raises(ChampionUnscoredError, match=r"the champion \(/tmp/champ\) could not be scored: no model at"):
        decide_for_config(diabetes_config, GOOD, None, champion_unscored=unscored)


def test_accept_without_champion_decides_on_the_absolute_checks_and_records_it() -> None:
    decision = decide(GOOD, None, GATE, REGRESSION, champion_unscored=UNSCORED, accept_without_champion=True)
    assert decision.passed and not decision.override and not decision.has_champion
    assert decision.accepted_without_champion
    assert decision.champion_unscored == UnscoredChampion.from_dict(UNSCORED)
    changes = [c for c in decision.checks if c.kind == "change"]
    assert changes and all(c.skipped and c.passed for c in changes)
    assert all("could not be scored" in c.message and "accepted without a champion" in c.message for c in changes)
    record = decision.to_dict()
    assert record["accepted_without_champion"] is True and record["champion_unscored"] == UNSCORED
    assert GateDecision.from_dict(json.loads(json.dumps(record))) == decision
    assert decision.lineage_record() == {"accepted_without_champion": True, "champion_unscored": UNSCORED}
    markdown = decision.to_markdown()
    assert "accepted without a champion" in decision.summary()
    assert "**Accepted without a champion**: the champion (version 3) could not be scored" in markdown
    # The absolute thresholds and budgets still decide.
    worse = decide(
        {**GOOD, "r2": 0.1}, None, GATE, REGRESSION, champion_unscored=UNSCORED, accept_without_champion=True
    )
    assert not worse.passed and worse.failed_metrics == ("r2",)


def test_accept_without_champion_changes_nothing_when_the_champion_was_scored() -> None:
    champion = {**GOOD, "mae": 40.0}
    decision = decide(GOOD, champion, GATE, REGRESSION, accept_without_champion=True)
    assert not decision.accepted_without_champion and decision.champion_unscored is None
    assert not decision.passed and decision.failed_metrics == ("mae",)  # 12.5 % worse than the champion
    assert decision.lineage_record() == {"accepted_without_champion": False, "champion_unscored": None}
    first = decide(GOOD, None, GATE, REGRESSION, accept_without_champion=True)  # no champion at all: the first run
    assert first.passed and not first.accepted_without_champion


def test_first_run_still_fails_on_absolute_thresholds() -> None:
    decision = decide({**GOOD, "r2": 0.1}, None, GATE, REGRESSION)
    assert not decision.passed
    r2 = check(decision, "threshold", "r2")
    assert not r2.passed and r2.bound == 0.2 and r2.value == 0.1
    assert decision.reasons == (r2.message,)
    assert "r2 = 0.1 violates the threshold >= 0.2" in r2.message
    assert decision.failed_metrics == ("r2",)
    assert decision.failed_budgets == ()


def test_threshold_with_min_and_max_on_one_metric() -> None:
    gate = GateConfig(thresholds={"accuracy": {"min": 0.8, "max": 0.999}})
    assert decide({"accuracy": 0.9}, None, gate, CLASSIFICATION).passed
    too_good = decide({"accuracy": 1.0}, None, gate, CLASSIFICATION)
    assert not too_good.passed
    assert check(too_good, "threshold", "accuracy", "max").passed is False
    assert check(too_good, "threshold", "accuracy", "min").passed is True


def test_value_exactly_on_a_bound_passes_despite_float_noise() -> None:
    # 0.8 * (1 - 0.05) is 0.76000000000000001 in binary; a candidate at 0.76 is within tolerance.
    gate = GateConfig(thresholds={"mae": {"max": 65.0}}, max_regression={"accuracy": 0.05})
    assert decide({"mae": 65.0}, None, gate, {**REGRESSION, "accuracy": True}).passed
    decision = decide({"mae": 1.0, "accuracy": 0.76}, {"accuracy": 0.8}, gate, {**REGRESSION, "accuracy": True})
    assert decision.passed, decision.reasons


# --------------------------------------------------------------------------- change thresholds


@pytest.mark.parametrize(
    ("candidate", "passed"),
    [(0.80, True), (0.85, True), (0.77, True), (0.7601, True), (0.7599, False), (0.70, False)],
)
def test_change_threshold_higher_is_better(candidate: float, passed: bool) -> None:
    gate = GateConfig(max_regression={"accuracy": 0.05})
    decision = decide({"accuracy": candidate}, {"accuracy": 0.80}, gate, CLASSIFICATION)
    c = check(decision, "change", "accuracy")
    assert decision.passed is passed and c.passed is passed
    assert c.comparison == ">=" and c.bound == pytest.approx(0.76)
    assert c.champion_value == 0.80 and c.tolerance == 0.05 and not c.skipped
    assert ("beyond" in c.message) is (not passed)


@pytest.mark.parametrize(
    ("candidate", "passed"),
    [(50.0, True), (40.0, True), (52.4, True), (52.5, True), (52.6, False), (60.0, False)],
)
def test_change_threshold_lower_is_better(candidate: float, passed: bool) -> None:
    gate = GateConfig(max_regression={"mae": 0.05})
    decision = decide({"mae": candidate}, {"mae": 50.0}, gate, REGRESSION)
    c = check(decision, "change", "mae")
    assert decision.passed is passed
    assert c.comparison == "<=" and c.bound == pytest.approx(52.5)


def test_change_message_states_relative_change_and_bound() -> None:
    gate = GateConfig(max_regression={"mae": 0.05})
    c = check(decide({"mae": 60.0}, {"mae": 50.0}, gate, REGRESSION), "change", "mae")
    assert "20.00% worse" in c.message and "5.0%" in c.message and "<= 52.5" in c.message
    better = check(decide({"mae": 40.0}, {"mae": 50.0}, gate, REGRESSION), "change", "mae")
    assert "20.00% better" in better.message and better.passed


def test_zero_tolerance_means_not_worse() -> None:
    gate = GateConfig(max_regression={"r2": 0.0})
    assert decide({"r2": 0.5}, {"r2": 0.5}, gate, REGRESSION).passed
    assert decide({"r2": 0.6}, {"r2": 0.5}, gate, REGRESSION).passed
    assert not decide({"r2": 0.499}, {"r2": 0.5}, gate, REGRESSION).passed


def test_zero_champion_value_allows_no_worsening() -> None:
    gate = GateConfig(max_regression={"r2": 0.5, "mae": 0.5})
    same = decide({"r2": 0.0, "mae": 0.0}, {"r2": 0.0, "mae": 0.0}, gate, REGRESSION)
    assert same.passed
    assert check(same, "change", "r2").bound == 0.0 and "unchanged" in check(same, "change", "r2").message
    worse = decide({"r2": -0.01, "mae": 0.1}, {"r2": 0.0, "mae": 0.0}, gate, REGRESSION)
    assert not worse.passed
    assert set(worse.failed_metrics) == {"r2", "mae"}
    better = decide({"r2": 0.3, "mae": 0.0}, {"r2": 0.0, "mae": 0.0}, gate, REGRESSION)
    assert better.passed


def test_negative_champion_uses_its_magnitude() -> None:
    # r2 = -0.5 with 10 % tolerance: the bound is -0.55, not -0.45 (which would demand an improvement).
    gate = GateConfig(max_regression={"r2": 0.10})
    assert decide({"r2": -0.54}, {"r2": -0.5}, gate, REGRESSION).passed
    decision = decide({"r2": -0.56}, {"r2": -0.5}, gate, REGRESSION)
    assert not decision.passed
    assert check(decision, "change", "r2").bound == pytest.approx(-0.55)


def test_champion_without_the_metric_skips_its_change_check() -> None:
    gate = GateConfig(max_regression={"macro_f1": 0.02, "accuracy": 0.02})
    decision = decide({"macro_f1": 0.9, "accuracy": 0.9}, {"accuracy": 0.91}, gate, CLASSIFICATION)
    assert decision.passed and decision.has_champion
    f1 = check(decision, "change", "macro_f1")
    assert f1.skipped and "champion's value is missing" in f1.message
    assert not check(decision, "change", "accuracy").skipped


def test_champion_nan_skips_but_candidate_nan_fails() -> None:
    gate = GateConfig(max_regression={"accuracy": 0.02})
    assert check(decide({"accuracy": 0.9}, {"accuracy": math.nan}, gate, CLASSIFICATION), "change", "accuracy").skipped
    decision = decide({"accuracy": math.nan}, {"accuracy": 0.9}, gate, CLASSIFICATION)
    assert not decision.passed and "nan" in decision.reasons[0]


# --------------------------------------------------------------------------- budgets


def test_budgets_within_and_over() -> None:
    within = decide(GOOD, None, GATE, REGRESSION)
    assert check(within, "budget", "size_mb").passed and check(within, "budget", "latency_ms").passed
    over = decide({**GOOD, "size_mb": 7.5, "latency_ms": 80.0}, {**GOOD}, GATE, REGRESSION)
    assert not over.passed
    assert over.failed_budgets == ("size_mb", "latency_ms")
    assert set(over.failed_metrics) == {"size_mb", "latency_ms"}
    assert "size_mb = 7.5 violates the budget <= 5" in over.reasons[0]


def test_budget_failure_alone_is_reported_as_budget_only() -> None:
    decision = decide({**GOOD, "latency_ms": 51.0}, GOOD, GATE, REGRESSION)
    assert decision.failed_budgets == ("latency_ms",)
    assert [c.kind for c in decision.failed_checks] == ["budget"]


# --------------------------------------------------------------------------- bad metric values


def test_missing_metric_fails_every_check_that_needs_it_with_a_clear_message() -> None:
    candidate = {k: v for k, v in GOOD.items() if k not in ("r2", "size_mb")}
    decision = decide(candidate, GOOD, GATE, REGRESSION)
    assert not decision.passed
    failed = {(c.kind, c.metric) for c in decision.failed_checks}
    assert failed == {("threshold", "r2"), ("change", "r2"), ("budget", "size_mb")}
    assert all("is missing (available: " in reason for reason in decision.reasons)
    assert "latency_ms, mae, mse, rmse" in decision.reasons[0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None, "0.9", True])
def test_non_finite_or_non_numeric_values_fail(bad: object) -> None:
    decision = decide({**GOOD, "r2": bad, "size_mb": bad}, GOOD, GATE, REGRESSION)
    assert not decision.passed
    assert {(c.kind, c.metric) for c in decision.failed_checks} == {
        ("threshold", "r2"),
        ("change", "r2"),
        ("budget", "size_mb"),
    }


def test_unknown_direction_for_change_threshold_is_an_error() -> None:
    with pytest.raises(GateError, match="direction is unknown"):
        decide({"mae": 1.0}, {"mae": 1.0}, GateConfig(max_regression={"mae": 0.1}), {"r2": True})


# --------------------------------------------------------------------------- force


def test_force_passes_but_records_the_override_and_keeps_failures() -> None:
    decision = decide({**GOOD, "r2": 0.05, "size_mb": 9.0}, GOOD, GATE, REGRESSION, force=True)
    assert decision.passed and decision.override and decision.forced
    assert not decision.checks_passed
    assert decision.failed_budgets == ("size_mb",)
    assert len(decision.reasons) == 3  # r2 threshold, r2 change, size budget
    markdown = decision.to_markdown()
    assert "PASSED by override" in markdown and "(overridden)" in markdown and "**FAIL**" in markdown


def test_force_on_a_passing_candidate_is_not_an_override() -> None:
    decision = decide(GOOD, None, GATE, REGRESSION, force=True)
    assert decision.passed and decision.forced and not decision.override


def test_empty_gate_passes() -> None:
    decision = decide({}, None, GateConfig(), REGRESSION)
    assert decision.passed and decision.checks == ()
    assert "no checks" in decision.to_markdown()


# --------------------------------------------------------------------------- serialisation


def test_to_dict_round_trips_through_json() -> None:
    decision = decide({**GOOD, "mae": 70.0}, {**GOOD, "mae": 50.0}, GATE, REGRESSION, force=True)
    data = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert data["passed"] and data["override"] and data["failed_metrics"] == ["mae"]
    assert data["reasons"] == list(decision.reasons)
    restored = GateDecision.from_dict(data)
    assert restored == decision
    assert restored.failed_budgets == decision.failed_budgets


def test_to_dict_is_strict_json_even_with_nan_values() -> None:
    decision = decide({**GOOD, "r2": math.nan}, None, GATE, REGRESSION)
    text = json.dumps(decision.to_dict(), allow_nan=False)  # raises on NaN
    restored = GateDecision.from_dict(json.loads(text))
    assert not restored.passed and check(restored, "threshold", "r2").value is None
    assert "nan" in check(restored, "threshold", "r2").message


def test_from_dict_rejects_garbage() -> None:
    with pytest.raises(GateError, match="not a gate decision"):
        GateDecision.from_dict({"passed": True})
    with pytest.raises(GateError, match="unknown kind"):
        GateDecision.from_dict({"passed": True, "checks": [{"kind": "vibes", "metric": "x", "passed": True}]})


def test_markdown_table_lists_every_check() -> None:
    decision = decide({**GOOD, "mae": 60.0}, {**GOOD, "mae": 50.0}, GATE, REGRESSION)
    markdown = decision.to_markdown()
    assert markdown.startswith("**Gate: FAILED (1 failed check(s))**")
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(decision.checks) == 6
    assert "| change | mae | 60 | <= 52.5 | 50 | **FAIL** |" in markdown


# --------------------------------------------------------------------------- with real configs


def test_decide_for_config_uses_the_config_gate_and_task_directions(
    diabetes_config: ModelConfig, digits_config: ModelConfig
) -> None:
    assert decide_for_config(diabetes_config, GOOD, None).passed
    worse_mae = decide_for_config(diabetes_config, {**GOOD, "mae": 50.0}, {**GOOD, "mae": 45.0})
    assert not worse_mae.passed and worse_mae.failed_metrics == ("mae",)
    good = {"accuracy": 0.95, "macro_f1": 0.95, "log_loss": 0.2, "size_mb": 1.0, "latency_ms": 3.0}
    assert decide_for_config(digits_config, good, {**good, "accuracy": 0.96}).passed
    assert not decide_for_config(digits_config, good, {**good, "accuracy": 0.99}).passed
    # A gate passed in (e.g. with form overrides) replaces the config's.
    assert decide_for_config(diabetes_config, {**GOOD, "mae": 50.0}, {**GOOD, "mae": 45.0}, gate=GateConfig()).passed


# --------------------------------------------------------------------------- with_overrides


def test_overrides_merge_bounds_and_leave_the_original_alone() -> None:
    merged = with_overrides(GATE, {"r2": {"min": 0.3}, "rmse": 70.0, "mae": {"max": None}}, None)
    assert merged.thresholds == {"r2": {"min": 0.3}, "rmse": {"max": 70.0}}
    assert GATE.thresholds["r2"] == {"min": 0.2} and "mae" in GATE.thresholds
    assert merged.max_regression == GATE.max_regression and merged.budgets == GATE.budgets


def test_bare_number_override_bounds_the_bad_side() -> None:
    merged = with_overrides(GateConfig(), {"accuracy": 0.9, "log_loss": 0.5}, None)
    assert merged.thresholds == {"accuracy": {"min": 0.9}, "log_loss": {"max": 0.5}}


def test_threshold_override_on_budget_metric_replaces_the_budget() -> None:
    merged = with_overrides(GATE, {"size_mb": 2.0, "latency_ms": {"max": None}}, None)
    assert merged.budgets == {"size_mb": 2.0}
    assert not decide({**GOOD, "size_mb": 3.0}, None, merged, REGRESSION).passed
    with pytest.raises(GateError, match="upper bound"):
        with_overrides(GATE, {"size_mb": {"min": 1.0}}, None)
    with pytest.raises(GateError, match="must be > 0"):
        with_overrides(GATE, {"latency_ms": 0}, None)


def test_max_regression_override_applies_to_configured_change_thresholds() -> None:
    merged = with_overrides(GATE, None, 0.2)
    assert merged.max_regression == {"mae": 0.2, "r2": 0.2}
    # With the looser tolerance, a 15 % worse mae now passes.
    assert decide({**GOOD, "mae": 51.75}, {**GOOD, "mae": 45.0}, merged, REGRESSION).passed
    assert not decide({**GOOD, "mae": 51.75}, {**GOOD, "mae": 45.0}, GATE, REGRESSION).passed


def test_max_regression_override_without_configured_change_thresholds_uses_metrics() -> None:
    merged = with_overrides(GateConfig(), None, 0.0, metrics=("accuracy", "macro_f1"))
    assert merged.max_regression == {"accuracy": 0.0, "macro_f1": 0.0}
    with pytest.raises(GateError, match=r"pass metrics=config\.metrics"):
        with_overrides(GateConfig(), None, 0.1)


@pytest.mark.parametrize(
    ("thresholds", "max_regression", "match"),
    [
        ({"auc": {"min": 0.5}}, None, "unknown metric 'auc'"),
        ({"r2": {"low": 0.5}}, None, "'min' and/or 'max'"),
        ({"r2": "high"}, None, "finite number"),
        ({"r2": math.nan}, None, "finite number"),
        (None, -0.1, "number >= 0"),
        (None, math.inf, "number >= 0"),
    ],
)
def test_invalid_overrides_raise_gate_error(thresholds: object, max_regression: object, match: str) -> None:
    with pytest.raises(GateError, match=match):
        with_overrides(GATE, thresholds, max_regression)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- overrides no model can meet


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        # What a new user tries: out of the metric's range, or a bound on the wrong side for its direction.
        ({"r2": {"min": 1.5}}, "threshold override r2 min 1.5 can never be met: r2 is at most 1"),
        ({"mae": {"max": -1}}, "threshold override mae max -1 can never be met: mae is at least 0"),
        (
            {"r2": {"max": 0.1}},
            "threshold override r2 max 0.1 is on the wrong side: higher r2 is better, so a max would fail the "
            'better models; bound r2 with a min, e.g. {"r2": {"min": 0.1}}',
        ),
        ({"r2": 1.5}, "r2 min 1.5 can never be met"),
        ({"mae": -1}, "mae max -1 can never be met"),
        ({"accuracy": {"min": 1.2}}, "accuracy min 1.2 can never be met: accuracy is at most 1"),
        ({"macro_f1": {"min": -0.1}}, "macro_f1 min -0.1 can never be met: macro_f1 is at least 0"),
        ({"log_loss": {"max": -0.5}}, "log_loss max -0.5 can never be met: log_loss is at least 0"),
        ({"rmse": {"max": -3}}, "rmse max -3 can never be met"),
        ({"mae": {"min": 10}}, "mae min 10 is on the wrong side: lower mae is better"),
        ({"accuracy": {"max": 0.5}}, "accuracy max 0.5 is on the wrong side: higher accuracy is better"),
        ({"size_mb": {"max": -1}}, "size_mb max -1 can never be met: size_mb is at least 0"),
        ({"latency_ms": {"min": 1}}, "budget 'latency_ms' is an upper bound"),
    ],
)
def test_overrides_no_model_can_meet_are_refused_with_the_reason(thresholds: dict, message: str) -> None:
    with pytest.raises(GateError) as caught:
        with_overrides(GATE, thresholds, None)
    assert message in str(caught.value)


def test_a_min_above_the_configs_max_is_refused_once_merged() -> None:
    # A config may bound both sides (a sanity maximum); an override's min must not cross it.
    config_gate = GateConfig(thresholds={"r2": {"min": 0.2, "max": 0.95}})
    with pytest.raises(GateError, match=r"leaves min 0.97 above max 0.95 \(merged with the config's bounds\)"):
        with_overrides(config_gate, {"r2": {"min": 0.97}}, None)
    assert with_overrides(config_gate, {"r2": {"min": 0.9}}, None).thresholds == {"r2": {"min": 0.9, "max": 0.95}}
    # Removing a configured bound is always allowed, whichever side it is on.
    assert with_overrides(config_gate, {"r2": {"min": 0.97, "max": None}}, None).thresholds == {"r2": {"min": 0.97}}


@pytest.mark.parametrize(
    "thresholds",
    [
        {"r2": {"min": 1.0}},  # only a perfect model meets it, but one can
        {"r2": {"min": -5.0}},  # r2 has no lower bound
        {"mae": {"max": 0.0}},
        {"accuracy": {"min": 1.0}},
        {"accuracy": {"min": 0.0}},
        {"log_loss": 0.0},
        {"size_mb": {"max": 0.01}},
    ],
)
def test_bounds_at_the_edge_of_a_metrics_range_are_allowed(thresholds: dict) -> None:
    with_overrides(GATE, thresholds, None)


def test_every_metric_has_a_range_that_agrees_with_its_direction() -> None:
    from include.mlops.config.gate import METRIC_RANGES

    known = {m for task in METRICS.values() for m in task} | set(BUDGET_METRICS)
    assert set(METRIC_RANGES) == known
    for metric, (lowest, highest) in METRIC_RANGES.items():
        assert lowest is not None or highest is not None, metric
        if lowest is not None and highest is not None:
            assert lowest < highest, metric


def test_importing_the_gate_stays_light() -> None:
    # DAG files import the gate at parse time: no TensorFlow, pandas or protobuf.
    code = "import sys, include.mlops.evaluation.gate; print(sorted(m for m in ('tensorflow', 'pandas', 'numpy', 'google.protobuf') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("passed", "deploying", "on_fail", "identical", "expected"),
    [
        (True, True, "optimize", False, "register"),
        (True, True, "reject", False, "register"),
        (True, False, "optimize", False, "skip_deploy"),
        (True, False, "reject", False, "skip_deploy"),
        (False, True, "optimize", False, "optimize"),
        (False, False, "optimize", False, "skip_deploy"),
        (False, True, "reject", False, "reject"),
        (False, False, "reject", False, "reject"),
        # A candidate identical to the champion: a pass (forced or not) has nothing new to register.
        (True, True, "optimize", True, "identical"),
        (True, True, "reject", True, "identical"),
        (True, False, "optimize", True, "skip_deploy"),
        (False, True, "optimize", True, "optimize"),
        (False, True, "reject", True, "reject"),
    ],
)
def test_route_covers_every_outcome(
    passed: bool, deploying: bool, on_fail: str, identical: bool, expected: str
) -> None:
    assert gate_lib.route(passed, deploying=deploying, on_fail=on_fail, identical=identical) == expected
    assert expected in gate_lib.ROUTES


def test_route_refuses_an_unknown_failure_route() -> None:
    with pytest.raises(gate_lib.GateError, match="optimize, reject"):
        gate_lib.route(False, deploying=True, on_fail="register")
