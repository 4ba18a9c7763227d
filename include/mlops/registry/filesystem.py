"""The model registry: TensorFlow Serving's model base path plus its model config file.

Layout under :func:`include.mlops.artifacts.registry_root`::

    models/models.config                  TF Serving's model_config_list (names, version policy, labels)
    models/.models.config.lock            serialises rewrites of models.config
    models/<name>/.lock                   serialises version allocation for one model
    models/<name>/<version>/              a SavedModel TF Serving loads as it is
        saved_model.pb, variables/, ...
        model.tflite                      optional (TF Serving's --prefer_tflite_model reads this name)
        assets.extra/metrics.json         the candidate's evaluation metrics
        assets.extra/lineage.json         dag_id, run_id, data interval, code version, data sha256, ...
        assets.extra/gate.json            the gate decision that let it in (when one was given)
        assets.extra/model_card.md        for humans
        assets.extra/evidence/...         copies of the run files the lineage cites (evaluation, gate, snapshot
                                          manifest), so that a rerun rewriting the run folders changes nothing here
        assets.extra/checksums.json       sha256 of every other file of the version

TF Serving only loads all-digit folder names, so the dot-prefixed staging
folders and lock files next to the versions are invisible to it.

A version is written into a staging folder, fsynced, and claimed by renaming
it to its number, all under an exclusive ``flock`` on the model's lock file.
Holding the lock for the whole write (models here are megabytes) means the
version number is known while the metadata is written, so the model card and
lineage can name it, and that any staging folder found while holding the lock
belongs to a writer that died (the kernel releases a dead process's lock).
Version folders are never overwritten or modified after the rename.

Lock files, staging folders and versions get the shared modes of
:mod:`include.mlops.artifacts` (group-writable, setgid folders), so the step
pods and Airflow's workers, which run as different users, can both write here.

``flock`` is reliable on local disks and most PVCs; on NFS, use a volume whose
locks are honoured or run a single registering worker (the deploy pool has one
slot anyway).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from include.mlops import artifacts
from include.mlops.names import serving_name_problem
from include.mlops.registry.serving_artifact import TFLITE_FILE

log = logging.getLogger(__name__)

METADATA_DIR = "assets.extra"
CHECKSUMS_FILE = f"{METADATA_DIR}/checksums.json"
METRICS_FILE = f"{METADATA_DIR}/metrics.json"
LINEAGE_FILE = f"{METADATA_DIR}/lineage.json"
GATE_FILE = f"{METADATA_DIR}/gate.json"
MODEL_CARD_FILE = f"{METADATA_DIR}/model_card.md"
EVIDENCE_DIR = f"{METADATA_DIR}/evidence"
CONFIG_FILE = "models.config"
SERVING_BASE_PATH_ENV = "MLOPS_SERVING_BASE_PATH"

_STAGING_PREFIX = ".staging-"
# assets.extra files the registry writes itself; extra metadata may not replace them.
_OWN_METADATA = frozenset({"metrics.json", "lineage.json", "gate.json", "checksums.json"})
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says what to fix."""


class VersionNotFoundError(RegistryError):
    """The requested model version does not exist."""


class CorruptVersionError(RegistryError):
    """A version's files no longer match its checksums.json: do not serve it."""

    def __init__(self, name: str, version: int, problems: list[str]) -> None:
        self.name = name
        self.version = version
        self.problems = problems
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        super().__init__(
            f"model {name!r} version {version} is corrupt ({len(problems)} problem(s)): {shown}. "
            "Do not serve it: register the model again (a new version) or restore the folder from a backup."
        )


@dataclass(frozen=True)
class RegisterResult:
    version: int
    created: bool
    version_dir: Path


def _copy_file(src: str, dst: str) -> str:
    """The copy used for model files (module level so that a test can slow it down in a subprocess)."""
    return shutil.copy2(src, dst)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk before the rename publishes it."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        artifacts.fsync_path(path)
    artifacts.fsync_path(root)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    artifacts.make_dirs(lock_path.parent)
    # Opened for writing (NFS needs that for an exclusive lock), so every user of the share's group
    # must be able to open it: whoever creates it makes it group-writable, whatever its umask.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, artifacts.FILE_MODE)
    try:
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and info.st_mode & 0o777 != artifacts.FILE_MODE:
            os.fchmod(fd, artifacts.FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _model_files(checksums: Mapping[str, str]) -> dict[str, str]:
    """The checksums of the model itself (what TF Serving loads), without our metadata."""
    return {k: v for k, v in checksums.items() if not k.startswith(METADATA_DIR + "/")}


class Registry:
    """Versions of models in TF Serving's layout, and the labels in its model config file."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).resolve() if root is not None else artifacts.registry_root()

    # ------------------------------------------------------------------ paths and reads

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    def model_dir(self, name: str) -> Path:
        _check_name(name)
        return self.root / name

    def version_dir(self, name: str, version: int) -> Path:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"model version must be a positive integer, got {version!r}")
        return self.model_dir(name) / str(version)

    def versions(self, name: str) -> list[int]:
        """Registered versions of ``name``, ascending (empty when there are none)."""
        base = self.model_dir(name)
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)

    def latest_version(self, name: str) -> int | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def require_version(self, name: str, version: int) -> Path:
        path = self.version_dir(name, version)
        if not path.is_dir():
            known = ", ".join(map(str, self.versions(name))) or "none"
            raise VersionNotFoundError(f"model {name!r} has no version {version} in {self.root} (versions: {known})")
        return path

    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        """metrics, lineage and gate decision of a version (missing files read as None)."""
        path = self.require_version(name, version)
        out: dict[str, Any] = {}
        for key, rel in (("metrics", METRICS_FILE), ("lineage", LINEAGE_FILE), ("gate", GATE_FILE)):
            out[key] = artifacts.read_json(path / rel) if (path / rel).is_file() else None
        return out

    def verify(self, name: str, version: int) -> dict[str, str]:
        """Check every file of a version against its checksums.json; raise :class:`CorruptVersionError`."""
        path = self.require_version(name, version)
        sums_path = path / CHECKSUMS_FILE
        if not sums_path.is_file():
            raise CorruptVersionError(name, version, [f"{CHECKSUMS_FILE} is missing"])
        try:
            expected = artifacts.read_json(sums_path)
        except ValueError as exc:
            raise CorruptVersionError(name, version, [f"{CHECKSUMS_FILE} is not valid JSON ({exc})"]) from None
        actual = artifacts.dir_checksums(path, exclude=(CHECKSUMS_FILE,))
        problems = [f"{rel} is missing" for rel in sorted(set(expected) - set(actual))]
        problems += [f"{rel} is not listed in checksums.json" for rel in sorted(set(actual) - set(expected))]
        changed = [rel for rel in sorted(set(expected) & set(actual)) if expected[rel] != actual[rel]]
        problems += [f"{rel} has changed (sha256 mismatch)" for rel in changed]
        if problems:
            raise CorruptVersionError(name, version, problems)
        log.info("Verified %s version %d: %d files match their checksums", name, version, len(actual))
        return actual

    # ------------------------------------------------------------------ register

    def register(
        self,
        name: str,
        model_dir: str | os.PathLike[str],
        *,
        metrics: Mapping[str, Any],
        lineage: Mapping[str, Any],
        model_card: str | Callable[[int], str] | None = None,
        gate_decision: Mapping[str, Any] | None = None,
        tflite_path: str | os.PathLike[str] | None = None,
        evidence: Mapping[str, str | os.PathLike[str]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RegisterResult:
        """Add ``model_dir`` (a SavedModel folder) as the next version of ``name``.

        ``lineage`` must hold ``dag_id`` and ``run_id``: a retry of the same run
        with the same model files returns the version it already made
        (``created=False``) instead of adding a duplicate.  ``model_card`` is
        Markdown, or a function of the version number that returns it (the
        number is only known once the model's lock is held).  ``evidence`` maps
        a relative path under ``assets.extra/evidence/`` to a file to copy
        there; the copies are covered by checksums.json like every other file.
        ``metadata`` maps a file name (e.g. ``reference.json``) to a JSON payload
        written under ``assets.extra/``, covered by the checksums as well.
        """
        source = Path(model_dir)
        if not (source / "saved_model.pb").is_file():
            raise RegistryError(f"{source} is not a SavedModel folder (no saved_model.pb); pass the train step's model")
        tflite = Path(tflite_path) if tflite_path is not None else None
        if tflite is not None and not tflite.is_file():
            raise RegistryError(f"TFLite model {tflite} does not exist")
        evidence_files = _evidence_files(evidence or {})
        for file_name in metadata or {}:
            if "/" in file_name or not file_name.endswith(".json") or file_name in _OWN_METADATA:
                raise RegistryError(
                    f"metadata file name {file_name!r} must be a plain *.json name other than {sorted(_OWN_METADATA)}"
                )
        for key in ("dag_id", "run_id"):
            if not lineage.get(key):
                raise RegistryError(
                    f"lineage needs a non-empty {key!r} (it makes retries idempotent); got {dict(lineage)!r}"
                )

        candidate = _model_files(artifacts.dir_checksums(source))
        if tflite is not None:
            candidate[TFLITE_FILE] = artifacts.sha256_file(tflite)
        base = self.model_dir(name)
        artifacts.make_dirs(base)
        with _locked(base / ".lock"):
            self._remove_dead_staging(base)
            existing = self._find_same_run(name, lineage, candidate)
            if existing is not None:
                log.info(
                    "%s version %d already holds this model for run %s; not registering again",
                    name, existing, lineage["run_id"],
                )  # fmt: skip
                return RegisterResult(existing, False, self.version_dir(name, existing))
            version = self._next_version(name)
            staging = base / f"{_STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
            try:
                log.info("Registering %s version %d from %s", name, version, source)
                shutil.copytree(source, staging, copy_function=_copy_file)
                if tflite is not None:
                    _copy_file(str(tflite), str(staging / TFLITE_FILE))
                meta = staging / METADATA_DIR
                meta.mkdir(exist_ok=True)
                for rel, evidence_source in evidence_files.items():
                    target = staging / EVIDENCE_DIR / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _copy_file(str(evidence_source), str(target))
                full_lineage = {**artifacts.to_jsonable(dict(lineage)), "model_name": name, "version": version}
                artifacts.atomic_write_json(meta / "metrics.json", artifacts.to_jsonable(dict(metrics)))
                artifacts.atomic_write_json(meta / "lineage.json", full_lineage)
                for file_name, payload in (metadata or {}).items():
                    artifacts.atomic_write_json(meta / file_name, artifacts.to_jsonable(payload))
                if gate_decision is not None:
                    artifacts.atomic_write_json(meta / "gate.json", artifacts.to_jsonable(dict(gate_decision)))
                if callable(model_card):
                    card = model_card(version)
                else:
                    card = model_card or _default_card(name, version, metrics, full_lineage)
                artifacts.atomic_write_text(meta / "model_card.md", card)
                sums = artifacts.dir_checksums(staging, exclude=(CHECKSUMS_FILE,))
                if _model_files(sums) != candidate:
                    raise RegistryError(f"{source} changed while it was being copied; retry the register step")
                artifacts.atomic_write_json(staging / CHECKSUMS_FILE, sums)
                # copytree copied the source's modes (TensorFlow makes SavedModel folders 0755).
                artifacts.share_tree(staging)
                _fsync_tree(staging)
                final = self.version_dir(name, version)
                if final.exists():  # only a writer ignoring the lock could get here; never replace a version
                    raise RegistryError(f"{final} appeared while registering; refusing to overwrite it")
                os.rename(staging, final)
                artifacts.fsync_dir(base)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        log.info("Registered %s version %d at %s (%d files)", name, version, final, len(sums) + 1)
        return RegisterResult(version, True, final)

    def _next_version(self, name: str) -> int:
        return (self.latest_version(name) or 0) + 1

    def _find_same_run(self, name: str, lineage: Mapping[str, Any], candidate: Mapping[str, str]) -> int | None:
        for version in reversed(self.versions(name)):
            path = self.version_dir(name, version)
            try:
                other = artifacts.read_json(path / LINEAGE_FILE)
                sums = artifacts.read_json(path / CHECKSUMS_FILE)
            except (OSError, ValueError):
                continue
            if (
                other.get("dag_id") == lineage["dag_id"]
                and other.get("run_id") == lineage["run_id"]
                and _model_files(sums) == dict(candidate)
            ):
                return version
        return None

    def _remove_dead_staging(self, base: Path) -> None:
        # Called with the model's lock held: every writer holds it while staging, so these are orphans.
        for leftover in base.glob(f"{_STAGING_PREFIX}*"):
            log.warning("Removing %s left by a register that did not finish", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    # ------------------------------------------------------------------ labels (TF Serving model config file)

    def read_serving_config(self) -> model_server_config_pb2.ModelServerConfig:
        """models.config parsed with TF Serving's protos (empty when it does not exist yet)."""
        config = model_server_config_pb2.ModelServerConfig()
        if self.config_path.is_file():
            try:
                text_format.Parse(self.config_path.read_text(), config)
            except text_format.ParseError as exc:
                raise RegistryError(
                    f"{self.config_path} is not a valid TF Serving model config file ({exc}); fix or remove it"
                ) from None
        if config.WhichOneof("config") == "custom_model_config":
            raise RegistryError(f"{self.config_path} uses custom_model_config; only model_config_list is supported")
        return config

    def labels(self, name: str) -> dict[str, int]:
        entry = _find_entry(self.read_serving_config(), name)
        return dict(entry.version_labels) if entry is not None else {}

    def label_version(self, name: str, label: str) -> int | None:
        return self.labels(name).get(label)

    def served_versions(self, name: str) -> list[int]:
        """The versions the config asks TF Serving to keep loaded."""
        entry = _find_entry(self.read_serving_config(), name)
        return sorted(entry.model_version_policy.specific.versions) if entry is not None else []

    def set_label(self, name: str, label: str, version: int) -> int | None:
        """Point ``label`` at ``version`` in models.config; returns the version it pointed at before.

        The version policy is rewritten to exactly the labelled versions, since
        TF Serving can only label loaded versions and nothing else needs to stay
        loaded.  In production TF Serving rejects a label on a version it has
        not loaded yet: call :meth:`preload` first and wait for the version to be
        AVAILABLE (or run it with ``--allow_version_labels_for_unavailable_models``
        for labels that are new).
        """
        if not _LABEL.match(label):
            raise RegistryError(f"label must be letters, digits, '_' or '-', starting with a letter; got {label!r}")
        self.require_version(name, version)

        def change(entry: Any) -> int | None:
            previous = entry.version_labels[label] if label in entry.version_labels else None
            entry.version_labels[label] = version
            _set_policy(entry, set(entry.version_labels.values()))
            return previous

        previous = self._edit_entry(name, change)
        log.info("%s: label %r now points at version %d (was %s)", name, label, version, previous)
        return previous

    def preload(self, name: str, version: int) -> None:
        """Add ``version`` to the loaded versions without labelling it (step one of a label move)."""
        self.require_version(name, version)
        self._edit_entry(
            name, lambda entry: _set_policy(entry, {*entry.model_version_policy.specific.versions, version})
        )

    def remove_label(self, name: str, label: str) -> int | None:
        def change(entry: Any) -> int | None:
            if label not in entry.version_labels:
                return None
            previous = entry.version_labels[label]
            del entry.version_labels[label]
            _set_policy(entry, set(entry.version_labels.values()))
            return previous

        return self._edit_entry(name, change)

    def base_path(self, name: str) -> str:
        """Where TF Serving finds ``name``: ``$MLOPS_SERVING_BASE_PATH/<name>`` or this registry's folder."""
        prefix = os.environ.get(SERVING_BASE_PATH_ENV)
        if prefix:
            return f"{prefix.rstrip('/')}/{name}"
        return str(self.model_dir(name))

    def _edit_entry(self, name: str, change: Any) -> Any:
        artifacts.make_dirs(self.root)
        with _locked(self.root / f".{CONFIG_FILE}.lock"):
            config = self.read_serving_config()
            entry = _find_entry(config, name)
            if entry is None:
                entry = config.model_config_list.config.add()
                entry.name = name
            # Refreshed on every write, so a changed $MLOPS_SERVING_BASE_PATH takes effect.
            entry.base_path = self.base_path(name)
            entry.model_platform = "tensorflow"
            result = change(entry)
            artifacts.atomic_write_text(self.config_path, text_format.MessageToString(config))
        return result


def _evidence_files(evidence: Mapping[str, str | os.PathLike[str]]) -> dict[str, Path]:
    """Check evidence names (relative POSIX paths, no '..') and that each source is a file."""
    files: dict[str, Path] = {}
    for rel, source in evidence.items():
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise RegistryError(f"evidence name {rel!r} must be a relative path like 'evaluate/metrics.json'")
        path = Path(source)
        if not path.is_file():
            raise RegistryError(f"evidence file {path} (for {EVIDENCE_DIR}/{rel}) does not exist")
        files[rel] = path
    return files


def _find_entry(config: model_server_config_pb2.ModelServerConfig, name: str) -> Any | None:
    for entry in config.model_config_list.config:
        if entry.name == name:
            return entry
    return None


def _set_policy(entry: Any, versions: set[int]) -> None:
    entry.model_version_policy.specific.ClearField("versions")
    entry.model_version_policy.specific.versions.extend(sorted(versions))


def _check_name(name: str) -> None:
    problem = serving_name_problem(name)
    if problem is not None:
        raise RegistryError(f"model name {problem}")


def _default_card(name: str, version: int, metrics: Mapping[str, Any], lineage: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(metrics.items()))
    return (
        f"# {name} version {version}\n\n"
        f"Registered by run `{lineage.get('run_id')}` of `{lineage.get('dag_id')}`.\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n"
    )
