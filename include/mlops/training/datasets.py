"""A snapshot as arrays for Keras: one split's features and labels, the validation hold-out, statistics.

pandas and NumPy are imported inside the functions so that importing this
module stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.config import ModelConfig
from include.mlops.data.sources import DATA_FILE, SPLIT_COLUMN, row_hashes, snapshot_path
from include.mlops.training.errors import ModelingError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# Salts the row hash, so the validation rows are independent of the test split.
_VALIDATION_SALT = "validation"


@dataclass(frozen=True)
class Dataset:
    """Feature matrix and labels of one split of a snapshot."""

    features: np.ndarray  # float32 [rows, n_features], raw values in config order
    labels: np.ndarray  # float32 [rows] (regression) or int64 [rows] (classification)
    row_ids: np.ndarray  # int64 positions of the rows in data.parquet

    def __len__(self) -> int:
        return int(self.features.shape[0])


def snapshot_file(data_uri: str | os.PathLike[str]) -> Path:
    """The parquet file of a snapshot: ``data_uri`` itself or ``<data_uri>/data.parquet``."""
    path = snapshot_path(data_uri)
    if not path.is_file():
        raise ModelingError(
            f"no snapshot at {data_uri}: expected a snapshot folder holding {DATA_FILE} "
            "(the output of the snapshot step) or the parquet file itself"
        )
    return path


def read_snapshot(config: ModelConfig, data_uri: str | os.PathLike[str]) -> pd.DataFrame:
    """The snapshot's rows, checked against the config's columns."""
    import pandas as pd

    path = snapshot_file(data_uri)
    frame = pd.read_parquet(path)
    wanted = [*config.features, config.label, SPLIT_COLUMN]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ModelingError(
            f"{path}: columns {missing} are missing; model {config.name!r} needs its features, "
            f"label {config.label!r} and {SPLIT_COLUMN!r} (found: {list(frame.columns)[:12]}...). "
            f"Check the features in {config.path.name} or re-run the snapshot step."
        )
    return frame.reset_index(drop=True)


def load_split(config: ModelConfig, data_uri: str | os.PathLike[str], split: str) -> Dataset:
    """Rows of one split (``train`` or ``test``) as arrays ready for Keras."""
    import numpy as np

    frame = read_snapshot(config, data_uri)
    rows = frame[frame[SPLIT_COLUMN] == split]
    if rows.empty:
        counts = frame[SPLIT_COLUMN].value_counts().to_dict()
        raise ModelingError(
            f"snapshot {data_uri} has no rows with {SPLIT_COLUMN} == {split!r} (split counts: {counts}); "
            "the snapshot needs more rows or a different test_fraction"
        )
    features = rows[list(config.features)].to_numpy(dtype="float32")
    if not np.isfinite(features).all():
        bad = [c for c in config.features if not np.isfinite(rows[c].to_numpy(dtype="float64")).all()]
        raise ModelingError(
            f"snapshot {data_uri}: feature columns {bad} hold NaN or infinite values; validate the data first"
        )
    label_values = rows[config.label]
    if label_values.isna().any():
        raise ModelingError(f"snapshot {data_uri}: label column {config.label!r} has missing values")
    if config.task == "classification":
        labels = label_values.to_numpy(dtype="int64")
        out_of_range = labels[(labels < 0) | (labels >= (config.num_classes or 0))]
        if out_of_range.size:
            raise ModelingError(
                f"snapshot {data_uri}: labels {sorted(set(out_of_range.tolist()))[:5]} are outside "
                f"0..{(config.num_classes or 0) - 1}; fix num_classes in {config.path.name}"
            )
    else:
        labels = label_values.to_numpy(dtype="float32")
    return Dataset(features=features, labels=labels, row_ids=rows.index.to_numpy(dtype="int64"))


def split_validation(data: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """Carve a validation set out of the training rows, deterministically per row.

    A row's place is decided by a hash of its values, so a row stays on the
    same side as the snapshot grows day by day.
    """
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(data.features.astype("float64"))
    frame["label"] = data.labels.astype("float64")
    hashes = row_hashes(frame, list(frame.columns), salt=_VALIDATION_SALT)
    is_val = (hashes % np.uint64(1_000_000)).astype("float64") / 1_000_000 < fraction
    if is_val.all() or not is_val.any():
        # Tiny data can hash all to one side; fall back to taking the last rows.
        count = min(max(1, round(len(data) * fraction)), len(data) - 1)
        is_val = np.zeros(len(data), dtype=bool)
        if count > 0:
            is_val[-count:] = True
    if is_val.all() or not is_val.any():
        raise ModelingError(f"only {len(data)} training row(s): need at least 2 to hold out a validation set")

    def pick(mask: np.ndarray) -> Dataset:
        return Dataset(data.features[mask], data.labels[mask], data.row_ids[mask])

    return pick(~is_val), pick(is_val)


def training_stats(config: ModelConfig, data: Dataset) -> dict[str, Any]:
    """Statistics a builder may bake into the model so that serving takes raw values."""
    import numpy as np

    mean = data.features.astype("float64").mean(axis=0)
    std = data.features.astype("float64").std(axis=0)
    # A constant feature (e.g. a blank pixel) would divide by zero.
    std = np.where(std < 1e-8, 1.0, std)
    stats: dict[str, Any] = {
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
        "n_features": len(config.features),
        "rows": len(data),
    }
    if config.task == "regression":
        labels = data.labels.astype("float64")
        stats["label_mean"] = float(labels.mean())
        stats["label_std"] = float(labels.std()) if labels.std() > 1e-8 else 1.0
    else:
        counts = np.bincount(data.labels, minlength=config.num_classes or 0)
        stats["class_counts"] = counts.tolist()
    return stats
