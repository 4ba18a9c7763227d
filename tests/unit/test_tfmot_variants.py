"""Pruned and QAT variants from TensorFlow Model Optimization, made in a tf_keras child process.

The float model is trained here by the real train code under Keras 3, its weights are
saved as the tuning trials save them (``np.savez(path, *model.get_weights())``), and the
variants are made through the public API, which runs the real child process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ml_fixtures import make_snapshot

from include.mlops.config import PROJECT_ROOT, ModelConfig, find_model_config, load_model_config
from include.mlops.optimize.tfmot_keras import make_variants
from include.mlops.optimize.tfmot_variants import run_tfmot_variants
from include.mlops.training.datasets import load_split, split_validation
from include.mlops.training.modeling import build_model, resolve_hparams
from include.mlops.training.savedmodel import load_serving_fn, load_tflite_fn
from include.mlops.training.train import fit_model

DIGITS = find_model_config("digits")
TARGET_SPARSITY = 0.6
# A third of the digits keep the child's fine-tuning to a few seconds.
ROWS = 400


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A digits CNN trained under Keras 3, its weights.npz, and its float answers on the validation rows."""
    root = tmp_path_factory.mktemp("tfmot")
    snapshot = make_snapshot(DIGITS, root / "snapshot", rows=ROWS)
    hparams = resolve_hparams(DIGITS, {"epochs": 12, "patience": 12})
    fit_data, val_data = split_validation(load_split(DIGITS, snapshot, "train"), DIGITS.train.validation_fraction)
    run = fit_model(DIGITS, fit_data, val_data, hparams)
    weights = root / "weights.npz"
    np.savez(weights, *run.model.get_weights())
    return {
        "root": root,
        "snapshot": snapshot,
        "hparams": hparams,
        "weights": weights,
        "val": val_data.features,
        "float": run.model.predict(val_data.features, verbose=0),
    }


@pytest.fixture(scope="module")
def variants(trained: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return run_tfmot_variants(
        DIGITS,
        trained["hparams"],
        trained["weights"],
        trained["snapshot"],
        trained["root"] / "variants",
        pruning={"target_sparsity": TARGET_SPARSITY, "epochs": 2},
        qat={"epochs": 1},
    )


@pytest.mark.slow
def test_pruned_model_reaches_the_configured_sparsity_on_its_stripped_weights(
    variants: dict[str, dict[str, Any]],
) -> None:
    import tensorflow as tf

    pruned = variants["pruned"]
    assert pruned["error"] is None, pruned["error"]
    assert pruned["sparsity"] == pytest.approx(TARGET_SPARSITY, abs=0.01)
    # The exported (stripped) SavedModel's own variables: every kernel is pruned, no mask is left.
    checkpoint = str(Path(pruned["saved_model"]) / "variables" / "variables")
    names = [name for name, _ in tf.train.list_variables(checkpoint)]
    assert not [n for n in names if "mask" in n or "threshold" in n], names
    kernels = {n: tf.train.load_variable(checkpoint, n) for n in names if "/kernel/" in n}
    assert len(kernels) == 4  # conv1, conv2, hidden, probabilities
    for name, kernel in kernels.items():
        assert np.mean(kernel == 0) == pytest.approx(TARGET_SPARSITY, abs=0.01), name
    answers = load_tflite_fn(pruned["tflite"])(np.zeros((2, len(DIGITS.features)), "float32"))
    assert answers.shape == (2, DIGITS.num_classes)


@pytest.mark.slow
def test_qat_model_converts_to_int8_and_answers_close_to_the_float_model(
    trained: dict[str, Any], variants: dict[str, dict[str, Any]]
) -> None:
    qat = variants["qat"]
    assert qat["error"] is None, qat["error"]
    assert qat["sparsity"] is None
    tflite = load_tflite_fn(qat["tflite"])
    int8_tensors = [d for d in tflite.interpreter.get_tensor_details() if d["dtype"] == np.int8]
    assert len(int8_tensors) >= 6, "the fake-quant ranges should give int8 kernels and activations"
    answers = tflite(trained["val"])
    # The int8 flatbuffer computes what the fake-quant graph trained...
    fake_quant = load_serving_fn(qat["saved_model"], len(DIGITS.features))(trained["val"])
    assert np.abs(answers - fake_quant).mean() < 0.01
    # ...and, after one epoch of fine-tuning from the Keras 3 weights, close to the float model.
    reference = trained["float"]
    assert np.abs(answers - reference).mean() < 0.05
    assert np.mean(answers.argmax(axis=1) == reference.argmax(axis=1)) >= 0.85
    np.testing.assert_allclose(answers.sum(axis=1), 1.0, atol=1e-3)  # the output layer stays float


_BATCHNORM_BUILDER = """
from __future__ import annotations

import tensorflow as tf


def build(config, hparams, stats):
    inputs = tf.keras.Input((len(config.features),), dtype="float32", name="inputs")
    x = tf.keras.layers.Dense(8, name="hidden")(inputs)
    x = tf.keras.layers.BatchNormalization(name="norm")(x)
    x = tf.keras.layers.Activation("relu", name="relu")(x)
    outputs = tf.keras.layers.Dense(1, name="prediction")(x)
    return tf.keras.Model(inputs, outputs, name=config.name)
"""

_LEGACY_PREDICT = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import tensorflow as tf

    from include.mlops.config import load_model_config
    from include.mlops.training.datasets import load_split, split_validation
    from include.mlops.optimize.tfmot_keras import build_with_weights

    assert tf.keras.Model.__module__.startswith("tf_keras"), tf.keras.Model.__module__
    for case in json.loads(sys.argv[1]):
        config = load_model_config(case["config"])
        fit_data, _ = split_validation(load_split(config, case["snapshot"], "train"), config.train.validation_fraction)
        try:
            model = build_with_weights(config, case["hparams"], fit_data, case["weights"])
        except Exception as exc:
            print(f"{case['config']}: {exc}")
            continue
        np.save(case["answers"], model.predict(np.load(case["rows"]), verbose=0))
    """
)


def _batchnorm_config(folder: Path) -> ModelConfig:
    """The diabetes data with a builder whose BatchNormalization has non-trainable weights mid-model."""
    folder.mkdir()
    (folder / "batchnorm.py").write_text(_BATCHNORM_BUILDER)
    text = (PROJECT_ROOT / "include" / "models" / "diabetes.yaml").read_text()
    text = text.replace("name: diabetes", "name: batchnorm").replace("builder: diabetes", "builder: batchnorm")
    (folder / "batchnorm.yaml").write_text(text)
    return load_model_config(folder / "batchnorm.yaml")


@pytest.mark.slow
def test_keras3_weights_load_into_the_tf_keras_build_in_order(trained: dict[str, Any], tmp_path: Path) -> None:
    config = _batchnorm_config(tmp_path / "models")
    snapshot = make_snapshot(config, tmp_path / "snapshot", rows=120)
    rows = load_split(config, snapshot, "train").features[:16]
    model = build_model(config, {}, {})
    # Distinct random values everywhere (a positive moving variance), so any mix-up changes the answers.
    rng = np.random.default_rng(7)
    values = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.get_weights()]
    model.set_weights(values)
    # get_weights() order, layer by layer: BatchNormalization's moving statistics sit beside its gamma and
    # beta in both Keras (trainable_weights + non_trainable_weights would put them last).
    assert [tuple(v.shape) for v in values] == [(10, 8), (8,), (8,), (8,), (8,), (8,), (8, 1), (1,)]
    np.savez(tmp_path / "batchnorm.npz", *values)
    cases = []
    expected = {}
    for name, case_config, case_snapshot, weights, hparams, features, answers in [
        ("batchnorm", config, snapshot, tmp_path / "batchnorm.npz", {}, rows, model.predict(rows, verbose=0)),
        (
            "digits",
            DIGITS,
            trained["snapshot"],
            trained["weights"],
            trained["hparams"],
            trained["val"][:16],
            trained["float"][:16],
        ),
    ]:
        np.save(tmp_path / f"{name}_rows.npy", features)
        expected[name] = answers
        cases.append(
            {
                "config": str(case_config.path),
                "snapshot": str(case_snapshot),
                "weights": str(weights),
                "hparams": hparams,
                "rows": str(tmp_path / f"{name}_rows.npy"),
                "answers": str(tmp_path / f"{name}_answers.npy"),
            }
        )
    # The same builder written with `import keras` gives a Keras 3 model even there: refused, saying why.
    keras3 = tmp_path / "keras3_models"
    keras3.mkdir()
    shutil.copy(config.path, keras3 / "batchnorm.yaml")
    keras3_builder = _BATCHNORM_BUILDER.replace("import tensorflow as tf", "import keras")
    (keras3 / "batchnorm.py").write_text(keras3_builder.replace("tf.keras", "keras"))
    cases.append({**cases[0], "config": str(keras3 / "batchnorm.yaml")})
    np.savez(tmp_path / "too_few.npz", *values[:2])
    cases.append({**cases[0], "weights": str(tmp_path / "too_few.npz")})
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", _LEGACY_PREDICT, json.dumps(cases)], env=env, capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr[-3000:]
    for name, answers in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}_answers.npy"), answers, rtol=1e-5, atol=1e-5)
    assert "build() returned a Keras 3 model, not a tf_keras" in child.stdout, child.stdout
    assert "build it with tf.keras" in child.stdout
    assert "too_few.npz holds 2 arrays, but model 'batchnorm' built with these hparams has 8 weights" in child.stdout


@pytest.mark.slow
def test_a_kind_that_fails_returns_its_error_instead_of_raising(trained: dict[str, Any], tmp_path: Path) -> None:
    with np.load(trained["weights"]) as archive:
        arrays = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    arrays[4] = arrays[4].T  # the hidden layer's kernel, (64, 128) instead of (128, 64)
    np.savez(tmp_path / "wrong_shapes.npz", *arrays)
    out = tmp_path / "variants"
    result = run_tfmot_variants(DIGITS, trained["hparams"], tmp_path / "wrong_shapes.npz", trained["snapshot"], out)
    assert set(result) == {"pruned", "qat"}
    for kind, entry in result.items():
        assert entry["tflite"] is None and entry["saved_model"] is None, entry
        assert "array 4 has shape (64, 128), but weight 'hidden/kernel:0' has shape (128, 64)" in entry["error"]
        assert not (out / f"{kind}.tflite").exists()
        assert not (out / kind).exists()


def test_a_child_that_dies_without_a_result_reports_why_for_every_kind(tmp_path: Path) -> None:
    moved = dataclasses.replace(DIGITS, path=tmp_path / "digits.yaml")  # the child cannot read this config
    result = run_tfmot_variants(moved, {}, tmp_path, tmp_path, tmp_path / "out", kinds=["qat"])
    assert list(result) == ["qat"]
    assert "ended with 1 and no result" in result["qat"]["error"]
    assert "digits.yaml" in result["qat"]["error"]  # the child's own message, from its last output


def test_without_legacy_keras_every_kind_says_how_to_run_it(tmp_path: Path) -> None:
    result = make_variants(DIGITS, {}, tmp_path, tmp_path, tmp_path, ["pruned", "qat"], {})
    for entry in result.values():
        assert "TF_USE_LEGACY_KERAS=1" in entry["error"] and "run_tfmot_variants" in entry["error"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kinds": ["pruned", "int8"]}, "unknown TFMOT variant kinds ['int8']"),
        ({"kinds": []}, "unknown TFMOT variant kinds []"),
        ({"pruning": {"target_sparsity": 1.0}}, "pruning.target_sparsity must lie strictly between 0 and 1"),
        ({"qat": {"epochs": 0}}, "qat.epochs must be an integer >= 1"),
        ({"qat": {"epoch": 2}}, "unknown qat settings ['epoch']"),
    ],
)
def test_bad_kinds_and_settings_are_refused_before_any_work(
    kwargs: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        run_tfmot_variants(DIGITS, {}, tmp_path, tmp_path, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.lower().replace("_", "-")] = version
    return pins
