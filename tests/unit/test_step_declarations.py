"""One declaration makes a step: its subcommand, exit codes, runtime cap, pod size and GPUs follow from it.

The ``touch`` step of ``tests/declared_steps.py`` is declared by the tests
alone and runs through the step CLI, in process and as ``python -m
include.mlops``; ``tests/integration/test_declared_step_dag.py`` runs it
through a DAG.  The README's table of steps is checked against the
lifecycle's declarations.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from include.mlops import cli
from include.mlops.config import DEFAULT_STEP_TIMEOUTS as CONFIG_TIMEOUTS
from include.mlops.config import load_model_config
from include.mlops.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED
from include.mlops.steps import (
    DEFAULT_STEP_TIMEOUTS,
    STEP_MODULES_ENV,
    Step,
    UnknownStepError,
    get_step,
    register_step,
    registered_steps,
    runtime_cap,
    unregister_step,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = PROJECT_ROOT / "tests"
TOUCHED_FILE = "touched.txt"  # where the touch step writes, under --out
LIFECYCLE_STEPS = (
    "snapshot",
    "validate",
    "train",
    "evaluate",
    "tune-plan",
    "tune-trial",
    "tune-select",
    "compress",
    "register",
    "deploy",
    "undeploy",
    "drift",
)


@pytest.fixture
def touch_step(monkeypatch: pytest.MonkeyPatch) -> Iterator[Step]:
    """The ``touch`` step, declared here and in the step subprocesses started by this test.

    Imported here, not at the top: importing the module declares the step, and
    the other tests see the lifecycle's steps only.
    """
    import declared_steps

    monkeypatch.setenv(STEP_MODULES_ENV, declared_steps.MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    yield register_step(declared_steps.TOUCH)
    unregister_step(declared_steps.TOUCH.name)


def touch(out: Path, *extra: str) -> list[str]:
    return ["touch", "--model", "diabetes", "--out", str(out), "--text", "hello", *extra]


# --------------------------------------------------------------------------- a step declared by a test


def test_a_declared_step_runs_through_the_cli(touch_step: Step, tmp_path: Path) -> None:
    out, result_file = tmp_path / "out", tmp_path / "result.json"
    assert cli.main([*touch(out), "--result-file", str(result_file)]) == 0
    assert (out / TOUCHED_FILE).read_text() == "hello"
    result = json.loads(result_file.read_text())
    assert result == {"touched_uri": str(out / TOUCHED_FILE), "model": "diabetes", "characters": 5}


def test_a_declared_step_runs_as_a_subcommand_of_the_module(touch_step: Step, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "include.mlops", *touch(out)], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["touched_uri"] == str(out / TOUCHED_FILE)
    listing = subprocess.run(
        [sys.executable, "-m", "include.mlops", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "touch" in listing and touch_step.help in " ".join(listing.split())


def test_history_is_a_subcommand_but_no_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert "history" in cli.COMMANDS and "history" not in registered_steps()
    with pytest.raises(SystemExit) as help_exit:
        cli.main(["history", "--help"])  # its own parser: a name, no --model or --out
    assert help_exit.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m include.mlops history ")
    assert "history" in cli.build_parser().format_help()


def test_the_parser_takes_the_declared_options(touch_step: Step) -> None:
    parsed = cli.build_parser().parse_args(touch(Path("/tmp/out"), "--fail", "crash"))
    assert (parsed.step, parsed.text, parsed.fail) == ("touch", "hello", "crash")
    with pytest.raises(SystemExit) as usage_error:
        cli.build_parser().parse_args(["touch", "--model", "diabetes", "--out", "/tmp/out"])  # --text is required
    assert usage_error.value.code == EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("fail", "code"),
    [("bad-input", EXIT_BAD_INPUT), ("crash", EXIT_FAILED), ("short-result", EXIT_FAILED)],
)
def test_exit_codes_come_from_the_declaration(touch_step: Step, tmp_path: Path, fail: str, code: int) -> None:
    result_file = tmp_path / "result.json"
    assert cli.main([*touch(tmp_path / "out", "--fail", fail), "--result-file", str(result_file)]) == code
    # A result without a declared key is refused: nothing reaches the task's XCom.
    assert not result_file.exists()


def test_an_error_is_bad_input_only_while_a_declaration_says_so(touch_step: Step, tmp_path: Path) -> None:
    unregister_step("touch")
    register_step(dataclasses.replace(touch_step, bad_input=()))
    assert cli.main(touch(tmp_path / "out", "--fail", "bad-input")) == EXIT_FAILED


def test_the_airflow_side_reads_gpus_size_and_runtime_cap_from_the_declaration(touch_step: Step) -> None:
    from mlops_airflow import step_pods
    from mlops_airflow.backends import step_operator

    two_gpus = SimpleNamespace(train=SimpleNamespace(gpus=2))
    assert step_pods.wants_gpus("touch", two_gpus) == 2
    assert step_pods.wants_gpus("validate", two_gpus) == 0
    heavy = step_pods.STEP_RESOURCES["heavy"]["requests"]
    assert step_pods.step_resources("touch", 0).requests == heavy
    assert step_pods.step_resources("validate", 0).requests == step_pods.STEP_RESOURCES["light"]["requests"]

    config = load_model_config(PROJECT_ROOT / "include/models/diabetes.yaml")
    task = step_operator("local", task_id="touch", step="touch", model="diabetes", config=config)
    assert task.execution_timeout.total_seconds() == touch_step.timeout_s
    assert DEFAULT_STEP_TIMEOUTS["touch"] == touch_step.timeout_s
    with pytest.raises(UnknownStepError, match="unknown step 'no-such-step'"):
        step_operator("local", task_id="x", step="no-such-step", model="diabetes", config=config)


# --------------------------------------------------------------------------- the registry and the lifecycle's table


def test_the_lifecycle_declares_its_steps_in_flowchart_order() -> None:
    assert tuple(registered_steps()) == LIFECYCLE_STEPS
    assert {name for name, step in registered_steps().items() if step.gpus} == {"train", "tune-trial"}
    assert {name for name, step in registered_steps().items() if step.heavy} == {
        "train",
        "tune-trial",
        "compress",
        "evaluate",
    }


def test_default_timeouts_are_the_declared_caps_and_the_configs_defaults() -> None:
    assert dict(DEFAULT_STEP_TIMEOUTS) == {name: step.timeout_s for name, step in registered_steps().items()}
    assert dict(CONFIG_TIMEOUTS) == dict(DEFAULT_STEP_TIMEOUTS)
    config = load_model_config(PROJECT_ROOT / "include/models/diabetes.yaml")
    for name in LIFECYCLE_STEPS:
        assert config.step_timeout(name) == runtime_cap(name, config.timeouts) == runtime_cap(name)


def test_a_name_is_declared_once() -> None:
    train = get_step("train")
    assert register_step(train) is train  # the same declaration again: nothing changes
    with pytest.raises(ValueError, match="already declared differently"):
        register_step(dataclasses.replace(train, timeout_s=60))
    assert get_step("train") is train
    with pytest.raises(ValueError, match="lower-case words"):
        Step(name="Tune_Trial", help="", runner=train.runner)


def test_every_declared_bad_input_error_exists_where_it_is_declared() -> None:
    import importlib

    for step in registered_steps().values():
        for module, name in step.bad_input:
            error = getattr(importlib.import_module(module), name)
            assert issubclass(error, Exception), (step.name, module, name)


# --------------------------------------------------------------------------- the README


def _cap(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def readme_rows(steps: dict[str, Any]) -> list[str]:
    """The README's table of steps, one row per declaration."""
    return [
        f"| `{name}` | {step.help} | {_cap(step.timeout_s)} | {'`train.gpus`' if step.gpus else 'none'} | "
        f"{'heavy' if step.heavy else 'light'} |"
        for name, step in steps.items()
    ]


def test_the_readme_table_of_steps_is_the_declarations() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## The lifecycle, step by step", 1)[1].split("\n## ", 1)[0]
    found = [line for line in section.splitlines() if line.startswith("| `")]
    expected = readme_rows(dict(registered_steps()))
    assert found == expected, "README.md's table of steps should read:\n" + "\n".join(expected)
