"""Which bytes a registry version is served from: the one rule every step follows.

A version folder that holds ``model.tflite`` is served from that file (like
TF Serving's ``--prefer_tflite_model``); otherwise from its SavedModel.  The
evaluation measures, register stores, the server loads and deploy verifies
the artifact this rule names, so what was gated is what is served.

Importing this module is cheap: TensorFlow is imported only by :func:`load_served_fn`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from include.mlops.artifacts import dir_checksums, sha256_file

if TYPE_CHECKING:
    import numpy as np

TFLITE_FILE = "model.tflite"
SAVED_MODEL = "saved_model"
TFLITE = "tflite"
# Our metadata beside a registered SavedModel is not part of what is served.
_METADATA_DIR = "assets.extra"


@dataclass(frozen=True)
class ServedArtifact:
    """``format`` is "tflite" or "saved_model"; ``path`` the .tflite file or the SavedModel folder."""

    format: str
    path: Path

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the file, or for a SavedModel of its files' sorted ``{relative path: sha256}`` JSON."""
        return artifact_sha256(self.format, self.path)


def served_artifact(version_dir: Path) -> ServedArtifact:
    """The artifact a version folder (or any SavedModel folder) is served from."""
    version_dir = Path(version_dir)
    tflite = version_dir / TFLITE_FILE
    if tflite.is_file():
        return ServedArtifact(TFLITE, tflite)
    return ServedArtifact(SAVED_MODEL, version_dir)


def artifact_sha256(fmt: str, path: str | os.PathLike[str]) -> str:
    """The checksum that identifies an artifact's served bytes (see :attr:`ServedArtifact.sha256`)."""
    if fmt == TFLITE:
        return sha256_file(path)
    if fmt != SAVED_MODEL:
        raise ValueError(f"unknown artifact format {fmt!r}; expected {TFLITE!r} or {SAVED_MODEL!r}")
    files = dir_checksums(path, exclude=(_METADATA_DIR, TFLITE_FILE))
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def load_served_fn(version_dir: Path, n_features: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The served artifact of ``version_dir`` as ``features -> outputs``, loaded as the server loads it."""
    from include.mlops.training.modeling import load_serving_fn, load_tflite_fn

    artifact = served_artifact(version_dir)
    if artifact.format == TFLITE:
        return load_tflite_fn(artifact.path)
    return load_serving_fn(artifact.path, n_features)
