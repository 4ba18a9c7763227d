"""Handwritten digits: a small CNN over the 8x8 images.

The model takes the flat 64-pixel vector the serving contract defines and
reshapes it inside, so TF Serving clients send plain rows.  Pixels of
scikit-learn's digits range over 0..16.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from include.mlops.config import ModelConfig

PIXEL_MAX = 16.0


def build(config: ModelConfig, hparams: Mapping[str, Any], stats: Mapping[str, Any]) -> tf.keras.Model:
    n_features = len(config.features)
    shape = tuple(config.input_shape or (8, 8, 1))
    inputs = tf.keras.Input((n_features,), dtype="float32", name="inputs")
    x = tf.keras.layers.Reshape(shape, name="image")(inputs)
    x = tf.keras.layers.Rescaling(1.0 / PIXEL_MAX, name="unit_range")(x)
    x = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = tf.keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = tf.keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    x = tf.keras.layers.Dense(64, activation="relu", name="hidden")(x)
    x = tf.keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = tf.keras.layers.Dense(config.num_classes, activation="softmax", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name=config.name)
