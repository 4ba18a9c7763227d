"""A real Airflow API server with the FAB auth manager, for the Models view's API tests and benchmark.

Only the API server runs (no scheduler): the Models view reads the artifact
root and the metadata DB, and the FAB auth manager gives per-DAG permissions
(SimpleAuthManager has none), so a user who may read one lifecycle DAG and
not another is a real FAB role with ``can_read`` on ``DAG:lifecycle__<name>``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

# Users made with FAB's own security manager (the `airflow users create` CLI, without a process each).
USERS_SCRIPT = """
import json, sys
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
users = json.loads(sys.argv[1])
with get_application_builder() as appbuilder:
    sm = appbuilder.sm
    for user in users:
        role = sm.find_role(user["role"]) or sm.add_role(user["role"])
        for dag_id in user.get("dags", []):
            sm.add_permission_to_role(role, sm.create_permission("can_read", f"DAG:{dag_id}"))
        if sm.find_user(username=user["username"]) is None:
            made = sm.add_user(user["username"], user["username"], "Test", f"{user['username']}@example.com", role,
                               user["password"])
            assert made, f"could not create {user['username']}"
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """``airflow api-server`` on a loopback port, with its own home, SQLite DB and artifact root."""

    def __init__(self, home: Path, artifact_root: Path) -> None:
        self.home = home
        self.artifact_root = artifact_root
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW_CONFIG": str(PROJECT_ROOT / "airflow.cfg"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
                "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=30",
                "MLOPS_ARTIFACT_ROOT": str(artifact_root),
                "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            }
        )
        self.env = env

    def airflow(self, *args: str) -> None:
        """Run an ``airflow`` CLI command against this server's home and DB."""
        self._run(sys.executable, "-m", "airflow", *args)

    def _run(self, *args: str) -> None:
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:4])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def start(self, users: list[Mapping[str, object]], timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
        self._run(sys.executable, "-c", USERS_SCRIPT, json.dumps(users))
        with open(self.home / "api-server.log", "wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API server exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the API server did not answer within {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.home / "api-server.log"
        return path.read_text(errors="replace")[-3000:] if path.is_file() else ""

    def token(self, username: str, password: str) -> str:
        response = httpx.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # The server leads its own session (start_new_session): stop it with any workers it started.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def api_server(workdir: Path, artifact_root: Path, users: list[Mapping[str, object]]) -> Iterator[ApiServer]:
    server = ApiServer(workdir / "airflow-home", artifact_root)
    try:
        server.start(users)
        yield server
    finally:
        server.stop()
