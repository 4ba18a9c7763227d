"""A real Prometheus and Pushgateway for tests, on free loopback ports.

Both are Debian's binaries (``apt-get install prometheus prometheus-pushgateway``;
``.ci/run`` installs them).  Prometheus scrapes the given model-server targets and
the Pushgateway every second, so a test sees a request in PromQL a few seconds
after it was sent.  Without the binaries a test skips (fails under CI).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from airflow_stack import free_port
from tooling import require_executable

INSTALL_HINT = "install it with: apt-get install prometheus prometheus-pushgateway"
SCRAPE_INTERVAL_S = 1
MODEL_SERVER_METRICS_PATH = "/monitoring/prometheus/metrics"


@dataclass
class PrometheusStack:
    url: str
    pushgateway_url: str
    config_path: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def query(self, promql: str, at: float | None = None) -> dict[str, Any]:
        """The HTTP API's answer to an instant query (``status``, ``data``, or ``error``)."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        return httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()

    def targets(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    def wait_for_targets_up(self, timeout: float = 30) -> None:
        """Until every scrape target has been scraped successfully once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus targets not all up after {timeout}s: {self.targets()}")

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Until ``promql`` returns a non-empty vector; returns it."""
        deadline = time.monotonic() + timeout
        answer: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = self.query(promql)
            if answer.get("status") == "success" and answer["data"]["result"]:
                return answer["data"]["result"]
            time.sleep(0.5)
        raise TimeoutError(f"{promql!r} returned nothing within {timeout}s (last answer: {answer})")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in self.logs
            if log.exists()
        )


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def prometheus_stack(
    workdir: Path, model_servers: Sequence[str] = (), rule_files: Sequence[Path] = ()
) -> Iterator[PrometheusStack]:
    """Start a Pushgateway and a Prometheus scraping it and ``model_servers`` (``host:port``)."""
    prometheus = require_executable("prometheus", INSTALL_HINT)
    pushgateway = require_executable("prometheus-pushgateway", INSTALL_HINT)
    workdir.mkdir(parents=True, exist_ok=True)
    push_port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": "model-server",
                "metrics_path": MODEL_SERVER_METRICS_PATH,
                "static_configs": [{"targets": list(model_servers)}],
            },
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{push_port}"]}],
            },
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    stack = PrometheusStack(
        url=f"http://127.0.0.1:{prom_port}",
        pushgateway_url=f"http://127.0.0.1:{push_port}",
        config_path=config_path,
    )
    commands = [
        ("pushgateway", [pushgateway, f"--web.listen-address=127.0.0.1:{push_port}"], stack.pushgateway_url),
        (
            "prometheus",
            [
                prometheus,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--web.enable-lifecycle",
            ],
            stack.url,
        ),
    ]
    try:
        for name, argv, url in commands:
            log = workdir / f"{name}.log"
            stack.logs.append(log)
            with log.open("wb") as out:
                process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            stack.processes.append(process)
            _wait_ready(url, process, log)
        yield stack
    finally:
        for process in stack.processes:
            process.terminate()
        for process in stack.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
