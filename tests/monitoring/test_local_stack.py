"""`make run`'s Prometheus and Pushgateway: the real programs of scripts/supervisord.conf under a real supervisord.

Only those two programs are taken out of the file (the Airflow ones would take minutes to start), with
the same commands, environment variables and restart settings.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from airflow_stack import SUPERVISOR_CONF, free_port
from tooling import require_executable

ROOT = Path(__file__).resolve().parents[2]
STACK_PROCESSES = ROOT / "scripts" / "stack_processes.py"
PROGRAMS = ("pushgateway", "prometheus")


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def monitoring_conf(tmp_path: Path) -> Path:
    """supervisord.conf with only its monitoring programs (and the sections supervisorctl needs)."""
    source = configparser.RawConfigParser()
    source.read(SUPERVISOR_CONF)
    conf = configparser.RawConfigParser()
    for section in ("supervisord", "unix_http_server", "rpcinterface:supervisor", "supervisorctl"):
        conf[section] = dict(source[section])
    for name in PROGRAMS:
        conf[f"program:{name}"] = dict(source[f"program:{name}"])
    path = tmp_path / "supervisord.conf"
    with path.open("w") as out:
        conf.write(out)
    return path


class Supervised:
    def __init__(self, conf: Path, env: dict[str, str]) -> None:
        self.conf, self.env = conf, env

    def status(self) -> dict[str, str]:
        out = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), "status"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[str], Supervised]]:
    started: list[subprocess.Popen[bytes]] = []

    def run(path: str) -> Supervised:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": path,
            "HOME": str(tmp_path),
            "AIRFLOW_HOME": str(home),
            "MLOPS_PROJECT_ROOT": str(ROOT),
            "MLOPS_SERVER_PORT": str(free_port()),
            "MLOPS_PROMETHEUS_PORT": str(free_port()),
            "MLOPS_PUSHGATEWAY_PORT": str(free_port()),
        }
        conf = monitoring_conf(tmp_path)
        log = (tmp_path / "supervisord-console.log").open("wb")
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        supervised = Supervised(conf, env)
        wait_until(lambda: set(supervised.status()) == set(PROGRAMS))
        return supervised

    yield run
    for supervisor in started:
        supervisor.terminate()
        try:
            supervisor.wait(timeout=40)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
        subprocess.run([sys.executable, STACK_PROCESSES, "reap", "--session", str(supervisor.pid)], check=True)


def test_without_the_binaries_each_program_says_how_to_install_and_stays_stopped(
    start: Callable[[str], Supervised],
) -> None:
    # Only the venv's bin (python, for stack_processes.py): no prometheus, no prometheus-pushgateway.
    supervised = start(str(Path(sys.executable).parent))
    wait_until(lambda: set(supervised.status().values()) == {"EXITED"})
    time.sleep(3)  # a restart loop would show here as STARTING/BACKOFF/FATAL and as repeated messages
    assert set(supervised.status().values()) == {"EXITED"}
    home = Path(supervised.env["AIRFLOW_HOME"])
    for name in PROGRAMS:
        log = (home / f"{name}.log").read_text()
        assert log.count("apt-get install prometheus prometheus-pushgateway") == 1, log


@pytest.mark.slow
def test_prometheus_scrapes_the_local_ports_and_loads_the_rules(start: Callable[[str], Supervised]) -> None:
    require_executable("prometheus", "install it with: apt-get install prometheus prometheus-pushgateway")
    require_executable("prometheus-pushgateway", "install it with: apt-get install prometheus prometheus-pushgateway")
    supervised = start(os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env = supervised.env
    prometheus = f"http://127.0.0.1:{env['MLOPS_PROMETHEUS_PORT']}"
    wait_until(lambda: supervised.status() == {"prometheus": "RUNNING", "pushgateway": "RUNNING"})

    def ready() -> bool:
        try:
            return httpx.get(f"{prometheus}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def scraped() -> dict[str, str]:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["scrapeUrl"] for t in targets}

    wait_until(ready, timeout=60)
    wait_until(lambda: len(scraped()) == 3)  # service discovery runs just after start-up
    assert scraped() == {
        "model-server": f"http://127.0.0.1:{env['MLOPS_SERVER_PORT']}/monitoring/prometheus/metrics",
        "pushgateway": f"http://127.0.0.1:{env['MLOPS_PUSHGATEWAY_PORT']}/metrics",
        "prometheus": f"http://127.0.0.1:{env['MLOPS_PROMETHEUS_PORT']}/metrics",
    }
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    committed = yaml.safe_load((ROOT / "include" / "monitoring" / "rules" / "lifecycle.rules.yml").read_text())
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in committed["groups"])
    # Storage and the Pushgateway's persistence live in the home, not in the checkout.
    home = Path(env["AIRFLOW_HOME"])
    assert (home / "prometheus" / "data").is_dir()
    assert (home / "prometheus" / "prometheus.yml").is_file()
