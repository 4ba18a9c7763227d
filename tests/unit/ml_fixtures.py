"""Tiny snapshots in the snapshot step's contract format, made from scikit-learn's bundled data.

The real snapshot step is built elsewhere; these helpers write the same
layout (``<out>/data.parquet`` with the feature columns as float64, the label,
and a per-row-hash ``split`` column, plus ``manifest.json``) so the modeling
tests do not depend on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from include.mlops.config import ModelConfig


def _sklearn_frame(config: ModelConfig) -> pd.DataFrame:
    from sklearn import datasets

    loader = {"diabetes": datasets.load_diabetes, "digits": datasets.load_digits}[config.source.dataset or config.name]
    bunch = loader(as_frame=False)
    frame = pd.DataFrame(bunch.data.astype("float64"), columns=list(config.features))
    if config.task == "classification":
        frame[config.label] = bunch.target.astype("int64")
    else:
        frame[config.label] = bunch.target.astype("float64")
    return frame


def assign_split(frame: pd.DataFrame, test_fraction: float) -> pd.Series:
    """``train``/``test`` from a hash of each row's values: the same row always lands in the same split."""
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    is_test = (hashes % np.uint64(1_000_000)).astype("float64") / 1_000_000 < test_fraction
    return pd.Series(np.where(is_test, "test", "train"), index=frame.index, dtype="string")


def make_snapshot(config: ModelConfig, out: Path, rows: int | None = None) -> Path:
    """Write a snapshot folder for ``config`` (the first ``rows`` rows, or all) and return it."""
    frame = _sklearn_frame(config)
    if rows is not None:
        frame = frame.iloc[:rows].reset_index(drop=True)
    frame["split"] = assign_split(frame[[*config.features, config.label]], config.test_fraction)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "data.parquet", index=False)
    counts = frame["split"].value_counts().to_dict()
    manifest = {"model": config.name, "rows": len(frame), "splits": {k: int(v) for k, v in counts.items()}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
