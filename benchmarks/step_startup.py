"""Benchmark of what each lifecycle step pays before its work: the interpreter and its imports.

Every step is a new process (the local backend's subprocess, a container, a
pod), so each pays for starting Python and importing what it uses: the
project's modules, and TensorFlow, Great Expectations or pandas when the step
needs them.  The lifecycle's steps of ``diabetes`` (snapshot, validate, train,
evaluate, register, deploy, label only) run through the step CLI on a local
artifact root with ``python -X importtime``, ``repeats`` times; for each step
we report the median wall time, the median time spent importing (the
``cumulative`` column of the top-level imports Python reports) and its share,
split into TensorFlow (with Keras), Great Expectations and everything else,
against the interpreter started with nothing to do (``python -c pass``) in the
same run.  ``-X importtime`` itself adds a little to each import, so the
import figures are upper bounds.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.object_store import PROJECT_ROOT, STEPS, lifecycle, run_step

REPEATS = 3
# A top-level import line: "import time:  self | cumulative | name" with the name not indented.
_TOP_LEVEL = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")
GROUPS = {"tensorflow": ("tensorflow", "keras", "tf_keras"), "great_expectations": ("great_expectations",)}


def import_seconds(stderr: str) -> dict[str, float]:
    """Seconds of top-level imports in ``-X importtime`` output: in all, and per group of :data:`GROUPS`."""
    totals = {"all": 0.0, **dict.fromkeys(GROUPS, 0.0)}
    for line in stderr.splitlines():
        match = _TOP_LEVEL.match(line)
        if match is None:
            continue
        seconds, package = int(match.group(1)) / 1e6, match.group(2).split(".")[0]
        totals["all"] += seconds
        for group, packages in GROUPS.items():
            if package in packages:
                totals[group] += seconds
    return totals


def _bare_interpreter_s(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(results_dir: Path, repeats: int = REPEATS) -> dict[str, Any]:
    """Per step: median wall time, import time and its split; written to ``step_startup.json``."""
    base = Path(tempfile.mkdtemp(prefix="mlops-bench-step-startup-"))
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{PROJECT_ROOT / 'plugins'}"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    imports: dict[str, list[dict[str, float]]] = {step: [] for step in STEPS}
    walls: dict[str, list[float]] = {step: [] for step in STEPS}

    def profiled(step: str, step_env: dict[str, str], out: str, *arguments: str) -> tuple[float, dict[str, Any]]:
        seconds, result, stderr = run_step(step, step_env, out, *arguments, python=("-X", "importtime"))
        imports[step].append(import_seconds(stderr))
        walls[step].append(seconds)
        return seconds, result

    for i in range(repeats):
        root = str(base / f"root-{i}")
        lifecycle(root, {**env, "MLOPS_ARTIFACT_ROOT": root}, f"r{i}", step=profiled)
        print(f"  round {i + 1}: done", flush=True)
    bare = _bare_interpreter_s(max(repeats, 5))
    steps = {}
    for step in STEPS:
        wall = statistics.median(walls[step])
        imported = {key: statistics.median(r[key] for r in imports[step]) for key in ("all", *GROUPS)}
        steps[step] = {
            "wall_median_s": round(wall, 3),
            "imports_s": round(imported["all"], 3),
            "tensorflow_imports_s": round(imported["tensorflow"], 3),
            "great_expectations_imports_s": round(imported["great_expectations"], 3),
            "other_imports_s": round(imported["all"] - imported["tensorflow"] - imported["great_expectations"], 3),
            "startup_s": round(bare + imported["all"], 3),
            "startup_share_of_wall": round((bare + imported["all"]) / wall, 3),
        }
    result = {
        "benchmark": "step_startup",
        "what": "lifecycle steps of diabetes through the step CLI (local root): interpreter start and imports",
        "repeats": repeats,
        "bare_interpreter_s": round(bare, 3),
        "steps": steps,
        "note": "startup_s = bare interpreter + top-level imports under -X importtime (which inflates imports a little)",
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "step_startup.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
