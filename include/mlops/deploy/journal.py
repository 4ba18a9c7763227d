"""The deploy journal: one file per model and label, under the model's registry folder.

A deploy writes ``models/<name>/.deploy-<label>.journal.json`` before it moves
the label and removes it once the new version is verified (or the label is
back).  While the file exists, the label may name a version nobody verified,
so every reader that needs the *verified* version checks it first:

- the next deploy of the model repairs the label (puts it back on the
  journal's ``previous`` version) before doing anything else;
- the champion lookup (the evaluate step's ``--champion auto``) repairs it
  too when no deploy is running, else it compares against ``previous``;
- the Models view shows the label's verified version and the unfinished move.

``models/<name>/.deploy.lock`` serialises deploys of one model (every label:
a deploy's final policy edit must not drop a version another deploy of the
same model has just preloaded).  The kernel releases a dead process's lock, so
a journal whose lock is free belongs to a deploy that ended without finishing
(an exception it could not clean up after, SIGKILL, a lost node, retries
exhausted).  TF Serving ignores both files: only numeric folders are versions.

Nothing here imports TensorFlow: the Models view reads journals too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from include.mlops import artifacts
from include.mlops.deploy.errors import DeployError
from include.mlops.registry.file_lock import open_lock_file

log = logging.getLogger(__name__)

LOCK_NAME = ".deploy.lock"
_PREFIX, _SUFFIX = ".deploy-", ".journal.json"


class DeployBusyError(DeployError):
    """Another deploy of the model holds its deploy lock for longer than this one may wait."""


@dataclass(frozen=True)
class DeployJournal:
    """An unfinished label move: ``label`` of ``model_name`` was being moved from ``previous`` to ``version``."""

    model_name: str
    label: str
    version: int
    previous: int | None
    started_at: str
    pid: int
    host: str
    path: Path

    def describe(self) -> str:
        was = f"version {self.previous}" if self.previous is not None else "no version"
        return (
            f"a deploy (pid {self.pid} on {self.host}, started {self.started_at}) was moving label "
            f"{self.label!r} from {was} to version {self.version} and did not finish"
        )


def journal_path(model_dir: Path, label: str) -> Path:
    return Path(model_dir) / f"{_PREFIX}{label}{_SUFFIX}"


def write_journal(model_dir: Path, name: str, label: str, version: int, previous: int | None) -> DeployJournal:
    """Record the move about to happen (atomically, durably) and return it."""
    path = journal_path(model_dir, label)
    journal = DeployJournal(
        model_name=name,
        label=label,
        version=version,
        previous=previous,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        pid=os.getpid(),
        host=socket.gethostname(),
        path=path,
    )
    entry = {k: v for k, v in asdict(journal).items() if k != "path"}
    artifacts.atomic_write_json(path, entry)
    return journal


def read_journal(model_dir: Path, label: str) -> DeployJournal | None:
    """The label's journal, None when there is none; :class:`DeployError` when it cannot be read."""
    path = journal_path(model_dir, label)
    try:
        entry = artifacts.read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    try:
        previous = entry["previous"]
        return DeployJournal(
            model_name=str(entry["model_name"]),
            label=str(entry["label"]),
            version=int(entry["version"]),
            previous=None if previous is None else int(previous),
            started_at=str(entry.get("started_at", "?")),
            pid=int(entry.get("pid", -1)),
            host=str(entry.get("host", "?")),
            path=path,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable(path, exc) from None


def unfinished_deploys(model_dir: Path) -> list[DeployJournal]:
    """Every label journal of the model, by label; an unreadable one raises :class:`DeployError`."""
    if not Path(model_dir).is_dir():
        return []
    labels = sorted(
        p.name[len(_PREFIX) : -len(_SUFFIX)]
        for p in Path(model_dir).iterdir()
        if p.name.startswith(_PREFIX) and p.name.endswith(_SUFFIX)
    )
    return [j for j in (read_journal(model_dir, label) for label in labels) if j is not None]


def remove_journal(journal: DeployJournal) -> None:
    journal.path.unlink(missing_ok=True)
    artifacts.fsync_dir(journal.path.parent)


def _unreadable(path: Path, exc: Exception) -> DeployError:
    return DeployError(
        f"the deploy journal {path} is unreadable ({exc!r}); check the model's labels in models.config "
        "by hand (put the label on the last version you know was verified), then delete the journal and retry"
    )


@contextlib.contextmanager
def deploy_lock(model_dir: Path, *, wait_s: float, progress_s: float = 10.0) -> Iterator[None]:
    """Hold the model's deploy lock; wait up to ``wait_s`` for another deploy, saying so every ``progress_s``."""
    fd = _open_lock(model_dir)
    try:
        deadline = time.monotonic() + wait_s
        next_report = time.monotonic()
        while not _try_flock(fd):
            now = time.monotonic()
            if now >= deadline:
                raise DeployBusyError(
                    f"another deploy of this model holds {Path(model_dir) / LOCK_NAME} after {wait_s:g} s; "
                    "it runs until it verified its version or put the label back: retry later"
                )
            if now >= next_report:
                log.info("Waiting for another deploy of this model to finish (%s)", Path(model_dir) / LOCK_NAME)
                next_report = now + progress_s
            time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def deploy_lock_if_free(model_dir: Path) -> Iterator[bool]:
    """Hold the model's deploy lock if nobody does (yields True), else yield False at once."""
    fd = _open_lock(model_dir)
    try:
        held = _try_flock(fd)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(model_dir: Path) -> int:
    return open_lock_file(Path(model_dir) / LOCK_NAME)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
