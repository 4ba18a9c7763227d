"""The trigger form refuses bad values before a run starts (the REST API applies the same schema)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError

from include.mlops.config import load_model_configs
from mlops_airflow.params import SCHEMA_DIALECT, UnknownParamsError, check_run_conf, training_overrides

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["lifecycle__diabetes"].params


def _validate(params, conf: dict) -> dict:
    merged = copy.deepcopy(params)
    merged.update(conf)
    return merged.validate()


def test_defaults_are_valid(params) -> None:
    resolved = _validate(params, {})
    assert resolved["force_deploy"] is False
    assert resolved["epochs"] is None
    assert training_overrides(resolved) == {}


def test_good_values_pass_and_become_overrides(params) -> None:
    conf = {
        "epochs": 5,
        "learning_rate": 0.01,
        "batch_size": 16,
        "thresholds": {"r2": {"min": 0.4}},
        "max_regression": 0.1,
    }
    resolved = _validate(params, conf)
    assert training_overrides(resolved) == {"epochs": 5, "learning_rate": 0.01, "batch_size": 16}


@pytest.mark.parametrize(
    ("conf", "fragment"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": -3}, "epochs"),
        ({"epochs": "ten"}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": 5}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"batch_size": 100000}, "batch_size"),
        ({"max_regression": -0.1}, "max_regression"),
        ({"max_regression": 2}, "max_regression"),
        ({"force_deploy": "yes"}, "force_deploy"),
        ({"skip_deploy": 1}, "skip_deploy"),
        ({"thresholds": {"auc": {"min": 0.5}}}, "thresholds"),
        ({"thresholds": {"r2": {"minimum": 0.5}}}, "thresholds"),
        ({"thresholds": {"r2": {"min": "high"}}}, "thresholds"),
        ({"thresholds": {"r2": {}}}, "thresholds"),
        ({"thresholds": [1, 2]}, "thresholds"),
    ],
)
def test_bad_values_are_refused_with_the_param_name(params, conf: dict, fragment: str) -> None:
    with pytest.raises(ParamValidationError) as excinfo:
        _validate(params, conf)
    assert fragment in str(excinfo.value)


def _required_in_the_form(schema: dict) -> bool:
    """The trigger form's rule (Airflow 3.3 UI, ``ui/dist``): a typed Param whose type excludes null is required."""
    kind = schema.get("type")
    return bool(kind) and (not isinstance(kind, list) or "null" not in kind)


def test_no_param_is_marked_required_in_the_form(params) -> None:
    # Every Param has a default (or None meaning "the config's"), so the form must not demand any.
    required = [name for name in params.keys() if _required_in_the_form(params.get_param(name).schema)]
    assert required == []
    resolved = _validate(params, {"thresholds": None, "force_deploy": None, "skip_deploy": None})
    assert resolved["thresholds"] is None and training_overrides(resolved) == {}


@pytest.mark.parametrize("config", load_model_configs(), ids=lambda c: c.name)
def test_threshold_example_follows_each_metrics_direction(config) -> None:
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags[config.dag_id]
    description = dag.params.get_param("thresholds").description
    example, _ = json.JSONDecoder().raw_decode(description, description.index("e.g. ") + len("e.g. "))
    assert example, description
    for metric, bounds in example.items():
        expected_side = "min" if config.higher_is_better(metric) else "max"
        assert list(bounds) == [expected_side], (metric, bounds)
    # Both directions are shown when the task has both kinds of metric, and the example itself is valid.
    assert len({side for bounds in example.values() for side in bounds}) == 2
    merged = copy.deepcopy(dag.params)
    merged.update({"thresholds": example})
    merged.validate()


def test_unknown_conf_keys_are_refused_naming_them_and_the_allowed_ones(params) -> None:
    allowed = list(params.keys())
    check_run_conf({"epochs": 3, "skip_deploy": True}, allowed)
    check_run_conf(None, allowed)
    with pytest.raises(UnknownParamsError) as excinfo:
        check_run_conf({"unknown_param": 1, "epoch": 3, "skip_deploy": True}, allowed)
    message = str(excinfo.value)
    assert "'epoch', 'unknown_param'" in message
    assert "skip_deploy" in message.split("accepts:")[1] and "epochs" in message.split("accepts:")[1]


def test_schemas_are_shared_by_copies_and_read_only(params) -> None:
    # Airflow deep-copies the DAG's Params for every operator: copies must share the schema, and
    # nothing may change it behind the other copies' back.
    copied = copy.deepcopy(params)
    for name in params.keys():
        assert copied.get_param(name).schema is params.get_param(name).schema
        assert params.get_param(name).schema["$schema"] == SCHEMA_DIALECT
    with pytest.raises(TypeError, match="shared"):
        params.get_param("epochs").schema["minimum"] = 0
