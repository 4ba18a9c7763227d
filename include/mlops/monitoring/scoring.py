"""Drift scores: each feature's population stability index (PSI) over its training reference bins.

This is the part of the drift check that sees every logged row, so it is
written for throughput: one blocked transpose of the window's rows into
feature columns (cache-sized blocks; a plain ``.T`` copy is 4x slower), then
per feature, for each reference edge, one vectorised count of the values at
or above it.  Bin counts are the differences of those counts.  Counting all
features at once with broadcasting was measured 3-6x slower (the boolean
reductions along the row axis dominate); see ``benchmarks/monitoring.py``.

Missing values (NaN: a feature a logged row did not carry) fall in no bin;
``present`` counts the values each feature has.  ``out_of_range`` is each
feature's share of values below the training minimum or above its maximum: the
outer bins are open (see :mod:`.reference`), so a range excursion is reported
here as its own effect rather than through an empty bin (within a millionth
of the range, ``SNAP_RELATIVE``, a value is not outside).

These are effect sizes; whether a feature has drifted is decided by the
statistical tests of :mod:`.stattests`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from include.mlops.monitoring.reference import SNAP_RELATIVE

# Shares are clipped to this before the logarithm, so a bin that one side never fills
# (the outer, out-of-range bins of the reference) adds a finite, share-sized amount.
PSI_EPSILON = 1e-4
_TRANSPOSE_BLOCK_ROWS = 1024


@dataclass(frozen=True)
class FeatureCounts:
    """Per-feature bin counts and summary statistics of a block of rows."""

    counts: list[np.ndarray]  # one int64 array per feature, len(edges) + 1 bins
    present: np.ndarray  # int64 [features]: non-missing values
    mean: np.ndarray  # float64 [features], NaN where nothing is present
    minimum: np.ndarray
    maximum: np.ndarray


def feature_columns(rows: np.ndarray) -> np.ndarray:
    """``rows`` (float32 [n, features]) as contiguous feature columns [features, n], transposed in blocks."""
    rows = np.asarray(rows, dtype=np.float32)
    columns = np.empty((rows.shape[1], rows.shape[0]), dtype=np.float32)
    for start in range(0, rows.shape[0], _TRANSPOSE_BLOCK_ROWS):
        columns[:, start : start + _TRANSPOSE_BLOCK_ROWS] = rows[start : start + _TRANSPOSE_BLOCK_ROWS].T
    return columns


def count_bins(columns: np.ndarray, edges: Sequence[np.ndarray]) -> FeatureCounts:
    """Bin counts of each feature column over its finite ``edges`` (bins as in :mod:`.reference`)."""
    n_features, n_rows = columns.shape
    counts: list[np.ndarray] = []
    present = np.empty(n_features, dtype=np.int64)
    mean = np.full(n_features, np.nan)
    minimum = np.full(n_features, np.nan)
    maximum = np.full(n_features, np.nan)
    for j in range(n_features):
        column = columns[j]
        missing = int(np.count_nonzero(np.isnan(column)))
        present[j] = n_rows - missing
        # float32 edges: the reference's edges are float32 values, so this compares exactly and casts nothing.
        edge_values = np.asarray(edges[j], dtype=np.float32)
        at_or_above = np.array([np.count_nonzero(column >= edge) for edge in edge_values], dtype=np.int64)
        counts.append(-np.diff(np.concatenate(([present[j]], at_or_above, [0]))))
        if present[j]:
            valid = column if not missing else column[~np.isnan(column)]
            mean[j] = float(np.add.reduce(valid, dtype=np.float64)) / present[j]
            minimum[j], maximum[j] = float(valid.min()), float(valid.max())
    return FeatureCounts(counts, present, mean, minimum, maximum)


def psi(reference_weights: Sequence[float] | np.ndarray, counts: np.ndarray) -> float | None:
    """The population stability index of ``counts`` against ``reference_weights`` (None for no values)."""
    total = counts.sum()
    if total == 0:
        return None
    expected = np.clip(np.asarray(reference_weights, dtype=np.float64), PSI_EPSILON, None)
    actual = np.clip(counts / total, PSI_EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def score_rows(rows: np.ndarray, reference: Mapping[str, Any], features: Sequence[str]) -> dict[str, Any]:
    """PSI, bin shares and summary statistics of each feature of ``rows`` against one version's reference.

    Returns ``{"rows", "score", "psi": {feature: float|None}, "present": {...},
    "current_weights": {...}, "out_of_range": {...}, "mean"/"min"/"max": {...}}``.
    """
    return score_columns(feature_columns(rows), reference, features)


def score_columns(columns: np.ndarray, reference: Mapping[str, Any], features: Sequence[str]) -> dict[str, Any]:
    """:func:`score_rows` of rows already transposed into feature ``columns`` ([features, rows])."""
    stats = reference["features"]
    counts = count_bins(columns, [np.asarray(stats[f]["bin_edges"]) for f in features])
    scores: dict[str, float | None] = {}
    weights: dict[str, list[float] | None] = {}
    out_of_range: dict[str, float | None] = {}
    for j, feature in enumerate(features):
        scores[feature] = psi(stats[feature]["bin_weights"], counts.counts[j])
        total = counts.counts[j].sum()
        weights[feature] = (counts.counts[j] / total).tolist() if total else None
        # Rounded requests a hair outside the range are not out of it (the tolerance of .stattests.snap).
        margin = SNAP_RELATIVE * (stats[feature]["max"] - stats[feature]["min"])
        low, high = np.float32(stats[feature]["min"] - margin), np.float32(stats[feature]["max"] + margin)
        outside = np.count_nonzero(columns[j] < low) + np.count_nonzero(columns[j] > high)
        out_of_range[feature] = float(outside / total) if total else None
    scored = [s for s in scores.values() if s is not None]

    def by_feature(values: np.ndarray) -> dict[str, float | None]:
        return {f: None if np.isnan(v) else float(v) for f, v in zip(features, values, strict=True)}

    return {
        "rows": int(columns.shape[1]),
        "score": max(scored) if scored else None,
        "psi": scores,
        "present": {f: int(p) for f, p in zip(features, counts.present, strict=True)},
        "current_weights": weights,
        "out_of_range": out_of_range,
        "mean": by_feature(counts.mean),
        "min": by_feature(counts.minimum),
        "max": by_feature(counts.maximum),
    }
