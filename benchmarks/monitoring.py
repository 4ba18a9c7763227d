"""Benchmark of the drift check: scoring throughput against plain pandas, and where a full check spends its time.

The window is digits-like: ``ROWS`` (1,000,000; ``MLOPS_BENCH_MONITORING_ROWS``
sets fewer for a quick run) logged requests of 64 pixel features, resampled
from scikit-learn's digits with a few pixels shifted, scored against the
reference of the digits dataset (10 bins).

Reported, as medians of ``REPEATS`` runs:

* ``drift_rows_per_s``: the drift scoring (:func:`include.mlops.monitoring.scoring.score_rows`:
  per-feature bin counts on the reference bins, PSI, mean, min, max) over every row;
* the baseline, the same statistics with plain pandas in the same run
  (``pd.cut`` + ``value_counts`` per feature, ``mean``, ``min``, ``max``), and
  the same plus the reference quantiles (``DataFrame.quantile``), and the ratios;
* the full check (``check_drift``: read the parquet log, score, GX on the
  ``max_validation_rows`` sample, write) and its breakdown by phase.

* ``monitoring_run_wall_s``: one ``monitor__diabetes`` run through the real scheduler (the
  stack of ``make run``, with Prometheus and the Pushgateway), triggered over REST and polled to
  success, against the same work called in one process (``measure_slo``, ``check_drift``,
  ``write_report``) on the same stack: ``monitoring_run_in_process_s`` and the ratio.  Needs
  Debian's ``prometheus`` and ``prometheus-pushgateway``; without them these fields are null.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

log = logging.getLogger(__name__)

ROWS = int(os.environ.get("MLOPS_BENCH_MONITORING_ROWS", "1000000"))
MONITOR_REPEATS = 3
REPEATS = 3
FULL_REPEATS = 2
SHIFTED_PIXELS = ("pixel_2_3", "pixel_4_4", "pixel_6_5")


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def _window(config: Any, rows: int) -> Any:
    import numpy as np

    from include.mlops.data.sources import load_bundled

    digits = load_bundled("digits", config.label)[list(config.features)].to_numpy(np.float32)
    rng = np.random.default_rng(7)
    window = digits[rng.integers(0, len(digits), rows)]
    for feature in SHIFTED_PIXELS:
        j = config.features.index(feature)
        window[:, j] = np.clip(window[:, j] + 4.0, 0.0, 16.0)
    return window


def _pandas_baseline(frame: Any, reference: dict[str, Any], with_quantiles: bool) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    out: dict[str, Any] = {"mean": frame.mean(), "min": frame.min(), "max": frame.max()}
    for column in frame.columns:
        edges = [-np.inf, *reference["features"][column]["bin_edges"], np.inf]
        out[column] = pd.cut(frame[column], edges, right=False).value_counts(sort=False)
    if with_quantiles:
        out["quantiles"] = frame.quantile(reference["quantiles"])
    return out


def run(results_dir: Path) -> dict[str, Any]:
    """Run the benchmark and write ``results_dir / "monitoring.json"``; returns the results."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import numpy as np
    import pandas as pd

    from include.mlops import artifacts
    from include.mlops.config import find_model_config
    from include.mlops.data.sources import load_bundled
    from include.mlops.monitoring.drift import check_drift, read_window
    from include.mlops.monitoring.expectations import validate_sample
    from include.mlops.monitoring.reference import REFERENCE_FILE, build_reference
    from include.mlops.monitoring.scoring import score_rows
    from include.mlops.registry.filesystem import Registry
    from include.mlops.serving.predlog import PredictionLogger

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    config = find_model_config("digits")
    features = list(config.features)
    drift = config.monitor.drift
    reference = build_reference(load_bundled("digits", config.label), features, drift.bins)
    rows = _window(config, ROWS)
    frame = pd.DataFrame(rows, columns=features)

    scoring_s, scored = _median_seconds(lambda: score_rows(rows, reference, features), REPEATS)
    pandas_s, _ = _median_seconds(lambda: _pandas_baseline(frame, reference, False), REPEATS)
    pandas_q_s, _ = _median_seconds(lambda: _pandas_baseline(frame, reference, True), REPEATS)
    log.warning("scoring %.3fs, pandas %.3fs, pandas+quantiles %.3fs", scoring_s, pandas_s, pandas_q_s)

    with tempfile.TemporaryDirectory(prefix="monitoring-bench-") as tmp:
        root = Path(tmp)
        registry = Registry(root / "models")
        version_dir = registry.version_dir(config.serving_name, 1)
        (version_dir / "assets.extra").mkdir(parents=True)
        artifacts.atomic_write_json(version_dir / REFERENCE_FILE, reference)
        logger = PredictionLogger(root, sample_rate=1.0, max_rows_per_file=ROWS, max_rows_per_request=ROWS)
        logger.start()
        logger.offer(config.serving_name, 1, rows, np.zeros((ROWS, 1), np.float32))
        logger.stop(timeout=300)
        now = dt.datetime.now(dt.UTC)
        window = {"window_start": now - dt.timedelta(hours=1), "window_end": now + dt.timedelta(hours=1)}
        read_s, read = _median_seconds(
            lambda: read_window(root, config.serving_name, len(features), **window), FULL_REPEATS
        )
        gx_s, (validation, _) = _median_seconds(
            lambda: validate_sample(read.rows, features, features, reference, drift), FULL_REPEATS
        )
        full_s, result = _median_seconds(
            lambda: check_drift(config, **window, out=root / "out", registry=registry, predictions_root=root),
            FULL_REPEATS,
        )
        log_bytes = sum(p.stat().st_size for p in (root / "predictions").rglob("*.parquet"))

    drifted = sorted(f for f, e in result["features"].items() if e["drifted"])
    results = {
        "benchmark": "monitoring",
        "cpu_count": os.cpu_count(),
        "rows": ROWS,
        "features": len(features),
        "bins": drift.bins,
        "repeats": REPEATS,
        "drift_rows_per_s": ROWS / scoring_s,
        "drift_scoring_s": scoring_s,
        "pandas_same_statistics_s": pandas_s,
        "pandas_same_statistics_plus_quantiles_s": pandas_q_s,
        "ratio_pandas_to_scoring": pandas_s / scoring_s,
        "ratio_pandas_with_quantiles_to_scoring": pandas_q_s / scoring_s,
        "full_check_s": full_s,
        "full_check_rows_per_s": ROWS / full_s,
        "breakdown_note": "phases timed on their own, medians; on shared cores they need not add up to full_check_s",
        "breakdown_s": {
            "read_prediction_log": read_s,
            "scoring": scoring_s,
            "great_expectations": gx_s,
            "other (writing, references, sampling)": max(0.0, full_s - read_s - scoring_s - gx_s),
        },
        "validated_rows": validation["meta"]["validated_rows"],
        "expectations": len(validation["results"]),
        "prediction_log_mb": log_bytes / 1e6,
        "check": {"status": result["status"], "score": result["score"], "drifted_features": drifted},
        "expected_drifted_features": sorted(SHIFTED_PIXELS),
        "scored_rows": scored["rows"],
    }
    results.update(bench_monitor_run(MONITOR_REPEATS))
    (results_dir / "monitoring.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def bench_monitor_run(repeats: int) -> dict[str, Any]:
    """Median wall time of a monitor DAG run through the scheduler, against the same calls in-process."""
    import shutil

    if not (shutil.which("prometheus") and shutil.which("prometheus-pushgateway")):
        reason = "prometheus and prometheus-pushgateway are not installed (apt-get install ...)"
        return {"monitoring_run_wall_s": None, "monitoring_run_skipped": reason}
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from airflow_stack import airflow_stack

    from include.mlops.config import find_model_config
    from include.mlops.monitoring.drift import check_drift
    from include.mlops.monitoring.outcome import decide
    from include.mlops.monitoring.report import write_report
    from include.mlops.monitoring.slo import measure_slo
    from include.mlops.monitoring.traffic import latest_snapshot, send_traffic

    config = find_model_config("diabetes")
    env = {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True", "MLOPS_PREDLOG_SAMPLE_RATE": "1"}
    env["MLOPS_PREDLOG_FLUSH_SECONDS"] = "2"
    dag_times: list[float] = []
    local_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp, airflow_stack(Path(tmp), env) as stack:
        for dag_id in (config.dag_id, config.monitor_dag_id):
            stack.wait_for_dag(dag_id)
            stack.api().patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        [nightly] = stack.wait_for_runs(config.dag_id, count=1, run_type="scheduled", timeout=1800)
        stack.wait_for_runs(config.monitor_dag_id, count=1, run_type="scheduled", timeout=600)
        print(f"  warm-up: nightly lifecycle run {nightly['state']}", flush=True)
        rows_from = latest_snapshot(config, root=stack.artifact_root)
        send_traffic(
            config,
            stack.server_url,
            rate=25,
            requests=300,
            duration=None,
            rows_from=rows_from,
            report=lambda line: None,
        )
        time.sleep(35)  # two Prometheus scrapes (15 s) and the prediction log's flush
        prometheus = f"http://127.0.0.1:{stack.prometheus_port}"
        for i in range(repeats):
            start = time.perf_counter()
            response = stack.trigger(config.monitor_dag_id, dt.datetime.now(dt.UTC).isoformat())
            response.raise_for_status()
            [run] = stack.wait_for_runs(config.monitor_dag_id, {response.json()["dag_run_id"]}, timeout=600)
            dag_times.append(time.perf_counter() - start)
            if run["state"] != "success":
                raise RuntimeError(f"monitor run failed: {stack.task_states(config.monitor_dag_id, run['dag_run_id'])}")
            out = Path(tmp) / f"in-process-{i}"
            start = time.perf_counter()
            end = dt.datetime.now(dt.UTC)
            slo = measure_slo(prometheus, config, end=end)
            drift = check_drift(
                config,
                window_start=end - config.monitor.window,
                window_end=end,
                out=out,
                registry=stack.artifact_root / "models",
                predictions_root=stack.artifact_root,
            )
            write_report(config, slo, drift, decide(slo, drift), out)
            local_times.append(time.perf_counter() - start)
            print(f"  monitor run {i}: {dag_times[-1]:.1f} s through the scheduler, {local_times[-1]:.1f} s in-process")
    wall, local = statistics.median(dag_times), statistics.median(local_times)
    return {
        "monitoring_run_wall_s": wall,
        "monitoring_run_in_process_s": local,
        "monitoring_run_ratio": wall / local,
        "monitoring_run_repeats": repeats,
    }


if __name__ == "__main__":
    print(json.dumps(run(PROJECT_ROOT / "benchmarks" / "results"), indent=2))
