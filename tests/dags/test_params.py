"""The trigger form refuses bad values before a run starts (the REST API applies the same schema)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError

from mlops_airflow.params import training_overrides

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
