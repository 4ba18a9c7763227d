"""Which file of a registry version is served: the one rule the model server and deploy share.

A version folder that holds ``model.tflite`` is served from that file (through
the TFLite interpreter, as TF Serving does with ``--prefer_tflite_model``);
otherwise it is served from its SavedModel.  The gate measured the same
bytes, so "what is gated is what is served" holds, and deploy verifies the
served answers against this same artifact.

Importing this module is cheap: TensorFlow is imported only by
:func:`load_served_fn`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

# TF Serving's name for the TFLite model inside a version folder (registry.TFLITE_FILE is the same name).
TFLITE_FILE = "model.tflite"

ServedFormat = Literal["tflite", "saved_model"]


@dataclass(frozen=True)
class ServedArtifact:
    """``format`` is ``"tflite"`` (``path`` is the ``.tflite`` file) or ``"saved_model"`` (``path`` is the folder)."""

    format: ServedFormat
    path: Path


def served_artifact(version_dir: Path) -> ServedArtifact:
    """The artifact a server loads for the registry version at ``version_dir``."""
    version_dir = Path(version_dir)
    tflite = version_dir / TFLITE_FILE
    if tflite.is_file():
        return ServedArtifact("tflite", tflite)
    return ServedArtifact("saved_model", version_dir)


def load_served_fn(version_dir: Path, n_features: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The served artifact of ``version_dir`` as ``features -> outputs``, loaded as the server loads it."""
    from include.mlops.modeling import load_serving_fn, load_tflite_fn

    artifact = served_artifact(version_dir)
    if artifact.format == "tflite":
        return load_tflite_fn(artifact.path)
    return load_serving_fn(artifact.path, n_features)
