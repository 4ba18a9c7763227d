"""The canary route on requests: which version answers, and the per-track counts of what it answered.

A predict, classify or regress request addressed to a model's ``stable`` label,
explicitly (``/v1/models/<name>/labels/stable:predict``) or implicitly (no
version and no label, while that resolves to ``stable``), is answered by the
``canary`` label's version with probability ``weight / 100`` (the route
precomputed by :mod:`include.mlops.serving.canary_weights` when the state was
published).  Requests addressed to a version number or to ``labels/canary``
are never re-routed.  In the ``tfserving`` behaviour a request without a version
or label gets the highest loaded version, as in TF Serving, so only
``labels/stable`` is routed there, as the HTTPRoute does on Kubernetes.

The track of a request is the label that answered it (``stable`` or
``canary``); requests addressed to a version number, or to other labels, have
none.  Requests with a track are counted in the ``mlops_route_*`` series once
their version is known: errors before that (an unknown model or label) are in
``request_count`` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from typing import TYPE_CHECKING

from include.mlops.serving.canary_weights import CANARY, STABLE, TRACKS
from include.mlops.serving.metrics import RowSummary, ServingMetrics
from include.mlops.serving.models import LoadedVersion, ServingError, ServingState

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Routed:
    """The version that answers a request, and its track (None: not a stable or canary request)."""

    loaded: LoadedVersion
    track: str | None


def route(state: ServingState, name: str, version: int | None = None, label: str | None = None) -> Routed:
    """:meth:`ServingState.resolve`, then the canary route for requests addressed to ``stable``."""
    loaded = state.resolve(name, version, label)
    if version is not None:
        return Routed(loaded, None)
    if label is None and state.default_label is not None and state.default_label in state.models[name].labels:
        label = state.default_label  # a request without version or label is addressed to the default label
    if label == STABLE:
        canary = state.routes.get(name)
        if canary is not None and random.random() < canary.share:
            return Routed(canary.canary, CANARY)
    return Routed(loaded, label if label in TRACKS else None)


def counted(metrics: ServingMetrics, routed: Routed) -> contextlib.AbstractContextManager[None]:
    """Count the request run inside on its track: its status, and its latency when it succeeds."""
    if routed.track is None:
        return _NOT_COUNTED
    return _Counted(metrics, routed.loaded.name, routed.track)


_NOT_COUNTED = contextlib.nullcontext()


class _Counted:
    """:func:`counted` for a request with a track (a class: a generator-based context costs more per request)."""

    __slots__ = ("metrics", "name", "start", "track")

    def __init__(self, metrics: ServingMetrics, name: str, track: str) -> None:
        self.metrics = metrics
        self.name = name
        self.track = track
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        if kind is None:
            self.metrics.route.record_request(self.name, self.track, "OK", (time.perf_counter() - self.start) * 1e6)
        elif isinstance(error, ServingError):
            self.metrics.route.record_request(self.name, self.track, error.code)
        elif isinstance(error, Exception):  # not a cancellation: the request is not answered then
            self.metrics.route.record_request(self.name, self.track, "INTERNAL")


def count_rows(metrics: ServingMetrics, routed: Routed, output: np.ndarray | None) -> None:
    """Add a successful predict's output rows to its track's prediction series.

    ``output`` is the signature's first output tensor (the one the caller picks, as the
    prediction log does) when it has several.
    """
    if routed.track is None or output is None:
        return
    try:
        summary = summarise_rows(output)
    except Exception:  # the answer is already written: a metric must not turn it into an error
        log.exception("Counting the output rows of %s on track %s failed", routed.loaded.name, routed.track)
        return
    if summary is not None:
        metrics.route.record_rows(routed.loaded.name, routed.track, summary)


def summarise_rows(output: np.ndarray) -> RowSummary | None:
    """Per row: the argmax of a multi-value row, or the single value; NaN/inf rows apart (None: not numeric)."""
    import numpy as np

    output = np.asarray(output)  # a model may answer a bare scalar (bytes, a Python number)
    if output.dtype.kind not in "iufb" or output.size == 0:
        return None
    if output.size <= _FEW_VALUES and (output.shape[0] if output.ndim else 1) < _FEW_ROWS:
        return _summarise_few_rows(output)
    return _summarise_many_rows(output)


def _summarise_many_rows(output: np.ndarray) -> RowSummary:
    """:func:`summarise_rows` of a numeric output, with numpy."""
    import numpy as np

    values = output.astype(np.float64)
    values = values.reshape(values.shape[0] if values.ndim else 1, -1)
    finite = np.isfinite(values).all(axis=1)
    good = values[finite]
    nonfinite = int(values.shape[0] - good.shape[0])
    if values.shape[1] > 1:
        counts = np.bincount(good.argmax(axis=1), minlength=1)
        classes = {str(index): int(count) for index, count in enumerate(counts) if count}
        return RowSummary(classes=classes, nonfinite=nonfinite)
    column = good[:, 0]
    return RowSummary(
        rows=int(column.shape[0]),
        value_sum=float(column.sum()),
        squares=float(np.square(column).sum()),
        nonfinite=nonfinite,
    )


# Small outputs are summarised in plain Python, without numpy's cost per call.  Below this many rows numpy
# adds the values one by one (its pairwise sum starts at 8), so Python's sums are the same.
_FEW_ROWS = 8
_FEW_VALUES = 256


def _summarise_few_rows(output: np.ndarray) -> RowSummary:
    """:func:`summarise_rows` of a small numeric output (under ``_FEW_ROWS`` rows), in plain Python."""
    rows = output.shape[0] if output.ndim else 1
    values = [float(v) for v in output.reshape(-1).tolist()]  # as astype(float64): ints and bools too
    width = len(values) // rows
    good = [row for row in (values[i * width : (i + 1) * width] for i in range(rows)) if all(map(math.isfinite, row))]
    nonfinite = rows - len(good)
    if width > 1:
        counts = [0] * width
        for row in good:
            counts[row.index(max(row))] += 1  # the first maximum, as argmax picks it
        return RowSummary(classes={str(i): count for i, count in enumerate(counts) if count}, nonfinite=nonfinite)
    value_sum = squares = 0.0
    for (value,) in good:
        value_sum += value
        squares += value * value
    return RowSummary(rows=len(good), value_sum=value_sum, squares=squares, nonfinite=nonfinite)
