"""The training reference of a model version: per-feature statistics, bins and a sample of its training rows.

Register stores it as ``assets.extra/reference.json`` in every new registry
version, and the drift check compares the served requests with the reference
of the version that served them.

Bins.  ``bin_edges`` lists the finite inner edges ``e1 < ... < ek`` (each
halfway between a quantile of the training rows and the training value below
it, deduplicated); the bins are ``(-inf, e1), [e1, e2), ...,
[ek, +inf)``, so every value falls in one (:func:`bin_index` is the one rule
that places a value) and the outer bins are open: a value just outside the
training range (a rounded request that becomes a float32 just below the
training minimum) lands in the outer bin, beside the training rows it is
closest to, rather than in an empty bin of its own.  How far the window's
values leave ``[min, max]`` is reported separately (the out-of-range share).
A constant feature has one bin, and a low-cardinality one (digits' pixels)
fewer than ``bins``.

Kinds and sample (format 2).  A feature with at most ``CATEGORICAL_MAX_VALUES``
distinct training values, or integer-valued with at most ``INTEGER_MAX_VALUES``,
is ``categorical`` (the drift check tests it with a chi-square test, and the
GX suite gives it no quantile expectations); any other is ``numeric`` (a
two-sample Kolmogorov-Smirnov test).  ``sample`` holds at most
``sample_rows`` training rows (a seeded uniform sample, all of them when there
are fewer) per feature, for those tests.  A format-1 reference (before the
sample) reads back with its bins opened the same way and without a sample.

Values are taken as float32, the dtype the model is trained on and the
prediction log stores, so that a served copy of a training row lands in the
same bin and within the same range as the row itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops import artifacts
from include.mlops.registry.filesystem import METADATA_DIR

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# Where a registry version keeps it, relative to the version folder (beside metrics.json and lineage.json).
REFERENCE_FILE = f"{METADATA_DIR}/reference.json"
REFERENCE_FORMAT = 2
SAMPLE_SEED = 20261128
CATEGORICAL_MAX_VALUES = 10
INTEGER_MAX_VALUES = 32
CATEGORICAL = "categorical"
# A value this close to a training value (relative to the feature's training range) is taken as that value.
SNAP_RELATIVE = 1e-6
NUMERIC = "numeric"
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def as_float32(values: Any) -> np.ndarray:
    """``values`` rounded to float32 (what is served and logged) and held as float64 for the arithmetic."""
    import numpy as np

    return np.asarray(values, dtype=np.float32).astype(np.float64)


def bin_edges(column: np.ndarray, bins: int) -> list[float]:
    """The finite edges of one feature's bins (see the module docstring) for the float32-rounded ``column``."""
    import numpy as np

    distinct = np.unique(column)
    inner = np.unique(np.quantile(column, np.arange(1, bins) / bins, method="inverted_cdf"))
    inner = inner[inner > distinct[0]]
    # Each edge sits halfway between a quantile (a training value) and the training value below it, so every bin
    # holds training rows and a request rounded by its client stays in its training value's bin.
    below = distinct[np.searchsorted(distinct, inner) - 1]
    edges = ((below + inner) / 2).astype(np.float32).astype(np.float64)
    edges = np.where(edges > below, edges, inner)
    return [float(e) for e in edges]


def feature_kind(column: np.ndarray) -> str:
    """``categorical`` or ``numeric`` (see the module docstring) for one feature's training values."""
    import numpy as np

    distinct = np.unique(column)
    if len(distinct) <= CATEGORICAL_MAX_VALUES:
        return CATEGORICAL
    if len(distinct) <= INTEGER_MAX_VALUES and bool(np.all(distinct == np.round(distinct))):
        return CATEGORICAL
    return NUMERIC


def shortest_float32(values: np.ndarray) -> list[float]:
    """``values`` as floats written with the fewest digits that read back as the same float32 (a smaller JSON)."""
    import numpy as np

    return [float(np.format_float_positional(v, unique=True, trim="-")) for v in values.astype(np.float32)]


def bin_index(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """The bin (0 .. len(edges)) of each value: ``searchsorted(..., side="right")`` gives ``[e_i, e_i+1)`` bins."""
    import numpy as np

    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")


def build_reference(
    frame: pd.DataFrame,
    features: Sequence[str],
    bins: int,
    *,
    snapshot_sha256: str | None = None,
    sample_rows: int = 10_000,
) -> dict[str, Any]:
    """Statistics and bins of each of ``features`` over the (training) rows of ``frame``.

    Returns ``{"format", "rows", "bins", "snapshot_sha256", "quantiles",
    "sample": {"rows", "seed"}, "features": {name: {"kind", "min", "max", "mean",
    "std", "quantiles": {"0.5": ...}, "bin_edges", "bin_weights", "sample"}}}``
    (JSON-able).  Raises ``ValueError`` for no
    rows, a missing column or a non-finite value (training rejects those too).
    """
    import numpy as np

    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"cannot build a training reference: columns {missing} are missing from the rows")
    if len(frame) == 0:
        raise ValueError("cannot build a training reference from no rows")
    if bins < 2:
        raise ValueError(f"a training reference needs at least 2 bins, got {bins}")
    values = as_float32(frame[list(features)].to_numpy(dtype=np.float64))
    if not np.isfinite(values).all():
        bad = [f for i, f in enumerate(features) if not np.isfinite(values[:, i]).all()]
        raise ValueError(f"cannot build a training reference: features {bad} hold NaN or infinite values")
    quantiles = np.quantile(values, QUANTILES, axis=0)
    if len(values) > sample_rows:
        picked = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(values), size=sample_rows, replace=False))
        sample = values[picked]
    else:
        sample = values
    stats: dict[str, Any] = {}
    for i, name in enumerate(features):
        column = values[:, i]
        edges = bin_edges(column, bins)
        counts = np.bincount(bin_index(column, edges), minlength=len(edges) + 1)
        stats[name] = {
            "kind": feature_kind(column),
            "min": float(column.min()),
            "max": float(column.max()),
            "mean": float(column.mean()),
            "std": float(column.std()),
            "quantiles": {str(q): float(quantiles[j, i]) for j, q in enumerate(QUANTILES)},
            "bin_edges": edges,
            "bin_weights": (counts / len(column)).tolist(),
            "sample": shortest_float32(sample[:, i]),
        }
    return {
        "format": REFERENCE_FORMAT,
        "rows": len(values),
        "bins": bins,
        "snapshot_sha256": snapshot_sha256,
        "quantiles": list(QUANTILES),
        "sample": {"rows": len(sample), "seed": SAMPLE_SEED},
        "features": stats,
    }


def write_reference(path: str | os.PathLike[str], reference: Mapping[str, Any]) -> Path:
    return artifacts.atomic_write_json(path, dict(reference))


def read_reference(version_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The reference stored in a registry version folder, or None when it has none (or an unreadable one)."""
    path = Path(version_dir) / REFERENCE_FILE
    try:
        reference = artifacts.read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(reference, dict) or not isinstance(reference.get("features"), dict):
        return None
    if reference.get("format", 1) == 1:
        reference = open_outer_bins(reference)
    return reference


def open_outer_bins(reference: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 reference with its bins as format 2 has them: its first and last edges (the training minimum and
    just above its maximum) dropped, their empty outer bins merged into the training bins beside them."""
    features = {}
    for name, stats in reference["features"].items():
        edges, weights = list(stats["bin_edges"]), list(stats["bin_weights"])
        if len(edges) >= 2 and len(weights) == len(edges) + 1:
            inner = weights[1:-1]
            inner[0] += weights[0]
            inner[-1] += weights[-1]
            stats = {**stats, "bin_edges": edges[1:-1], "bin_weights": inner}
        features[name] = stats
    return {**reference, "features": features}


def has_sample(reference: Mapping[str, Any]) -> bool:
    """Whether ``reference`` carries the training sample and feature kinds the statistical tests need."""
    return all("sample" in stats and "kind" in stats for stats in reference["features"].values())
