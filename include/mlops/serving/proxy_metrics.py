"""The request logger's route series: the canary analysis's per-track counts, seen from in front of TF Serving.

Stock TF Serving exports no ``mlops_route_*`` series (:mod:`include.mlops.serving.metrics`), so the request
logger beside it (:mod:`include.mlops.serving.request_logger`) counts them from what passes through, with the
server's own implementation (:class:`~include.mlops.serving.metrics.RouteMetrics`):

* which requests: a ``POST`` to ``:predict``, ``:classify`` or ``:regress`` addressed to ``labels/stable``,
  ``labels/canary`` or to no version and no label (:func:`addressed`).  On Kubernetes the gateway has already
  rewritten the canary share's path to ``labels/canary`` before it reaches the canary pod;
* the track: the path's label, or for a request without one the pod's own track (``--track``, ``stable``
  unless the canary Deployment says ``canary``).  Requests to a version number or another label have none;
* the status: the TF error code the upstream's HTTP status stands for
  (:func:`~include.mlops.serving.errors.code_for_http_status`); the logger's own 503 and 504 (TF Serving
  unreachable or too slow) are ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED``;
* counts and latency (the upstream round trip, successful requests only) are recorded inline, exactly; the
  prediction series come from the response body on the request log's worker thread
  (:mod:`include.mlops.serving.proxy_log`), so under overload a full queue may leave rows out (counted in
  its ``dropped``), which shifts none of the ratios the analysis judges.

A model's series start at zero on its track the first time a request for it passes (Prometheus's
``increase()`` then sees every later one).  A ``404`` for a model name no answer but a 404 has named yet is
counted under ``<unknown>``, as the server's request_count does, so a client's typos mint no series.

The metrics page (:func:`merged_exposition`) is TF Serving's exposition followed by these series.
"""

from __future__ import annotations

import dataclasses
import threading

from prometheus_client import CollectorRegistry

from include.mlops.serving.canary_weights import TRACKS
from include.mlops.serving.errors import code_for_http_status
from include.mlops.serving.metrics import UNKNOWN_MODEL, RouteMetrics, exposition
from include.mlops.serving.post_api import PREDICT_PATH

# The logger owns every series of this prefix on its page: an upstream that exports them too (the project's
# own server in its tfserving behaviour) has its lines left out, so that each name appears once.
OWN_PREFIX = b"mlops_route_"


@dataclasses.dataclass(frozen=True, slots=True)
class Addressed:
    """A proxied call the route series count: the path's model, the API method and the track."""

    model_name: str
    method: str  # predict, classify or regress
    track: str


def addressed(method: str, path: str, default_track: str) -> Addressed | None:
    """The route series' view of ``method path``; None when they do not count it."""
    if method != "POST":
        return None
    match = PREDICT_PATH.fullmatch(path)
    if match is None or match[2] is not None:  # not an inference call, or addressed to a version number
        return None
    label = match[3]
    track = default_track if label is None else label
    if track not in TRACKS:
        return None
    return Addressed(match[1], match[4].lower(), track)


class RouteTally:
    """The logger's :class:`RouteMetrics` and the rules above for recording into them."""

    def __init__(self, default_track: str) -> None:
        if default_track not in TRACKS:
            raise ValueError(f"the track must be one of {TRACKS}, got {default_track!r}")
        self.default_track = default_track
        self.metrics = RouteMetrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.metrics)
        self._lock = threading.Lock()
        self._models: set[str] = set()  # names an answer other than 404 has named
        self._started: set[tuple[str, str]] = set()  # (model, track) whose series are at zero or above

    def addressed(self, method: str, path: str) -> Addressed | None:
        return addressed(method, path, self.default_track)

    def count(self, call: Addressed, http_status: int, micros: float) -> None:
        """One answered call: its status, and its latency when it succeeded."""
        status = code_for_http_status(http_status)
        name = self._series_name(call.model_name, status)
        self._start(name, call.track)
        self.metrics.record_request(name, call.track, status, micros if status == "OK" else None)

    def _series_name(self, model_name: str, status: str) -> str:
        with self._lock:
            if status != "NOT_FOUND":
                self._models.add(model_name)
                return model_name
            return model_name if model_name in self._models else UNKNOWN_MODEL

    def _start(self, model_name: str, track: str) -> None:
        key = (model_name, track)
        if key in self._started:
            return
        with self._lock:
            self._started.add(key)
        self.metrics.init([model_name], [track])

    def exposition(self) -> bytes:
        return exposition(self.registry)


def _owned(line: bytes) -> bool:
    if line.startswith(b"#"):
        parts = line.split(None, 3)
        return len(parts) >= 3 and parts[1] in (b"HELP", b"TYPE") and parts[2].startswith(OWN_PREFIX)
    return line.startswith(OWN_PREFIX)


def merged_exposition(upstream: bytes | None, problem: str | None, own: bytes) -> bytes:
    """TF Serving's page (without lines of :data:`OWN_PREFIX`), then the logger's series.

    ``upstream`` None: TF Serving's page could not be read, and ``problem`` says why in a comment, so that
    a scrape still gets the logger's series (the failures of a canary whose server is down among them).
    """
    if upstream is None:
        reason = " ".join((problem or "no answer").split())
        head = f"# The model server's metrics could not be read: {reason}\n".encode()
    else:
        head = b"".join(line + b"\n" for line in upstream.splitlines() if line.strip() and not _owned(line))
    return head + own
