"""The Models view on an object-store root: the small files it reads, brought from the bucket into a folder of its own.

With ``MLOPS_ARTIFACT_ROOT=s3://...`` the :class:`~include.mlops.registry.catalog.Catalog`
reads the registry through its :class:`~include.mlops.registry.protocol.ModelRegistry`
members (versions, labels, label moves, verification) and every other file
with the same local readers as on a folder root, over a folder this module
keeps up to date (:func:`view_dir`: ``<mirror>.models-view``, beside the
process's mirror and not in it: a step on the same machine may be writing its
run folder in the mirror, and a version folder with a manifest there is taken
for a whole version by :func:`~include.mlops.artifact_store.local_version_dir`).
Only small files go into it:

- of each complete version, ``assets.extra/`` (model card, evaluation report,
  metrics, lineage, gate, checksums; never the SavedModel), once: a published
  version is immutable;
- of each run folder under ``runs/<dag_id>/``, the files the readers name
  (``VIEW_FILES`` of :mod:`~include.mlops.registry.run_folders` and
  :mod:`~include.mlops.registry.monitor_status`), through their step folder's
  marker (:mod:`include.mlops.artifact_store`): a run shows once one of its step
  folders is published, a step's files only as its marker lists them, each
  with the marker's ``published_at`` as its mtime (the deploy time the page
  shows is the deploy step's).

A runs folder is listed at most every :data:`REFRESH_S` seconds (one paginated
LIST of ``runs/<dag_id>/`` with the ETags: only steps whose marker changed are
read again), and the registry's answers are kept as long
(:meth:`BucketView.fresh`), so a page load does not list the bucket each time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Hashable
from pathlib import Path
from typing import Any

from include.mlops.artifact_store import MARKER, ArtifactStore
from include.mlops.registry.protocol import RegistryError
from include.mlops.registry.version_files import CHECKSUMS_FILE, METADATA_DIR

log = logging.getLogger(__name__)

# Seconds a listing of the bucket (runs, versions, labels, label moves) is used before it is read again.
REFRESH_S = 5.0
# Step folders whose changed files are fetched at once (the first page load of a long history reads many).
SYNC_THREADS = 8
VIEW_SUFFIX = ".models-view"
# Written in a version's folder once its assets.extra/ is complete here (versions never change).
_PULLED = ".assets-pulled"


def view_dir(store: ArtifactStore) -> Path:
    """The Models view's folder for ``store``: beside its mirror, ``<mirror>.models-view``."""
    return store.local.with_name(store.local.name + VIEW_SUFFIX)


class BucketView:
    """What the Models view reads of one object-store root, copied into :attr:`root` (a root in the local layout)."""

    def __init__(self, store: ArtifactStore, refresh_s: float = REFRESH_S) -> None:
        self.store = dataclasses.replace(store, local=view_dir(store))  # pulls land in the view's folder
        self.root = self.store.local
        self.refresh_s = refresh_s
        self._answers: dict[Hashable, tuple[float, Any]] = {}
        self._markers: dict[str, str] = {}  # step folder -> ETag of the marker its files here came from
        self._sync_lock = threading.Lock()

    def fresh(self, key: Hashable, read: Callable[[], Any]) -> Any:
        """``read()``'s answer, kept for :attr:`refresh_s` seconds (callers copy what they change)."""
        cached = self._answers.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.refresh_s:
            return cached[1]
        value = read()
        self._answers[key] = (time.monotonic(), value)
        return value

    # ------------------------------------------------------------------ registry

    def model_folders(self) -> list[str]:
        """The names of the model prefixes in the registry (``models/<name>/``)."""
        return self.fresh("model-folders", lambda: list(self.store.objects.children("models")))

    def version_listing(self, name: str, version: int) -> dict[str, str]:
        """``{path in the version: ETag}`` of a version's objects (the LIST alone), read again every refresh."""
        return self.fresh(
            ("version", name, version), lambda: dict(self.store.objects.listing(f"models/{name}/{version}"))
        )

    def version_files(self, name: str, version: int) -> Path:
        """The local folder of a complete version, with its ``assets.extra/`` (and nothing else) brought over."""
        folder = self.root / "models" / name / str(version)
        if not (folder / _PULLED).is_file():
            self.store.pull(folder / METADATA_DIR)
            if (folder / CHECKSUMS_FILE).is_file():
                (folder / _PULLED).touch()
        return folder

    # ------------------------------------------------------------------ runs

    def sync_runs(self, dag_folder: str, wanted: Collection[str]) -> None:
        """Bring ``runs/<dag_folder>/`` here as the bucket publishes it, ``wanted`` files only (``<step>/<file>``).

        At most once every :attr:`refresh_s` seconds; when the bucket cannot be
        read, the page shows what was brought over before (logged).
        """
        with self._sync_lock:
            self.fresh(("runs", dag_folder), lambda: self._sync_logged(dag_folder, wanted))

    def _sync_logged(self, dag_folder: str, wanted: Collection[str]) -> None:
        try:
            self._sync(f"runs/{dag_folder}", wanted)
        except RegistryError as exc:
            log.warning("Models view: cannot read runs/%s in %s, showing the copy from before: %s",
                        dag_folder, self.store.uri, exc)  # fmt: skip

    def _sync(self, rel: str, wanted: Collection[str]) -> None:
        by_step: dict[str, list[str]] = {}
        for path in wanted:
            step, _, name = path.partition("/")
            by_step.setdefault(step, []).append(name)
        # Step folders with a marker, by "<run>/<step>": only those are published (a marker is written last).
        published = {
            key[: -len(MARKER) - 1]: etag
            for key, etag in self.store.objects.listing(rel)
            if key.count("/") == 2 and key.endswith(f"/{MARKER}")
        }
        runs = {step.partition("/")[0] for step in published}
        local = self.root / rel
        for run in subfolders(local):  # runs and steps no longer published leave the view
            for step in subfolders(local / run) if run in runs else []:
                if f"{run}/{step}" not in published:
                    shutil.rmtree(local / run / step, ignore_errors=True)
                    self._markers.pop(f"{rel}/{run}/{step}", None)
            if run not in runs:
                shutil.rmtree(local / run, ignore_errors=True)
        for run in runs:
            (local / run).mkdir(parents=True, exist_ok=True)
        changed = [
            (f"{rel}/{step}", etag, by_step[step.partition("/")[2]])
            for step, etag in sorted(published.items())
            if step.partition("/")[2] in by_step and self._markers.get(f"{rel}/{step}") != etag
        ]
        with concurrent.futures.ThreadPoolExecutor(SYNC_THREADS) as pool:
            for future in [pool.submit(self._sync_step, *item) for item in changed]:
                future.result()

    def _sync_step(self, rel: str, etag: str, names: list[str]) -> None:
        """Bring the ``names`` a step folder's marker lists here, drop those it no longer lists."""
        local = self.root / rel
        found = self.store.objects.get(f"{rel}/{MARKER}")
        if found is None:  # unpublished since the listing (a rerun's push): the next refresh sees the new one
            shutil.rmtree(local, ignore_errors=True)
            return
        marker = json.loads(found[0])
        listed = {item["path"] for item in marker["files"]}
        names = [name for name in names if name in listed]
        self.store.pull_listed(rel, marker, names)
        published = _timestamp(marker.get("published_at"))
        for name in names:
            os.utime(local / name, (published, published))
        for name in set(_files_in(local)) - set(names):
            (local / name).unlink(missing_ok=True)
        # The run folder's mtime is the run record's cache key (include.mlops.registry.run_folders.RunHistory).
        os.utime(local.parent)
        self._markers[rel] = etag


def subfolders(folder: Path) -> list[str]:
    """The names of the folders in ``folder`` (none when it does not exist)."""
    try:
        return [entry.name for entry in os.scandir(folder) if entry.is_dir()]
    except OSError:
        return []


def _files_in(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def _timestamp(value: Any) -> float:
    try:
        return dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return time.time()
