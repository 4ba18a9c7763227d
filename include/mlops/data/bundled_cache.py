"""The bundled scikit-learn datasets, kept as Parquet files so that a step need not import scikit-learn.

Importing scikit-learn to call ``sklearn.datasets.load_<name>()`` costs about a second, most of the
snapshot step's start.  The frame it gives is the same for a given scikit-learn release, so it is kept
once built, keyed by the dataset, the label column and scikit-learn's installed version (read from its
package metadata, which does not import it).  A new scikit-learn release gets files of its own.

The folder is ``$MLOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlops``, else ``~/.cache/mlops``.  The cache is
only a shortcut: a folder that cannot be written, or a file that cannot be read, means the frame is built
from scikit-learn as before (an unreadable file is replaced).  A file is written (by ``artifacts.atomic_write_bytes``) under a temporary name
and renamed into place, so a reader never sees part of one, even with several steps starting at once.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CACHE_ENV = "MLOPS_CACHE_DIR"
# Dataset and label names that may become part of a file name; anything else is never cached.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlops"


def cache_path(dataset: str, label: str) -> Path | None:
    """The file for ``dataset`` with ``label`` under the installed scikit-learn; None if not to be cached.

    None without scikit-learn, and for names that are not plain identifiers (never a path of their own).
    """
    if not (_PLAIN_NAME.fullmatch(dataset) and _PLAIN_NAME.fullmatch(label)):
        return None
    try:
        version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return None
    return cache_dir() / "bundled" / f"sklearn-{version}" / f"{dataset}--{label}.parquet"


def cached_frame(dataset: str, label: str, build: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The kept frame of ``dataset``, else ``build()``'s, kept for next time where the folder allows."""
    import pandas as pd

    path = cache_path(dataset, label)
    if path is not None and path.exists():
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # a damaged file: build the frame again and replace it
            log.warning("cached dataset %s is unreadable (%s); building it again", path, exc)
    frame = build()
    if path is not None:
        _keep(frame, path)
    return frame


def _keep(frame: pd.DataFrame, path: Path) -> None:
    from include.mlops.artifacts import atomic_write_bytes

    try:
        atomic_write_bytes(path, frame.to_parquet(index=False))
    except OSError as exc:
        log.info("not caching dataset at %s: %s", path, exc)
