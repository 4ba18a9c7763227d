"""Bring docker-compose.yaml up for real, drive a lifecycle run through it over REST, take it down.

Used by the compose test (``test_compose_stack.py``) and by ``benchmarks/compose.py``.  The stack runs
from images built on this machine (``include/docker/ci/build.sh``; tags in ``include/docker/ci/images.env``),
under a project name, network, ports and artifact/log folders of its own, so it never meets ``make run``,
another test's stack or the checkout's ``artifacts/``.  Grafana is left out: no image or package for it can
be had here, so its service is checked by ``docker-compose config`` only (``tests/infra/test_compose.py``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.fernet import Fernet
from dotenv import dotenv_values

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
IMAGES_ENV = ROOT / "include" / "docker" / "ci" / "images.env"
NOT_STARTED = frozenset({"grafana"})  # no installable Grafana here; `config` checks its service
ONE_SHOT = frozenset({"airflow-init"})
BUILD_HINT = "build them with include/docker/ci/build.sh (.ci/run does; see docs/compose.md)"
TERMINAL = {"success", "failed"}
DIABETES_ROW = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]


class ComposeError(RuntimeError):
    """The stack did not come up or the run did not finish; the message says which and shows the logs."""


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file, read as docker-compose reads them (python-dotenv)."""
    return {name: value or "" for name, value in dotenv_values(path).items()}


def local_images() -> dict[str, str]:
    """The image variables that point docker-compose.yaml at the images built here."""
    return read_env_file(IMAGES_ENV)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComposeStack:
    """One compose project: its generated ``.env``, its folders and its REST clients."""

    workdir: Path
    project: str = field(default_factory=lambda: f"mlopstest{secrets.token_hex(4)}")
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    ports: dict[str, int] = field(default_factory=dict)
    token: str | None = None

    @property
    def env_file(self) -> Path:
        return self.workdir / ".env"

    @property
    def artifacts(self) -> Path:
        return self.workdir / "artifacts"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['AIRFLOW_API_PORT']}"

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['MODEL_SERVER_PORT']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['PROMETHEUS_PORT']}"

    def write_env(self, images: Mapping[str, str]) -> None:
        """A ``.env`` as a user writes it from ``.env.example``: real secrets, a real Fernet key."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for folder in ("artifacts", "logs"):
            (self.workdir / folder).mkdir(exist_ok=True)
        self.ports = {
            name: free_port()
            for name in ("AIRFLOW_API_PORT", "MODEL_SERVER_PORT", "PROMETHEUS_PORT", "PUSHGATEWAY_PORT")
        }
        uid = os.getuid()
        values = {
            # root's files would be root's; the image's own airflow user (50000) is what a user gets by default.
            "AIRFLOW_UID": str(uid if uid else 50000),
            **images,
            "AIRFLOW_ADMIN_USERNAME": "admin",
            "AIRFLOW_ADMIN_PASSWORD": self.admin_password,
            "POSTGRES_USER": "airflow",
            "POSTGRES_PASSWORD": secrets.token_hex(24),
            "POSTGRES_DB": "airflow",
            "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW_API_SECRET_KEY": secrets.token_hex(32),
            "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
            **{name: str(port) for name, port in self.ports.items()},
            "MLOPS_DOCKER_NETWORK": f"{self.project}-net",
            "MLOPS_ARTIFACTS_DIR": str(self.artifacts),
            "AIRFLOW_LOGS_DIR": str(self.workdir / "logs"),
            # Only the DAG the test unpauses runs (the others would train on the same two cores).
            "AIRFLOW_DAGS_ARE_PAUSED_AT_CREATION": "true",
            # The scheduler starts when the API server is healthy: check that (and the scheduler) often, so
            # that waits stay short, within a start period long enough for two busy cores (a pass in it
            # counts at once; a failure does not count against the retries).
            "AIRFLOW_HEALTHCHECK_INTERVAL": "5s",
            "AIRFLOW_HEALTHCHECK_START_PERIOD": "300s",
        }
        self.env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        executable = shutil.which("docker-compose") or "docker-compose"
        command = [executable, "--env-file", str(self.env_file), "--project-directory", str(ROOT)]
        command += ["-p", self.project, "-f", str(COMPOSE_FILE), *args]
        # Only PATH and HOME: the caller's shell variables must not leak into what compose resolves.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ComposeError(f"docker-compose {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc

    def services(self) -> list[str]:
        """The services `up` starts: every one of the default profile except Grafana."""
        # A service in a profile (airflow-cli) is not started by default.
        resolved = yaml.safe_load(self.compose("config").stdout)["services"]
        return [name for name, spec in resolved.items() if name not in NOT_STARTED and not spec.get("profiles")]

    def containers(self) -> dict[str, dict[str, Any]]:
        """``docker inspect`` of this project's containers, by service."""
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not ids:
            return {}
        inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, check=True).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    def up(self, timeout: float = 600) -> float:
        """`up -d` the stack and wait until every service is healthy (init: exited 0); returns the seconds."""
        start = time.monotonic()
        services = self.services()
        # v1 waits for each depends_on condition itself; a dependency that never gets healthy fails `up`.
        self.compose("up", "-d", "--no-build", *services, timeout=timeout)
        self.wait_healthy(services, deadline=start + timeout)
        return time.monotonic() - start

    def wait_healthy(self, services: list[str], deadline: float) -> None:
        """Until each service's health check passes (a one-shot service: it exited 0); fails on a non-zero exit."""
        while True:
            containers = self.containers()
            pending = []
            for name in services:
                state = containers.get(name, {}).get("State", {})
                if name in ONE_SHOT:
                    if state.get("Status") == "exited" and state.get("ExitCode") != 0:
                        raise ComposeError(f"{name} exited with {state.get('ExitCode')}")
                    if state.get("Status") != "exited":
                        pending.append(name)
                elif state.get("Health", {}).get("Status") != "healthy":
                    pending.append(f"{name} ({state.get('Health', {}).get('Status') or state.get('Status')})")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ComposeError(f"not healthy in time: {', '.join(pending)}")
            time.sleep(2)

    def api(self) -> httpx.Client:
        """A REST client logged in through /auth/token as the admin of the generated .env."""
        if self.token is None:
            response = httpx.post(
                f"{self.api_url}/auth/token", json={"username": "admin", "password": self.admin_password}, timeout=30
            )
            response.raise_for_status()
            self.token = response.json()["access_token"]
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def run_dag(self, dag_id: str, conf: Mapping[str, Any] | None = None, timeout: float = 900) -> dict[str, Any]:
        """Trigger ``dag_id`` over REST, unpause it, and wait for the run (see ``run_paused_dag``)."""
        with self.api() as api:
            return run_paused_dag(api, dag_id, conf, timeout)

    def logs_tail(self, lines: int = 40) -> str:
        """Each service's last log lines, and the end of every failed task's log."""
        parts = []
        for name in sorted(self.containers()):
            proc = self.compose("logs", "--no-color", f"--tail={lines}", name, check=False, timeout=60)
            parts.append(f"----- {name} (last {lines} lines) -----\n{proc.stdout}{proc.stderr}")
        for task_log in sorted((self.workdir / "logs").glob("dag_id=*/run_id=*/task_id=*/attempt=*.log")):
            text = task_log.read_text(errors="replace")
            if '"level":"error"' in text or "Task failed" in text:
                tail = "\n".join(text.splitlines()[-lines:])
                parts.append(f"----- task log {task_log.relative_to(self.workdir)} -----\n{tail}")
        return "\n".join(parts)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=300)


def run_paused_dag(
    api: httpx.Client, dag_id: str, conf: Mapping[str, Any] | None = None, timeout: float = 900
) -> dict[str, Any]:
    """Trigger a paused ``dag_id`` over REST, unpause it, and wait for the run; returns the finished run.

    The run takes the DAG's next scheduled logical date, so unpausing adds no scheduled run of that
    date beside it (the scheduler skips a date that already has a run). The result also holds the
    run's task states and every run of the DAG as ``(run id, logical date)``.
    """
    deadline = time.monotonic() + timeout
    while (dag := api.get(f"/api/v2/dags/{dag_id}")).status_code == 404:
        if time.monotonic() > deadline:
            raise ComposeError(f"{dag_id} was not parsed within {timeout}s")
        time.sleep(2)
    dag.raise_for_status()
    logical_date = dag.json()["next_dagrun_logical_date"]
    response = api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": dict(conf or {})})
    response.raise_for_status()
    run_id = response.json()["dag_run_id"]
    api.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    while (run := api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json())["state"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise ComposeError(f"run {run_id} of {dag_id} did not finish within {timeout}s: {run['state']}")
        time.sleep(3)
    instances = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    run["task_states"] = {ti["task_id"]: ti["state"] for ti in instances.json()["task_instances"]}
    runs = api.get(f"/api/v2/dags/{dag_id}/dagRuns").json()["dag_runs"]
    run["all_runs"] = [(r["dag_run_id"], r["logical_date"]) for r in runs]
    return run


@contextmanager
def compose_stack(workdir: Path, images: Mapping[str, str] | None = None) -> Iterator[ComposeStack]:
    """A generated ``.env`` and a stack under it; on failure prints each service's last log lines; always down -v."""
    stack = ComposeStack(workdir)
    stack.write_env(local_images() if images is None else images)
    try:
        yield stack
    except BaseException:
        print(stack.logs_tail(), flush=True)
        raise
    finally:
        stack.down()
