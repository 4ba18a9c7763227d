"""An exclusive ``flock`` on a lock file that every user of a shared artifact root can open.

The kernel releases a dead process's lock, so whatever a holder leaves behind
(a staging folder) belongs to a writer that died.  ``flock`` is reliable on
local disks and most PVCs; on NFS, use a volume whose locks are honoured.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from include.mlops import artifacts


def open_lock_file(lock_path: Path) -> int:
    """A descriptor of ``lock_path`` (created group-writable if missing, with its folders) to ``flock``.

    Opened for writing (NFS needs that for an exclusive lock), so every user of
    the share's group must be able to open it: whoever creates it makes it
    group-writable, whatever its umask.
    """
    artifacts.make_dirs(lock_path.parent)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, artifacts.FILE_MODE)
    try:
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and info.st_mode & 0o777 != artifacts.FILE_MODE:
            os.fchmod(fd, artifacts.FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created group-writable if missing) for the ``with`` block."""
    fd = open_lock_file(lock_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
