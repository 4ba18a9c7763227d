"""The POST API (``:predict``, ``:classify``, ``:regress``) as a plain ASGI layer in front of FastAPI.

Every POST under ``/v1/`` is answered here, before FastAPI's router, its
dependency solving and its Request and Response objects, which cost more per
request than parsing a one-row body does (see the README's serving benchmark).
What it answers is what FastAPI's catch-all route answered: the path parsed
with TF Serving's regex (each path once: the result is kept in a bounded
table), the body read up to ``max_body_bytes`` (413 over it), the model server
called, and the JSON answer or ``{"error": "..."}`` in TF Serving's shape,
with the request's metrics.  Other requests (GET, other methods, paths outside
``/v1/``) go on to the app as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from typing import Protocol

from starlette.datastructures import URL
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from include.mlops.serving.errors import HTTP_STATUS, HttpError, PayloadTooLarge, parse_version
from include.mlops.serving.metrics import ServingMetrics
from include.mlops.serving.models import ServingError, invalid

log = logging.getLogger(__name__)

# TF Serving's kPredictionApiGegex (http_rest_api_util.cc).
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_JSON_HEADERS = ((b"content-type", b"application/json"),)
_MAX_CACHED_PATHS = 4096  # paths come from clients: the table of parsed ones must not grow without bound


class ModelApi(Protocol):
    """What this layer calls: the model server (:class:`include.mlops.serving.app.ModelServer`)."""

    metrics: ServingMetrics

    async def predict(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes: ...

    async def classify_or_regress(
        self, method: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> bytes: ...

    def metric_model_name(self, name: str) -> str: ...


@dataclasses.dataclass(frozen=True, slots=True)
class ApiCall:
    """A parsed POST path: the model, the version or label it names, and the method (lower case)."""

    model_name: str
    version: int | None
    label: str | None
    method: str  # predict, classify or regress
    api: str  # the request_latency API label: Predict, Classify or Regress


def parse_call(path: str) -> ApiCall:
    """``path`` parsed with TF Serving's regex; 400s in its words for a path it does not match."""
    match = PREDICT_PATH.fullmatch(path)
    if match is None:
        raise invalid(f"Malformed request: POST {path}")
    name, version, label, method = match.groups()
    try:
        return ApiCall(name, parse_version(version), label, method.lower(), method.capitalize())
    except ServingError as error:
        raise _NamedError(name, error) from None


class _NamedError(Exception):
    """A path error raised once the model name is known (its request is counted under that name)."""

    def __init__(self, name: str, error: ServingError) -> None:
        super().__init__(error.message)
        self.name = name
        self.error = error


def error_body(error: ServingError) -> tuple[int, bytes, dict[str, str]]:
    """The HTTP status, ``{"error": "..."}`` body and extra headers TF Serving answers ``error`` with."""
    body = json.dumps({"error": error.message}).encode()
    if isinstance(error, HttpError):
        return error.http_status, body, error.headers
    return HTTP_STATUS.get(error.code, 500), body, {}


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before reading it all."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                if int(value) > limit:
                    raise PayloadTooLarge(limit)
            except ValueError:
                raise invalid("Content-Length is not a number") from None
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """A JSON answer with the headers Starlette's Response writes (content-length, content-type, extras)."""
    raw: list[tuple[bytes, bytes]] = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
    if headers:
        raw.extend((key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class PostApi:
    """ASGI middleware: POSTs under ``/v1/`` answered here, everything else passed on to ``app``."""

    def __init__(self, app: ASGIApp, server: ModelApi, max_body_bytes: int) -> None:
        self.app = app
        self.server = server
        self.max_body_bytes = max_body_bytes
        self._calls: dict[str, ApiCall] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"][:4].lower() == "/v1/":
            await self._answer(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _call(self, scope: Scope) -> ApiCall:
        call = self._calls.get(scope["path"])
        if call is None:
            call = parse_call(URL(scope=scope).path)  # the path as FastAPI's route read it
            if len(self._calls) < _MAX_CACHED_PATHS:
                self._calls[scope["path"]] = call
        return call

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        server = self.server
        name = ""
        try:
            try:
                call = self._call(scope)
            except _NamedError as named:
                name = named.name
                raise named.error from None
            name = call.model_name
            body = await read_body(scope, receive, self.max_body_bytes)
            if call.method == "predict":
                content = await server.predict(name, call.version, call.label, body)
            else:
                content = await server.classify_or_regress(call.method, name, call.version, call.label, body)
            server.metrics.record_request(name, "OK")
            server.metrics.record_request_latency(name, call.api, "REST", (time.perf_counter() - start) * 1e6)
        except ServingError as error:
            await self._refuse(scope, send, name, error)
            return
        except Exception as exc:
            # A bug of ours: answer in TF Serving's shape, so the server keeps the client's connection.
            log.exception("POST %s failed", URL(scope=scope).path)
            await self._refuse(scope, send, name, ServingError("INTERNAL", f"{type(exc).__name__}: {exc}"), False)
            return
        await send_json(send, 200, content)

    async def _refuse(self, scope: Scope, send: Send, name: str, error: ServingError, log_it: bool = True) -> None:
        if name:
            self.server.metrics.record_request(self.server.metric_model_name(name), error.code)
        if log_it and error.code in ("INTERNAL", "UNKNOWN"):
            log.error("POST %s failed: %s", URL(scope=scope).path, error.message)
        status, body, headers = error_body(error)
        await send_json(send, status, body, headers)
