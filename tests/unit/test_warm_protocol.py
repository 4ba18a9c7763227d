"""The step runner's protocol rules (include/mlops/warm/protocol.py), without a runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.mlops.warm.protocol import enabled, import_time_settings, incompatibility, socket_path
from include.mlops.warm.server import child_sys_path


def test_the_socket_is_the_variable_else_in_the_airflow_home_else_none() -> None:
    assert socket_path({"MLOPS_STEP_RUNNER_SOCKET": "/run/r.sock", "AIRFLOW_HOME": "/h"}) == Path("/run/r.sock")
    assert socket_path({"AIRFLOW_HOME": "/h"}) == Path("/h/step-runner.sock")
    assert socket_path({}) is None


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("0", False), (" Off ", False), ("no", False)])
def test_warm_starts_are_on_unless_switched_off(value: str | None, on: bool) -> None:
    assert enabled({} if value is None else {"MLOPS_WARM_STEPS": value}) is on


def test_import_time_settings_leave_out_pythonpath_and_per_task_variables() -> None:
    env = {
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "2",
        "PYTHONHASHSEED": "1",
        "PYTHONPATH": "/a:/b",
        "AIRFLOW_CTX_DAG_ID": "lifecycle__diabetes",
        "MLOPS_ARTIFACT_ROOT": "/artifacts",
    }
    assert import_time_settings(env) == {
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "2",
        "PYTHONHASHSEED": "1",
    }


@pytest.mark.parametrize(
    ("request_env", "reason"),
    [
        ({"TF_CPP_MIN_LOG_LEVEL": "2", "AIRFLOW_CTX_TRY_NUMBER": "1"}, None),
        ({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": "/elsewhere"}, None),
        ({"TF_CPP_MIN_LOG_LEVEL": "0"}, "import-time settings differ from the runner's: TF_CPP_MIN_LOG_LEVEL"),
        ({}, "import-time settings differ from the runner's: TF_CPP_MIN_LOG_LEVEL"),
        (
            {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "1"},
            "import-time settings differ from the runner's: CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS",
        ),
    ],
    ids=["per-task-variables", "another-pythonpath", "other-log-level", "setting-missing", "settings-added"],
)
def test_a_request_is_compatible_only_with_the_same_import_time_settings(
    request_env: dict[str, str], reason: str | None
) -> None:
    runner_env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": "/repo"}
    request = {"executable": "/venv/bin/python", "env": request_env}
    assert incompatibility("/venv/bin/python", runner_env, request) == reason


def test_another_interpreter_is_incompatible() -> None:
    reason = incompatibility("/venv/bin/python", {}, {"executable": "/usr/bin/python3", "env": {}})
    assert reason == "the step wants interpreter '/usr/bin/python3', the runner is '/venv/bin/python'"


def test_the_child_path_puts_its_folder_and_pythonpath_where_the_runners_were() -> None:
    runner_path = ["/srv", "/repo", "/repo/plugins", "/usr/lib/python3.11", "/venv/site-packages"]
    child = child_sys_path(runner_path, ["/srv", "/repo", "/repo/plugins"], "/work", {"PYTHONPATH": "/repo:/extra"})
    assert child == ["/work", "/repo", "/extra", "/usr/lib/python3.11", "/venv/site-packages"]
