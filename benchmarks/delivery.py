"""Benchmark of progressive delivery on the embedded default: the time a canary costs besides its analysis.

On ``make run``'s processes (tests/canary_stack.py: real scheduler, triggerer,
local model server and Prometheus scraping every second), with a client loop
sending predictions to ``stable`` throughout, each episode is one run of the
lifecycle's canary tasks (``steps`` 20 -> 50 %, ``interval_s`` 6 s):

- **promote**: a good version (1.02 x the stable's answers) is promoted; then
  the stable version of the next episode is that one;
- **rollback**: a version that answers NaN for production-like rows is aborted
  by the analysis and its canary removed.

Figures, medians over ``EPISODES`` of each:

- ``delivery_s``: from the end of the task before the canary (``register``,
  where the gate passed) to the end of ``end_canary`` (stable moved, canary
  gone), from the task instances' times in Airflow's REST API;
- ``analysis_windows_s``: the windows themselves, checks x ``interval_s``;
- ``overhead_s``: the difference, what the orchestration, the deploys, the
  route changes and the label removal cost;
- ``lost_requests``: client requests that failed between the start of
  ``promote`` (or, for a rollback, of ``end_canary``) and the end of
  ``end_canary``; the target is 0, and so is every failure of the whole run.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "tests"))

EPISODES = 3


def _seconds(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _episode(stack: Any, loop: Any, version: int, day: int) -> dict[str, Any]:
    from canary_stack import INTERVAL_S, run

    state, tasks = run(stack, "canary", version, f"2026-11-{day:02d}T00:00:00+00:00")
    analysis = stack.api().get(
        f"/api/v2/dags/canary/dagRuns/{tasks['register']['dag_run_id']}/taskInstances/canary_analysis/xcomEntries/analysis"
    )
    value = analysis.json()["value"] if analysis.status_code == 200 else {"checks": []}
    checks = len((json.loads(value) if isinstance(value, str) else value)["checks"])
    start = _seconds(tasks["register"]["end_date"])
    end = _seconds(tasks["end_canary"]["end_date"])
    moving = "promote" if tasks["promote"]["state"] == "success" else "end_canary"
    lost = loop.failures_between(_seconds(tasks[moving]["start_date"]), end)
    windows = checks * INTERVAL_S
    return {
        "state": state,
        "promoted": tasks["promote"]["state"] == "success",
        "checks": checks,
        "delivery_s": round(end - start, 2),
        "analysis_windows_s": windows,
        "overhead_s": round(end - start - windows, 2),
        "lost_requests": lost,
    }


def _summary(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "episodes": episodes,
        "median_delivery_s": statistics.median(e["delivery_s"] for e in episodes),
        "median_overhead_s": statistics.median(e["overhead_s"] for e in episodes),
        "lost_requests": sum(e["lost_requests"] for e in episodes),
    }


def run(results_dir: Path) -> dict[str, Any]:
    from canary_stack import MODEL, N_FEATURES, STEPS, canary_stack, client_loop
    from model_factory import make_misbehaving_model, make_saved_model

    from include.mlops.registry.filesystem import Registry

    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        workdir = Path(tmp)
        registry = Registry(workdir / "artifacts" / "models")
        good = [make_saved_model(workdir / "saved" / f"g{i}", N_FEATURES, scale=1.0 + 0.01 * i) for i in range(4)]
        bad = make_misbehaving_model(workdir / "saved" / "nan", N_FEATURES, fault="nan", threshold=0.5)
        lineage = {"dag_id": "bench"}
        versions = [
            registry.register(MODEL, m, metrics={"mae": 1.0}, lineage={**lineage, "run_id": m.name}).version
            for m in good
        ]
        bad_version = registry.register(MODEL, bad, metrics={"mae": 1.0}, lineage={**lineage, "run_id": "nan"}).version
        registry.set_label(MODEL, "stable", versions[0])
        promotes, rollbacks = [], []
        with canary_stack(workdir) as stack, client_loop(stack) as loop:
            started = time.time()
            for i in range(EPISODES):
                promotes.append(_episode(stack, loop, versions[i + 1], day=2 * i + 1))
                print(f"promote {i + 1}/{EPISODES}: {promotes[-1]}", flush=True)
                rollbacks.append(_episode(stack, loop, bad_version, day=2 * i + 2))
                print(f"rollback {i + 1}/{EPISODES}: {rollbacks[-1]}", flush=True)
            total_failed, total_sent = len(loop.failed), loop.sent
        result = {
            "benchmark": "delivery",
            "what": __doc__.split("\n\n")[0],
            "setup": {
                "steps": list(STEPS),
                "interval_s": 6.0,
                "episodes": EPISODES,
                "client": "one thread, about 40 requests/s to labels/stable:predict",
            },
            "promote": _summary(promotes),
            "rollback": _summary(rollbacks),
            "client": {"sent": total_sent, "failed": total_failed, "seconds": round(time.time() - started, 1)},
        }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "delivery.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run(PROJECT_ROOT / "benchmarks" / "results"), indent=2))
