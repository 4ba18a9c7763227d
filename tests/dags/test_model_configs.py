"""Models are config: a bad config names the file and the field and breaks only its own DAG,
and a new model is a config plus a builder, with no DAG code."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

from include.mlops.config import (
    DEFAULT_STEP_TIMEOUTS,
    METRICS,
    ConfigError,
    find_model_config,
    load_model_config,
    load_model_configs,
    scan_model_configs,
)
from include.mlops.registry.filesystem import Registry, RegistryError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = PROJECT_ROOT / "include" / "models"


def _add_model(folder: Path, edit=None, name: str = "diabetes") -> Path:
    """Copy a bundled model (config and builder) into ``folder``, edited; returns the config's path."""
    folder.mkdir(exist_ok=True)
    config = yaml.safe_load((MODELS / f"{name}.yaml").read_text())
    shutil.copy(MODELS / f"{config['builder']}.py", folder / f"{config['builder']}.py")
    if edit:
        edit(config)
    path = folder / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _models_dir(tmp_path: Path, edit=None, name: str = "diabetes") -> Path:
    folder = tmp_path / "models"
    _add_model(folder, edit, name)
    return folder


@pytest.mark.parametrize(
    ("edit", "field", "problem"),
    [
        (lambda c: c.update(builder="no_such_builder"), "builder", "unknown builder 'no_such_builder'"),
        (lambda c: c["metrics"].append("auc"), "metrics[3]", "unknown metric 'auc'"),
        (lambda c: c["gate"]["thresholds"].update(auc={"min": 0.9}), "gate.thresholds.auc", "unknown metric 'auc'"),
        (lambda c: c["gate"]["thresholds"]["r2"].update(min="high"), "gate.thresholds.r2.min", "must be a number"),
        (lambda c: c["gate"]["budgets"].update(memory_mb=3), "gate.budgets.memory_mb", "unknown field"),
        (lambda c: c["train"].update(epochs="many"), "train.epochs", "expected int, got str 'many'"),
        (lambda c: c["train"].update(epochs="5"), "train.epochs", "expected int, got str '5'"),
        (lambda c: c["train"].update(epochs=True), "train.epochs", "expected int, got bool"),
        (lambda c: c["train"].update(learning_rate=-1), "train.learning_rate", "must be > 0, got -1"),
        (lambda c: c.update(test_fraction=1.5), "test_fraction", "must be between 0 and 1"),
        (lambda c: c.update(task="ranking"), "task", "unknown value 'ranking' (known: regression, classification)"),
        (lambda c: c["source"].update(dataset="mnist"), "source.dataset", "unknown value 'mnist'"),
        (lambda c: c["source"].update(uri="x_{{ ds }}.csv"), "source.uri", "not used by a 'bundled' source"),
        (lambda c: c["source"].update(start_date="yesterday"), "source.start_date", "expected an ISO date"),
        (lambda c: c.update(colour="blue"), "colour", "unknown field (allowed: builder,"),
        (lambda c: c["train"].update(colour="blue"), "train.colour", "unknown field (allowed: batch_size,"),
        (lambda c: c.update(label="bmi"), "label", "also listed as a feature"),
        (lambda c: c.update(timeouts={"trian": 60}), "timeouts.trian", "unknown step (steps: compress, deploy,"),
        (lambda c: c.update(timeouts={"train": 0}), "timeouts.train", "must be a positive whole number of seconds"),
        (lambda c: c.update(timeouts={"train": "1h"}), "timeouts.train", "must be a positive whole number of seconds"),
        (lambda c: c.update(serving_name="my model"), "serving_name", "not usable as a TF Serving model folder"),
        (lambda c: c.update(serving_name="2024"), "serving_name", "not usable as a TF Serving model folder"),
        # Kubernetes placement: what the API server would refuse when the pod is submitted.
        (
            lambda c: c.update(tolerations=[{"key": "gpu", "operator": "Exists", "value": "a100"}]),
            "tolerations[0].value",
            "must be empty when operator is 'Exists'",
        ),
        (lambda c: c.update(tolerations=[{"value": "a100"}]), "tolerations[0].key", "is required when operator"),
        (
            lambda c: c.update(tolerations=[{"key": "gpu", "effect": "Never"}]),
            "tolerations[0].effect",
            "unknown value 'Never' (known: NoSchedule, PreferNoSchedule, NoExecute)",
        ),
        (
            lambda c: c.update(tolerations=[{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 60}]),
            "tolerations[0].toleration_seconds",
            "only allowed with effect 'NoExecute'",
        ),
        (lambda c: c.update(tolerations=[{"key": "gpu", "colour": "x"}]), "tolerations[0].colour", "(allowed: effect,"),
        (lambda c: c.update(node_selector={"pool": "gpu nodes"}), "node_selector.pool", "not a Kubernetes label"),
        (lambda c: c.update(runtime_class_name="NVIDIA"), "runtime_class_name", "is not a Kubernetes object name"),
        (lambda c: c.update(priority_class_name="high prio"), "priority_class_name", "not a Kubernetes object name"),
        (lambda c: c.update(schedule_timeout_seconds=0), "schedule_timeout_seconds", "must be > 0, got 0"),
        (lambda c: c.update(schedule_timeout_seconds=90000), "schedule_timeout_seconds", "must be <= 86400"),
        (lambda c: c.update(schedule_timeout_seconds="10m"), "schedule_timeout_seconds", "expected int, got str"),
    ],
)
def test_bad_config_names_the_file_and_the_field(tmp_path: Path, edit, field: str, problem: str) -> None:
    path = _add_model(tmp_path / "models", edit)
    with pytest.raises(ConfigError) as caught:
        load_model_config(path)
    assert caught.value.path == str(path)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{path}: field '{field}': ")
    assert problem in caught.value.problem
    assert isinstance(caught.value, ValueError)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    def two_mistakes(config: dict) -> None:
        config["train"]["epochs"] = "many"
        config["test_fraction"] = 2

    with pytest.raises(ConfigError) as caught:
        load_model_config(_add_model(tmp_path / "models", two_mistakes))
    assert caught.value.field == "train.epochs"
    assert "field 'test_fraction': must be between 0 and 1" in str(caught.value)


def test_kubernetes_placement_fields_default_and_parse(tmp_path: Path) -> None:
    default = find_model_config("diabetes")
    assert (default.tolerations, default.runtime_class_name, default.priority_class_name) == ((), None, None)
    assert default.schedule_timeout_seconds == 600

    def placed(config: dict) -> None:
        config.update(
            tolerations=[
                {"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoExecute", "tolerationSeconds": 30}
            ],
            node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
            runtime_class_name="nvidia",
            priority_class_name="mlops-training",
            schedule_timeout_seconds=1800,
        )

    config = load_model_config(_add_model(tmp_path / "models", placed))
    (toleration,) = config.tolerations
    assert (toleration.key, toleration.value, toleration.effect, toleration.toleration_seconds) == (
        "gpu",
        "a100",
        "NoExecute",
        30,
    )
    assert (config.runtime_class_name, config.priority_class_name, config.schedule_timeout_seconds) == (
        "nvidia",
        "mlops-training",
        1800,
    )


def test_timeouts_default_per_step_and_the_config_overrides_some(tmp_path: Path) -> None:
    bundled = find_model_config("diabetes")
    assert bundled.timeouts == DEFAULT_STEP_TIMEOUTS
    assert DEFAULT_STEP_TIMEOUTS == {
        "snapshot": 900,
        "validate": 900,
        "train": 7200,
        "evaluate": 1800,
        "tune-plan": 300,
        "tune-trial": 7200,
        "tune-select": 900,
        "compress": 7200,
        "register": 900,
        "deploy": 1200,
        "undeploy": 900,
        "drift": 900,
    }
    config = load_model_config(_add_model(tmp_path / "models", lambda c: c.update(timeouts={"train": 60})))
    assert config.timeouts == {**DEFAULT_STEP_TIMEOUTS, "train": 60}
    assert config.step_timeout("train") == dt.timedelta(seconds=60)
    assert config.step_timeout("deploy") == dt.timedelta(minutes=20)
    with pytest.raises(KeyError, match="no timeout for step 'gate'"):
        config.step_timeout("gate")


@pytest.mark.parametrize("name", ["diabetes_v2", "diabetes-prod", "d.1", "my model", "2024", "-x", "x/y", "ü"])
def test_serving_name_follows_the_registry_rule(tmp_path: Path, name: str) -> None:
    try:
        Registry(tmp_path / "registry").model_dir(name)
        registry_accepts = True
    except RegistryError:
        registry_accepts = False
    path = _add_model(tmp_path / "models", lambda c: c.update(serving_name=name))
    try:
        config_accepts = load_model_config(path).serving_name == name
    except ConfigError as exc:
        assert exc.field == "serving_name"
        config_accepts = False
    assert config_accepts == registry_accepts


def test_serving_name_defaults_to_the_model_name() -> None:
    assert [c.serving_name for c in load_model_configs()] == ["diabetes", "digits"]


def test_a_serving_name_used_twice_is_refused_naming_both_files(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    first = _add_model(folder, lambda c: c.update(serving_name="progression"))

    def second_model(config: dict) -> None:
        config.update(name="diabetes_v2", serving_name="progression")

    second = _add_model(folder, second_model)
    configs, errors = scan_model_configs(folder)
    assert configs == []
    assert set(errors) == {first.resolve(), second.resolve()}
    for error in errors.values():
        assert error.field == "serving_name"
        assert str(first.resolve()) in str(error) and str(second.resolve()) in str(error)
    with pytest.raises(ConfigError, match="'progression' is used by more than one model config"):
        load_model_configs(folder)
    with pytest.raises(ConfigError, match="used by more than one model config"):
        find_model_config("diabetes_v2", folder)


def test_one_broken_config_breaks_only_its_own_dag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _models_dir(tmp_path, name="digits")
    broken = _add_model(folder, lambda c: c["gate"]["thresholds"]["r2"].update(min="high"))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))

    assert bag.import_errors == {}
    # The broken model gets stand-in lifecycle and monitor DAGs (it may still be serving, so its monitor stays
    # visible) and no rollback DAG.
    assert sorted(bag.dag_ids) == [
        "lifecycle__diabetes", "lifecycle__digits", "monitor__diabetes", "monitor__digits", "rollback__digits"
    ]  # fmt: skip
    assert {"train", "deploy"} <= set(bag.dags["lifecycle__digits"].task_ids)
    stand_in = bag.dags["lifecycle__diabetes"]
    assert stand_in.task_ids == ["config_error"]
    assert "broken-config" in stand_in.tags
    assert f"{broken.name}" in stand_in.doc_md
    assert "field 'gate.thresholds.r2.min': must be a number, got str 'high'" in stand_in.doc_md
    assert stand_in.get_task("config_error").retries == 0
    monitor = bag.dags["monitor__diabetes"]
    assert monitor.task_ids == ["config_error"] and {"monitor", "broken-config"} <= set(monitor.tags)
    assert monitor.timetable.expression == "0 * * * *"
    assert "monitor does not run" in monitor.doc_md
    assert "field 'gate.thresholds.r2.min': must be a number, got str 'high'" in monitor.doc_md


def test_the_broken_configs_dag_fails_at_once_with_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _models_dir(tmp_path, lambda c: c["train"].update(epochs="many"))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    for dag_id in ("lifecycle__diabetes", "monitor__diabetes"):
        caplog.clear()
        with caplog.at_level("ERROR"):
            dag_run = bag.dags[dag_id].test(logical_date=dt.datetime(2026, 11, 5, tzinfo=dt.UTC))
        assert dag_run.state == "failed", dag_id
        (ti,) = dag_run.get_task_instances()
        assert ti.state == "failed"
        assert ti.try_number == 1
        assert "field 'train.epochs': expected int, got str 'many'" in caplog.text


def test_a_third_model_is_a_config_plus_a_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def as_third_model(config: dict) -> None:
        config.update(name="progression", builder="progression_net", description="A third model, no DAG code.")

    folder = _models_dir(tmp_path, as_third_model)
    (folder / "diabetes.py").rename(folder / "progression_net.py")
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["lifecycle__progression", "monitor__progression", "rollback__progression"]
    dag = bag.dags["lifecycle__progression"]
    assert "A third model, no DAG code." in dag.doc_md
    assert {"snapshot", "validate", "train", "evaluate", "gate", "register", "deploy"} <= set(dag.task_ids)


def test_the_readme_example_model_is_a_valid_config_with_the_documented_metric_names(tmp_path: Path) -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding a model") :].split("\n## ", 1)[0]
    yaml_block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    python_block = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "cancer.yaml").write_text(yaml_block)
    (tmp_path / "cancer.py").write_text(python_block)
    config = load_model_config(tmp_path / "cancer.yaml")
    assert config.task == "classification" and config.num_classes == 2
    assert 'activation="softmax"' in python_block
    for task, names in METRICS.items():
        listed = section.split(f"{task} `", 1)[1].split(";", 1)[0].split(". ", 1)[0]
        assert [m.strip(" `.") for m in listed.split(",")] == list(names), task


@pytest.mark.parametrize(
    ("space", "field", "problem"),
    [
        ({}, "optimize.search.space", "must name at least one hyperparameter"),
        (
            {"learning_rate": {"type": "float", "low": 0.01, "high": 0.001}},
            "optimize.search.space.learning_rate.low",
            "must not exceed high",
        ),
        (
            {"batch_size": {"type": "categorical", "choices": [16, 0]}},
            "optimize.search.space.batch_size.choices[1]",
            "batch_size must be a whole number > 0",
        ),
        ({"dropout": {"type": "float", "low": 0.1, "high": 0.5}}, "optimize.search.space.dropout", "unknown field"),
    ],
)
def test_an_empty_or_invalid_search_space_is_refused_at_dag_parse_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, space: dict, field: str, problem: str
) -> None:
    folder = _models_dir(tmp_path, lambda c: c["optimize"]["search"].update(space=space))
    monkeypatch.setenv("MLOPS_MODELS_DIR", str(folder))
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    stand_in = bag.dags["lifecycle__diabetes"]
    assert stand_in.task_ids == ["config_error"]
    assert f"field '{field}': {problem}" in stand_in.doc_md
