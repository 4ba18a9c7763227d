"""The artifact root on object storage: a local mirror that processes work in, synced with the bucket.

``MLOPS_ARTIFACT_ROOT`` is a local folder (the embedded default, a mounted
share) or an object-store URI, ``s3://bucket/prefix``.  On object storage:

- the **registry** (``<root>/models/``) is :class:`ObjectStoreRegistry`: versions
  are claimed and labels moved with conditional writes, straight in the bucket
  (:func:`open_registry` builds the one this process should use);
- **everything else** (``runs/<dag_id>/<run_id>/<step>/``, prediction logs,
  monitoring outputs) is worked on in a local mirror of the root
  (:func:`include.mlops.artifacts.artifact_root` returns it:
  ``$MLOPS_STAGING_DIR/<bucket>-<hash>``, default under the temp folder).  The
  step CLI pulls a step's inputs into the mirror before it runs and pushes its
  ``--out`` folder and result file after it succeeded (:mod:`include.mlops.cli`),
  so step code keeps reading and writing local paths;
- a **pushed folder is published by a marker** (``<folder>/.complete.json``,
  the list of its files with their sizes and sha256), written last; a rerun
  deletes the marker before it uploads.  A reader pulls a run folder only
  through its marker, so it never sees a step's output half-written, and a step
  that died before its push published nothing.  Registry version folders are
  published by their own manifest (``checksums.json``) and are immutable.

Object stores have no rename, so this is the one place that decides what
"written" means there.  Only ``s3://`` is supported: ``gs://`` is refused
because no GCS stand-in runs where this project is tested.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.artifacts import (  # re-exported: the root's address is decided in artifacts
    ROOT_ENV,
    STAGING_ENV,
    ArtifactStoreError,
    is_object_store_uri,
    mirror_dir,
    remote_root,
)
from include.mlops.registry.protocol import RegistryError

log = logging.getLogger(__name__)

MARKER = ".complete.json"
# Folders under the root whose contents are published by MARKER, with the depth of a published folder's
# shallowest possible path: step outputs (runs/<dag_id>/<run_id>/<step>) and each model's monitoring state
# (monitoring/<model>: window verdicts, requests, alerts).  Other folders are pulled as the bucket lists them.
MARKED_TOP = {"runs": 3, "monitoring": 2}
# runs/<dag_id>/<run_id>/<file>: files pushed alone (result files) sit directly in a run folder.
RUN_FILE_DEPTH = 3
# The registry's manifest: a version folder without it does not exist (include.mlops.registry.object_store).
VERSION_MANIFEST = "assets.extra/checksums.json"


@dataclass
class ArtifactStore:
    """An object-store artifact root (``uri``) and this process's local mirror of it (``local``)."""

    uri: Any  # ObjectUri
    local: Path
    client: Any

    @functools.cached_property
    def objects(self) -> Any:
        from include.mlops.registry.s3_objects import S3Objects

        return S3Objects(self.uri, self.client)

    # ------------------------------------------------------------------ addresses

    def relative(self, path: str | os.PathLike[str]) -> str | None:
        """``path`` (a mirror path or a URI under the root) relative to the root, or None when it is neither."""
        text = os.fspath(path)
        if is_object_store_uri(text):
            prefix = str(self.uri).rstrip("/") + "/"
            return text[len(prefix) :].strip("/") if text.startswith(prefix) else None
        if not os.path.isabs(text):
            return None  # "auto", "stable", a number: no artifact
        try:
            rel = Path(text).resolve().relative_to(self.local).as_posix()
        except ValueError:
            return None
        return "" if rel == "." else rel

    def localize(self, value: str) -> str:
        """A URI under the root -> its mirror path; anything else unchanged."""
        rel = self.relative(value) if is_object_store_uri(value) else None
        return str(self.local / rel) if rel is not None else value

    def uri_of(self, path: str | os.PathLike[str]) -> Any:
        rel = self.relative(path)
        if rel is None:
            raise ArtifactStoreError(f"{path} is not under the artifact root {self.uri} (mirror {self.local})")
        return self.uri / rel

    # ------------------------------------------------------------------ pull

    def pull(self, path: str | os.PathLike[str]) -> bool:
        """Bring a file or folder of the root into the mirror; False when the bucket has nothing published there.

        Under ``runs/`` only what a marker lists is pulled: the folder's own,
        or the marker of the step folder it is in (``train/model`` is pulled
        through ``train``'s), so a step's output is never read half-written.
        Files already in the mirror with the listed sha256 are not downloaded
        again.  Elsewhere (the registry's versions, which are immutable) a file
        or folder is pulled as the bucket lists it.
        """
        rel = self.relative(path)
        if rel is None:
            raise ArtifactStoreError(f"{path} is not under the artifact root {self.uri} (mirror {self.local})")
        if rel.split("/", 1)[0] in MARKED_TOP:
            return self._pull_published(rel)
        local = self.local / rel
        if rel and self.objects.exists(rel):
            self._download(rel, local)
            return True
        keys = list(self.objects.keys(rel)) if rel else []
        for key in keys:
            target = local / key
            if not target.is_file():
                self._download(f"{rel}/{key}", target)
        return bool(keys)

    def _pull_published(self, rel: str) -> bool:
        owner = self._owning_marker(rel)
        if owner is None and rel.startswith("runs/") and rel.count("/") == RUN_FILE_DEPTH and self.objects.exists(rel):
            # A file pushed alone beside the step folders (a step's result file): one object, written whole.
            self._download(rel, self.local / rel)
            return True
        if owner is None:
            # A folder above the step folders (a whole run): pull each published step folder in it.
            children = list(self.objects.children(rel))
            return any([self._pull_published(f"{rel}/{child}") for child in children if self._marker(f"{rel}/{child}")])
        base, marker = owner
        sub = rel[len(base) :].strip("/")
        sums = {item["path"]: item["sha256"] for item in marker["files"]}
        wanted = [name for name in sums if not sub or name == sub or name.startswith(f"{sub}/")]
        self.pull_listed(base, marker, wanted)
        if not sub:
            _remove_unlisted(self.local / base, sums)
        return bool(wanted)

    def pull_listed(self, base: str, marker: dict[str, Any], names: Iterable[str]) -> None:
        """Bring the files ``names`` of the published folder ``base`` (relative to the root) into the mirror.

        ``marker`` is the folder's marker, already read, and must list every
        name; a file the mirror holds with the listed sha256 is not downloaded.
        """
        sums = {item["path"]: item["sha256"] for item in marker["files"]}
        for name in names:
            target = self.local / base / name
            if not (target.is_file() and _sha256(target) == sums[name]):
                self._download(f"{base}/{name}", target, sha256=sums[name])

    def _owning_marker(self, rel: str) -> tuple[str, dict[str, Any]] | None:
        """The marker of ``rel`` or of the nearest folder above it (down to :data:`MARKED_TOP`'s depth), with that folder."""
        parts = rel.split("/")
        for depth in range(len(parts), MARKED_TOP[parts[0]] - 1, -1):
            base = "/".join(parts[:depth])
            found = self._marker(base)
            if found is not None:
                return base, found
        return None

    def _marker(self, rel: str) -> dict[str, Any] | None:
        found = self.objects.get(f"{rel}/{MARKER}") if rel else None
        return json.loads(found[0]) if found is not None else None

    def _download(self, rel: str, target: Path, sha256: str | None = None) -> None:
        """Copy one object into the mirror; with ``sha256`` (its marker's), only the bytes the marker published.

        An object that vanished, or whose bytes are not the marker's (a rerun
        publishing the folder again meanwhile), raises :class:`RegistryError`,
        which the task retries; nothing is written to the mirror then.
        """
        found = self.objects.get(rel)
        if found is None:
            raise RegistryError(f"{self.uri / rel} vanished while it was being read; the task is retried")
        if sha256 is not None and hashlib.sha256(found[0]).hexdigest() != sha256:
            raise RegistryError(
                f"{self.uri / rel} changed while it was being read (it is not what its folder's {MARKER} "
                "lists: the folder is being published again); the task is retried"
            )
        artifacts.atomic_write_bytes(target, found[0])

    # ------------------------------------------------------------------ push

    def push(self, path: str | os.PathLike[str]) -> Any:
        """Publish a mirror file, or a folder with its marker written last; returns the URI.

        A folder's earlier marker is deleted first and its objects that are no
        longer in the folder are deleted after the new marker, so a reader sees
        the old output, nothing, or the new output; never a mix.
        """
        local = Path(path)
        rel = self.relative(local)
        if not rel:
            raise ArtifactStoreError(f"{path} is not a file or folder under the artifact root {self.uri}")
        if local.is_file():
            self.objects.upload(rel, str(local))
            return self.uri / rel
        if not local.is_dir():
            raise ArtifactStoreError(f"cannot publish {local}: it does not exist")
        self.objects.delete([f"{rel}/{MARKER}"])
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and p.name != MARKER)
        for name in files:
            self.objects.upload(f"{rel}/{name}", str(local / name))
        marker = {
            "files": [{"path": n, "size": (local / n).stat().st_size, "sha256": _sha256(local / n)} for n in files],
            "published_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        self.objects.put(f"{rel}/{MARKER}", json.dumps(marker, indent=1, sort_keys=True).encode())
        stale = [f"{rel}/{key}" for key in self.objects.keys(rel) if key != MARKER and key not in set(files)]
        if stale:
            self.objects.delete(stale)
        log.info("Published %d file(s) to %s", len(files), self.uri / rel)
        return self.uri / rel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_unlisted(folder: Path, keep: Iterable[str]) -> None:
    """Files a pulled folder's mirror holds that its marker does not list (an older output) go away."""
    keep = set(keep)
    if not folder.is_dir():
        return
    for p in folder.rglob("*"):
        if p.is_file() and p.relative_to(folder).as_posix() not in keep:
            with contextlib.suppress(OSError):
                p.unlink()


@functools.lru_cache(maxsize=4)
def _store_for(uri_text: str, staging: str) -> ArtifactStore:
    from include.mlops.registry.object_uri import ObjectUri
    from include.mlops.registry.s3_objects import make_client

    uri = ObjectUri.parse(uri_text)
    return ArtifactStore(uri, mirror_dir(uri), make_client())


def current() -> ArtifactStore | None:
    """This process's object-store artifact root (from the environment), or None when the root is a folder."""
    uri = remote_root()
    if uri is None:
        return None
    return _store_for(str(uri), os.environ.get(STAGING_ENV, ""))


def open_registry(root: str | os.PathLike[str] | None = None) -> Any:
    """The registry this process should use: the one in the bucket on object storage, else ``root``'s folder.

    ``root`` (a registry folder) is used as given; without it, the configured
    artifact root decides.
    """
    store = None if root is not None else current()
    if store is not None:
        from include.mlops.registry.object_store import ObjectStoreRegistry

        return ObjectStoreRegistry(store.uri / "models", client=store.client)
    from include.mlops.registry.filesystem import Registry

    return Registry(root)


def local_version_dir(registry: Any, name: str, version: int) -> Path:
    """A version's folder on local disk: the registry's own on a filesystem, its mirror copy on object storage."""
    where = registry.require_version(name, version)
    if isinstance(where, Path):
        return where
    store = current()
    if store is None:
        raise ArtifactStoreError(f"{where} is on object storage but {ROOT_ENV} does not name that store")
    local = store.local / store.relative(str(where))
    if not (local / VERSION_MANIFEST).is_file():
        from include.mlops.registry.mirror import copy_version

        copy_version(registry, name, version, local)
    return local


@contextlib.contextmanager
def synced(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Work on a folder of state that several machines update in turn (a model's monitoring state).

    On object storage the published folder is pulled first and published
    again afterwards, also when the block raises (state recorded before a
    skip must reach the bucket).  The last writer wins, so callers must not
    run at the same time: a model's monitor runs do not (one active run).
    """
    folder = Path(folder)
    fetch(folder)
    try:
        yield folder
    finally:
        if folder.is_dir():
            publish(folder)


def publish(path: str | os.PathLike[str]) -> None:
    """Push a file or folder this process wrote under the artifact root; nothing to do on a local root."""
    store = current()
    if store is not None:
        store.push(path)


def fetch(path: str | os.PathLike[str]) -> None:
    """Pull a file or folder another process published under the artifact root; nothing to do on a local root."""
    store = current()
    if store is not None:
        store.pull(path)


def portable(value: Any) -> Any:
    """``value`` with every mirror path in it (strings, in dicts and lists too) written as its URI.

    Paths that leave a process (a step's JSON result, XComs, the arguments
    handed to a step, lineage) are written this way on object storage, so that
    any machine can read them; on a local root nothing changes.
    """
    store = current()
    if store is None:
        return value
    return map_strings(value, lambda text: str(store.uri / rel) if (rel := store.relative(text)) else text)


def localized(value: str) -> str:
    """A URI under the object-store root -> its path in this process's mirror, pulled; anything else unchanged."""
    store = current()
    if store is None or not is_object_store_uri(value):
        return value
    local = store.localize(value)
    if local != value:
        store.pull(local)
    return local


def map_strings(value: Any, change: Any) -> Any:
    """``value`` with ``change`` applied to every string in it, also inside dicts and lists."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [map_strings(item, change) for item in value]
    return value
