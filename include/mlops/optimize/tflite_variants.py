"""Making and measuring TFLite variants: TensorFlow's converter, int8 calibration, latency and size.

The compress step (:mod:`include.mlops.optimize.compress`) decides what to
keep; this module only converts and measures, the same way for every variant
and for the float references, so their figures compare within one run.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.config import ModelConfig
from include.mlops.evaluation.evaluate import BYTES_PER_MB, batch_latency_ms, measure_latency_ms, task_metrics
from include.mlops.optimize.compress_config import CONVERTER_VARIANTS
from include.mlops.training.datasets import Dataset
from include.mlops.training.savedmodel import SIGNATURE_KEY, check_outputs

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

FLOAT32_TFLITE = "float32"  # the plain conversion every size_ratio is taken against
LATENCY_BATCH = 32

# --------------------------------------------------------------------------- conversion


def strip_tensor_names(flatbuffer: bytes) -> bytes:
    """Drop the tensor and subgraph names (debug strings) from a .tflite, keeping its signatures.

    TensorFlow's ``flatbuffer_utils.strip_strings`` would also drop the
    signature that the server and deploy call the model through, so only the
    names are cleared here.  On a model as small as digits' the names are
    several percent of the file.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    model.description = None
    for subgraph in model.subgraphs:
        subgraph.name = None
        for tensor in subgraph.tensors:
            tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert_variant(
    saved_model: str | os.PathLike[str], kind: str, path: str | os.PathLike[str], calibration: np.ndarray | None = None
) -> Path:
    """Convert a SavedModel into the ``.tflite`` variant ``kind`` (float32, dynamic, float16 or int8).

    ``int8`` quantizes weights and activations with ranges calibrated on
    ``calibration`` rows; inputs and outputs stay float32 (the serving
    contract), and a final softmax runs in float so that the outputs are
    still probabilities that sum to 1 (an int8 softmax is off by up to 1/256
    per class).  Weights get one scale per tensor: per-channel tables are
    about a fifth of an int8 file this small, for no accuracy gain the
    variants table shows on digits.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE_KEY])
    if kind != FLOAT32_TFLITE:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    started = time.perf_counter()
    if kind == "int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("the int8 variant needs calibration rows")
        rows = calibration.astype("float32")

        def representative() -> Any:
            return ([row[None, :]] for row in rows)

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # The converter has no public switch for this; a TensorFlow without the attribute keeps per-channel.
        if hasattr(converter, "_experimental_disable_per_channel"):
            converter._experimental_disable_per_channel = True
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=representative,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=["SOFTMAX"]),
        )
        flatbuffer = debugger.get_nondebug_quantized_model()
    elif kind in (FLOAT32_TFLITE, "dynamic", "float16"):
        flatbuffer = converter.convert()
    else:
        raise ValueError(f"unknown converter variant {kind!r} (known: {FLOAT32_TFLITE}, {CONVERTER_VARIANTS})")
    path = Path(path)
    path.write_bytes(strip_tensor_names(flatbuffer))
    log.info(
        "compress: %s -> %s (%.1f KB) in %.1fs",
        kind,
        path.name,
        path.stat().st_size / 1024,
        time.perf_counter() - started,
    )
    return path


def calibration_rows(config: ModelConfig, fit: Dataset) -> tuple[np.ndarray | None, str | None]:
    """``representative_rows`` training rows (a seeded sample) for int8, or the reason there are too few."""
    import numpy as np

    wanted = config.optimize.compress.representative_rows
    if len(fit) < wanted:
        return None, (
            f"skipped: int8 calibration needs {wanted} representative rows, the snapshot's training rows give "
            f"{len(fit)}; lower optimize.compress.representative_rows or wait for more data"
        )
    picked = np.random.default_rng(config.train.seed).choice(len(fit), size=wanted, replace=False)
    return fit.features[np.sort(picked)], None


# --------------------------------------------------------------------------- measurement


def measure(
    config: ModelConfig, predict: Callable[[np.ndarray], np.ndarray], val: Dataset, size_bytes: int, rounds: int = 1
) -> dict[str, Any]:
    """Task metrics on the validation rows, size, and single-row / batch-32 latency (median of ``rounds``)."""
    import numpy as np

    outputs = check_outputs(config, np.asarray(predict(val.features)), source="the variant")
    batch = np.resize(val.features, (LATENCY_BATCH, val.features.shape[1]))
    return {
        "metrics": task_metrics(config, val.labels, outputs),
        "size_bytes": size_bytes,
        "size_mb": size_bytes / BYTES_PER_MB,
        "latency_1_ms": statistics.median(measure_latency_ms(predict, val.features[0]) for _ in range(rounds)),
        "latency_32_ms": statistics.median(batch_latency_ms(predict, batch) for _ in range(rounds)),
    }
