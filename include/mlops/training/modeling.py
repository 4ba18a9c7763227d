"""The model a config describes: its builder, its hyperparameters, its training objective and seeds.

Keras and TensorFlow are imported inside the functions so that importing this
module stays cheap.  What train, evaluate and optimize share besides lives
beside it: :mod:`include.mlops.training.datasets` (a snapshot as arrays) and
:mod:`include.mlops.training.savedmodel` (the serving contract, SavedModel
export and loading, TFLite).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from include.mlops.config import DEFAULT_MODELS_DIR, ModelConfig
from include.mlops.training.datasets import Dataset, load_split
from include.mlops.training.errors import ModelingError
from include.mlops.training.savedmodel import check_outputs, load_serving_fn, load_tflite_fn

if TYPE_CHECKING:
    import keras

# Dataset, load_split (datasets), check_outputs, load_serving_fn, load_tflite_fn (savedmodel) and
# ModelingError (errors) live beside this module and are importable from here as well.
__all__ = [
    "HPARAM_KEYS",
    "Dataset",
    "ModelingError",
    "build_model",
    "check_outputs",
    "import_builder",
    "load_serving_fn",
    "load_split",
    "load_tflite_fn",
    "resolve_hparams",
    "set_seeds",
    "training_objective",
]

log = logging.getLogger(__name__)

HPARAM_KEYS = ("epochs", "batch_size", "learning_rate", "patience")


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
    the model outputs is checked on real rows by
    :func:`include.mlops.training.savedmodel.check_outputs`.
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
