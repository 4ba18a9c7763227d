"""The artifact root and atomic writes under it.

Everything a run produces lives under one root (``$MLOPS_ARTIFACT_ROOT``,
default ``<project>/artifacts``):

    runs/<dag_id>/<run_id>/<step>/   one folder per step of a run
    models/<name>/<version>/         the registry (TF Serving's model base path)
    models/models.config             TF Serving's model config file

A step writes its whole output folder into a staging folder beside it and
swaps it in with renames, so a step killed halfway leaves either the previous
output or nothing, and a rerun replaces its own output and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from include.mlops.config import PROJECT_ROOT

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")
_UMASK = os.umask(0)
os.umask(_UMASK)


def artifact_root() -> Path:
    """``$MLOPS_ARTIFACT_ROOT`` or ``<project>/artifacts``, as an absolute path."""
    root = os.environ.get("MLOPS_ARTIFACT_ROOT") or str(PROJECT_ROOT / "artifacts")
    if root.startswith("file://"):
        root = root[len("file://") :]
    if "://" in root:
        raise ValueError(
            f"MLOPS_ARTIFACT_ROOT={root!r}: only local paths (or a mounted bucket/PVC) are supported by this build"
        )
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; artifacts are read by other processes and containers.
        os.fchmod(fd, 0o666 & ~_UMASK)
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
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
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
