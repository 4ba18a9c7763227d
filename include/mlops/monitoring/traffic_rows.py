"""The traffic generator's rows and errors: the model's data, and fresh rows drawn from its population."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from include.mlops.artifacts import artifact_root, safe_segment
from include.mlops.config import ModelConfig

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class TrafficError(RuntimeError):
    """The traffic cannot be sent: the server is unreachable or does not serve the model/label."""


class TrafficInputError(TrafficError):
    """The traffic's own settings or rows are wrong (exit 3: running it again cannot help)."""


def latest_snapshot(config: ModelConfig, root: Path | None = None) -> Path | None:
    """The newest ``data.parquet`` any lifecycle run of the model snapshotted, or None."""
    from include.mlops.data.sources import DATA_FILE

    runs = (root if root is not None else artifact_root()) / "runs" / safe_segment(config.dag_id)
    candidates = list(runs.glob(f"*/snapshot/{DATA_FILE}")) if runs.is_dir() else []
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def held_out_rows(config: ModelConfig, rows_from: str | Path | None = None) -> np.ndarray:
    """The model's held-out feature rows (float32, features in config order): :func:`data_rows` of the test split."""
    from include.mlops.data.sources import TEST

    return data_rows(config, rows_from, split=TEST)


def data_rows(config: ModelConfig, rows_from: str | Path | None = None, *, split: str | None = None) -> np.ndarray:
    """The model's feature rows (float32, features in config order), of one ``split`` or all of them.

    From ``rows_from`` (a snapshot folder or a parquet/CSV file), else the newest
    snapshot under the artifact root, else the bundled dataset split by the
    snapshot step's own rule.  A file without a ``split`` column is used whole.
    """
    import pandas as pd

    from include.mlops.data.sources import SPLIT_COLUMN, assign_split, data_columns, read_source, snapshot_path

    source: str
    if rows_from is not None:
        path = snapshot_path(rows_from)
        if not path.is_file():
            raise TrafficInputError(
                f"--rows-from {rows_from}: no such file (give a snapshot folder or a parquet/CSV file)"
            )
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        source = str(path)
    elif (path := latest_snapshot(config)) is not None:
        frame, source = pd.read_parquet(path), str(path)
    else:
        if config.source.kind != "bundled":
            raise TrafficInputError(
                f"no snapshot of {config.name} under {artifact_root()} and its source is not a bundled dataset; "
                "run the lifecycle once or pass --rows-from a snapshot folder or data file"
            )
        frame, _ = read_source(config, dt.datetime.now(dt.UTC) + dt.timedelta(days=36500))
        frame[SPLIT_COLUMN] = assign_split(frame, data_columns(config), config.test_fraction)
        source = f"bundled dataset {config.source.dataset!r}"
    missing = [f for f in config.features if f not in frame.columns]
    if missing:
        raise TrafficInputError(f"rows from {source} lack the features {missing} of {config.name}")
    if split is not None and SPLIT_COLUMN in frame.columns:
        frame = frame[frame[SPLIT_COLUMN] == split]
    if frame.empty:
        raise TrafficInputError(f"rows from {source} hold no {split + ' ' if split else ''}rows to send")
    log.info("rows from %s: %d%s", source, len(frame), f" {split} rows" if split else " rows")
    return frame[list(config.features)].to_numpy(dtype="float32")


def fresh_rows(data: np.ndarray, seed: int | None, batch: int = 512) -> Iterator[np.ndarray]:
    """Endless new rows (float32) drawn from the population fitted to ``data``, one at a time."""
    import numpy as np

    from include.mlops.monitoring.population import Population

    population = Population(data.astype(np.float64))
    rng = np.random.default_rng(seed)
    while True:
        yield from population.draw(batch, rng).astype(np.float32)
