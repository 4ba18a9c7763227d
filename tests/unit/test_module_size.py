"""Modules stay small enough to hold one responsibility: none in include/ or plugins/ is over 400 lines."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400
MODULES = sorted(p for folder in ("include", "plugins") for p in (ROOT / folder).rglob("*.py"))


def test_the_tree_has_modules_to_measure() -> None:
    assert len(MODULES) > 50 and ROOT / "include" / "mlops" / "cli.py" in MODULES


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_the_limit(module: Path) -> None:
    lines = len(module.read_text().splitlines())
    assert lines <= LIMIT, f"{module.relative_to(ROOT)} has {lines} lines (limit {LIMIT}): split it by responsibility"
