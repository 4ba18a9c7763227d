"""The drift decision's statistics against independent numbers, and its false-alarm rate and power on the demo models.

Clean windows and references are independent draws from a population fitted to each model's whole
dataset (the drift-quality benchmark's Gaussian copula), never rows of the reference itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_drift import add_version, log_requests

from benchmarks.drift_quality import population_of
from include.mlops.config import DriftConfig, MonitorConfig, find_model_config
from include.mlops.data.sources import load_bundled
from include.mlops.monitoring.drift import check_drift
from include.mlops.monitoring.expectations import reference_suite
from include.mlops.monitoring.population import Population
from include.mlops.monitoring.reference import build_reference
from include.mlops.monitoring.stattests import chi_square_test, holm, judge, ks_test, window_drifted
from include.mlops.registry.filesystem import Registry

DIABETES = find_model_config("diabetes")
NOW = dt.datetime.now(dt.UTC)
WINDOW = {"window_start": NOW - dt.timedelta(hours=1), "window_end": NOW + dt.timedelta(hours=1)}


def test_ks_matches_scipy_and_a_hand_computed_statistic() -> None:
    rng = np.random.default_rng(0)
    reference, current = rng.normal(size=300), rng.normal(0.3, 1.0, 120)
    grid = np.sort(np.concatenate([reference, current]))
    ecdf = lambda sample: np.searchsorted(np.sort(sample), grid, side="right") / len(sample)  # noqa: E731
    by_hand = float(np.max(np.abs(ecdf(reference) - ecdf(current))))
    test = ks_test(reference, current)
    assert test.test == "ks" and test.statistic == pytest.approx(by_hand)
    assert test.p_value == pytest.approx(stats.ks_2samp(reference, current).pvalue)


def test_chi_square_matches_a_hand_computed_two_by_two_table() -> None:
    reference = np.array([0.0] * 30 + [1.0] * 70)
    current = np.array([0.0] * 50 + [1.0] * 50)
    # Expected counts from the pooled shares (80/200 and 120/200): 40 and 60 in each sample.
    by_hand = 2 * ((30 - 40) ** 2 / 40 + (70 - 60) ** 2 / 60)
    test = chi_square_test(reference, current)
    assert test is not None and test.test == "chi_square" and test.statistic == pytest.approx(by_hand)
    assert test.p_value == pytest.approx(stats.chi2.sf(by_hand, df=1))
    assert test.p_value == pytest.approx(stats.chi2_contingency([[30, 70], [50, 50]], correction=False)[1])


def test_chi_square_pools_rare_values_before_testing() -> None:
    reference = np.array([0.0] * 400 + [1.0] * 300 + [2.0] * 280 + [3.0] * 10 + [4.0] * 10)
    current = np.array([0.0] * 90 + [1.0] * 60 + [2.0] * 40 + [3.0] * 6 + [4.0] * 4)
    # Values 3 and 4 expect 2.7 and 2.3 rows in the smaller sample, 5 together (< 20): pooled, then joined
    # to the rarest value kept (2).
    pooled = [[400, 300, 300], [90, 60, 50]]
    test = chi_square_test(reference, current)
    assert test is not None
    assert test.p_value == pytest.approx(stats.chi2_contingency(pooled, correction=False)[1])
    assert chi_square_test(np.zeros(50), np.zeros(20)) is None, "one value in both samples: nothing to test"


def test_holm_by_hand() -> None:
    # Sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04, raised to 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8]) and holm([0.9, 0.2]) == pytest.approx([0.9, 0.4])


def test_judge_corrects_over_every_version_and_feature() -> None:
    from include.mlops.monitoring.stattests import FeatureTest

    tests = {
        "1": {"a": FeatureTest("ks", 0.3, 0.004), "b": FeatureTest("ks", 0.1, 0.2)},
        "2": {"a": FeatureTest("ks", 0.2, 0.02), "b": None},
    }
    judged = judge(tests, 0.05)
    assert judged["1"]["a"]["p_adjusted"] == pytest.approx(0.012) and judged["1"]["a"]["drifted"]
    assert judged["2"]["a"]["p_adjusted"] == pytest.approx(0.04) and judged["2"]["a"]["drifted"]
    assert judged["1"]["b"]["p_adjusted"] == pytest.approx(0.2) and not judged["1"]["b"]["drifted"]
    assert judged["2"]["b"] == {"test": None, "statistic": None, "p_value": None, "p_adjusted": None, "drifted": False}


@pytest.mark.parametrize("model", ["diabetes", "digits"])
def test_clean_windows_at_the_shipped_min_rows_rarely_alarm(model: str) -> None:
    config, population, reference_rows = population_of(model)
    features, drift = list(config.features), config.monitor.drift
    rng = np.random.default_rng(11)
    alarms = 0
    for _ in range(10):  # 10 stored references, 20 windows each: 200 clean windows
        sample = population.draw(reference_rows, rng)
        reference = build_reference(pd.DataFrame(sample, columns=features), features, drift.bins)
        for _ in range(20):
            alarms += window_drifted(reference, population.draw(drift.min_rows, rng), features, drift.false_alarm_rate)[
                0
            ]
    assert alarms / 200 < 0.03, f"{alarms} of 200 clean {model} windows of {drift.min_rows} rows flagged"


@pytest.mark.parametrize(("model", "feature"), [("diabetes", "bmi"), ("digits", "pixel_4_3")])
def test_a_one_sigma_shift_at_min_rows_is_detected(model: str, feature: str) -> None:
    config, population, reference_rows = population_of(model)
    features, drift = list(config.features), config.monitor.drift
    rng = np.random.default_rng(12)
    reference = build_reference(pd.DataFrame(population.draw(reference_rows, rng), columns=features), features, 5)
    j = features.index(feature)
    window = population.shift(population.draw(drift.min_rows, rng), j, 1.0, rng)
    drifted, judged = window_drifted(reference, window, features, drift.false_alarm_rate)
    assert drifted and judged[feature]["drifted"], judged[feature]
    assert [f for f, e in judged.items() if e["drifted"]] == [feature]


def test_the_population_keeps_each_feature_type() -> None:
    data = load_bundled("diabetes", "target")[list(DIABETES.features)].to_numpy()
    drawn = Population(data).draw(1000, np.random.default_rng(0))
    sex = DIABETES.features.index("sex")
    assert set(np.unique(drawn[:, sex])) == set(np.unique(data[:, sex])), "binary stays binary"
    digits = load_bundled("digits", "target").drop(columns="target").to_numpy()
    pixels = Population(digits).draw(500, np.random.default_rng(0))
    assert np.array_equal(pixels, np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 16


def test_rounded_diabetes_rows_sent_as_float32_are_not_flagged(tmp_path: Path) -> None:
    """Rows rounded to 8 decimals become float32 values a hair outside the training range; that is no drift."""
    frame = load_bundled("diabetes", "target")
    features = list(DIABETES.features)
    registry = Registry(tmp_path / "models")
    add_version(registry, 1, build_reference(frame, features, bins=DIABETES.monitor.drift.bins))
    rounded = frame[features].round(8).to_numpy().astype(np.float32)
    assert (rounded < frame[features].to_numpy(np.float32).min(axis=0)).any(), "some values leave the range"
    log_requests(tmp_path / "artifacts", [(1, rounded)])
    config = dataclasses.replace(DIABETES, monitor=MonitorConfig(drift=DriftConfig(min_rows=100, bins=5)))
    result = check_drift(
        config, **WINDOW, out=tmp_path / "out", registry=registry, predictions_root=tmp_path / "artifacts"
    )  # type: ignore[arg-type]
    assert result["status"] == "ok" and not result["drifted"], result["features"]
    for feature in features:
        entry = result["features"][feature]
        # The few values below the minimum land in the first (open) bin with their neighbours.
        assert entry["current_weights"] == pytest.approx(entry["reference_weights"], abs=0.005), feature
        assert entry["psi"] < 0.01 and entry["out_of_range"] == 0.0, feature


def test_a_binary_feature_never_gets_a_quantile_expectation() -> None:
    frame = load_bundled("diabetes", "target")
    reference = build_reference(frame, list(DIABETES.features), bins=5)
    assert reference["features"]["sex"]["kind"] == "categorical"
    suite = reference_suite(reference, list(DIABETES.features), DIABETES.monitor.drift)
    quantiled = {
        e["kwargs"]["column"]
        for e in suite["expectations"]
        if e["type"] == "expect_column_quantile_values_to_be_between"
    }
    assert "sex" not in quantiled and "bmi" in quantiled


def test_a_reference_without_sample_falls_back_to_psi_and_says_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    features = list(DIABETES.features)
    reference = build_reference(pd.DataFrame(rng.normal(size=(2000, 10)), columns=features), features, bins=10)
    for stats_ in reference["features"].values():
        del stats_["sample"], stats_["kind"]
    registry = Registry(tmp_path / "models")
    add_version(registry, 1, reference)
    window = rng.normal(size=(400, 10))
    window[:, features.index("bmi")] += 2.0
    log_requests(tmp_path / "artifacts", [(1, window)])
    result = check_drift(
        DIABETES, **WINDOW, out=tmp_path / "out", registry=registry, predictions_root=tmp_path / "artifacts"
    )  # type: ignore[arg-type]
    assert result["drifted"] and result["features"]["bmi"]["reason"].startswith("PSI ")
    assert result["features"]["bmi"]["test"] is None
    assert any("no training sample" in p and "false-alarm rate is not known" in p for p in result["problems"])
