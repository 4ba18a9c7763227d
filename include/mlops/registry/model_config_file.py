"""TF Serving's model config file (``models.config``): parsed and written with TF Serving's own protos.

The file is a ``model_config_list``: one entry per model with its
``base_path``, a ``specific`` version policy (the versions to keep loaded) and
its ``version_labels``.  Production TF Serving reads the same file.  Edits are
read-modify-write under an exclusive lock beside the file (so concurrent label
moves of different models keep each other's entries) and published with an
atomic rename (so a reader, TF Serving included, never sees a torn file).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from include.mlops import artifacts
from include.mlops.registry.file_lock import locked
from include.mlops.registry.protocol import LabelMovedError, RegistryError

CONFIG_FILE = "models.config"

_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_T = TypeVar("_T")


def read_model_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """The file at ``path`` parsed (empty when it does not exist yet); :class:`RegistryError` if it is unusable."""
    return parse_model_config(path.read_text() if path.is_file() else "", path)


def parse_model_config(text: str, where: object) -> model_server_config_pb2.ModelServerConfig:
    """``text`` (the file's content, empty for none) parsed; ``where`` names the file in the error."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise RegistryError(f"{where} is not a valid TF Serving model config file ({exc}); fix or remove it") from None
    if config.WhichOneof("config") == "custom_model_config":
        raise RegistryError(f"{where} uses custom_model_config; only model_config_list is supported")
    return config


def format_model_config(config: model_server_config_pb2.ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def find_entry(config: model_server_config_pb2.ModelServerConfig, name: str) -> Any | None:
    """The ``ModelConfig`` entry of ``name``, or None."""
    for entry in config.model_config_list.config:
        if entry.name == name:
            return entry
    return None


def set_policy(entry: Any, versions: set[int]) -> None:
    """Make ``versions`` exactly the versions the entry keeps loaded."""
    entry.model_version_policy.specific.ClearField("versions")
    entry.model_version_policy.specific.versions.extend(sorted(versions))


def _is_empty(entry: Any) -> bool:
    policy = entry.model_version_policy
    return (
        not entry.version_labels and policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions
    )


def check_label(label: str) -> None:
    """TF Serving's label names: a letter, then letters, digits, '_' or '-'."""
    if not _LABEL.match(label):
        raise RegistryError(f"label must be letters, digits, '_' or '-', starting with a letter; got {label!r}")


def edit_entry(path: Path, name: str, base_path: str, change: Callable[[Any], _T]) -> _T:
    """Apply ``change`` to the entry of ``name`` (created if missing) and write the file; returns its result.

    Other entries are kept as they are.  The entry's ``base_path`` is refreshed
    on every write, so a changed serving base path takes effect.  An entry left
    with no label and no ``specific`` version is removed: TF Serving would keep
    waiting for a model with nothing to load (and refuse to start on it).
    """
    artifacts.make_dirs(path.parent)
    with locked(path.parent / f".{path.name}.lock"):
        config = read_model_config(path)
        result = change_entry(config, name, base_path, change)
        artifacts.atomic_write_text(path, format_model_config(config))
    return result


def change_entry(
    config: model_server_config_pb2.ModelServerConfig, name: str, base_path: str, change: Callable[[Any], _T]
) -> _T:
    """The in-memory half of :func:`edit_entry` (for stores that publish the file another way)."""
    entry = find_entry(config, name)
    if entry is None:
        entry = config.model_config_list.config.add()
        entry.name = name
    entry.base_path = base_path
    entry.model_platform = "tensorflow"
    result = change(entry)
    if _is_empty(entry):
        config.model_config_list.config.remove(entry)
    return result


# The label edits every registry makes, as changes for edit_entry / change_entry (one rule, one place).


def set_label_change(label: str, version: int) -> Callable[[Any], int | None]:
    """Point ``label`` at ``version``; exactly the labelled versions stay loaded; returns the previous version."""

    def change(entry: Any) -> int | None:
        previous = entry.version_labels[label] if label in entry.version_labels else None
        entry.version_labels[label] = version
        set_policy(entry, set(entry.version_labels.values()))
        return previous

    return change


def move_label_change(
    name: str, label: str, version: int | None, expected: int | None, keep: Collection[int]
) -> Callable[[Any], int | None]:
    """Compare-and-set ``label`` from ``expected`` to ``version`` (None: remove); :class:`LabelMovedError` if moved."""

    def change(entry: Any) -> int | None:
        actual = entry.version_labels[label] if label in entry.version_labels else None
        if actual != expected:
            raise LabelMovedError(name, label, expected, actual)
        if version is None:
            if label in entry.version_labels:
                del entry.version_labels[label]
        else:
            entry.version_labels[label] = version
        set_policy(entry, {*entry.version_labels.values(), *keep})
        return actual

    return change


def preload_change(version: int) -> Callable[[Any], None]:
    """Keep ``version`` loaded besides the ones loaded now."""
    return lambda entry: set_policy(entry, {*entry.model_version_policy.specific.versions, version})


def remove_label_change(label: str) -> Callable[[Any], int | None]:
    """Drop ``label``; exactly the labelled versions stay loaded; returns the version it named (None: no change)."""

    def change(entry: Any) -> int | None:
        if label not in entry.version_labels:
            return None
        previous = entry.version_labels[label]
        del entry.version_labels[label]
        set_policy(entry, set(entry.version_labels.values()))
        return previous

    return change
