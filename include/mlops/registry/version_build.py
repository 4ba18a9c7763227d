"""What every registry implementation does the same way when it registers: check the input, then lay out a version.

:func:`check_register_input` refuses bad input before anything is claimed;
:func:`write_version` fills a local staging folder with exactly what a
version folder holds (the model, ``model.tflite``, ``assets.extra/`` metadata
and evidence, and ``checksums.json`` last), once the version number is known.
The filesystem registry renames that folder into place; the object-store one
uploads it.  One layout, written by one function, so the two never drift apart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.registry import version_files
from include.mlops.registry.protocol import RegistryError
from include.mlops.registry.serving_artifact import TFLITE_FILE
from include.mlops.registry.version_files import (
    CHECKSUMS_FILE,
    EVIDENCE_DIR,
    GATE_FILE,
    LINEAGE_FILE,
    METADATA_DIR,
    METRICS_FILE,
    MODEL_CARD_FILE,
)

CopyFile = Callable[[str, str], object]


@dataclass(frozen=True)
class RegisterInput:
    """A register call's checked files: the SavedModel folder, an optional TFLite file, evidence copies."""

    source: Path
    tflite: Path | None
    evidence: Mapping[str, Path]

    def candidate(self) -> dict[str, str]:
        """sha256 of the model files the version will hold (what a retry of the same run must match)."""
        sums = version_files.model_files(artifacts.dir_checksums(self.source))
        if self.tflite is not None:
            sums[TFLITE_FILE] = artifacts.sha256_file(self.tflite)
        return sums


def check_register_input(
    model_dir: str | os.PathLike[str],
    *,
    lineage: Mapping[str, Any],
    tflite_path: str | os.PathLike[str] | None,
    evidence: Mapping[str, str | os.PathLike[str]] | None,
    metadata: Mapping[str, Any] | None,
) -> RegisterInput:
    """The checked input of a register call; :class:`RegistryError` naming the first problem."""
    source = Path(model_dir)
    if not (source / "saved_model.pb").is_file():
        raise RegistryError(f"{source} is not a SavedModel folder (no saved_model.pb); pass the train step's model")
    tflite = Path(tflite_path) if tflite_path is not None else None
    if tflite is not None and not tflite.is_file():
        raise RegistryError(f"TFLite model {tflite} does not exist")
    evidence_files = {rel: Path(evidence_source) for rel, evidence_source in (evidence or {}).items()}
    problems = [version_files.evidence_problem(rel, path) for rel, path in evidence_files.items()]
    problems += [version_files.metadata_name_problem(file_name) for file_name in metadata or {}]
    problems += [
        f"lineage needs a non-empty {key!r} (it makes retries idempotent); got {dict(lineage)!r}"
        for key in ("dag_id", "run_id")
        if not lineage.get(key)
    ]
    first_problem = next((problem for problem in problems if problem), None)
    if first_problem is not None:
        raise RegistryError(first_problem)
    return RegisterInput(source, tflite, evidence_files)


def write_version(
    staging: Path,
    checked: RegisterInput,
    candidate: Mapping[str, str],
    *,
    name: str,
    version: int,
    metrics: Mapping[str, Any],
    lineage: Mapping[str, Any],
    model_card: str | Callable[[int], str] | None,
    gate_decision: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    copy_file: CopyFile = shutil.copy2,
) -> dict[str, str]:
    """Fill ``staging`` (which must not exist) with version ``version``; returns its checksums.json content.

    :class:`RegistryError` when the model files no longer match ``candidate``
    (the source changed while it was copied).
    """
    shutil.copytree(checked.source, staging, copy_function=copy_file)
    if checked.tflite is not None:
        copy_file(str(checked.tflite), str(staging / TFLITE_FILE))
    meta = staging / METADATA_DIR
    meta.mkdir(exist_ok=True)
    for rel, evidence_source in checked.evidence.items():
        target = staging / EVIDENCE_DIR / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_file(str(evidence_source), str(target))
    full_lineage = {**artifacts.to_jsonable(dict(lineage)), "model_name": name, "version": version}
    artifacts.atomic_write_json(staging / METRICS_FILE, artifacts.to_jsonable(dict(metrics)))
    artifacts.atomic_write_json(staging / LINEAGE_FILE, full_lineage)
    for file_name, payload in (metadata or {}).items():
        artifacts.atomic_write_json(meta / file_name, artifacts.to_jsonable(payload))
    if gate_decision is not None:
        artifacts.atomic_write_json(staging / GATE_FILE, artifacts.to_jsonable(dict(gate_decision)))
    if callable(model_card):
        card = model_card(version)
    else:
        card = model_card or version_files.default_card(name, version, metrics, full_lineage)
    artifacts.atomic_write_text(staging / MODEL_CARD_FILE, card)
    sums = artifacts.dir_checksums(staging, exclude=(CHECKSUMS_FILE,))
    if version_files.model_files(sums) != dict(candidate):
        raise RegistryError(f"{checked.source} changed while it was being copied; retry the register step")
    artifacts.atomic_write_json(staging / CHECKSUMS_FILE, sums)
    return sums
