"""A candidate's fingerprint: the same inputs give the same one, any training input changes it, and the gate's check."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from include.mlops.config import find_model_config, load_model_config
from include.mlops.registry.fingerprint import (
    LINEAGE_KEY,
    OPTIMIZE_STAGE,
    candidate_fingerprint,
    for_stage,
    identical_to_champion,
    trained_fingerprint,
    version_fingerprint,
)
from include.mlops.registry.version_files import LINEAGE_FILE
from include.mlops.training.modeling import resolve_hparams

DIABETES = find_model_config("diabetes")
DATA_SHA = hashlib.sha256(b"one snapshot").hexdigest()
CODE = "0123456789abcdef0123456789abcdef01234567"


def fingerprint(config: Any = DIABETES, **changes: Any) -> dict[str, Any]:
    inputs = {"data_sha256": DATA_SHA, "hparams": resolve_hparams(config), "code": CODE, **changes}
    return candidate_fingerprint(config, **inputs)


def with_train(**changes: Any) -> Any:
    return dataclasses.replace(DIABETES, train=dataclasses.replace(DIABETES.train, **changes))


def test_the_sha256_is_the_digest_of_the_recorded_parts() -> None:
    fp = fingerprint()
    parts = {key: value for key, value in fp.items() if key != "sha256"}
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    assert fp["sha256"] == hashlib.sha256(canonical).hexdigest()
    assert fp["data_sha256"] == DATA_SHA and fp["code_version"] == CODE and fp["seed"] == DIABETES.train.seed
    assert fp["stage"] == "train" and fp["hparams"] == resolve_hparams(DIABETES)
    assert fp["builder_sha256"] == hashlib.sha256(DIABETES.builder_path.read_bytes()).hexdigest()


def test_the_same_config_written_differently_gives_the_same_fingerprint(tmp_path: Path) -> None:
    # Keys in another order, comments and flow style gone: the config as loaded is what counts, not its text.
    document = yaml.safe_load(DIABETES.path.read_text())
    reordered = dict(reversed(list(document.items())))
    (tmp_path / DIABETES.path.name).write_text("# a copy\n" + yaml.safe_dump(reordered, sort_keys=False))
    shutil.copy(DIABETES.builder_path, tmp_path / DIABETES.builder_path.name)
    copy = load_model_config(tmp_path / DIABETES.path.name)
    assert fingerprint(copy) == fingerprint()
    assert fingerprint() == fingerprint(find_model_config("diabetes"))


def test_an_override_equal_to_the_configs_value_changes_nothing() -> None:
    same = resolve_hparams(DIABETES, {"epochs": DIABETES.train.epochs, "batch_size": None})
    assert fingerprint(hparams=same) == fingerprint()


@pytest.mark.parametrize(
    ("what", "changed"),
    [
        ("data", lambda: fingerprint(data_sha256=hashlib.sha256(b"another snapshot").hexdigest())),
        ("an override", lambda: fingerprint(hparams=resolve_hparams(DIABETES, {"batch_size": 16}))),
        ("the seed", lambda: fingerprint(with_train(seed=7))),
        ("the config's learning rate", lambda: fingerprint(with_train(learning_rate=0.002))),
        ("the features", lambda: fingerprint(dataclasses.replace(DIABETES, features=DIABETES.features[::-1]))),
        ("the code version", lambda: fingerprint(code="fedcba9876543210fedcba9876543210fedcba98")),
        ("the stage", lambda: fingerprint(stage=OPTIMIZE_STAGE)),
    ],
)
def test_every_training_input_changes_the_fingerprint(what: str, changed: Any) -> None:
    assert changed()["sha256"] != fingerprint()["sha256"], what


def test_a_changed_builder_module_changes_the_fingerprint(tmp_path: Path) -> None:
    shutil.copy(DIABETES.path, tmp_path / DIABETES.path.name)
    builder = tmp_path / DIABETES.builder_path.name
    builder.write_text(DIABETES.builder_path.read_text() + "\n# a change\n")
    assert fingerprint(load_model_config(tmp_path / DIABETES.path.name))["sha256"] != fingerprint()["sha256"]


@pytest.mark.parametrize(
    "change",
    [
        {"description": "another text"},
        {"schedule": "@hourly"},
        {"tags": ("other",)},
        {"metrics": ("mae",)},
        {"gate": dataclasses.replace(DIABETES.gate, thresholds={"r2": {"min": 0.9}})},
        {"timeouts": {**DIABETES.timeouts, "train": 60}},
    ],
    ids=lambda change: next(iter(change)),
)
def test_what_cannot_change_the_weights_leaves_the_fingerprint_alone(change: dict[str, Any]) -> None:
    assert fingerprint(dataclasses.replace(DIABETES, **change)) == fingerprint()


def test_the_train_steps_fingerprint_hashes_the_snapshot_file_itself(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_bytes(b"the snapshot's bytes")
    fp = trained_fingerprint(DIABETES, tmp_path, resolve_hparams(DIABETES))
    assert fp["data_sha256"] == hashlib.sha256(b"the snapshot's bytes").hexdigest()
    assert fp == trained_fingerprint(DIABETES, tmp_path / "data.parquet", resolve_hparams(DIABETES))


# --------------------------------------------------------------------------- identical to the champion


def test_a_candidate_with_the_champions_fingerprint_is_identical_and_says_so() -> None:
    identical = identical_to_champion(fingerprint(), {"version": 3, "metrics": {}, "fingerprint": fingerprint()})
    assert identical is not None and identical.champion_version == 3
    assert identical.message.startswith(f"candidate is identical to champion version 3 (same data sha256 {DATA_SHA}")
    assert f"seed {DIABETES.train.seed}" in identical.message and CODE in identical.message
    assert identical.message.endswith("); nothing registered")
    assert identical.to_dict()["fingerprint"]["sha256"] == fingerprint()["sha256"]


@pytest.mark.parametrize(
    ("candidate", "champion"),
    [
        (fingerprint(), {"version": 3, "metrics": {}}),  # registered before fingerprints
        (fingerprint(), {"version": 3, "fingerprint": None}),
        (fingerprint(), {"version": 3, "fingerprint": fingerprint(data_sha256="0" * 64)}),
        (fingerprint(), {"version": 3, "fingerprint": for_stage(fingerprint(), OPTIMIZE_STAGE)}),
        (fingerprint(code="unknown"), {"version": 3, "fingerprint": fingerprint(code="unknown")}),
        (None, {"version": 3, "fingerprint": fingerprint()}),
        (fingerprint(), None),
    ],
    ids=["no fingerprint", "null", "other data", "optimized", "unknown code", "no candidate", "no champion"],
)
def test_anything_else_is_not_identical(candidate: dict | None, champion: dict | None) -> None:
    assert identical_to_champion(candidate, champion) is None


def test_an_optimized_versions_fingerprint_keeps_the_inputs_under_another_stage() -> None:
    optimized = for_stage(fingerprint(), OPTIMIZE_STAGE)
    assert optimized == fingerprint(stage=OPTIMIZE_STAGE)
    assert for_stage(None, OPTIMIZE_STAGE) is None


def test_a_versions_fingerprint_is_read_from_its_lineage(tmp_path: Path) -> None:
    lineage = tmp_path / "1" / LINEAGE_FILE
    lineage.parent.mkdir(parents=True)
    lineage.write_text(json.dumps({"run_id": "r", LINEAGE_KEY: fingerprint()}))
    assert version_fingerprint(tmp_path / "1") == fingerprint()
    lineage.write_text(json.dumps({"run_id": "r"}))
    assert version_fingerprint(tmp_path / "1") is None
    assert version_fingerprint(tmp_path / "2") is None
