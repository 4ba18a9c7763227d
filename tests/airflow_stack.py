"""Start a real Airflow (API server, scheduler, DAG processor, triggerer, model server) and drive it over REST.

Used by the end-to-end tests and by the benchmarks.  Nothing is mocked: the
components are started by supervisord from ``scripts/supervisord.conf``, the same
file ``make run`` uses, on loopback ports of a private home, with a SQLite
metadata DB and the LocalExecutor.

The model configs are copied with their schedules moved off the wall clock: each
DAG still starts its latest scheduled run by itself, but its next one falls twelve
hours away, so a test that runs across midnight (or the hour) does not see a second
nightly run it did not ask for.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ADMIN_PASSWORD = "lifecycle-e2e"
TERMINAL = {"success", "failed"}
SUPERVISOR_CONF = PROJECT_ROOT / "scripts" / "supervisord.conf"
STACK_PROCESSES = PROJECT_ROOT / "scripts" / "stack_processes.py"


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    """Poll ``condition`` every ``every`` seconds until it holds; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def models_off_the_clock(source: Path, folder: Path, *, lifecycle_schedule: str | None = None) -> Path:
    """Copy the model configs and builders in ``source`` to ``folder``, every schedule daily twelve hours from now.

    The latest scheduled interval of each DAG (lifecycle and monitor) has ended, so its run
    starts as soon as the DAG is unpaused, as under ``make run``; the next one is half a day away.
    ``lifecycle_schedule``: the lifecycle DAGs' cron instead (a test that needs the nightly run's
    interval to have ended days ago gives a weekly one; it must be off the clock as well).
    """
    folder.mkdir(parents=True, exist_ok=True)
    hour = (dt.datetime.now(dt.UTC).hour + 12) % 24
    off_the_clock = f"0 {hour} * * *"
    for path in sorted(source.iterdir()):
        if path.suffix == ".py":
            shutil.copy(path, folder / path.name)
        elif path.suffix in (".yaml", ".yml"):
            document = yaml.safe_load(path.read_text())
            document["schedule"] = lifecycle_schedule or off_the_clock
            document.setdefault("monitor", {})["schedule"] = off_the_clock
            (folder / path.name).write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


class AirflowStack:
    """A running Airflow: its home, its REST client and its processes."""

    def __init__(self, home: Path, artifact_root: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.artifact_root = artifact_root
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server_port = free_port()
        self.server_url = f"http://127.0.0.1:{self.server_port}"
        # Private log server ports, so that this stack never collides with `make run` or another test's.
        self.prometheus_port = free_port()
        self.pushgateway_port = free_port()
        self.worker_log_port = free_port()
        self.triggerer_log_port = free_port()
        self.env = self._environment(extra_env or {})
        self.supervisor: subprocess.Popen[bytes] | None = None
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
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.triggerer_log_port),
                "MLOPS_PROJECT_ROOT": str(PROJECT_ROOT),
                "MLOPS_API_HOST": "127.0.0.1",
                "MLOPS_SERVER_PORT": str(self.server_port),
                # Prometheus and the Pushgateway (scripts/supervisord.conf), on private ports as well.
                "MLOPS_PROMETHEUS_PORT": str(self.prometheus_port),
                "MLOPS_PUSHGATEWAY_PORT": str(self.pushgateway_port),
                "AIRFLOW_CONN_PROMETHEUS_DEFAULT": f"http://127.0.0.1:{self.prometheus_port}",
                "AIRFLOW_CONN_PUSHGATEWAY_DEFAULT": f"http://127.0.0.1:{self.pushgateway_port}",
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

    def create_backfill(self, dag_id: str, from_date: str, to_date: str, attempts: int = 5) -> None:
        """``airflow backfill create``, run again when SQLite reports its lock.

        With SQLite, a write that follows a read in the same transaction fails at once
        with ``database is locked`` when the scheduler committed in between (the busy
        timeout does not apply). Airflow then deletes the partial backfill, so the
        command is safe to repeat, which is what the README tells users to do.
        """
        args = ("backfill", "create", "--dag-id", dag_id, "--from-date", from_date, "--to-date", to_date)
        for attempt in range(1, attempts + 1):
            proc = self.airflow(*args, check=False)
            if proc.returncode == 0:
                return
            if "database is locked" not in proc.stderr + proc.stdout or attempt == attempts:
                raise RuntimeError(
                    f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                )
            time.sleep(attempt)

    def start(self, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": ADMIN_PASSWORD}))
        self.airflow("db", "migrate")
        self.airflow("pools", "set", "model_deploy", "1", "one deploy at a time")
        self.airflow("pools", "set", "mlops_tuning", "2", "tuning trials training at once")
        log = open(self.home / "supervisor-console.log", "wb")
        self.supervisor = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(SUPERVISOR_CONF)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_for_api(timeout)
        token = self._token()
        self.client = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def supervisorctl(self, *args: str) -> str:
        """Run ``supervisorctl`` against this stack's supervisord (e.g. ``pid scheduler``)."""
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(SUPERVISOR_CONF), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.stdout.strip()

    def pid(self, component: str) -> int:
        """The PID of a component's main process, as supervisord knows it (0 while it is not running)."""
        return int(self.supervisorctl("pid", component) or 0)

    def component_processes(self) -> list[int]:
        """Every live process of this stack (supervisord's session), leftovers of crashes included."""
        spec = importlib.util.spec_from_file_location("stack_processes", STACK_PROCESSES)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if self.supervisor is None:
            return []
        # supervisord leads its own session (start_new_session=True): the session ID is its PID.
        return [proc.pid for proc in module.session_processes(self.supervisor.pid)]

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
        if self.supervisor is not None and self.supervisor.poll() is not None:
            tail = (self.home / "supervisord.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"supervisord exited with {self.supervisor.returncode}:\n{tail}")

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

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.api().get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        response.raise_for_status()
        return response.json()["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def stop(self) -> None:
        """Stop the stack as Ctrl-C under `make run` does: SIGTERM to supervisord, then reap leftovers."""
        if self.client is not None:
            self.client.close()
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.terminate()
            try:
                self.supervisor.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait()
        if self.supervisor is not None:
            reap = [sys.executable, str(STACK_PROCESSES), "reap", "--session", str(self.supervisor.pid)]
            subprocess.run(reap, env=self.env, check=True, timeout=120)


@contextmanager
def airflow_stack(
    workdir: Path, extra_env: Mapping[str, str] | None = None, *, lifecycle_schedule: str | None = None
) -> Iterator[AirflowStack]:
    env = dict(extra_env or {})
    source = Path(env.get("MLOPS_MODELS_DIR", PROJECT_ROOT / "include" / "models"))
    folder = models_off_the_clock(source, workdir / "models-off-the-clock", lifecycle_schedule=lifecycle_schedule)
    env["MLOPS_MODELS_DIR"] = str(folder)
    stack = AirflowStack(workdir / "airflow-home", workdir / "artifacts", env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
