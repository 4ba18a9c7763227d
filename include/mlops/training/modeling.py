"""Shared pieces of the train, evaluate and optimize steps.

Loading a snapshot into arrays, importing a model's builder, seeding,
exporting and loading the serving SavedModel, and TFLite conversion and
inference.  TensorFlow, Keras and pandas are imported inside the functions
so that importing this module stays cheap.

The SavedModel contract (what the registry and TF Serving load): a
``serving_default`` signature with one input ``inputs`` (float32,
``[None, n_features]``, raw feature values in config order) and one output
``outputs`` (float32, ``[None, 1]`` for regression, ``[None, num_classes]``
class probabilities for classification).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from include.mlops.config import DEFAULT_MODELS_DIR, ModelConfig
from include.mlops.data.sources import DATA_FILE, SPLIT_COLUMN, row_hashes, snapshot_path

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"
HPARAM_KEYS = ("epochs", "batch_size", "learning_rate", "patience")
# Salts the row hash, so the validation rows are independent of the test split.
_VALIDATION_SALT = "validation"
# Float32 softmax rows sum to 1 within ~1e-6; a looser bound still refuses logits.
PROBABILITY_TOLERANCE = 1e-3
# Real rows the train step runs the builder's fresh model on before fitting.
CONTRACT_CHECK_ROWS = 64


class ModelingError(ValueError):
    """The data, the builder or a model does not fit what the step needs.

    The message says what was found and what to change.
    """


class OutputContractError(ModelingError):
    """A model's outputs break the serving contract (shape, or probabilities for classification)."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    """Feature matrix and labels of one split of a snapshot."""

    features: np.ndarray  # float32 [rows, n_features], raw values in config order
    labels: np.ndarray  # float32 [rows] (regression) or int64 [rows] (classification)
    row_ids: np.ndarray  # int64 positions of the rows in data.parquet

    def __len__(self) -> int:
        return int(self.features.shape[0])


def snapshot_file(data_uri: str | os.PathLike[str]) -> Path:
    """The parquet file of a snapshot: ``data_uri`` itself or ``<data_uri>/data.parquet``."""
    path = snapshot_path(data_uri)
    if not path.is_file():
        raise ModelingError(
            f"no snapshot at {data_uri}: expected a snapshot folder holding {DATA_FILE} "
            "(the output of the snapshot step) or the parquet file itself"
        )
    return path


def read_snapshot(config: ModelConfig, data_uri: str | os.PathLike[str]) -> pd.DataFrame:
    """The snapshot's rows, checked against the config's columns."""
    import pandas as pd

    path = snapshot_file(data_uri)
    frame = pd.read_parquet(path)
    wanted = [*config.features, config.label, SPLIT_COLUMN]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ModelingError(
            f"{path}: columns {missing} are missing; model {config.name!r} needs its features, "
            f"label {config.label!r} and {SPLIT_COLUMN!r} (found: {list(frame.columns)[:12]}...). "
            f"Check the features in {config.path.name} or re-run the snapshot step."
        )
    return frame.reset_index(drop=True)


def load_split(config: ModelConfig, data_uri: str | os.PathLike[str], split: str) -> Dataset:
    """Rows of one split (``train`` or ``test``) as arrays ready for Keras."""
    import numpy as np

    frame = read_snapshot(config, data_uri)
    rows = frame[frame[SPLIT_COLUMN] == split]
    if rows.empty:
        counts = frame[SPLIT_COLUMN].value_counts().to_dict()
        raise ModelingError(
            f"snapshot {data_uri} has no rows with {SPLIT_COLUMN} == {split!r} (split counts: {counts}); "
            "the snapshot needs more rows or a different test_fraction"
        )
    features = rows[list(config.features)].to_numpy(dtype="float32")
    if not np.isfinite(features).all():
        bad = [c for c in config.features if not np.isfinite(rows[c].to_numpy(dtype="float64")).all()]
        raise ModelingError(
            f"snapshot {data_uri}: feature columns {bad} hold NaN or infinite values; validate the data first"
        )
    label_values = rows[config.label]
    if label_values.isna().any():
        raise ModelingError(f"snapshot {data_uri}: label column {config.label!r} has missing values")
    if config.task == "classification":
        labels = label_values.to_numpy(dtype="int64")
        out_of_range = labels[(labels < 0) | (labels >= (config.num_classes or 0))]
        if out_of_range.size:
            raise ModelingError(
                f"snapshot {data_uri}: labels {sorted(set(out_of_range.tolist()))[:5]} are outside "
                f"0..{(config.num_classes or 0) - 1}; fix num_classes in {config.path.name}"
            )
    else:
        labels = label_values.to_numpy(dtype="float32")
    return Dataset(features=features, labels=labels, row_ids=rows.index.to_numpy(dtype="int64"))


def split_validation(data: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """Carve a validation set out of the training rows, deterministically per row.

    A row's place is decided by a hash of its values, so a row stays on the
    same side as the snapshot grows day by day.
    """
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(data.features.astype("float64"))
    frame["label"] = data.labels.astype("float64")
    hashes = row_hashes(frame, list(frame.columns), salt=_VALIDATION_SALT)
    is_val = (hashes % np.uint64(1_000_000)).astype("float64") / 1_000_000 < fraction
    if is_val.all() or not is_val.any():
        # Tiny data can hash all to one side; fall back to taking the last rows.
        count = min(max(1, round(len(data) * fraction)), len(data) - 1)
        is_val = np.zeros(len(data), dtype=bool)
        if count > 0:
            is_val[-count:] = True
    if is_val.all() or not is_val.any():
        raise ModelingError(f"only {len(data)} training row(s): need at least 2 to hold out a validation set")

    def pick(mask: np.ndarray) -> Dataset:
        return Dataset(data.features[mask], data.labels[mask], data.row_ids[mask])

    return pick(~is_val), pick(is_val)


def training_stats(config: ModelConfig, data: Dataset) -> dict[str, Any]:
    """Statistics a builder may bake into the model so that serving takes raw values."""
    import numpy as np

    mean = data.features.astype("float64").mean(axis=0)
    std = data.features.astype("float64").std(axis=0)
    # A constant feature (e.g. a blank pixel) would divide by zero.
    std = np.where(std < 1e-8, 1.0, std)
    stats: dict[str, Any] = {
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
        "n_features": len(config.features),
        "rows": len(data),
    }
    if config.task == "regression":
        labels = data.labels.astype("float64")
        stats["label_mean"] = float(labels.mean())
        stats["label_std"] = float(labels.std()) if labels.std() > 1e-8 else 1.0
    else:
        counts = np.bincount(data.labels, minlength=config.num_classes or 0)
        stats["class_counts"] = counts.tolist()
    return stats


# --------------------------------------------------------------------------- hyperparameters


def resolve_hparams(config: ModelConfig, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config's training hyperparameters with ``overrides`` applied.

    ``None`` values are ignored (an unset field of the Airflow trigger form).
    """
    hparams: dict[str, Any] = {key: getattr(config.train, key) for key in HPARAM_KEYS}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in HPARAM_KEYS:
            raise ModelingError(f"unknown training override {key!r} (allowed: {', '.join(HPARAM_KEYS)})")
        kind = float if key == "learning_rate" else int
        try:
            if isinstance(value, bool):
                raise TypeError
            converted = kind(value)
            if kind is int and converted != float(value):
                raise ValueError
        except (TypeError, ValueError):
            raise ModelingError(f"training override {key}={value!r} is not a valid {kind.__name__}") from None
        if converted <= 0:
            raise ModelingError(f"training override {key}={value!r} must be > 0")
        hparams[key] = converted
    return hparams


# --------------------------------------------------------------------------- builders and seeds


def import_builder(config: ModelConfig) -> ModuleType:
    """The module that builds ``config``'s Keras model.

    Builders beside the bundled configs are imported as
    ``include.models.<builder>``; builders in another ``$MLOPS_MODELS_DIR``
    are imported from their file.
    """
    path = config.builder_path
    if not path.is_file():
        raise ModelingError(f"model {config.name!r}: builder module {path} does not exist")
    if path.resolve().parent == DEFAULT_MODELS_DIR.resolve():
        module = importlib.import_module(f"include.models.{config.builder}")
    else:
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        module_name = f"mlops_builder_{config.builder}_{digest}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ModelingError(f"model {config.name!r}: cannot import builder module {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
    if not callable(getattr(module, "build", None)):
        raise ModelingError(f"model {config.name!r}: builder module {path} has no callable 'build'")
    return module


def training_objective(config: ModelConfig) -> tuple[str, list[str]]:
    """The Keras loss and metrics a model of the config's task trains with (train, tuning, TFMOT fine-tuning)."""
    if config.task == "regression":
        return "mse", ["mae"]
    return "sparse_categorical_crossentropy", ["accuracy"]


def build_model(config: ModelConfig, hparams: Mapping[str, Any], stats: Mapping[str, Any]) -> keras.Model:
    """Call the builder and check that its model takes the config's features.

    Builders use ``tf.keras``: Keras 3 in every step, tf_keras in the compression
    step's TFMOT process (``TF_USE_LEGACY_KERAS=1``), from the same code.  What
    the model outputs is checked on real rows by :func:`check_outputs`.
    """
    import tensorflow as tf

    model = import_builder(config).build(config, hparams, stats)
    if not isinstance(model, tf.keras.Model):
        running_keras = tf.keras.Model.__module__.split(".")[0]
        kind = "a Keras 3 model" if type(model).__module__.startswith("keras") else type(model).__name__
        raise ModelingError(
            f"builder {config.builder_path.name}: build() returned {kind}, not a {running_keras} "
            "model; build it with tf.keras (import tensorflow as tf; tf.keras.Input, tf.keras.layers, "
            "tf.keras.Model), not 'import keras', so that the same builder serves Keras 3 and tf_keras"
        )
    n_features = len(config.features)
    got_in = tuple(model.inputs[0].shape) if model.inputs else None
    if got_in != (None, n_features):
        raise ModelingError(
            f"builder {config.builder_path.name}: model takes {got_in}, but model {config.name!r} has "
            f"{n_features} features; start it with tf.keras.Input(({n_features},))"
        )
    return model


def check_outputs(config: ModelConfig, outputs: Any, *, source: str) -> np.ndarray:
    """The output contract, checked on a model's answers for real rows; returns them as an array.

    Regression: ``[rows, 1]``.  Classification: ``[rows, num_classes]`` class
    probabilities (each in [0, 1], each row summing to 1), because the metrics,
    the gate and the served answers all read them as probabilities.  Every step
    that runs a model (train on the builder's fresh model, evaluate, register)
    calls this one check, so they agree on what a valid model is.
    """
    import numpy as np

    values = np.asarray(outputs, dtype="float64")
    want = 1 if config.task == "regression" else config.num_classes
    fix = (
        "end the model with a single-unit Dense layer"
        if config.task == "regression"
        else f"end the model with tf.keras.layers.Dense({want}, activation='softmax')"
    )
    if values.ndim != 2 or values.shape[1] != want:
        raise OutputContractError(
            f"{source}: outputs have shape {values.shape}, but a {config.task} model of {config.name!r} "
            f"must return [rows, {want}]; {fix}"
        )
    if not np.isfinite(values).all():
        raise OutputContractError(f"{source}: outputs hold NaN or infinite values on real rows")
    if config.task == "classification":
        sums = values.sum(axis=1)
        bad = (values < -PROBABILITY_TOLERANCE).any(axis=1) | (values > 1 + PROBABILITY_TOLERANCE).any(axis=1)
        bad |= np.abs(sums - 1.0) > PROBABILITY_TOLERANCE
        if bad.any():
            row = int(np.argmax(bad))
            shown = ", ".join(f"{v:.3g}" for v in values[row][:6]) + (", ..." if values.shape[1] > 6 else "")
            raise OutputContractError(
                f"{source}: a classification model must output class probabilities (each in [0, 1], "
                f"each row summing to 1), but {int(bad.sum())} of {len(values)} rows are not, e.g. "
                f"[{shown}] (sum {sums[row]:.3g}); {fix}"
            )
    return values


def set_seeds(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; make TF ops deterministic when asked.

    Op determinism costs little on CPU for these small models, and without
    it two runs of the same data may differ in the last digits.
    """
    import tensorflow as tf

    # tf.keras: whichever Keras this process runs (Keras 3, or tf_keras under TF_USE_LEGACY_KERAS=1).
    tf.keras.utils.set_random_seed(seed)
    if deterministic:
        try:
            tf.config.experimental.enable_op_determinism()
        except Exception as exc:  # some builds lack it; training still works
            log.warning("op determinism unavailable (%s); results may vary in the last digits", exc)


# --------------------------------------------------------------------------- SavedModel


def export_saved_model(model: keras.Model, path: str | os.PathLike[str], n_features: int) -> Path:
    """Write ``model`` as a SavedModel with the contract's ``serving_default`` signature."""
    import keras
    import tensorflow as tf

    path = Path(path)
    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32, name=INPUT_NAME)])
    def serve(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: tf.cast(model(inputs, training=False), tf.float32)}

    archive.add_endpoint(name=SIGNATURE_KEY, fn=serve)
    archive.write_out(str(path), verbose=False)
    return path


def load_serving_fn(path: str | os.PathLike[str], n_features: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The ``serving_default`` signature of a SavedModel as ``features -> outputs``.

    Checks the contract (input ``inputs`` float32 ``[None, n]``, output
    ``outputs``) so that a model built elsewhere fails here with a clear message.
    """
    import numpy as np
    import tensorflow as tf

    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise ModelingError(f"{path} is not a SavedModel folder (no saved_model.pb)")
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE_KEY not in loaded.signatures:
        raise ModelingError(f"SavedModel {path} has no {SIGNATURE_KEY!r} signature (has: {list(loaded.signatures)})")
    signature = loaded.signatures[SIGNATURE_KEY]
    _, kwargs = signature.structured_input_signature
    spec = kwargs.get(INPUT_NAME)
    if len(kwargs) != 1 or spec is None or spec.dtype != tf.float32:
        raise ModelingError(
            f"SavedModel {path}: {SIGNATURE_KEY} must take one float32 input {INPUT_NAME!r}, takes {kwargs}"
        )
    if n_features is not None and spec.shape.as_list() != [None, n_features]:
        raise ModelingError(f"SavedModel {path}: input shape {spec.shape} does not match [None, {n_features}]")
    if OUTPUT_NAME not in signature.structured_outputs:
        raise ModelingError(f"SavedModel {path}: {SIGNATURE_KEY} has no output {OUTPUT_NAME!r}")

    def predict(features: np.ndarray) -> np.ndarray:
        result = signature(**{INPUT_NAME: tf.constant(np.asarray(features, dtype="float32"))})
        return result[OUTPUT_NAME].numpy()

    # Keep the loaded object alive as long as the function is used.
    predict.loaded = loaded  # type: ignore[attr-defined]
    return predict


# --------------------------------------------------------------------------- TFLite


def convert_to_tflite(saved_model_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Dynamic-range quantize a SavedModel into a ``.tflite`` file.

    Weights are stored as int8 and activations stay float, which needs no
    representative dataset and keeps accuracy close to the float model.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE_KEY])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    started = time.perf_counter()
    flatbuffer = converter.convert()
    path = Path(path)
    path.write_bytes(flatbuffer)
    log.info("TFLite: wrote %s (%.1f KB) in %.1fs", path.name, len(flatbuffer) / 1024, time.perf_counter() - started)
    return path


def load_tflite_fn(path: str | os.PathLike[str]) -> Callable[[np.ndarray], np.ndarray]:
    """The ``serving_default`` signature of a ``.tflite`` file as ``features -> outputs``."""
    import numpy as np
    import tensorflow as tf

    path = Path(path)
    if not path.is_file():
        raise ModelingError(f"no TFLite model at {path}")
    try:
        # LiteRT is tf.lite.Interpreter's successor; use it where it is installed.
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns of its deprecation on every construction.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    if SIGNATURE_KEY not in signatures:
        raise ModelingError(f"TFLite model {path} has no {SIGNATURE_KEY!r} signature (has: {list(signatures)})")
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)

    def predict(features: np.ndarray) -> np.ndarray:
        # The runner resizes its input to the batch it gets; outputs are copies.
        return runner(**{INPUT_NAME: np.asarray(features, dtype="float32")})[OUTPUT_NAME]

    predict.interpreter = interpreter  # type: ignore[attr-defined]
    return predict
