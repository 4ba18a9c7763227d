"""report.html of a monitoring run: healthy, drift, insufficient data, and a failed SLO task."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from test_drift import DIABETES, log_requests, registry_with_reference, run, small_config, training_rows

from include.mlops.monitoring.report import write_report
from include.mlops.registry.filesystem import Registry

SLO_OK = {
    "status": "ok",
    "figures": {"requests": 500.0, "request_rate": 8.3, "error_ratio": 0.0, "p95_ms": 12.0, "p99_ms": 30.0},
    "slo": {"min_requests": 20, "max_error_ratio": 0.01, "p95_latency_ms": 100.0, "p99_latency_ms": 250.0},
    "breaches": [],
    "problems": [],
    "window_minutes": 60,
    "queries": {},
}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Registry, Path]:
    return registry_with_reference(tmp_path)


def text_of(path: Path) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", path.read_text())).split())


def test_healthy_report(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = setup
    log_requests(root, [(1, training_rows(500, seed=1).to_numpy())])
    drift = run(small_config(), registry, root, tmp_path / "drift")
    path = write_report(DIABETES, SLO_OK, drift, ["healthy"], tmp_path / "report")
    text = text_of(path)
    assert "Outcome: healthy" in text and "Problems None." in text
    assert "p95_ms 12 at most 100 yes" in text
    assert "500 logged rows" in text and "(rows per version: v1: 500)" in text
    assert list((tmp_path / "report").glob("drift_*.png")) == [] and (tmp_path / "report" / "slo.png").is_file()


def test_drift_report_plots_each_drifting_feature(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = setup
    shifted = training_rows(500, seed=2)
    shifted["bmi"] += 2.0
    shifted["s5"] -= 2.0
    log_requests(root, [(1, shifted.to_numpy())])
    drift = run(small_config(), registry, root, tmp_path / "drift")
    breach = {**SLO_OK, "status": "breach", "figures": {**SLO_OK["figures"], "p99_ms": 400.0}, "breaches": ["p99"]}
    path = write_report(DIABETES, breach, drift, ["slo_breach", "drift"], tmp_path / "report")
    text = text_of(path)
    assert "Outcome: slo_breach , drift" in text
    assert "p99_ms 400 at most 250 no" in text
    assert re.search(
        r"bmi [0-9.]+ ks [0-9.e-]+ yes ks statistic [0-9.]+, Holm-adjusted p [0-9.e-]+ <= false_alarm_rate", text
    )
    assert sorted(p.name for p in (tmp_path / "report").glob("drift_*.png")) == ["drift_bmi.png", "drift_s5.png"]
    assert path.read_text().count("data:image/png;base64,") == 3  # two features and the SLO figures
    assert "expect_column_mean_to_be_between(bmi)" in text


def test_the_steps_summary_is_small_and_the_report_plots_from_its_drift_json(
    setup: tuple[Registry, Path], tmp_path: Path
) -> None:
    from include.mlops.monitoring.drift import summary

    registry, root = setup
    # Seed 3's clean features hold a 1-in-500 window (KS p 2e-4 on sex) that the tests rightly flag; 4's do not.
    shifted = training_rows(500, seed=4)
    shifted["bmi"] += 2.0
    log_requests(root, [(1, shifted.to_numpy())])
    full = run(small_config(), registry, root, tmp_path / "drift")
    short = summary(full)
    assert set(short["features"]["bmi"]) == {"psi", "drifted", "reason", "test", "p_adjusted"}
    assert len(json.dumps(short)) < len(json.dumps(full)) / 2
    # What decide gets is the step's summary (its XCom); the report still plots the drifting feature.
    path = write_report(DIABETES, SLO_OK, short, ["drift"], tmp_path / "report")
    assert [p.name for p in (tmp_path / "report").glob("drift_*.png")] == ["drift_bmi.png"]
    assert path.read_text().count("data:image/png;base64,") == 2


@pytest.mark.parametrize("slo", [SLO_OK, None], ids=["slo", "slo_failed"])
def test_insufficient_data_and_a_failed_slo_task_are_named(
    setup: tuple[Registry, Path], tmp_path: Path, slo: dict | None
) -> None:
    registry, root = setup
    drift = run(small_config(), registry, root, tmp_path / "drift")
    path = write_report(DIABETES, slo, drift, ["insufficient_data"], tmp_path / "report")
    text = text_of(path)
    assert "insufficient data: 0 usable logged rows" in text and "Status insufficient_data" in text
    if slo is None:
        assert "the SLO measurement did not run or failed" in text and "No SLO figures" in text
    else:
        assert "p95_ms 12 at most 100 yes" in text


def test_a_failed_drift_task_is_named(tmp_path: Path) -> None:
    text = text_of(write_report(DIABETES, None, None, [], tmp_path / "report"))
    assert "the drift check did not run or failed" in text and "No drift scores" in text
    assert "Outcome: none decided" in text
