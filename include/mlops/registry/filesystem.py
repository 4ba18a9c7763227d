"""The model registry: TensorFlow Serving's model base path plus its model config file.

Layout under :func:`include.mlops.artifacts.registry_root`::

    models/models.config                  TF Serving's model_config_list (names, version policy, labels)
    models/.models.config.lock            serialises rewrites of models.config
    models/<name>/.lock                   serialises version allocation for one model
    models/<name>/.deploy.lock            serialises deploys of one model (include.mlops.deploy.journal)
    models/<name>/.deploy-<label>.journal.json  an unfinished label move (ibid.)
    models/<name>/label-moves.jsonl       every label move, one JSON line each (label_log)
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
folders, lock files and logs next to the versions are invisible to it.

A version is written into a staging folder, fsynced, and claimed by renaming
it to its number, all under an exclusive ``flock`` on the model's lock file.
Holding the lock for the whole write (models here are megabytes) means the
version number is known while the metadata is written, so the model card and
lineage can name it, and that any staging folder found while holding the lock
belongs to a writer that died (see :mod:`include.mlops.registry.file_lock`).
Version folders are never overwritten or modified after the rename.  The
labels live in TF Serving's model config file
(:mod:`include.mlops.registry.model_config_file`); what a version folder holds
besides the model is :mod:`include.mlops.registry.version_files`.  The
interface callers rely on is :class:`include.mlops.registry.protocol.ModelRegistry`.

Lock files, staging folders and versions get the shared modes of
:mod:`include.mlops.artifacts` (group-writable, setgid folders), so the step
pods and Airflow's workers, which run as different users, can both write here.

On NFS, use a volume whose ``flock`` locks are honoured or run a single
registering worker (the deploy pool has one slot anyway).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tensorflow_serving.config import model_server_config_pb2

from include.mlops import artifacts
from include.mlops.registry import model_config_file, version_build, version_files
from include.mlops.registry.file_lock import locked
from include.mlops.registry.label_edits import SERVING_BASE_PATH_ENV as SERVING_BASE_PATH_ENV  # re-exported
from include.mlops.registry.label_edits import LabelEdits, Layout, check_name
from include.mlops.registry.label_log import read_label_moves, record_label_moves
from include.mlops.registry.model_config_file import CONFIG_FILE as CONFIG_FILE  # re-exported for callers
from include.mlops.registry.protocol import (
    CorruptVersionError,
    RegisterResult,
    RegistryError,
    VersionNotFoundError,
)
from include.mlops.registry.serving_artifact import TFLITE_FILE as TFLITE_FILE  # re-exported for callers
from include.mlops.registry.version_files import (
    CHECKSUMS_FILE,
    GATE_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
)
from include.mlops.registry.version_files import EVIDENCE_DIR as EVIDENCE_DIR  # re-exported for callers
from include.mlops.registry.version_files import METADATA_DIR as METADATA_DIR  # re-exported for callers

log = logging.getLogger(__name__)
_T = TypeVar("_T")


_STAGING_PREFIX = ".staging-"


def _copy_file(src: str, dst: str) -> str:
    """The copy used for model files (module level so that a test can slow it down in a subprocess)."""
    return shutil.copy2(src, dst)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk before the rename publishes it."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        artifacts.fsync_path(path)
    artifacts.fsync_path(root)


class Registry(Layout, LabelEdits):
    """Versions of models in TF Serving's layout, and the labels in its model config file."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).resolve() if root is not None else artifacts.registry_root()

    # ------------------------------------------------------------------ paths and reads

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
        actual, problems = version_files.checksum_problems(path)
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
        checked = version_build.check_register_input(
            model_dir, lineage=lineage, tflite_path=tflite_path, evidence=evidence, metadata=metadata
        )
        candidate = checked.candidate()
        base = self.model_dir(name)
        artifacts.make_dirs(base)
        with locked(base / ".lock"):
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
                log.info("Registering %s version %d from %s", name, version, checked.source)
                sums = version_build.write_version(
                    staging, checked, candidate, name=name, version=version, metrics=metrics, lineage=lineage,
                    model_card=model_card, gate_decision=gate_decision, metadata=metadata, copy_file=_copy_file,
                )  # fmt: skip
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
                and version_files.model_files(sums) == dict(candidate)
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
        return model_config_file.read_model_config(self.config_path)

    def labels(self, name: str) -> dict[str, int]:
        entry = model_config_file.find_entry(self.read_serving_config(), name)
        return dict(entry.version_labels) if entry is not None else {}

    def label_version(self, name: str, label: str) -> int | None:
        return self.labels(name).get(label)

    def served_versions(self, name: str) -> list[int]:
        """The versions the config asks TF Serving to keep loaded."""
        entry = model_config_file.find_entry(self.read_serving_config(), name)
        return sorted(entry.model_version_policy.specific.versions) if entry is not None else []

    def read_label_moves(self, name: str) -> list[dict[str, Any]]:
        """The model's label moves, oldest first (``label-moves.jsonl``, as :class:`ObjectStoreRegistry` has it)."""
        return read_label_moves(self.model_dir(name))

    def _edit_entry(self, name: str, change: Callable[[Any], _T]) -> _T:
        check_name(name)  # base_path does not when $MLOPS_SERVING_BASE_PATH is set
        labels: dict[str, dict[str, int]] = {}

        def recorded(entry: Any) -> _T:
            labels["before"] = dict(entry.version_labels)
            result = change(entry)
            labels["after"] = dict(entry.version_labels)
            return result

        # The base path is refreshed on every write, so a changed $MLOPS_SERVING_BASE_PATH takes effect.
        result = model_config_file.edit_entry(self.config_path, name, self.base_path(name), recorded)
        record_label_moves(self.model_dir(name), labels["before"], labels["after"])  # once the edit is published
        return result
