"""Benchmark of the local model server: HTTP predict latency and throughput against the bare model.

The server runs as its own process (``python -m include.mlops.serving``) on
loopback, serving the diabetes model as built by its builder (untrained: the
cost of a call does not depend on the weights).  The load generator is a
second process: a small asyncio HTTP/1.1 client over keep-alive connections
(``asyncio-keepalive-client`` below), with 1 or 8 concurrent connections, each
sending 1-row or 32-row ``{"instances": ...}`` predicts for a fixed time.  The
baseline is the same SavedModel's ``serving_default`` signature called
in-process on the same rows.

Reported: p50/p99 latency (ms), throughput (requests/s and rows/s), the ratio
HTTP p50 / bare-model p50, and the serving overhead per row at batch 32.  On
the 2-core CI machines the client and server share the cores, so the
8-client numbers measure saturation more than latency.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

log = logging.getLogger(__name__)

SECONDS_PER_RUN = 4.0
WARMUP_SECONDS = 0.5
CONCURRENCY = (1, 8)
BATCHES = (1, 32)

LOAD_GENERATOR = r"""
import asyncio, json, sys, time
host, port, path, body_file, concurrency, seconds, warmup = sys.argv[1:8]
body = open(body_file, "rb").read()
request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body

async def worker(latencies, errors, start_at, stop_at):
    reader, writer = await asyncio.open_connection(host, int(port))
    while True:
        began = time.perf_counter()
        if began >= stop_at:
            break
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        ended = time.perf_counter()
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(head.split(b"\r\n")[0].decode())
        elif began >= start_at:
            latencies.append(ended - began)
    writer.close()

async def main():
    latencies, errors = [], []
    now = time.perf_counter()
    start_at, stop_at = now + float(warmup), now + float(warmup) + float(seconds)
    await asyncio.gather(*(worker(latencies, errors, start_at, stop_at) for _ in range(int(concurrency))))
    print(json.dumps({"latencies": latencies, "errors": errors[:5], "error_count": len(errors),
                      "seconds": float(seconds)}))

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _build_registry(root: Path) -> tuple[Any, Path, Any]:
    """Register the diabetes model (builder architecture) as version 1 with ``stable`` on it."""
    import numpy as np

    from include.mlops.config import find_model_config
    from include.mlops.registry.filesystem import Registry
    from include.mlops.training.datasets import Dataset, training_stats
    from include.mlops.training.modeling import build_model, resolve_hparams
    from include.mlops.training.savedmodel import export_saved_model

    config = find_model_config("diabetes")
    n = len(config.features)
    rng = np.random.default_rng(0)
    data = Dataset(
        features=rng.normal(size=(256, n)).astype("float32"),
        labels=rng.normal(150, 50, size=256).astype("float32"),
        row_ids=np.arange(256),
    )
    model = build_model(config, resolve_hparams(config), training_stats(config, data))
    export_saved_model(model, root / "candidate", n)
    registry = Registry(root / "models")
    registry.register(config.serving_name, root / "candidate", metrics={}, lineage={"dag_id": "bench", "run_id": "1"})
    registry.set_label(config.serving_name, "stable", 1)
    return config, registry.version_dir(config.serving_name, 1), data.features


def _bare_model(version_dir: Path, rows: Any, batch: int, seconds: float = 2.0) -> dict[str, float]:
    from include.mlops.training.savedmodel import load_serving_fn

    predict = load_serving_fn(version_dir)
    sample = rows[:batch]
    for _ in range(50):
        predict(sample)
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        began = time.perf_counter()
        predict(sample)
        times.append(time.perf_counter() - began)
    return {
        "p50_ms": statistics.median(times) * 1e3,
        "p99_ms": _percentile(times, 0.99) * 1e3,
        "calls": len(times),
    }


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the model server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and b"AVAILABLE" in response.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the model server did not serve {url} within {timeout:g} s")


def run(results_dir: Path) -> dict[str, Any]:
    """Run the benchmark and write ``results_dir / "serving.json"``; returns the results."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        root = Path(tmp)
        config, version_dir, rows = _build_registry(root)
        name = config.serving_name
        baseline = {f"batch_{b}": _bare_model(version_dir, rows, b) for b in BATCHES}
        log.info("Bare model: %s", baseline)

        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        server = subprocess.Popen(
            [sys.executable, "-m", "include.mlops.serving", "--registry", str(root / "models"), "--port", str(port),
             "--no-predlog", "--log-level", "warning"],
            cwd=PROJECT_ROOT, env=env,
        )  # fmt: skip
        http: dict[str, Any] = {}
        try:
            _wait_ready(f"http://127.0.0.1:{port}/v1/models/{name}/labels/stable", server)
            path = f"/v1/models/{name}/labels/stable:predict"
            for batch in BATCHES:
                body_file = root / f"body-{batch}.json"
                body_file.write_text(json.dumps({"instances": rows[:batch].tolist()}))
                for clients in CONCURRENCY:
                    out = subprocess.run(
                        [sys.executable, "-c", LOAD_GENERATOR, "127.0.0.1", str(port), path, str(body_file),
                         str(clients), str(SECONDS_PER_RUN), str(WARMUP_SECONDS)],
                        capture_output=True, text=True, check=True, timeout=120,
                    )  # fmt: skip
                    raw = json.loads(out.stdout.strip().splitlines()[-1])
                    latencies = raw["latencies"]
                    if raw["error_count"] or not latencies:
                        raise RuntimeError(f"load run batch={batch} clients={clients} failed: {raw['errors']}")
                    throughput = len(latencies) / raw["seconds"]
                    key = f"batch_{batch}_clients_{clients}"
                    http[key] = {
                        "batch": batch,
                        "clients": clients,
                        "requests": len(latencies),
                        "p50_ms": statistics.median(latencies) * 1e3,
                        "p99_ms": _percentile(latencies, 0.99) * 1e3,
                        "requests_per_s": throughput,
                        "rows_per_s": throughput * batch,
                        "ratio_p50_vs_bare_model": statistics.median(latencies)
                        * 1e3
                        / baseline[f"batch_{batch}"]["p50_ms"],
                    }
                    log.info("%s: %s", key, http[key])
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    single = http["batch_32_clients_1"]
    results = {
        "benchmark": "serving",
        "load_generator": "asyncio-keepalive-client (Python asyncio HTTP/1.1 over keep-alive connections, own process)",
        "server": "python -m include.mlops.serving (FastAPI + uvicorn, 1 process)",
        "model": f"{name} (diabetes builder architecture, {len(config.features)} features)",
        "cpu_count": os.cpu_count(),
        "seconds_per_run": SECONDS_PER_RUN,
        "bare_model": baseline,
        "http": http,
        "overhead_per_row_us_at_batch_32": (single["p50_ms"] - baseline["batch_32"]["p50_ms"]) * 1e3 / 32,
        "overhead_per_request_ms_at_batch_1": http["batch_1_clients_1"]["p50_ms"] - baseline["batch_1"]["p50_ms"],
    }
    (results_dir / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    print(json.dumps(run(PROJECT_ROOT / "benchmarks" / "results"), indent=2))
