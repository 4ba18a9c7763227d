"""Benchmark of the artifact root on S3 against a local folder: one lifecycle through the step CLI.

The lifecycle's steps (snapshot, validate, train, evaluate, register, deploy
of ``diabetes``) run as the step CLI's subprocesses, as the local backend runs
them, once with ``MLOPS_ARTIFACT_ROOT`` a local folder and once with it in a
bucket of moto's S3 server on loopback (``tests/s3_stand_in.py``: real HTTP,
one request at a time).  On the bucket each step pulls its inputs and
publishes its output and result, and register and deploy work on the registry
in the bucket.  The two alternate for ``repeats`` rounds; we report the
medians per step and of the whole lifecycle, and the ratio S3 / local.

moto on loopback has no network latency and serialises requests, so the
figure is the work the store adds (requests, hashing, copies), not what a
real S3 region would add on top (tens of ms per request).
"""

from __future__ import annotations

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

REPEATS = 3
MODEL = "diabetes"
INTERVAL = ["--interval-start", "2026-11-19T00:00:00+00:00", "--interval-end", "2026-11-20T00:00:00+00:00"]
STEPS = ("snapshot", "validate", "train", "evaluate", "register", "deploy")


def run_step(
    step: str, env: dict[str, str], out: str, *arguments: str, python: tuple[str, ...] = ()
) -> tuple[float, dict[str, Any], str]:
    """One step CLI subprocess (``python``: interpreter flags): its wall seconds, JSON result and stderr."""
    command = [sys.executable, *python, "-m", "include.mlops", step, "--model", MODEL, "--out", out, *arguments]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{step} failed ({done.returncode}): {done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def timed_step(step: str, env: dict[str, str], out: str, *arguments: str) -> tuple[float, dict[str, Any]]:
    seconds, result, _ = run_step(step, env, out, *arguments)
    return seconds, result


def lifecycle(root: str, env: dict[str, str], run_id: str, step: Any = timed_step) -> dict[str, float]:
    """The lifecycle's steps under ``root`` (a folder or an ``s3://`` URI); seconds per step and in all.

    ``step`` runs one step (:func:`timed_step`'s signature); another benchmark passes one that profiles it too.
    """
    run = f"{root}/runs/bench__{MODEL}/{run_id}"
    seconds: dict[str, float] = {}
    seconds["snapshot"], snap = step("snapshot", env, f"{run}/snapshot", *INTERVAL)
    seconds["validate"], _ = step("validate", env, f"{run}/validate", "--data", snap["data_uri"])
    overrides = json.dumps({"epochs": 3})
    seconds["train"], trained = step("train", env, f"{run}/train", "--data", snap["data_uri"], "--overrides", overrides)
    seconds["evaluate"], _ = step(
        "evaluate", env, f"{run}/evaluate", "--data", snap["data_uri"], "--candidate", trained["model_uri"],
        "--champion", "none",
    )  # fmt: skip
    lineage = json.dumps({"dag_id": f"bench__{MODEL}", "run_id": run_id, "data_uri": snap["data_uri"]})
    seconds["register"], registered = step(
        "register", env, f"{run}/register", "--candidate", trained["model_uri"], "--evaluation", f"{run}/evaluate",
        "--lineage", lineage,
    )  # fmt: skip
    seconds["deploy"], _ = step("deploy", env, f"{run}/deploy", "--version", str(registered["version"]))
    seconds["lifecycle"] = sum(seconds.values())
    return seconds


def run(results_dir: Path, repeats: int = REPEATS) -> dict[str, Any]:
    """Median seconds per step on S3 and on a local folder, and their ratio; written to ``object_store.json``."""
    from s3_stand_in import BUCKET, running_s3

    base = Path(tempfile.mkdtemp(prefix="mlops-bench-object-store-"))
    stand_in = running_s3()
    endpoint = next(stand_in)  # sets the AWS variables of this process, which the steps inherit
    try:
        env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{PROJECT_ROOT / 'plugins'}"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        times: dict[str, dict[str, list[float]]] = {s: {"local": [], "s3": []} for s in (*STEPS, "lifecycle")}
        for i in range(repeats):
            # Alternate the order so that a slow moment of a shared machine hits both.
            for kind in ("s3", "local") if i % 2 else ("local", "s3"):
                if kind == "local":
                    root = str(base / f"local-{i}")
                    step_env = {**env, "MLOPS_ARTIFACT_ROOT": root}
                else:
                    root = f"s3://{BUCKET}/bench-{i}"
                    step_env = {**env, "MLOPS_ARTIFACT_ROOT": root, "MLOPS_STAGING_DIR": str(base / f"mirror-{i}")}
                for step, value in lifecycle(root, step_env, f"r{i}").items():
                    times[step][kind].append(value)
                print(f"  round {i + 1} {kind}: lifecycle {times['lifecycle'][kind][-1]:.1f} s", flush=True)
        steps = {}
        for step, by_kind in times.items():
            local, s3 = statistics.median(by_kind["local"]), statistics.median(by_kind["s3"])
            steps[step] = {
                "local_median_s": round(local, 3),
                "s3_median_s": round(s3, 3),
                "ratio_s3_over_local": round(s3 / local, 3),
            }
        result = {
            "benchmark": "object_store",
            "what": "lifecycle steps of diabetes through the step CLI, artifact root in S3 (moto) vs a local folder",
            "repeats": repeats,
            "s3_endpoint": endpoint,
            "steps": steps,
            "note": "moto on loopback: no network latency, requests serialised; real S3 adds latency per request",
        }
    finally:
        stand_in.close()
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "object_store.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
