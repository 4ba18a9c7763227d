"""Where a model's deploy journals and deploy lock are kept: its registry folder, or its prefix in a bucket.

:mod:`include.mlops.deploy.journal` holds the rules (what a journal records,
how long a deploy waits for the lock, what it says when the lock stays busy);
this module only keeps the bytes and takes the lock, once per backend.
:func:`store_for` picks the backend from the model folder the registry gives:
a :class:`~pathlib.Path` (the filesystem registry) or an
:class:`~include.mlops.registry.object_uri.ObjectUri` (the object-store one).

==================  =========================================  ===================================================
                    folder (:class:`FolderStore`)              bucket (:class:`BucketStore`)
==================  =========================================  ===================================================
journal written     temp file, fsync, rename                   one PUT (S3 replaces an object atomically)
journals listed     the folder's entries                       one LIST of the model prefix, ``/``-delimited
lock taken          ``flock`` on ``.deploy.lock``              ``.deploy.lock`` created with ``If-None-Match: *``,
                                                               holding its owner (host, pid, time) and a lease
lock released       ``flock(LOCK_UN)``, or the kernel when     the holder deletes the object (only while it is
                    the holder dies                            still its own: same ETag)
holder died         free at once                               held until the lease ends; then the first waiter
                                                               to overwrite it with ``If-Match: <its ETag>`` has
                                                               it (a second waiter's overwrite gets 412)
==================  =========================================  ===================================================

On a bucket the lease is the only thing that frees a dead holder's lock, so
it must outlast every live holder (nobody renews it): the callers pass the
step's runtime cap plus a grace (:func:`include.mlops.deploy.journal.lease_for`).
Expiry is judged on the waiter's wall clock against the holder's, so the
grace also covers clock skew between workers.  A holder that outlived its
lease anyway (a deploy run by hand, with no runtime cap) finds the lock taken
over at release, logs it and leaves the new holder's lock alone; the check and
the delete are two requests, so that window is only closed for holders that
kept to their lease.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from include.mlops import artifacts
from include.mlops.registry.file_lock import open_lock_file
from include.mlops.registry.object_uri import ObjectUri

log = logging.getLogger(__name__)

LOCK_NAME = ".deploy.lock"


class ModelLock(Protocol):
    """The model's deploy lock, not yet held: :meth:`try_take` until it answers True, then :meth:`release`."""

    where: Path | ObjectUri
    poll_s: float  # how long a waiter sleeps between tries

    def try_take(self) -> bool: ...

    def release(self) -> None: ...

    def holder(self) -> str:
        """Who held it at the last failed try, for messages ("" when the backend cannot tell)."""
        ...


class JournalStore(Protocol):
    """The files of one model folder that deploys keep: journals by name, and the model's deploy lock."""

    def where(self, name: str) -> Path | ObjectUri: ...

    def write(self, name: str, entry: dict[str, Any]) -> None:
        """Replace ``name`` with ``entry`` (JSON) atomically: a reader sees the old or the new one."""
        ...

    def read(self, name: str) -> Any:
        """``name``'s JSON, None when it does not exist; OSError or ValueError when it cannot be read."""
        ...

    def names(self) -> list[str]:
        """The names of the files directly in the model folder (none when it does not exist)."""
        ...

    def remove(self, name: str) -> None:
        """Delete ``name`` (none there is fine) durably; a failure raises."""
        ...

    def lock(self, lease_s: float) -> contextlib.AbstractContextManager[ModelLock]: ...


def store_for(model_dir: Path | ObjectUri | str | os.PathLike[str]) -> JournalStore:
    """The store of a registry's model folder: a bucket prefix for an ``ObjectUri`` (or ``s3://`` text), else a folder."""
    if isinstance(model_dir, str) and "://" in model_dir:
        model_dir = ObjectUri.parse(model_dir)
    if isinstance(model_dir, ObjectUri):
        from include.mlops.registry.s3_objects import S3Objects

        return BucketStore(S3Objects(model_dir, _client_for(model_dir)))
    return FolderStore(Path(model_dir))


def _client_for(uri: ObjectUri) -> Any:
    """The artifact root's S3 client when ``uri`` is in its bucket (the registry's own), else a new one."""
    from include.mlops import artifact_store
    from include.mlops.registry.s3_objects import make_client

    store = artifact_store.current()
    return store.client if store is not None and store.uri.bucket == uri.bucket else make_client()


# --------------------------------------------------------------------------- a folder


@dataclass(frozen=True)
class FolderStore:
    folder: Path

    def where(self, name: str) -> Path:
        return self.folder / name

    def write(self, name: str, entry: dict[str, Any]) -> None:
        artifacts.atomic_write_json(self.folder / name, entry)

    def read(self, name: str) -> Any:
        try:
            return artifacts.read_json(self.folder / name)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return [p.name for p in self.folder.iterdir()] if self.folder.is_dir() else []

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)
        artifacts.fsync_dir(self.folder)

    @contextlib.contextmanager
    def lock(self, lease_s: float) -> Iterator[ModelLock]:
        """``flock`` needs no lease: the kernel releases a dead holder's lock."""
        path = self.folder / LOCK_NAME
        fd = open_lock_file(path)
        try:
            yield _Flock(fd, path)
        finally:
            os.close(fd)


@dataclass
class _Flock:
    fd: int
    where: Path
    poll_s: float = 0.2

    def try_take(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def holder(self) -> str:
        return ""


# --------------------------------------------------------------------------- a bucket


@dataclass(frozen=True)
class BucketStore:
    objects: Any  # S3Objects rooted at the model's prefix

    def where(self, name: str) -> ObjectUri:
        return self.objects.uri(name)

    def write(self, name: str, entry: dict[str, Any]) -> None:
        self.objects.put(name, json.dumps(entry, indent=1, sort_keys=True).encode())

    def read(self, name: str) -> Any:
        found = self.objects.get(name)
        return None if found is None else json.loads(found[0])

    def names(self) -> list[str]:
        return list(self.objects.files())

    def remove(self, name: str) -> None:
        self.objects.remove(name)

    @contextlib.contextmanager
    def lock(self, lease_s: float) -> Iterator[ModelLock]:
        yield _LeaseLock(self.objects, lease_s)


class _LeaseLock:
    """``.deploy.lock`` as an object: created only if absent, taken over only once its lease ended."""

    poll_s = 1.0  # each try is a request; a waiter of minutes needs no finer grain

    def __init__(self, objects: Any, lease_s: float) -> None:
        self.objects = objects
        self.lease_s = float(lease_s)
        self.where = objects.uri(LOCK_NAME)
        self._etag: str | None = None
        self._seen: dict[str, Any] | None = None

    def try_take(self) -> bool:
        from include.mlops.registry.s3_objects import ConditionFailed

        try:
            self._etag = self.objects.put(LOCK_NAME, self._record(), create_only=True)
            return True
        except ConditionFailed:
            pass
        found = self.objects.get(LOCK_NAME)
        if found is None:
            return False  # released since: the next try creates it
        self._seen = _parse(found[0])
        if self._seen is not None and self._seen["expires"] > time.time():
            return False
        try:  # expired (or unreadable: no lease at all): whoever overwrites the object seen first has it
            self._etag = self.objects.put(LOCK_NAME, self._record(), if_match=found[1])
        except ConditionFailed:
            return False  # another waiter took it over first, or its holder released it just now
        log.warning("Took over %s: its holder's lease ended (%s); that deploy is taken for dead",
                    self.where, _describe(self._seen))  # fmt: skip
        return True

    def release(self) -> None:
        """Delete the lock if it is still this holder's; never raises (an undeleted lock ends with its lease)."""
        from include.mlops.registry.protocol import RegistryError

        etag, self._etag = self._etag, None
        try:
            found = self.objects.get(LOCK_NAME)
            if found is None or found[1] != etag:
                log.error("%s was taken over by another deploy after this one's %g s lease ended; left to it",
                          self.where, self.lease_s)  # fmt: skip
                return
            self.objects.remove(LOCK_NAME)
        except RegistryError as exc:
            log.error("Could not release %s (%s); it frees itself when its %g s lease ends", self.where, exc,
                      self.lease_s)  # fmt: skip

    def holder(self) -> str:
        return f" ({_describe(self._seen)})" if self._seen is not None else ""

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({
            "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "at": _iso(now), "lease_s": self.lease_s, "expires": now + self.lease_s,
            "expires_at": _iso(now + self.lease_s),
        }, sort_keys=True).encode()  # fmt: skip


def _parse(data: bytes) -> dict[str, Any] | None:
    """The lock's record; None when it is not one (it then holds no lease, and is taken over like an expired one)."""
    try:
        record = json.loads(data)
        return {**record, "expires": float(record["expires"])} if isinstance(record, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "an unreadable lock object, with no lease"
    return (
        f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {record.get('at', '?')}, "
        f"lease until {record.get('expires_at', '?')}"
    )


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")
