"""The training reference of a model version: per-feature statistics and bins of its training rows.

Register stores it as ``assets.extra/reference.json`` in every new registry
version, and the drift check compares the served requests with the reference
of the version that served them.

Bins.  ``bin_edges`` lists the finite edges ``e0 < e1 < ... < ek``; the bins
are ``(-inf, e0), [e0, e1), ..., [ek, +inf)``, so every value falls in one
(:func:`bin_index` is the one rule that places a value).  ``e0`` is the
training minimum and ``ek`` the smallest float32 above the training maximum,
so the two outer bins hold the values outside the training range (reference
share 0) and the inner ones are the training rows' quantile bins, deduplicated:
a constant feature has one inner bin, and a low-cardinality one (digits'
pixels) fewer than ``bins``.

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
REFERENCE_FORMAT = 1
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def as_float32(values: Any) -> np.ndarray:
    """``values`` rounded to float32 (what is served and logged) and held as float64 for the arithmetic."""
    import numpy as np

    return np.asarray(values, dtype=np.float32).astype(np.float64)


def bin_edges(column: np.ndarray, bins: int) -> list[float]:
    """The finite edges of one feature's bins (see the module docstring) for the float32-rounded ``column``."""
    import numpy as np

    low, high = float(column.min()), float(column.max())
    above_max = float(np.nextafter(np.float32(high), np.float32(np.inf)))
    inner = np.quantile(column, np.arange(1, bins) / bins, method="inverted_cdf")
    # Quantile edges are values of the data, so every inner bin holds at least one training row.
    inner = np.unique(inner[(inner > low) & (inner <= high)])
    return [low, *(float(e) for e in inner), above_max]


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
) -> dict[str, Any]:
    """Statistics and bins of each of ``features`` over the (training) rows of ``frame``.

    Returns ``{"format", "rows", "bins", "snapshot_sha256", "quantiles",
    "features": {name: {"min", "max", "mean", "std", "quantiles": {"0.5": ...},
    "bin_edges", "bin_weights"}}}`` (JSON-able).  Raises ``ValueError`` for no
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
    stats: dict[str, Any] = {}
    for i, name in enumerate(features):
        column = values[:, i]
        edges = bin_edges(column, bins)
        counts = np.bincount(bin_index(column, edges), minlength=len(edges) + 1)
        stats[name] = {
            "min": float(column.min()),
            "max": float(column.max()),
            "mean": float(column.mean()),
            "std": float(column.std()),
            "quantiles": {str(q): float(quantiles[j, i]) for j, q in enumerate(QUANTILES)},
            "bin_edges": edges,
            "bin_weights": (counts / len(column)).tolist(),
        }
    return {
        "format": REFERENCE_FORMAT,
        "rows": len(values),
        "bins": bins,
        "snapshot_sha256": snapshot_sha256,
        "quantiles": list(QUANTILES),
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
    return reference
