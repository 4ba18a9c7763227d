"""The artifact root and atomic writes under it.

Everything a run produces lives under one root (``$MLOPS_ARTIFACT_ROOT``,
default ``<project>/artifacts``):

    runs/<dag_id>/<run_id>/<step>/   one folder per step of a run
    models/<name>/<version>/         the registry (TF Serving's model base path)
    models/models.config             TF Serving's model config file

A step writes its whole output folder into a staging folder beside it and
swaps it in with renames, so a step killed halfway leaves either the previous
output or nothing, and a rerun replaces its own output and nothing else.

On Kubernetes the root is one share written by processes with different user
ids (step pods and the model server run as 1000:1000, Airflow's workers as
50000:0 with supplementary group 1000).  They cooperate through one group,
so every writer follows one policy, defined here and described in
docs/shared-storage.md: umask 002, files 0664, folders 2775 (the setgid bit
makes new entries inherit the share's group).  The writers below apply the
modes explicitly, because temporary files and folders, and libraries such as
TensorFlow (which makes its SavedModel folders 0755), ignore the umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from include.mlops.config import PROJECT_ROOT
from include.mlops.registry.object_uri import ObjectUri, scheme_problem

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")

# The shared-storage policy: group members may replace each other's files and folders.
SHARED_UMASK = 0o002
FILE_MODE = 0o664
EXECUTABLE_MODE = 0o775
# setgid: entries created inside keep the folder's group (the share's GID) whoever creates them.
# A chmod without this bit clears it, so every chmod of a folder uses this mode.
DIR_MODE = 0o2775
POLICY_DOC = "docs/shared-storage.md"
# The artifact root: a folder, or an object store (include.mlops.artifact_store) with a local mirror under STAGING_ENV.
ROOT_ENV = "MLOPS_ARTIFACT_ROOT"
STAGING_ENV = "MLOPS_STAGING_DIR"


def use_shared_umask() -> int:
    """Give this process the shared umask (002) and return the one it had.

    Called once at the start of every process that writes the artifact root
    (the step CLI, Airflow task processes), so that files that libraries
    create (pyarrow, matplotlib, logs) are group-writable too.
    """
    return os.umask(SHARED_UMASK)


def shared_mode(path: str | os.PathLike[str]) -> None:
    """Give one file (0664, or 0775 when executable) or folder (2775) its shared mode; links are left alone."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return
    if stat.S_ISDIR(info.st_mode):
        mode = DIR_MODE
    else:
        mode = EXECUTABLE_MODE if info.st_mode & 0o111 else FILE_MODE
    if stat.S_IMODE(info.st_mode) == mode:
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise PermissionError(
            f"cannot give {path} the shared mode {mode:o} ({exc}); the artifact root must let a file's owner "
            f"chmod it, see {POLICY_DOC}"
        ) from exc


def share_tree(root: str | os.PathLike[str]) -> None:
    """Apply :func:`shared_mode` to ``root`` and everything under it (a tree this process just wrote)."""
    shared_mode(root)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            shared_mode(os.path.join(folder, name))


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` that gives every folder it creates the shared mode (2775), whatever the umask."""
    path = Path(path)
    missing: list[Path] = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another writer made it at the same moment (and gave it the same mode)
        shared_mode(folder)
    path.mkdir(exist_ok=True)  # raises when ``path`` exists but is not a folder
    return path


class ArtifactStoreError(RuntimeError):
    """The object-store artifact root cannot be used as configured; the message says what to fix."""


def is_object_store_uri(value: str | os.PathLike[str] | None) -> bool:
    """Whether a configured root names an object store (``s3://``, ``gs://``) rather than a local folder."""
    return value is not None and "://" in str(value) and not str(value).startswith("file://")


def remote_root(value: str | None = None) -> Any:
    """The configured root as an :class:`ObjectUri` when it is an object store, else None.

    Raises :class:`ArtifactStoreError` for a URI this build cannot use (a
    malformed one, or ``gs://``), naming the variable and the fix.
    """
    value = os.environ.get(ROOT_ENV, "") if value is None else value
    if not is_object_store_uri(value):
        return None
    try:
        uri = ObjectUri.parse(value)
    except ValueError as exc:
        raise ArtifactStoreError(f"{ROOT_ENV}={value!r}: {exc}") from None
    problem = scheme_problem(uri)
    if problem is not None:
        raise ArtifactStoreError(f"{ROOT_ENV}={value!r}: {problem}; use an s3:// bucket or a mounted folder")
    return uri


def mirror_dir(uri: Any) -> Path:
    """The local mirror of ``uri``: ``$MLOPS_STAGING_DIR/<bucket>-<hash of the URI>`` (default: the temp folder)."""
    base = Path(os.environ.get(STAGING_ENV) or Path(tempfile.gettempdir()) / "mlops-mirror")
    digest = hashlib.sha256(str(uri).encode()).hexdigest()[:10]
    return (base / f"{uri.bucket}-{digest}").resolve()


def artifact_root() -> Path:
    """``$MLOPS_ARTIFACT_ROOT`` or ``<project>/artifacts``, as an absolute path.

    When the root is an object store (``s3://bucket/prefix``) this is the
    process's local mirror of it (:mod:`include.mlops.artifact_store`).
    """
    uri = remote_root()
    if uri is not None:
        return mirror_dir(uri)
    root = os.environ.get("MLOPS_ARTIFACT_ROOT") or str(PROJECT_ROOT / "artifacts")
    if root.startswith("file://"):
        root = root[len("file://") :]
    return Path(root).resolve()


def safe_segment(value: str) -> str:
    """A run id such as ``manual__2026-11-27T10:00:00+00:00`` as a portable folder name."""
    return _UNSAFE.sub("_", value)


def run_dir(dag_id: str, run_id: str, step: str, root: Path | None = None) -> Path:
    root = root if root is not None else artifact_root()
    return root / "runs" / safe_segment(dag_id) / safe_segment(run_id) / step


def registry_root(root: Path | None = None) -> Path:
    return (root if root is not None else artifact_root()) / "models"


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (raises ``OSError`` where that is not supported)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every filesystem supports it)."""
    with contextlib.suppress(OSError):
        fsync_path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; artifacts are read and replaced by other users of the share's group.
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def step_output(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Stage a step's output folder and swap it in only when the block succeeds.

    >>> with step_output(run_dir(...)) as staging:
    ...     (staging / "metrics.json").write_text("{}")

    On an exception the staging folder is removed and ``final`` is untouched.
    Whatever the block wrote gets the shared modes before it is swapped in.
    """
    final = Path(final)
    make_dirs(final.parent)
    staging = final.parent / f".{final.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        share_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, final)


def replace_dir(staging: Path, final: Path) -> None:
    """Swap ``staging`` in as ``final``, replacing any earlier ``final``."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(staging, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            log.warning(
                "Could not remove all of %s (the output it replaced): some of its folders are not writable by "
                "this user; give the artifact root the shared modes described in %s",
                old,
                POLICY_DOC,
            )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_checksums(root: str | os.PathLike[str], exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its POSIX path relative to ``root``."""
    root = Path(root)
    sums: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not any(rel == e or rel.startswith(e.rstrip("/") + "/") for e in exclude):
            sums[rel] = sha256_file(path)
    return sums


def dir_size_bytes(root: str | os.PathLike[str]) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def to_jsonable(value: Any) -> Any:
    """Turn numpy scalars and paths into plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
