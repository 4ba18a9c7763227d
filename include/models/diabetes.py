"""Diabetes progression: the classic small regression network.

Dense(20, relu) -> Dense(1), with the training set's feature standardisation
in front and its label scale behind, so that the network works in unit
scale (Adam at 1e-3 converges in a few hundred epochs) while serving takes
raw features and returns predictions in the label's own units (~25..346).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from include.mlops.config import ModelConfig


def build(config: ModelConfig, hparams: Mapping[str, Any], stats: Mapping[str, Any]) -> tf.keras.Model:
    n_features = len(config.features)
    mean = np.asarray(stats["feature_mean"], dtype="float32")
    variance = np.square(np.asarray(stats["feature_std"], dtype="float32"))
    inputs = tf.keras.Input((n_features,), dtype="float32", name="inputs")
    x = tf.keras.layers.Normalization(mean=mean, variance=variance, name="standardize")(inputs)
    x = tf.keras.layers.Dense(int(hparams.get("units", 20)), activation="relu", name="hidden")(x)
    x = tf.keras.layers.Dense(1, name="scaled_prediction")(x)
    # Starting at the label mean spares the optimizer hundreds of epochs of drift.
    outputs = tf.keras.layers.Rescaling(
        scale=float(stats["label_std"]), offset=float(stats["label_mean"]), name="prediction"
    )(x)
    return tf.keras.Model(inputs, outputs, name=config.name)
