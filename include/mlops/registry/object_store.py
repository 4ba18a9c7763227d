"""The model registry on an object store (``s3://bucket/prefix``): no rename, no locks, so conditional writes.

Same layout as the filesystem registry (:mod:`include.mlops.registry.filesystem`),
so TF Serving reads it as its model base path::

    <prefix>/models.config                          TF Serving's model_config_list (labels, version policy)
    <prefix>/<name>/<version>/...                   the SavedModel and assets.extra/, as on a filesystem
    <prefix>/<name>/<version>/assets.extra/checksums.json   the manifest: written last; a version without it
                                                    does not exist
    <prefix>/<name>/.claims/<version>.json          who claimed the number (dag_id, run_id, host, pid, time)
    <prefix>/<name>/.label-moves/<time>-<id>.json   one object per label move (the audit log; S3 cannot append)

**Claiming a version.**  A writer creates ``.claims/<n>.json`` with
``If-None-Match: *`` for the next free ``n``; the loser of a race gets
``412 Precondition Failed`` and tries ``n + 1``.  Only the winner then
uploads under ``<name>/<n>/`` and finally creates the manifest (again
``If-None-Match: *``).  The claim comes first so that two writers never
upload to the same keys (a loser overwriting the winner's files before its
own manifest failed would corrupt a published version); the manifest comes
last so that a version is listed only once it is complete.  A writer that
dies halfway leaves a claim and some files but no manifest: the version is
never listed, its number is never reused (the next register claims a fresh
one), TF Serving never loads it (only labelled versions are in the policy,
and only listed versions can be labelled), and the leftover objects are
garbage that costs only storage.  A writer that fails with an exception
deletes what it uploaded (the claim stays, so the number stays burnt).

**Moving labels.**  ``models.config`` is read with its ETag, changed in
memory by the same code as on a filesystem
(:func:`include.mlops.registry.model_config_file.change_entry`) and written
back with ``If-Match: <etag>`` (``If-None-Match: *`` when it did not exist);
a lost race re-reads and re-applies the change, so no move is lost, and
:meth:`ObjectStoreRegistry.move_label`'s check runs again on the state that
wins (it raises :class:`LabelMovedError` there).  S3 replaces an object
atomically, so a reader sees the old or the new file, never a torn one.

**Guarantees, per backend**

============================  =================================  ===========================================
                              filesystem (``Registry``)          S3 (``ObjectStoreRegistry``)
============================  =================================  ===========================================
distinct version numbers      ``flock`` on ``<name>/.lock``      conditional create of the claim object
half-written version hidden   staging folder + ``rename``        manifest written last; unlisted without it
writer killed halfway         staging removed by the next one    number burnt, leftovers unlisted
label moves never lost        ``flock`` + atomic ``rename``      compare-and-swap on the config's ETag
same run registered again     returns its version (serialised)   returns its version once the first finished;
                                                                 two *simultaneous* calls of one run may make
                                                                 two versions (no lock to serialise them)
label audit log               ``label-moves.jsonl`` (append)     one object per move under ``.label-moves/``
============================  =================================  ===========================================

The S3 guarantees rest on S3's strong read-after-write consistency and its
conditional writes (``If-None-Match`` since 2024-08, ``If-Match`` since
2024-11); an S3-compatible store without them (older MinIO, Ceph) is not
safe.  They are tested against moto's S3 server.  **GCS is untested here**:
no GCS stand-in runs on these machines, and ``gs://`` URIs are refused;
a GCS backend would claim with ``if_generation_match=0`` and compare-and-swap
on the config's generation, behind this same class.

Where the Protocol returns paths (``config_path``, ``model_dir``,
``version_dir``, ``require_version``), this registry returns
:class:`~include.mlops.registry.object_uri.ObjectUri` addresses: ``str()`` is
the ``s3://`` URI, ``/`` joins; they do no I/O.  The steps, the model server,
the catalog and the Models view still read version folders as local paths and
so run on the filesystem registry only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tensorflow_serving.config import model_server_config_pb2

from include.mlops.registry import model_config_file, version_build, version_files
from include.mlops.registry.label_edits import SERVING_BASE_PATH_ENV as SERVING_BASE_PATH_ENV  # re-exported
from include.mlops.registry.label_edits import LabelEdits, Layout, check_name
from include.mlops.registry.label_log import label_moves
from include.mlops.registry.model_config_file import CONFIG_FILE
from include.mlops.registry.object_uri import ObjectUri, scheme_problem
from include.mlops.registry.protocol import (
    CorruptVersionError,
    RegisterResult,
    RegistryError,
    VersionNotFoundError,
)
from include.mlops.registry.s3_objects import ConditionFailed, S3Objects, make_client
from include.mlops.registry.version_files import CHECKSUMS_FILE, GATE_FILE, LINEAGE_FILE, METRICS_FILE

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CLAIMS = ".claims"
LABEL_MOVES = ".label-moves"
# A claim or a label move lost to another writer is retried; this many losses in a row means something is wrong.
MAX_ATTEMPTS = 200


class ObjectStoreRegistry(Layout, LabelEdits):
    """Versions of models in TF Serving's layout under ``s3://bucket/prefix``, and the labels in its config file."""

    def __init__(self, uri: str | ObjectUri, *, client: Any = None, endpoint_url: str | None = None) -> None:
        try:
            root = uri if isinstance(uri, ObjectUri) else ObjectUri.parse(str(uri))
        except ValueError as exc:
            raise RegistryError(f"registry URI: {exc}") from None
        problem = scheme_problem(root)
        if problem is not None:
            raise RegistryError(f"registry URI {root}: {problem}; use a mounted folder instead")
        self.root = root
        self._store = S3Objects(root, client if client is not None else make_client(endpoint_url))
        # Versions are immutable once their manifest exists, so what was read of them stays true.
        self._complete: set[tuple[str, int]] = set()
        self._identity: dict[tuple[str, int], tuple[Any, Any, dict[str, str]]] = {}

    # ------------------------------------------------------------------ where things are

    # ------------------------------------------------------------------ reading versions

    def versions(self, name: str) -> list[int]:
        """Complete versions of ``name`` (those with a manifest), ascending."""
        check_name(name)
        numbers = sorted(int(child) for child in self._store.children(name) if _is_version(child))
        return [number for number in numbers if self._is_complete(name, number)]

    def latest_version(self, name: str) -> int | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def require_version(self, name: str, version: int) -> ObjectUri:
        path = self.version_dir(name, version)
        if not self._is_complete(name, version):
            known = ", ".join(map(str, self.versions(name))) or "none"
            raise VersionNotFoundError(f"model {name!r} has no version {version} in {self.root} (versions: {known})")
        return path

    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        self.require_version(name, version)
        return {
            key: self._read_json(f"{name}/{version}/{rel}")
            for key, rel in (("metrics", METRICS_FILE), ("lineage", LINEAGE_FILE), ("gate", GATE_FILE))
        }

    def verify(self, name: str, version: int) -> dict[str, str]:
        """Check every object of a version against its checksums.json; raise :class:`CorruptVersionError`."""
        path = self.require_version(name, version)
        base = f"{name}/{version}"
        try:
            expected = self._read_json(f"{base}/{CHECKSUMS_FILE}")
        except ValueError as exc:
            raise CorruptVersionError(name, version, [f"{CHECKSUMS_FILE} is not valid JSON ({exc})"]) from None
        if not isinstance(expected, dict):
            raise CorruptVersionError(name, version, [f"{CHECKSUMS_FILE} is missing"])
        actual = {rel: self._store.sha256(f"{base}/{rel}") for rel in self._store.keys(base) if rel != CHECKSUMS_FILE}
        problems = version_files.compare_checksums(expected, actual)
        if problems:
            raise CorruptVersionError(name, version, problems)
        log.info("Verified %s version %d at %s: %d files match their checksums", name, version, path, len(actual))
        return actual

    def read_object(self, rel: str) -> bytes | None:
        """The bytes of one object under the registry (``<name>/route.json``, say), or None when there is none."""
        found = self._store.get(rel)
        return found[0] if found is not None else None

    def download_version(self, name: str, version: int, dest: Path) -> Path:
        """Copy a complete version's objects into the local folder ``dest`` (made; the caller renames it in place)."""
        self.require_version(name, version)
        base = f"{name}/{version}"
        for rel in self._store.keys(base):
            found = self._store.get(f"{base}/{rel}")
            if found is None:
                raise RegistryError(f"{self._store.uri(f'{base}/{rel}')} vanished while it was copied")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(found[0])
        return dest

    def _is_complete(self, name: str, version: int) -> bool:
        if (name, version) not in self._complete and self._store.exists(f"{name}/{version}/{CHECKSUMS_FILE}"):
            self._complete.add((name, version))
        return (name, version) in self._complete

    def _read_json(self, rel: str) -> Any:
        found = self._store.get(rel)
        return json.loads(found[0]) if found is not None else None

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
        """Claim the next version of ``name``, upload the model and its metadata, and publish its manifest last."""
        checked = version_build.check_register_input(
            model_dir, lineage=lineage, tflite_path=tflite_path, evidence=evidence, metadata=metadata
        )
        check_name(name)
        candidate = checked.candidate()
        existing = self._find_same_run(name, lineage, candidate)
        if existing is not None:
            log.info("%s version %d already holds this model for run %s; not registering again",
                     name, existing, lineage["run_id"])  # fmt: skip
            return RegisterResult(existing, False, self.version_dir(name, existing))
        version = self._claim(name, lineage)
        uploaded: list[str] = []
        try:
            with tempfile.TemporaryDirectory(prefix="mlops-register-") as scratch:
                staging = Path(scratch) / str(version)
                log.info("Registering %s version %d from %s at %s", name, version, checked.source, self.root)
                sums = version_build.write_version(
                    staging, checked, candidate, name=name, version=version, metrics=metrics, lineage=lineage,
                    model_card=model_card, gate_decision=gate_decision, metadata=metadata,
                )  # fmt: skip
                for rel in sums:
                    uploaded.append(f"{name}/{version}/{rel}")
                    self._store.upload(uploaded[-1], str(staging / rel))
                manifest = (staging / CHECKSUMS_FILE).read_bytes()
            # The commit point: from here on the version is listed, complete, and never written again.
            self._publish(f"{name}/{version}/{CHECKSUMS_FILE}", manifest)
        except BaseException:
            if self._store.exists(f"{name}/{version}/{CHECKSUMS_FILE}"):
                raise  # published after all (its answer was lost): the version is complete, leave it
            log.warning("Register of %s version %d failed; removing its %d uploaded objects (the number stays "
                        "claimed and unused)", name, version, len(uploaded))  # fmt: skip
            self._store.delete(uploaded)
            raise
        self._complete.add((name, version))
        log.info("Registered %s version %d at %s (%d files)", name, version, self.version_dir(name, version),
                 len(sums) + 1)  # fmt: skip
        return RegisterResult(version, True, self.version_dir(name, version))

    def _publish(self, manifest_key: str, manifest: bytes) -> None:
        """Create the manifest; a 412 on a retry of our own lost-answer write is success (the claim is ours)."""
        try:
            self._store.put(manifest_key, manifest, create_only=True)
        except ConditionFailed:
            found = self._store.get(manifest_key)
            if found is None or found[0] != manifest:
                raise RegistryError(f"{self._store.uri(manifest_key)} was written by someone else") from None

    def _claim(self, name: str, lineage: Mapping[str, Any]) -> int:
        """Create ``.claims/<n>.json`` for the lowest free ``n`` above every claim and version; returns ``n``."""
        claim = json.dumps({
            "dag_id": lineage.get("dag_id"), "run_id": lineage.get("run_id"), "host": socket.gethostname(),
            "pid": os.getpid(), "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }, sort_keys=True).encode()  # fmt: skip
        version = 0
        for attempt in range(MAX_ATTEMPTS):
            version = max(version + 1, self._highest_number(name) + 1)
            try:
                self._store.put(f"{name}/{CLAIMS}/{version}.json", claim, create_only=True)
                return version
            except ConditionFailed:
                log.info("%s version %d was claimed by another writer; trying the next number", name, version)
                _pause(attempt)
        raise RegistryError(f"could not claim a version of {name!r} in {self.root} after {MAX_ATTEMPTS} tries")

    def _highest_number(self, name: str) -> int:
        claimed = [child.removesuffix(".json") for child in self._store.keys(f"{name}/{CLAIMS}")]
        folders = list(self._store.children(name))
        return max((int(n) for n in [*claimed, *folders] if _is_version(n)), default=0)

    def _find_same_run(self, name: str, lineage: Mapping[str, Any], candidate: Mapping[str, str]) -> int | None:
        for version in reversed(self.versions(name)):
            if (name, version) not in self._identity:
                try:
                    other = self._read_json(f"{name}/{version}/{LINEAGE_FILE}") or {}
                    sums = self._read_json(f"{name}/{version}/{CHECKSUMS_FILE}") or {}
                except ValueError:
                    continue
                self._identity[name, version] = (
                    other.get("dag_id"),
                    other.get("run_id"),
                    version_files.model_files(sums),
                )
            dag_id, run_id, model_files = self._identity[name, version]
            if (dag_id, run_id) == (lineage["dag_id"], lineage["run_id"]) and model_files == dict(candidate):
                return version
        return None

    # ------------------------------------------------------------------ labels

    def read_serving_config(self) -> model_server_config_pb2.ModelServerConfig:
        found = self._store.get(CONFIG_FILE)
        return model_config_file.parse_model_config(found[0].decode() if found else "", self.config_path)

    def labels(self, name: str) -> dict[str, int]:
        entry = model_config_file.find_entry(self.read_serving_config(), name)
        return dict(entry.version_labels) if entry is not None else {}

    def label_version(self, name: str, label: str) -> int | None:
        return self.labels(name).get(label)

    def served_versions(self, name: str) -> list[int]:
        entry = model_config_file.find_entry(self.read_serving_config(), name)
        return sorted(entry.model_version_policy.specific.versions) if entry is not None else []

    def read_label_moves(self, name: str) -> list[dict[str, Any]]:
        """The model's label moves, oldest first (the object-store form of ``label_log.read_label_moves``)."""
        check_name(name)
        moves = [
            self._read_json(f"{name}/{LABEL_MOVES}/{key}") for key in sorted(self._store.keys(f"{name}/{LABEL_MOVES}"))
        ]
        return [move for move in moves if isinstance(move, dict)]

    def _edit_entry(self, name: str, change: Callable[[Any], _T]) -> _T:
        """Read-modify-write of models.config by compare-and-swap on its ETag, retried until it wins."""
        check_name(name)
        for attempt in range(MAX_ATTEMPTS):
            found = self._store.get(CONFIG_FILE)
            text, etag = (found[0].decode(), found[1]) if found else ("", None)
            config = model_config_file.parse_model_config(text, self.config_path)
            entry = model_config_file.find_entry(config, name)
            before = dict(entry.version_labels) if entry is not None else {}
            result = model_config_file.change_entry(config, name, self.base_path(name), change)
            entry = model_config_file.find_entry(config, name)
            after = dict(entry.version_labels) if entry is not None else {}
            new_text = model_config_file.format_model_config(config)
            if new_text == text:
                return result  # nothing to change: the state read is the answer
            try:
                self._store.put(CONFIG_FILE, new_text.encode(), if_match=etag, create_only=etag is None)
            except ConditionFailed:
                log.info("%s changed while a label of %s moved; reading it again", self.config_path, name)
                _pause(attempt)
                continue
            self._record_moves(name, before, after)
            return result
        raise RegistryError(f"gave up moving labels of {name!r} in {self.config_path}: lost {MAX_ATTEMPTS} races")

    def _record_moves(self, name: str, before: Mapping[str, int], after: Mapping[str, int]) -> None:
        for move in label_moves(before, after):
            key = f"{move['at'].replace(':', '')}-{uuid.uuid4().hex[:12]}.json"
            try:
                self._store.put(f"{name}/{LABEL_MOVES}/{key}", json.dumps(move, sort_keys=True).encode())
            except RegistryError as exc:  # the move itself is published; losing its record must not undo it
                log.error("Label move of %s published but not recorded in the audit log: %s", name, exc)


def _is_version(text: str) -> bool:
    return text.isdigit() and int(text) > 0


def _pause(attempt: int) -> None:
    """Back off with jitter, so that writers that lost a race do not collide again in lockstep."""
    time.sleep(random.uniform(0, min(0.5, 0.005 * 2 ** min(attempt, 7))))
