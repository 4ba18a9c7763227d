"""Models are config: a bad config is a DAG import error naming the file and the field,
and a new model is a config plus a builder, with no DAG code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = PROJECT_ROOT / "include" / "models"


def _models_dir(tmp_path: Path, edit=None, name: str = "diabetes") -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    config = yaml.safe_load((MODELS / f"{name}.yaml").read_text())
    shutil.copy(MODELS / f"{config['builder']}.py", folder / f"{config['builder']}.py")
    if edit:
        edit(config)
    (folder / f"{config['name']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def _import_errors(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    return DagBag(dag_folder=str(PROJECT_ROOT / "dags")).import_errors


@pytest.mark.parametrize(
    ("edit", "field", "problem"),
    [
        (lambda c: c.update(builder="no_such_builder"), "builder", "unknown builder 'no_such_builder'"),
        (lambda c: c["metrics"].append("auc"), "metrics[3]", "unknown metric 'auc'"),
        (lambda c: c["gate"]["thresholds"].update(auc={"min": 0.9}), "gate.thresholds.auc", "unknown metric 'auc'"),
        (lambda c: c["train"].update(epochs="many"), "train.epochs", "expected int"),
        (lambda c: c["train"].update(learning_rate=-1), "train.learning_rate", "must be > 0"),
        (lambda c: c.update(task="ranking"), "task", "unknown value 'ranking'"),
        (lambda c: c["source"].update(dataset="mnist"), "source.dataset", "unknown value 'mnist'"),
        (lambda c: c.update(colour="blue"), "colour", "unknown field"),
    ],
)
def test_bad_config_is_an_import_error_naming_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit, field: str, problem: str
) -> None:
    errors = _import_errors(_models_dir(tmp_path, edit), monkeypatch)
    assert len(errors) == 1
    message = next(iter(errors.values()))
    assert "diabetes.yaml" in message
    assert f"field '{field}'" in message
    assert problem in message


def test_a_third_model_is_a_config_plus_a_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def as_third_model(config: dict) -> None:
        config.update(name="progression", builder="progression_net", description="A third model, no DAG code.")

    folder = _models_dir(tmp_path, as_third_model)
    (folder / "diabetes.py").rename(folder / "progression_net.py")
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    assert bag.dag_ids == ["lifecycle__progression"]
    dag = bag.dags["lifecycle__progression"]
    assert "A third model, no DAG code." in dag.doc_md
    assert {"snapshot", "validate", "train", "evaluate", "gate", "register", "deploy"} <= set(dag.task_ids)
