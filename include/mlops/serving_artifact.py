"""Which artifact of a registry version is served: ``model.tflite`` when present, else the SavedModel.

This is the one rule that the model server (what it loads) and deploy (what it
verifies against) share, so that the bytes the gate measured are the bytes
that answer requests.  It mirrors TF Serving's ``--prefer_tflite_model``: a
version folder holding ``model.tflite`` is served through the TFLite
interpreter; otherwise its SavedModel is.

Importing this module is cheap: TensorFlow is imported only by :func:`load_served_fn`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from include.mlops.artifacts import dir_checksums, sha256_file

if TYPE_CHECKING:
    import numpy as np

TFLITE: Final = "tflite"
SAVED_MODEL: Final = "saved_model"
# The file name TF Serving's --prefer_tflite_model reads (and the registry writes).
TFLITE_FILE = "model.tflite"
# Our metadata inside a version; TF Serving does not load it as part of the model.
_METADATA_DIR = "assets.extra"


@dataclass(frozen=True)
class ServedArtifact:
    """The served artifact of one version: ``format`` is "tflite" or "saved_model"; ``path`` a file or folder."""

    format: Literal["tflite", "saved_model"]
    path: Path

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the served bytes, computed on first use.

        For ``tflite`` it is the file's sha256 (the same as
        ``sha256sum model.tflite``).  For ``saved_model`` it is the sha256 of
        the sorted ``<relative path> <sha256>`` lines of the SavedModel's files
        (``assets.extra/`` and ``model.tflite`` excluded, as neither is part of
        the graph TF Serving loads).
        """
        if self.format == TFLITE:
            return sha256_file(self.path)
        sums = dir_checksums(self.path)
        lines = "".join(
            f"{rel} {digest}\n"
            for rel, digest in sorted(sums.items())
            if rel != TFLITE_FILE and not rel.startswith(f"{_METADATA_DIR}/")
        )
        return hashlib.sha256(lines.encode()).hexdigest()


def served_artifact(version_dir: Path) -> ServedArtifact:
    """The artifact that serves ``version_dir``: its ``model.tflite`` if it has one, else the SavedModel folder."""
    version_dir = Path(version_dir)
    tflite = version_dir / TFLITE_FILE
    if tflite.is_file():
        return ServedArtifact(TFLITE, tflite)
    return ServedArtifact(SAVED_MODEL, version_dir)


def load_served_fn(version_dir: Path, n_features: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The served artifact of ``version_dir`` as ``features -> outputs``, loaded as the server loads it."""
    from include.mlops.modeling import load_serving_fn, load_tflite_fn

    artifact = served_artifact(version_dir)
    if artifact.format == TFLITE:
        return load_tflite_fn(artifact.path)
    return load_serving_fn(artifact.path, n_features)
