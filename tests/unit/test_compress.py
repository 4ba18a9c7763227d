"""The compress step: real TFLite variants of a real digits model, measured, judged and reported."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compressed_digits import TrainedDigits, trained_digits
from markupsafe import escape

from include.mlops.cli import main
from include.mlops.config import ModelConfig, find_model_config
from include.mlops.optimize.compress import (
    NEEDS_TRIAL_WEIGHTS,
    budgets,
    choose_served,
    compress,
    metric_loss,
    primary_metric,
)

DIGITS = find_model_config("digits")
DIABETES = find_model_config("diabetes")


def with_compress(config: ModelConfig, **changes: Any) -> ModelConfig:
    compress_config = dataclasses.replace(config.optimize.compress, **changes)
    return dataclasses.replace(config, optimize=dataclasses.replace(config.optimize, compress=compress_config))


# --------------------------------------------------------------------------- the rules, without TensorFlow


def test_budgets_default_to_the_gates_and_the_primary_metric_is_the_first_gated_one() -> None:
    assert budgets(DIGITS) == budgets(DIGITS).__class__(0.02, 100.0, 20.0)  # digits.yaml's gate budgets
    assert budgets(with_compress(DIGITS, max_latency_ms=0.5)).max_latency_ms == 0.5
    assert primary_metric(DIGITS) == "accuracy"
    assert primary_metric(DIABETES) == "mae"  # the first of metrics that the gate thresholds


def test_metric_loss_is_relative_and_positive_when_worse() -> None:
    assert metric_loss(DIGITS, "accuracy", 0.9, 0.882) == pytest.approx(0.02)
    assert metric_loss(DIGITS, "accuracy", 0.9, 0.95) < 0
    assert metric_loss(DIABETES, "mae", 50.0, 51.0) == pytest.approx(0.02)  # lower is better


def test_the_served_variant_is_the_best_kept_one_on_the_failed_budget() -> None:
    variants = {
        "dynamic": {"kept": True, "latency_1_ms": 0.3, "size_bytes": 900, "metric_loss": 0.0},
        "int8": {"kept": True, "latency_1_ms": 0.2, "size_bytes": 1000, "metric_loss": 0.01},
        "float16": {"kept": False, "latency_1_ms": 0.1, "size_bytes": 500, "metric_loss": 0.5},
    }
    assert choose_served(variants, ["latency_ms"]) == "int8"
    assert choose_served(variants, ["size_mb"]) == "dynamic"
    assert choose_served({"float16": variants["float16"]}, ["latency_ms"]) is None


# --------------------------------------------------------------------------- real variants of a trained model


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> TrainedDigits:
    return trained_digits(tmp_path_factory)


def write_trials(path: Path) -> Path:
    """A trials.json in tune_select's format: two successful trials and a failed one."""
    trials = [
        {"trial": 0, "hparams": {"learning_rate": 0.002}, "status": "success", "val_loss": 0.21,
         "val_metrics": {"accuracy": 0.95}, "error": None, "model_uri": "t0/model", "weights_uri": "t0/weights.npz"},
        {"trial": 1, "hparams": {"learning_rate": 0.0042}, "status": "success", "val_loss": 0.15,
         "val_metrics": {"accuracy": 0.96}, "error": None, "model_uri": "t1/model", "weights_uri": "t1/weights.npz"},
        {"trial": 2, "hparams": {"learning_rate": 0.0007}, "status": "failed", "val_loss": None,
         "val_metrics": {}, "error": "loss became NaN at epoch 3", "model_uri": None, "weights_uri": None},
    ]  # fmt: skip
    path.write_text(json.dumps({"trials": trials, "best": 1, "min_successful": 2}))
    return path


@pytest.fixture(scope="module")
def over_latency(digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Every variant of the digits model, after the gate failed its latency budget (serve: auto)."""
    base = tmp_path_factory.mktemp("compress")
    out = base / "compress"
    trials = write_trials(base / "trials.json")
    result = compress(digits.config, digits.snapshot, digits.model, out, trials_uri=trials, failed=["latency_ms"])
    return result, out


@pytest.mark.slow
def test_int8_is_at_most_035x_the_float32_tflite_and_within_the_accuracy_tolerance(
    over_latency: tuple[dict[str, Any], Path],
) -> None:
    result, out = over_latency
    summary = json.loads((out / "variants.json").read_text())
    int8 = summary["variants"]["int8"]
    float32_bytes = (out / "variants" / "float32.tflite").stat().st_size
    assert int8["size_bytes"] == (out / "variants" / "int8.tflite").stat().st_size
    assert int8["size_bytes"] <= 0.35 * float32_bytes
    assert int8["size_ratio"] == pytest.approx(int8["size_bytes"] / float32_bytes)
    assert int8["metric_loss"] <= DIGITS.optimize.compress.max_metric_loss
    assert int8["kept"] is True and result["variants"]["int8"]["kept"] is True
    assert summary["reference"]["float"]["metrics"]["accuracy"] > 0.9  # a model worth compressing
    for name in ("dynamic", "float16", "int8"):
        variant = summary["variants"][name]
        assert variant["speedup_1"] > 0 and variant["speedup_32"] > 0 and variant["latency_32_ms"] > 0
    # Without the trial's weights (not given here) pruned and qat say so instead of pretending.
    for name in ("pruned", "qat"):
        assert result["variants"][name] == {**result["variants"][name], "kept": False, "reason": NEEDS_TRIAL_WEIGHTS}


@pytest.mark.slow
def test_a_failed_latency_budget_serves_the_fastest_kept_variant_as_model_tflite(
    over_latency: tuple[dict[str, Any], Path],
) -> None:
    result, out = over_latency
    summary = json.loads((out / "variants.json").read_text())
    kept = {n: v for n, v in summary["variants"].items() if v["kept"]}
    served = result["served_variant"]
    assert served == min(kept, key=lambda n: kept[n]["latency_1_ms"])
    assert result["tflite_uri"] == str(out / "model.tflite")
    digest = hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    assert digest == hashlib.sha256((out / "variants" / f"{served}.tflite").read_bytes()).hexdigest()
    assert (out / "model" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_the_report_shows_trials_variants_with_reasons_and_embedded_plots(
    over_latency: tuple[dict[str, Any], Path],
) -> None:
    result, _ = over_latency
    html = Path(result["report_uri"]).read_text()
    trials_table = html.split('id="trials-table"')[1].split("</table>")[0]
    assert trials_table.count("<tr") == 4  # header + three trials
    assert "learning_rate=0.0042" in trials_table and "loss became NaN at epoch 3" in trials_table
    variants_table = html.split('id="variants-table"')[1].split("</table>")[0]
    for name in ("dynamic", "float16", "int8", "pruned", "qat"):
        assert f"<td>{name}" in variants_table
    assert escape(NEEDS_TRIAL_WEIGHTS) in variants_table
    assert len(re.findall(r'src="data:image/svg\+xml;base64,[A-Za-z0-9+/=]{200,}"', html)) == 4


@pytest.mark.slow
def test_too_few_calibration_rows_skip_int8_with_a_reason_and_the_others_are_unaffected(
    digits: TrainedDigits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The config asks for more calibration rows than the snapshot has training rows; run through the step CLI.
    models = tmp_path / "models"
    models.mkdir()
    text = (digits.config.path).read_text()
    text = text.replace("representative_rows: 100", "representative_rows: 5000")
    text = text.replace("variants: [dynamic, float16, int8, pruned, qat]", "variants: [dynamic, int8]")
    (models / "digits.yaml").write_text(text)
    (models / "digits.py").write_text(digits.config.builder_path.read_text())
    out, result_file = tmp_path / "compress", tmp_path / "result.json"
    argv = ["compress", "--model", "digits", "--models-dir", str(models), "--data", str(digits.snapshot)]
    argv += ["--candidate", str(digits.model), "--out", str(out), "--result-file", str(result_file)]
    assert main(argv) == 0
    result = json.loads(result_file.read_text())
    int8 = result["variants"]["int8"]
    assert int8["kept"] is False and int8["status"] == "skipped"
    assert "needs 5000 representative rows" in int8["reason"] and "representative_rows" in int8["reason"]
    assert not (out / "variants" / "int8.tflite").exists()
    assert result["variants"]["dynamic"]["kept"] is True
    assert escape(int8["reason"]) in (out / "report.html").read_text()
    # No budget failed and serve is auto: the float SavedModel stays what is served.
    assert (result["served_variant"], result["tflite_uri"]) == ("float", None)
    assert not (out / "model.tflite").exists()


@pytest.mark.slow
def test_an_int8_variant_whose_accuracy_collapses_is_not_kept_and_the_report_says_why(
    digits: TrainedDigits, tmp_path: Path
) -> None:
    config = with_compress(digits.config, variants=("dynamic", "int8"), serve="tflite")
    # Calibrating on a blank image (a constant row) sets every activation range to ~0: real digits saturate.
    blank = np.zeros((100, len(config.features)), dtype="float32")
    result = compress(config, digits.snapshot, digits.model, tmp_path / "compress", calibration=blank)
    int8 = json.loads((tmp_path / "compress" / "variants.json").read_text())["variants"]["int8"]
    assert int8["metric_value"] < 0.5 and int8["metric_loss"] > 0.02
    assert int8["kept"] is False and int8["status"] == "rejected"
    assert "more than max_metric_loss 2.0%" in int8["reason"]
    assert "accuracy" in int8["reason"] and escape(int8["reason"]) in Path(result["report_uri"]).read_text()
    # The collapsed variant is never served; the kept one is (serve: tflite).
    assert result["served_variant"] == "dynamic"
