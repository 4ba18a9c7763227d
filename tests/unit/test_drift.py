"""The drift check on a real prediction log (written by the server's own logger) against real references."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from include.mlops import artifacts
from include.mlops.config import PROJECT_ROOT, DriftConfig, ModelConfig, MonitorConfig, find_model_config
from include.mlops.monitoring.drift import MISSING_REASON, DriftInputError, check_drift
from include.mlops.monitoring.reference import REFERENCE_FILE, build_reference
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.predlog import PredictionLogger, log_files

DIABETES = find_model_config("diabetes")
FEATURES = list(DIABETES.features)
NOW = dt.datetime.now(dt.UTC)
WINDOW = {"window_start": NOW - dt.timedelta(hours=1), "window_end": NOW + dt.timedelta(hours=1)}


def small_config(**drift: object) -> ModelConfig:
    settings = {"min_rows": 200, "max_validation_rows": 1000, **drift}
    return dataclasses.replace(DIABETES, monitor=MonitorConfig(drift=DriftConfig(**settings)))  # type: ignore[arg-type]


def training_rows(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(0.0, 1.0, (rows, len(FEATURES))), columns=FEATURES)


def add_version(registry: Registry, version: int, reference: dict | None) -> None:
    """A registry version folder holding (or lacking) a training reference; the drift check reads nothing else."""
    folder = registry.version_dir(DIABETES.serving_name, version)
    (folder / "assets.extra").mkdir(parents=True)
    if reference is not None:
        artifacts.atomic_write_json(folder / REFERENCE_FILE, reference)


def log_requests(root: Path, batches: list[tuple[int, np.ndarray]]) -> None:
    """Log (version, rows) batches with the model server's PredictionLogger, one file per batch."""
    logger = PredictionLogger(root, sample_rate=1.0, max_rows_per_file=10**6, max_rows_per_request=10**6)
    logger.start()
    for version, rows in batches:
        logger.offer(DIABETES.serving_name, version, rows.astype(np.float32), np.zeros((len(rows), 1), np.float32))
        assert logger.flush()
    logger.stop()


def registry_with_reference(tmp_path: Path) -> tuple[Registry, Path]:
    """A registry whose version 1 has a reference of standard normal features, and an empty artifact root."""
    registry = Registry(tmp_path / "models")
    add_version(registry, 1, build_reference(training_rows(), FEATURES, bins=10))
    return registry, tmp_path / "artifacts"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Registry, Path]:
    return registry_with_reference(tmp_path)


def run(config: ModelConfig, registry: Registry, root: Path, out: Path, **kwargs: object) -> dict:
    return check_drift(config, **WINDOW, out=out, registry=registry, predictions_root=root, **kwargs)  # type: ignore[arg-type]


def test_same_distribution_is_not_drift_and_a_shifted_feature_is(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = setup
    log_requests(root, [(1, training_rows(2000, seed=1).to_numpy())])
    calm = run(small_config(), registry, root, tmp_path / "calm")
    assert calm["status"] == "ok" and calm["rows"] == 2000 and calm["versions"] == {"1": 2000}
    assert not calm["drifted"], calm["features"]
    assert calm["score"] < 0.05 and calm["failed_expectations"] == []

    shifted = training_rows(2000, seed=2)
    shifted["bmi"] += 1.5
    log_requests(root, [(1, shifted.to_numpy())])
    result = run(small_config(), registry, root, tmp_path / "shifted")
    assert result["rows"] == 4000 and result["drifted"]
    bmi = result["features"]["bmi"]
    assert bmi["drifted"] and bmi["psi"] > 0.2 and bmi["psi"] == result["score"]
    assert not any(e["drifted"] for f, e in result["features"].items() if f != "bmi"), result["features"]
    assert any("expect_column_mean_to_be_between(bmi)" in line for line in result["failed_expectations"])
    # The written result is the returned one, and holds what the report plots (bins, no raw rows).
    assert json.loads((tmp_path / "shifted" / "drift.json").read_text()) == json.loads(json.dumps(result))
    assert len(bmi["current_weights"]) == len(bmi["reference_weights"]) == len(bmi["bin_edges"]) + 1
    validation = json.loads(Path(result["validation_uri"]).read_text())
    assert validation["meta"] | {"validated_rows": 1000, "window_rows": 4000, "sampled": True} == validation["meta"]


def test_empty_log_or_too_few_rows_is_insufficient_data(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = setup
    empty = run(small_config(), registry, root, tmp_path / "empty")
    assert empty["status"] == "insufficient_data" and not empty["drifted"] and empty["score"] is None
    assert "insufficient data: 0 usable logged rows" in empty["problems"][0]
    assert empty["validation_uri"] is None and (tmp_path / "empty" / "drift.json").is_file()

    log_requests(root, [(1, training_rows(150, seed=3).to_numpy() + 5.0)])  # far off, but too few to judge
    few = run(small_config(), registry, root, tmp_path / "few")
    assert few["status"] == "insufficient_data" and not few["drifted"] and few["rows"] == 150


def test_rows_outside_the_window_are_not_counted(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = setup
    log_requests(root, [(1, training_rows(300, seed=4).to_numpy())])
    later = check_drift(
        small_config(), window_start=NOW + dt.timedelta(hours=1), window_end=NOW + dt.timedelta(hours=2),
        out=tmp_path / "later", registry=registry, predictions_root=root,
    )  # fmt: skip
    assert later["rows"] == 0 and later["status"] == "insufficient_data"


def test_a_corrupt_log_file_is_skipped_and_named(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = setup
    log_requests(root, [(1, training_rows(300, seed=5).to_numpy()), (1, training_rows(300, seed=6).to_numpy())])
    broken = log_files(root, DIABETES.serving_name)[0]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a truncated write
    result = run(small_config(), registry, root, tmp_path / "out")
    assert result["status"] == "ok" and result["rows"] == 300
    assert any(str(broken) in p and "cannot be read" in p for p in result["problems"]), result["problems"]


def test_rows_of_a_version_without_reference_are_excluded(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = setup
    add_version(registry, 2, None)
    log_requests(root, [(1, training_rows(300, seed=7).to_numpy()), (2, training_rows(250, seed=8).to_numpy() + 9)])
    result = run(small_config(), registry, root, tmp_path / "out")
    assert result["versions"] == {"1": 300} and result["rows"] == 300
    assert not result["drifted"], "the foreign version's far-off rows must not count"
    assert any("250 rows served by version 2" in p and "no training reference" in p for p in result["problems"])


def test_a_feature_missing_from_logged_rows_is_reported_as_drifted(
    setup: tuple[Registry, Path], tmp_path: Path
) -> None:
    registry, root = setup
    narrow = training_rows(300, seed=9).to_numpy()[:, :-1]  # a client that sends 9 of the 10 features
    log_requests(root, [(1, training_rows(300, seed=10).to_numpy()), (1, narrow)])
    result = run(small_config(), registry, root, tmp_path / "out")
    last = result["features"][FEATURES[-1]]
    assert result["status"] == "ok" and result["drifted"]
    assert last["drifted"] and last["reason"].startswith(MISSING_REASON) and "300 of 600" in last["reason"]
    assert not any(e["drifted"] for f, e in result["features"].items() if f != FEATURES[-1])


def test_unreachable_pushgateway_keeps_the_result(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    from airflow_stack import free_port

    registry, root = setup
    log_requests(root, [(1, training_rows(300, seed=11).to_numpy())])
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run(small_config(), registry, root, tmp_path / "out", pushgateway_url=url)
    assert result["pushed"] is False and result["status"] == "ok"
    assert any(url in p and "Pushgateway" in p for p in result["problems"])
    assert json.loads((tmp_path / "out" / "drift.json").read_text())["pushed"] is False


def test_a_window_that_ends_before_it_starts_is_refused(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, _ = setup
    with pytest.raises(DriftInputError, match="must start before it ends"):
        check_drift(DIABETES, window_start=NOW, window_end=NOW, out=tmp_path / "o", registry=registry)


def drift_cli(*args: str, registry: Registry, root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "include.mlops", "drift", *args, "--out", str(out)]
    command += ["--registry", str(registry.root), "--predictions-root", str(root)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=120, check=False)


def test_cli_prints_the_result_and_exits_3_on_bad_input(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = setup
    start, end = WINDOW["window_start"].isoformat(), WINDOW["window_end"].isoformat()
    done = drift_cli("--model", "diabetes", "--window-start", start, "--window-end", end,
                     registry=registry, root=root, out=tmp_path / "ok")  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["status"] == "insufficient_data" and printed["result_uri"] == str(tmp_path / "ok" / "drift.json")

    backwards = drift_cli("--model", "diabetes", "--window-start", end, "--window-end", start,
                          registry=registry, root=root, out=tmp_path / "b")  # fmt: skip
    assert backwards.returncode == 3 and "must start before it ends" in backwards.stderr
    unknown = drift_cli("--model", "nosuchmodel", "--window-start", start, "--window-end", end,
                        registry=registry, root=root, out=tmp_path / "u")  # fmt: skip
    assert unknown.returncode == 3 and "no model config named 'nosuchmodel'" in unknown.stderr


@pytest.mark.slow
def test_scores_reach_a_real_pushgateway(setup: tuple[Registry, Path], tmp_path: Path) -> None:
    from prometheus_stack import prometheus_stack

    registry, root = setup
    shifted = training_rows(400, seed=12)
    shifted["bmi"] += 2.0
    log_requests(root, [(1, shifted.to_numpy())])
    with prometheus_stack(tmp_path / "prom") as stack:
        result = run(small_config(), registry, root, tmp_path / "out", pushgateway_url=stack.pushgateway_url)
        assert result["pushed"] is True and result["drifted"]
        exported = httpx.get(f"{stack.pushgateway_url}/metrics", timeout=10).text
        series = stack.wait_for('mlops_drift_feature_score{model_name="diabetes",version="1",feature="bmi"}')
    assert float(series[0]["value"][1]) == pytest.approx(result["features"]["bmi"]["psi"])
    for line in (
        f'mlops_drift_score{{instance="",job="mlops_drift",model_name="diabetes",version="1"}} {result["score"]}',
        'mlops_drift_threshold{instance="",job="mlops_drift",model_name="diabetes"} 0.2',
        'mlops_drift_rows{instance="",job="mlops_drift",model_name="diabetes"} 400',
        "mlops_drift_last_check_timestamp_seconds{",
    ):
        assert line in exported, line


@pytest.mark.parametrize(
    ("result", "detected"),
    [({"status": "ok", "drifted": True}, 1.0), ({"status": "ok", "drifted": False}, 0.0),
     ({"status": "insufficient_data", "drifted": False}, 0.0)],
)  # fmt: skip
def test_every_check_pushes_its_verdict_so_the_drift_alert_resolves(result: dict, detected: float) -> None:
    from include.mlops.monitoring.push import drift_metrics

    registry = drift_metrics("diabetes", {"threshold": 0.2, "rows": 0, **result}, 1.0)
    assert registry.get_sample_value("mlops_drift_detected", {"model_name": "diabetes"}) == detected
