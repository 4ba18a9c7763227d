"""Every command in the README's shell blocks runs as written, or is listed here with why it cannot run.

Each shell block of the README and of docs/ must parse (``bash -n``).  The README's commands that need no
running stack (``make help``, ``make airflow ARGS="version"``, every ``--help``) run from a plain shell in
the project folder and must exit 0; the others need the stack of ``make run`` (or Docker, or a run's
outputs) and are listed below with the reason, so a new command has to be put in one list or the other.
For the requests to the model server and to Airflow's REST API, which need the stack, what can be checked
without it is: each JSON body parses (placeholders such as ``...64 pixels`` do not), each path is a route of
the server it is sent to, and each row of a predict request has the model's width.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from markdown_blocks import DOC_PAGES, README, ROOT, Command, shell_blocks, shell_commands, words

# Commands that need no running stack: they run and must exit 0.
RUNS = (
    re.compile(r"^make help\b"),
    re.compile(r'^make airflow ARGS="version"'),
    re.compile(r"^\S*python\S* -m [\w.]+(?: history)? --help\b"),
    re.compile(r"^python -c 'from cryptography\.fernet import Fernet; print\(Fernet\.generate_key\(\)\.decode\(\)\)'"),
    re.compile(r"^openssl rand -hex \d+"),
)
# Executables a runnable command needs besides the project's venv; without them it is skipped.
NEEDS_EXECUTABLE = {"make": "make", "openssl": "openssl"}

# Commands that need what this test does not have, and why.
NEEDS_STACK = {
    re.compile(r"^make run\b"): "starts the whole stack (Airflow, the model server, Prometheus) until Ctrl-C",
    re.compile(r"^make test\b"): "runs every test tier, this one included (about 36 minutes)",
    re.compile(r"(localhost|127\.0\.0\.1):8501"): "needs the model server of `make run` with a deployed model",
    re.compile(r"localhost:8080"): "needs the Airflow API server (`make run` or docker-compose)",
    re.compile(r'^make airflow ARGS="backfill create '): "needs the metadata DB and the DAGs that `make run` prepares",
    re.compile(r"^password=\$\(python -c .*simple_auth_manager_passwords"): "reads the login that `make run` writes",
    re.compile(r"^password=\$\(sed .* \.env\)"): "reads .env, which the compose path writes",
    re.compile(r"^api\(\) \{"): "defines a helper for the requests below (their bodies and paths are checked)",
    re.compile(r"^ls -t artifacts/runs/"): "lists outputs of a lifecycle run",
    re.compile(r"-m include\.mlops\.traffic --model"): "sends requests to the model server of `make run`",
    re.compile(r"^cp \.env\.example \.env|>> \.env"): "writes .env into the checkout (the compose path)",
    re.compile(r"^docker-compose "): "needs a Docker engine and the compose stack",
}

# A plain shell in the project folder: none of the settings the Makefile or the test session provides.
SCRUBBED = ("AIRFLOW_CONFIG", "PYTHONPATH", "MLOPS_ARTIFACT_ROOT", "AIRFLOW_HOME", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")

MODEL_SERVER_PORT = "8501"
AIRFLOW_PORT = "8080"
_URL = re.compile(r"^(?:https?://)?(?:localhost|127\.0\.0\.1):(\d+)(/\S*)?$")
_SUBSTITUTION = re.compile(r"\$\([^()]*\)|\$\{[^}]*\}|\$\w+")


def readme_commands() -> list[Command]:
    return shell_commands(README)


def _runs(command: Command) -> bool:
    return any(pattern.search(command.text) for pattern in RUNS)


def _stack_reasons(command: Command) -> list[str]:
    return [reason for pattern, reason in NEEDS_STACK.items() if pattern.search(command.text)]


def _id(command: Command) -> str:
    return f"{command.page.relative_to(ROOT)}:{command.line}"


def plain_shell_env(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in SCRUBBED and not key.startswith("AIRFLOW__") and not key.startswith("PYTEST_")
    }
    # Airflow keeps its home here instead of the checkout's .airflow/ (the Makefile honours a set AIRFLOW_HOME).
    env["AIRFLOW_HOME"] = str(home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@cache
def venv_is_current() -> bool:
    """Whether ``make setup`` has nothing to do (otherwise a make target would reinstall the venv first)."""
    return subprocess.run(["make", "-q", "setup"], cwd=ROOT, capture_output=True).returncode == 0


# ---------------------------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    "block",
    [block for page in DOC_PAGES for block in shell_blocks(page)],
    ids=lambda block: f"{block.page.relative_to(ROOT)}:{block.line}",
)
def test_shell_block_parses(block) -> None:
    checked = subprocess.run(["bash", "-n"], input=block.text, text=True, capture_output=True)
    assert checked.returncode == 0, f"{block.page.name}, block from line {block.line}:\n{checked.stderr}"


def test_every_readme_command_is_either_run_or_listed_with_a_reason() -> None:
    unlisted = [str(c) for c in readme_commands() if not _runs(c) and not _stack_reasons(c)]
    both = [str(c) for c in readme_commands() if _runs(c) and _stack_reasons(c)]
    assert not unlisted, "README commands neither run here nor listed in NEEDS_STACK:\n" + "\n".join(unlisted)
    assert not both, "README commands both in RUNS and NEEDS_STACK:\n" + "\n".join(both)


def test_the_readme_has_commands_that_run_without_the_stack() -> None:
    assert sum(_runs(command) for command in readme_commands()) >= 5


# ---------------------------------------------------------------------------------------------- runs


@pytest.mark.parametrize("command", [c for c in readme_commands() if _runs(c)], ids=_id)
def test_readme_command_runs(command: Command, tmp_path: Path) -> None:
    program = words(command)[0]
    if program in NEEDS_EXECUTABLE and shutil.which(NEEDS_EXECUTABLE[program]) is None:
        pytest.skip(f"{NEEDS_EXECUTABLE[program]} is not installed")
    if program.startswith(".venv/") and not (ROOT / program).exists():
        pytest.skip(f"{program} is missing: run make setup")
    if program == "make" and not venv_is_current():
        pytest.skip("the venv is older than the requirements: run make setup")
    done = subprocess.run(
        ["bash", "-c", command.text],
        cwd=ROOT,
        env=plain_shell_env(tmp_path / "airflow-home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"{command} printed nothing"


def test_make_airflow_runs_the_cli_with_the_projects_settings(tmp_path: Path) -> None:
    """What `make run` and `make airflow` share: the DAG and plugin folders, the config, the metadata DB."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if not venv_is_current():
        pytest.skip("the venv is older than the requirements: run make setup")
    home = tmp_path / "airflow-home"
    done = subprocess.run(
        ["make", "-s", "airflow", "ARGS=config list --show-values --exclude-providers --color off"],
        cwd=ROOT,
        env=plain_shell_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config: dict[tuple[str, str], str] = {}
    section = ""
    for line in done.stdout.splitlines():
        if line.startswith("[") and line.rstrip().endswith("]"):
            section = line.strip()[1:-1]
        elif " = " in line and not line.startswith("#"):
            key, value = line.split(" = ", 1)
            config[section, key.strip()] = value.strip()

    assert config["core", "dags_folder"] == str(ROOT / "dags")
    assert config["core", "plugins_folder"] == str(ROOT / "plugins")
    assert config["core", "load_examples"] == "False"  # from the project's airflow.cfg
    assert config["database", "sql_alchemy_conn"] == f"sqlite:///{home}/airflow.db?timeout=30"

    # Without AIRFLOW_HOME, the home is the project's .airflow/, as for `make run` (a dry run writes nothing).
    env = plain_shell_env(home)
    del env["AIRFLOW_HOME"]
    dry = subprocess.run(["make", "-n", "airflow", "ARGS=version"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert f"sqlite:///{ROOT}/.airflow/airflow.db?timeout=30" in dry.stdout
    assert f"{ROOT}/.venv/bin/airflow version" in dry.stdout


def test_airflow_cli_calls_in_the_readme_go_through_make_airflow() -> None:
    bare = [str(c) for c in readme_commands() if re.match(r"^(\S*/)?airflow\s", c.text)]
    assert not bare, 'use make airflow ARGS="..." (a bare airflow uses ~/airflow):\n' + "\n".join(bare)


# ---------------------------------------------------------------------------------------------- requests


def _requests(command: Command) -> list[tuple[str, str, str, str | None]]:
    """(port, method, path, JSON body or None) of each curl or `api` request in the command."""
    found = []
    segments: list[list[str]] = []
    for word in words(command):
        if word.endswith("curl") or word == "api" or word.endswith("$(curl"):
            segments.append([])
        elif segments:
            segments[-1].append(word)
    for segment in segments:
        url = next((m for m in map(_URL.match, segment) if m), None)
        if url is None:
            continue
        body = segment[segment.index("-d") + 1] if "-d" in segment else None
        method = segment[segment.index("-X") + 1] if "-X" in segment else ("POST" if body is not None else "GET")
        found.append((url.group(1), method, (url.group(2) or "/").split("?")[0], body))
    return found


REQUESTS = [
    (command, request) for page in DOC_PAGES for command in shell_commands(page) for request in _requests(command)
]


def test_the_readme_requests_are_found() -> None:
    ports = {request[0] for command, request in REQUESTS if command.page == README}
    assert {MODEL_SERVER_PORT, AIRFLOW_PORT} <= ports


@cache
def served_models() -> dict[str, list[str]]:
    """Served model name -> its features, from the model configs."""
    models = {}
    for path in sorted((ROOT / "include" / "models").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        models[config.get("serving_name") or config["name"]] = list(config["features"])
    return models


@pytest.mark.parametrize(
    ("command", "request_"), REQUESTS, ids=lambda value: _id(value) if isinstance(value, Command) else None
)
def test_request_body_is_json(command: Command, request_) -> None:
    _port, _method, _path, body = request_
    if body is None:
        return
    try:
        json.loads(_SUBSTITUTION.sub("x", body))
    except json.JSONDecodeError as exc:
        pytest.fail(f"{command}\nthe body is not JSON ({exc}): {body}")


@pytest.mark.parametrize(
    ("command", "request_"),
    [(c, r) for c, r in REQUESTS if r[0] == MODEL_SERVER_PORT],
    ids=lambda value: _id(value) if isinstance(value, Command) else None,
)
def test_model_server_request_is_a_route_of_the_server(command: Command, request_) -> None:
    from include.mlops.serving import app, post_api

    _port, method, path, body = request_
    if method == "POST":
        match = post_api.PREDICT_PATH.fullmatch(path)
        assert match, f"{command}\nPOST {path} is not a :predict, :classify or :regress path"
    else:
        assert method == "GET", command
        match = None if path == app.METRICS_PATH else app._STATUS_PATH.fullmatch(path)
        assert path == app.METRICS_PATH or match, f"{command}\nGET {path} is neither a status path nor the metrics"
    if match is None:
        return
    model = match.group(1)
    assert model in served_models(), f"{command}\nno model config serves {model!r}"
    if method == "POST" and body is not None and match.group(4).lower() == "predict":
        rows = json.loads(body).get("instances", [])
        width = len(served_models()[model])
        assert rows and all(len(row) == width for row in rows), f"{command}\n{model} takes rows of {width} features"


@cache
def airflow_routes() -> list[tuple[re.Pattern[str], set[str]]]:
    """Airflow's REST API and auth routes, from the OpenAPI files shipped in the package."""
    import importlib.util

    spec = importlib.util.find_spec("airflow")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    routes = []
    for name in (
        "core_api/openapi/v2-rest-api-generated.yaml",
        "auth/managers/simple/openapi/v2-simple-auth-manager-generated.yaml",
    ):
        document = yaml.safe_load((package / "api_fastapi" / name).read_text())
        for template, operations in document["paths"].items():
            pattern = re.compile(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template)))
            routes.append((pattern, {method.upper() for method in operations}))
    return routes


@pytest.mark.parametrize(
    ("command", "request_"),
    [(c, r) for c, r in REQUESTS if r[0] == AIRFLOW_PORT],
    ids=lambda value: _id(value) if isinstance(value, Command) else None,
)
def test_airflow_request_is_a_route_of_the_rest_api(command: Command, request_) -> None:
    _port, method, path, _body = request_
    methods = [allowed for pattern, allowed in airflow_routes() if pattern.fullmatch(path)]
    assert methods, f"{command}\n{path} is not a path of Airflow's REST API"
    assert any(method in allowed for allowed in methods), f"{command}\n{path} does not take {method}"
