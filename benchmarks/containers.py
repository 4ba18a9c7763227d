"""Benchmark of the docker backend's per-step overhead.

The same step (snapshot, then validate on that snapshot) runs through the
``local`` backend's operator (a subprocess) and through the ``docker``
backend's operator (a container of the trainer image, created, attached,
waited for and removed), each a few times in alternation; we report the
median wall times and their ratio.  Both read and write the same kind of
artifact root, so the difference is the container's cost: engine round
trips, container start, and the interpreter start inside it.

    .venv/bin/python -c "from pathlib import Path; from benchmarks.containers import run; run(Path('benchmarks/results'))"
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
for entry in (str(PROJECT_ROOT / "plugins"), str(PROJECT_ROOT)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

log = logging.getLogger(__name__)

REPEATS = 3
INTERVAL = {"interval_start": "2026-11-19T00:00:00+00:00", "interval_end": "2026-11-20T00:00:00+00:00"}


def _operator(backend: str, step: str, arguments: dict[str, Any]) -> Any:
    from airflow.sdk import DAG

    from mlops_airflow.backends import step_operator

    with DAG(dag_id=f"bench_{backend}", schedule=None):
        return step_operator(backend, task_id=step, step=step, model="diabetes", resolve_arguments=lambda _: arguments)


def _timed(backend: str, step: str, arguments: dict[str, Any], run_id: str) -> tuple[float, dict[str, Any]]:
    task = _operator(backend, step, arguments)
    start = time.perf_counter()
    result = task.execute({"dag_run": SimpleNamespace(run_id=run_id)})
    return time.perf_counter() - start, result


def run(results_dir: Path, repeats: int = REPEATS) -> dict[str, Any]:
    """Median wall time per step on docker and local, and their ratio; written to ``containers.json``."""
    root = Path(tempfile.mkdtemp(prefix="mlops-bench-containers-"))
    previous = os.environ.get("MLOPS_ARTIFACT_ROOT")
    os.environ["MLOPS_ARTIFACT_ROOT"] = str(root)
    try:
        from mlops_airflow.container_steps import trainer_image

        times: dict[str, dict[str, list[float]]] = {s: {"local": [], "docker": []} for s in ("snapshot", "validate")}
        digests: set[str] = set()
        for i in range(repeats):
            # Alternate the order so that a slow moment of a shared machine hits both backends.
            for backend in ("docker", "local") if i % 2 else ("local", "docker"):
                run_id = f"{backend}_{i}"
                seconds, snap = _timed(backend, "snapshot", dict(INTERVAL), run_id)
                times["snapshot"][backend].append(seconds)
                digests.add(snap["sha256"])
                seconds, _ = _timed(backend, "validate", {"data": snap["data_uri"]}, run_id)
                times["validate"][backend].append(seconds)
                log.info("repeat %d %s done", i + 1, backend)
        steps = {}
        for step, by_backend in times.items():
            local, docker = statistics.median(by_backend["local"]), statistics.median(by_backend["docker"])
            steps[step] = {
                "local_median_s": round(local, 3),
                "docker_median_s": round(docker, 3),
                "docker_to_local_ratio": round(docker / local, 2),
                "docker_overhead_s": round(docker - local, 3),
                "local_s": [round(t, 3) for t in by_backend["local"]],
                "docker_s": [round(t, 3) for t in by_backend["docker"]],
            }
        result = {
            "benchmark": "containers",
            "image": trainer_image(),
            "repeats": repeats,
            "same_snapshot_on_both_backends": len(digests) == 1,
            "steps": steps,
        }
    finally:
        if previous is None:
            os.environ.pop("MLOPS_ARTIFACT_ROOT", None)
        else:
            os.environ["MLOPS_ARTIFACT_ROOT"] = previous
        shutil.rmtree(root, ignore_errors=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "containers.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(PROJECT_ROOT / "benchmarks" / "results"), indent=2))
