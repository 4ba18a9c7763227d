"""The pins are split: ``requirements.txt`` is what runs (images, workers, ``make run``), and
``requirements-dev.txt`` adds the test, lint and validation tools on top of it.

Test tools in a runtime image are weight and attack surface, and a dev pin that differs from the runtime
one makes the test environment something that never runs in production; both are checked here, as is
that every image Dockerfile installs the runtime file and never the dev one.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
from dockerfiles import final_stage
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "requirements.txt"
DEV = ROOT / "requirements-dev.txt"
IMAGES = ("airflow", "trainer", "server")
# Image-specific requirement files (each a subset of the runtime pins).
IMAGE_REQUIREMENTS = ("trainer", "server")
# Tools that only tests, lint or offline validation use; none may run in production.
DEV_TOOLS = frozenset(
    canonicalize_name(name)
    for name in (
        "pytest",
        "ruff",
        "kubernetes-validate",
        "aiosmtpd",
        "python-hcl2",
        "iniconfig",
        "coverage",
        "mypy",
        "black",
        "flake8",
        "pylint",
        "hypothesis",
        "moto",
        "selenium",
        "playwright",
        "pre-commit",
        "tox",
    )
)
_PIP_FILE_OPTION = re.compile(r"^(-r|--requirement|-c|--constraint)$")


def _pins(path: Path) -> dict[str, str]:
    """Canonical name -> specifier of each requirement line (options such as ``-r`` are skipped)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    return pins


def _pip_installs(run: str) -> list[list[str]]:
    """The words of each ``pip install`` command in a RUN step's shell line."""
    commands: list[list[str]] = [[]]
    for word in shlex.split(run.replace(";", " ; "), posix=True):
        if word in ("&&", "||", ";"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if any(a == "pip" and b == "install" for a, b in itertools.pairwise(c))]


def _dev_tools_in(names: set[str]) -> list[str]:
    return sorted(name for name in names if name in DEV_TOOLS or name.startswith("pytest-"))


def test_runtime_pins_hold_no_test_or_lint_tool() -> None:
    found = _dev_tools_in(set(_pins(RUNTIME)))
    assert not found, f"requirements.txt pins dev-only tools {found}: move them to requirements-dev.txt"


def test_dev_pins_build_on_the_runtime_pins_without_conflicts() -> None:
    lines = [line.strip() for line in DEV.read_text().splitlines()]
    assert "-r requirements.txt" in lines, (
        "requirements-dev.txt should start from the runtime pins (-r requirements.txt)"
    )
    runtime, dev = _pins(RUNTIME), _pins(DEV)
    conflicts = {name: (dev[name], runtime[name]) for name in dev.keys() & runtime.keys() if dev[name] != runtime[name]}
    assert not conflicts, f"requirements-dev.txt pins differ from requirements.txt (dev, runtime): {conflicts}"
    # The tools the tests run are pinned, in the dev file only.
    assert {"pytest", "ruff", "kubernetes-validate"} <= dev.keys() - runtime.keys()


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_installs_the_runtime_requirements_never_the_dev_ones(image: str) -> None:
    dockerfile = ROOT / "include" / "docker" / image / "Dockerfile"
    stage = final_stage(dockerfile)
    copied = {copy.destination: source for copy in stage.copies for source in copy.sources}
    assert "requirements-dev.txt" not in copied.values(), f"{image}: copies requirements-dev.txt into the image"
    assert "requirements.txt" in copied.values(), f"{image}: does not copy requirements.txt"

    installed: list[str] = []  # the build-context files that pip reads with -r or -c
    for run in stage.runs:
        assert "requirements-dev" not in run, f"{image}: a RUN step uses requirements-dev.txt"
        for command in _pip_installs(run):
            for option, value in itertools.pairwise(command):
                if _PIP_FILE_OPTION.match(option):
                    assert value in copied, f"{image}: pip reads {value}, which no COPY puts there"
                    installed.append(copied[value])
    assert "requirements.txt" in installed, f"{image}: pip does not install (or constrain) with requirements.txt"
    allowed = {"requirements.txt", *(f"include/docker/{name}/requirements.txt" for name in IMAGE_REQUIREMENTS)}
    assert set(installed) <= allowed, f"{image}: pip installs {sorted(set(installed) - allowed)}"


@pytest.mark.parametrize("image", IMAGE_REQUIREMENTS)
def test_image_requirement_files_list_no_dev_tool(image: str) -> None:
    found = _dev_tools_in(set(_pins(ROOT / "include" / "docker" / image / "requirements.txt")))
    assert not found, f"include/docker/{image}/requirements.txt lists dev-only tools {found}"


# Imported only inside a try/except that falls back to another package.
OPTIONAL_STEP_IMPORTS = frozenset({"ai_edge_litert"})
# Added by the trainer Dockerfile itself (build arg TF_PACKAGE), not by its requirements file.
ADDED_BY_DOCKERFILE = {"trainer": frozenset({"tensorflow"}), "server": frozenset()}
LIBRARY = ROOT / "include" / "mlops"


def _third_party_imports(paths: list[Path]) -> set[str]:
    import ast
    import sys

    modules: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "include"} - OPTIONAL_STEP_IMPORTS


@pytest.mark.parametrize(
    ("image", "sources"),
    [
        # The step CLI: the whole library, the model server included (deploy runs it as its sandbox).
        ("trainer", sorted(LIBRARY.rglob("*.py"))),
        ("server", sorted((LIBRARY / "serving").rglob("*.py"))),
    ],
    ids=["trainer", "server"],
)
def test_each_image_installs_every_package_its_code_imports(image: str, sources: list[Path]) -> None:
    # Steps run in the trainer image on the docker and kubernetes backends, and the server in its own image,
    # where requirements.txt is only the constraints file: a package the code imports but the image's own list
    # lacks fails there with ModuleNotFoundError, and only there.
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    installed = set(_pins(ROOT / "include" / "docker" / image / "requirements.txt")) | ADDED_BY_DOCKERFILE[image]
    missing = {}
    for module in sorted(_third_party_imports(sources)):
        owners = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not owners & installed:
            missing[module] = sorted(owners)
    assert not missing, f"include/docker/{image}/requirements.txt lacks what its code imports: {missing}"
