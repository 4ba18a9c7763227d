"""The traffic generator against a real model server (uvicorn on loopback, a real SavedModel, the real prediction log)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving.conftest import RunningServer, free_port, make_linear_model, register, serve

from include.mlops.config import PROJECT_ROOT, ModelConfig, find_model_config
from include.mlops.data.snapshot import snapshot
from include.mlops.data.sources import SPLIT_COLUMN, TEST
from include.mlops.monitoring.traffic import (
    MALFORMED_KINDS,
    TrafficError,
    TrafficInputError,
    held_out_rows,
    malformed_body,
    send_traffic,
)
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.serving.metrics import REQUEST_COUNT
from include.mlops.serving.predlog import read_prediction_log


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    return find_model_config("diabetes")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, config: ModelConfig) -> Iterator[RunningServer]:
    """A model server for ``diabetes`` (stable -> a linear model) logging every prediction."""
    base = tmp_path_factory.mktemp("traffic")
    registry = Registry(base / "models")
    model = make_linear_model(base / "linear", 1.0, n_features=len(config.features))
    registry.set_label(config.serving_name, "stable", register(registry, model, "run-1", config.serving_name))
    settings = ServerSettings(
        registry_root=registry.root,
        poll_seconds=0.1,
        predlog_root=base / "predlog",
        predlog_sample_rate=1.0,
        predlog_flush_seconds=0.5,
    )
    with serve(settings) as running:
        yield running


def logged_inputs(server: RunningServer, model: str) -> np.ndarray:
    assert server.server.predlog is not None and server.server.predlog.flush(), "the prediction log did not flush"
    assert server.settings.predlog_root is not None
    frame = read_prediction_log(server.settings.predlog_root, model)
    return np.array(frame["inputs"].tolist(), dtype=np.float32).reshape(len(frame), -1)


def request_counts(server: RunningServer, model: str) -> dict[str, float]:
    text = httpx.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        # The parser names a counter's samples <name>_total; the family keeps the exported name.
        if family.name == REQUEST_COUNT:
            for sample in family.samples:
                if sample.labels["model_name"] == model:
                    counts[sample.labels["status"]] = sample.value
    return counts


def test_counts_and_error_share_match_what_the_server_counted(server: RunningServer, config: ModelConfig) -> None:
    before = request_counts(server, config.serving_name)
    summary = send_traffic(config, server.url, requests=120, duration=None, rate=200, errors=0.25, seed=7)
    after = request_counts(server, config.serving_name)

    assert summary.sent == 120 and summary.ok + summary.errors == 120 and summary.transport_errors == 0
    # Every malformed request, and only those, was refused with 400.
    assert summary.unexpected == 0
    assert summary.errors == summary.malformed_sent
    assert dict(summary.by_status) == {200: summary.ok, 400: summary.errors}
    assert 0.12 <= summary.errors / summary.sent <= 0.40  # 0.25 of 120 requests, seeded
    # The server's own counters saw the same split.
    assert after["OK"] - before.get("OK", 0) == summary.ok
    assert after["INVALID_ARGUMENT"] - before.get("INVALID_ARGUMENT", 0) == summary.errors


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_kind_of_malformed_request_is_answered_400(server: RunningServer, config: ModelConfig, kind: str) -> None:
    row = np.ones(len(config.features), dtype=np.float32)
    response = httpx.post(
        f"{server.url}/v1/models/{config.serving_name}/labels/stable:predict",
        content=malformed_body(kind, row),
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_drift_shifts_the_logged_inputs_by_standard_deviations(server: RunningServer, config: ModelConfig) -> None:
    rows = held_out_rows(config)
    logged_before = len(logged_inputs(server, config.serving_name))
    plain = send_traffic(config, server.url, requests=25, duration=None, rate=500, seed=3, rows=rows)
    middle = len(logged_inputs(server, config.serving_name))
    drifted = send_traffic(
        config, server.url, requests=25, duration=None, rate=500, seed=3, rows=rows, drift={"bmi": 2.0, "s5": -1.0}
    )
    logged = logged_inputs(server, config.serving_name)
    assert plain.ok == drifted.ok == 25
    base, shifted = logged[logged_before:middle], logged[middle:]
    assert base.shape == shifted.shape == (25, len(config.features))

    # The plain run sent held-out rows as they are ...
    held_out = {tuple(r) for r in rows}
    assert all(tuple(r) in held_out for r in base)
    # ... and the drifted run the same rows (same seed), moved by 2 and -1 std of bmi and s5, the rest untouched.
    bmi, s5 = config.features.index("bmi"), config.features.index("s5")
    np.testing.assert_allclose(shifted[:, bmi] - base[:, bmi], 2.0 * rows[:, bmi].std(), rtol=1e-3)
    np.testing.assert_allclose(shifted[:, s5] - base[:, s5], -1.0 * rows[:, s5].std(), rtol=1e-3)
    others = [i for i in range(len(config.features)) if i not in (bmi, s5)]
    np.testing.assert_array_equal(shifted[:, others], base[:, others])


def test_pacing_spreads_the_requests_over_time(server: RunningServer, config: ModelConfig) -> None:
    summary = send_traffic(config, server.url, requests=21, duration=None, rate=20, seed=1)
    assert summary.ok == 21
    # 21 requests at 20/s are 20 intervals of 50 ms: no burst can finish them sooner.
    assert summary.elapsed_s >= 1.0


def test_duration_bounds_the_run(server: RunningServer, config: ModelConfig) -> None:
    summary = send_traffic(config, server.url, duration=0.5, rate=10, seed=1)
    assert 1 <= summary.sent <= 6 and summary.ok == summary.sent


def test_rows_come_from_the_newest_snapshot_held_out_split(artifact_root: Path, config: ModelConfig) -> None:
    runs = artifact_root / "runs" / config.dag_id
    for run, value in (("old", 1.0), ("new", 2.0)):
        folder = runs / run / "snapshot"
        folder.mkdir(parents=True)
        frame = pd.DataFrame({f: [value, value, value + 10] for f in config.features})
        frame[config.label] = 0.0
        frame[SPLIT_COLUMN] = ["train", TEST, "train"]
        frame.to_parquet(folder / "data.parquet")
        os.utime(folder / "data.parquet", (0, 1_000_000 if run == "old" else 2_000_000))

    rows = held_out_rows(config)
    np.testing.assert_array_equal(rows, np.full((1, len(config.features)), 2.0, dtype=np.float32))


def test_without_a_snapshot_the_bundled_rows_are_split_as_the_snapshot_step_splits_them(
    artifact_root: Path, config: ModelConfig, tmp_path: Path
) -> None:
    rows = held_out_rows(config)
    result = snapshot(config, dt.datetime(2030, 1, 1, tzinfo=dt.UTC), dt.datetime(2030, 1, 2, tzinfo=dt.UTC), tmp_path)
    frame = pd.read_parquet(result["data_uri"])
    expected = frame[frame[SPLIT_COLUMN] == TEST][list(config.features)].to_numpy(dtype=np.float32)
    assert len(rows) == result["split_counts"][TEST] > 0
    assert {tuple(r) for r in rows} == {tuple(r) for r in expected}


def test_an_unknown_drift_feature_is_bad_input(server: RunningServer, config: ModelConfig) -> None:
    with pytest.raises(TrafficInputError, match=r"--drift glucose=1: unknown feature \(features: age, sex, bmi"):
        send_traffic(config, server.url, requests=1, drift={"glucose": 1.0})


def test_a_label_that_is_not_served_is_refused_before_sending(server: RunningServer, config: ModelConfig) -> None:
    before = request_counts(server, config.serving_name)
    with pytest.raises(TrafficError, match=r"does not serve model 'diabetes' label 'canary': HTTP 400"):
        send_traffic(config, server.url, label="canary", requests=5)
    assert request_counts(server, config.serving_name) == before


@pytest.mark.parametrize("label", ["", None])
def test_traffic_without_a_label_is_refused_before_sending(
    server: RunningServer, config: ModelConfig, label: str | None
) -> None:
    """On TF Serving, a request without a label reaches the highest loaded version: a deploy's unverified candidate."""
    before = request_counts(server, config.serving_name)
    with pytest.raises(TrafficInputError, match="traffic goes through a version label"):
        send_traffic(config, server.url, label=label, requests=5)  # type: ignore[arg-type]
    assert request_counts(server, config.serving_name) == before


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "include.mlops.traffic", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_sends_and_prints_progress_and_a_summary(server: RunningServer) -> None:
    done = run_cli(
        "--model", "diabetes", "--server", server.url, "--requests", "12", "--rate", "40", "--errors", "0.5",
        "--seed", "5", "--progress-seconds", "0.1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("[") and "sent=" in line for line in lines[:-2]), done.stdout
    assert lines[-2].startswith("done: sent=12 ")
    summary = json.loads(lines[-1])
    assert summary["sent"] == 12 and summary["ok"] + summary["errors"] == 12 and summary["unexpected"] == 0
    assert summary["errors"] == summary["malformed_sent"] > 0
    # Progress comes from the generator, not one log line per request from the HTTP client.
    assert "HTTP Request:" not in done.stderr, done.stderr[-500:]


def test_cli_fails_clearly_when_the_server_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("--model", "diabetes", "--server", url, "--requests", "3")
    assert done.returncode == 1
    assert f"cannot reach the model server at {url}" in done.stderr
    assert "pass --server URL" in done.stderr


def test_cli_fails_clearly_when_the_label_is_not_served(server: RunningServer) -> None:
    done = run_cli("--model", "diabetes", "--server", server.url, "--label", "canary", "--requests", "3")
    assert done.returncode == 1
    assert "does not serve model 'diabetes' label 'canary'" in done.stderr


@pytest.mark.parametrize("model", ["diabetes", "digits"])
def test_clean_traffic_is_judged_clean_by_the_drift_check_and_shifted_traffic_is_not(model: str) -> None:
    """The generator's rows are fresh draws from the data's population, as production traffic would be.

    Resampling the few dozen held-out rows instead sends the same rows again and again: the drift
    check's two-sample tests rightly flag such windows (shown here as the control).  300 rows: what
    the monitor e2e test sends per window.
    """
    import itertools

    import pandas as pd

    from include.mlops.data.sources import TEST, TRAIN
    from include.mlops.monitoring.reference import build_reference
    from include.mlops.monitoring.stattests import window_drifted
    from include.mlops.monitoring.traffic_rows import data_rows, fresh_rows

    config = find_model_config(model)
    features = list(config.features)
    reference = build_reference(pd.DataFrame(data_rows(config, split=TRAIN), columns=features), features, 10)
    everything, held_out = data_rows(config), data_rows(config, split=TEST)

    def flagged(rows: np.ndarray) -> bool:
        return window_drifted(reference, rows, features, config.monitor.drift.false_alarm_rate)[0]

    windows = 40
    fresh = [np.stack(list(itertools.islice(fresh_rows(everything, seed), 300))) for seed in range(windows)]
    resampled = [held_out[np.random.default_rng(seed).integers(0, len(held_out), 300)] for seed in range(windows)]
    assert sum(map(flagged, fresh)) <= 2  # the config's false-alarm rate is 1 % per window
    assert sum(map(flagged, resampled)) >= 8  # measured: 42 and 30 of 100
    column = features.index(SHIFTED_FEATURE[model])
    shifted = [w.copy() for w in fresh[:10]]
    for window in shifted:
        window[:, column] += everything[:, column].std()
    assert all(map(flagged, shifted))


SHIFTED_FEATURE = {"diabetes": "bmi", "digits": "pixel_4_3"}
