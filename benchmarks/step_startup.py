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

Then the per-step overhead on the local backend, cold against warm: the same
lifecycle, each step started as the operator starts it, either as a new process
(cold) or forked by the step runner (:mod:`include.mlops.warm`, started here with
its default preload), and each step's function called in this process once its
imports are done (after a warm-up lifecycle, not counted): its work alone.  A
step's overhead is its wall time minus that work: everything between starting
the step and the step doing its work (interpreter, imports, config, result
file).  The three kinds of rounds alternate their order.
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

from benchmarks.object_store import MODEL, PROJECT_ROOT, STEPS, lifecycle, run_step
from include.mlops.warm.client import WarmStep, start_warm

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


def started_step(
    mode: str, step: str, env: dict[str, str], out: str, *arguments: str, runner: Path
) -> tuple[float, dict[str, Any]]:
    """Run ``step`` started ``cold`` (a new process) or ``warm`` (forked by the runner): wall seconds, result."""
    argv = [sys.executable, "-m", "include.mlops", step, "--model", MODEL, "--out", out, *arguments]
    start = time.perf_counter()
    if mode == "warm":
        proc: WarmStep | subprocess.Popen[str] | str = start_warm(argv, env, PROJECT_ROOT, path=runner)
        if isinstance(proc, str):
            raise RuntimeError(f"{step} did not start warm: {proc}")
    else:
        proc = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
    assert proc.stdout is not None
    lines = proc.stdout.readlines()
    code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{step} ({mode}) failed with {code}: {''.join(lines[-20:])}")
    return wall, json.loads(lines[-1])


def in_process_step(step: str, env: dict[str, str], out: str, *arguments: str) -> tuple[float, dict[str, Any]]:
    """The step's work alone: its function called in this process, whose imports are done (after a warm-up)."""
    from include.mlops.artifacts import to_jsonable
    from include.mlops.cli import build_parser
    from include.mlops.config import find_model_config
    from include.mlops.steps import get_step

    os.environ["MLOPS_ARTIFACT_ROOT"] = env["MLOPS_ARTIFACT_ROOT"]
    args = build_parser().parse_args([step, "--model", MODEL, "--out", out, *arguments])
    config = find_model_config(MODEL)
    start = time.perf_counter()
    result = to_jsonable(get_step(step).run(config, args))
    return time.perf_counter() - start, json.loads(json.dumps(result, default=str))


def _start_runner(sock: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.mlops.warm", "--socket", str(sock)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    while not sock.is_socket():
        if proc.poll() is not None or time.perf_counter() - start > 120:
            proc.kill()
            raise RuntimeError("the step runner did not start")
        time.sleep(0.05)
    return proc, time.perf_counter() - start


MODES = ("cold", "warm", "in_process")


def bench_overhead(base: Path, env: dict[str, str], repeats: int) -> dict[str, Any]:
    """Per step: median wall seconds cold, warm and in process, and the overheads (wall - in-process work)."""
    runner_sock = base / "runner.sock"
    runner, ready_s = _start_runner(runner_sock, env)
    walls: dict[str, dict[str, list[float]]] = {mode: {step: [] for step in STEPS} for mode in MODES}
    previous_root = os.environ.get("MLOPS_ARTIFACT_ROOT")
    try:
        root = str(base / "in-process-warm-up")  # imports and first calls, not counted
        lifecycle(root, {**env, "MLOPS_ARTIFACT_ROOT": root}, "warm-up", step=in_process_step)
        for i in range(repeats):
            for mode in MODES if i % 2 == 0 else tuple(reversed(MODES)):

                def measured(step: str, step_env: dict[str, str], out: str, *arguments: str, mode: str = mode) -> Any:
                    if mode == "in_process":
                        wall, result = in_process_step(step, step_env, out, *arguments)
                    else:
                        wall, result = started_step(mode, step, step_env, out, *arguments, runner=runner_sock)
                    walls[mode][step].append(wall)
                    return wall, result

                root = str(base / f"{mode}-{i}")
                lifecycle(root, {**env, "MLOPS_ARTIFACT_ROOT": root}, f"{mode}{i}", step=measured)
            print(f"  overhead round {i + 1}: done", flush=True)
    finally:
        runner.terminate()
        runner.wait(timeout=30)
        if previous_root is None:
            os.environ.pop("MLOPS_ARTIFACT_ROOT", None)
        else:
            os.environ["MLOPS_ARTIFACT_ROOT"] = previous_root
    steps = {}
    for step in STEPS:
        work, cold, warm = (statistics.median(walls[mode][step]) for mode in ("in_process", "cold", "warm"))
        steps[step] = {
            "in_process_s": round(work, 3),
            "cold_wall_s": round(cold, 3),
            "warm_wall_s": round(warm, 3),
            "cold_overhead_s": round(cold - work, 3),
            "warm_overhead_s": round(warm - work, 3),
            "warm_to_cold_wall_ratio": round(warm / cold, 3),
        }
    return {"repeats": repeats, "runner_ready_s": round(ready_s, 1), "steps": steps}


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
    print("  per-step overhead, cold and warm", flush=True)
    overhead = bench_overhead(base, env, repeats)
    result = {
        "benchmark": "step_startup",
        "what": "lifecycle steps of diabetes through the step CLI (local root): interpreter start and imports",
        "repeats": repeats,
        "bare_interpreter_s": round(bare, 3),
        "steps": steps,
        "note": "startup_s = bare interpreter + top-level imports under -X importtime (which inflates imports a little)",
        "overhead": overhead,
        "overhead_note": "overhead = the step's wall time, started cold or warm, minus its function's time in a "
        "process whose imports are done (in_process_s); medians",
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "step_startup.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
