"""TF Serving's ``:classify`` and ``:regress``: tf.Example JSON in, ``{"results": ...}`` out.

A request is ``{"signature_name": ..., "context": {...}, "examples": [{...}, ...]}``.
Each example is an object of features; a feature is a value or a list of
values: JSON strings and ``{"b64": ...}`` objects become a bytes list,
integers and booleans an int64 list, numbers with a fraction or exponent a
float list (TF Serving's rules, ``json_tensor.cc``).  With a ``context``, each
example is the context merged with the example (TF Serving serializes the two
one after the other, so the example's features win).

The signature must be a classification (or regression) SignatureDef with one
string input ``inputs``; the serialized examples are fed to it as one batch.
Classification answers ``{"results": [[[label, score], ...], ...]}`` from the
``classes`` and/or ``scores`` outputs; regression answers
``{"results": [value, ...]}`` from ``outputs``.  Checks and error texts follow
TF Serving's ``classifier.cc`` and ``regressor.cc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from include.mlops.serving.json_tensor import (
    as_array,
    compact,
    debug_string,
    decode_b64,
    float_texts,
    is_b64_object,
    json_type,
    nest,
    to_json_value,
)
from include.mlops.serving.models import LoadedVersion, invalid
from include.mlops.serving.predict_json import parse_json_object, signature_name

if TYPE_CHECKING:
    import numpy as np

CLASSIFY = "classify"
REGRESS = "regress"
METHOD_NAMES = {CLASSIFY: "tensorflow/serving/classify", REGRESS: "tensorflow/serving/regress"}
INPUTS = "inputs"
CLASSES, SCORES, OUTPUTS = "classes", "scores", "outputs"
_INT64_MAX = 2**63 - 1
_FLOAT32_MAX = 3.4028234663852886e38


def parse_examples(body: bytes, method: str) -> tuple[str, list[bytes]]:
    """``(signature, serialized tf.Examples)`` from a classify/regress body; 400s in TF Serving's words."""
    doc = parse_json_object(body)
    signature = signature_name(doc)
    context = _example(doc["context"]).SerializeToString() if "context" in doc else b""
    examples = doc.get("examples")
    if "examples" not in doc:
        raise invalid(
            f"JSON Value: {debug_string(doc)} When method is {method}, key 'examples' is expected and was not found"
        )
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {debug_string(doc)} 'examples' value is an empty array")
    return signature, [context + _example(example).SerializeToString() for example in examples]


def _example(value: Any) -> Any:
    from tensorflow.core.example import example_pb2

    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        try:
            feature = example.features.feature[name]
        except (UnicodeError, ValueError):  # a name sent as raw bytes that are not UTF-8
            raise invalid(f"Feature name: {debug_string(name)} is not valid UTF-8") from None
        for item in content if isinstance(content, list) else [content]:
            _add_value(feature, name, item)
    return example


def _add_value(feature: Any, name: str, value: Any) -> None:
    if isinstance(value, bool):
        _kind(feature, name, "int64_list").value.append(int(value))
    elif isinstance(value, str):
        _kind(feature, name, "bytes_list").value.append(value.encode("utf-8", "surrogatepass"))
    elif is_b64_object(value):
        _kind(feature, name, "bytes_list").value.append(decode_b64(value))
    elif isinstance(value, float):
        if abs(value) > _FLOAT32_MAX and abs(value) != float("inf"):  # a float feature holds a float32
            raise invalid(f"Cannot convert JSON value: {debug_string(value)} to float without loss of precision.")
        _kind(feature, name, "float_list").value.append(value)
    elif isinstance(value, int):
        if value > _INT64_MAX:
            raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        if value < -_INT64_MAX - 1:
            raise invalid(f"Feature: {name} has element out of the int64 range: {value}")
        _kind(feature, name, "int64_list").value.append(value)
    else:
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")


_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _kind(feature: Any, name: str, kind: str) -> Any:
    """The feature's value list of ``kind``; a feature's values must all be of one kind."""
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise invalid(f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[current]}")
    return getattr(feature, kind)


def check_signature(loaded: LoadedVersion, signature: str, method: str) -> None:
    """TF Serving's checks of a classification/regression SignatureDef, before running it."""
    sig_map = loaded.signature_def_map.signature_def
    if signature not in sig_map or signature not in loaded.inputs:
        raise invalid(f"No signature was found with the name: {signature}")
    definition = sig_map[signature]
    wanted = METHOD_NAMES[method]
    kind = "classification" if method == CLASSIFY else "regression"
    if definition.method_name != wanted:
        raise invalid(f"Expected {kind} signature method_name to be {wanted}. Was: {definition.method_name}")
    if len(definition.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if INPUTS not in definition.inputs:
        raise invalid(f"No {kind} inputs found in SignatureDef: {signature}")
    if method == CLASSIFY and CLASSES not in definition.outputs and SCORES not in definition.outputs:
        raise invalid(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" or "{SCORES}".'
        )
    if method == REGRESS and OUTPUTS not in definition.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {signature}")


def _shape_text(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def classification_response(outputs: Mapping[str, Any], batch: int) -> bytes:
    """``{"results": [[[label, score], ...] per example]}`` from the ``classes``/``scores`` outputs."""
    classes = as_array(outputs[CLASSES]) if CLASSES in outputs else None
    scores = as_array(outputs[SCORES]) if SCORES in outputs else None
    for name, tensor, kinds, dtype_name in ((CLASSES, classes, "OSU", "DT_STRING"), (SCORES, scores, "f", "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(tensor)}")
        if tensor.dtype.kind not in kinds:
            raise invalid(f"Expected {name} Tensor of {dtype_name}. Got: {tensor.dtype.name}")
        if tensor.shape[0] != batch:
            raise invalid(f"Expected {name} output batch size of {batch}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    size = batch * width
    # A missing output is written as TF Serving writes the proto's defaults: "" and 0.0.
    labels = (
        ['""'] * size if classes is None else [compact(lab) for row in to_json_value(classes, CLASSES) for lab in row]
    )
    values = ["0.0"] * size if scores is None else float_texts(scores.astype("float32"))
    pairs = [f"[{label},{value}]" for label, value in zip(labels, values, strict=True)]
    return b'{"results":' + nest(pairs, (batch, width))[0].encode() + b"}"


def regression_response(outputs: Mapping[str, Any], batch: int) -> bytes:
    """``{"results": [value per example]}`` from the ``outputs`` output ([batch] or [batch, 1], float)."""
    values = as_array(outputs[OUTPUTS])
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape_text(values)}"
        )
    if values.dtype.kind != "f":
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype.name}")
    if values.shape[0] != batch:
        raise invalid(f"Input batch size did not match output batch size: {batch} vs. {values.shape[0]}")
    return b'{"results":[' + ",".join(float_texts(values.reshape(-1).astype("float32"))).encode() + b"]}"
