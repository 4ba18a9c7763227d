"""TF Serving's JSON tensor encoding: JSON values to typed numpy tensors and back.

The rules are TF Serving's (``tensorflow_serving/util/json_tensor.cc``):

* a tensor's shape is read from the first element at each nesting level, and
  every value must then sit at that depth with lists of that size;
* each value must fit the input's dtype exactly: an integer input takes JSON
  integers in its range only, a float input takes any JSON number, a bool
  input takes ``true``/``false``, a string input takes JSON strings (UTF-8)
  or ``{"b64": "..."}`` objects for binary data;
* floats are written as TF Serving's ``WriteDecimal`` writes them (printf's
  ``%g``, more digits only where six do not read back); NaN and infinities as
  ``NaN``, ``Infinity``, ``-Infinity``; string outputs whose name ends in
  ``_bytes`` as ``{"b64": "..."}``.

The error texts are TF Serving's, since clients match on them ("is not of
expected type", "Encountered list at unexpected size", ...).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import struct
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
            return value.encode("utf-8", "surrogatepass")  # the bytes as sent, as TF Serving passes them
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


@dataclasses.dataclass(frozen=True, slots=True)
class TensorType:
    """An input's dtype as :func:`to_tensor` needs it, worked out once (by :func:`tensor_type`)."""

    dtype: str  # the numpy dtype name a signature gives
    numpy: np.dtype | None  # None: a dtype JSON tensors do not carry (e.g. complex64)
    strings: bool


def tensor_type(dtype: str) -> TensorType:
    import numpy as np

    if dtype not in TF_TYPE_NAMES:
        return TensorType(dtype, None, False)
    strings = dtype in STRING_DTYPES
    return TensorType(dtype, np.dtype(object) if strings else np.dtype(dtype), strings)


def to_tensor(value: Any, kind: TensorType, may_hold_bools: bool = True) -> np.ndarray:
    """A JSON value (scalar or nested lists) as a tensor of ``kind``, or a 400 in TF Serving's words."""
    import numpy as np

    np_dtype = kind.numpy
    if np_dtype is None:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {debug_string(value)} to type: {kind.dtype}")
    if not kind.strings:
        fast = _fast_array(value, np_dtype, may_hold_bools)
        if fast is not None:
            return fast
    shape = _dense_shape(value)
    flat: list[Any] = []
    _fill(value, 0, shape, kind.dtype, np_dtype, flat)
    if kind.strings:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.asarray(flat, dtype=np_dtype).reshape(shape)


# --------------------------------------------------------------------------- output

_MAX_DIGITS10 = {4: 9, 8: 17}  # std::numeric_limits<float/double>::max_digits10
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_SMALL = 64  # up to this many values, float_texts writes them one at a time
_INF = float("inf")
_MIN_NORMAL32 = 2.0**-126
_HALF_ULP_SCALE = 2.0**25  # a float32 mantissa has 24 bits: a halfway point needs the 25th
_F32 = struct.Struct("<f")


def as_array(value: Any) -> np.ndarray:
    """A model output as an array (TensorFlow hands a scalar string output back as bare bytes)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, bytes | str):
        return np.array(value, dtype=object)
    return np.asarray(value)


def float_texts(array: np.ndarray) -> list[str]:
    """Each float's JSON text, in C order, as TF Serving's ``WriteDecimal`` writes it.

    That is printf's ``%g`` (six significant digits, ``absl::StrCat``) when it reads back as the same
    float or double, else ``%.9g`` / ``%.17g``; ``.0`` is added when the text has neither a point nor an
    exponent: 9000000 is ``9e+06``, 999999 ``999999.0``, 555557.5f ``555557.5``, 0.00003 ``3e-05``.
    A half has no JSON form in TF Serving; here it is written at float16's own shortest text.
    """
    import numpy as np

    flat = array.reshape(-1)
    if flat.size <= _SMALL and flat.dtype.itemsize in _MAX_DIGITS10:
        small = _small_float_texts(flat.tolist(), flat.dtype.itemsize == 4)
        if small is not None:
            return small
    if flat.dtype.itemsize not in _MAX_DIGITS10:
        texts = [repr(v) for v in flat.astype(str).astype(np.float64).tolist()]
        return [_NON_FINITE.get(t, t) for t in texts]
    values = flat.tolist()
    texts = [format(v, ".6g") for v in values]
    read = _read_float32(texts) if flat.dtype.itemsize == 4 else np.array(texts, dtype=np.float64)
    for index in np.flatnonzero((read != flat) & np.isfinite(flat)).tolist():
        texts[index] = format(values[index], f".{_MAX_DIGITS10[flat.dtype.itemsize]}g")
    return [_NON_FINITE.get(t) or (t if "." in t or "e" in t else t + ".0") for t in texts]


def _small_float_texts(values: list[float], single: bool) -> list[str] | None:
    """:func:`float_texts` one value at a time, for a few values (numpy's per-call cost dominates there).

    None where a value needs the array path's care: a float32 text that reads as a double exactly halfway
    between two floats, or in the subnormal range, where rounding through a double may differ from
    rounding the decimal once.
    """
    texts = []
    for value in values:
        if value != value or value in (_INF, -_INF):
            texts.append("NaN" if value != value else "Infinity" if value > 0 else "-Infinity")
            continue
        text = format(value, ".6g")
        read = float(text)
        if single:
            if read != 0.0 and (abs(read) < _MIN_NORMAL32 or _halfway32(read)):
                return None
            try:
                read = _F32.unpack(_F32.pack(read))[0]
            except OverflowError:
                return None
        if read != value:
            text = format(value, ".9g" if single else ".17g")
        texts.append(text if "." in text or "e" in text else text + ".0")
    return texts


def _halfway32(value: float) -> bool:
    """Whether the double ``value`` lies exactly halfway between two (normal) float32 values."""
    scaled = math.frexp(value)[0] * _HALF_ULP_SCALE
    return scaled == int(scaled) and int(scaled) % 2 == 1


def _read_float32(texts: list[str]) -> np.ndarray:
    """The float32 each text reads as, rounded once from the decimal (as ``absl::SimpleAtof`` reads it)."""
    from fractions import Fraction

    import numpy as np

    wide = np.array(texts, dtype=np.float64)
    with np.errstate(over="ignore"):
        narrow = wide.astype(np.float32)
        other = np.nextafter(narrow, np.where(wide > narrow, np.inf, -np.inf).astype(np.float32))
    # Rounding to a double first can land exactly halfway between two floats: decide those from the decimal.
    halfway = (narrow != wide) & (narrow.astype(np.float64) + other.astype(np.float64) == 2 * wide)
    for index in np.flatnonzero(halfway).tolist():
        decimal, tie = Fraction(texts[index]), Fraction(float(wide[index]))
        if decimal != tie:
            pair = (narrow[index], other[index])
            narrow[index] = max(pair) if decimal > tie else min(pair)
    return narrow


def nest(items: list[str], dims: tuple[int, ...]) -> list[str]:
    """Element texts (C order) grouped into JSON arrays of ``dims``; one text per group of the outermost."""
    import math

    for level in range(len(dims) - 1, -1, -1):
        size = dims[level]
        if size == 0:
            items = ["[]"] * math.prod(dims[:level])
        else:
            items = ["[" + ",".join(items[i : i + size]) + "]" for i in range(0, len(items), size)]
    return items


def tensor_json(value: Any, name: str) -> str:
    """A tensor's JSON text, as TF Serving writes an output named ``name``."""
    array = as_array(value)
    return _texts(array, name, array.shape)[0]


def row_json(value: Any, name: str) -> list[str]:
    """The JSON text of each row (first dimension) of a tensor."""
    array = as_array(value)
    return _texts(array, name, array.shape[1:])


def _texts(array: np.ndarray, name: str, dims: tuple[int, ...]) -> list[str]:
    if array.dtype.kind == "f":
        return nest(float_texts(array), dims)
    value = to_json_value(array, name)
    if len(dims) == array.ndim:
        return [compact(value)]
    return [compact(row) for row in value]


def to_json_value(array: np.ndarray, name: str) -> Any:
    """A non-float tensor as JSON-ready Python values (strings named ``*_bytes`` as base64 objects)."""
    kind = array.dtype.kind
    if kind in "iub":
        return array.tolist()
    if kind in "OSU":
        as_bytes = name.endswith(BYTES_SUFFIX)
        return _strings(array.tolist(), as_bytes)
    raise invalid(f"Failed to write JSON value for tensor type: {array.dtype.name}")


def _strings(value: Any, as_bytes: bool) -> Any:
    if isinstance(value, list):
        return [_strings(v, as_bytes) for v in value]
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
    if as_bytes:
        return {"b64": base64.b64encode(raw).decode("ascii")}
    # JSON text must be Unicode: bytes that are not UTF-8 are replaced (send them from a *_bytes output).
    return raw.decode("utf-8", errors="replace")


def compact(value: Any) -> str:
    """Compact JSON text of plain values."""
    return json.dumps(value, separators=(",", ":"))
