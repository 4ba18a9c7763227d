"""A candidate's fingerprint: one sha256 over everything that determines the model a training run makes.

Training is seeded, so the same data bytes, the same training-relevant config,
the same hyperparameters and seed, the same model builder and the same code make
the same model (``tests/unit/test_train.py`` trains twice and compares).  The
train step puts :func:`candidate_fingerprint` in its result, register keeps it
in the version's lineage as ``candidate_fingerprint``, evaluate reads the
champion's back (:func:`version_fingerprint`), and the first gate asks
:func:`identical_to_champion`: a candidate identical to the champion is not
registered, since there is nothing new to serve.

Standard library only (plus the config and artifact helpers): the gate imports
this module while DAG files are parsed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.config import PROJECT_ROOT, ModelConfig
from include.mlops.data.sources import snapshot_path
from include.mlops.registry.version_files import LINEAGE_FILE

log = logging.getLogger(__name__)

CODE_VERSION_ENV = "MLOPS_CODE_VERSION"
UNKNOWN_CODE_VERSION = "unknown"
# The lineage key a registered version keeps its fingerprint under.
LINEAGE_KEY = "candidate_fingerprint"
# Bumped when what goes into the fingerprint changes, so that old and new fingerprints never match.
FINGERPRINT_VERSION = 1
# What made the candidate: the train step, or the optimize branch (tuning and compression) after it.
TRAIN_STAGE = "train"
OPTIMIZE_STAGE = "optimize"
# Config fields that cannot change the trained weights: when and where the model runs, how it is measured,
# gated, monitored, optimized and served, and its description.  ``source`` is stood for by the data's sha256.
# Every other field, and any field added later, counts.
NOT_TRAINING_FIELDS = frozenset(
    {
        "path",
        "description",
        "metrics",
        "owner",
        "schedule",
        "tags",
        "source",
        "gate",
        "optimize",
        "monitor",
        "deploy",
        "serving_name",
        "node_selector",
        "tolerations",
        "runtime_class_name",
        "priority_class_name",
        "schedule_timeout_seconds",
        "timeouts",
    }
)


def code_version() -> str:
    """``$MLOPS_CODE_VERSION`` (set in images built without .git), else ``git rev-parse HEAD``, else "unknown"."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_CODE_VERSION
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else UNKNOWN_CODE_VERSION


def training_config(config: ModelConfig) -> dict[str, Any]:
    """The config as loaded, less :data:`NOT_TRAINING_FIELDS`, as plain JSON values (key order does not matter)."""
    kept = {field.name for field in dataclasses.fields(config)} - NOT_TRAINING_FIELDS
    return artifacts.to_jsonable({name: _plain(getattr(config, name)) for name in sorted(kept)})


def builder_sha256(config: ModelConfig) -> str | None:
    """sha256 of the module that builds the Keras model (None when it is not a file)."""
    path = config.builder_path
    return artifacts.sha256_file(path) if path.is_file() else None


def candidate_fingerprint(
    config: ModelConfig,
    *,
    data_sha256: str,
    hparams: Mapping[str, Any],
    code: str,
    stage: str = TRAIN_STAGE,
) -> dict[str, Any]:
    """The fingerprint of a candidate trained on data ``data_sha256`` with the resolved ``hparams``.

    ``hparams`` are the config's with the run's overrides applied, so an
    override equal to the config's value changes nothing.  Returns the parts
    and ``sha256``, their digest; two fingerprints are equal when their
    ``sha256`` are.
    """
    parts = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "stage": stage,
        "data_sha256": data_sha256,
        "config_sha256": _digest(training_config(config)),
        "builder_sha256": builder_sha256(config),
        "hparams": artifacts.to_jsonable(dict(hparams)),
        "seed": config.train.seed,
        "code_version": code,
    }
    return {"sha256": _digest(parts), **parts}


def trained_fingerprint(
    config: ModelConfig, data_uri: str | os.PathLike[str], hparams: Mapping[str, Any]
) -> dict[str, Any]:
    """:func:`candidate_fingerprint` of a train step run: the snapshot file's sha256 and this code's version."""
    data_sha256 = artifacts.sha256_file(snapshot_path(data_uri))
    return candidate_fingerprint(config, data_sha256=data_sha256, hparams=hparams, code=code_version())


def for_stage(fingerprint: Mapping[str, Any] | None, stage: str) -> dict[str, Any] | None:
    """``fingerprint`` of the same inputs, made by ``stage`` instead (an optimized version's); None stays None."""
    if not fingerprint:
        return None
    parts = {key: value for key, value in fingerprint.items() if key != "sha256"}
    parts["stage"] = stage
    return {"sha256": _digest(parts), **parts}


def version_fingerprint(version_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The fingerprint a registered version's lineage records (None: none recorded, or no lineage to read)."""
    path = Path(version_dir) / LINEAGE_FILE
    try:
        lineage = artifacts.read_json(path)
    except (OSError, ValueError):
        return None
    fingerprint = lineage.get(LINEAGE_KEY) if isinstance(lineage, Mapping) else None
    return dict(fingerprint) if isinstance(fingerprint, Mapping) and fingerprint.get("sha256") else None


@dataclass(frozen=True)
class IdenticalToChampion:
    """The candidate has the champion's fingerprint: the same inputs made it, so it is the same model."""

    champion_version: int | None
    fingerprint: Mapping[str, Any]

    @property
    def message(self) -> str:
        which = f"version {self.champion_version}" if self.champion_version is not None else "(a path)"
        fp = self.fingerprint
        return (
            f"candidate is identical to champion {which} (same data sha256 {fp.get('data_sha256')} and config: "
            f"hyperparameters {json.dumps(fp.get('hparams'), sort_keys=True)}, seed {fp.get('seed')}, "
            f"code {fp.get('code_version')}; fingerprint {fp.get('sha256')}); nothing registered"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "champion_version": self.champion_version,
            "fingerprint": dict(self.fingerprint),
            "message": self.message,
        }


def identical_to_champion(
    candidate: Mapping[str, Any] | None, champion: Mapping[str, Any] | None
) -> IdenticalToChampion | None:
    """Whether the candidate's fingerprint is the champion's (``champion``: evaluate's record of it).

    A champion without a fingerprint (registered before fingerprints were
    recorded) never matches, nor does a candidate whose code version is unknown:
    then nothing shows that the same code made both.
    """
    if not candidate or not champion:
        return None
    theirs = champion.get("fingerprint")
    if not isinstance(theirs, Mapping) or not theirs.get("sha256") or candidate.get("sha256") != theirs["sha256"]:
        return None
    if candidate.get("code_version") in (None, "", UNKNOWN_CODE_VERSION):
        log.warning("the candidate matches the champion's fingerprint, but its code version is unknown: not identical")
        return None
    return IdenticalToChampion(champion.get("version"), dict(candidate))


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = [
    "LINEAGE_KEY",
    "NOT_TRAINING_FIELDS",
    "OPTIMIZE_STAGE",
    "TRAIN_STAGE",
    "IdenticalToChampion",
    "candidate_fingerprint",
    "code_version",
    "for_stage",
    "identical_to_champion",
    "trained_fingerprint",
    "training_config",
    "version_fingerprint",
]
