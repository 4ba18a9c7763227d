"""The evaluate step: metrics, predictions, plot and report, champion comparison, and the demo models' gates."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from ml_fixtures import make_snapshot

from include.mlops.config import BUDGET_METRICS, METRICS, ModelConfig, find_model_config
from include.mlops.evaluation.evaluate import evaluate, task_metrics
from include.mlops.training.datasets import load_split
from include.mlops.training.errors import ModelingError
from include.mlops.training.savedmodel import load_serving_fn
from include.mlops.training.train import train

DIABETES = find_model_config("diabetes")
DIGITS = find_model_config("digits")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def diabetes_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_snapshot(DIABETES, tmp_path_factory.mktemp("snapshot") / "diabetes")


@pytest.fixture(scope="module")
def candidate(diabetes_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return train(DIABETES, diabetes_snapshot, tmp_path_factory.mktemp("runs") / "candidate", {"epochs": 6})["model_uri"]


@pytest.fixture(scope="module")
def champion(diabetes_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return train(DIABETES, diabetes_snapshot, tmp_path_factory.mktemp("runs") / "champion", {"epochs": 2})["model_uri"]


def test_regression_metrics_match_their_definitions() -> None:
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    outputs = np.array([[1.5], [2.0], [2.0], [4.0]])
    metrics = task_metrics(DIABETES, labels, outputs)
    assert metrics["mae"] == pytest.approx(0.375)
    assert metrics["mse"] == pytest.approx(0.3125)
    assert metrics["rmse"] == pytest.approx(math.sqrt(0.3125))
    assert metrics["r2"] == pytest.approx(1 - 1.25 / 5.0)


def test_classification_metrics_match_their_definitions() -> None:
    labels = np.array([0, 1, 2, 2])
    outputs = np.full((4, 10), 0.01)
    for row, predicted in enumerate([0, 1, 2, 1]):
        outputs[row, predicted] = 0.91
    metrics = task_metrics(DIGITS, labels, outputs)
    assert set(metrics) == set(METRICS["classification"])
    assert metrics["accuracy"] == pytest.approx(0.75)
    # Ten classes, three present: f1 is 1, 2/3 and 2/3 on them and 0 for the seven absent ones.
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 10)
    assert metrics["log_loss"] == pytest.approx(-(3 * math.log(0.91) + math.log(0.01)) / 4)


@pytest.mark.slow
def test_evaluate_writes_metrics_predictions_plot_and_report(
    diabetes_snapshot: Path, candidate: str, tmp_path: Path
) -> None:
    out = tmp_path / "evaluate"
    result = evaluate(DIABETES, candidate, diabetes_snapshot, out)
    json.dumps(result)
    test = load_split(DIABETES, diabetes_snapshot, "test")
    assert result["test_rows"] == len(test)
    assert result["champion"] is None
    assert result["tflite_uri"] is None
    assert result["model_uri"] == candidate
    metrics = result["metrics"]
    assert set(metrics) == set(METRICS["regression"]) | set(BUDGET_METRICS)
    assert metrics["rmse"] == pytest.approx(math.sqrt(metrics["mse"]))
    assert 0 < metrics["size_mb"] < 5
    assert 0 < metrics["latency_ms"] < 1000
    assert json.loads((out / "metrics.json").read_text())["metrics"] == pytest.approx(metrics)

    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == len(test)
    assert {"row", *DIABETES.features, DIABETES.label, "prediction"} <= set(predictions.columns)
    served = load_serving_fn(candidate)(predictions[list(DIABETES.features)].to_numpy("float32"))[:, 0]
    np.testing.assert_allclose(predictions["prediction"], served, rtol=1e-5)
    assert float(np.abs(predictions["prediction"] - predictions[DIABETES.label]).mean()) == pytest.approx(
        metrics["mae"], rel=1e-5
    )

    assert (out / "plot.png").read_bytes().startswith(PNG_MAGIC)
    report = (out / "report.html").read_text()
    assert Path(result["report_uri"]) == out / "report.html"
    for metric in metrics:
        assert f"<td>{metric}" in report
    assert "data:image/png;base64," in report
    assert "No champion" in report


@pytest.mark.slow
def test_champion_is_scored_on_the_same_rows(
    diabetes_snapshot: Path, candidate: str, champion: str, tmp_path: Path
) -> None:
    out = tmp_path / "evaluate"
    result = evaluate(DIABETES, candidate, diabetes_snapshot, out, champion_uri=champion, champion_version=7)
    assert result["champion"]["version"] == 7
    champ = result["champion"]["metrics"]
    assert set(champ) == set(result["metrics"])
    # Two epochs versus six: a genuinely different model with different errors.
    assert champ["mae"] != pytest.approx(result["metrics"]["mae"])
    alone = evaluate(DIABETES, champion, diabetes_snapshot, tmp_path / "alone")
    for metric in METRICS["regression"]:
        assert champ[metric] == pytest.approx(alone["metrics"][metric])
    report = (out / "report.html").read_text()
    assert "champion v7" in report
    assert "change" in report
    assert json.loads((out / "metrics.json").read_text())["champion"]["version"] == 7


@pytest.mark.slow
def test_a_model_without_the_contract_signature_is_rejected(diabetes_snapshot: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    class Wrong(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.reduce_sum(x, axis=1, keepdims=True)}

    module = Wrong()
    tf.saved_model.save(module, str(tmp_path / "wrong"), signatures={"serving_default": module.serve})
    with pytest.raises(ModelingError, match="must take one float32 input 'inputs'"):
        evaluate(DIABETES, str(tmp_path / "wrong"), diabetes_snapshot, tmp_path / "evaluate")
    assert not (tmp_path / "evaluate").exists()


def _assert_meets_gate(config: ModelConfig, metrics: dict[str, float]) -> None:
    for metric, bounds in config.gate.thresholds.items():
        if "min" in bounds:
            assert metrics[metric] >= bounds["min"], f"{config.name} {metric}={metrics[metric]:.4g} < {bounds['min']}"
        if "max" in bounds:
            assert metrics[metric] <= bounds["max"], f"{config.name} {metric}={metrics[metric]:.4g} > {bounds['max']}"
    for budget, limit in config.gate.budgets.items():
        assert metrics[budget] <= limit, f"{config.name} {budget}={metrics[budget]:.4g} over budget {limit}"


@pytest.mark.slow
@pytest.mark.parametrize("config", [DIABETES, DIGITS], ids=lambda c: c.name)
def test_demo_models_pass_their_gate_with_the_default_config(config: ModelConfig, tmp_path: Path) -> None:
    snapshot = make_snapshot(config, tmp_path / "snapshot")
    trained = train(config, snapshot, tmp_path / "train")
    assert trained["hparams"]["epochs"] == config.train.epochs
    result = evaluate(config, trained["model_uri"], snapshot, tmp_path / "evaluate")
    _assert_meets_gate(config, result["metrics"])
    if config.task == "classification":
        assert (tmp_path / "evaluate" / "plot.png").read_bytes().startswith(PNG_MAGIC)
        assert {f"proba_{k}" for k in range(10)} <= set(
            pd.read_parquet(tmp_path / "evaluate" / "predictions.parquet").columns
        )


def test_report_html_escapes_config_text_and_paths() -> None:
    import dataclasses

    from include.mlops.evaluation.evaluate import _report_html

    config = dataclasses.replace(DIABETES, description="<script>alert('x')</script> & more")
    metrics = {"mae": 44.0, "mse": 3000.0, "rmse": 54.8, "r2": 0.47, "size_mb": 0.02, "latency_ms": 1.5}
    champion = {"version": 3, "metrics": {**metrics, "mae": 46.0}}
    report = _report_html(config, metrics, champion, PNG_MAGIC, {"model": "/runs/a<b>&c"}, 42)
    assert "<script>" not in report
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in report
    assert "<code>/runs/a&lt;b&gt;&amp;c</code>" in report
    # The template's own entities and markup are not escaped.
    assert (
        "<tr class='key'><td>mae &darr;</td><td>44</td><td>46</td><td class='better'>-4.3%</td><td>&le; 65</td>"
        in report
    )


# --------------------------------------------------------------------------- the champion is verified first

# What register records in a version's lineage (include/mlops/registry/fingerprint.py); evaluate hands it to the gate.
CHAMPION_FINGERPRINT = {"sha256": "c" * 64, "stage": "train", "data_sha256": "d" * 64, "code_version": "abc"}


@pytest.fixture
def stable_champion(artifact_root: Path, champion: str) -> Path:
    """The trained champion registered as version 1 of diabetes and labelled stable, in a real registry."""
    from include.mlops.registry.filesystem import Registry

    registry = Registry(artifact_root / "models")
    lineage = {"dag_id": "d", "run_id": "r", "candidate_fingerprint": CHAMPION_FINGERPRINT}
    result = registry.register("diabetes", champion, metrics={}, lineage=lineage)
    registry.set_label("diabetes", "stable", result.version)
    return result.version_dir


def _evaluate_through_the_cli(snapshot: Path, candidate: str, out: Path) -> dict[str, Any]:
    """``python -m include.mlops evaluate`` with ``--champion auto`` (the stable version), in process."""
    from include.mlops.cli import main

    code = main(
        ["evaluate", "--model", "diabetes", "--out", str(out), "--data", str(snapshot), "--candidate", candidate]
    )
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_a_verified_champion_is_compared(
    diabetes_snapshot: Path, candidate: str, stable_champion: Path, tmp_path: Path
) -> None:
    written = _evaluate_through_the_cli(diabetes_snapshot, candidate, tmp_path / "evaluate")
    assert written["champion_unavailable"] is None
    assert written["champion"]["version"] == 1
    assert written["champion"]["measured_artifact"]["format"] == "saved_model"
    assert written["champion"]["fingerprint"] == CHAMPION_FINGERPRINT


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["corrupt weights", "missing file", "missing version"])
def test_a_corrupt_champion_is_reported_and_the_gate_fails_closed(
    diabetes_snapshot: Path, candidate: str, stable_champion: Path, tmp_path: Path, damage: str
) -> None:
    import shutil

    weights = next((stable_champion / "variables").glob("variables.data-*"))
    if damage == "corrupt weights":
        data = bytearray(weights.read_bytes())
        data[0] ^= 0x01
        weights.write_bytes(bytes(data))
        why = r"champion unavailable: model 'diabetes' version 1 is corrupt .*variables.data-\S+ has changed"
    elif damage == "missing file":
        weights.unlink()
        why = r"champion unavailable: model 'diabetes' version 1 is corrupt .*variables.data-\S+ is missing"
    else:
        shutil.rmtree(stable_champion)
        why = r"champion unavailable: model 'diabetes' has no version 1"

    out = tmp_path / "evaluate"
    written = _evaluate_through_the_cli(diabetes_snapshot, candidate, out)  # evaluate reports it: exit code 0
    assert written["champion"] is None
    assert re.match(why, written["champion_unavailable"]), written["champion_unavailable"]
    unscored = written["champion_unscored"]
    assert unscored["version"] == 1 and unscored["model_uri"] == str(stable_champion)
    assert re.match(why.removeprefix("champion unavailable: "), unscored["reason"]), unscored
    report = (out / "report.html").read_text()
    assert "champion unavailable: model &#39;diabetes&#39;" in report
    assert "the gate\nfails closed" in report or "the gate fails closed" in report.replace("\n", " ")

    _assert_the_gate_fails_closed_unless_accepted(written)


def _assert_the_gate_fails_closed_unless_accepted(written: dict[str, Any]) -> None:
    """The gate on evaluate's metrics.json: fails closed on the unscored champion, decides when a person accepts."""
    from include.mlops.evaluation.gate import ChampionUnscoredError, decide_for_config

    with pytest.raises(ChampionUnscoredError, match=r"the champion \(version 1\) could not be scored"):
        decide_for_config(DIABETES, written["metrics"], None, champion_unscored=written["champion_unscored"])
    decision = decide_for_config(
        DIABETES, written["metrics"], None, champion_unscored=written["champion_unscored"], accept_without_champion=True
    )
    assert decision.accepted_without_champion and not decision.has_champion
    assert decision.champion_unscored is not None and decision.champion_unscored.version == 1
    assert all(check.skipped for check in decision.checks if check.kind == "change")


def test_a_champion_built_for_other_features_is_unscored_and_the_gate_fails_closed(
    artifact_root: Path, tmp_path: Path
) -> None:
    # The stable version was trained before a feature was added to the config: it takes one input fewer.
    from model_factory import make_saved_model

    from include.mlops.registry.filesystem import Registry

    n_features = len(DIABETES.features)
    older = make_saved_model(tmp_path / "older", n_features - 1, 1, seed=1)
    registry = Registry(artifact_root / "models")
    version_dir = registry.register("diabetes", older, metrics={}, lineage={"dag_id": "d", "run_id": "r"}).version_dir
    registry.set_label("diabetes", "stable", 1)
    candidate = make_saved_model(tmp_path / "candidate", n_features, 1, seed=2)
    snapshot = make_snapshot(DIABETES, tmp_path / "snapshot", rows=120)

    out = tmp_path / "evaluate"
    written = _evaluate_through_the_cli(snapshot, str(candidate), out)
    assert written["champion"] is None
    unscored = written["champion_unscored"]
    assert unscored["version"] == 1 and unscored["model_uri"] == str(version_dir)
    assert str(n_features) in unscored["reason"], unscored
    assert written["champion_unavailable"] == f"champion unavailable: {unscored['reason']}"
    _assert_the_gate_fails_closed_unless_accepted(written)


@pytest.mark.slow
def test_a_champion_with_model_tflite_is_measured_on_it(
    artifact_root: Path, diabetes_snapshot: Path, candidate: str, champion: str, tmp_path: Path
) -> None:
    from include.mlops.artifacts import sha256_file
    from include.mlops.registry.filesystem import Registry
    from include.mlops.training.savedmodel import convert_to_tflite

    registry = Registry(artifact_root / "models")
    tflite = convert_to_tflite(champion, tmp_path / "champion.tflite")
    result = registry.register(
        "diabetes", champion, metrics={}, lineage={"dag_id": "d", "run_id": "r"}, tflite_path=tflite
    )
    registry.set_label("diabetes", "stable", result.version)
    written = _evaluate_through_the_cli(diabetes_snapshot, candidate, tmp_path / "evaluate")
    measured = written["champion"]["measured_artifact"]
    assert measured["format"] == "tflite"
    assert measured["sha256"] == sha256_file(result.version_dir / "model.tflite") == sha256_file(tflite)
    assert written["champion"]["metrics"]["size_mb"] == pytest.approx(tflite.stat().st_size / 1_000_000)
