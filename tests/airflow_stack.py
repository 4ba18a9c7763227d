"""Start a real Airflow (scheduler, API server, DAG processor) on a private home, and drive it over REST.

Used by the end-to-end test and by the benchmarks.  Nothing is mocked: the
components are the ``airflow`` CLI's own processes on a loopback port, with a
SQLite metadata DB and the LocalExecutor.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ADMIN_PASSWORD = "lifecycle-e2e"
TERMINAL = {"success", "failed"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowStack:
    """A running Airflow: its home, its REST client and its processes."""

    def __init__(self, home: Path, artifact_root: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.artifact_root = artifact_root
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server_port = free_port()
        self.server_url = f"http://127.0.0.1:{self.server_port}"
        self.env = self._environment(extra_env or {})
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.client: httpx.Client | None = None

    def _environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        passwords = self.home / "passwords.json"
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW_CONFIG": str(PROJECT_ROOT / "airflow.cfg"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
                "AIRFLOW__API__PORT": str(self.port),
                # SQLite allows one writer at a time; wait for the lock rather than fail after 5 s.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}?timeout=30",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "MLOPS_ARTIFACT_ROOT": str(self.artifact_root),
                # The deploy task reaches the model server through this Connection.
                "AIRFLOW_CONN_MODEL_SERVER_DEFAULT": self.server_url,
                "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **extra,
            }
        )
        return env

    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command against this stack's home."""
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": ADMIN_PASSWORD}))
        self.airflow("db", "migrate")
        self.airflow("pools", "set", "model_deploy", "1", "one deploy at a time")
        airflow = [sys.executable, "-m", "airflow"]
        commands = {
            "api-server": [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            "scheduler": [*airflow, "scheduler"],
            "dag-processor": [*airflow, "dag-processor"],
            "model-server": [
                *(sys.executable, "-m", "include.mlops.serving"),
                *("--registry", str(self.artifact_root / "models"), "--port", str(self.server_port)),
            ],
        }
        for name, argv in commands.items():
            log = open(self.home / f"{name}.log", "wb")
            self.processes[name] = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_for_api(timeout)
        token = self._token()
        self.client = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def _wait_for_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                api = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2)
                server = httpx.get(f"{self.server_url}/monitoring/prometheus/metrics", timeout=2)
                if api.status_code == 200 and server.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the API or model server did not answer within {timeout}s; see the logs in {self.home}")

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.home / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{tail}")

    def _token(self) -> str:
        response = httpx.post(
            f"{self.base_url}/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD}, timeout=30
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self) -> httpx.Client:
        assert self.client is not None, "start() the stack first"
        return self.client

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """Wait until the DAG processor has parsed ``dag_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            response = self.api().get(f"/api/v2/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            time.sleep(2)
        raise TimeoutError(f"{dag_id} was not parsed within {timeout}s; see {self.home}/dag-processor.log")

    def trigger(self, dag_id: str, logical_date: str, conf: Mapping[str, Any] | None = None) -> httpx.Response:
        return self.api().post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": dict(conf or {})}
        )

    def dag_runs(self, dag_id: str, **filters: str) -> list[dict[str, Any]]:
        response = self.api().get(f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100, **filters})
        response.raise_for_status()
        return response.json()["dag_runs"]

    def wait_for_runs(
        self,
        dag_id: str,
        run_ids: set[str] | None = None,
        *,
        count: int | None = None,
        timeout: float = 900,
        **filters: str,
    ) -> list[dict[str, Any]]:
        """Wait until the given runs (or ``count`` runs matching ``filters``) have finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            runs = [r for r in self.dag_runs(dag_id, **filters) if run_ids is None or r["dag_run_id"] in run_ids]
            expected = len(run_ids) if run_ids is not None else count
            if len(runs) == expected and all(r["state"] in TERMINAL for r in runs):
                return runs
            time.sleep(3)
        raise TimeoutError(f"runs of {dag_id} did not finish within {timeout}s: {self.dag_runs(dag_id)}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        response = self.api().get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        response.raise_for_status()
        return {ti["task_id"]: ti["state"] for ti in response.json()["task_instances"]}

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def airflow_stack(workdir: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[AirflowStack]:
    stack = AirflowStack(workdir / "airflow-home", workdir / "artifacts", extra_env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
