"""Benchmark of the Models view: one model with 200 versions and 1,000 runs, synthetic but in the real layout.

:func:`write_history` writes what the lifecycle DAG leaves behind: run folders
(``gate/decision.json`` from the real gate, ``gate_optimized/`` for the runs
that failed, ``register/result.json`` and ``deploy/result.json`` for those that
deployed, evaluation reports) and registry versions made by the real
:class:`include.mlops.registry.filesystem.Registry` (a stub ``saved_model.pb``: the view
never reads model files).  Nightly, manual and backfill runs are mixed.

The timings are HTTP requests to a real Airflow API server (FAB auth manager,
a bearer token from /auth/token; tests/models_view/server.py), so they include
Airflow's auth and the metadata DB query for the runs.  Cold is the first
request after the server started (every file parsed); warm is the median of
the next ``REPEATS`` requests, which re-read nothing that did not change,
taken round robin with a baseline: Airflow's own ``GET /api/v2/dags`` on the
same server (auth and a DB query), since the machine's load varies.  The
plot PNG is timed on its own: the page links it rather than inlining it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.config import BUDGET_METRICS, METRICS, ModelConfig, load_model_config
from include.mlops.evaluation.gate import decide_for_config
from include.mlops.registry.filesystem import Registry
from tests.models_view.server import api_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VERSIONS = 200
RUNS = 1_000
REPEATS = 15
TARGET_MS = 300.0
URL_PREFIX = "/mlops"
START = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)


def run_type_of(index: int) -> str:
    if index % 5 == 0:
        return "backfill"
    return "manual" if index % 7 == 0 else "scheduled"


def write_history(root: Path, config: ModelConfig, *, versions: int, runs: int, seed: int = 7) -> dict[str, Any]:
    """Write ``runs`` run folders and ``versions`` registered versions of ``config`` under the artifact root ``root``.

    The first ``versions`` deploying runs (not backfills) whose gate passed
    register and deploy; every 9th run fails the gate twice (rejected), and
    every 13th passes by override.  Returns what was written, for assertions.
    """
    rng = random.Random(seed)
    registry = Registry(artifacts.registry_root(root))
    stub = root / ".stub-model"
    (stub / "variables").mkdir(parents=True, exist_ok=True)
    (stub / "saved_model.pb").write_bytes(b"stub SavedModel: the view never reads it")
    (stub / "variables" / "variables.index").write_bytes(b"stub")
    champion: dict[str, float] | None = None
    written: dict[str, Any] = {"runs": [], "versions": [], "rejected": [], "overrides": []}
    for index in range(runs):
        run_type = run_type_of(index)
        day = START + dt.timedelta(days=index)
        run_id = f"{run_type}__{day.isoformat()}"
        folder = artifacts.run_dir(config.dag_id, run_id, "", root=root)
        rejected, forced = index % 9 == 4, index % 13 == 6
        metrics = _metrics(config, rng, bad=rejected or forced)
        decision = decide_for_config(config, metrics, champion, force=forced)
        deploying = run_type != "backfill"
        route = "register" if decision.passed and deploying else ("skip_deploy" if decision.passed else "optimize")
        _decision(folder / "gate", decision, route)
        (folder / "evaluate").mkdir(parents=True, exist_ok=True)
        (folder / "evaluate" / "report.html").write_text(f"<html><body>evaluation of {run_id}</body></html>")
        if rejected:
            (folder / "evaluate_optimized").mkdir(parents=True, exist_ok=True)
            (folder / "evaluate_optimized" / "report.html").write_text("<html><body>optimized</body></html>")
            _decision(folder / "gate_optimized", decide_for_config(config, metrics, champion), "reject")
            written["rejected"].append(run_id)
        if route == "register" and len(written["versions"]) < versions:
            version = _register(registry, config, stub, folder, run_id, day, metrics, decision.to_dict())
            artifacts.atomic_write_json(folder / "register" / "result.json", {"version": version, "created": True})
            registry.set_label(config.serving_name, "stable", version)
            artifacts.atomic_write_json(
                folder / "deploy" / "result.json",
                {"model_name": config.serving_name, "label": "stable", "version": version, "changed": True},
            )
            champion = metrics
            written["versions"].append(version)
            if forced:
                written["overrides"].append(version)
        written["runs"].append(run_id)
    return written


def _metrics(config: ModelConfig, rng: random.Random, *, bad: bool) -> dict[str, float]:
    """Values of the model's metrics that pass its gate (within 1 % of one another), or fail its thresholds."""
    directions = {**METRICS[config.task], **BUDGET_METRICS}
    values = {"size_mb": 0.05, "latency_ms": rng.uniform(1.0, 4.0)}
    for metric in config.metrics:
        bounds = config.gate.thresholds.get(metric, {})
        if directions[metric]:
            anchor = min(bounds.get("min", 0.5) + 0.1, 0.97)
            miss = bounds.get("min", anchor) - 0.2
        else:
            anchor = bounds.get("max", 100.0) * 0.7
            miss = bounds.get("max", anchor) * 1.3
        values[metric] = miss if bad and bounds else anchor * (1 + rng.uniform(-0.005, 0.005))
    return values


def _decision(out: Path, decision: Any, route: str) -> None:
    record = {"decision": decision.to_dict(), "route": route, "champion_version": None}
    artifacts.atomic_write_json(out / "decision.json", record)


def _register(
    registry: Registry,
    config: ModelConfig,
    stub: Path,
    folder: Path,
    run_id: str,
    day: dt.datetime,
    metrics: dict[str, float],
    gate: dict[str, Any],
) -> int:
    lineage = {
        "dag_id": config.dag_id,
        "run_id": run_id,
        "data_interval_start": day.isoformat(),
        "data_interval_end": (day + dt.timedelta(days=1)).isoformat(),
        "created_at": day.isoformat(),
        "code_version": "synthetic",
    }
    result = registry.register(
        config.serving_name,
        stub,
        metrics=metrics,
        lineage=lineage,
        model_card=lambda v: (
            f"# {config.serving_name} version {v}\n\nRegistered by `{run_id}`.\n\n| metric | value |\n|---|---|\n"
            + "".join(f"| {k} | {val:.4f} |\n" for k, val in metrics.items())
        ),
        gate_decision=gate,
        evidence={"evaluate/report.html": folder / "evaluate" / "report.html"},
    )
    return result.version


def _time(client: Any, url: str) -> float:
    start = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    return elapsed


def run(results_dir: Path) -> dict[str, Any]:
    config = load_model_config(PROJECT_ROOT / "include" / "models" / "diabetes.yaml")
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        written = write_history(root, config, versions=VERSIONS, runs=RUNS)
        generate_s = time.perf_counter() - start
        urls = {
            "models_page": f"{URL_PREFIX}/models",
            "models_json": f"{URL_PREFIX}/api/models",
            "model_page": f"{URL_PREFIX}/models/{config.name}",
            "model_json": f"{URL_PREFIX}/api/models/{config.name}",
            "quality_history_png": f"{URL_PREFIX}/models/{config.name}/quality-history.png",
            # Baseline: one of Airflow's own authenticated endpoints (auth manager, DB) on the same server.
            "baseline_airflow_dags": "/api/v2/dags?limit=1",
        }
        user = {"username": "bench", "password": "bench-pass", "role": "Admin"}
        samples: dict[str, list[float]] = {name: [] for name in urls}
        with (
            api_server(root / "server", root, [user]) as server,
            server.client(server.token("bench", "bench-pass")) as client,
        ):
            cold = {name: _time(client, url) for name, url in urls.items()}
            load = os.getloadavg()[0]
            # Round robin, so that every URL shares the machine's noise.
            for _ in range(REPEATS):
                for name, url in urls.items():
                    samples[name].append(_time(client, url))
        baseline = statistics.median(samples["baseline_airflow_dags"])
        timings = {
            name: {
                "cold_ms": round(cold[name], 1),
                "warm_median_ms": round(statistics.median(values), 1),
                "warm_vs_baseline": round(statistics.median(values) / baseline, 2),
            }
            for name, values in samples.items()
        }
    result = {
        "benchmark": "ui",
        "what": __doc__.split("\n\n")[0],
        "versions": len(written["versions"]),
        "runs": len(written["runs"]),
        "rejected_runs": len(written["rejected"]),
        "repeats": REPEATS,
        "target_ms": TARGET_MS,
        "load_average_1m": round(load, 2),
        "cpus": os.cpu_count(),
        "generate_s": round(generate_s, 1),
        "timings": timings,
        "pages_within_target_warm": all(
            timings[k]["warm_median_ms"] < TARGET_MS for k in ("models_page", "model_page", "model_json")
        ),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "ui.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run(PROJECT_ROOT / "benchmarks" / "results")
