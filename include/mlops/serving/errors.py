"""The server's errors: TF Serving's HTTP status per error code, the model's own errors, and JSON syntax errors.

TF Serving answers ``{"error": "..."}`` with the HTTP status its
``ToHTTPStatusCode`` (http_server.cc) gives the error's code; an error the
model raises keeps its TF code and the op's own message.  A body that is not
JSON is refused in the words of TF Serving's parser, RapidJSON ("JSON Parse
error: Invalid value. at offset: 0"), found by a reader that follows RapidJSON's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from include.mlops.serving.models import ServingError, invalid

log = logging.getLogger(__name__)

# TF Serving's ToHTTPStatusCode (http_server.cc), plus 413 for an oversized body.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


# The reverse, for an answer seen from outside (the request logger): the code an HTTP status stands for.  Where
# several codes share a status, the one the server's INITIAL_STATUSES start at (INVALID_ARGUMENT for 400,
# INTERNAL for 500), else the first listed above; 413 is PayloadTooLarge's RESOURCE_EXHAUSTED.
_CODE_OF_STATUS = {
    **{status: code for code, status in reversed(HTTP_STATUS.items())},
    400: "INVALID_ARGUMENT",
    500: "INTERNAL",
    413: "RESOURCE_EXHAUSTED",
}


def code_for_http_status(status: int) -> str:
    """The TF error code name an HTTP status maps to (any 2xx is ``OK``; a status TF Serving never answers, UNKNOWN)."""
    if 200 <= status < 300:
        return "OK"
    return _CODE_OF_STATUS.get(status, "UNKNOWN")


class HttpError(ServingError):
    """An error whose HTTP status is not TF Serving's mapping of its code (413, 405)."""

    def __init__(self, code: str, message: str, http_status: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.http_status = http_status
        self.headers = dict(headers or {})


class PayloadTooLarge(HttpError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            "RESOURCE_EXHAUSTED",
            f"Request body is larger than the server's limit of {limit} bytes; send fewer rows per request "
            "or raise --max-body-bytes",
            413,
        )


_INT64_MAX = 2**63 - 1


def parse_version(text: str | None) -> int | None:
    """A path's version number; one that does not fit TF Serving's int64 is a 400 in TF Serving's words."""
    if not text:
        return None
    version = int(text)
    if version > _INT64_MAX:
        raise invalid(f"Failed to convert version: {text}")
    return version


def model_error(exc: Exception) -> ServingError:
    """The model's own error with TF's code (so a bad argument is a 400 with the op's message, as in TF Serving).

    Python-level argument errors from calling the signature (ValueError, TypeError) are the client's too.
    """
    try:
        import tensorflow as tf

        if isinstance(exc, tf.errors.OpError):
            names = {getattr(tf.errors, code): code for code in HTTP_STATUS if hasattr(tf.errors, code)}
            return ServingError(names.get(exc.error_code, "UNKNOWN"), _op_message(exc.message))
        if isinstance(exc, ValueError | TypeError):
            return invalid(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    except ImportError:  # pragma: no cover - TensorFlow is always installed with the server
        pass
    log.exception("Model call failed")
    return ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


def _op_message(message: str) -> str:
    """The op's own words, without the Python stack eager TF puts before them or its function's name after."""
    lines = message.strip().splitlines()
    preamble = ("Graph execution error:", "Detected at node", "<stack traces unavailable>", " ")
    while len(lines) > 1 and (not lines[0].strip() or lines[0].startswith(preamble)):
        lines.pop(0)
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", "\n".join(lines)).strip()


# --------------------------------------------------------------------------- JSON syntax errors, in RapidJSON's words

# RapidJSON's messages (rapidjson/error/en.h), which TF Serving prints as "JSON Parse error: <message> at offset: <n>".
DOCUMENT_EMPTY = "The document is empty."
ROOT_NOT_SINGULAR = "The document root must not be followed by other values."
VALUE_INVALID = "Invalid value."
MISS_NAME = "Missing a name for object member."
MISS_COLON = "Missing a colon after a name of object member."
MISS_COMMA_OR_CURLY = "Missing a comma or '}' after an object member."
MISS_COMMA_OR_SQUARE = "Missing a comma or ']' after an array element."
BAD_HEX = "Incorrect hex digit after \\u escape in string."
BAD_SURROGATE = "The surrogate pair in string is invalid."
BAD_ESCAPE = "Invalid escape character in string."
MISS_QUOTE = "Missing a closing quotation mark in string."
BAD_ENCODING = "Invalid encoding in string."
NUMBER_TOO_BIG = "Number too big to be stored in double."
MISS_FRACTION = "Miss fraction part in number."
MISS_EXPONENT = "Miss exponent in number."

# The states of RapidJSON's iterative parser, and the error each reports for a token it does not expect there.
_START, _OBJECT, _KEY, _COLON, _MEMBER, _MEMBER_COMMA, _ARRAY, _ELEMENT, _ELEMENT_COMMA, _FINISH = range(10)
_STATE_ERRORS = {
    _START: DOCUMENT_EMPTY,
    _OBJECT: MISS_NAME,
    _MEMBER_COMMA: MISS_NAME,
    _KEY: MISS_COLON,
    _MEMBER: MISS_COMMA_OR_CURLY,
    _COLON: VALUE_INVALID,
    _ARRAY: VALUE_INVALID,
    _ELEMENT_COMMA: VALUE_INVALID,
    _ELEMENT: MISS_COMMA_OR_SQUARE,
    _FINISH: ROOT_NOT_SINGULAR,
}
_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_PLAIN = re.compile(rb'[^"\\\x00-\x1f]*')
_DIGITS = re.compile(rb"[0-9]*")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Runs of array elements RapidJSON reads without an error, each followed by a comma: numbers that cannot be too big,
# strings without \u escapes, literals, and flat arrays of those. Matched at C speed; everything else token by token.
_WS = rb"[ \t\n\r]*+"
_SIMPLE = (
    rb"(?>-?+(?:0|[1-9][0-9]{0,199}+)(?:\.[0-9]++)?+(?:[eE](?:-[0-9]++|\+?+[0-9]{1,2}+))?+"
    rb'|"(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt])*+"|true|false|null|-?+(?:NaN|Infinity|Inf))'
)
_FLAT = rb"\[" + _WS + rb"(?:" + _SIMPLE + _WS + rb"(?:," + _WS + _SIMPLE + _WS + rb")*+)?+\]"
_ELEMENTS = re.compile(rb"(?:(?:" + _SIMPLE + rb"|" + _FLAT + rb")" + _WS + rb"," + _WS + rb")++")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
# Bytes where Python's parser and RapidJSON may disagree on a document both read: a NUL (Python reads UTF-16/32),
# a \u escape of a surrogate (Python keeps a lone one), a big exponent or a long digit run (Python reads infinity).
_NUMBER_MARKS = bytes(48 if 48 <= b <= 57 else 101 if b in b"eE" else b if b in b"+-." else 32 for b in range(256))
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _SyntaxError(Exception):
    pass


def number_marks(body: bytes) -> bytes:
    """``body`` with each digit as ``0``, ``e``/``E`` as ``e``, ``+``, ``-`` and ``.`` kept, every other byte a space."""
    return body.translate(_NUMBER_MARKS)


def may_differ_from_rapidjson(body: bytes, marks: bytes | None = None) -> bool:
    """Whether a body Python's json read may still be one RapidJSON refuses (cheap: no parsing).

    ``marks``: ``number_marks(body)``, when the caller has it already.
    """
    marks = number_marks(body) if marks is None else marks
    # rfind, not ``in``: marks are mostly runs of 0, and CPython's forward search tests each window's last byte
    # first (a 0 here: nearly every window is a candidate), the backward one its first (rarely a match).
    return (
        marks.rfind(b"e000") >= 0
        or marks.rfind(b"e+000") >= 0
        or marks.rfind(b"0" * 200) >= 0
        or b"\0" in body
        # A backslash first (one byte: a fast scan), as most bodies have none; the search alone scans slowly.
        or (b"\\" in body and b"\\u" in body and _SURROGATE_ESCAPE.search(body) is not None)
    )


def rapidjson_error(doc: bytes, stop_when_done: bool = True) -> tuple[str, int] | None:
    """The first error RapidJSON finds in ``doc`` and its byte offset, read with TF Serving's flags, else None.

    TF Serving parses with ``kParseIterativeFlag | kParseNanAndInfFlag | kParseStopWhenDoneFlag`` from a
    UTF-8 stream that skips a byte order mark and ends at the first NUL byte; strings are not checked for
    valid UTF-8. With ``stop_when_done=False`` text after the document is an error, as without that flag.
    """
    try:
        _scan(doc, stop_when_done)
    except _SyntaxError as error:
        return error.args[0], error.args[1]
    return None


def json_parse_error(body: bytes, exc: Exception) -> str:
    """TF Serving's words for a body Python's json refused; Python's own when RapidJSON would read it."""
    found = rapidjson_error(body) or rapidjson_error(body, stop_when_done=False)
    if found is None:
        return f"JSON Parse error: {exc}"
    return f"JSON Parse error: {found[0]} at offset: {found[1]}"


def _scan(doc: bytes, stop_when_done: bool) -> None:
    end = doc.find(b"\0")
    end = len(doc) if end < 0 else end
    pos = 0
    for mark in b"\xef\xbb\xbf":  # RapidJSON's UTF-8 stream skips each byte of a byte order mark
        pos += pos < end and doc[pos] == mark
    pos = _WHITESPACE.match(doc, pos, end).end()
    state, stack = _START, []
    while pos < end:
        char = doc[pos]
        run = _ELEMENTS.match(doc, pos, end) if state in (_ARRAY, _ELEMENT_COMMA) else None
        if run is not None:
            state, pos = _ELEMENT_COMMA, run.end()
            continue
        if char in b"[{" and state in (_START, _COLON, _ARRAY, _ELEMENT_COMMA):
            stack.append(_MEMBER if state == _COLON else _START if state == _START else _ELEMENT)
            state, pos = (_ARRAY if char == 91 else _OBJECT), pos + 1
        elif (char == 93 and state in (_ARRAY, _ELEMENT)) or (char == 125 and state in (_OBJECT, _MEMBER)):
            state, pos = stack.pop(), pos + 1
            state = _FINISH if state == _START else state
        elif char == 44 and state in (_MEMBER, _ELEMENT):
            state, pos = (_MEMBER_COMMA if state == _MEMBER else _ELEMENT_COMMA), pos + 1
        elif char == 34 and state in (_OBJECT, _MEMBER_COMMA):
            state, pos = _KEY, _string(doc, pos, end)
        elif char == 58 and state == _KEY:
            state, pos = _COLON, pos + 1
        elif char not in b"[]{},:" and state in (_START, _COLON, _ARRAY, _ELEMENT_COMMA):
            pos = _value(doc, pos, end)
            state = {_START: _FINISH, _COLON: _MEMBER}.get(state, _ELEMENT)
        else:
            raise _SyntaxError(_STATE_ERRORS[state], pos)
        if stop_when_done and state == _FINISH:
            return
        pos = _WHITESPACE.match(doc, pos, end).end()
    if state != _FINISH:
        raise _SyntaxError(_STATE_ERRORS[state], pos)


def _value(doc: bytes, pos: int, end: int) -> int:
    char = doc[pos]
    if char == 34:
        return _string(doc, pos, end)
    for word in (b"null", b"true", b"false"):
        if char == word[0]:
            return _literal(doc, pos, end, word)
    return _number(doc, pos, end)


def _literal(doc: bytes, pos: int, end: int, word: bytes) -> int:
    for offset, char in enumerate(word):
        if pos + offset >= end or doc[pos + offset] != char:
            raise _SyntaxError(VALUE_INVALID, pos + offset)
    return pos + len(word)


def _string(doc: bytes, pos: int, end: int) -> int:
    pos += 1
    while True:
        pos = _PLAIN.match(doc, pos, end).end()
        if pos >= end:
            raise _SyntaxError(MISS_QUOTE, pos)
        char, escape = doc[pos], pos
        if char == 34:
            return pos + 1
        if char != 92:
            raise _SyntaxError(BAD_ENCODING, pos)  # a control character
        follower = doc[pos + 1] if pos + 1 < end else 0
        if follower in _SIMPLE_ESCAPES:
            pos += 2
            continue
        if follower != 117:
            raise _SyntaxError(BAD_ESCAPE, escape)
        code, pos = _hex4(doc, pos + 2, end, escape)
        if 0xDC00 <= code <= 0xDFFF:
            raise _SyntaxError(BAD_SURROGATE, escape)
        if 0xD800 <= code <= 0xDBFF:
            if doc[pos : pos + 2] != b"\\u" or pos + 2 > end:
                raise _SyntaxError(BAD_SURROGATE, escape)
            low, pos = _hex4(doc, pos + 2, end, escape)
            if not 0xDC00 <= low <= 0xDFFF:
                raise _SyntaxError(BAD_SURROGATE, escape)


def _hex4(doc: bytes, pos: int, end: int, escape: int) -> tuple[int, int]:
    digits = doc[pos : min(pos + 4, end)]
    if len(digits) < 4 or not _HEX.issuperset(digits):
        raise _SyntaxError(BAD_HEX, escape)
    return int(digits, 16), pos + 4


def _number(doc: bytes, start: int, end: int) -> int:
    """RapidJSON's ParseNumber without full precision: its errors, and when it calls a number too big."""
    minus = doc[start] == 45
    pos = start + minus
    head = doc[pos] if pos < end else 0
    if head in b"NI":  # NaN, Inf, Infinity (and with a minus sign)
        words = (b"NaN",) if head == 78 else (b"Inf", b"inity")
        for word in words:
            if word == b"inity" and (pos >= end or doc[pos] != 105):
                break
            for char in word:
                if pos >= end or doc[pos] != char:
                    raise _SyntaxError(VALUE_INVALID, pos)
                pos += 1
        return pos
    if not 48 <= head <= 57:
        raise _SyntaxError(VALUE_INVALID, pos)
    digits_start = pos
    pos = pos + 1 if head == 48 else _DIGITS.match(doc, pos, end).end()
    # RapidJSON reads digits into a 64-bit integer while they fit (counting all but the first as significant),
    # then goes on in a double.
    limit, read = (2**63 if minus else 2**64 - 1), pos - digits_start
    for length in range(1, min(read, 21) + 1):
        if int(doc[digits_start : digits_start + length]) > limit:
            read = length - 1
            break
    exact = int(doc[digits_start : digits_start + read])
    significant, as_double = max(read - 1, 0), read < pos - digits_start
    fraction = 0
    if pos < end and doc[pos] == 46:
        pos += 1
        if not (pos < end and 48 <= doc[pos] <= 57):
            raise _SyntaxError(MISS_FRACTION, pos)
        while pos < end and 48 <= doc[pos] <= 57:
            if not as_double and exact > 2**53 - 1:
                as_double = True
            if not as_double or significant < 17:
                exact = exact * 10 + doc[pos] - 48
                fraction -= 1
                significant += exact != 0
            pos += 1
        as_double = True
    if pos < end and doc[pos] in b"eE":
        as_double, pos = True, pos + 1
        negative = pos < end and doc[pos] == 45
        pos += pos < end and doc[pos] in b"+-"
        if not (pos < end and 48 <= doc[pos] <= 57):
            raise _SyntaxError(MISS_EXPONENT, pos)
        exponent_start = pos
        pos = _DIGITS.match(doc, pos, end).end()
        if not negative:
            exponent = 0
            for char in doc[exponent_start:pos]:
                exponent = exponent * 10 + char - 48
                if exponent > 308 - fraction:
                    raise _SyntaxError(NUMBER_TOO_BIG, start)
    if as_double and abs(float(doc[start:pos])) == float("inf"):
        raise _SyntaxError(NUMBER_TOO_BIG, start)
    return pos
