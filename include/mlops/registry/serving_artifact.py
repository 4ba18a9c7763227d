"""Which bytes a registry version is served from: the one rule every step follows.

A version folder that holds ``model.tflite`` is served from that file (like
TF Serving's ``--prefer_tflite_model``); otherwise from its SavedModel.  The
evaluation measures, register stores, the server loads and deploy verifies
the artifact this rule names, so what was gated is what is served.

TF Serving follows the rule only when it is told to: :data:`TF_SERVING_REQUIRED_ARGS`
are the arguments every ``tensorflow_model_server`` the project runs or documents
passes, and :func:`tf_serving_arg_problems` checks an argument list against them
(tests/containers/test_tf_serving_args.py applies it to include/k8s,
docker-compose.yaml and the docs).

Importing this module is cheap: TensorFlow is imported only by :func:`load_served_fn`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from include.mlops.artifacts import dir_checksums, sha256_file

if TYPE_CHECKING:
    import numpy as np

TFLITE_FILE = "model.tflite"
SAVED_MODEL = "saved_model"
TFLITE = "tflite"
# Our metadata beside a registered SavedModel is not part of what is served, nor is model.tflite.
_METADATA_DIR = "assets.extra"
_NOT_SAVED_MODEL = (_METADATA_DIR, TFLITE_FILE)

# What a TF Serving process must be given for it to serve what served_artifact() names.  TF Serving's
# default loads saved_model.pb even where model.tflite lies beside it, and for an optimized version that is
# the float model that failed the size or latency budget.  tensorflow_serving/model_servers/main.cc:
# prefer_tflite_model "Prefer TensorFlow Lite model from `model.tflite` file in SavedModel directory,
# instead of the TensorFlow model from `saved_model.pb` file. If no TensorFlow Lite model found, fallback
# to TensorFlow model." -- the same rule, over the same file name (TFLITE_FILE).  Upstream marks the flag
# "EXPERIMENTAL; CAN BE REMOVED ANYTIME!", and tensorflow_model_server only prints "unknown argument" for a
# flag it lacks and starts anyway: a new TF Serving image must still list it in --help, or the rule breaks.
TF_SERVING_PREFER_TFLITE_FLAG = "--prefer_tflite_model"
# The registry's models.config names labels (stable, canary), and TF Serving checks labels before any
# version has loaded when it starts: without this flag a restarted TF Serving refuses the file and exits
# ("Request to assign label to version N of model M, which is not currently available for inference").
# With it, a new label may name a version still loading; moving an existing label still needs a loaded one.
TF_SERVING_ALLOW_LABELS_FLAG = "--allow_version_labels_for_unavailable_models"
TF_SERVING_REQUIRED_ARGS: Mapping[str, str] = MappingProxyType(
    {TF_SERVING_PREFER_TFLITE_FLAG: "true", TF_SERVING_ALLOW_LABELS_FLAG: "true"}
)


@dataclass(frozen=True)
class ServedArtifact:
    """``format`` is "tflite" or "saved_model"; ``path`` the .tflite file or the SavedModel folder."""

    format: str
    path: Path

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the file, or for a SavedModel of its files' sorted ``{relative path: sha256}`` JSON."""
        return artifact_sha256(self.format, self.path)

    @property
    def size_bytes(self) -> int:
        """The size of the served bytes (see :func:`artifact_size_bytes`)."""
        return artifact_size_bytes(self.format, self.path)


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
    files = dir_checksums(path, exclude=_NOT_SAVED_MODEL)
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def artifact_size_bytes(fmt: str, path: str | os.PathLike[str]) -> int:
    """The size of an artifact's served bytes: the ``.tflite`` file, or the SavedModel's files.

    A registered version folder is measured like the candidate it was: the
    files :func:`artifact_sha256` covers, without ``assets.extra/`` (model
    card, evidence, reference) and ``model.tflite``.
    """
    if fmt == TFLITE:
        return Path(path).stat().st_size
    if fmt != SAVED_MODEL:
        raise ValueError(f"unknown artifact format {fmt!r}; expected {TFLITE!r} or {SAVED_MODEL!r}")
    root = Path(path)
    return sum(
        file.stat().st_size
        for file in root.rglob("*")
        if file.is_file() and file.relative_to(root).parts[0] not in _NOT_SAVED_MODEL
    )


def load_served_fn(version_dir: Path, n_features: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The served artifact of ``version_dir`` as ``features -> outputs``, loaded as the server loads it."""
    from include.mlops.training.modeling import load_serving_fn, load_tflite_fn

    artifact = served_artifact(version_dir)
    if artifact.format == TFLITE:
        return load_tflite_fn(artifact.path)
    return load_serving_fn(artifact.path, n_features)


def tf_serving_arg_problems(argv: Iterable[str]) -> list[str]:
    """Why ``argv`` (the arguments after ``tensorflow_model_server``) breaks the rule; ``[]`` when it keeps it.

    Each flag of :data:`TF_SERVING_REQUIRED_ARGS` must be passed as ``--flag=value`` with exactly that value.
    As in TF Serving's own parser, a later occurrence of a flag overrides an earlier one, so the last one
    counts.  Other spellings (a bare ``--flag``, ``--flag value``) are reported too: one form is written
    everywhere, so one form is checked.
    """
    argv = list(argv)
    problems = []
    for flag, value in TF_SERVING_REQUIRED_ARGS.items():
        given = [arg for arg in argv if arg == flag or arg.startswith(flag + "=")]
        if not given:
            problems.append(f"{flag}={value} is missing")
        elif given[-1] != f"{flag}={value}":
            problems.append(f"{flag}={value} is required, the last occurrence is {given[-1]!r}")
    return problems
