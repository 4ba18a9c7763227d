"""A request logger in front of TF Serving: the prediction log for a server that writes none.

``python -m include.mlops.serving.request_logger --upstream http://127.0.0.1:8502 --port 8501``

A reverse proxy, KServe's request logger in spirit: every request is sent to
the upstream unchanged (method, path, query, body, headers but the hop-by-hop
ones) and the upstream's answer comes back unchanged (status, body bytes and
headers, errors included).  Only when the upstream cannot be reached does the
proxy answer itself, in TF Serving's error shape ``{"error": "..."}``: 503
when it cannot connect, 504 when it does not answer in time.

Of the ``:predict`` calls the upstream answered with 200, a sample
(``--predlog-sample-rate``, drawn before any work) is handed to
:class:`~include.mlops.serving.proxy_log.RequestLog` after the answer is
built; reading the JSON, finding the version and writing the Parquet files
happen on other threads, so logging adds no work to the request and a full
queue drops the sample (counted), never the request.  The log is the
server's (:mod:`include.mlops.serving.predlog`): the drift step reads both
alike.  gRPC does not pass through here: only REST calls are logged.

It also counts the canary route's per-track series that stock TF Serving
does not export (:mod:`include.mlops.serving.proxy_metrics`; ``--track`` is
the pod's own track), and answers the metrics path itself: TF Serving's
exposition followed by those series.  If TF Serving's page cannot be read,
the answer is still 200 with the logger's series and the reason in a
comment: Prometheus drops every sample of a failed scrape, and the failures
of a canary whose server is down are what the analysis must see.  The pod's
readiness still follows TF Serving (its own container's probe).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from include.mlops.serving.canary_weights import STABLE, TRACKS
from include.mlops.serving.errors import parse_version
from include.mlops.serving.metrics import CONTENT_TYPE, METRICS_PATH
from include.mlops.serving.post_api import PREDICT_PATH
from include.mlops.serving.predlog import PredictionLogger
from include.mlops.serving.predlog import add_arguments as add_predlog_arguments
from include.mlops.serving.proxy_log import Capture, RequestLog, VersionResolver
from include.mlops.serving.proxy_metrics import Addressed, RouteTally, merged_exposition

log = logging.getLogger(__name__)

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection; Host and Content-Length are set per hop.
_NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
# Headers httpx adds to every request by itself; the upstream must see only what the client sent.
_HTTPX_DEFAULT_HEADERS = ("accept", "accept-encoding", "user-agent")


@dataclasses.dataclass(frozen=True)
class LoggerSettings:
    """Everything the request logger can be told (see ``python -m include.mlops.serving.request_logger --help``)."""

    upstream: str
    predlog_root: Path
    predlog_sample_rate: float = 0.1
    predlog_queue_size: int = 1000
    predlog_max_rows_per_file: int = 10_000
    predlog_max_files: int = 50
    predlog_flush_seconds: float = 60.0
    timeout_seconds: float = 60.0
    version_cache_seconds: float = 5.0
    track: str = STABLE  # the pod's track: that of requests addressed to no version or label


def create_request_log(settings: LoggerSettings, tally: RouteTally | None = None) -> RequestLog:
    resolver = VersionResolver(settings.upstream, cache_seconds=settings.version_cache_seconds)
    return RequestLog(
        PredictionLogger.from_settings(settings),
        resolver,
        queue_size=settings.predlog_queue_size,
        route_metrics=None if tally is None else tally.metrics,
    )


def error_response(status: int, message: str) -> Response:
    """The proxy's own answer, in TF Serving's error shape."""
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def _forwarded(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() not in _NOT_FORWARDED]


def _upstream_url(upstream: str, request: Request) -> str:
    """The upstream URL of ``request``: the path as the client wrote it (still percent-encoded) and its query."""
    path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return upstream + path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")


def _capture(
    request: Request, body: bytes, answer: httpx.Response, content: bytes, track: str | None, request_log: RequestLog
) -> Capture | None:
    """A successful ``:predict`` call drawn for the log or counted on a track, as a :class:`Capture`."""
    if request.method != "POST" or answer.status_code != 200:
        return None
    match = PREDICT_PATH.fullmatch(request.url.path)
    if match is None or match[4].lower() != "predict":
        return None
    drawn = request_log.sampled()
    if track is None and not drawn:
        return None
    return Capture(
        model_name=match[1],
        version=parse_version(match[2]),
        label=match[3],
        request_body=body,
        response_body=content,
        request_encoding=request.headers.get("content-encoding"),
        response_encoding=answer.headers.get("content-encoding"),
        track=track,
        logged=drawn,
    )


def _count(tally: RouteTally, call: Addressed | None, status: int, start: float) -> None:
    if call is None:
        return
    try:
        tally.count(call, status, (time.perf_counter() - start) * 1e6)
    except Exception:  # a metric never fails the request
        log.exception("Could not count a call to %s on track %s", call.model_name, call.track)


def create_app(
    settings: LoggerSettings, request_log: RequestLog | None = None, tally: RouteTally | None = None
) -> Starlette:
    """The proxy; its lifespan starts and stops the request log (pass one, or the tally, to share or inspect it)."""
    upstream = settings.upstream.rstrip("/")
    tally = tally or RouteTally(settings.track)
    request_log = request_log or create_request_log(settings, tally)
    client = httpx.AsyncClient(timeout=httpx.Timeout(settings.timeout_seconds, connect=5.0))
    for name in _HTTPX_DEFAULT_HEADERS:
        del client.headers[name]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        request_log.start()
        try:
            yield
        finally:
            await client.aclose()
            request_log.stop()

    async def metrics(_: Request) -> Response:
        page, problem = None, None
        try:
            answer = await client.get(upstream + METRICS_PATH)
            if answer.status_code == 200:
                page = answer.content
            else:
                problem = f"HTTP {answer.status_code} from {upstream}{METRICS_PATH}"
        except httpx.HTTPError as exc:
            problem = f"{upstream}{METRICS_PATH}: {exc!r}"
        return Response(merged_exposition(page, problem, tally.exposition()), media_type=CONTENT_TYPE)

    async def proxy(request: Request) -> Response:
        body = await request.body()
        url = _upstream_url(upstream, request)
        call = tally.addressed(request.method, request.url.path)
        start = time.perf_counter()
        try:
            sent = client.build_request(request.method, url, headers=_forwarded(request.headers.raw), content=body)
            answer = await client.send(sent, stream=True)
            try:
                content = b"".join([chunk async for chunk in answer.aiter_raw()])  # the bytes as sent, undecoded
            finally:
                await answer.aclose()
        except httpx.TimeoutException as exc:
            _count(tally, call, 504, start)
            return error_response(504, f"The model server at {upstream} did not answer in time: {exc!r}")
        except httpx.TransportError as exc:
            _count(tally, call, 503, start)
            return error_response(503, f"The model server at {upstream} cannot be reached: {exc!r}")
        _count(tally, call, answer.status_code, start)
        try:
            capture = _capture(request, body, answer, content, None if call is None else call.track, request_log)
            if capture is not None:
                request_log.offer(capture)
        except Exception:  # logging never fails the request
            log.exception("Could not hand %s %s to the request log", request.method, request.url.path)
        response = Response(content, status_code=answer.status_code)
        # A HEAD answer has no body but says the length of the GET's: keep the upstream's.
        length = answer.headers.get("content-length") if request.method == "HEAD" else str(len(content))
        response.raw_headers = _forwarded(answer.headers.raw)
        if length is not None:
            response.raw_headers.append((b"content-length", length.encode()))
        return response

    routes = [Route(METRICS_PATH, metrics, methods=["GET"]), Route("/{path:path}", proxy, methods=METHODS)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.request_log = request_log
    app.state.tally = tally
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m include.mlops.serving.request_logger",
        description="Proxy TF Serving's REST API unchanged and write the prediction log of the :predict calls.",
    )
    parser.add_argument(
        "--upstream", required=True, help="the model server's REST base URL, e.g. http://127.0.0.1:8502"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 inside a container)")
    parser.add_argument("--port", type=int, default=8501, help="port to listen on")
    parser.add_argument(
        "--track",
        choices=TRACKS,
        default=STABLE,
        help="this pod's track: the route series' track of requests addressed to no version or label",
    )
    parser.add_argument("--timeout-seconds", type=float, default=60.0, help="longest wait for the upstream's answer")
    parser.add_argument(
        "--version-cache-seconds",
        type=float,
        default=5.0,
        help="how long the version a label (or the model name alone) resolves to is reused",
    )
    add_predlog_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    return parser


def settings_from_args(args: argparse.Namespace) -> LoggerSettings:
    """The settings the flags give (each flag is the field of the same name)."""
    from include.mlops.artifacts import artifact_root

    names = {field.name for field in dataclasses.fields(LoggerSettings)}
    given = {name: value for name, value in vars(args).items() if name in names}
    given["predlog_root"] = (args.predlog_root or artifact_root()).resolve()
    return LoggerSettings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    import uvicorn

    settings = settings_from_args(args)
    log.info(
        "Logging requests to %s on http://%s:%d into %s", settings.upstream, args.host, args.port, settings.predlog_root
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        access_log=False,
        # The upstream's Date and Server headers pass through; uvicorn must not add its own.
        server_header=False,
        date_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
