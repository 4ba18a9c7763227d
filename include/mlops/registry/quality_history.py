"""The quality history plot: the gate's metrics across every run of a lifecycle DAG, deployed versions marked.

Rendered on the server with matplotlib (Agg) to a PNG.  With 1,000 runs that
takes about a second, far longer than the page's other work, so the page
links the image rather than inlining it, and the last images are kept by a
key of the content they show (which is also their ETag).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

# Colours and markers by run type, so that nightly, manual and backfill runs read apart in grey print too.
_STYLES = {
    "scheduled": ("#1f77b4", "o", "nightly"),
    "manual": ("#ff7f0e", "s", "manual"),
    "backfill": ("#7f7f7f", "^", "backfill"),
    "asset_triggered": ("#2ca02c", "D", "asset"),
}
_OTHER_STYLE = ("#9467bd", "x", "other")
_CACHE_SIZE = 32
_DPI = 96
# Above this many deployments the version numbers would overlap; the lines stay, the table has the numbers.
_MAX_VERSION_LABELS = 40


@dataclasses.dataclass(frozen=True)
class HistoryPoint:
    """One run on the plot: when its data was, how it ran, the gate's metric values, what it deployed."""

    when: dt.datetime
    run_type: str
    metrics: Mapping[str, float | None]
    passed: bool | None = None
    deployed_version: int | None = None


# Held while rendering too: matplotlib's text layout caches are not thread-safe.
_lock = threading.Lock()
_images: OrderedDict[str, bytes] = OrderedDict()

Bounds = Mapping[str, Mapping[str, Any]]


def plotted_metrics(points: Sequence[HistoryPoint], metrics: Sequence[str]) -> list[str]:
    """The gate metrics that have at least one finite value (one panel each)."""
    return [m for m in metrics if any(_finite(p.metrics.get(m)) for p in points)]


def history_key(points: Sequence[HistoryPoint], metrics: Sequence[str], bounds: Bounds) -> str:
    """A digest of everything the plot shows: equal keys, identical images."""
    content = (
        [(p.when, p.run_type, sorted(p.metrics.items()), p.passed, p.deployed_version) for p in points],
        list(metrics),
        sorted((k, sorted(v.items())) for k, v in bounds.items()),
    )
    return hashlib.sha256(repr(content).encode()).hexdigest()[:32]


def history_png(points: Sequence[HistoryPoint], metrics: Sequence[str], bounds: Bounds) -> bytes | None:
    """A PNG with one panel per gate metric; None when no run has a value to plot."""
    metrics = plotted_metrics(points, metrics)
    if not metrics:
        return None
    key = history_key(points, metrics, bounds)
    with _lock:
        image = _images.get(key)
        if image is not None:
            _images.move_to_end(key)
            return image
        image = _render(points, metrics, bounds)
        _images[key] = image
        while len(_images) > _CACHE_SIZE:
            _images.popitem(last=False)
    return image


def _render(points: Sequence[HistoryPoint], metrics: Sequence[str], bounds: Bounds) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    height = 1.7 * len(metrics) + 1.0
    figure = Figure(figsize=(9, height), dpi=_DPI)
    # Fixed margins: constrained layout measures every text and took longer than drawing the points.
    figure.subplots_adjust(left=0.09, right=0.98, top=1 - 0.45 / height, bottom=0.55 / height, hspace=0.12)
    axes = figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    deployed = [p for p in points if p.deployed_version is not None]
    for ax, metric in zip(axes, metrics, strict=True):
        for run_type in sorted({p.run_type for p in points}):
            colour, marker, label = _STYLES.get(run_type, _OTHER_STYLE)
            shown = [p for p in points if p.run_type == run_type and _finite(p.metrics.get(metric))]
            for failed in (False, True):
                group = [p for p in shown if (p.passed is False) == failed]
                if group:
                    # One Line2D without a line per group (not a scatter of 1,000 artists); failed runs are hollow.
                    ax.plot(
                        [p.when for p in group],
                        [p.metrics[metric] for p in group],
                        linestyle="none",
                        marker=marker,
                        markersize=3.5,
                        color=colour,
                        markerfacecolor="none" if failed else colour,
                        label=f"{label} (gate failed)" if failed else label,
                    )
        for side, style in (("min", "--"), ("max", ":")):
            bound = bounds.get(metric, {}).get(side)
            if _finite(bound):
                ax.axhline(bound, color="#d62728", linestyle=style, linewidth=0.8, label=f"gate {side}")
        if deployed:
            # One collection for every deployment, not a line each (hundreds of versions stay one element).
            ax.vlines(
                [p.when for p in deployed], 0, 1, transform=ax.get_xaxis_transform(), colors="#2ca02c", linewidth=0.7
            )
    if len(deployed) <= _MAX_VERSION_LABELS:
        for point in deployed:
            axes[0].annotate(
                f"v{point.deployed_version}",
                (point.when, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="#2ca02c",
                ha="center",
                va="bottom",
            )
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=7, ncols=8, frameon=False, bbox_to_anchor=(0, 1.0))
    axes[-1].set_xlabel("run date (green lines: versions deployed as stable)")
    locator = AutoDateLocator(maxticks=10)
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
