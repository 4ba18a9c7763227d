"""TF Serving's predict JSON: request bodies to numpy feeds, outputs back to JSON.

The row (``instances``) and columnar (``inputs``) formats and their errors,
as TF Serving's REST API defines them (``json_tensor.cc``); the tensors
themselves are read and written by :mod:`include.mlops.serving.json_tensor`.
As in TF Serving, a request's tensors are handed to the model as they are:
their shapes are checked by the model, not here.  Everything here is CPU
work on the request body, called from the server's worker thread (or on the
event loop, for a small body to a quick version: see
:class:`include.mlops.serving.workers.InlineGate`).  What a request needs to
know about its signature is worked out once per loaded version
(:func:`signature_plan`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from include.mlops.serving.errors import json_parse_error, may_differ_from_rapidjson, number_marks, rapidjson_error
from include.mlops.serving.json_tensor import (
    TensorType,
    as_array,
    debug_string,
    is_b64_object,
    row_json,
    tensor_json,
    tensor_type,
    to_tensor,
)
from include.mlops.serving.models import DEFAULT_SIGNATURE, LoadedVersion, ServingError, invalid

if TYPE_CHECKING:
    import numpy as np

_UNREAD = object()  # _fast_loads: orjson did not read the body
_LONG_DIGITS = b"0" * 19  # in number_marks(body): a run of 19 digits
# What may precede such a run where it is not a fraction's (after "."): an integer's sign or the byte before
# it (a space in the marks), or an exponent's "e" or "+".
_LONG_NON_FRACTIONS = tuple(mark + _LONG_DIGITS for mark in (b" ", b"-", b"e", b"+"))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or TF Serving's parse errors (RapidJSON's words and offset)."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    marks = number_marks(body)
    doc = _UNREAD if _has_long_non_fraction(marks) else _fast_loads(body)
    if doc is _UNREAD:
        doc = _loads(body)
    # What Python reads but RapidJSON refuses: a number beyond a double (Python reads infinity), a lone surrogate.
    if may_differ_from_rapidjson(body, marks):
        found = rapidjson_error(body)
        if found is not None:
            raise invalid(f"JSON Parse error: {found[0]} at offset: {found[1]}")
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def _has_long_non_fraction(marks: bytes) -> bool:
    """Whether the body has a run of 19 digits outside a fraction (see :func:`_fast_loads`).

    Fractions of floats written at full precision often have 19 digits (0.0012345678901234567), and both
    parsers read those alike, so they do not send a body to the slower parser.
    """
    if marks.rfind(_LONG_DIGITS) < 0:  # rfind: see errors.may_differ_from_rapidjson
        return False
    return marks.startswith(_LONG_DIGITS) or any(marks.rfind(run) >= 0 for run in _LONG_NON_FRACTIONS)


def _fast_loads(body: bytes) -> Any:
    """``json.loads(body)`` by orjson where the two read the same, else ``_UNREAD``.

    orjson refuses what only Python's json reads (NaN and Infinity, a byte order mark, lone surrogates,
    nesting past 1024, numbers beyond a double): those, and any other error, go to :func:`_loads`.  The one
    value they read differently is an integer beyond 64 bits (orjson: a float), so the caller sends a body
    with a run of 19 digits outside a fraction (every integer out of int64's range has one) there too.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _UNREAD


def _loads(body: bytes) -> Any:
    """``json.loads(body)`` with its errors in TF Serving's words."""
    try:
        return json.loads(body)
    except RecursionError:
        # json recurses once per nesting level; TF Serving's parser does not, and no tensor nests this deep.
        raise invalid(
            "JSON Parse error: the request nests arrays or objects too deeply; "
            "send 'instances' as a list of rows (or 'inputs' as a list of columns)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(json_parse_error(body, exc)) from None


def signature_name(doc: Mapping[str, Any]) -> str:
    signature = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):
        raise invalid(
            f"JSON Value: {debug_string(dict(doc))} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return signature or DEFAULT_SIGNATURE


@dataclasses.dataclass(frozen=True)
class SignaturePlan:
    """A signature of one loaded version as predict requests read and answer it (see :func:`signature_plan`)."""

    signature: str
    names: tuple[str, ...]  # the input names, sorted (the order TF Serving's errors list them in)
    types: Mapping[str, TensorType]  # input name -> its dtype, set up for to_tensor
    outputs: list[str]  # the output names an answer holds, sorted


def signature_plan(loaded: LoadedVersion, signature: str) -> SignaturePlan:
    """``signature``'s plan, built on the first request to it and kept on the loaded version.

    Kept only for signatures the version has, so clients cannot grow the cache.  Two first requests at once
    may both build it; they build the same plan.
    """
    plan = loaded.plans.get(signature)
    if plan is None:
        specs = loaded.inputs.get(signature)
        if specs is None:
            raise invalid(f'Serving signature name: "{signature}" not found in signature def')
        types = {name: tensor_type(spec.dtype) for name, spec in specs.items()}
        plan = SignaturePlan(signature, tuple(sorted(specs)), types, loaded.outputs[signature])
        loaded.plans[signature] = plan
    return plan


def parse_predict_request(body: bytes, loaded: LoadedVersion) -> tuple[SignaturePlan, dict[str, np.ndarray], bool]:
    """Turn a TF Serving predict body into ``(signature plan, feeds, columnar)``; raise 400s for bad input."""
    try:
        return _parse_predict_request(body, loaded)
    except RecursionError:
        raise invalid("JSON Value: the request nests lists too deeply for any tensor") from None


def _parse_predict_request(body: bytes, loaded: LoadedVersion) -> tuple[SignaturePlan, dict[str, np.ndarray], bool]:
    doc = parse_json_object(body)
    plan = signature_plan(loaded, signature_name(doc))
    if not plan.names:
        raise invalid(f"Failed to get input map for signature: {plan.signature}")
    has_rows, has_columns = "instances" in doc, "inputs" in doc
    if has_rows and has_columns:
        raise invalid(
            f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if not has_rows and not has_columns:
        raise invalid("Missing 'inputs' or 'instances' key")
    # numpy reads [true, 1] as [1, 1]; only walk the values for booleans when the body has one at all.
    bools = b"true" in body or b"false" in body
    if has_rows:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return plan, _feeds_from_rows(instances, plan, bools), False
    return plan, _feeds_from_columns(doc["inputs"], plan, bools), True


def _is_named_row(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


def _feeds_from_rows(instances: list[Any], plan: SignaturePlan, bools: bool) -> dict[str, np.ndarray]:
    names, types = plan.names, plan.types
    if not _is_named_row(instances[0]):
        if len(names) > 1:
            raise invalid(
                "instances is a plain list, but expecting list of objects as multiple input tensors required "
                "as per tensorinfo_map"
            )
        for index, row in enumerate(instances):
            if _is_named_row(row):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
        return {names[0]: _batch(instances, types[names[0]], bools, None)}
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, row in enumerate(instances):
        if not _is_named_row(row):
            raise invalid(f"Expecting object but got list at item {index} of input list")
        for key in row:
            if key not in types:
                raise invalid(
                    f"Failed to process element: {index} key: {key} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {key}"
                )
        if set(row) != set(names):
            raise invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: {debug_string(row)} "
                f"keys must be equal to: {','.join(names)}"
            )
        for name in names:
            columns[name].append(row[name])
    return {name: _batch(values, types[name], bools, name) for name, values in columns.items()}


def _batch(rows: list[Any], kind: TensorType, bools: bool, key: str | None) -> np.ndarray:
    """Rows stacked into one tensor; every row must have the first row's shape (TF Serving's rule)."""
    try:
        return to_tensor(rows, kind, bools)
    except ServingError as error:
        batch_error = error
    # Name the row that breaks the rule, as TF Serving does ("Failed to process element: i ...").
    where = f" key: {key}" if key else ""
    first: np.ndarray | None = None
    for index, row in enumerate(rows):
        try:
            tensor = to_tensor(row, kind, bools)
        except ServingError as row_error:
            raise invalid(
                f"Failed to process element: {index}{where} of 'instances' list. Error: {row_error.message}"
            ) from None
        if first is None:
            first = tensor
        elif tensor.size != first.size:
            raise invalid(
                f"Failed to process element: {index}{where} of 'instances' list. "
                f"Error: Expecting tensor size: {first.size} but got: {tensor.size}"
            )
        elif tensor.shape != first.shape:
            raise invalid(
                f"Failed to process element: {index}{where} of 'instances' list. Error: Expecting shape "
                f"[{','.join(map(str, first.shape))}] but got: [{','.join(map(str, tensor.shape))}]"
            )
    raise batch_error


def _feeds_from_columns(inputs: Any, plan: SignaturePlan, bools: bool) -> dict[str, np.ndarray]:
    names, types = plan.names, plan.types
    if not _is_named_row(inputs):
        if len(names) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        return {names[0]: to_tensor(inputs, types[names[0]], bools)}
    feeds = {}
    for name in names:
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        feeds[name] = to_tensor(inputs[name], types[name], bools)
    return feeds


def format_predict_response(outputs: Mapping[str, Any], names: list[str], columnar: bool) -> bytes:
    """``{"predictions": [...]}`` (row format) or ``{"outputs": ...}`` (columnar), as TF Serving nests them."""
    arrays = {name: as_array(outputs[name]) for name in names}
    if columnar:
        if len(names) == 1:
            return b'{"outputs":' + tensor_json(arrays[names[0]], names[0]).encode() + b"}"
        columns = ",".join(f"{json.dumps(name)}:{tensor_json(arrays[name], name)}" for name in names)
        return b'{"outputs":{' + columns.encode() + b"}}"
    batch = -1
    for name in names:
        shape = arrays[name].shape
        if not shape:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if shape[0] < 1:
            raise invalid(f"Tensor name: {name} has invalid batch size: {shape[0]}")
        if batch >= 0 and shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]
    if len(names) == 1:
        return b'{"predictions":' + tensor_json(arrays[names[0]], names[0]).encode() + b"}"
    rows = {json.dumps(name): row_json(arrays[name], name) for name in names}
    items = ",".join("{" + ",".join(f"{key}:{texts[i]}" for key, texts in rows.items()) + "}" for i in range(batch))
    return b'{"predictions":[' + items.encode() + b"]}"
