"""Benchmark of the compose stack: time to healthy, and one lifecycle run against the same run under make run.

1. ``docker-compose up -d`` of docker-compose.yaml (the images built by ``include/docker/ci/build.sh``,
   Grafana left out as in the compose test) until every service is healthy.
2. One run of lifecycle__diabetes triggered over REST through that stack, until it succeeded.
3. The same run, triggered the same way, on the stack of ``make run`` (``tests/airflow_stack.py``:
   supervisord, SQLite, the LocalExecutor, the local model server) in the same benchmark run: the
   baseline of the ratio.  Both stacks start with every DAG paused and run only this one.

    .venv/bin/python -m benchmarks compose
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
for entry in (PROJECT_ROOT / "tests", PROJECT_ROOT / "tests" / "compose"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

DAG_ID = "lifecycle__diabetes"


def _compose_figures(workdir: Path) -> dict[str, Any]:
    from compose_stack import compose_stack

    with compose_stack(workdir) as stack:
        healthy_s = stack.up()
        start = time.monotonic()
        run = stack.run_dag(DAG_ID)
        run_s = time.monotonic() - start
        if run["state"] != "success":
            raise RuntimeError(f"the compose run failed: {run['task_states']}")
    return {"up_to_all_healthy_s": round(healthy_s, 1), "lifecycle_run_s": round(run_s, 1)}


def _make_run_figures(workdir: Path) -> dict[str, Any]:
    from airflow_stack import airflow_stack
    from compose_stack import run_paused_dag

    start = time.monotonic()
    with airflow_stack(workdir, {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true"}) as stack:
        started_s = time.monotonic() - start
        start = time.monotonic()
        run = run_paused_dag(stack.api(), DAG_ID)
        run_s = time.monotonic() - start
        if run["state"] != "success":
            raise RuntimeError(f"the make run stack's run failed: {run['task_states']}")
    return {"start_to_api_ready_s": round(started_s, 1), "lifecycle_run_s": round(run_s, 1)}


def run(results_dir: Path) -> dict[str, Any]:
    """Compose up-to-healthy and run times, and the run's ratio to make run's; written to ``compose.json``."""
    workdir = Path(tempfile.mkdtemp(prefix="mlops-bench-compose-"))
    try:
        compose = _compose_figures(workdir / "compose")
        make_run = _make_run_figures(workdir / "make-run")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "benchmark": "compose",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dag_id": DAG_ID,
        "compose": compose,
        "make_run": make_run,
        "lifecycle_run_compose_to_make_run_ratio": round(compose["lifecycle_run_s"] / make_run["lifecycle_run_s"], 2),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "compose.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run(PROJECT_ROOT / "benchmarks" / "results"), indent=2))
