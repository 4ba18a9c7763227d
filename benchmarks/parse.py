"""Benchmark of DAG parse cost per model: the lifecycle DAG against same-shaped ``EmptyOperator`` DAGs.

``dags/lifecycle.py`` builds one DAG per model config, so its parse cost grows
with the number of models.  This benchmark writes ``count`` model configs to a
temporary models folder (``$MLOPS_MODELS_DIR``) and, in fresh interpreters
(``airflow.sdk`` imported before the clock starts), times building from the
same configs:

* ``lifecycle``: the real DAGs (``build_lifecycle_dag``);
* ``empty_params``: DAGs of the same shape (the same 12 task ids and edges, the
  same schedule, start date, tags and default args) made of ``EmptyOperator``
  and carrying the lifecycle's trigger-form Params;
* ``empty``: the same ``EmptyOperator`` DAGs without Params.

Imports that a variant needs (the factory module, ``EmptyOperator``) are inside
the timed part, as they are when the DAG processor parses the file.  Config
loading is the same for every variant, so it is measured on its own
(``config_load``), and so is the whole DAG file (``dag_file``: configs plus
DAGs).  Variants alternate within each repeat so that they share the machine's
noise; the report is the median over repeats, in ms per DAG, and the ratios.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = PROJECT_ROOT / "include" / "models"
TEMPLATES = ("diabetes", "digits")
VARIANTS = ("lifecycle", "empty_params", "empty", "config_load", "dag_file")

# The lifecycle DAG's shape, for the EmptyOperator baselines (a test checks it against the real DAG).
TASK_IDS = (
    "snapshot", "validate", "train", "evaluate", "gate", "tune_plan", "tune_trial", "tune_select", "compress",
    "evaluate_optimized",
    "gate_optimized", "register", "deploy", "skip_deploy", "reject",
)  # fmt: skip
EDGES = (
    ("snapshot", "validate"), ("validate", "train"), ("train", "evaluate"), ("evaluate", "gate"),
    ("gate", "register"), ("gate", "tune_plan"), ("gate", "skip_deploy"),
    ("tune_plan", "tune_trial"), ("tune_plan", "tune_select"), ("tune_trial", "tune_select"), ("tune_select", "compress"),
    ("compress", "evaluate_optimized"), ("evaluate_optimized", "gate_optimized"),
    ("gate_optimized", "register"), ("gate_optimized", "reject"), ("gate_optimized", "skip_deploy"),
    ("register", "deploy"),
)  # fmt: skip

PROBE = """
import importlib.util, json, sys, time
import airflow.sdk  # shared by every variant: not timed
variant, models_dir, dag_file = sys.argv[1:4]
if variant == "dag_file":
    start = time.perf_counter()
    spec = importlib.util.spec_from_file_location("lifecycle_dags", dag_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    elapsed = time.perf_counter() - start
    count = sum(type(v).__name__ == "DAG" for v in vars(module).values())
else:
    from include.mlops.config import load_model_configs
    start = time.perf_counter()
    configs = load_model_configs(models_dir)
    elapsed = time.perf_counter() - start
    count = len(configs)
    if variant != "config_load":
        from benchmarks.parse import build_variant
        start = time.perf_counter()
        dags = build_variant(variant, configs)
        elapsed = time.perf_counter() - start
        count = len(dags)
print(json.dumps({"seconds": elapsed, "dags": count}))
"""


def build_variant(variant: str, configs: list[Any]) -> list[Any]:
    """Build one DAG per config the way ``variant`` does; imports happen here, inside the timing."""
    if variant == "lifecycle":
        from mlops_airflow.lifecycle import build_lifecycle_dag

        return [build_lifecycle_dag(config) for config in configs]
    return [empty_dag(config, with_params=variant == "empty_params") for config in configs]


def empty_dag(config: Any, *, with_params: bool) -> Any:
    """A DAG of ``EmptyOperator``s shaped like the lifecycle DAG of ``config``."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from mlops_airflow.lifecycle import DEFAULT_RETRIES, DEFAULT_RETRY_DELAY, _schedule
    from mlops_airflow.params import lifecycle_params
    from mlops_airflow.schedules import dag_start_date

    with DAG(
        dag_id=config.dag_id,
        description=config.description,
        schedule=_schedule(config),
        start_date=dag_start_date(config),
        catchup=False,
        max_active_runs=1,
        tags=["lifecycle", config.task, *config.tags],
        params=lifecycle_params(config) if with_params else None,
        default_args={"owner": config.owner, "retries": DEFAULT_RETRIES, "retry_delay": DEFAULT_RETRY_DELAY},
    ) as dag:
        tasks = {task_id: EmptyOperator(task_id=task_id) for task_id in TASK_IDS}
        for upstream, downstream in EDGES:
            tasks[upstream] >> tasks[downstream]
    return dag


def write_model_configs(folder: Path, count: int) -> Path:
    """``count`` valid model configs (copies of the bundled ones under new names), with their builders."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for template in TEMPLATES:
        shutil.copy(MODELS_DIR / f"{template}.py", folder / f"{template}.py")
    bases = [yaml.safe_load((MODELS_DIR / f"{template}.yaml").read_text()) for template in TEMPLATES]
    for i in range(count):
        config = dict(bases[i % len(bases)])
        config["name"] = config["serving_name"] = f"bench_{i:03d}"
        (folder / f"bench_{i:03d}.yaml").write_text(yaml.safe_dump(config))
    return folder


def _probe(variant: str, models_dir: Path) -> tuple[float, int]:
    env = {
        **os.environ,
        "MLOPS_MODELS_DIR": str(models_dir),
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, variant, str(models_dir), str(PROJECT_ROOT / "dags" / "lifecycle.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"parse probe {variant!r} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), int(result["dags"])


def measure(count: int = 100, repeats: int = 7, variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """Median ms per DAG of each variant over ``repeats`` fresh interpreters, and the ratios."""
    samples: dict[str, list[float]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        models_dir = write_model_configs(Path(tmp) / "models", count)
        for _ in range(repeats):
            for variant in variants:
                seconds, dags = _probe(variant, models_dir)
                if dags != count:
                    raise RuntimeError(f"variant {variant!r} built {dags} DAGs from {count} configs")
                samples[variant].append(seconds * 1000 / count)
    medians = {variant: statistics.median(values) for variant, values in samples.items()}
    result: dict[str, Any] = {
        "models": count,
        "repeats": repeats,
        "ms_per_dag": {variant: round(value, 2) for variant, value in medians.items()},
        "samples_ms_per_dag": {variant: [round(v, 2) for v in values] for variant, values in samples.items()},
    }
    ratios = {}
    if {"lifecycle", "empty_params"} <= medians.keys():
        ratios["lifecycle_to_empty_params"] = round(medians["lifecycle"] / medians["empty_params"], 2)
    if {"lifecycle", "empty"} <= medians.keys():
        ratios["lifecycle_to_empty"] = round(medians["lifecycle"] / medians["empty"], 2)
    if {"empty_params", "empty"} <= medians.keys():
        ratios["empty_params_to_empty"] = round(medians["empty_params"] / medians["empty"], 2)
    result["ratios"] = ratios
    return result


def marginal_ms_per_dag(
    configs: list[Any], repeats: int = 5, variants: tuple[str, ...] = ("lifecycle", "empty_params")
) -> dict[str, float]:
    """Median ms per DAG of each variant in this process, imports already done (the cost that grows per model).

    Cheap enough for a test: no fresh interpreters.  Variants alternate within each repeat.
    """
    import time

    for variant in variants:  # warm-up: lazy imports and first-use caches are a per-file cost, not per model
        build_variant(variant, configs[:1])
    samples: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant in variants:
            start = time.perf_counter()
            build_variant(variant, configs)
            samples[variant].append((time.perf_counter() - start) * 1000 / len(configs))
    return {variant: statistics.median(values) for variant, values in samples.items()}


def calls_per_dag(configs: list[Any], variants: tuple[str, ...] = ("lifecycle", "empty_params")) -> dict[str, float]:
    """Python function calls per DAG of each variant, counted by cProfile: a cost that does not depend on load.

    Deterministic for the same code and inputs, so a test can hold the parse cost to a ratio without timing.
    """
    import cProfile
    import pstats

    for variant in variants:  # warm-up, as in marginal_ms_per_dag
        build_variant(variant, configs[:1])
    counts: dict[str, float] = {}
    for variant in variants:
        profiler = cProfile.Profile()
        profiler.runcall(build_variant, variant, configs)
        counts[variant] = pstats.Stats(profiler).total_calls / len(configs)
    return counts


def run(results_dir: Path, count: int = 100, repeats: int = 7) -> dict[str, Any]:
    print(f"parse: {count} model configs, {repeats} repeats of {', '.join(VARIANTS)}", flush=True)
    result = {
        "benchmark": "parse",
        "python": sys.version.split()[0],
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **measure(count, repeats),
    }
    # Function calls per DAG (cProfile, in this process): the same figures on a loaded or an idle machine.
    with tempfile.TemporaryDirectory(prefix="bench-parse-calls-") as tmp:
        from include.mlops.config import load_model_configs

        configs = load_model_configs(write_model_configs(Path(tmp) / "models", 20))
        calls = calls_per_dag(configs, VARIANTS[:3])
    result["calls_per_dag"] = {variant: round(value) for variant, value in calls.items()}
    print(json.dumps({k: result[k] for k in ("ms_per_dag", "ratios", "calls_per_dag")}, indent=2), flush=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "parse.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
