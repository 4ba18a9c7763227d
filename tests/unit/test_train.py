"""The train step: hyperparameters, validation split, the SavedModel contract, determinism, crash safety."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ml_fixtures import make_snapshot

from include.mlops.config import find_model_config, load_model_config
from include.mlops.registry.fingerprint import trained_fingerprint
from include.mlops.training.datasets import load_split, split_validation
from include.mlops.training.errors import ModelingError
from include.mlops.training.modeling import import_builder, resolve_hparams
from include.mlops.training.savedmodel import OutputContractError, check_outputs, load_serving_fn
from include.mlops.training.train import replica_count, train

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DIABETES = find_model_config("diabetes")
DIGITS = find_model_config("digits")
FAST = {"epochs": 4, "patience": 2}


@pytest.fixture(scope="module")
def diabetes_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_snapshot(DIABETES, tmp_path_factory.mktemp("snapshot") / "diabetes")


@pytest.fixture(scope="module")
def trained(diabetes_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train(DIABETES, diabetes_snapshot, tmp_path_factory.mktemp("runs") / "train", FAST)


def test_overrides_replace_config_values_and_ignore_unset_form_fields() -> None:
    hparams = resolve_hparams(DIABETES, {"epochs": 7, "learning_rate": "0.01", "batch_size": None})
    assert hparams == {"epochs": 7, "batch_size": 32, "learning_rate": 0.01, "patience": 20}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dropout": 0.5}, "unknown training override 'dropout'"),
        ({"epochs": 0}, "must be > 0"),
        ({"epochs": 2.5}, "valid int"),
    ],
)
def test_bad_overrides_are_rejected_with_the_field_named(overrides: dict, message: str) -> None:
    with pytest.raises(ModelingError, match=message):
        resolve_hparams(DIABETES, overrides)


def test_validation_rows_are_disjoint_and_chosen_per_row(diabetes_snapshot: Path) -> None:
    data = load_split(DIABETES, diabetes_snapshot, "train")
    fit, val = split_validation(data, 0.2)
    assert len(fit) + len(val) == len(data)
    assert not set(fit.row_ids) & set(val.row_ids)
    assert 0.1 < len(val) / len(data) < 0.3
    # Dropping rows must not move the others: the choice depends on each row alone.
    keep = np.arange(len(data)) % 3 != 0
    fewer = type(data)(data.features[keep], data.labels[keep], data.row_ids[keep])
    _, val_fewer = split_validation(fewer, 0.2)
    assert set(val_fewer.row_ids) == set(val.row_ids) & set(fewer.row_ids)


@pytest.mark.slow
def test_only_train_rows_are_used(diabetes_snapshot: Path, trained: dict) -> None:
    import pandas as pd

    frame = pd.read_parquet(diabetes_snapshot / "data.parquet")
    assert trained["train_rows"] + trained["val_rows"] == int((frame["split"] == "train").sum())


@pytest.mark.slow
def test_result_history_and_tensorboard(trained: dict, diabetes_snapshot: Path) -> None:
    out = Path(trained["model_uri"]).parent
    assert set(trained) >= {
        "model_uri",
        "epochs_run",
        "replicas",
        "hparams",
        "train_rows",
        "val_rows",
        "val_loss",
        "samples_per_second",
        "fingerprint",
    }
    assert trained["hparams"] == {"epochs": 4, "batch_size": 32, "learning_rate": 0.001, "patience": 2}
    # What made the model, for the gate's "identical to the champion" check and the version's lineage.
    assert trained["fingerprint"] == trained_fingerprint(DIABETES, diabetes_snapshot, resolve_hparams(DIABETES, FAST))
    assert 1 <= trained["epochs_run"] <= 4
    assert trained["replicas"] == replica_count() >= 1
    assert trained["samples_per_second"] > 0
    json.dumps(trained)  # the result crosses the step boundary as JSON
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]["val_loss"]) == trained["epochs_run"]
    assert history["val_loss"] == pytest.approx(min(history["history"]["val_loss"]))
    assert list((out / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((out / "tensorboard" / "validation").glob("events.out.tfevents.*"))
    assert not [p for p in out.parent.iterdir() if ".staging-" in p.name]


@pytest.mark.slow
def test_savedmodel_has_the_serving_contract_signature(trained: dict, diabetes_snapshot: Path) -> None:
    import tensorflow as tf

    signature = tf.saved_model.load(trained["model_uri"]).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["inputs"]
    assert inputs["inputs"].dtype == tf.float32
    assert inputs["inputs"].shape.as_list() == [None, len(DIABETES.features)]
    assert list(signature.structured_outputs) == ["outputs"]
    assert signature.structured_outputs["outputs"].dtype == tf.float32
    # Raw, unscaled features in, predictions in the label's units out.
    test = load_split(DIABETES, diabetes_snapshot, "test")
    outputs = signature(inputs=tf.constant(test.features[:5]))["outputs"].numpy()
    assert outputs.shape == (5, 1)
    assert np.all(np.isfinite(outputs))
    assert 0 < float(outputs.mean()) < 400


@pytest.mark.slow
def test_two_trainings_with_the_same_seed_and_data_are_identical(
    diabetes_snapshot: Path, trained: dict, tmp_path: Path
) -> None:
    again = train(DIABETES, diabetes_snapshot, tmp_path / "again", FAST)
    assert again["val_loss"] == trained["val_loss"]
    assert again["epochs_run"] == trained["epochs_run"]
    test = load_split(DIABETES, diabetes_snapshot, "test")
    first = load_serving_fn(trained["model_uri"])(test.features)
    second = load_serving_fn(again["model_uri"])(test.features)
    np.testing.assert_array_equal(first, second)


def _broken_models_dir(tmp_path: Path) -> Path:
    """A models folder outside the project whose builder maps to the wrong output width."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(DIABETES.path, models / "diabetes.yaml")
    (models / "diabetes.py").write_text(
        "import keras\n\n"
        "def build(config, hparams, stats):\n"
        "    inputs = keras.Input((len(config.features),))\n"
        "    return keras.Model(inputs, keras.layers.Dense(3)(inputs))\n"
    )
    return models


def test_builders_outside_the_project_are_imported_from_their_file(tmp_path: Path) -> None:
    config = load_model_config(_broken_models_dir(tmp_path) / "diabetes.yaml")
    module = import_builder(config)
    assert Path(module.__file__).resolve() == (tmp_path / "models" / "diabetes.py").resolve()
    assert import_builder(DIABETES).__name__ == "include.models.diabetes"


@pytest.mark.slow
def test_a_crash_inside_train_leaves_no_output(diabetes_snapshot: Path, tmp_path: Path) -> None:
    config = load_model_config(_broken_models_dir(tmp_path) / "diabetes.yaml")
    out = tmp_path / "runs" / "train"
    with pytest.raises(OutputContractError, match=r"a regression model of 'diabetes' must return \[rows, 1\]"):
        train(config, diabetes_snapshot, out, FAST)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


@pytest.mark.slow
def test_a_crash_on_rerun_keeps_the_previous_output(diabetes_snapshot: Path, trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "train"
    shutil.copytree(Path(trained["model_uri"]).parent, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    config = load_model_config(_broken_models_dir(tmp_path) / "diabetes.yaml")
    with pytest.raises(ModelingError):
        train(config, diabetes_snapshot, out, FAST)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_missing_snapshot_columns_name_the_columns(tmp_path: Path) -> None:
    import pandas as pd

    snapshot = make_snapshot(DIABETES, tmp_path / "snapshot", rows=40)
    frame = pd.read_parquet(snapshot / "data.parquet").drop(columns=["bmi"])
    frame.to_parquet(snapshot / "data.parquet")
    with pytest.raises(ModelingError, match=r"columns \['bmi'\] are missing"):
        train(DIABETES, snapshot, tmp_path / "out", FAST)
    assert not (tmp_path / "out").exists()


def _digits_without_softmax(tmp_path: Path) -> Path:
    """A models folder holding digits with its real builder, less the softmax on its last layer."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(DIGITS.path, models / "digits.yaml")
    builder = DIGITS.builder_path.read_text()
    assert 'activation="softmax"' in builder
    (models / "digits.py").write_text(builder.replace(', activation="softmax"', ""))
    return models


@pytest.mark.slow
def test_a_classification_head_without_softmax_is_bad_input_before_training(tmp_path: Path) -> None:
    models = _digits_without_softmax(tmp_path)
    snapshot = make_snapshot(DIGITS, tmp_path / "snapshot", rows=200)
    out = tmp_path / "train"
    step = ["train", "--model", "digits", "--models-dir", str(models), "--data", str(snapshot), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "include.mlops", *step, "--overrides", '{"epochs": 50}'],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "builder digits.py: a classification model must output class probabilities" in proc.stderr
    assert "keras.layers.Dense(10, activation='softmax')" in proc.stderr
    assert "epoch 1/50" not in proc.stderr  # refused before any training
    assert not out.exists()


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([[-2.23] + [0.0] * 9], "must output class probabilities"),
        ([[0.5] * 10], r"sum 5"),
        ([[0.1] * 9], r"shape \(1, 9\)"),
        ([[float("nan")] + [0.1] * 9], "NaN or infinite"),
    ],
)
def test_the_output_contract_refuses_what_is_not_probabilities(rows: list, problem: str) -> None:
    with pytest.raises(OutputContractError, match=problem):
        check_outputs(DIGITS, np.array(rows), source="candidate")


def test_the_output_contract_accepts_softmax_rows() -> None:
    logits = np.random.default_rng(0).normal(size=(32, 10))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        check_outputs(DIGITS, probabilities.astype("float32"), source="candidate"), probabilities, rtol=1e-6
    )
