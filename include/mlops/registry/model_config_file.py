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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from include.mlops import artifacts
from include.mlops.registry.file_lock import locked
from include.mlops.registry.protocol import RegistryError

CONFIG_FILE = "models.config"

_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_T = TypeVar("_T")


def read_model_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """The file at ``path`` parsed (empty when it does not exist yet); :class:`RegistryError` if it is unusable."""
    config = model_server_config_pb2.ModelServerConfig()
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as exc:
            raise RegistryError(
                f"{path} is not a valid TF Serving model config file ({exc}); fix or remove it"
            ) from None
    if config.WhichOneof("config") == "custom_model_config":
        raise RegistryError(f"{path} uses custom_model_config; only model_config_list is supported")
    return config


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
        entry = find_entry(config, name)
        if entry is None:
            entry = config.model_config_list.config.add()
            entry.name = name
        entry.base_path = base_path
        entry.model_platform = "tensorflow"
        result = change(entry)
        if _is_empty(entry):
            config.model_config_list.config.remove(entry)
        artifacts.atomic_write_text(path, text_format.MessageToString(config))
    return result
