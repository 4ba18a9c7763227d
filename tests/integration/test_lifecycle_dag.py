"""End-to-end runs of the lifecycle DAGs with ``dag.test()``: real steps, real training.

Each test runs every task of a DagRun in this process, with the steps as real
subprocesses (TensorFlow, Great Expectations), against a fresh artifact root;
the reject test builds on the root that the first release test left behind,
so that one trained version 1 serves as the champion.

There is one deterministic test per route out of the gates (``test_a`` to
``test_d``): each asserts the state of every task of the run and what the
registry holds afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from dag_runner import run_dag_test

from include.mlops.artifacts import run_dir
from include.mlops.config import load_model_config
from include.mlops.data.sources import load_bundled
from include.mlops.registry.filesystem import Registry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)

TASKS = (
    "snapshot",
    "validate",
    "train",
    "evaluate",
    "gate",
    "tune_plan",
    "tune_trial",
    "tune_select",
    "compress",
    "evaluate_optimized",
    "gate_optimized",
    "register",
    "deploy",
    "reject",
    "skip_deploy",
)
UP_TO_GATE = {"snapshot", "validate", "train", "evaluate", "gate"}
OPTIMIZED = {"tune_plan", "tune_trial", "tune_select", "compress", "evaluate_optimized", "gate_optimized"}
RELEASED = {"register", "deploy"}

# Each branch is forced through inputs the test controls, never through how well a model happens
# to train: quality bounds that any model meets, or that only a perfect one could (r2 is at most 1),
# and few epochs.  (A bound that no model can meet, r2 min 1.5, is refused by the run's first task.)
EPOCHS = 3
ANY_QUALITY = {
    "diabetes": {"r2": {"min": -1000.0}, "mae": {"max": 1000.0}},
    "digits": {"accuracy": {"min": 0.0}},
}
NO_QUALITY = {"r2": {"min": 1.0}}

# A size budget between the two artifacts of the diabetes model, measured on TensorFlow 2.21 with
# this repo's export (snapshot of 2026-11-20, 3 epochs; the size does not depend on training):
#   SavedModel folder (what train exports and evaluate measures)   40,857 bytes = 0.0409 MB
#   model.tflite (dynamic-range quantized by compress)               3,156 bytes = 0.0032 MB
# 0.012 MB is 3.4x below the SavedModel and 3.8x above the TFLite file, so the first gate fails on
# size alone, and the quantized candidate passes.  (50 KB would not work: the SavedModel is smaller.)
SIZE_BUDGET_MB = 0.012


def run_dag(dag_id: str, logical_date: dt.datetime, conf: dict[str, Any] | None = None) -> dict[str, str]:
    """Run one DagRun of ``dag_id`` with ``dag.test()``; return ``{task_id: state}``."""
    dag_run = run_dag_test(dag_id, logical_date, conf)
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


def assert_branch(states: dict[str, str], succeeded: set[str]) -> None:
    """The run succeeded, exactly ``succeeded`` ran and every other task of the DAG was skipped."""
    assert states["__run__"] == "success", states
    assert succeeded <= set(TASKS), succeeded - set(TASKS)
    expected = {task_id: "success" if task_id in succeeded else "skipped" for task_id in TASKS}
    assert {k: v for k, v in states.items() if not k.startswith("__")} == expected


def copy_shipped_model(folder: Path, name: str = "diabetes") -> dict[str, Any]:
    """Copy a shipped model config and its builder into ``folder``; return the config to edit and write back."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / f"include/models/{name}.py", folder / f"{name}.py")
    return yaml.safe_load((PROJECT_ROOT / f"include/models/{name}.yaml").read_text())


@dataclass(frozen=True)
class Release:
    """Branch (a) of ``lifecycle__diabetes`` on ``DAY``, in an artifact root that later runs build on."""

    root: Path
    states: dict[str, str]


@pytest.fixture(scope="module")
def diabetes_v1(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """One trained and released version 1, shared by the tests that need a ``stable`` champion."""
    root = tmp_path_factory.mktemp("released") / "artifacts"
    root.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_ARTIFACT_ROOT", str(root))
        states = run_dag("lifecycle__diabetes", DAY, {"thresholds": ANY_QUALITY["diabetes"], "epochs": EPOCHS})
    yield Release(root, states)


def assert_released_version_1(root: Path, model: str, states: dict[str, str]) -> None:
    dag_id = f"lifecycle__{model}"
    reg = registry(root)
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

    run_root = run_dir(dag_id, states["__run_id__"], "", root=root)
    assert (run_root / "validate" / "validation.json").is_file()
    assert list((run_root / "train" / "tensorboard").rglob("*tfevents*"))
    assert (run_root / "evaluate" / "plot.png").stat().st_size > 1000
    record = gate_record(root, dag_id, states["__run_id__"], "gate")
    assert record["route"] == "register" and record["decision"]["passed"]
    assert record["champion_version"] is None
    assert not run_dir(dag_id, states["__run_id__"], "tune_plan", root=root).exists()


def test_a_gate_passes_then_register_and_deploy(diabetes_v1: Release) -> None:
    assert_branch(diabetes_v1.states, UP_TO_GATE | RELEASED)
    assert_released_version_1(diabetes_v1.root, "diabetes", diabetes_v1.states)


def test_a_gate_passes_then_register_and_deploy_a_classifier(artifact_root: Path) -> None:
    states = run_dag("lifecycle__digits", DAY, {"thresholds": ANY_QUALITY["digits"], "epochs": EPOCHS})
    assert_branch(states, UP_TO_GATE | RELEASED)
    assert_released_version_1(artifact_root, "digits", states)


def test_b_over_size_budget_then_optimize_quantizes_and_the_optimized_gate_deploys(
    artifact_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    config = copy_shipped_model(models)
    config["gate"]["budgets"]["size_mb"] = SIZE_BUDGET_MB
    # One trial is enough to reach the second gate.
    config["optimize"]["search"] = {
        "trials": 1,
        "min_successful": 1,
        "space": {"learning_rate": {"type": "categorical", "choices": [0.005]}},
    }
    (models / "diabetes.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(models))
    dag_id = "lifecycle__diabetes"

    states = run_dag(dag_id, DAY, {"thresholds": ANY_QUALITY["diabetes"], "epochs": EPOCHS})

    assert_branch(states, UP_TO_GATE | OPTIMIZED | RELEASED)
    run_id = states["__run_id__"]
    first = gate_record(artifact_root, dag_id, run_id, "gate")
    assert first["route"] == "optimize" and first["champion_version"] is None
    assert first["decision"]["failed_metrics"] == ["size_mb"], first["decision"]["reasons"]
    assert first["decision"]["failed_budgets"] == ["size_mb"]
    second = gate_record(artifact_root, dag_id, run_id, "gate_optimized")
    assert second["route"] == "register" and second["decision"]["passed"] and not second["decision"]["override"]
    (size_check,) = (c for c in second["decision"]["checks"] if c["metric"] == "size_mb")
    assert size_check["passed"] and size_check["value"] < SIZE_BUDGET_MB

    # The quantized file the second gate measured is the one registered and now labelled stable.
    gated = run_dir(dag_id, run_id, "compress", root=artifact_root) / "model.tflite"
    reg = registry(artifact_root)
    assert reg.versions("diabetes") == [1] and reg.label_version("diabetes", "stable") == 1
    assert (reg.version_dir("diabetes", 1) / "model.tflite").read_bytes() == gated.read_bytes()
    reg.verify("diabetes", 1)


# A learning rate of 1e30 makes the loss overflow in the first epoch: training stops with a non-finite
# validation loss (exit 3, no retry).  With this seed Optuna's plan draws it for trial 0 only (seed 43:
# for every trial); each test checks that in the run's own plan.
DIVERGING_LR = 1e30


def diverging_search(seed: int) -> dict[str, Any]:
    return {
        "trials": 3,
        "min_successful": 2,
        "seed": seed,
        "space": {"learning_rate": {"type": "categorical", "choices": [0.005, DIVERGING_LR]}},
    }


def trial_states(dag_id: str, run_id: str) -> dict[int, str]:
    """``{map_index: state}`` of the mapped tune_trial task instances of one run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id, task_id="tune_trial")
        return {ti.map_index: str(ti.state) for ti in rows}


def run_with_diverging_search(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, seed: int, day: dt.datetime
) -> dict[str, str]:
    """One diabetes run on ``root`` whose quality gate fails, with a seeded search that has diverging trials."""
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(root))
    models = tmp_path / "models"
    config = copy_shipped_model(models)
    config["optimize"]["search"] = diverging_search(seed=seed)
    (models / "diabetes.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(models))
    return run_dag("lifecycle__diabetes", day, {"thresholds": NO_QUALITY, "epochs": EPOCHS})


def test_c_optimize_maps_n_trials_survives_one_that_fails_then_rejects_and_stable_stays(
    diabetes_v1: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimize branch maps N trials, and survives one trial that is made to fail."""
    root, dag_id = diabetes_v1.root, "lifecycle__diabetes"
    serving_config = registry(root).config_path.read_bytes()
    states = run_with_diverging_search(root, tmp_path, monkeypatch, seed=42, day=DAY + dt.timedelta(days=1))

    run_id = states["__run_id__"]
    plan = json.loads((run_dir(dag_id, run_id, "tune_plan", root=root) / "plan.json").read_text())
    assert [t["hparams"]["learning_rate"] for t in plan["trials"]] == [DIVERGING_LR, 0.005, 0.005]
    # One task instance per planned trial; the diverging one failed and the branch went on.
    assert trial_states(dag_id, run_id) == {0: "failed", 1: "success", 2: "success"}
    states["tune_trial"] = "success"  # the collapsed per-task state; the instances are checked above
    assert_branch(states, UP_TO_GATE | OPTIMIZED | {"reject"})
    trials_dir = run_dir(dag_id, run_id, "tune_trial", root=root)
    for index in (1, 2):
        assert (trials_dir / str(index) / "model" / "saved_model.pb").is_file()
        assert (trials_dir / str(index) / "weights.npz").is_file()
    assert not (trials_dir / "0").exists()
    selected = json.loads((run_dir(dag_id, run_id, "tune_select", root=root) / "trials.json").read_text())
    assert [t["status"] for t in selected["trials"]] == ["failed", "success", "success"]
    assert "not finite" in selected["trials"][0]["error"]
    assert selected["best"] in (1, 2)
    best_loss = selected["trials"][selected["best"]]["val_loss"]
    assert best_loss == min(t["val_loss"] for t in selected["trials"][1:])

    first = gate_record(root, dag_id, run_id, "gate")
    assert first["route"] == "optimize" and first["champion_version"] == 1
    assert "r2" in first["decision"]["failed_metrics"]
    second = gate_record(root, dag_id, run_id, "gate_optimized")
    assert second["route"] == "reject" and not second["decision"]["passed"]
    assert "optimization_report" in second
    reg = registry(root)
    assert reg.versions("diabetes") == [1] and reg.label_version("diabetes", "stable") == 1
    assert reg.config_path.read_bytes() == serving_config
    report = (run_dir(dag_id, run_id, "reject", root=root) / "report.md").read_text()
    assert "r2" in report and "stable" in report


def test_c_every_trial_fails_then_the_branch_fails_and_stable_stays(
    diabetes_v1: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, dag_id = diabetes_v1.root, "lifecycle__diabetes"
    serving_config = registry(root).config_path.read_bytes()
    states = run_with_diverging_search(root, tmp_path, monkeypatch, seed=43, day=DAY + dt.timedelta(days=2))

    run_id = states["__run_id__"]
    plan = json.loads((run_dir(dag_id, run_id, "tune_plan", root=root) / "plan.json").read_text())
    assert [t["hparams"]["learning_rate"] for t in plan["trials"]] == [DIVERGING_LR] * 3
    assert states["__run__"] == "failed"
    assert trial_states(dag_id, run_id) == {0: "failed", 1: "failed", 2: "failed"}
    assert states["tune_select"] == "failed"
    assert states["compress"] == "upstream_failed" and states["register"] != "success"
    selected = json.loads((run_dir(dag_id, run_id, "tune_select", root=root) / "trials.json").read_text())
    assert selected["best"] is None and {t["status"] for t in selected["trials"]} == {"failed"}
    reg = registry(root)
    assert reg.versions("diabetes") == [1] and reg.label_version("diabetes", "stable") == 1
    assert reg.config_path.read_bytes() == serving_config


def test_e_an_unscorable_champion_fails_the_gate_closed_until_a_person_accepts_deciding_without_it(
    diabetes_v1: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # A copy of the released root, whose stable version 1 can no longer be scored (its weights changed).
    root, dag_id = tmp_path / "artifacts", "lifecycle__diabetes"
    shutil.copytree(diabetes_v1.root, root)
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(root))
    weights = next((registry(root).version_dir("diabetes", 1) / "variables").glob("variables.data-*"))
    damaged = bytearray(weights.read_bytes())
    damaged[0] ^= 0x01
    weights.write_bytes(bytes(damaged))
    conf = {"thresholds": ANY_QUALITY["diabetes"], "epochs": EPOCHS}

    states = run_dag(dag_id, DAY + dt.timedelta(days=3), conf)
    assert states["__run__"] == "failed", states
    ran = {"snapshot", "validate", "train", "evaluate"}
    assert {task: state for task, state in states.items() if task in TASKS} == {
        task: "success" if task in ran else "failed" if task == "gate" else "upstream_failed" for task in TASKS
    }, states
    assert task_tries(dag_id, states["__run_id__"], "gate") == 1  # bad input: no retry
    output = capfd.readouterr()
    assert (
        "the gate fails closed: the champion (version 1) could not be scored: model 'diabetes' version 1 is "
        "corrupt" in output.out + output.err
    )
    assert registry(root).versions("diabetes") == [1] and registry(root).label_version("diabetes", "stable") == 1

    states = run_dag(dag_id, DAY + dt.timedelta(days=4), {**conf, "accept_without_champion": True})
    assert_branch(states, UP_TO_GATE | RELEASED)
    record = gate_record(root, dag_id, states["__run_id__"], "gate")
    assert record["decision"]["accepted_without_champion"] is True
    assert record["decision"]["champion_unscored"]["version"] == 1
    assert registry(root).label_version("diabetes", "stable") == 2
    extra = registry(root).version_dir("diabetes", 2) / "assets.extra"
    lineage = json.loads((extra / "lineage.json").read_text())
    assert lineage["accepted_without_champion"] is True and lineage["champion_unscored"]["version"] == 1
    card = (extra / "model_card.md").read_text()
    assert "- **Accepted without champion**: the champion (version 1) could not be scored" in card


def test_d_skip_deploy_ends_in_skip_deploy_without_a_registry_write(artifact_root: Path) -> None:
    # Backfill runs take the same route (dag.test() makes only manual runs; the rule is
    # tested in tests/dags/test_run_routing.py).
    states = run_dag(
        "lifecycle__diabetes",
        DAY,
        {"thresholds": ANY_QUALITY["diabetes"], "epochs": EPOCHS, "skip_deploy": True},
    )
    assert_branch(states, UP_TO_GATE | {"skip_deploy"})
    record = gate_record(artifact_root, "lifecycle__diabetes", states["__run_id__"], "gate")
    assert record["route"] == "skip_deploy" and record["decision"]["passed"]
    assert record["deploying_run"] is False
    assert not (artifact_root / "models").exists()


def test_force_deploy_is_recorded_as_an_override(artifact_root: Path) -> None:
    states = run_dag("lifecycle__diabetes", DAY, {"thresholds": NO_QUALITY, "force_deploy": True, "epochs": EPOCHS})
    assert_branch(states, UP_TO_GATE | RELEASED)
    record = gate_record(artifact_root, "lifecycle__diabetes", states["__run_id__"], "gate")
    assert record["decision"]["override"] is True and not all(c["passed"] for c in record["decision"]["checks"])
    card = (registry(artifact_root).version_dir("diabetes", 1) / "assets.extra" / "model_card.md").read_text()
    assert "override" in card.lower()


def _uri_model(tmp_path: Path, frames: dict[str, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point a copy of the diabetes config at CSV partitions in ``tmp_path``."""
    data = tmp_path / "landing"
    data.mkdir()
    for ds, frame in frames.items():
        frame.to_csv(data / f"{ds}.csv", index=False)
    models = tmp_path / "models"
    config = copy_shipped_model(models)
    config["source"] = {"kind": "uri", "uri": str(data / "{{ ds }}.csv"), "format": "csv", "lookback_days": 1}
    (models / "diabetes.yaml").write_text(yaml.safe_dump(config))
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
    assert states["train"] == "upstream_failed" and states["tune_select"] == "upstream_failed"
    assert not (artifact_root / "models" / "diabetes").exists()
    validation = run_dir("lifecycle__diabetes", states["__run_id__"], "validate", root=artifact_root)
    assert (validation / "validation.json").is_file()
    assert not run_dir("lifecycle__diabetes", states["__run_id__"], "train", root=artifact_root).exists()


def test_unknown_trigger_setting_fails_the_first_task_before_any_work(artifact_root: Path) -> None:
    states = run_dag("lifecycle__diabetes", DAY, {"unknown_param": 1})
    assert states["__run__"] == "failed", states
    assert states["snapshot"] == "failed" and states["validate"] == "upstream_failed"
    # Nothing runs after the failure: not tune_select either, although it runs after failed trials.
    assert {task: state for task, state in states.items() if task in TASKS and task != "snapshot"} == {
        task: "upstream_failed" for task in TASKS if task != "snapshot"
    }, states
    assert not run_dir("lifecycle__diabetes", states["__run_id__"], "snapshot", root=artifact_root).exists()
    assert not (artifact_root / "models").exists()


@pytest.mark.parametrize(
    ("thresholds", "reason"),
    [
        ({"r2": {"min": 1.5}}, "threshold override r2 min 1.5 can never be met: r2 is at most 1"),
        ({"mae": {"max": -1}}, "threshold override mae max -1 can never be met: mae is at least 0"),
        ({"r2": {"max": 0.1}}, "threshold override r2 max 0.1 is on the wrong side: higher r2 is better"),
    ],
    ids=["r2-min-1.5", "mae-max-minus-1", "r2-max-0.1"],
)
def test_thresholds_no_model_can_meet_fail_the_first_task_before_any_work(
    artifact_root: Path, thresholds: dict[str, Any], reason: str, capfd: pytest.CaptureFixture[str]
) -> None:
    states = run_dag("lifecycle__diabetes", DAY, {"thresholds": thresholds, "epochs": EPOCHS})
    assert states["__run__"] == "failed", states
    assert {task: state for task, state in states.items() if task in TASKS} == {
        task: "failed" if task == "snapshot" else "upstream_failed" for task in TASKS
    }, states
    assert task_tries("lifecycle__diabetes", states["__run_id__"], "snapshot") == 1  # failed once: no retry
    output = capfd.readouterr()
    assert reason in output.out + output.err
    assert not run_dir("lifecycle__diabetes", states["__run_id__"], "snapshot", root=artifact_root).exists()
    assert not (artifact_root / "models").exists()


def task_tries(dag_id: str, run_id: str, task_id: str) -> int:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).one()
        return int(ti.try_number)
