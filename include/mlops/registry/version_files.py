"""What a registry version folder holds besides the model: ``assets.extra/`` metadata and its checksums.

TF Serving ignores ``assets.extra/``, so our metadata travels with the
SavedModel.  ``checksums.json`` lists the sha256 of every other file of the
version (the model, ``model.tflite``, the metadata, the evidence copies), which
is how a version proves that what is served is what was gated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifacts

METADATA_DIR = "assets.extra"
CHECKSUMS_FILE = f"{METADATA_DIR}/checksums.json"
METRICS_FILE = f"{METADATA_DIR}/metrics.json"
LINEAGE_FILE = f"{METADATA_DIR}/lineage.json"
GATE_FILE = f"{METADATA_DIR}/gate.json"
MODEL_CARD_FILE = f"{METADATA_DIR}/model_card.md"
EVIDENCE_DIR = f"{METADATA_DIR}/evidence"

# assets.extra files the registry writes itself; extra metadata may not replace them.
OWN_METADATA = frozenset({"metrics.json", "lineage.json", "gate.json", "checksums.json"})


def model_files(checksums: Mapping[str, str]) -> dict[str, str]:
    """The checksums of the model itself (what TF Serving loads), without our metadata."""
    return {k: v for k, v in checksums.items() if not k.startswith(METADATA_DIR + "/")}


def evidence_problem(rel: str, source: str | os.PathLike[str]) -> str | None:
    """Why ``source`` cannot be stored as ``assets.extra/evidence/<rel>`` (a relative POSIX path, no '..')."""
    if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
        return f"evidence name {rel!r} must be a relative path like 'evaluate/metrics.json'"
    if not Path(source).is_file():
        return f"evidence file {source} (for {EVIDENCE_DIR}/{rel}) does not exist"
    return None


def metadata_name_problem(file_name: str) -> str | None:
    """Why ``file_name`` cannot be an extra metadata file under ``assets.extra/``."""
    if "/" in file_name or not file_name.endswith(".json") or file_name in OWN_METADATA:
        return f"metadata file name {file_name!r} must be a plain *.json name other than {sorted(OWN_METADATA)}"
    return None


def folder_files(path: str | os.PathLike[str], *, stat: bool = False) -> dict[str, Any]:
    """``{path in the folder: None, or with stat its (size, mtime_ns, ctime_ns)}`` of every file under ``path``.

    A cheap look at a version folder (no file is read); a file gone before its stat is left out.
    """
    top = os.fspath(path)
    found: dict[str, Any] = {}
    for root, _, files in os.walk(top):
        prefix = root[len(top) + 1 :].replace(os.sep, "/")
        for file in files:
            try:
                info = os.stat(os.path.join(root, file)) if stat else None
            except OSError:
                continue
            found[f"{prefix}/{file}" if prefix else file] = info and (info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return found


def checksum_problems(path: Path) -> tuple[dict[str, str], list[str]]:
    """The version folder's checksums as they are now, and how they differ from its ``checksums.json``."""
    sums_path = path / CHECKSUMS_FILE
    if not sums_path.is_file():
        return {}, [f"{CHECKSUMS_FILE} is missing"]
    try:
        expected = artifacts.read_json(sums_path)
    except ValueError as exc:
        return {}, [f"{CHECKSUMS_FILE} is not valid JSON ({exc})"]
    actual = artifacts.dir_checksums(path, exclude=(CHECKSUMS_FILE,))
    return actual, compare_checksums(expected, actual)


def compare_checksums(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """How a version's files as they are (``actual``) differ from its ``checksums.json`` (``expected``)."""
    problems = [f"{rel} is missing" for rel in sorted(set(expected) - set(actual))]
    problems += [f"{rel} is not listed in checksums.json" for rel in sorted(set(actual) - set(expected))]
    changed = [rel for rel in sorted(set(expected) & set(actual)) if expected[rel] != actual[rel]]
    problems += [f"{rel} has changed (sha256 mismatch)" for rel in changed]
    return problems


def default_card(name: str, version: int, metrics: Mapping[str, Any], lineage: Mapping[str, Any]) -> str:
    """A minimal model card, for callers that bring none."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(metrics.items()))
    return (
        f"# {name} version {version}\n\n"
        f"Registered by run `{lineage.get('run_id')}` of `{lineage.get('dag_id')}`.\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n"
    )
