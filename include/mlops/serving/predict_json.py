"""TF Serving's predict JSON: request bodies to numpy feeds, outputs back to JSON.

The row (``instances``) and columnar (``inputs``) formats and their errors,
as TF Serving's REST API defines them.  Everything here is CPU work on the
request body, called from the server's worker thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from include.mlops.serving.models import (
    DEFAULT_SIGNATURE,
    LoadedVersion,
    ServingError,
    TensorSpecInfo,
    invalid,
)

if TYPE_CHECKING:
    import numpy as np

_NUMERIC_KINDS = {"f": "iuf", "i": "iu", "u": "iu"}  # what JSON values may feed each input dtype kind


def parse_predict_request(body: bytes, loaded: LoadedVersion) -> tuple[str, dict[str, np.ndarray], bool]:
    """Turn a TF Serving predict body into ``(signature, feeds, columnar)``; raise 400s for bad input."""
    try:
        return _parse_predict_request(body, loaded)
    except RecursionError:
        # json and the value walks recurse once per nesting level; the tensors we serve nest a few levels deep.
        raise invalid(
            "JSON Parse error: the request nests arrays or objects too deeply; "
            "send 'instances' as a list of rows (or 'inputs' as a list of columns)"
        ) from None


def _parse_predict_request(body: bytes, loaded: LoadedVersion) -> tuple[str, dict[str, np.ndarray], bool]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid("JSON Value: request body must be a JSON object with 'instances' or 'inputs'")
    signature = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):
        raise invalid("'signature_name' key must be a string value.")
    signature = signature or DEFAULT_SIGNATURE
    if signature not in loaded.inputs:
        raise invalid(f'Serving signature name: "{signature}" not found in signature def')
    specs = loaded.inputs[signature]
    has_rows, has_columns = "instances" in doc, "inputs" in doc
    if has_rows and has_columns:
        raise invalid("Not formatted correctly, expecting only one of 'inputs' or 'instances' keys.")
    if not has_rows and not has_columns:
        raise invalid("Missing 'inputs' or 'instances' key")
    values = doc["instances"] if has_rows else doc["inputs"]
    # numpy turns [true, 1] into integers silently; only walk the values when the body has a boolean at all.
    if (b"true" in body or b"false" in body) and _has_bool(values):
        raise invalid("expected numbers, got booleans (true/false) among the input values")
    if has_rows:
        return signature, _feeds_from_rows(doc["instances"], specs), False
    return signature, _feeds_from_columns(doc["inputs"], specs), True


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    return False


def _feeds_from_rows(instances: Any, specs: Mapping[str, TensorSpecInfo]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid("'instances' must be a JSON list of rows")
    if not instances:
        raise invalid("'instances' is an empty list: send at least one row")
    names = list(specs)
    if len(names) == 1 and not isinstance(instances[0], dict):
        return {names[0]: _to_array(instances, specs[names[0]], "instances")}
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, row in enumerate(instances):
        if not isinstance(row, dict):
            raise invalid(f"instances[{index}] must be an object with keys {names} (mixed row formats)")
        if set(row) != set(names):
            raise invalid(f"instances[{index}] has keys {sorted(row)}; the signature takes {names}")
        for name in names:
            columns[name].append(row[name])
    return {name: _to_array(values, specs[name], f"instances.{name}") for name, values in columns.items()}


def _feeds_from_columns(inputs: Any, specs: Mapping[str, TensorSpecInfo]) -> dict[str, np.ndarray]:
    names = list(specs)
    if isinstance(inputs, dict):
        if set(inputs) != set(names):
            raise invalid(f"'inputs' has keys {sorted(inputs)}; the signature takes {names}")
        return {name: _to_array(inputs[name], specs[name], f"inputs.{name}") for name in names}
    if len(names) != 1:
        raise invalid(f"the signature takes several inputs {names}: send 'inputs' as an object keyed by them")
    return {names[0]: _to_array(inputs, specs[names[0]], "inputs")}


def _to_array(values: Any, spec: TensorSpecInfo, where: str) -> np.ndarray:
    import numpy as np

    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise invalid(f"{where}: rows must all have the same shape (got ragged lists)") from None
    wanted = np.dtype(spec.dtype)
    allowed = _NUMERIC_KINDS.get(wanted.kind)
    if allowed is None:
        raise invalid(f"{where}: inputs of dtype {spec.dtype} are not supported by this server")
    if array.dtype.kind not in allowed:
        found = {"U": "strings", "S": "strings", "O": "mixed or non-numeric values", "b": "booleans"}.get(
            array.dtype.kind, array.dtype.name
        )
        raise invalid(f"{where}: expected numbers for a {spec.dtype} input, got {found}")
    if array.ndim == 0 or array.shape[0] == 0:
        raise invalid(f"{where}: the batch is empty: send at least one row")
    if len(spec.shape) != array.ndim or any(
        want is not None and want != got for want, got in zip(spec.shape, array.shape, strict=False)
    ):
        shape = [-1 if d is None else d for d in spec.shape]
        raise invalid(f"{where}: got shape {list(array.shape)}, the signature expects {shape} (-1: any)")
    if wanted.kind in "iu" and array.dtype.kind == "f":
        raise invalid(f"{where}: expected integers for a {spec.dtype} input, got floats")
    return array.astype(wanted, copy=False)


def format_predict_response(outputs: Mapping[str, np.ndarray], names: list[str], columnar: bool) -> bytes:
    """``{"predictions": [...]}`` (row format) or ``{"outputs": ...}`` (columnar), as TF Serving nests them."""
    if columnar:
        if len(names) == 1:
            payload: Any = {"outputs": _jsonable(outputs[names[0]])}
        else:
            payload = {"outputs": {name: _jsonable(outputs[name]) for name in names}}
    elif len(names) == 1:
        payload = {"predictions": _jsonable(outputs[names[0]])}
    else:
        batch = len(outputs[names[0]])
        lists = {name: _jsonable(outputs[name]) for name in names}
        payload = {"predictions": [{name: lists[name][i] for name in names} for i in range(batch)]}
    return json.dumps(payload, separators=(",", ":")).encode()


def _jsonable(array: np.ndarray) -> Any:
    import numpy as np

    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ServingError("INTERNAL", "the model returned NaN or infinite values, which JSON cannot carry")
    return array.tolist()
