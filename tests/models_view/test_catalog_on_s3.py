"""The Models view with the artifact root in a bucket (moto's S3 server, real HTTP).

The same lifecycle history (two registered versions with labels moved for
reasons, run folders as the steps leave them, a decided monitor run) is built
twice: in a folder root, and in a bucket through the object-store registry and
``ArtifactStore.push`` from one machine's mirror.  Read from another machine
(a fresh, empty mirror), the catalog must show exactly what the folder root
gives, never a half-published step, and never download a model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from models_view.monitor_runs import write_monitor_run
from s3_stand_in import BUCKET

from include.mlops import artifact_store, artifacts
from include.mlops.config import load_model_config
from include.mlops.evaluation.gate import decide_for_config
from include.mlops.registry import catalog_bucket
from include.mlops.registry.catalog import Catalog
from include.mlops.registry.compare import compare_versions
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.label_log import label_move_context
from include.mlops.registry.object_store import ObjectStoreRegistry

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = PROJECT_ROOT / "include" / "models"
CONFIG = load_model_config(MODELS / "diabetes.yaml")
DAG = CONFIG.dag_id
RUNS = ("scheduled__2026-11-01T00:00:00+00:00", "manual__2026-11-02T10:30:00+00:00")
METRICS = (
    {"mae": 44.0, "rmse": 55.0, "r2": 0.41, "size_mb": 0.05, "latency_ms": 2.0},
    {"mae": 42.5, "rmse": 53.0, "r2": 0.44, "size_mb": 0.05, "latency_ms": 2.1},
)
MONITOR_RUN = "scheduled__2026-11-03T09:00:00+00:00"
MONITOR_END = dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC)
MODEL_BYTES = b"stub SavedModel: the Models view never reads it"


def build_history(root: Path, registry: Any, publish: Callable[[Path], None]) -> None:
    """Two lifecycle runs that register and deploy, labels moved with reasons, one monitor run, all under ``root``."""
    stub = root.parent / f"{root.name}-stub-model"
    (stub / "variables").mkdir(parents=True, exist_ok=True)
    (stub / "saved_model.pb").write_bytes(MODEL_BYTES)
    (stub / "variables" / "variables.index").write_bytes(b"stub")
    champion = None
    for index, run_id in enumerate(RUNS):

        def step(name: str, run_id: str = run_id) -> Path:
            return artifacts.make_dirs(artifacts.run_dir(DAG, run_id, name, root=root))

        metrics = METRICS[index]
        decision = decide_for_config(CONFIG, metrics, champion)
        evaluate, gate, train = step("evaluate"), step("gate"), step("train")
        artifacts.atomic_write_json(evaluate / "metrics.json", metrics)
        (evaluate / "report.html").write_text(f"<html><body>evaluation of {run_id}</body></html>")
        artifacts.atomic_write_json(
            gate / "decision.json", {"decision": decision.to_dict(), "route": "register", "champion_version": None}
        )
        artifacts.atomic_write_json(train / "history.json", {"hparams": {"learning_rate": 0.001 * (index + 1)},
                                                             "val_loss": 0.5 - index / 10})  # fmt: skip
        (train / "model").mkdir(exist_ok=True)
        (train / "model" / "saved_model.pb").write_bytes(MODEL_BYTES)
        for folder in (evaluate, gate, train):
            publish(folder)
        lineage = {"dag_id": DAG, "run_id": run_id, "created_at": f"2026-11-0{index + 1}T00:00:00+00:00",
                   "code_version": "test"}  # fmt: skip
        version = registry.register(
            CONFIG.serving_name, stub, metrics=metrics, lineage=lineage, gate_decision=decision.to_dict(),
            model_card=lambda v, run_id=run_id: f"# diabetes version {v}\n\nRegistered by `{run_id}`.\n",
            evidence={"evaluate/report.html": evaluate / "report.html"},
        ).version  # fmt: skip
        artifacts.atomic_write_json(step("register") / "result.json", {"version": version, "created": True})
        publish(step("register"))
        with label_move_context(run=run_id, task="deploy", reason=f"gate passed in {run_id}"):
            registry.move_label(CONFIG.serving_name, "stable", version, expected=version - 1 or None)
        artifacts.atomic_write_json(
            step("deploy") / "result.json",
            {"model_name": CONFIG.serving_name, "label": "stable", "version": version, "changed": True},
        )
        publish(step("deploy"))
        champion = metrics
    with label_move_context(reason="rollback: canary errors", requested_by="oncall"):
        registry.move_label(CONFIG.serving_name, "stable", 1, expected=2)
    registry.set_label(CONFIG.serving_name, "canary", 2)
    monitor_run = write_monitor_run(root, CONFIG, MONITOR_RUN, MONITOR_END, drifted={"bmi": 1e-6})
    for folder in sorted(monitor_run.iterdir()):
        publish(folder)


def shown(catalog: Catalog) -> dict[str, Any]:
    """Everything the Models view shows of the history, as JSON-able values."""
    runs = catalog.runs("diabetes")
    return {
        "names": catalog.model_names(),
        "models": [m.to_dict() for m in catalog.models()],
        "versions": [r.to_dict() for r in catalog.version_records("diabetes")],
        "label_moves": catalog.label_moves("diabetes"),
        "model_cards": [catalog.model_card("diabetes", v) for v in catalog.versions("diabetes")],
        "version_reports": [catalog.version_report("diabetes", v).read_text() for v in (1, 2)],
        "verification": [catalog.verification("diabetes", v) for v in (1, 2)],
        "runs": [r.to_dict() for r in runs],
        "run_reports": [catalog.run_report("diabetes", r.folder, "evaluate").read_text() for r in runs],
        "health": catalog.health("diabetes").to_dict(),
        "monitor_report": catalog.monitor_report("diabetes", artifacts.safe_segment(MONITOR_RUN)).read_text(),
        "compare": compare_versions(catalog, "diabetes", 1, 2),
    }


def normalised(value: Any, roots: list[Path]) -> Any:
    """``value`` without what differs by machine or by clock: the roots in paths, times and file mtimes."""
    if isinstance(value, dict):
        return {k: normalised(v, roots) for k, v in value.items() if k not in ("at", "mtime", "deployed_at")}
    if isinstance(value, list):
        return [normalised(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(str(root), "<root>")
    return value


@pytest.fixture
def s3_root(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"s3://{BUCKET}/{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}/artifacts"
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", uri)
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "machine-a"))
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    return uri


@pytest.fixture
def histories(s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The history in a folder root and in the bucket; the environment then is another machine's (empty mirror)."""
    local = tmp_path / "folder-root"
    build_history(local, Registry(artifacts.registry_root(local)), lambda folder: None)
    store = artifact_store.current()
    assert store is not None
    registry = artifact_store.open_registry()
    assert isinstance(registry, ObjectStoreRegistry) and str(registry.root) == f"{s3_root}/models"
    build_history(artifacts.artifact_root(), registry, store.push)
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "machine-b"))
    return {"local": local, "writer": store.local, "machine-b": tmp_path / "machine-b"}


def test_on_s3_the_view_shows_what_the_same_history_shows_on_a_folder_root(histories: dict[str, Path]) -> None:
    on_s3 = Catalog(models=MODELS)
    assert on_s3.registry_root.is_relative_to(histories["machine-b"]), "another machine: its own, empty folder"
    expected = shown(Catalog(histories["local"], MODELS))
    got = shown(on_s3)
    roots = [histories["local"], histories["writer"], on_s3.root]
    assert normalised(got, roots) == normalised(expected, roots)
    # What the page shows is really there (the comparison alone would pass on two empty catalogs).
    model = got["models"][0]
    assert model["labels"] == {"stable": 1, "canary": 2} and model["version_count"] == 2
    assert model["deployed"]["run_id"] == RUNS[0] and model["deployed"]["deployed_at"]
    assert [(m["label"], m["from"], m["to"], m.get("reason")) for m in got["label_moves"]] == [
        ("canary", None, 2, None),
        ("stable", 2, 1, "rollback: canary errors"),
        ("stable", 1, 2, f"gate passed in {RUNS[1]}"),
        ("stable", None, 1, f"gate passed in {RUNS[0]}"),
    ]
    assert got["label_moves"][1]["requested_by"] == "oncall"
    assert [r["version"] for r in got["versions"]] == [2, 1]
    assert all(r["checksum_status"] == "files match checksums.json's list" and r["has_report"] for r in got["versions"])
    assert got["model_cards"][1].startswith("# diabetes version 2\n\nRegistered by `manual__")
    assert got["verification"] == [{"verified": True, "files": 7, "problems": []}] * 2
    assert [r["folder"] for r in got["runs"]] == [artifacts.safe_segment(r) for r in RUNS]
    assert [r["registered_version"] for r in got["runs"]] == [1, 2]
    assert all(r["decision"]["outcome"] == "passed" and r["reports"] == ["evaluate"] for r in got["runs"])
    assert got["health"]["state"] == "measured" and "drift" in got["health"]["outcomes"]
    assert got["compare"]["sections"][1]["rows"] == [
        {"key": "learning_rate", "a": 0.001, "b": 0.002, "differs": True}
    ], "the hyperparameters come from the train step's record in the run folder"


def test_the_view_downloads_no_model_and_only_the_files_it_reads(histories: dict[str, Path]) -> None:
    catalog = Catalog(models=MODELS)
    shown(catalog)
    assert not list(histories["machine-b"].rglob("saved_model.pb")), "no SavedModel of a version or a run"
    assert not list(histories["machine-b"].rglob("variables.index"))
    got = {p.relative_to(catalog.root).as_posix() for p in catalog.root.rglob("*") if p.is_file()}
    run = f"runs/{DAG}/{artifacts.safe_segment(RUNS[0])}"
    assert {f"{run}/gate/decision.json", f"{run}/evaluate/report.html", f"{run}/train/history.json"} <= got
    assert f"{run}/evaluate/metrics.json" not in got and f"{run}/train/model/saved_model.pb" not in got
    version = f"models/{CONFIG.serving_name}/1"
    assert {f"{version}/assets.extra/model_card.md", f"{version}/assets.extra/checksums.json"} <= got
    assert not [p for p in got if p.startswith(version) and "assets.extra/" not in p and not p.endswith("pulled")]
    # The machine's own mirror (where its steps work) is left alone: the view keeps a folder of its own.
    assert catalog.root == catalog_bucket.view_dir(artifact_store.current())  # type: ignore[arg-type]
    assert not artifacts.artifact_root().exists()


def test_a_half_published_step_or_run_does_not_appear_and_refreshes_are_throttled(
    histories: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog(models=MODELS)
    assert len(catalog.runs("diabetes")) == 2
    store = artifact_store.current()
    assert store is not None
    # What pushes killed after their first upload leave: files, no marker.
    half = artifacts.safe_segment("manual__2026-11-05T00:00:00+00:00")
    decision = {"decision": {"passed": False, "reasons": ["half written"]}, "route": "optimize"}
    store.objects.put(f"runs/{DAG}/{half}/gate/decision.json", json.dumps(decision).encode())
    first = artifacts.safe_segment(RUNS[0])
    store.objects.put(f"runs/{DAG}/{first}/gate_optimized/decision.json", json.dumps(decision).encode())
    # A new run published meanwhile.
    new = artifacts.safe_segment("manual__2026-11-06T00:00:00+00:00")
    out = store.local / "runs" / DAG / new / "evaluate"
    out.mkdir(parents=True)
    (out / "report.html").write_text("<html>new</html>")
    store.push(out)

    assert len(catalog.runs("diabetes")) == 2, "within the refresh interval the bucket is not listed again"
    monkeypatch.setattr(catalog._bucket, "refresh_s", 0.0)
    runs = {r.folder: r for r in catalog.runs("diabetes")}
    assert set(runs) == {first, artifacts.safe_segment(RUNS[1]), new}, "the half-published run is not there"
    assert runs[first].decision is not None and runs[first].decision.task_id == "gate"
    assert runs[new].reports == ["evaluate"] and runs[new].decision is None
    assert not (catalog.root / "runs" / DAG / first / "gate_optimized").exists()

    # A rerun that publishes a step again replaces what the view shows; an unpublished step leaves it.
    gate = store.local / "runs" / DAG / first / "gate"
    assert store.pull(gate)
    record = json.loads((gate / "decision.json").read_text())
    record["decision"]["passed"] = False
    (gate / "decision.json").write_text(json.dumps(record))
    store.push(gate)
    assert catalog.runs("diabetes")[0].decision.passed is False  # type: ignore[union-attr]
    store.objects.delete([f"runs/{DAG}/{new}/evaluate/.complete.json"])
    assert new not in {r.folder for r in catalog.runs("diabetes")}
