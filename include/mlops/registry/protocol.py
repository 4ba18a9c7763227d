"""What a model registry promises: the interface steps, the model server and the Models view rely on.

A registry is TF Serving's model base path: ``<name>/<version>/`` holds a
SavedModel TF Serving loads as it is, with our metadata in ``assets.extra/``,
and the version labels (``stable``, ``canary``) live in TF Serving's model
config file.  :class:`include.mlops.registry.filesystem.Registry` implements it
over a local or mounted folder (``flock`` and ``rename``);
:class:`include.mlops.registry.object_store.ObjectStoreRegistry` over
``s3://bucket/prefix``, where a version is claimed by a conditional create and
published by its manifest, written last, and a label moves by compare-and-swap
on the config's ETag (that module's docstring says what each backend guarantees).

Where things are (:attr:`ModelRegistry.config_path`, ``model_dir``,
``version_dir``, ``require_version``, :attr:`RegisterResult.version_dir`) is a
:data:`Location`: a local :class:`~pathlib.Path` from the filesystem registry,
an :class:`~include.mlops.registry.object_uri.ObjectUri` (``str()`` is the
``s3://`` URI, ``/`` joins, no I/O) from an object store.  Code that opens
files under a location works on the filesystem registry only; read through the
registry's members to work on both.

Only the composition roots (the step functions, the CLI, the model server's
manager) build a concrete registry; everything else takes a
:class:`ModelRegistry`.  The errors and :class:`RegisterResult` are part of the
contract, so they live here and every implementation raises and returns them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from include.mlops.registry.object_uri import ObjectUri

if TYPE_CHECKING:
    from tensorflow_serving.config import model_server_config_pb2


# Where a registry keeps something: a local path, or an object-store address (see the module docstring).
Location: TypeAlias = Path | ObjectUri


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


class LabelMovedError(RegistryError):
    """A compare-and-set label edit found the label on another version than the caller expected; nothing changed."""

    def __init__(self, name: str, label: str, expected: int | None, actual: int | None) -> None:
        self.name = name
        self.label = label
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"label {label!r} of model {name!r} names {_said(actual)}, not {_said(expected)} as expected: "
            "someone else moved it meanwhile, so it was left as it is"
        )


def _said(version: int | None) -> str:
    return f"version {version}" if version is not None else "no version"


@dataclass(frozen=True)
class RegisterResult:
    """The version a register call made (``created``) or found already holding the same run's model."""

    version: int
    created: bool
    version_dir: Location


@runtime_checkable
class ModelRegistry(Protocol):
    """Versions of models in TF Serving's layout, and the labels in its model config file.

    Names are TF Serving model names (:func:`include.mlops.names.serving_name_problem`):
    every member that reads a version or writes raises :class:`RegistryError`
    for an invalid one (label reads just find nothing).  Versions are positive
    integers; a version, once claimed, is never overwritten or modified.
    """

    # ------------------------------------------------------------------ where things are

    @property
    def config_path(self) -> Location:
        """TF Serving's model config file; the local model server watches it (its mtime) for label moves."""
        ...

    def model_dir(self, name: str) -> Location:
        """TF Serving's ``base_path`` of ``name``: the folder holding its version folders (may not exist yet)."""
        ...

    def version_dir(self, name: str, version: int) -> Location:
        """The folder ``version`` of ``name`` has or would have; :class:`RegistryError` unless ``version >= 1``.

        Checks nothing on disk or in the store: use :meth:`require_version` for a version that must exist.
        """
        ...

    # ------------------------------------------------------------------ reading versions

    def versions(self, name: str) -> list[int]:
        """The claimed versions of ``name``, ascending; empty when it has none.

        A version being written is not listed until it is complete.
        """
        ...

    def require_version(self, name: str, version: int) -> Location:
        """The folder of an existing version; :class:`VersionNotFoundError` naming the known ones otherwise."""
        ...

    def read_metadata(self, name: str, version: int) -> dict[str, Any]:
        """``{"metrics", "lineage", "gate"}`` of an existing version, each None when the version has no such file.

        Raises :class:`VersionNotFoundError` for an unknown version.
        """
        ...

    def verify(self, name: str, version: int) -> dict[str, str]:
        """Check every file of a version against its checksums; returns ``{relative path: sha256}``.

        Raises :class:`VersionNotFoundError` for an unknown version and
        :class:`CorruptVersionError` (with every problem listed) when a file is
        missing, changed, or not listed.  Call it before serving a version.
        """
        ...

    # ------------------------------------------------------------------ writing versions

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
        """Claim the next version of ``name`` and store the SavedModel ``model_dir`` and its metadata there.

        Atomic: the version appears complete (model, ``assets.extra/`` metadata,
        checksums) or not at all, even if the writer dies halfway.  Concurrent
        callers, in threads or processes, never get the same number; numbers
        increase and an existing version is never overwritten.  Idempotent per
        run: ``lineage`` must hold ``dag_id`` and ``run_id``, and a call for the
        same run with the same model files returns that version with
        ``created=False`` (a retry after the first call ended; on an object
        store two simultaneous calls of one run may both create a version).  ``model_card`` may be a function of the version
        number (known only once it is claimed).  ``evidence`` maps paths under
        ``assets.extra/evidence/`` to files to copy; ``metadata`` maps plain
        ``*.json`` names under ``assets.extra/`` to payloads.

        Raises :class:`RegistryError` for bad input (not a SavedModel, missing
        lineage keys, a missing TFLite or evidence file, a bad name) before
        claiming anything.
        """
        ...

    # ------------------------------------------------------------------ labels

    def read_serving_config(self) -> model_server_config_pb2.ModelServerConfig:
        """The model config file parsed with TF Serving's protos; empty when there is none yet.

        Raises :class:`RegistryError` when it is not a valid ``model_config_list``.
        """
        ...

    def labels(self, name: str) -> dict[str, int]:
        """``{label: version}`` of ``name`` as the model config file has them now (empty when none)."""
        ...

    def label_version(self, name: str, label: str) -> int | None:
        """The version ``label`` points at, or None when ``name`` has no such label."""
        ...

    def served_versions(self, name: str) -> list[int]:
        """The versions the model config file asks the server to keep loaded, ascending."""
        ...

    def read_label_moves(self, name: str) -> list[dict[str, Any]]:
        """The audit log of ``name``'s label moves, oldest first (:mod:`include.mlops.registry.label_log`'s records).

        Empty when none was recorded.
        """
        ...

    def set_label(self, name: str, label: str, version: int) -> int | None:
        """Point ``label`` at an existing ``version``; returns the version it pointed at before (None if new).

        The read-modify-write of the model config file is serialised against
        every other label move (of any model) and published atomically:
        readers see the old or the new file, never a mix, and other models'
        entries are kept as they are.  Afterwards exactly the labelled versions
        stay loaded.  Raises :class:`VersionNotFoundError` for an unknown version
        and :class:`RegistryError` for a label that is not a letter followed by
        letters, digits, ``_`` or ``-``; nothing changes then.
        """
        ...

    def move_label(
        self, name: str, label: str, version: int | None, *, expected: int | None, keep: Collection[int] = ()
    ) -> int | None:
        """Compare-and-set: point ``label`` at ``version`` (None removes it) only if it now names ``expected``.

        ``expected`` None means the label must be absent.  The check and the
        write are one serialised edit (same atomicity as :meth:`set_label`),
        so two movers never both succeed from the same state; when the label
        names another version, :class:`LabelMovedError` (with ``actual``) is
        raised and nothing changes.  Afterwards the labelled versions plus
        ``keep`` stay loaded (a deploy keeps the label's previous version loaded
        until the new one is verified, so that a roll back lands on a loaded
        version); a model left with no label and no version leaves the config
        file.  Returns ``expected``.  Raises :class:`VersionNotFoundError` for an
        unknown ``version`` and :class:`RegistryError` for a bad label.
        """
        ...

    def preload(self, name: str, version: int) -> None:
        """Ask the server to load an existing ``version`` without labelling it (step one of a label move).

        Same atomicity as :meth:`set_label`; :class:`VersionNotFoundError` for an unknown version.
        """
        ...

    def remove_label(self, name: str, label: str) -> int | None:
        """Drop ``label`` from ``name``; returns the version it pointed at (None, and no change, if absent).

        Same atomicity as :meth:`set_label`.  A model left with no label and no
        version leaves the config file.
        """
        ...
