"""The deploy journal: one record per model and label, in the model's registry folder (or prefix).

A deploy writes ``models/<name>/.deploy-<label>.journal.json`` before it moves
the label and removes it once the new version is verified (or the label is
back).  While the record exists, the label may name a version nobody verified,
so every reader that needs the *verified* version checks it first:

- the next deploy of the model repairs the label (puts it back on the
  journal's ``previous`` version) before doing anything else;
- the champion lookup (the evaluate step's ``--champion auto``) repairs it
  too when no deploy is running, else it compares against ``previous``;
- the Models view shows the label's verified version and the unfinished move.

``models/<name>/.deploy.lock`` serialises deploys of one model (every label:
a deploy's final policy edit must not drop a version another deploy of the
same model has just preloaded).  A journal whose lock is free belongs to a
deploy that ended without finishing (an exception it could not clean up
after, SIGKILL, a lost node, retries exhausted).  TF Serving ignores both:
only numeric folders are versions.

**Both registry backends, one API.**  Every function takes the folder the
registry's ``model_dir(name)`` returns; the rules (the record, the wait for the
lock, its messages) are here once, and :mod:`include.mlops.deploy.journal_store`
keeps the bytes and takes the lock for each backend:

- **filesystem** (a ``Path``): a journal is a file written by rename after
  fsync; the lock is an ``flock``, which the kernel releases the moment its
  holder dies, so a dead deploy's journal is repairable at once;
- **object store** (an ``ObjectUri``, ``s3://``): a journal is an object (S3
  replaces objects atomically; journals are found by listing the model's
  prefix); the lock is an object created with ``If-None-Match: *`` that names
  its holder and a *lease*.  The holder deletes it when done; nothing renews
  it, and no kernel frees it, so a holder that died keeps the model's deploys
  waiting until the lease ends (they fail with :class:`DeployBusyError` after
  ``wait_s`` and the task's retry waits again).  Then the first waiter to
  overwrite it with ``If-Match: <its ETag>`` has it: two waiters never both do.
  The lease is the step's runtime cap (``config.step_timeout(step)``, after
  which Airflow has stopped the task, its SIGTERM roll back included) plus
  :data:`LEASE_GRACE_S` for that clean up and for clock skew between workers
  (:func:`lease_for`): shorter, a live slow deploy could lose its lock to a
  second one and two label moves would interleave; longer, only the recovery
  from a SIGKILL waits longer.  "Free" for :func:`deploy_lock_if_free` means the
  same on both: no holder, or (S3) a holder whose lease ended.

Nothing here imports TensorFlow: the Models view reads journals too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from include.mlops.deploy.errors import DeployError
from include.mlops.deploy.journal_store import LOCK_NAME as LOCK_NAME  # re-exported
from include.mlops.deploy.journal_store import store_for
from include.mlops.registry.object_uri import ObjectUri
from include.mlops.steps.declaration import DEFAULT_STEP_TIMEOUTS

log = logging.getLogger(__name__)

_PREFIX, _SUFFIX = ".deploy-", ".journal.json"
# Added to a step's runtime cap to make the lock's lease on an object store (see the module docstring).
LEASE_GRACE_S = 300.0
# The lease of a holder that names no step: the deploy step's default runtime cap plus the grace.
DEFAULT_LEASE_S = DEFAULT_STEP_TIMEOUTS["deploy"] + LEASE_GRACE_S
# The champion lookup holds the lock for one config edit (a repair without a server).
REPAIR_LEASE_S = LEASE_GRACE_S

ModelDir = Path | ObjectUri


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
    path: ModelDir

    def describe(self) -> str:
        was = f"version {self.previous}" if self.previous is not None else "no version"
        return (
            f"a deploy (pid {self.pid} on {self.host}, started {self.started_at}) was moving label "
            f"{self.label!r} from {was} to version {self.version} and did not finish"
        )


def lease_for(config: Any, step: str = "deploy") -> float:
    """Seconds a holder's deploy lock lasts on an object store: the step's runtime cap plus :data:`LEASE_GRACE_S`."""
    return config.step_timeout(step).total_seconds() + LEASE_GRACE_S


def _name(label: str) -> str:
    return f"{_PREFIX}{label}{_SUFFIX}"


def journal_path(model_dir: ModelDir, label: str) -> ModelDir:
    return store_for(model_dir).where(_name(label))


def write_journal(model_dir: ModelDir, name: str, label: str, version: int, previous: int | None) -> DeployJournal:
    """Record the move about to happen (atomically, durably) and return it."""
    store = store_for(model_dir)
    journal = DeployJournal(
        model_name=name,
        label=label,
        version=version,
        previous=previous,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        pid=os.getpid(),
        host=socket.gethostname(),
        path=store.where(_name(label)),
    )
    store.write(_name(label), {k: v for k, v in asdict(journal).items() if k != "path"})
    return journal


def read_journal(model_dir: ModelDir, label: str) -> DeployJournal | None:
    """The label's journal, None when there is none; :class:`DeployError` when it cannot be read."""
    store = store_for(model_dir)
    path = store.where(_name(label))
    try:
        entry = store.read(_name(label))
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if entry is None:
        return None
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
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _unreadable(path, exc) from None


def unfinished_deploys(model_dir: ModelDir) -> list[DeployJournal]:
    """Every label journal of the model, by label; an unreadable one raises :class:`DeployError`."""
    labels = sorted(
        n[len(_PREFIX) : -len(_SUFFIX)]
        for n in store_for(model_dir).names()
        if n.startswith(_PREFIX) and n.endswith(_SUFFIX)
    )
    return [j for j in (read_journal(model_dir, label) for label in labels) if j is not None]


def remove_journal(journal: DeployJournal) -> None:
    store_for(journal.path.parent).remove(journal.path.name)


def _unreadable(path: ModelDir, exc: Exception) -> DeployError:
    return DeployError(
        f"the deploy journal {path} is unreadable ({exc!r}); check the model's labels in models.config "
        "by hand (put the label on the last version you know was verified), then delete the journal and retry"
    )


@contextlib.contextmanager
def deploy_lock(
    model_dir: ModelDir, *, wait_s: float, lease_s: float = DEFAULT_LEASE_S, progress_s: float = 10.0
) -> Iterator[None]:
    """Hold the model's deploy lock; wait up to ``wait_s`` for another deploy, saying so every ``progress_s``.

    ``lease_s`` matters on an object store only: how long the lock stays this
    holder's should it die (:func:`lease_for` its step).
    """
    with store_for(model_dir).lock(lease_s) as lock:
        deadline = time.monotonic() + wait_s
        next_report = time.monotonic()
        while not lock.try_take():
            now = time.monotonic()
            if now >= deadline:
                raise DeployBusyError(
                    f"another deploy of this model holds {lock.where}{lock.holder()} after {wait_s:g} s; "
                    "it runs until it verified its version or put the label back: retry later"
                )
            if now >= next_report:
                log.info("Waiting for another deploy of this model to finish (%s%s)", lock.where, lock.holder())
                next_report = now + progress_s
            time.sleep(min(lock.poll_s, max(deadline - now, 0.01)))
        try:
            yield
        finally:
            lock.release()


@contextlib.contextmanager
def deploy_lock_if_free(model_dir: ModelDir, *, lease_s: float = REPAIR_LEASE_S) -> Iterator[bool]:
    """Hold the model's deploy lock if nobody does (yields True), else yield False at once.

    Free means no holder, or on an object store a holder whose lease ended (it is taken over).
    """
    with store_for(model_dir).lock(lease_s) as lock:
        held = lock.try_take()
        try:
            yield held
        finally:
            if held:
                lock.release()
