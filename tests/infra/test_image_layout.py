"""The Airflow image finds every DAG and plugin of the checkout, with nothing but the image's own settings.

No image is built here: the test reads the Airflow Dockerfile's COPY and ENV instructions, lays out what
they copy (after .dockerignore) under a temporary root, and loads the DagBag and the plugins in a fresh
interpreter whose only project settings are the image's PYTHONPATH, DAGS_FOLDER and PLUGINS_FOLDER
(moved under that root), started outside the checkout so that nothing of it can be imported by accident.
The git-sync layout of the official Helm chart (the whole repository synced to ``/opt/airflow/dags/repo``)
gets the same check with the settings the Dockerfile documents for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfiles import context_files, copied_files, final_stage
from tooling import require_executable

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "include" / "docker" / "airflow" / "Dockerfile"
IMAGES = ("airflow", "trainer", "server")
BACKENDS_DOC = ROOT / "docs" / "backends.md"
# What makes the project importable and found by Airflow; every other setting is Airflow's default.
PATH_SETTINGS = ("PYTHONPATH", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER")
# Where the official chart's git-sync puts the repository: "<airflowHome>/dags/repo/<subPath>"
# (its `airflow_dags` helper) with subPath "" and the default airflowHome.
GIT_SYNC_CHECKOUT = "/opt/airflow/dags/repo"
_DOCUMENTED_SETTING = re.compile(r"^#\s+(?P<key>[A-Z_]+)=(?P<value>\S+)\s*$")
_RESULT_MARKER = "MLOPS-LAYOUT-RESULT "

# Runs in the fresh interpreter: Airflow's own DagBag and plugin manager, as the DAG processor and the
# API server use them, and where `include` and `mlops_airflow` were imported from.
_PROBE = f"""
import json, sys
from airflow import plugins_manager
from airflow.configuration import conf
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=conf.get("core", "dags_folder"))
plugins = plugins_manager.get_plugin_info(["source"])
print({_RESULT_MARKER!r} + json.dumps({{
    "dag_ids": sorted(bag.dag_ids),
    "import_errors": {{str(k): str(v) for k, v in bag.import_errors.items()}},
    "plugins": sorted(p["name"] for p in plugins),
    "plugin_errors": plugins_manager.get_import_errors(),
    "modules": {{name: getattr(sys.modules.get(name), "__file__", None) for name in ("include", "mlops_airflow")}},
}}))
"""


def _project_files() -> list[str]:
    """The repository's files as a clone has them: tracked, plus new ones that are not ignored."""
    git = require_executable("git", "the test lists the repository's files with `git ls-files`")
    listed = subprocess.run(
        [git, "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # A file deleted but not yet committed is still listed.
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def _moved_under(root: Path, value: str) -> str:
    """A path setting (``:``-separated for PYTHONPATH) with each absolute path placed under ``root``."""
    return os.pathsep.join(str(root) + part if part.startswith("/") else part for part in value.split(":"))


def _load_project(settings: dict[str, str], workdir: Path) -> dict[str, Any]:
    """DAG ids, plugins and import errors that Airflow sees with only ``settings`` for the project."""
    elsewhere = workdir / "cwd"
    elsewhere.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "AIRFLOW_HOME": str(workdir / "airflow-home"),
        # The compose file and the Helm values turn examples off; the base image's default would load them.
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **settings,
    }
    # -P: the working directory is not put on sys.path; -s: no user site-packages.
    result = subprocess.run(
        [sys.executable, "-P", "-s", "-c", _PROBE],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(_RESULT_MARKER)]
    assert result.returncode == 0 and lines, (
        f"loading the DAGs failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return json.loads(lines[-1].removeprefix(_RESULT_MARKER))


def _image_settings() -> dict[str, str]:
    env = final_stage(DOCKERFILE).env
    missing = [key for key in PATH_SETTINGS if not env.get(key)]
    assert not missing, (
        f"{DOCKERFILE.relative_to(ROOT)} sets no {', '.join(missing)}: the image cannot import the project. "
        "Copy dags/, plugins/ and include/ under one root and point these settings at it."
    )
    return {key: env[key] for key in PATH_SETTINGS}


def _git_sync_settings() -> dict[str, str]:
    """The settings the Dockerfile's git-sync comment block documents (``#   KEY=VALUE`` lines)."""
    documented: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        match = _DOCUMENTED_SETTING.match(line)
        if match and match["key"] in PATH_SETTINGS:
            documented[match["key"]] = match["value"]
    assert sorted(documented) == sorted(PATH_SETTINGS), (
        f"the Dockerfile's git-sync comment should give each of {PATH_SETTINGS} as '#   KEY=VALUE', found {documented}"
    )
    assert 'dags.gitSync.subPath: ""' in DOCKERFILE.read_text(), "document that git-sync syncs the whole repository"
    return documented


def _expect_same_project(found: dict[str, Any], reference: dict[str, Any], root: Path) -> None:
    assert found["import_errors"] == {}, f"DAG import errors: {found['import_errors']}"
    assert found["plugin_errors"] == {}, f"plugin import errors: {found['plugin_errors']}"
    assert found["dag_ids"] == reference["dag_ids"], "the layout does not load the checkout's DAGs"
    assert found["plugins"] == reference["plugins"], "the layout does not load the checkout's plugins"
    # The project came from the layout, not from the checkout (which would hide a missing COPY).
    for module, path in found["modules"].items():
        assert path and Path(path).is_relative_to(root), f"{module} was imported from {path}, not from {root}"


@pytest.fixture(scope="module")
def checkout_project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the checkout defines, loaded with the development settings (the Makefile's)."""
    found = _load_project(
        {
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        },
        tmp_path_factory.mktemp("checkout"),
    )
    assert found["import_errors"] == {} and found["plugin_errors"] == {}, found
    assert any(d.startswith("lifecycle__") for d in found["dag_ids"]), found["dag_ids"]
    assert found["plugins"], "the checkout defines no Airflow plugin"
    return found


def test_the_airflow_image_loads_every_dag_with_its_own_settings(
    checkout_project: dict[str, Any], tmp_path: Path
) -> None:
    settings = _image_settings()
    image_root = tmp_path / "image"
    sent = context_files(ROOT, DOCKERFILE)
    for copy in final_stage(DOCKERFILE).copies:
        for destination, source in copied_files(copy, ROOT, sent).items():
            target = image_root / destination.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)

    found = _load_project({key: _moved_under(image_root, value) for key, value in settings.items()}, tmp_path)
    _expect_same_project(found, checkout_project, image_root)


def test_a_git_sync_checkout_of_the_whole_repository_loads_every_dag(
    checkout_project: dict[str, Any], tmp_path: Path
) -> None:
    settings = _git_sync_settings()
    image_root = tmp_path / "pod"
    checkout = image_root / GIT_SYNC_CHECKOUT.lstrip("/")
    for name in _project_files():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)

    found = _load_project({key: _moved_under(image_root, value) for key, value in settings.items()}, tmp_path)
    _expect_same_project(found, checkout_project, image_root)


def test_the_git_sync_settings_in_the_docs_match_the_dockerfile() -> None:
    documented = _git_sync_settings()
    blocks = re.findall(r"```yaml\n(.*?)```", BACKENDS_DOC.read_text(), flags=re.DOTALL)
    values = [yaml.safe_load(block) for block in blocks]
    git_sync = [v for v in values if isinstance(v, dict) and "gitSync" in v.get("dags", {})]
    assert len(git_sync) == 1, f"{BACKENDS_DOC.relative_to(ROOT)} should show one Helm values block for git-sync"
    (helm,) = git_sync
    assert helm["dags"]["gitSync"]["subPath"] == ""
    env = {item["name"]: item["value"] for item in helm["env"]}
    assert {key: env.get(key) for key in PATH_SETTINGS} == documented


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_gets_every_file_it_copies_and_no_tests_or_docs(image: str) -> None:
    dockerfile = ROOT / "include" / "docker" / image / "Dockerfile"
    sent = context_files(ROOT, dockerfile)
    project = _project_files()
    for copy in final_stage(dockerfile).copies:
        placed = set(copied_files(copy, ROOT, sent).values())  # raises for a source .dockerignore drops
        for source in copy.sources:
            # .dockerignore may drop caches, never a file of a copied folder (templates, suites, configs).
            wanted = {name for name in project if name == source or name.startswith(source.rstrip("/") + "/")}
            assert wanted <= placed, f"{image}: .dockerignore drops {sorted(wanted - placed)} from COPY {source}"
    for folder in ("tests", "benchmarks", "docs"):
        assert not any(p == folder or p.startswith(folder + "/") for p in sent), f"{folder}/ is sent to the build"
    assert "requirements.txt" in sent
