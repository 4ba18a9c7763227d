"""Benchmark of the local model server: HTTP predict latency and throughput against the bare model.

The server runs as its own process (``python -m include.mlops.serving``) on
loopback, serving the diabetes model as built by its builder (untrained: the
cost of a call does not depend on the weights).  The load generator is a
second process: a small asyncio HTTP/1.1 client over keep-alive connections
(``asyncio-keepalive-client`` below), with 1 or 8 concurrent connections, each
sending 1-row or 32-row ``{"instances": ...}`` predicts for a fixed time.  The
baseline is the same SavedModel's ``serving_default`` signature called
in-process on the same rows.

Two reference servers run beside it (``benchmarks/minimal_server.py``, on
uvicorn with the same settings): ``minimal_model_app``, which parses the body,
calls the same signature and writes the predictions with no TF Serving
format, errors, routes or metrics, and ``uvicorn_fixed_answer``, which
answers a fixed body without a model.  They tell what any ASGI app on
uvicorn pays on this machine, and so how much of the server's overhead is its
own.  Each round times the bare model, then every case on each server, one
window after the other (the order flipping each round), so all see the same
machine; the references run the 1-client cases only.

Reported per server: the medians over the rounds of each window's p50 and p99
latency (ms) and throughput (requests/s and rows/s), the ratio HTTP p50 /
bare-model p50, and the serving overhead per row at batch 32 and per request
at batch 1 (the median of each round's difference to the bare model timed in
that round).  On the 2-core CI machines client and server share the cores, so
the 8-client numbers measure saturation more than latency.
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

SECONDS_PER_RUN = 3.0
WARMUP_SECONDS = 0.5
CONCURRENCY = (1, 8)
BATCHES = (1, 32)
ROUNDS = 3

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


def _bare_model(predict: Any, rows: Any, batch: int, seconds: float = 2.0) -> dict[str, float]:
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


def _load_window(port: int, path: str, body_file: Path, clients: int) -> dict[str, Any]:
    """One load window of the load generator: its p50, p99 and throughput."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_GENERATOR, "127.0.0.1", str(port), path, str(body_file), str(clients),
         str(SECONDS_PER_RUN), str(WARMUP_SECONDS)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the load generator exited with code {done.returncode}: {done.stderr.strip()[-500:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    latencies = raw["latencies"]
    if raw["error_count"] or not latencies:
        raise RuntimeError(f"load window of {clients} clients to {path} failed: {raw['errors']}")
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "requests_per_s": len(latencies) / raw["seconds"],
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


def serve(argv: list[str], tree: Path = PROJECT_ROOT) -> subprocess.Popen[bytes]:
    """``python -m <argv>`` run from the source tree ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=tree, env=env)


def model_server_argv(registry: Path, port: int) -> list[str]:
    """The model server as every serving benchmark runs it: no prediction log, warnings only."""
    return ["include.mlops.serving", "--registry", str(registry), "--port", str(port), "--no-predlog",
            "--log-level", "warning"]  # fmt: skip


# The servers: the model server, then the references (see the module's docstring).
SERVER = "model_server"
REFERENCES = ("minimal_model_app", "uvicorn_fixed_answer")


def _commands(registry: Path, version_dir: Path, ports: dict[str, int]) -> dict[str, list[str]]:
    return {
        SERVER: model_server_argv(registry, ports[SERVER]),
        "minimal_model_app": ["benchmarks.minimal_server", "--model", str(version_dir),
                              "--port", str(ports["minimal_model_app"])],
        "uvicorn_fixed_answer": ["benchmarks.minimal_server", "--port", str(ports["uvicorn_fixed_answer"]),
                                 "--fixed"],
    }  # fmt: skip


def run(results_dir: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    """Run the benchmark and write ``results_dir / "serving.json"``; returns the results."""
    from include.mlops.training.savedmodel import load_serving_fn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    measured: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        root = Path(tmp)
        config, version_dir, rows = _build_registry(root)
        name = config.serving_name
        predict = load_serving_fn(version_dir)
        ports = {server: _free_port() for server in (SERVER, *REFERENCES)}
        servers = {server: serve(argv) for server, argv in _commands(root / "models", version_dir, ports).items()}
        try:
            for server, process in servers.items():
                _wait_ready(f"http://127.0.0.1:{ports[server]}/v1/models/{name}/labels/stable", process)
            path = f"/v1/models/{name}/labels/stable:predict"
            bodies = {}
            for batch in BATCHES:
                bodies[batch] = root / f"body-{batch}.json"
                bodies[batch].write_text(json.dumps({"instances": rows[:batch].tolist()}))
            for round_ in range(rounds):
                bare = {f"batch_{b}": _bare_model(predict, rows, b) for b in BATCHES}
                http: dict[str, dict[str, Any]] = {server: {} for server in servers}
                for batch in BATCHES:
                    for clients in CONCURRENCY:
                        runs = [SERVER, *REFERENCES] if clients == 1 else [SERVER]
                        for server in runs if round_ % 2 == 0 else runs[::-1]:
                            window = _load_window(ports[server], path, bodies[batch], clients)
                            http[server][f"batch_{batch}_clients_{clients}"] = window
                measured.append({"bare_model": bare, "http": http})
                log.info("round %d/%d: bare %s, http %s", round_ + 1, rounds, bare, http)
        finally:
            for process in servers.values():
                process.terminate()
            for process in servers.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()

    results = {
        "benchmark": "serving",
        "load_generator": "asyncio-keepalive-client (Python asyncio HTTP/1.1 over keep-alive connections, own process)",
        "server": "python -m include.mlops.serving (FastAPI + uvicorn, 1 process)",
        "model": f"{name} (diabetes builder architecture, {len(config.features)} features)",
        "cpu_count": os.cpu_count(),
        "seconds_per_run": SECONDS_PER_RUN,
        "rounds": rounds,
        **summarise(measured, SERVER),
        "references": {server: summarise(measured, server) for server in REFERENCES},
        "windows": measured,
    }
    (results_dir / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def summarise(rounds: list[dict[str, Any]], server: str) -> dict[str, Any]:
    """Medians over the rounds for one server: the bare model, each HTTP case, and the overheads.

    Each round's overhead is its HTTP p50 minus the bare model's p50 timed in that round, so a round on a
    busier machine is compared with a bare model on that same machine.
    """
    bare = {
        key: {stat: statistics.median(r["bare_model"][key][stat] for r in rounds) for stat in ("p50_ms", "p99_ms")}
        for key in rounds[0]["bare_model"]
    }
    http: dict[str, Any] = {}
    for key in rounds[0]["http"][server]:
        batch = int(key.split("_")[1])
        windows = [r["http"][server][key] for r in rounds]
        p50 = statistics.median(w["p50_ms"] for w in windows)
        throughput = statistics.median(w["requests_per_s"] for w in windows)
        http[key] = {
            "batch": batch,
            "clients": int(key.split("_")[3]),
            "p50_ms": p50,
            "p99_ms": statistics.median(w["p99_ms"] for w in windows),
            "requests_per_s": throughput,
            "rows_per_s": throughput * batch,
            "ratio_p50_vs_bare_model": statistics.median(
                r["http"][server][key]["p50_ms"] / r["bare_model"][f"batch_{batch}"]["p50_ms"] for r in rounds
            ),
        }

    def overhead(key: str, batch: int) -> float:
        return statistics.median(
            r["http"][server][key]["p50_ms"] - r["bare_model"][f"batch_{batch}"]["p50_ms"] for r in rounds
        )

    return {
        "bare_model": bare,
        "http": http,
        "overhead_per_row_us_at_batch_32": overhead("batch_32_clients_1", 32) * 1e3 / 32,
        "overhead_per_request_ms_at_batch_1": overhead("batch_1_clients_1", 1),
    }


if __name__ == "__main__":
    done = run(PROJECT_ROOT / "benchmarks" / "results")
    print(json.dumps({key: value for key, value in done.items() if key != "windows"}, indent=2))
