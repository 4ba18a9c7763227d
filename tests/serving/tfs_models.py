"""The SavedModels TF Serving's own REST tests serve, rebuilt here with real TensorFlow.

* :func:`make_half_plus_two_tf1`: ``y = 0.5 * x + 2`` as a TF1 graph (``tf.compat.v1``), the layout of
  TF Serving's ``saved_model_half_plus_two``: a predict signature on ``x`` (declared ``[-1, 1]``) and
  classification and regression signatures on serialized ``tf.Example`` input (unknown rank).
* :func:`make_half_plus_two_tf2`: the same function saved from a ``tf.Module`` (TF2 form).
* :func:`make_echo_model`: one signature ``echo_<dtype>`` per dtype that returns its input ``x`` as ``y``
  (unknown shape), plus signatures whose outputs JSON cannot carry in TF Serving's row format.
"""

from __future__ import annotations

from pathlib import Path

ECHO_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
)
LABELS = ("low", "high")


def make_half_plus_two_tf1(path: Path) -> Path:
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(2.0, name="b")
        x = v1.placeholder(tf.float32, [None, 1], name="x")
        y = tf.add(a * x, b, name="y")
        serialized = v1.placeholder(tf.string, name="tf_example")  # unknown rank, as TF Serving's model has it
        parsed = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([1], tf.float32)})
        y_example = tf.add(a * parsed["x"], b)
        batch = tf.shape(y_example)[0]
        classes = tf.tile(tf.constant([list(LABELS)]), [batch, 1])
        scores = tf.concat([-y_example, y_example], axis=1)
        utils = v1.saved_model.signature_def_utils
        signatures = {
            "serving_default": utils.predict_signature_def({"x": x}, {"y": y}),
            "classify_x_to_y": utils.classification_signature_def(serialized, None, y_example),
            "classify_labels": utils.classification_signature_def(serialized, classes, scores),
            "regress_x_to_y": utils.regression_signature_def(serialized, y_example),
        }
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()
    return path


def make_half_plus_two_tf2(path: Path) -> Path:
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": self.a * x + self.b}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def make_echo_model(path: Path) -> Path:
    import tensorflow as tf

    v1 = tf.compat.v1
    predict = v1.saved_model.signature_def_utils.predict_signature_def
    graph = tf.Graph()
    signatures = {}
    with graph.as_default():
        for dtype in ECHO_DTYPES:
            x = v1.placeholder(tf.as_dtype(dtype), None, name=f"x_{dtype}")
            signatures[f"echo_{dtype}"] = predict({"x": x}, {"y": tf.identity(x)})
        raw = v1.placeholder(tf.string, None, name="raw")
        signatures["echo_bytes"] = predict({"x": raw}, {"y_bytes": tf.identity(raw)})
        named_a = v1.placeholder(tf.int32, None, name="named_a")
        named_s = v1.placeholder(tf.string, None, name="named_s")
        signatures["echo_named"] = predict(
            {"a": named_a, "s": named_s}, {"a": tf.identity(named_a), "s": tf.identity(named_s)}
        )
        f = v1.placeholder(tf.float32, None, name="f")
        signatures["uneven_batch"] = predict({"x": f}, {"one": tf.identity(f), "two": tf.concat([f, f], 0)})
        signatures["scalar_out"] = predict({"x": f}, {"total": tf.reduce_sum(f)})
        signatures["complex_out"] = predict({"x": f}, {"z": tf.complex(f, f)})
        signatures["rows_of_three"] = predict({"x": f}, {"y": tf.reshape(f, [-1, 3])})
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()
    return path
