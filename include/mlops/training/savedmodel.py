"""The serving contract, and the model files that carry it: SavedModel and TFLite.

The SavedModel contract (what the registry and TF Serving load): a
``serving_default`` signature with one input ``inputs`` (float32,
``[None, n_features]``, raw feature values in config order) and one output
``outputs`` (float32, ``[None, 1]`` for regression, ``[None, num_classes]``
class probabilities for classification).  A ``.tflite`` file carries the same
signature.  TensorFlow and Keras are imported inside the functions so that
importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.config import ModelConfig
from include.mlops.training.errors import ModelingError

if TYPE_CHECKING:
    import keras
    import numpy as np

log = logging.getLogger(__name__)

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"
# Float32 softmax rows sum to 1 within ~1e-6; a looser bound still refuses logits.
PROBABILITY_TOLERANCE = 1e-3
# Real rows the train step runs the builder's fresh model on before fitting.
CONTRACT_CHECK_ROWS = 64


class OutputContractError(ModelingError):
    """A model's outputs break the serving contract (shape, or probabilities for classification)."""


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
