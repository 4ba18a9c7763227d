"""A model's label history: the catalog's list, the CLI ``python -m include.mlops history`` (and its module's own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ui import write_history
from include.mlops import artifacts, cli
from include.mlops.config import load_model_config
from include.mlops.exit_codes import EXIT_BAD_INPUT
from include.mlops.registry.catalog import Catalog
from include.mlops.registry.label_history import main
from include.mlops.registry.label_log import LOG_NAME

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = PROJECT_ROOT / "include" / "models"
ROLLBACK = {"at": "2027-01-02T03:04:05.000+00:00", "label": "stable", "from": 2, "to": 1, "pid": 4242,
            "host": "worker-1", "run": "manual__2027-01-02", "reason": "canary errors"}  # fmt: skip


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_history(tmp_path, load_model_config(MODELS / "diabetes.yaml"), versions=2, runs=4)
    with open(artifacts.registry_root(tmp_path) / "diabetes" / LOG_NAME, "a", encoding="utf-8") as log:
        log.write('{"at": "2027-01-01T00:00:00\n')  # a line cut short by a crash: skipped
        log.write(json.dumps(ROLLBACK) + "\n")
    return tmp_path


def history(root: Path, *args: str) -> None:
    assert main(["diabetes", "--artifact-root", str(root), "--models-dir", str(MODELS), *args]) == 0


def test_the_catalog_lists_the_moves_newest_first(root: Path) -> None:
    moves = Catalog(root, MODELS).label_moves("diabetes")
    assert [(m["label"], m["from"], m["to"]) for m in moves] == [
        ("stable", 2, 1),
        ("stable", 1, 2),
        ("stable", None, 1),
    ]
    assert moves[0] == ROLLBACK


def test_the_cli_prints_when_which_label_from_to_by_whom_and_any_other_keys(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history(root)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "2027-01-02T03:04:05.000+00:00  stable: v2 -> v1  (pid 4242 on worker-1)"
        "  reason=canary errors  run=manual__2027-01-02"
    )
    assert [line.split("  ")[1] for line in lines[1:]] == ["stable: v1 -> v2", "stable: none -> v1"]
    history(root, "--json", "--limit", "2")
    newest, before = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert newest == ROLLBACK and (before["from"], before["to"]) == (1, 2)


def test_the_cli_says_so_when_no_move_is_recorded_and_refuses_unknown_models(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (artifacts.registry_root(root) / "diabetes" / LOG_NAME).unlink()
    history(root)
    assert capsys.readouterr().out.startswith("no label move of diabetes is recorded in ")
    assert main(["nope", "--artifact-root", str(root), "--models-dir", str(MODELS)]) == EXIT_BAD_INPUT
    assert "no model named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["include.mlops", "history"], ["include.mlops.registry.label_history"]])
def test_the_cli_has_help(command: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", *command, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "a model's label moves, newest first" in " ".join(proc.stdout.split())
    assert proc.stdout.startswith("usage: python -m include.mlops history ")


def test_the_step_cli_prints_the_same_history(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["diabetes", "--artifact-root", str(root), "--models-dir", str(MODELS), "--limit", "2"]
    history(root, "--limit", "2")
    expected = capsys.readouterr().out
    assert cli.main(["history", *args]) == 0
    assert capsys.readouterr().out == expected and len(expected.splitlines()) == 2
    assert cli.main(["history", "nope", "--artifact-root", str(root)]) == EXIT_BAD_INPUT
    assert "no model named 'nope'" in capsys.readouterr().err
