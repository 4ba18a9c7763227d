"""Benchmark of the lifecycle spine: DAG parse cost and orchestration overhead.

1. Parse time per DAG file: each file is imported in a fresh interpreter (with
   ``airflow.sdk`` already imported, so only the file's own cost is timed), and
   so is a trivial one-task DAG file; we report medians and the ratio.
2. Orchestration overhead: the wall time of one ``lifecycle__diabetes`` run
   through a real scheduler (triggered over REST, polled until success),
   divided by the wall time of the same steps called back to back in one
   Python process, against the same registry and model server (so both
   compare with a champion, register a version and verify the deploy).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "tests"))

TRIVIAL_DAG = """
from __future__ import annotations
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator
with DAG(dag_id="trivial", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    EmptyOperator(task_id="only")
"""

PARSE_PROBE = """
import importlib.util, sys, time
import airflow.sdk  # shared cost, not timed
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("probe_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(time.perf_counter() - start)
"""


def parse_seconds(dag_file: Path, repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")])}
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", PARSE_PROBE, str(dag_file)], capture_output=True, text=True, check=True, env=env
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return times


def bench_parse(repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        trivial = Path(tmp) / "trivial_dag.py"
        trivial.write_text(TRIVIAL_DAG)
        baseline = statistics.median(parse_seconds(trivial, repeats))
    files = {}
    for dag_file in sorted((PROJECT_ROOT / "dags").glob("*.py")):
        median = statistics.median(parse_seconds(dag_file, repeats))
        files[dag_file.name] = {"median_s": round(median, 4), "ratio_to_trivial": round(median / baseline, 2)}
    return {"repeats": repeats, "trivial_dag_median_s": round(baseline, 4), "files": files}


def in_process_lifecycle(
    root: Path, logical_day: dt.datetime, server_url: str, tag: str, overrides: dict[str, Any]
) -> float:
    """The lifecycle's steps back to back in this process, timed: the same work as one DAG run."""
    os.environ["MLOPS_ARTIFACT_ROOT"] = str(root)
    from include.mlops.artifacts import registry_root
    from include.mlops.config import find_model_config
    from include.mlops.data.snapshot import snapshot
    from include.mlops.data.validate import validate
    from include.mlops.deploy.deploy import deploy
    from include.mlops.evaluation import gate as gate_lib
    from include.mlops.evaluation.evaluate import evaluate
    from include.mlops.registry.filesystem import Registry
    from include.mlops.registry.register import register_model
    from include.mlops.training.train import train

    config = find_model_config("diabetes")
    out = root / "runs" / "inprocess" / tag
    start = time.perf_counter()
    snap = snapshot(config, logical_day - dt.timedelta(days=1), logical_day, out / "snapshot")
    validate(config, snap["data_uri"], out / "validate")
    trained = train(config, snap["data_uri"], out / "train", overrides)
    registry = Registry(registry_root())
    champion = registry.label_version(config.serving_name, "stable")
    evaluation = evaluate(
        config,
        trained["model_uri"],
        snap["data_uri"],
        out / "evaluate",
        champion_uri=str(registry.version_dir(config.serving_name, champion)) if champion else None,
        champion_version=champion,
    )
    decision = gate_lib.decide_for_config(
        config, evaluation["metrics"], evaluation["champion"]["metrics"] if evaluation["champion"] else None
    )
    if not decision.passed:
        raise RuntimeError(f"in-process candidate failed the gate: {decision.reasons}")
    registered = register_model(
        config,
        trained["model_uri"],
        str(out / "evaluate"),
        lineage={"dag_id": "inprocess", "run_id": tag, "created_at": logical_day.isoformat()},
        gate_decision=decision.to_dict(),
        out=out / "register",
    )
    deploy(config, registered["version"], out=out / "deploy", server_url=server_url, data_uri=snap["data_uri"])
    return time.perf_counter() - start


def _at(timestamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def run_breakdown(run: dict[str, Any], task_instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Where one run's time went: each task's queue wait and duration, and the time no task was running."""
    from benchmarks.first_run import task_rows

    start, end = _at(run["start_date"]), _at(run["end_date"])
    rows = [row for row in task_rows(task_instances, start) if row["duration_s"] is not None]
    return {
        "run_s": round((end - start).total_seconds(), 1),
        "busy_s": union_seconds([(row["start_s"], row["end_s"]) for row in rows]),
        "tasks": [{k: row[k] for k in ("task", "queued_s", "start_s", "duration_s")} for row in rows],
    }


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``intervals`` (the time at least one task ran)."""
    total, reach = 0.0, float("-inf")
    for begin, finish in sorted(intervals):
        if finish > reach:
            total += finish - max(begin, reach)
            reach = finish
    return round(total, 1)


def bench_orchestration(repeats: int) -> dict[str, Any]:
    from airflow_stack import airflow_stack

    airflow_times: list[float] = []
    breakdowns: list[dict[str, Any]] = []
    local_times: list[float] = []
    # Only lifecycle__diabetes runs, and its first (nightly) run is a warm-up: nothing else shares the
    # scheduler or the CPU while a timed run is in flight.
    paused = {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"}
    with tempfile.TemporaryDirectory(prefix="bench-spine-") as tmp:
        with airflow_stack(Path(tmp), paused) as stack:
            stack.wait_for_dag("lifecycle__diabetes")
            stack.api().patch("/api/v2/dags/lifecycle__diabetes", json={"is_paused": False}).raise_for_status()
            [warmup] = stack.wait_for_runs("lifecycle__diabetes", count=1, run_type="scheduled", timeout=1200)
            print(f"  warm-up nightly run: {warmup['state']}", flush=True)
            # Both sides then do the same work: a champion to compare with, a new version, a verified deploy.
            # Every bundled row has arrived by these days, so each run trains with its own learning rate: a
            # candidate identical to stable (same data, config and seed) would not be registered.
            for i in range(repeats):
                day = dt.datetime(2026, 11, 20 + i, tzinfo=dt.UTC)
                overrides = {"learning_rate": round(0.001 * (1.1 + 0.1 * i), 6)}
                triggered = dt.datetime.now(dt.UTC)
                response = stack.trigger("lifecycle__diabetes", day.isoformat(), overrides)
                response.raise_for_status()
                [run] = stack.wait_for_runs("lifecycle__diabetes", {response.json()["dag_run_id"]}, timeout=1200)
                # From the trigger to the run's end as Airflow recorded it (same clock): the poll's interval is
                # the benchmark's, not the scheduler's.
                airflow_times.append((_at(run["end_date"]) - triggered).total_seconds())
                if run["state"] != "success":
                    raise RuntimeError(
                        f"benchmark run failed: {stack.task_states('lifecycle__diabetes', run['dag_run_id'])}"
                    )
                breakdowns.append(run_breakdown(run, stack.task_instances("lifecycle__diabetes", run["dag_run_id"])))
                print(f"  airflow run {i + 1}/{repeats}: {airflow_times[-1]:.1f}s", flush=True)
                local_times.append(
                    in_process_lifecycle(stack.artifact_root, day, stack.server_url, f"rep-{i}", overrides)
                )
                print(f"  in-process run {i + 1}/{repeats}: {local_times[-1]:.1f}s", flush=True)
    airflow_median, local_median = statistics.median(airflow_times), statistics.median(local_times)
    return {
        "repeats": repeats,
        "model": "diabetes",
        "airflow_run_s": [round(t, 2) for t in airflow_times],
        "in_process_s": [round(t, 2) for t in local_times],
        "airflow_median_s": round(airflow_median, 2),
        "in_process_median_s": round(local_median, 2),
        "overhead_ratio": round(airflow_median / local_median, 2),
        "airflow_runs": breakdowns,
    }


def run(results_dir: Path, parse_repeats: int = 9, e2e_repeats: int = 3) -> dict[str, Any]:
    print("spine: DAG parse time", flush=True)
    parse = bench_parse(parse_repeats)
    print(json.dumps(parse, indent=2), flush=True)
    print("spine: orchestration overhead (real scheduler vs in-process)", flush=True)
    orchestration = bench_orchestration(e2e_repeats)
    result = {
        "benchmark": "spine",
        "python": sys.version.split()[0],
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parse": parse,
        "orchestration": orchestration,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "spine.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
