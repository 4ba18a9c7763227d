"""The server's errors: TF Serving's HTTP status per error code, and the model's own errors.

TF Serving answers ``{"error": "..."}`` with the HTTP status its
``ToHTTPStatusCode`` (http_server.cc) gives the error's code; an error the
model raises keeps its TF code and the op's own message.
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
