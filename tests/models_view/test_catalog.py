"""The Models view's data: include.mlops.registry.catalog and the quality history plot, over real files in the real layout."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks.ui import write_history
from include.mlops import artifacts
from include.mlops.config import load_model_config
from include.mlops.registry.catalog import Catalog, UnknownError
from include.mlops.registry.quality_history import HistoryPoint, history_key, history_png

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = PROJECT_ROOT / "include" / "models"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("catalog")
    config = load_model_config(MODELS / "diabetes.yaml")
    return {"root": root, "config": config, **write_history(root, config, versions=4, runs=30)}


def test_versions_carry_labels_gate_outcomes_overrides_and_lineage(history: dict[str, Any]) -> None:
    catalog = Catalog(history["root"], MODELS)
    records = catalog.version_records("diabetes")
    assert [r.version for r in records] == sorted(history["versions"], reverse=True)
    assert records[0].labels == ["stable"] and all(r.labels == [] for r in records[1:])
    assert {r.version for r in records if r.gate and r.gate.override} == set(history["overrides"])
    assert all(r.gate is not None and r.gate.passed for r in records)
    assert all(r.lineage["run_id"] in history["runs"] and r.has_report for r in records)
    assert all(r.checksum_problems == [] for r in records)


def test_the_model_summary_names_the_run_that_deployed_stable(history: dict[str, Any]) -> None:
    model = Catalog(history["root"], MODELS).model("diabetes")
    assert model.dag_id == "lifecycle__diabetes" and model.stable_version == history["versions"][-1]
    assert model.gate_metrics == ["r2", "mae", "size_mb", "latency_ms"]
    assert model.deployed is not None and model.deployed["run_id"] in history["runs"]
    assert artifacts.safe_segment(model.deployed["run_id"]) == model.deployed["run_folder"]


def test_runs_give_each_final_gate_decision_with_reasons(history: dict[str, Any]) -> None:
    runs = Catalog(history["root"], MODELS).runs("diabetes")
    assert [r.folder for r in runs] == [artifacts.safe_segment(r) for r in history["runs"]]
    rejected = [r for r in runs if r.decision is not None and not r.decision.passed]
    assert {r.folder for r in rejected} == {artifacts.safe_segment(r) for r in history["rejected"]}
    assert all(r.decision.task_id == "gate_optimized" and r.decision.reasons for r in rejected)  # type: ignore[union-attr]
    assert all(r.reports == ["evaluate", "evaluate_optimized"] for r in rejected)
    assert {r.run_type for r in runs} == {"backfill", "manual", "scheduled"}
    assert runs[0].date == "2023-01-01T00:00:00+00:00"
    assert all(r.decision.metrics["r2"] is not None for r in runs)  # type: ignore[union-attr]
    assert runs[0].decision.bounds["r2"] == {"min": 0.2}  # type: ignore[union-attr]


def test_a_changed_file_is_read_again_and_a_broken_one_is_skipped(tmp_path: Path) -> None:
    config = load_model_config(MODELS / "diabetes.yaml")
    write_history(tmp_path, config, versions=1, runs=2)
    catalog = Catalog(tmp_path, MODELS)
    first = catalog.runs("diabetes")[1]
    assert first.decision is not None and first.decision.passed
    decision = first.decision
    path = catalog.run_folder("diabetes", first.folder) / "gate" / "decision.json"
    record = artifacts.read_json(path)
    record["decision"]["passed"] = False
    artifacts.atomic_write_json(path, record)
    os.utime(path, ns=(1, 1))  # a different mtime even on a filesystem with coarse timestamps
    assert catalog.runs("diabetes")[1].decision.passed is False  # type: ignore[union-attr]
    path.write_text("{not json")
    assert catalog.runs("diabetes")[1].decision is None
    assert decision.passed, "records already handed out do not change"


def test_checksum_status_lists_missing_and_unlisted_files(tmp_path: Path) -> None:
    config = load_model_config(MODELS / "diabetes.yaml")
    write_history(tmp_path, config, versions=1, runs=2)
    version = artifacts.registry_root(tmp_path) / "diabetes" / "1"
    (version / "variables" / "variables.index").unlink()
    (version / "stray.txt").write_text("x")
    record = Catalog(tmp_path, MODELS).version_record("diabetes", 1)
    assert record.checksum_status == "problem"
    assert record.checksum_problems == [
        "variables/variables.index is missing",
        "stray.txt is not listed in checksums.json",
    ]


@pytest.mark.parametrize(
    "name", ["nope", "..", "../models", "/etc/passwd", "diabetes/../digits", ".stub-model", "models.config", ""]
)
def test_names_not_in_the_catalog_are_unknown(history: dict[str, Any], name: str) -> None:
    with pytest.raises(UnknownError):
        Catalog(history["root"], MODELS).version_records(name)


@pytest.mark.parametrize("version", ["0", "99", "-1", "1/../2", "../1", "/1", "1.0", " 1", "x"])
def test_versions_not_registered_are_unknown(history: dict[str, Any], version: str) -> None:
    with pytest.raises(UnknownError):
        Catalog(history["root"], MODELS).version_dir("diabetes", version)


@pytest.mark.parametrize(
    ("run", "step"),
    [("..", "evaluate"), ("../../models", "evaluate"), ("/etc", "evaluate"), (".x", "evaluate"), ("RUN", "train")],
)
def test_run_reports_outside_known_runs_and_steps_are_unknown(history: dict[str, Any], run: str, step: str) -> None:
    catalog = Catalog(history["root"], MODELS)
    run = artifacts.safe_segment(history["runs"][0]) if run == "RUN" else run
    with pytest.raises(UnknownError):
        catalog.run_report("diabetes", run, step)


def test_a_registry_folder_without_a_config_is_still_a_model(tmp_path: Path) -> None:
    config = load_model_config(MODELS / "diabetes.yaml")
    write_history(tmp_path, config, versions=1, runs=2)
    empty_models = tmp_path / "no-configs"
    empty_models.mkdir()
    catalog = Catalog(tmp_path, empty_models)
    assert catalog.model_names() == ["diabetes"]
    assert catalog.model("diabetes").version_count == 1 and catalog.dag_id("diabetes") == "lifecycle__diabetes"


def test_the_quality_history_is_a_png_keyed_by_what_it_shows() -> None:
    day = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    points = [
        HistoryPoint(day + dt.timedelta(days=i), kind, {"r2": 0.3 + i / 100}, passed=i != 2, deployed_version=v)
        for i, (kind, v) in enumerate([("scheduled", 1), ("backfill", None), ("manual", None), ("scheduled", 2)])
    ]
    image = history_png(points, ["r2", "mae"], {"r2": {"min": 0.2}})
    assert image is not None and image.startswith(b"\x89PNG\r\n\x1a\n")
    assert history_png(points, ["mae"], {}) is None, "no value of any gate metric: nothing to plot"
    more = [*points, HistoryPoint(day + dt.timedelta(days=9), "scheduled", {"r2": 0.5})]
    assert history_key(more, ["r2"], {}) != history_key(points, ["r2"], {})


def test_the_version_check_hashes_again_only_after_a_file_changed(tmp_path: Path, monkeypatch: Any) -> None:
    config = load_model_config(MODELS / "diabetes.yaml")
    write_history(tmp_path, config, versions=1, runs=2)
    catalog = Catalog(tmp_path, MODELS)
    hashed: list[Path] = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda path: hashed.append(path) or real(path))
    first = catalog.verification("diabetes", 1)
    assert first["verified"] is True and first["problems"] == [] and first["files"] == len(hashed) > 0
    hashed.clear()
    assert catalog.verification("diabetes", "1") == first and hashed == [], "the second request hashes nothing"
    model = artifacts.registry_root(tmp_path) / "diabetes" / "1" / "saved_model.pb"
    model.write_bytes(bytes(reversed(model.read_bytes())))  # the same size
    os.utime(model, ns=(1, 1))
    changed = catalog.verification("diabetes", 1)
    assert hashed and changed["verified"] is False and changed["files"] is None
    assert changed["problems"] == ["saved_model.pb has changed (sha256 mismatch)"]
