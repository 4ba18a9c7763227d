"""Data sources: the bundled demo datasets released as daily arrivals, and partitioned files.

Two kinds of source (``config.source.kind``):

``bundled``
    A scikit-learn dataset (shipped inside the package, nothing is downloaded).
    Its rows are put in a fixed, seeded order and released as daily arrivals:
    ``initial_fraction`` of them on ``start_date``, then ``daily_rows`` more on
    each following day, so that nightly runs see the data grow.

``uri``
    A file URI template with a ``{{ ds }}`` (YYYY-MM-DD) partition, e.g.
    ``/data/diabetes/{{ ds }}.csv`` or ``file:///data/{{ ds }}.parquet``, read
    through fsspec for each of the ``lookback_days`` days ending with the run's
    data interval.

Both kinds agree on which days an interval covers: a day's partition is
complete once the day is over, so the last day an interval sees is the day
before ``interval_end`` (``interval_end - 1 day``, in UTC).

The helpers here also define the row hash that the whole project shares: the
``train``/``test`` split and the duplicate-row check are both derived from it,
so the same row always lands in the same split, whichever run loads it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.config import ModelConfig

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

SPLIT_COLUMN = "split"
# The snapshot step's data file inside its output folder.
DATA_FILE = "data.parquet"
# Added by validation (never stored in a snapshot) so that GX can count duplicated rows.
ROW_HASH_COLUMN = "_row_hash"
# DataFrame.attrs key: source columns that the config does not list (left out of the snapshot).
EXTRA_COLUMNS_ATTR = "extra_columns"
TRAIN, TEST = "train", "test"
# Arrival order of the bundled rows.  A constant (not the training seed), so
# that changing how a model trains never changes which rows a day released.
ARRIVAL_SEED = 20261101
# Separates the values of a row inside its hash; a control character that
# cannot appear in a formatted number.
_FIELD_SEPARATOR = "\x1f"
_DS_PLACEHOLDER = re.compile(r"\{\{\s*ds\s*\}\}")


class SnapshotError(RuntimeError):
    """The training data for an interval cannot be materialised (missing partition, unreadable file, bad config)."""


# --------------------------------------------------------------------------- time


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC.  A naive datetime is taken to be UTC already (Airflow's are always aware)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def last_partition_day(interval_end: dt.datetime) -> dt.date:
    """The last day whose partition is complete at ``interval_end``: the day of ``interval_end - 1 day``."""
    return (as_utc(interval_end) - dt.timedelta(days=1)).date()


def lookback_days(interval_end: dt.datetime, days: int) -> list[dt.date]:
    """The ``days`` partition days ending with :func:`last_partition_day`, oldest first."""
    last = last_partition_day(interval_end)
    return [last - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]


# --------------------------------------------------------------------------- row hash and split


def _canonical(value: Any) -> str:
    # Numbers hash by value, not by dtype: 3, 3.0 and np.int64(3) are the same
    # row whether a file stored the label as int or float.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return repr(float(value))
    if isinstance(value, int | float) or hasattr(value, "dtype"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return "" if math.isnan(number) else repr(number)
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return ""
    except ImportError:  # pragma: no cover - pandas is a dependency of every caller
        pass
    return str(value)


def snapshot_path(data_uri: str | os.PathLike[str]) -> Path:
    """The parquet file a snapshot URI names: ``<data_uri>/data.parquet`` for a folder, else ``data_uri``."""
    path = Path(data_uri)
    return path / DATA_FILE if path.is_dir() else path


def row_hashes(frame: pd.DataFrame, columns: Sequence[str], *, salt: str = "") -> np.ndarray:
    """A 64-bit hash of each row's values in ``columns`` (those present), as ``uint64``.

    A different ``salt`` gives hashes independent of the unsalted ones (the
    validation rows are chosen independently of the test split this way).

    sha256 of a canonical text form rather than ``pandas.util.hash_pandas_object``,
    so that the split stays the same across pandas versions and dtypes: the
    split must never move a row from test to train between model versions.
    """
    import numpy as np

    present = [c for c in columns if c in frame.columns]
    hashes = np.empty(len(frame), dtype=np.uint64)
    if not present:
        hashes[:] = 0
        return hashes
    for i, row in enumerate(frame[present].itertuples(index=False, name=None)):
        text = salt + _FIELD_SEPARATOR.join(_canonical(v) for v in row)
        hashes[i] = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return hashes


def assign_split(frame: pd.DataFrame, columns: Sequence[str], test_fraction: float) -> pd.Series:
    """``test`` for the rows whose hash falls in the lowest ``test_fraction`` of the hash space, else ``train``."""
    import numpy as np
    import pandas as pd

    threshold = np.uint64(min(int(test_fraction * 2**64), 2**64 - 1))
    hashes = row_hashes(frame, columns)
    values = np.where(hashes < threshold, TEST, TRAIN)
    return pd.Series(values, index=frame.index, name=SPLIT_COLUMN, dtype="str")


def data_columns(config: ModelConfig) -> list[str]:
    """The columns a snapshot holds before the split: the features in config order, then the label."""
    return [*config.features, config.label]


# --------------------------------------------------------------------------- bundled source


def _column_name(name: str) -> str:
    # scikit-learn names such as "mean radius" or "od280/od315_of_diluted_wines"
    # become identifiers a YAML list and a GX suite can hold.
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_")


def load_bundled(dataset: str, label: str) -> pd.DataFrame:
    """The whole scikit-learn ``dataset`` as a frame: its features (names made identifier-safe) and ``label``.

    Features are float64; the label keeps scikit-learn's dtype (float64 for
    regression targets, int64 for class labels).

    Built once per scikit-learn release and then read from a local cache
    (:mod:`include.mlops.data.bundled_cache`), which spares a step importing scikit-learn.
    """
    from include.mlops.data.bundled_cache import cached_frame

    return cached_frame(dataset, label, lambda: _build_bundled(dataset, label))


def _build_bundled(dataset: str, label: str) -> pd.DataFrame:
    import pandas as pd
    from sklearn import datasets

    loader = getattr(datasets, f"load_{dataset}", None)
    if loader is None:
        raise SnapshotError(f"unknown bundled dataset {dataset!r}: scikit-learn has no load_{dataset}()")
    bunch = loader()
    columns = [_column_name(n) for n in bunch.feature_names]
    frame = pd.DataFrame(bunch.data.astype("float64"), columns=columns)
    frame[label] = bunch.target
    return frame


def bundled_arrival_days(rows: int, config: ModelConfig) -> np.ndarray:
    """For each position in the arrival order, the number of days after ``start_date`` the row arrives.

    Rows that never arrive (``daily_rows: 0`` after the initial release) get -1.
    """
    import numpy as np

    source = config.source
    initial = min(rows, max(1, round(source.initial_fraction * rows)))
    position = np.arange(rows)
    if source.daily_rows > 0:
        days = np.where(position < initial, 0, 1 + (position - initial) // source.daily_rows)
    else:
        days = np.where(position < initial, 0, -1)
    return days.astype(np.int64)


def read_bundled(config: ModelConfig, interval_end: dt.datetime) -> tuple[pd.DataFrame, list[str]]:
    """Every bundled row that arrived by the end of the interval, in arrival order, and the arrival days included."""
    import numpy as np

    source = config.source
    if source.dataset is None or source.start_date is None:
        raise SnapshotError(f"{config.path}: a bundled source needs 'dataset' and 'start_date'")
    full = load_bundled(source.dataset, config.label)
    missing = [c for c in data_columns(config) if c not in full.columns]
    if missing:
        raise SnapshotError(
            f"{config.path}: columns {missing} are not in the bundled dataset {source.dataset!r} "
            f"(it has: {', '.join(full.columns)})"
        )
    order = np.random.default_rng(ARRIVAL_SEED).permutation(len(full))
    arrived = full.iloc[order][data_columns(config)].reset_index(drop=True)
    # The snapshot contract fixes the label dtype by task, whatever the platform's default int is.
    arrived[config.label] = arrived[config.label].astype("int64" if config.task == "classification" else "float64")
    days = bundled_arrival_days(len(arrived), config)
    horizon = (last_partition_day(interval_end) - source.start_date).days
    keep = (days >= 0) & (days <= horizon)
    frame = arrived.loc[keep].reset_index(drop=True)
    partitions = [(source.start_date + dt.timedelta(days=int(d))).isoformat() for d in np.unique(days[keep])]
    log.info(
        "bundled %s: %d of %d rows arrived by %s (%d arrival days from %s)",
        source.dataset,
        len(frame),
        len(full),
        last_partition_day(interval_end),
        len(partitions),
        source.start_date,
    )
    return frame, partitions


# --------------------------------------------------------------------------- uri source


def render_uri(template: str, day: dt.date) -> str:
    """``template`` with its ``{{ ds }}`` placeholder replaced by ``day`` (YYYY-MM-DD)."""
    return _DS_PLACEHOLDER.sub(day.isoformat(), template)


def _read_partition(uri: str, file_format: str) -> pd.DataFrame:
    import fsspec
    import pandas as pd

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise FileNotFoundError(uri)
    with fs.open(path, "rb") as handle:
        if file_format == "parquet":
            return pd.read_parquet(handle)
        return pd.read_csv(handle)


def read_uri(config: ModelConfig, interval_end: dt.datetime) -> tuple[pd.DataFrame, list[str]]:
    """The ``lookback_days`` partitions ending with the interval, concatenated oldest first.

    The file's dtypes are kept (validation judges them).  Of its columns only
    the config's features and label are kept, in config order; the ones the
    file lacks stay missing so that validation reports them.
    """
    import pandas as pd

    source = config.source
    if source.uri is None:
        raise SnapshotError(f"{config.path}: a uri source needs 'uri'")
    file_format = source.format or "csv"
    frames: list[pd.DataFrame] = []
    partitions: list[str] = []
    for day in lookback_days(interval_end, source.lookback_days):
        uri = render_uri(source.uri, day)
        try:
            part = _read_partition(uri, file_format)
        except FileNotFoundError:
            raise SnapshotError(
                f"partition {day.isoformat()} of model {config.name!r} is missing: {uri} does not exist "
                f"(source.uri {source.uri!r}, lookback_days {source.lookback_days}). "
                "Land the file, or clear and rerun the task once it exists."
            ) from None
        except Exception as exc:
            raise SnapshotError(f"cannot read partition {day.isoformat()} from {uri} as {file_format}: {exc}") from exc
        log.info("read partition %s: %d rows, %d columns from %s", day.isoformat(), len(part), len(part.columns), uri)
        frames.append(part)
        partitions.append(day.isoformat())
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    present = [c for c in data_columns(config) if c in frame.columns]
    absent = [c for c in data_columns(config) if c not in frame.columns]
    extra = [str(c) for c in frame.columns if c not in set(data_columns(config))]
    if absent:
        log.warning("partitions of %s lack columns %s; validation will reject them", config.name, absent)
    if extra:
        log.warning(
            "partitions of %s hold columns %s that %s does not list; they are left out of the snapshot "
            "(list them as features to use them)",
            config.name,
            extra,
            config.path.name,
        )
    kept = frame[present].reset_index(drop=True)
    # The snapshot records them in its manifest, and validation in its report.
    kept.attrs[EXTRA_COLUMNS_ATTR] = extra
    return kept, partitions


def read_source(config: ModelConfig, interval_end: dt.datetime) -> tuple[pd.DataFrame, list[str]]:
    """The rows a snapshot for an interval ending at ``interval_end`` holds, and the partitions they came from."""
    if config.source.kind == "bundled":
        return read_bundled(config, interval_end)
    if config.source.kind == "uri":
        return read_uri(config, interval_end)
    raise SnapshotError(f"{config.path}: unknown source kind {config.source.kind!r}")


def dtype_names(frame: pd.DataFrame, columns: Iterable[str] | None = None) -> dict[str, str]:
    """Column name -> dtype name, for manifests and summaries."""
    names = list(frame.columns) if columns is None else [c for c in columns if c in frame.columns]
    return {name: str(frame[name].dtype) for name in names}
