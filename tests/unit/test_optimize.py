"""The optimize step: the grid of trials, choosing the best, and the TFLite variant."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from ml_fixtures import make_snapshot

from include.mlops.artifacts import dir_size_bytes
from include.mlops.config import OptimizeConfig, find_model_config
from include.mlops.evaluate import evaluate
from include.mlops.optimize.tuning import optimize, optimize_hparams, should_quantize

DIABETES = find_model_config("diabetes")
DIGITS = find_model_config("digits")


def test_trials_layer_optimize_settings_overrides_and_grid() -> None:
    trials = optimize_hparams(DIABETES)
    # optimize.epochs (600) replaces train.epochs (300); the grid varies the learning rate.
    assert trials == [
        {"epochs": 600, "batch_size": 32, "learning_rate": 0.001, "patience": 20},
        {"epochs": 600, "batch_size": 32, "learning_rate": 0.005, "patience": 20},
    ]
    assert [t["epochs"] for t in optimize_hparams(DIABETES, {"epochs": 3, "patience": None})] == [3, 3]
    two_by_two = dataclasses.replace(
        DIABETES, optimize=OptimizeConfig(grid={"learning_rate": (0.01, 0.02), "batch_size": (16, 16, 64)})
    )
    assert len(optimize_hparams(two_by_two)) == 4  # duplicate grid values are trained once


@pytest.mark.parametrize(
    ("mode", "failed", "expected"),
    [
        ("auto", ["size_mb"], True),
        ("auto", ["latency_ms"], True),
        ("auto", ["mae", "r2"], False),
        ("auto", [], False),
        ("tflite", [], True),
        ("savedmodel", ["size_mb"], False),
    ],
)
def test_quantize_when_a_budget_failed_or_always(mode: str, failed: list[str], expected: bool) -> None:
    compress = dataclasses.replace(DIABETES.optimize.compress, serve=mode)
    config = dataclasses.replace(DIABETES, optimize=dataclasses.replace(DIABETES.optimize, compress=compress))
    assert should_quantize(config, failed) is expected


@pytest.mark.slow
def test_failed_budget_produces_a_smaller_tflite_that_evaluates_like_the_savedmodel(tmp_path: Path) -> None:
    snapshot = make_snapshot(DIGITS, tmp_path / "snapshot")
    out = tmp_path / "optimize"
    result = optimize(DIGITS, snapshot, out, failed=["size_mb"], overrides={"epochs": 3})
    json.dumps(result)
    assert result["quantized"] is True
    assert [t["hparams"]["learning_rate"] for t in result["trials"]] == [0.001, 0.003]
    assert all(t["epochs_run"] <= 3 for t in result["trials"])
    assert result["best"]["val_loss"] == min(t["val_loss"] for t in result["trials"])
    assert result["model_uri"] == str(out / "model")
    assert (out / "model" / "saved_model.pb").is_file()
    assert json.loads((out / "trials.json").read_text())["best"]["trial"] == result["best"]["trial"]
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["trial_0", "trial_1"]

    tflite = Path(result["tflite_uri"])
    assert tflite == out / "model.tflite"
    assert tflite.stat().st_size < dir_size_bytes(out / "model") / 2

    quantized = evaluate(
        DIGITS, result["model_uri"], snapshot, tmp_path / "eval_tflite", tflite_uri=result["tflite_uri"]
    )
    full = evaluate(DIGITS, result["model_uri"], snapshot, tmp_path / "eval_full")
    assert quantized["tflite_uri"] == result["tflite_uri"]
    assert quantized["metrics"]["size_mb"] == pytest.approx(tflite.stat().st_size / 1e6)
    assert quantized["metrics"]["size_mb"] < full["metrics"]["size_mb"]
    assert quantized["metrics"]["latency_ms"] > 0
    # Int8 weights cost little accuracy on this model.
    assert abs(quantized["metrics"]["accuracy"] - full["metrics"]["accuracy"]) <= 0.03
    assert full["metrics"]["accuracy"] > 0.5


@pytest.mark.slow
def test_quality_failure_retrains_without_quantizing(tmp_path: Path) -> None:
    snapshot = make_snapshot(DIABETES, tmp_path / "snapshot", rows=200)
    out = tmp_path / "optimize"
    result = optimize(DIABETES, snapshot, out, failed=["mae"], overrides={"epochs": 3})
    assert result["quantized"] is False
    assert result["tflite_uri"] is None
    assert not (out / "model.tflite").exists()
    assert len(result["trials"]) == 2
    evaluated = evaluate(DIABETES, result["model_uri"], snapshot, tmp_path / "evaluate")
    assert evaluated["metrics"]["mae"] > 0
