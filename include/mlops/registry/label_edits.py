"""What every registry implementation shares: the layout's locations, name checks, and the label edits.

A registry keeps TF Serving's model config file; how one edit of it is
serialised and published is the implementation's (a lock and a rename on a
filesystem, a compare-and-swap on the object's ETag in a bucket).  What an
edit does to a model's entry is the same everywhere
(:mod:`include.mlops.registry.model_config_file`), and so are these members of
:class:`include.mlops.registry.protocol.ModelRegistry`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from include.mlops.names import serving_name_problem
from include.mlops.registry import model_config_file
from include.mlops.registry.model_config_file import CONFIG_FILE
from include.mlops.registry.protocol import RegistryError

log = logging.getLogger(__name__)

# Where TF Serving reads the registry, when that is not where the steps write it (e.g. /models in its pod).
SERVING_BASE_PATH_ENV = "MLOPS_SERVING_BASE_PATH"

_T = TypeVar("_T")


def check_name(name: str) -> None:
    """:class:`RegistryError` unless ``name`` is a TF Serving model name."""
    problem = serving_name_problem(name)
    if problem is not None:
        raise RegistryError(f"model name {problem}")


class Layout:
    """``config_path``, ``model_dir`` and ``version_dir`` under ``self.root`` (a ``Path`` or an ``ObjectUri``)."""

    root: Any

    @property
    def config_path(self) -> Any:
        return self.root / CONFIG_FILE

    def model_dir(self, name: str) -> Any:
        check_name(name)
        return self.root / name

    def version_dir(self, name: str, version: int) -> Any:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"model version must be a positive integer, got {version!r}")
        return self.model_dir(name) / str(version)


class LabelEdits:
    """``set_label``, ``move_label``, ``preload``, ``remove_label`` and ``base_path`` over ``_edit_entry``.

    The class using it provides ``require_version``, ``model_dir`` and
    ``_edit_entry(name, change)``, which applies ``change`` to the model's
    entry in one serialised, atomically published edit.
    """

    require_version: Callable[[str, int], Any]
    model_dir: Callable[[str], Any]
    _edit_entry: Callable[[str, Callable[[Any], Any]], Any]

    def set_label(self, name: str, label: str, version: int) -> int | None:
        """Point ``label`` at ``version`` in models.config; returns the version it pointed at before.

        The version policy is rewritten to exactly the labelled versions, since
        TF Serving can only label loaded versions and nothing else needs to stay
        loaded.  In production TF Serving rejects a label on a version it has
        not loaded yet: call :meth:`preload` first and wait for the version to be
        AVAILABLE (or run it with ``--allow_version_labels_for_unavailable_models``
        for labels that are new).
        """
        model_config_file.check_label(label)
        self.require_version(name, version)
        previous = self._edit_entry(name, model_config_file.set_label_change(label, version))
        log.info("%s: label %r now points at version %d (was %s)", name, label, version, previous)
        return previous

    def move_label(
        self, name: str, label: str, version: int | None, *, expected: int | None, keep: Collection[int] = ()
    ) -> int | None:
        """Compare-and-set: point ``label`` at ``version`` (None removes it) only if it now names ``expected``.

        The check and the write happen under the config file's lock, in one
        edit; :class:`LabelMovedError` when the label names another version.
        The policy becomes the labelled versions plus ``keep``.
        """
        model_config_file.check_label(label)
        if version is not None:
            self.require_version(name, version)
        self._edit_entry(name, model_config_file.move_label_change(name, label, version, expected, keep))
        log.info("%s: label %r now points at version %s (was %s); loaded besides: %s",
                 name, label, version, expected, sorted(keep))  # fmt: skip
        return expected

    def preload(self, name: str, version: int) -> None:
        """Add ``version`` to the loaded versions without labelling it (step one of a label move)."""
        self.require_version(name, version)
        self._edit_entry(name, model_config_file.preload_change(version))

    def remove_label(self, name: str, label: str) -> int | None:
        return self._edit_entry(name, model_config_file.remove_label_change(label))

    def base_path(self, name: str) -> str:
        """Where TF Serving finds ``name``: ``$MLOPS_SERVING_BASE_PATH/<name>`` or this registry's folder."""
        prefix = os.environ.get(SERVING_BASE_PATH_ENV)
        if prefix:
            return f"{prefix.rstrip('/')}/{name}"
        return str(self.model_dir(name))
