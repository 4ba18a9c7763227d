"""A sampled, bounded, rotated log of predictions for drift monitoring.

Requests hand their inputs and outputs to :meth:`PredictionLogger.offer`,
which samples (``sample_rate``), copies and puts them on a bounded queue
without ever blocking: when the queue is full the sample is dropped and
counted.  A background thread writes the queue to Parquet files under
``<root>/predictions/<model>/``, one file per ``max_rows_per_file`` rows or
``flush_seconds`` (whichever comes first), written to a temporary name and
renamed so a reader never sees half a file, and keeps only the newest
``max_files`` files per model, which bounds the log's size on disk.

Columns: ``timestamp`` (UTC), ``model_name``, ``model_version`` (int64),
``version_label`` (the label the request used, or null), ``inputs`` and
``outputs`` (lists of float32: one row's features in the config's order and
the model's output row).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.serving.metrics import ServingMetrics

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
FILE_SUFFIX = ".parquet"


@dataclass
class _Entry:
    model_name: str
    version: int
    label: str | None
    timestamp: dt.datetime
    inputs: np.ndarray
    outputs: np.ndarray


@dataclass
class _Buffer:
    entries: list[_Entry] = field(default_factory=list)
    rows: int = 0
    since: float = field(default_factory=time.monotonic)


class PredictionLogger:
    """Writes a sample of predictions off the request path (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        sample_rate: float = 0.1,
        queue_size: int = 1000,
        max_rows_per_file: int = 10_000,
        max_files: int = 50,
        max_rows_per_request: int = 256,
        flush_seconds: float = 60.0,
        metrics: ServingMetrics | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"prediction log sample_rate must be within [0, 1], got {sample_rate}")
        if max_rows_per_file < 1 or max_files < 1 or queue_size < 1:
            raise ValueError("prediction log max_rows_per_file, max_files and queue_size must be at least 1")
        self.root = Path(root) / PREDICTIONS_DIR
        self.sample_rate = sample_rate
        self.max_rows_per_file = max_rows_per_file
        self.max_files = max_files
        self.max_rows_per_request = max_rows_per_request
        self.flush_seconds = flush_seconds
        self.metrics = metrics
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._random = random.Random(seed)
        self._buffers: dict[str, _Buffer] = {}
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written_rows = 0

    @classmethod
    def from_settings(cls, settings: Any, metrics: ServingMetrics | None = None) -> PredictionLogger:
        """A logger from settings with the ``predlog_*`` fields of the server's and the request logger's."""
        return cls(
            settings.predlog_root,
            sample_rate=settings.predlog_sample_rate,
            queue_size=settings.predlog_queue_size,
            max_rows_per_file=settings.predlog_max_rows_per_file,
            max_files=settings.predlog_max_files,
            flush_seconds=settings.predlog_flush_seconds,
            metrics=metrics,
        )

    # ------------------------------------------------------------------ request side

    def sampled(self) -> bool:
        """Draw whether one request is logged (``sample_rate``).

        For a caller that must work to build the rows (the request logger parses JSON): draw first, build only
        when drawn, and pass ``drawn=True`` to :meth:`offer`.
        """
        if self.sample_rate <= 0.0:
            return False
        return self.sample_rate >= 1.0 or self._random.random() < self.sample_rate

    def offer(
        self,
        model_name: str,
        version: int,
        inputs: np.ndarray,
        outputs: np.ndarray,
        label: str | None = None,
        *,
        drawn: bool = False,
    ) -> bool:
        """Maybe log one request's rows; never blocks and never raises. Returns whether it was queued.

        ``drawn``: the caller has already drawn this request with :meth:`sampled`, so it is not drawn again.
        """
        try:
            if not drawn and not self.sampled():
                return False
            rows = min(len(inputs), self.max_rows_per_request)
            entry = _Entry(
                model_name,
                version,
                label,
                dt.datetime.now(dt.UTC),
                # Copies, so that nothing the request still uses is shared with the writer thread.
                inputs[:rows].reshape(rows, -1).astype("float32", copy=True),
                outputs[:rows].reshape(rows, -1).astype("float32", copy=True),
            )
            self._queue.put_nowait(entry)
            return True
        except queue.Full:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.record_log_rows(model_name, "dropped", min(len(inputs), self.max_rows_per_request))
            return False
        except Exception:  # logging must never fail a request
            log.exception("Could not queue a prediction log entry for %s", model_name)
            return False

    # ------------------------------------------------------------------ writer thread

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer thread."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout=timeout)
        self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything queued so far to files now; returns False if that did not finish in time."""
        if self._thread is None:
            return False
        done = threading.Event()
        try:
            # The queue is FIFO, so every entry offered before this call is written first.
            self._queue.put(_Flush(done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _run(self) -> None:
        tick = min(1.0, self.flush_seconds)
        while True:
            try:
                item = self._queue.get(timeout=tick)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._write_all()
                return
            if isinstance(item, _Flush):
                self._write_all()
                item.done.set()
                continue
            if isinstance(item, _Entry):
                buffer = self._buffers.setdefault(item.model_name, _Buffer())
                buffer.entries.append(item)
                buffer.rows += len(item.inputs)
                if buffer.rows >= self.max_rows_per_file:
                    self._write(item.model_name)
            now = time.monotonic()
            for name, buffer in list(self._buffers.items()):
                if buffer.entries and now - buffer.since >= self.flush_seconds:
                    self._write(name)

    def _write_all(self) -> None:
        for name in list(self._buffers):
            if self._buffers[name].entries:
                self._write(name)

    def _write(self, model_name: str) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = self._buffers.pop(model_name)
        try:
            entries = buffer.entries
            counts = [len(e.inputs) for e in entries]
            inputs = np.concatenate([e.inputs for e in entries])
            outputs = np.concatenate([e.outputs for e in entries])
            table = pa.table(
                {
                    "timestamp": pa.array(
                        [e.timestamp for e, n in zip(entries, counts, strict=True) for _ in range(n)],
                        pa.timestamp("us", tz="UTC"),
                    ),
                    "model_name": pa.array([model_name] * len(inputs), pa.string()),
                    "model_version": pa.array(np.repeat([e.version for e in entries], counts), pa.int64()),
                    "version_label": pa.array(
                        [e.label for e, n in zip(entries, counts, strict=True) for _ in range(n)], pa.string()
                    ),
                    "inputs": _list_column(inputs),
                    "outputs": _list_column(outputs),
                }
            )
            folder = self.root / model_name
            folder.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            final = folder / f"{stamp}-{uuid.uuid4().hex[:8]}{FILE_SUFFIX}"
            tmp = folder / f".{final.name}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, final)
            self._publish(final)
            self.written_rows += len(inputs)
            if self.metrics is not None:
                self.metrics.record_log_rows(model_name, "written", len(inputs))
            self._rotate(folder)
        except Exception:
            rows = sum(len(e.inputs) for e in buffer.entries)
            log.exception("Could not write %d prediction log rows of %s; dropping them", rows, model_name)
            self.dropped += len(buffer.entries)
            if self.metrics is not None:
                self.metrics.record_log_rows(model_name, "dropped", rows)

    def _publish(self, path: Path) -> None:
        """On an object-store artifact root, upload the new file (whole: a reader never sees half of it).

        The bucket keeps what the local rotation removes; its lifecycle rule
        bounds it (docs/production.md).  A failed upload is logged and the rows
        stay in the local file, so drift on this machine still sees them.
        """
        from include.mlops import artifact_store

        store = artifact_store.current()
        if store is None or store.relative(path) is None:
            return
        try:
            store.push(path)
        except Exception:
            log.exception("Could not upload prediction log file %s to %s", path, store.uri)

    def _rotate(self, folder: Path) -> None:
        files = sorted(folder.glob(f"*{FILE_SUFFIX}"))
        for old in files[: max(0, len(files) - self.max_files)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
                log.info("Rotated out prediction log file %s", old)


_STOP: Any = object()


@dataclass
class _Flush:
    done: threading.Event


def _list_column(values: np.ndarray) -> Any:
    import pyarrow as pa

    width = values.shape[1] if values.ndim == 2 else 1
    flat = pa.array(values.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width).cast(pa.list_(pa.float32()))


def log_files(root: str | os.PathLike[str], model_name: str) -> list[Path]:
    """The prediction log files of one model, oldest first."""
    folder = Path(root) / PREDICTIONS_DIR / model_name
    return sorted(folder.glob(f"*{FILE_SUFFIX}")) if folder.is_dir() else []


def read_prediction_log(root: str | os.PathLike[str], model_name: str) -> pd.DataFrame:
    """All logged rows of ``model_name`` (empty frame with the log's columns when there are none)."""
    import pandas as pd

    files = log_files(root, model_name)
    if not files:
        return pd.DataFrame(columns=["timestamp", "model_name", "model_version", "version_label", "inputs", "outputs"])
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The prediction log's flags, the same for the model server and the request logger."""
    parser.add_argument(
        "--predlog-root",
        type=Path,
        help="write the prediction log under <this>/predictions/<model>/ (default: the artifact root)",
    )
    parser.add_argument(
        "--predlog-sample-rate",
        type=float,
        default=float(os.environ.get("MLOPS_PREDLOG_SAMPLE_RATE", "0.1")),
        help="fraction of requests logged (default: $MLOPS_PREDLOG_SAMPLE_RATE or 0.1)",
    )
    parser.add_argument("--predlog-queue-size", type=int, default=1000, help="queued requests before dropping")
    parser.add_argument("--predlog-max-rows-per-file", type=int, default=10_000)
    parser.add_argument("--predlog-max-files", type=int, default=50, help="files kept per model (older are deleted)")
    parser.add_argument(
        "--predlog-flush-seconds",
        type=float,
        default=float(os.environ.get("MLOPS_PREDLOG_FLUSH_SECONDS", "60")),
        help="write buffered rows at least this often (default: $MLOPS_PREDLOG_FLUSH_SECONDS or 60)",
    )
