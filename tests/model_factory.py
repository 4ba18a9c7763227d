"""Tiny real SavedModels for tests: the one factory every test tier uses.

Each model honours the project's serving contract (``serving_default``: float32
``inputs [None, n_features]`` -> ``outputs [None, n_outputs]``) unless the names
are changed on purpose to break it.
"""

from __future__ import annotations

from pathlib import Path


def make_saved_model(
    path: Path,
    n_features: int,
    n_outputs: int = 1,
    *,
    seed: int | None = None,
    scale: float | None = None,
    input_name: str = "inputs",
    output_name: str = "outputs",
) -> Path:
    """A linear SavedModel at ``path``: ``x @ W``.

    ``scale`` gives ``W`` filled with that value, so the answer is known
    (``sum(x) * scale`` per output); ``seed`` gives random weights, so two seeds
    make two different models.
    """
    import tensorflow as tf

    if (seed is None) == (scale is None):
        raise ValueError("pass exactly one of seed (random weights) or scale (known answers)")
    shape = (n_features, n_outputs)
    if scale is not None:
        weights = tf.fill(shape, tf.constant(scale, tf.float32))
    else:
        weights = tf.random.stateless_normal(shape, seed=[seed, 0])

    class Linear(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weights)

        @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32, name=input_name)])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {output_name: tf.matmul(x, self.w)}

    module = Linear()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path
