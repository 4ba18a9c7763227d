"""The ``deploy.canary`` block: off in the demo configs, its defaults, and bad values refused with the field named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from include.mlops.config import DEFAULT_MODELS_DIR, CanaryConfig, ConfigError, find_model_config, load_model_config


def _diabetes_with(tmp_path: Path, canary: object) -> Path:
    """A copy of the diabetes config (and its builder) whose deploy block holds ``canary``."""
    document = yaml.safe_load((DEFAULT_MODELS_DIR / "diabetes.yaml").read_text())
    document["deploy"] = {"canary": canary}
    shutil.copy(DEFAULT_MODELS_DIR / "diabetes.py", tmp_path / "diabetes.py")
    path = tmp_path / "diabetes.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_the_demo_configs_run_no_canary(name: str) -> None:
    assert find_model_config(name).deploy.canary is None


def test_an_empty_block_takes_the_defaults(tmp_path: Path) -> None:
    canary = load_model_config(_diabetes_with(tmp_path, {})).deploy.canary
    assert canary == CanaryConfig()
    assert canary.steps == (10, 25, 50)
    assert (canary.interval_s, canary.failure_limit, canary.inconclusive_limit, canary.min_requests) == (60, 2, 3, 100)
    assert (canary.max_error_ratio_increase, canary.max_p95_latency_ratio, canary.max_prediction_distance) == (
        0.01,
        2.0,
        0.5,
    )
    assert (canary.approval, canary.approval_timeout_s) == (False, 86400)


def test_a_partial_block_keeps_the_other_defaults(tmp_path: Path) -> None:
    canary = load_model_config(_diabetes_with(tmp_path, {"steps": [5, 50, 99], "interval_s": 5})).deploy.canary
    assert (canary.steps, canary.interval_s, canary.failure_limit) == ((5, 50, 99), 5.0, 2)


@pytest.mark.parametrize(
    ("canary", "field", "problem"),
    [
        ({"steps": []}, "deploy.canary.steps", "must list at least one canary weight"),
        ({"steps": [10, 50, 25]}, "deploy.canary.steps", "must be strictly increasing, got [10, 50, 25]"),
        ({"steps": [10, 10]}, "deploy.canary.steps", "(10 follows 10)"),
        ({"steps": [0, 10]}, "deploy.canary.steps[0]", "must be >= 1, got 0"),
        ({"steps": [10, 100]}, "deploy.canary.steps[1]", "must be <= 99, got 100"),
        ({"steps": ["10"]}, "deploy.canary.steps[0]", "expected int, got str '10'"),
        ({"interval_s": 4.9}, "deploy.canary.interval_s", "must be >= 5, got 4.9"),
        ({"failure_limit": 0}, "deploy.canary.failure_limit", "must be >= 1, got 0"),
        ({"inconclusive_limit": 0}, "deploy.canary.inconclusive_limit", "must be >= 1, got 0"),
        ({"min_requests": 0}, "deploy.canary.min_requests", "must be >= 1, got 0"),
        ({"max_p95_latency_ratio": 1.0}, "deploy.canary.max_p95_latency_ratio", "must be > 1, got 1.0"),
        ({"max_p95_latency_ratio": 0.5}, "deploy.canary.max_p95_latency_ratio", "must be > 1, got 0.5"),
        ({"max_prediction_distance": -0.1}, "deploy.canary.max_prediction_distance", "must be >= 0, got -0.1"),
        ({"max_error_ratio_increase": -0.01}, "deploy.canary.max_error_ratio_increase", "must be >= 0, got -0.01"),
        ({"approval": "yes"}, "deploy.canary.approval", "expected true or false"),
        ({"approval_timeout_s": 0}, "deploy.canary.approval_timeout_s", "must be > 0, got 0"),
        (
            {"step": [10]},
            "deploy.canary.step",
            "unknown field (allowed: approval, approval_timeout_s, failure_limit, inconclusive_limit, interval_s, "
            "max_error_ratio_increase, max_p95_latency_ratio, max_prediction_distance, min_requests, steps)",
        ),
    ],
)
def test_bad_canary_settings_name_the_field(tmp_path: Path, canary: object, field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_model_config(_diabetes_with(tmp_path, canary))
    assert caught.value.field == field
    assert problem in caught.value.problem
