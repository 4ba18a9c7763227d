"""End-to-end runs of the lifecycle DAGs with ``dag.test()``: real steps, real training.

Each test runs every task of a DagRun in this process, with the steps as real
subprocesses (TensorFlow, Great Expectations), against a fresh artifact root.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

from include.mlops.artifacts import run_dir
from include.mlops.config import load_model_config
from include.mlops.data import load_bundled
from include.mlops.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


def run_dag(dag_id: str, logical_date: dt.datetime, conf: dict[str, Any] | None = None) -> dict[str, str]:
    """Run one DagRun of ``dag_id`` with ``dag.test()``; return ``{task_id: state}``."""
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    dag_run = bag.dags[dag_id].test(logical_date=logical_date, run_conf=conf or {})
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=dag_run.run_id).one()
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}
        states["__run__"] = str(run.state)
        states["__run_id__"] = run.run_id
    return states


def registry(root: Path) -> Registry:
    return Registry(root / "models")


def gate_record(root: Path, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    return json.loads((run_dir(dag_id, run_id, task_id, root=root) / "decision.json").read_text())


@pytest.mark.parametrize("model", ["diabetes", "digits"])
def test_happy_path_registers_version_1_as_stable(artifact_root: Path, model: str) -> None:
    dag_id = f"lifecycle__{model}"
    states = run_dag(dag_id, DAY)
    assert states["__run__"] == "success", states
    for task_id in ("snapshot", "validate", "train", "evaluate", "gate", "register", "deploy"):
        assert states[task_id] == "success", (task_id, states)
    for task_id in ("optimize", "evaluate_optimized", "gate_optimized", "reject", "skip_deploy"):
        assert states[task_id] == "skipped", (task_id, states)

    reg = registry(artifact_root)
    assert reg.versions(model) == [1]
    assert reg.label_version(model, "stable") == 1
    version_dir = reg.version_dir(model, 1)
    assert (version_dir / "saved_model.pb").is_file()
    extra = version_dir / "assets.extra"
    lineage = json.loads((extra / "lineage.json").read_text())
    assert lineage["dag_id"] == dag_id and lineage["run_id"] == states["__run_id__"]
    assert lineage["data_interval_end"].startswith("2026-11-20")
    assert {"metrics.json", "model_card.md", "checksums.json"} <= {p.name for p in extra.iterdir()}
    reg.verify(model, 1)

    run_root = run_dir(dag_id, states["__run_id__"], "", root=artifact_root)
    assert (run_root / "validate" / "validation.json").is_file()
    assert list((run_root / "train" / "tensorboard").rglob("*tfevents*"))
    assert (run_root / "evaluate" / "plot.png").stat().st_size > 1000
    record = gate_record(artifact_root, dag_id, states["__run_id__"], "gate")
    assert record["route"] == "register" and record["champion_version"] is None


def test_worse_candidate_goes_through_optimize_then_as_the_gate_says(artifact_root: Path) -> None:
    dag_id = "lifecycle__diabetes"
    assert run_dag(dag_id, DAY)["__run__"] == "success"

    # A learning rate 100x too small makes a candidate far worse than the stable version 1;
    # optimize then searches the config's learning-rate grid.
    states = run_dag(dag_id, DAY + dt.timedelta(days=1), {"learning_rate": 1e-5})
    assert states["__run__"] == "success", states
    first = gate_record(artifact_root, dag_id, states["__run_id__"], "gate")
    assert first["route"] == "optimize" and first["champion_version"] == 1
    assert not first["decision"]["passed"]
    assert states["optimize"] == states["evaluate_optimized"] == states["gate_optimized"] == "success"

    second = gate_record(artifact_root, dag_id, states["__run_id__"], "gate_optimized")
    reg = registry(artifact_root)
    if second["decision"]["passed"]:
        assert second["route"] == "register"
        assert states["deploy"] == "success" and states["reject"] == "skipped"
        assert reg.versions("diabetes") == [1, 2] and reg.label_version("diabetes", "stable") == 2
    else:
        assert second["route"] == "reject"
        assert states["reject"] == "success" and states["register"] == "skipped"
        assert reg.versions("diabetes") == [1] and reg.label_version("diabetes", "stable") == 1


def test_unreachable_threshold_rejects_and_leaves_the_champion(artifact_root: Path) -> None:
    dag_id = "lifecycle__diabetes"
    assert run_dag(dag_id, DAY)["__run__"] == "success"
    states = run_dag(dag_id, DAY + dt.timedelta(days=1), {"thresholds": {"r2": {"min": 0.99}}, "epochs": 20})
    assert states["__run__"] == "success", states
    assert states["optimize"] == "success" and states["reject"] == "success"
    assert states["register"] == states["deploy"] == "skipped"
    reg = registry(artifact_root)
    assert reg.versions("diabetes") == [1] and reg.label_version("diabetes", "stable") == 1
    report = (run_dir(dag_id, states["__run_id__"], "reject", root=artifact_root) / "report.md").read_text()
    assert "r2" in report and "stable" in report


def test_force_deploy_is_recorded_as_an_override(artifact_root: Path) -> None:
    states = run_dag(
        "lifecycle__diabetes", DAY, {"thresholds": {"r2": {"min": 0.99}}, "force_deploy": True, "epochs": 20}
    )
    assert states["deploy"] == "success", states
    record = gate_record(artifact_root, "lifecycle__diabetes", states["__run_id__"], "gate")
    assert record["decision"]["override"] is True and not all(c["passed"] for c in record["decision"]["checks"])
    card = (registry(artifact_root).version_dir("diabetes", 1) / "assets.extra" / "model_card.md").read_text()
    assert "override" in card.lower()


def test_skip_deploy_trains_and_evaluates_only(artifact_root: Path) -> None:
    states = run_dag("lifecycle__diabetes", DAY, {"skip_deploy": True, "epochs": 20})
    assert states["__run__"] == "success"
    assert states["evaluate"] == "success" and states["skip_deploy"] == "success"
    assert states["register"] == states["deploy"] == "skipped"
    assert registry(artifact_root).versions("diabetes") == []


def _uri_model(tmp_path: Path, frames: dict[str, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point a copy of the diabetes config at CSV partitions in ``tmp_path``."""
    data = tmp_path / "landing"
    data.mkdir()
    for ds, frame in frames.items():
        frame.to_csv(data / f"{ds}.csv", index=False)
    models = tmp_path / "models"
    models.mkdir()
    config = yaml.safe_load((PROJECT_ROOT / "include/models/diabetes.yaml").read_text())
    config["source"] = {"kind": "uri", "uri": str(data / "{{ ds }}.csv"), "format": "csv", "lookback_days": 1}
    (models / "diabetes.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(PROJECT_ROOT / "include/models/diabetes.py", models / "diabetes.py")
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(models))


@pytest.mark.parametrize("corruption", ["nan", "missing_column"])
def test_corrupted_data_blocks_the_run(
    artifact_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corruption: str
) -> None:
    config = load_model_config(PROJECT_ROOT / "include/models/diabetes.yaml")
    frame = load_bundled("diabetes", config.label)
    if corruption == "nan":
        frame.loc[frame.index[:20], "bmi"] = float("nan")
    else:
        frame = frame.drop(columns=["bp"])
    _uri_model(tmp_path, {"2026-11-19": frame}, monkeypatch)

    states = run_dag("lifecycle__diabetes", DAY)
    assert states["__run__"] == "failed"
    assert states["snapshot"] == "success" and states["validate"] == "failed"
    assert states["train"] == "upstream_failed"
    assert not (artifact_root / "models" / "diabetes").exists()
    validation = run_dir("lifecycle__diabetes", states["__run_id__"], "validate", root=artifact_root)
    assert (validation / "validation.json").is_file()
    assert not run_dir("lifecycle__diabetes", states["__run_id__"], "train", root=artifact_root).exists()


def test_unknown_trigger_setting_fails_the_first_task_before_any_work(artifact_root: Path) -> None:
    states = run_dag("lifecycle__diabetes", DAY, {"unknown_param": 1})
    assert states["__run__"] == "failed", states
    assert states["snapshot"] == "failed" and states["validate"] == "upstream_failed"
    assert not run_dir("lifecycle__diabetes", states["__run_id__"], "snapshot", root=artifact_root).exists()
    assert not (artifact_root / "models").exists()
