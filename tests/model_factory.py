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


def make_misbehaving_model(path: Path, n_features: int, *, fault: str, threshold: float = 0.0, work: int = 0) -> Path:
    """``sum(x)`` per row, like ``make_saved_model(scale=1.0)``, except where ``fault`` says.

    - ``"nan"``: rows whose first feature is above ``threshold`` answer NaN;
    - ``"error"``: a request with such a row fails (TensorFlow's InvalidArgument, an error status on the server);
    - ``"slow"``: every request also runs ``work`` chained 256 x 256 matrix products first.

    Rows at or below ``threshold`` answer like the linear model, so a deploy's smoke check on such rows passes
    and only the traffic shows the fault, as in production.
    """
    import tensorflow as tf

    class Misbehaving(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32, name="inputs")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            y = tf.reduce_sum(x, axis=1, keepdims=True)
            above = x[:, :1] > threshold
            if fault == "nan":
                y = tf.where(above, tf.fill(tf.shape(y), float("nan")), y)
            elif fault == "error":
                with tf.control_dependencies([tf.debugging.assert_equal(tf.reduce_any(above), False)]):
                    y = tf.identity(y)
            elif fault == "slow":
                m = tf.eye(256) * 0.5 + 0.001

                def body(i: tf.Tensor, acc: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                    return i + 1, tf.matmul(acc, m)

                _, acc = tf.while_loop(lambda i, _: i < work, body, (tf.constant(0), tf.eye(256)))
                y = y + 0.0 * tf.reduce_sum(acc[:1, :1])
            else:
                raise ValueError(f"unknown fault {fault!r}: nan, error or slow")
            return {"outputs": y}

    module = Misbehaving()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path
