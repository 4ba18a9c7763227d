"""TF Serving's JSON tensor encoding: JSON values to typed numpy tensors and back.

The rules are TF Serving's (``tensorflow_serving/util/json_tensor.cc``):

* a tensor's shape is read from the first element at each nesting level, and
  every value must then sit at that depth with lists of that size;
* each value must fit the input's dtype exactly: an integer input takes JSON
  integers in its range only, a float input takes any JSON number, a bool
  input takes ``true``/``false``, a string input takes JSON strings (UTF-8)
  or ``{"b64": "..."}`` objects for binary data;
* floats are written as the shortest text that reads back as the same value
  of the output's own dtype; NaN and infinities as ``NaN``, ``Infinity``,
  ``-Infinity`` (as TF Serving writes them); string outputs whose name ends in
  ``_bytes`` as ``{"b64": "..."}``.

The error texts are TF Serving's, since clients match on them ("is not of
expected type", "Encountered list at unexpected size", ...).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from include.mlops.serving.models import ServingError, invalid

if TYPE_CHECKING:
    import numpy as np

# TF's DataTypeString for each numpy dtype name, as TF Serving prints it in its errors.
TF_TYPE_NAMES = {
    "float16": "half",
    "float32": "float",
    "float64": "double",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "object": "string",
    "bytes_": "string",
    "str_": "string",
}
STRING_DTYPES = frozenset({"object", "bytes_", "str_"})
BYTES_SUFFIX = "_bytes"  # TF Serving writes string outputs named *_bytes as base64
_DEBUG_LIMIT = 256  # TF Serving truncates the JSON it quotes in errors to 256 bytes


def tf_type_name(dtype: str) -> str:
    return TF_TYPE_NAMES.get(dtype, dtype)


def debug_string(value: Any) -> str:
    """The JSON text of ``value`` for an error message, cut at TF Serving's 256 bytes."""
    return json.dumps(value, separators=(",", ":"), allow_nan=True)[:_DEBUG_LIMIT]


def json_type(value: Any) -> str:
    """rapidjson's type names, which TF Serving prints in its type errors."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value: Any) -> bytes:
    if not is_b64_object(value):
        raise invalid(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _type_error(value: Any, dtype: str) -> ServingError:
    return invalid(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: {tf_type_name(dtype)}"
    )


def _leaf(value: Any, dtype: str, np_dtype: np.dtype) -> Any:
    """One JSON scalar checked against (and converted for) a tensor of ``dtype``."""
    import numpy as np

    if dtype in STRING_DTYPES:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            return decode_b64(value)
        raise _type_error(value, dtype)
    if isinstance(value, dict):
        raise _type_error(value, dtype)
    if np_dtype.kind == "b":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(value, dtype)
    if np_dtype.kind in "iu":
        info = np.iinfo(np_dtype)
        if not isinstance(value, int) or not info.min <= value <= info.max:
            raise _type_error(value, dtype)
        return value
    # A float input takes any JSON number, but not one that only fits as infinity (e.g. 1e39 for float32).
    if abs(value) != float("inf") and value == value and abs(value) > float(np.finfo(np_dtype).max):
        raise invalid(
            f"JSON Value: {debug_string(value)} Type: Number is not of expected type: {tf_type_name(dtype)} "
            "(out of range)"
        )
    return value


def _dense_shape(value: Any) -> list[int]:
    """The shape read from the first element of each level (TF Serving's GetDenseTensorShape)."""
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: str, np_dtype: np.dtype, out: list[Any]) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        out.append(_leaf(value, dtype, np_dtype))
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, np_dtype, out)


def _fast_array(value: Any, np_dtype: np.dtype, may_hold_bools: bool) -> np.ndarray | None:
    """numpy's own conversion when it cannot be wrong (numbers of a fitting kind and range); else None."""
    import numpy as np

    if may_hold_bools and np_dtype.kind != "b":
        return None  # numpy reads [true, 1] as [1, 1]: let the exact walk refuse the boolean
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    kind = array.dtype.kind
    if array.size == 0:
        return None
    if np_dtype.kind == "b":
        return array if kind == "b" else None
    if np_dtype.kind in "iu":
        if kind not in "iu":
            return None
        info = np.iinfo(np_dtype)
        if array.min() < info.min or array.max() > info.max:
            return None
        return array.astype(np_dtype, copy=False)
    if np_dtype.kind == "f" and kind in "iuf":
        with np.errstate(over="ignore"):  # an overflow is detected just below
            converted = array.astype(np_dtype, copy=False)
        if np_dtype.itemsize < 8 and np.isinf(converted).any() and not np.isinf(array).all():
            return None  # a finite value overflowed: the walk names it
        return converted
    return None


def to_tensor(value: Any, dtype: str, may_hold_bools: bool = True) -> np.ndarray:
    """A JSON value (scalar or nested lists) as a tensor of ``dtype``, or a 400 in TF Serving's words."""
    import numpy as np

    if dtype not in TF_TYPE_NAMES:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {debug_string(value)} to type: {dtype}")
    np_dtype = np.dtype(object) if dtype in STRING_DTYPES else np.dtype(dtype)
    if dtype not in STRING_DTYPES:
        fast = _fast_array(value, np_dtype, may_hold_bools)
        if fast is not None:
            return fast
    shape = _dense_shape(value)
    flat: list[Any] = []
    _fill(value, 0, shape, dtype, np_dtype, flat)
    if dtype in STRING_DTYPES:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.asarray(flat, dtype=np_dtype).reshape(shape)


def contains_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, list):
        return any(contains_bool(v) for v in value)
    if isinstance(value, dict):
        return any(contains_bool(v) for v in value.values())
    return False


# --------------------------------------------------------------------------- output


def to_json_value(array: np.ndarray, name: str) -> Any:
    """A tensor as JSON-ready Python values, floats at the shortest text of their own dtype."""
    import numpy as np

    kind = array.dtype.kind
    if kind == "f":
        if array.dtype.itemsize < 8:
            # numpy prints each float16/float32 as its shortest round-trip text; read back as Python floats,
            # those texts are printed unchanged by json (a float32 needs at most 9 significant digits).
            return array.astype(str).astype(np.float64).tolist()
        return array.tolist()
    if kind in "iub":
        return array.tolist()
    if kind in "OSU":
        as_bytes = name.endswith(BYTES_SUFFIX)
        return _strings(array.tolist(), as_bytes)
    raise invalid(f"Failed to write JSON value for tensor type: {array.dtype.name}")


def _strings(value: Any, as_bytes: bool) -> Any:
    if isinstance(value, list):
        return [_strings(v, as_bytes) for v in value]
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if as_bytes:
        return {"b64": base64.b64encode(raw).decode("ascii")}
    # JSON text must be Unicode: bytes that are not UTF-8 are replaced (send them from a *_bytes output).
    return raw.decode("utf-8", errors="replace")


def dumps(payload: Any) -> bytes:
    """Compact JSON with TF Serving's NaN/Infinity tokens."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=True).encode()
