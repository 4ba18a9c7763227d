"""The tf_keras side of the TFMOT variants: runs only in the child that
:func:`include.mlops.optimize.tfmot_variants.run_tfmot_variants` starts with
``TF_USE_LEGACY_KERAS=1``, where ``tf.keras`` is tf_keras and the model's builder
builds tf_keras models that TensorFlow Model Optimization accepts.

TensorFlow and tfmot are imported inside the functions, so that the caller can
import this module (for :data:`KINDS` and the result shape) at no cost.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.config import ModelConfig
from include.mlops.training.datasets import Dataset, load_split, split_validation, training_stats
from include.mlops.training.modeling import build_model, set_seeds, training_objective
from include.mlops.training.savedmodel import (
    CONTRACT_CHECK_ROWS,
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE_KEY,
    check_outputs,
    convert_to_tflite,
    load_serving_fn,
    load_tflite_fn,
)

if TYPE_CHECKING:
    import tf_keras

log = logging.getLogger(__name__)

KINDS = ("pruned", "qat")
LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"
# Mask updates during a short fine-tuning: often enough to ramp the sparsity
# smoothly, rarely enough to leave the last steps to recover from the final cut.
_PRUNING_UPDATES = 10


class TfmotError(RuntimeError):
    """A variant cannot be made; the message says what was found and what to change."""


def failed(error: str) -> dict[str, Any]:
    """A kind's result entry when it could not be made."""
    return {"tflite": None, "saved_model": None, "sparsity": None, "error": error}


def load_weights_npz(model: tf_keras.Model, path: str | os.PathLike[str]) -> None:
    """Set ``np.savez(path, *keras3_model.get_weights())`` on the tf_keras build of the same builder.

    Both Keras list a model's weights layer by layer (a ``BatchNormalization``'s
    moving statistics beside its gamma and beta), so the arrays go in
    ``get_weights()`` order; counts and shapes are checked first, so that
    weights from another model or other hparams fail with a clear message.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise TfmotError(f"no weights file at {path}: expected the trial's weights.npz (np.savez of get_weights())")
    with np.load(path) as archive:
        if any(not (k.startswith("arr_") and k[4:].isdigit()) for k in archive.files):
            raise TfmotError(
                f"{path}: arrays must be saved positionally with np.savez(path, *weights), found {archive.files}"
            )
        arrays = [archive[k] for k in sorted(archive.files, key=lambda k: int(k[4:]))]
    variables = model.weights
    if len(arrays) != len(variables):
        raise TfmotError(
            f"{path} holds {len(arrays)} arrays, but model {model.name!r} built with these hparams has "
            f"{len(variables)} weights; the weights come from another model or other hparams"
        )
    for index, (array, variable) in enumerate(zip(arrays, variables, strict=True)):
        if tuple(array.shape) != tuple(variable.shape):
            raise TfmotError(
                f"{path}: array {index} has shape {tuple(array.shape)}, but weight {variable.name!r} has shape "
                f"{tuple(variable.shape)}; the weights come from another model or other hparams (e.g. units)"
            )
    model.set_weights(arrays)


def build_with_weights(
    config: ModelConfig, hparams: Mapping[str, Any], fit_data: Dataset, weights_uri: str | os.PathLike[str]
) -> tf_keras.Model:
    """The builder's model (tf_keras here) with the trained weights; the stats come from the same fit rows."""
    set_seeds(config.train.seed)
    model = build_model(config, hparams, training_stats(config, fit_data))
    load_weights_npz(model, weights_uri)
    return model


def _compile(model: tf_keras.Model, config: ModelConfig, hparams: Mapping[str, Any]) -> None:
    import tensorflow as tf

    # The train step's losses, so fine-tuning continues the same objective.
    loss, _ = training_objective(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=float(hparams["learning_rate"])), loss=loss)


def _fit_steps(rows: int, batch_size: int, epochs: int) -> int:
    return -(-rows // batch_size) * epochs


def make_pruned(
    model: tf_keras.Model,
    config: ModelConfig,
    hparams: Mapping[str, Any],
    fit_data: Dataset,
    settings: Mapping[str, Any],
) -> tuple[tf_keras.Model, float]:
    """Prune ``model`` to ``target_sparsity`` while fine-tuning; the stripped model and its sparsity."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    batch_size, epochs = int(hparams["batch_size"]), int(settings["epochs"])
    steps = _fit_steps(len(fit_data), batch_size, epochs)
    if steps < 2:
        raise TfmotError(f"pruning needs at least 2 training steps, got {steps}; raise pruning.epochs")
    # The schedule reaches the target at end_step, which must be a multiple of the update frequency.
    frequency = max(1, (steps - 1) // _PRUNING_UPDATES)
    end_step = (steps - 1) // frequency * frequency
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=float(settings["target_sparsity"]),
        begin_step=0,
        end_step=end_step,
        frequency=frequency,
    )
    pruned_names: list[str] = []

    def wrap(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        # Layers without weights (Reshape, Normalization with fixed stats, ...) have nothing to prune.
        if PruneRegistry.supports(layer) and layer.trainable_weights:
            pruned_names.append(layer.name)
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # clone_model hands the clone function the trained layers themselves, so the weights carry over.
    wrapped = tf.keras.models.clone_model(model, clone_function=wrap)
    if not pruned_names:
        raise TfmotError(f"model {config.name!r} has no layer that tfmot can prune (Dense, Conv, ...)")
    _compile(wrapped, config, hparams)
    log.info("pruned: %s to sparsity %s over %d steps", pruned_names, settings["target_sparsity"], steps)
    wrapped.fit(
        fit_data.features,
        fit_data.labels,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    kernels = [
        w.numpy() for layer in stripped.layers if layer.name in pruned_names for w in layer.get_prunable_weights()
    ]
    sparsity = float(sum(int(np.count_nonzero(k == 0)) for k in kernels) / sum(k.size for k in kernels))
    return stripped, sparsity


def make_qat(
    model: tf_keras.Model,
    config: ModelConfig,
    hparams: Mapping[str, Any],
    fit_data: Dataset,
    settings: Mapping[str, Any],
) -> tuple[tf_keras.Model, None]:
    """Quantization-aware-train every layer the default 8-bit scheme supports; the QAT model."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    quantize = tfmot.quantization.keras
    registry = quantize.default_8bit.Default8BitQuantizeRegistry()
    annotated_names: list[str] = []

    # The output layers stay float: an 8-bit softmax output sums to 1 only within ~1% (the
    # probability contract allows 1e-3), and an 8-bit regression output has just 256 levels.
    output_names = set(model.output_names)

    def annotate(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        # quantize_model() refuses a whole model with one unsupported layer (e.g. Normalization);
        # annotating the supported ones keeps the rest in float.
        if registry.supports(layer) and layer.name not in output_names:
            annotated_names.append(layer.name)
            return quantize.quantize_annotate_layer(layer)
        return layer

    annotated = tf.keras.models.clone_model(model, clone_function=annotate)
    if not any(model.get_layer(name).trainable_weights for name in annotated_names):
        raise TfmotError(f"model {config.name!r} has no layer with weights that tfmot can quantize (Dense, Conv, ...)")
    with quantize.quantize_scope():
        qat_model = quantize.quantize_apply(annotated)
    _compile(qat_model, config, hparams)
    log.info("qat: quantizing %s for %d epoch(s)", annotated_names, settings["epochs"])
    qat_model.fit(
        fit_data.features,
        fit_data.labels,
        batch_size=int(hparams["batch_size"]),
        epochs=int(settings["epochs"]),
        shuffle=True,
        verbose=0,
    )
    return qat_model, None


def export_legacy_saved_model(model: tf_keras.Model, path: Path, n_features: int) -> Path:
    """A tf_keras model as a SavedModel with the serving contract's signature.

    (:func:`include.mlops.training.savedmodel.export_saved_model` uses Keras 3's ExportArchive,
    which does not take tf_keras models.)
    """
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32, name=INPUT_NAME)])
    def serve(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: tf.cast(model(inputs, training=False), tf.float32)}

    tf.saved_model.save(model, str(path), signatures={SIGNATURE_KEY: serve})
    return path


_MAKERS: dict[str, Callable[..., tuple[Any, float | None]]] = {"pruned": make_pruned, "qat": make_qat}


def make_variant(
    kind: str,
    config: ModelConfig,
    hparams: Mapping[str, Any],
    fit_data: Dataset,
    weights_uri: str | os.PathLike[str],
    out: Path,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """One kind, end to end: build, load weights, optimize, export, convert, check the answers."""
    saved_model, tflite = out / kind / "saved_model", out / f"{kind}.tflite"
    shutil.rmtree(out / kind, ignore_errors=True)
    tflite.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        model = build_with_weights(config, hparams, fit_data, weights_uri)
        optimized, sparsity = _MAKERS[kind](model, config, hparams, fit_data, settings)
        n_features = len(config.features)
        export_legacy_saved_model(optimized, saved_model, n_features)
        convert_to_tflite(saved_model, tflite)
        rows = fit_data.features[:CONTRACT_CHECK_ROWS]
        check_outputs(config, load_serving_fn(saved_model, n_features)(rows), source=f"{kind} SavedModel")
        check_outputs(config, load_tflite_fn(tflite)(rows), source=f"{kind} TFLite")
    except Exception as exc:
        log.exception("%s: failed", kind)
        shutil.rmtree(out / kind, ignore_errors=True)
        tflite.unlink(missing_ok=True)
        return failed(f"{kind}: {type(exc).__name__}: {exc}")
    log.info(
        "%s: wrote %s (%.1f KB, sparsity %s) in %.1fs",
        kind,
        tflite,
        tflite.stat().st_size / 1024,
        sparsity,
        time.perf_counter() - started,
    )
    return {"tflite": str(tflite), "saved_model": str(saved_model), "sparsity": sparsity, "error": None}


def make_variants(
    config: ModelConfig,
    hparams: Mapping[str, Any],
    weights_uri: str | os.PathLike[str],
    data_uri: str | os.PathLike[str],
    out: Path,
    kinds: Sequence[str],
    settings: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Every kind in this (tf_keras) process; a kind that fails carries its error."""
    import tensorflow as tf

    if not tf.keras.Model.__module__.startswith("tf_keras"):
        error = (
            f"tf.keras is {tf.keras.Model.__module__}, not tf_keras: tfmot needs {LEGACY_KERAS_ENV}=1 set before "
            "TensorFlow is imported; call run_tfmot_variants(), which starts this process with it"
        )
        return {kind: failed(error) for kind in kinds}
    try:
        fit_data, _ = split_validation(load_split(config, data_uri, "train"), config.train.validation_fraction)
    except Exception as exc:
        return {kind: failed(f"{kind}: {type(exc).__name__}: {exc}") for kind in kinds}
    return {kind: make_variant(kind, config, hparams, fit_data, weights_uri, out, settings[kind]) for kind in kinds}
