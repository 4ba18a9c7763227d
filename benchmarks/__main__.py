"""Run the benchmarks and write their results to ``benchmarks/results/<name>.json``.

    python -m benchmarks                      # all of them
    python -m benchmarks spine serving        # a selection

Timings on shared machines are noisy: every benchmark reports medians and
ratios against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import signal
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS = {
    "parse": "DAG parse cost per model against same-shaped EmptyOperator DAGs (100 generated configs)",
    "spine": "DAG parse time and orchestration overhead of a real scheduler",
    "serving": "model server latency and throughput against the bare SavedModel",
    "monitoring": "drift scoring throughput against plain pandas, and the full drift check's breakdown",
    "drift_quality": "drift decision's false alarms and detection of small shifts, against Evidently's defaults",
    "optimize": "compressed TFLite variants of digits (size, CPU speedup, accuracy) against the float model",
    "delivery": "canary promote and rollback on the embedded default: time besides the analysis, requests lost",
    "step_startup": "what each lifecycle step pays before its work: interpreter start and imports (TF, GX, the rest)",
    "object_store": "one lifecycle through the step CLI with the artifact root in S3 (moto) against a local folder",
    "ui": "Models view pages with 200 versions and 1,000 runs of one model, through a real API server",
    "containers": "per-step overhead of the docker backend against the local one (needs Docker)",
    "compose": "docker-compose.yaml up to healthy, and one lifecycle run against make run's (needs Docker)",
    "first_run": "make run on a fresh home and artifact root until both demo models are AVAILABLE, and where the time goes",
    "test_suite": "make test itself: wall time on this machine's cores, the serial sum, the slowest tests and modules",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    # Turn a plain `kill` into an exception, so that the services a benchmark started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    names = args.names or list(BENCHMARKS)
    for needs_docker in ("containers", "compose"):
        if needs_docker in names and not args.names and shutil.which("docker") is None:
            print(f"{needs_docker}: skipped, no Docker engine on this machine", file=sys.stderr)
            names.remove(needs_docker)
    for name in names:
        print(f"==> {name}: {BENCHMARKS[name]}", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").run(args.results_dir)
        print(f"==> {name}: done in {time.perf_counter() - start:.0f}s, see {args.results_dir / (name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
