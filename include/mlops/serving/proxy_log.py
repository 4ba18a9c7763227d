"""The request logger's work off the request path: a proxied ``:predict`` call to prediction log rows.

The proxy (:mod:`include.mlops.serving.request_logger`) hands each successful
``:predict`` call that is sampled for the log or counted on a track
(:mod:`include.mlops.serving.proxy_metrics`) to :meth:`RequestLog.offer` as a
:class:`Capture` (the bodies as they went over the wire), which puts it on a
bounded queue without blocking: when the queue is full the call is dropped and
counted.  A worker thread then, for each capture:

* on a track: adds the response's first output tensor to the route's
  prediction series (:func:`first_output`, summarised as the server does);

* decodes the bodies (identity or gzip) and reads the request's rows and the
  response's outputs from TF Serving's JSON, row (``instances`` /
  ``predictions``) or columnar (``inputs`` / ``outputs``) format; as on the
  project's server, only a single numeric input and a single numeric output
  are logged (:func:`rows_of`);
* finds the version that answered: the path's version, else the version the
  upstream's metadata API names for the path's label, or for the model alone
  (TF Serving's default: the highest loaded version), cached for a few
  seconds (:class:`VersionResolver`).  A label that moves within that time may
  log a few rows under the version it left: the drift step judges rows by
  version, and a deploy moves a label once;
* offers the rows to the same :class:`PredictionLogger` as the server, so the
  log's files, columns and rotation are the server's.

A call whose rows cannot be read or whose version cannot be found is skipped
and counted; the log never holds a row without its version (the drift step
judges each row against its version's training reference).
"""

from __future__ import annotations

import gzip
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from include.mlops.serving.metrics import RouteMetrics
from include.mlops.serving.predlog import PredictionLogger
from include.mlops.serving.route import summarise_rows

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_GZIP = frozenset({"gzip", "x-gzip"})
_IDENTITY = frozenset({"", "identity"})


@dataclass(frozen=True)
class Capture:
    """One successful ``:predict`` call as it went over the wire."""

    model_name: str
    version: int | None  # from the path, when the call named one
    label: str | None  # from the path, when the call named one
    request_body: bytes
    response_body: bytes
    request_encoding: str | None = None  # Content-Encoding of each body
    response_encoding: str | None = None
    track: str | None = None  # the route series' track, when they count the call
    logged: bool = True  # drawn for the prediction log


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """``body`` without its Content-Encoding (identity or gzip; anything else is a ValueError)."""
    name = (encoding or "").strip().lower()
    if name in _IDENTITY:
        return body
    if name in _GZIP:
        return gzip.decompress(body)
    raise ValueError(f"cannot read a body with Content-Encoding {encoding!r}")


def _one_tensor(value: Any) -> Any:
    """A columnar value: the tensor itself, the only tensor of a one-key object, or None for several."""
    if isinstance(value, dict):
        return next(iter(value.values())) if len(value) == 1 else None
    return value


def _row_inputs(instances: Any) -> Any:
    """Row-format inputs as one batch: plain rows as they are, named rows of one input by that input."""
    if not isinstance(instances, list) or not instances:
        return None
    first = instances[0]
    if not isinstance(first, dict):
        return instances
    if len(first) != 1:
        return None  # several named inputs: not one tensor
    (key,) = first
    if not all(isinstance(row, dict) and set(row) == {key} for row in instances):
        return None
    return [row[key] for row in instances]


def _numeric(value: Any) -> np.ndarray | None:
    """A batch of numbers (at least one dimension) as an array; None for strings, objects or ragged lists."""
    import numpy as np

    if value is None:
        return None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return None
    return array if array.ndim >= 1 and array.dtype.kind in "iufb" else None


def rows_of(request: Any, response: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(inputs, outputs)`` of one answered predict call, or None when it is not loggable.

    Loggable, as on the project's server: one numeric input and one numeric output, with as many output rows
    as input rows.
    """
    if not isinstance(request, dict) or not isinstance(response, dict):
        return None
    if "instances" in request:
        inputs, outputs = _row_inputs(request["instances"]), response.get("predictions")
    elif "inputs" in request:
        inputs, outputs = _one_tensor(request["inputs"]), _one_tensor(response.get("outputs"))
    else:
        return None
    input_rows, output_rows = _numeric(inputs), _numeric(outputs)
    if input_rows is None or output_rows is None or len(input_rows) != len(output_rows):
        return None
    return input_rows, output_rows


def first_output(response: Any) -> Any:
    """The first output tensor of a predict answer (as the server counts it), or None if there is none."""
    if not isinstance(response, dict):
        return None
    if "predictions" in response:
        rows = response["predictions"]
        if isinstance(rows, list) and rows and all(isinstance(row, dict) and row for row in rows):
            key = next(iter(rows[0]))
            return [row.get(key) for row in rows]
        return rows
    outputs = response.get("outputs")
    return next(iter(outputs.values()), None) if isinstance(outputs, dict) else outputs


class VersionResolver:
    """The version a call by label or by model name was answered by, from the upstream's metadata API."""

    def __init__(self, upstream: str, *, cache_seconds: float = 5.0, timeout_seconds: float = 5.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.cache_seconds = cache_seconds
        self._client = httpx.Client(timeout=timeout_seconds)
        self._cache: dict[tuple[str, str | None], tuple[float, int | None]] = {}

    def close(self) -> None:
        self._client.close()

    def resolve(self, model_name: str, version: int | None, label: str | None) -> int | None:
        """``version`` when given; else the version the label (or the model's default) names, None if unknown."""
        if version is not None:
            return version
        key = (model_name, label)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        found = self._ask(model_name, label)
        self._cache[key] = (now, found)
        return found

    def _ask(self, model_name: str, label: str | None) -> int | None:
        # The metadata API names the version that answers, as the deploy step reads it (docs/serving.md): TF
        # Serving's status API ignores a label and lists every version.
        url = f"{self.upstream}/v1/models/{quote(model_name, safe='')}"
        if label is not None:
            url += f"/labels/{quote(label, safe='')}"
        url += "/metadata"
        try:
            response = self._client.get(url)
            response.raise_for_status()
            return int(response.json()["model_spec"]["version"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("Cannot tell which version of %s answered (GET %s: %s)", model_name, url, exc)
            return None


_STOP: Any = object()


class RequestLog:
    """The bounded hand-off from the proxy to the prediction log (see the module docstring)."""

    def __init__(
        self,
        predlog: PredictionLogger,
        resolver: VersionResolver,
        queue_size: int = 1000,
        route_metrics: RouteMetrics | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"the request logger's queue_size must be at least 1, got {queue_size}")
        self.predlog = predlog
        self.resolver = resolver
        self.route_metrics = route_metrics
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.dropped = 0  # captures the full queue refused
        self.skipped = 0  # logged captures without loggable rows or a known version

    def sampled(self) -> bool:
        """Draw whether the next call is logged (the prediction log's sample rate)."""
        return self.predlog.sampled()

    def offer(self, capture: Capture) -> bool:
        """Queue one drawn call; never blocks and never raises. Returns whether it was queued."""
        try:
            self._queue.put_nowait(capture)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("The request log queue is full: %d calls dropped so far", self.dropped)
            return False

    def start(self) -> None:
        self.predlog.start()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Log what is queued, write it, and stop."""
        if self._thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                log.warning("The request log did not drain in %.0f s; stopping without the rest", timeout)
            self._thread.join(timeout=timeout)
            self._thread = None
        self.predlog.stop(timeout=timeout)
        self.resolver.close()

    def _run(self) -> None:
        while (capture := self._queue.get()) is not _STOP:
            try:
                if not self._log(capture):
                    self.skipped += 1
            except Exception:  # a bad capture must not stop the worker
                self.skipped += 1
                log.exception("Could not log a call to %s", capture.model_name)

    def _log(self, capture: Capture) -> bool:
        """Count the capture's rows on its track and log them when drawn; False: drawn but not logged."""
        try:
            response = json.loads(decode_body(capture.response_body, capture.response_encoding))
        except (ValueError, OSError, EOFError) as exc:
            log.debug("Cannot read the answer to a call to %s: %s", capture.model_name, exc)
            return not capture.logged
        self._count_rows(capture, response)
        if not capture.logged:
            return True
        try:
            request = json.loads(decode_body(capture.request_body, capture.request_encoding))
        except (ValueError, OSError, EOFError) as exc:
            log.debug("Not logging a call to %s: %s", capture.model_name, exc)
            return False
        rows = rows_of(request, response)
        if rows is None:
            return False
        version = self.resolver.resolve(capture.model_name, capture.version, capture.label)
        if version is None:
            return False
        self.predlog.offer(capture.model_name, version, rows[0], rows[1], label=capture.label, drawn=True)
        return True

    def _count_rows(self, capture: Capture, response: Any) -> None:
        if capture.track is None or self.route_metrics is None:
            return
        import numpy as np

        try:
            summary = summarise_rows(np.asarray(first_output(response)))
        except (ValueError, TypeError):  # ragged or not numbers: no prediction series, as on the server
            return
        if summary is not None:
            self.route_metrics.record_rows(capture.model_name, capture.track, summary)
