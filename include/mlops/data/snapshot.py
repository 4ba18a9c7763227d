"""The snapshot step: materialise a run's training data for its data interval.

``out/data.parquet`` holds the config's feature columns, the label and a
``split`` column (``train``/``test``, from a hash of each row's values);
``out/manifest.json`` says where the rows came from.  Both are byte-for-byte
identical when the same interval is snapshotted again, so a rerun or a
backfill reproduces the data a model was trained on, and the sha256 in the
manifest identifies it in the model's lineage.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops import artifacts
from include.mlops.config import ModelConfig
from include.mlops.data.sources import (
    DATA_FILE,
    EXTRA_COLUMNS_ATTR,
    SPLIT_COLUMN,
    TEST,
    TRAIN,
    SnapshotError,
    as_utc,
    assign_split,
    data_columns,
    dtype_names,
    lookback_days,
    read_source,
    render_uri,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DATA_FILE", "MANIFEST_FILE", "PartitionNotLandedError", "SnapshotError", "snapshot", "write_parquet"]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
# How often a snapshot that waits for its partitions looks for them again, at most.
POLL_INTERVAL_S = 30.0


class PartitionNotLandedError(RuntimeError):
    """A partition the interval needs has not landed (yet).

    Not bad input: upstream may still deliver it, so the step fails with an
    ordinary error (exit 1) and the task is retried after its retry delay.
    """


def _missing_partitions(config: ModelConfig, interval_end: dt.datetime) -> list[tuple[dt.date, str]]:
    """The ``(day, uri)`` partitions of a ``uri`` source that do not exist yet; none for bundled data."""
    if config.source.kind != "uri" or config.source.uri is None:
        return []
    import fsspec

    missing = []
    for day in lookback_days(interval_end, config.source.lookback_days):
        uri = render_uri(config.source.uri, day)
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            missing.append((day, uri))
    return missing


def wait_for_partitions(config: ModelConfig, interval_end: dt.datetime, wait_s: float) -> None:
    """Return once every partition of the interval exists; raise :class:`PartitionNotLandedError` after ``wait_s``."""
    from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

    interval = max(0.1, min(POLL_INTERVAL_S, wait_s / 10))
    retrying = Retrying(
        stop=stop_after_delay(wait_s),
        wait=wait_fixed(interval),
        retry=retry_if_result(bool),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else [],
        before_sleep=lambda state: log.info(
            "waiting for %d partition(s) of %s to land (%.0fs of %.0fs)",
            len(state.outcome.result()) if state.outcome else 0,
            config.name,
            state.seconds_since_start,
            wait_s,
        ),
    )
    missing = retrying(_missing_partitions, config, interval_end)
    if missing:
        day, uri = missing[0]
        raise PartitionNotLandedError(
            f"partition {day.isoformat()} of model {config.name!r} is missing: {uri} does not exist "
            f"(source.uri {config.source.uri!r}, lookback_days {config.source.lookback_days}; "
            f"{len(missing)} missing, waited {wait_s:.0f}s). "
            "Land the file, or clear and rerun the task once it exists."
        )


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` without its index, with every option that affects the bytes pinned.

    Parquet written by pyarrow holds no timestamps, so fixing the compression,
    format version and row-group size is what makes the file reproducible.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(
        table,
        str(path),
        compression="snappy",
        version="2.6",
        row_group_size=1 << 20,
        use_dictionary=True,
        write_statistics=True,
    )


def _source_description(config: ModelConfig) -> dict[str, Any]:
    source = config.source
    if source.kind == "bundled":
        return {
            "kind": "bundled",
            "dataset": source.dataset,
            "start_date": source.start_date.isoformat() if source.start_date else None,
            "initial_fraction": source.initial_fraction,
            "daily_rows": source.daily_rows,
        }
    return {"kind": source.kind, "uri": source.uri, "format": source.format, "lookback_days": source.lookback_days}


def snapshot(
    config: ModelConfig,
    interval_start: dt.datetime,
    interval_end: dt.datetime,
    out: str | Path,
    *,
    wait_for_data: float = 0.0,
) -> dict:
    """Materialise the training data for ``[interval_start, interval_end)`` into ``out``.

    Returns ``{"data_uri", "rows", "sha256", "partitions", "interval_start",
    "interval_end", "split_counts"}``.  Waits up to ``wait_for_data`` seconds
    for the interval's partitions to land, then raises
    :class:`PartitionNotLandedError` (retryable).  Raises :class:`SnapshotError`
    (bad input) when a partition is unreadable or the source is misconfigured;
    an empty snapshot is written as it is (validation rejects it, and keeps the
    evidence).
    """
    start, end = as_utc(interval_start), as_utc(interval_end)
    if end < start:
        raise SnapshotError(f"data interval ends before it starts: {start.isoformat()} > {end.isoformat()}")
    log.info(
        "snapshot %s for %s .. %s (source %s)", config.name, start.isoformat(), end.isoformat(), config.source.kind
    )

    wait_for_partitions(config, end, wait_for_data)
    frame, partitions = read_source(config, end)
    extra_columns = list(frame.attrs.get(EXTRA_COLUMNS_ATTR, []))
    frame[SPLIT_COLUMN] = assign_split(frame, data_columns(config), config.test_fraction)
    split_counts = {TRAIN: int((frame[SPLIT_COLUMN] == TRAIN).sum()), TEST: int((frame[SPLIT_COLUMN] == TEST).sum())}

    out = Path(out)
    with artifacts.step_output(out) as staging:
        write_parquet(frame, staging / DATA_FILE)
        digest = artifacts.sha256_file(staging / DATA_FILE)
        # No wall-clock time in the manifest either: a rerun must reproduce it exactly.
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "model": config.name,
            "source": _source_description(config),
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            "partitions": partitions,
            "rows": len(frame),
            "columns": dtype_names(frame),
            "extra_columns": extra_columns,
            "label": config.label,
            "split_column": SPLIT_COLUMN,
            "test_fraction": config.test_fraction,
            "split_counts": split_counts,
            "data_file": DATA_FILE,
            "sha256": digest,
        }
        artifacts.atomic_write_json(staging / MANIFEST_FILE, manifest)

    log.info(
        "snapshot %s: %d rows (train %d, test %d) from %d partitions %s -> %s (sha256 %s)",
        config.name,
        len(frame),
        split_counts[TRAIN],
        split_counts[TEST],
        len(partitions),
        f"{partitions[0]}..{partitions[-1]}" if partitions else "(none)",
        out / DATA_FILE,
        digest[:12],
    )
    return {
        "data_uri": str((out / DATA_FILE).resolve()),
        "rows": len(frame),
        "sha256": digest,
        "partitions": partitions,
        "interval_start": start.isoformat(),
        "interval_end": end.isoformat(),
        "split_counts": split_counts,
    }
