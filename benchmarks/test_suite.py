"""Benchmark of the test suite itself: how long ``make test`` takes, and where the time goes.

    python -m benchmarks test_suite                          # runs `make test` (about 30 minutes on 2 cores)
    python -m benchmarks.test_suite --junit report.xml       # records a run that already happened

``make test`` runs the tiers on pytest-xdist workers (``PYTEST_WORKERS``, see
the Makefile), one test module per worker at a time, so a module's shared
stack or trained model is still built once.  Recorded: the wall time of the
run, the sum of every test's own time (what one worker would have needed, the
serial baseline of the same run), their ratio, the outcome counts, the slowest
25 tests and the slowest modules.  The wall time is the figure the guideline
holds to 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SLOWEST = 25


def _module(classname: str) -> str:
    """``tests.e2e.test_x`` from ``tests.e2e.test_x`` or ``tests.e2e.test_x.TestClass``."""
    parts = classname.split(".")
    for i, part in enumerate(parts):
        if part.startswith("test_"):
            return ".".join(parts[: i + 1])
    return classname


def summarise(report: Path, wall_s: float | None = None) -> dict[str, Any]:
    """The figures of one pytest JUnit XML report (``wall_s``: the run's own wall time, when it was timed here)."""
    root = ET.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        raise ValueError(f"{report}: no <testsuite> element; is it a pytest --junitxml report?")
    cases = []
    outcomes = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in suite.iter("testcase"):
        seconds = float(case.get("time", 0.0))
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        cases.append((seconds, name, _module(case.get("classname", ""))))
        if case.find("failure") is not None:
            outcomes["failed"] += 1
        elif case.find("error") is not None:
            outcomes["error"] += 1
        elif case.find("skipped") is not None:
            outcomes["skipped"] += 1
        else:
            outcomes["passed"] += 1
    if not cases:
        raise ValueError(f"{report}: no test cases")
    per_module: dict[str, float] = defaultdict(float)
    for seconds, _, module in cases:
        per_module[module] += seconds
    tests_s = sum(seconds for seconds, _, _ in cases)
    wall = wall_s if wall_s is not None else float(suite.get("time", 0.0))
    return {
        "wall_s": round(wall, 1),
        "wall_min": round(wall / 60, 1),
        "sum_of_test_times_s": round(tests_s, 1),
        "parallel_speedup": round(tests_s / wall, 2) if wall else None,
        "tests": len(cases),
        "outcomes": outcomes,
        "slowest_tests": [{"test": name, "s": round(s, 1)} for s, name, _ in sorted(cases, reverse=True)[:SLOWEST]],
        "slowest_modules": [
            {"module": module, "s": round(s, 1)}
            for module, s in sorted(per_module.items(), key=lambda item: item[1], reverse=True)[:SLOWEST]
        ],
    }


def record(report: Path, results_dir: Path, wall_s: float | None = None, workers: str | None = None) -> dict[str, Any]:
    result = {
        "benchmark": "test_suite",
        "command": "make test",
        "workers": workers or os.environ.get("PYTEST_WORKERS") or "the Makefile's default (cores + 1, at most 4)",
        "cpu_count": os.cpu_count(),
        **summarise(report, wall_s),
        "note": "sum_of_test_times_s counts each test's setup, call and teardown (JUnit's time per case); "
        "module-scoped set-up is charged to a module's first test",
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "test_suite.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"  make test: {result['wall_min']} min wall, {result['sum_of_test_times_s'] / 60:.1f} min of tests "
        f"({result['parallel_speedup']}x), {result['outcomes']}"
    )
    return result


def run(results_dir: Path) -> dict[str, Any]:
    """Run ``make test`` with a JUnit report, timed, and record it."""
    report = Path(tempfile.mkdtemp(prefix="mlops-bench-tests-")) / "report.xml"
    env = {**os.environ, "PYTEST_ARGS": f"{os.environ.get('PYTEST_ARGS', '')} --junitxml={report}".strip()}
    start = time.perf_counter()
    done = subprocess.run(["make", "test"], cwd=PROJECT_ROOT, env=env)
    wall = time.perf_counter() - start
    if not report.exists():
        raise RuntimeError(f"make test exited {done.returncode} without a report")
    return record(report, results_dir, wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.test_suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--junit", type=Path, help="record this report instead of running make test")
    parser.add_argument("--workers", help="the run's PYTEST_WORKERS, to record with a --junit report")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.junit is None:
        run(args.results_dir)
    else:
        record(args.junit, args.results_dir, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
