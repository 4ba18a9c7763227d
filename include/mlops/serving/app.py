"""The HTTP front of the local model server: TF Serving's REST API on FastAPI.

Routes (TF Serving's, matched case-insensitively with the same regexes):

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    row or columnar predict
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:classify   tf.Example classification
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:regress    tf.Example regression
    GET  /monitoring/prometheus/metrics                          Prometheus exposition

Responses are the JSON that TF Serving writes (status and metadata are
printed from TF Serving's own protos), errors are ``{"error": "..."}`` with
the HTTP status TF Serving maps the error code to, plus 413 for a body over
``max_body_bytes``, 404 for unknown paths and 405 for other methods (never a
redirect).  Parsing the JSON body, the model call and writing the answer run
in a worker thread, off the event loop, so big bodies and slow models do not
stall status requests or other clients; only a small predict to a version
whose calls have been quick runs on the event loop itself, which saves the hop
there and back (see :class:`include.mlops.serving.workers.InlineGate`).

A request that names no version and no label is answered by the ``stable``
label's version while the model has one (see ``ServingState.resolve``); with
``behaviour="tfserving"`` by the highest loaded version, as TF Serving does (see
:mod:`include.mlops.serving.tfserving_mode` for everything that mode changes).  Requests addressed to
``stable`` may be answered by ``canary`` instead, by the weight in ``route.json``
(:mod:`include.mlops.serving.route`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.mlops.serving import classify
from include.mlops.serving.errors import HttpError, model_error, parse_version
from include.mlops.serving.metrics import CONTENT_TYPE, METRICS_PATH, UNKNOWN_MODEL, ServingMetrics
from include.mlops.serving.models import (
    DEFAULT_BEHAVIOUR,
    LoadedVersion,
    ServingError,
    ServingState,
    invalid,
    not_found,
)
from include.mlops.serving.post_api import PostApi, error_body
from include.mlops.serving.predict_json import format_predict_response, parse_predict_request
from include.mlops.serving.predlog import PredictionLogger
from include.mlops.serving.route import Routed, count_rows, counted, route
from include.mlops.serving.tfserving_mode import create_model_manager
from include.mlops.serving.workers import InlineGate, WorkerThreads

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

# TF Serving's kModelStatusApiRegex (http_rest_api_util.cc); its predict regex is post_api.PREDICT_PATH.
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)


def method_not_allowed(method: str, path: str, allow: str) -> HttpError:
    return HttpError(
        "UNIMPLEMENTED",
        f"Method {method} is not allowed on {path}; this path takes {allow} "
        "(GET for status, metadata and metrics, POST for :predict, :classify and :regress)",
        405,
        {"Allow": allow},
    )


def unknown_path(path: str) -> ServingError:
    return not_found(f"Unknown path {path}: the API is under /v1/models/ and {METRICS_PATH}")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Everything the server can be told (see ``python -m include.mlops.serving --help``)."""

    registry_root: Path
    poll_seconds: float = 1.0
    max_body_bytes: int = 16 * 1024 * 1024
    verify_checksums: bool = True
    # "default" (kinder than TF Serving where docs/serving.md says) or "tfserving" (TF Serving's semantics).
    behaviour: str = DEFAULT_BEHAVIOUR
    # Used by the tfserving behaviour only: TF Serving's flags of the same names.
    prefer_tflite_model: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    file_system_poll_seconds: float = 1.0
    predlog_root: Path | None = None  # None: no prediction log
    predlog_sample_rate: float = 0.1
    predlog_queue_size: int = 1000
    predlog_max_rows_per_file: int = 10_000
    predlog_max_files: int = 50
    predlog_flush_seconds: float = 60.0


class ModelServer:
    """The server's parts (models, metrics, prediction log) and the request logic, free of HTTP details."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics()
        self.models = create_model_manager(
            settings.behaviour,
            settings.registry_root,
            metrics=self.metrics,
            poll_seconds=settings.poll_seconds,
            file_system_poll_seconds=settings.file_system_poll_seconds,
            verify_checksums=settings.verify_checksums,
            prefer_tflite_model=settings.prefer_tflite_model,
            allow_version_labels_for_unavailable_models=settings.allow_version_labels_for_unavailable_models,
        )
        self.predlog = (
            PredictionLogger.from_settings(settings, self.metrics) if settings.predlog_root is not None else None
        )
        self._workers = WorkerThreads()
        self.inline = InlineGate()

    def start(self) -> None:
        if self.predlog is not None:
            self.predlog.start()
        self.models.start()

    def stop(self) -> None:
        self._workers.stop()
        self.models.stop()
        if self.predlog is not None:
            self.predlog.stop()

    # ------------------------------------------------------------------ status and metadata

    def model_status(self, name: str, version: int | None, label: str | None) -> str:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        statuses = self.models.state.version_statuses(name, version, label)
        response = get_model_status_pb2.GetModelStatusResponse()
        code_enum = response.model_version_status.add().status.DESCRIPTOR.fields_by_name["error_code"].enum_type
        del response.model_version_status[:]
        for status in statuses:
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.SetInParent()
            entry.status.error_code = code_enum.values_by_name[status.error_code].number
            entry.status.error_message = status.error_message
        return json_format.MessageToJson(response, always_print_fields_with_no_presence=True, indent=1)

    def model_metadata(self, name: str, version: int | None, label: str | None) -> str:
        from google.protobuf import json_format
        from tensorflow_serving.apis import model_pb2

        loaded = self.models.state.resolve(name, version, label)
        spec = model_pb2.ModelSpec(name=name)
        spec.version.value = loaded.version
        options = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True}
        payload = {
            "model_spec": json_format.MessageToDict(spec, **options),
            "metadata": {"signature_def": json_format.MessageToDict(loaded.signature_def_map, **options)},
        }
        return json.dumps(payload, indent=1)

    def metric_model_name(self, name: str) -> str:
        """``name`` if the server serves it, else one fixed value, so clients cannot grow the metrics' label sets."""
        return name if name in self.models.state.models else UNKNOWN_MODEL

    # ------------------------------------------------------------------ predict

    async def predict(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        state: ServingState = self.models.state  # read once: the whole request runs on one snapshot
        routed = route(state, name, version, label)
        with counted(self.metrics, routed):
            if self.inline.allows(routed.loaded, len(body)):
                return self._predict_blocking(routed, label, body)
            return await self._in_worker(routed.loaded, self._predict_blocking, routed, label, body)

    async def _in_worker(self, loaded: LoadedVersion, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread, counted on ``loaded`` while it runs (see ``InlineGate.allows``)."""
        loaded.worker_calls += 1  # on the event loop only, so the count needs no lock
        try:
            return await self._workers.run(fn, *args)
        finally:
            loaded.worker_calls -= 1

    def _predict_blocking(self, routed: Routed, label: str | None, body: bytes) -> bytes:
        """Parse, run and answer one predict request, timed for the inline gate (see :meth:`predict`)."""
        start = time.perf_counter()
        try:
            return self._predict(routed, label, body)
        finally:
            self.inline.record(routed.loaded, len(body), (time.perf_counter() - start) * 1e6)

    def _predict(self, routed: Routed, label: str | None, body: bytes) -> bytes:
        """The predict itself: parse the body, call the model, log a sample, write the answer, count its rows."""
        loaded = routed.loaded
        plan, feeds, columnar = parse_predict_request(body, loaded)
        first = next(iter(feeds.values()))
        rows = first.shape[0] if first.ndim else 1
        outputs = self._run(loaded, "Predict", plan.signature, feeds, rows)
        output = next(iter(outputs.values()), None)
        # The log holds float rows: numeric single-input, single-output models only (not strings or scalars).
        if (
            self.predlog is not None
            and len(feeds) == 1
            and len(outputs) == 1
            and first.ndim >= 1
            and first.dtype.kind in "iufb"
            and output is not None
            and output.ndim >= 1
            and output.dtype.kind in "iufb"
        ):
            self.predlog.offer(loaded.name, loaded.version, first, output, label=label)
        response = format_predict_response(outputs, plan.outputs, columnar)
        count_rows(self.metrics, routed, output)
        return response

    def _run(
        self, loaded: LoadedVersion, api: str, signature: str, feeds: Mapping[str, np.ndarray], rows: int
    ) -> dict[str, np.ndarray]:
        """Call the model, its own argument errors as 400s; record the runtime latency and examples."""
        start = time.perf_counter()
        try:
            outputs = loaded.run(signature, feeds)
        except Exception as exc:
            raise model_error(exc) from None
        self.metrics.record_runtime_latency(loaded.name, api, "TF1", (time.perf_counter() - start) * 1e6)
        self.metrics.record_examples(loaded.name, rows)
        return outputs

    # ------------------------------------------------------------------ classify and regress

    async def classify_or_regress(
        self, method: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> bytes:
        routed = route(self.models.state, name, version, label)
        with counted(self.metrics, routed):
            return await self._in_worker(routed.loaded, self._classify_or_regress_blocking, method, routed.loaded, body)

    def _classify_or_regress_blocking(self, method: str, loaded: LoadedVersion, body: bytes) -> bytes:
        import numpy as np

        try:
            signature, examples = classify.parse_examples(body, method)
        except RecursionError:
            raise invalid("JSON Value: the request nests lists or objects too deeply for a tf.Example") from None
        classify.check_signature(loaded, signature, method)
        feeds = {classify.INPUTS: np.asarray(examples, dtype=object)}
        outputs = self._run(loaded, method.capitalize(), signature, feeds, len(examples))
        if method == classify.CLASSIFY:
            return classify.classification_response(outputs, len(examples))
        return classify.regression_response(outputs, len(examples))


# --------------------------------------------------------------------------- HTTP


def _json_response(text: str | bytes, status: int = 200) -> Response:
    return Response(content=text, status_code=status, media_type="application/json")


def _error_response(error: ServingError) -> Response:
    status, body, headers = error_body(error)
    response = _json_response(body, status)
    response.headers.update(headers)
    return response


def create_app(settings: ServerSettings, server: ModelServer | None = None) -> FastAPI:
    """The ASGI app; it starts the model poller and the prediction log writer on startup."""
    server = server or ModelServer(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(server.start)
        try:
            yield
        finally:
            await run_in_threadpool(server.stop)

    app = FastAPI(
        title="Local model server (TF Serving REST API)",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # TF Serving answers a wrong path with an error, never with a redirect
    )
    app.state.server = server

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        # What the router refuses by itself (e.g. a method no route lists) still gets TF Serving's error shape.
        if exc.status_code == 405:
            return _error_response(method_not_allowed(request.method, request.url.path, "GET, POST"))
        if exc.status_code == 404:
            return _error_response(unknown_path(request.url.path))
        return _json_response(json.dumps({"error": str(exc.detail)}), exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        # Last resort outside the API route; Starlette re-raises after this response, so uvicorn logs it.
        return _error_response(ServingError("INTERNAL", f"{type(exc).__name__}: {exc}"))

    @app.get(METRICS_PATH)
    async def metrics() -> Response:
        return Response(content=server.metrics.exposition(), media_type=CONTENT_TYPE)

    app.add_middleware(PostApi, server=server, max_body_bytes=settings.max_body_bytes)

    # One catch-all route parsed with TF Serving's own (case-insensitive) regexes, as TF Serving does.
    # It takes every common method so that the answer (404 or 405) and its shape are decided here.
    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    async def v1(request: Request) -> Response:
        start = time.perf_counter()
        path = request.url.path
        try:
            if path == METRICS_PATH:
                raise method_not_allowed(request.method, path, "GET")
            if not path.lower().startswith("/v1/"):
                raise unknown_path(path)
            if request.method not in ("GET", "POST"):
                raise method_not_allowed(request.method, path, "GET, POST")
            # POSTs under /v1/ never get here: PostApi (added above) answers them before the router.
            match = _STATUS_PATH.fullmatch(path)
            if match is None:
                raise invalid(f"Malformed request: GET {path}")
            model_name, version_str, label, subresource = match.groups()
            if not model_name:
                raise invalid("Missing model name in request.")
            version = parse_version(version_str)
            if subresource:
                text = server.model_metadata(model_name, version, label)
                api = "GetModelMetadata"
            else:
                text = server.model_status(model_name, version, label)
                api = "GetModelStatus"
            server.metrics.record_request_latency(model_name, api, "REST", (time.perf_counter() - start) * 1e6)
            return _json_response(text)
        except ServingError as error:
            if error.code in ("INTERNAL", "UNKNOWN"):
                log.error("%s %s failed: %s", request.method, path, error.message)
            return _error_response(error)
        except Exception as exc:
            # A bug of ours: answer here, in TF Serving's shape, so the server keeps the client's connection
            # (an exception that escapes the app makes uvicorn drop it).
            log.exception("%s %s failed", request.method, path)
            return _error_response(ServingError("INTERNAL", f"{type(exc).__name__}: {exc}"))

    return app
