"""Benchmark of the first run: from ``make run`` on a fresh clone until both demo models are AVAILABLE.

Each repeat starts ``scripts/run_local.sh`` as ``make run`` does (the Makefile's
variables), on a fresh Airflow home and artifact root in a temporary folder and
free loopback ports, in a session of its own, and polls every 0.5 s:

- ``ui_up_s``: the API's health and the UI's ``/`` both answer 200 (what the
  script waits for before it prints the login);
- ``<model>_available_s``: the model server reports a version of the model
  AVAILABLE (``GET /v1/models/<serving_name>``), for every model config in the
  models folder (the lifecycle DAGs' nightly runs deploy them);
- ``all_available_s``: the last of them, the figure the target (<= 120 s) is about.

All times count from the moment the script is started.  Once every model is
AVAILABLE, each lifecycle DAG's first run and its task instances are read over
REST: per task, when it was scheduled, queued, started and ended (relative to
the script's start) and its duration, so that queue waits and scheduler
latency show beside the steps' own time.  Then the script is stopped with
SIGTERM (it stops supervisord and reaps), and nothing of either session may be left.

``variants`` (name -> extra environment) compares settings in the same run; the
repeats of the variants alternate, and each variant's medians get a ratio to the
first variant's.

    python -m benchmarks first_run
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "tests"))
RESULTS_DIR = Path(__file__).resolve().parent / "results"
STACK_PROCESSES = PROJECT_ROOT / "scripts" / "stack_processes.py"
POLL_S = 0.5
TIMEOUT_S = 900.0
TARGET_S = 120.0
TERMINAL = {"success", "failed"}
UI_PATHS = ("/api/v2/monitor/health", "/")  # what run_local.sh waits for before it prints the login
# Steps started cold (a new interpreter each) against warm (forked by the step runner, include/mlops/warm).
DEFAULT_VARIANTS = {"cold": {"MLOPS_WARM_STEPS": "0"}, "warm": {}}
PORTS = (
    "AIRFLOW__API__PORT",
    "MLOPS_SERVER_PORT",
    "MLOPS_PROMETHEUS_PORT",
    "MLOPS_PUSHGATEWAY_PORT",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
)


# --------------------------------------------------------------------------------------------- pure logic


def any_available(status: Mapping[str, Any] | None) -> bool:
    """Whether a model server's ``GET /v1/models/<name>`` answer lists a version in state AVAILABLE."""
    return any(entry.get("state") == "AVAILABLE" for entry in (status or {}).get("model_version_status", []))


def _at(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _since(value: str | None, start: dt.datetime) -> float | None:
    moment = _at(value)
    return round((moment - start).total_seconds(), 1) if moment is not None else None


def _between(first: float | None, then: float | None) -> float | None:
    return round(then - first, 1) if first is not None and then is not None else None


def task_rows(task_instances: Sequence[Mapping[str, Any]], start: dt.datetime) -> list[dict[str, Any]]:
    """One row per task instance, its times in seconds since ``start``, in the order the tasks started.

    ``wait_to_queue_s``: scheduled (upstream done) -> queued (a slot found); ``wait_to_start_s``:
    queued -> running (a worker picked it up and its supervisor started); ``duration_s``: running -> ended.
    Tasks that never ran (skipped) come last, with ``None`` times.
    """
    rows = []
    for ti in task_instances:
        name = ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]"
        scheduled, queued = _since(ti.get("scheduled_when"), start), _since(ti.get("queued_when"), start)
        started, ended = _since(ti.get("start_date"), start), _since(ti.get("end_date"), start)
        rows.append(
            {
                "task": name,
                "state": ti.get("state"),
                "try_number": ti.get("try_number"),
                "scheduled_s": scheduled,
                "queued_s": queued,
                "start_s": started,
                "end_s": ended,
                "wait_to_queue_s": _between(scheduled, queued),
                "wait_to_start_s": _between(queued, started),
                "duration_s": _between(started, ended),
            }
        )
    return sorted(rows, key=lambda r: (r["start_s"] is None, r["start_s"] or 0.0, r["task"]))


def first_run(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The earliest of a DAG's runs (by ``run_after``): the nightly run a fresh stack starts by itself."""
    if not runs:
        raise ValueError("the DAG has no run")
    return min(runs, key=lambda r: (r["run_after"], r["dag_run_id"]))


def milestones(sample: Mapping[str, Any]) -> dict[str, float]:
    """The flat figures of one repeat: ``ui_up_s``, ``<model>_available_s`` each, ``all_available_s``."""
    flat = {"ui_up_s": sample["ui_up_s"]}
    flat.update({f"{model}_available_s": seconds for model, seconds in sample["available_s"].items()})
    flat["all_available_s"] = max(sample["available_s"].values())
    return flat


def medians(samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The median of each milestone over the repeats of one variant."""
    flats = [milestones(sample) for sample in samples]
    return {key: round(statistics.median(flat[key] for flat in flats), 1) for key in flats[0]}


def ratios(per_variant: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Each variant's medians divided by the first variant's ({} with fewer than two variants)."""
    if len(per_variant) < 2:
        return {}
    baseline = next(iter(per_variant.values()))
    return {
        name: {key: round(value / baseline[key], 2) for key, value in figures.items() if baseline.get(key)}
        for name, figures in list(per_variant.items())[1:]
    }


# --------------------------------------------------------------------------------------------- the stack


def demo_models(models_dir: str | None = None) -> dict[str, dict[str, str]]:
    """Model name -> its lifecycle DAG and serving name, for every valid config of the models folder."""
    from include.mlops.config import DEFAULT_MODELS_DIR, scan_model_configs

    configs, _ = scan_model_configs(models_dir or DEFAULT_MODELS_DIR)
    return {c.name: {"dag_id": c.dag_id, "serving_name": c.serving_name} for c in configs}


def make_run_env(workdir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment ``make run`` gives the script (the Makefile's exports), on a fresh home and free ports."""
    from airflow_stack import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(workdir / "airflow-home"),
            "AIRFLOW_CONFIG": str(PROJECT_ROOT / "airflow.cfg"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "MLOPS_ARTIFACT_ROOT": str(workdir / "artifacts"),
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            "MLOPS_API_HOST": "127.0.0.1",  # loopback only; the port is all that differs from make run
            **{name: str(free_port()) for name in PORTS},
            **extra,
        }
    )
    return env


def _stack_processes() -> Any:
    spec = importlib.util.spec_from_file_location("stack_processes", STACK_PROCESSES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _supervisor_pid(home: Path) -> int | None:
    try:
        return int((home / "supervisord.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def log_tails(workdir: Path, home: Path, lines: int = 25) -> str:
    """The last lines of the script's output, supervisord's and the scheduler's logs and the newest task logs."""
    task_logs = sorted((home / "logs").glob("dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime)[-3:]
    parts = []
    for path in [workdir / "run_local.log", home / "supervisord.log", home / "scheduler.log", *task_logs]:
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs in {home})"


def stop(script: subprocess.Popen[bytes], home: Path) -> None:
    """SIGTERM to the script (its trap stops supervisord and reaps), then end what either session left."""
    supervisor = _supervisor_pid(home)
    if script.poll() is None:
        script.send_signal(signal.SIGTERM)
        try:
            script.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
    sessions = [script.pid] + ([supervisor] if supervisor else [])
    for session in sessions:
        subprocess.run([sys.executable, str(STACK_PROCESSES), "reap", "--session", str(session)], timeout=120)
    left = [p.pid for session in sessions for p in _stack_processes().session_processes(session)]
    if left:
        raise RuntimeError(f"processes of the stopped stack are still running: {left}")


def _wait_for_milestones(
    script: subprocess.Popen[bytes],
    env: Mapping[str, str],
    models: Mapping[str, Mapping[str, str]],
    start: float,
    timeout_s: float,
) -> tuple[float, dict[str, float]]:
    """Poll until the UI answers and every model has an AVAILABLE version: (ui_up_s, model -> seconds).

    ``start``: the script's start on the ``time.monotonic()`` clock; the figures count from it.
    """
    api = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}"
    server = f"http://127.0.0.1:{env['MLOPS_SERVER_PORT']}"
    ui_up: float | None = None
    available: dict[str, float] = {}
    with httpx.Client(timeout=2) as client:
        while ui_up is None or len(available) < len(models):
            if script.poll() is not None:
                raise RuntimeError(f"run_local.sh exited with {script.returncode}")
            if time.monotonic() - start > timeout_s:
                missing = (["the UI answering"] if ui_up is None else []) + [
                    f"{name} AVAILABLE" for name in models if name not in available
                ]
                raise TimeoutError(f"not reached within {timeout_s:g}s: {', '.join(missing)}")
            try:
                if ui_up is None and all(client.get(api + path).status_code == 200 for path in UI_PATHS):
                    ui_up = time.monotonic() - start
                for name, model in models.items():
                    if name not in available:
                        response = client.get(f"{server}/v1/models/{model['serving_name']}")
                        if response.status_code == 200 and any_available(response.json()):
                            available[name] = time.monotonic() - start
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(POLL_S)
    return round(ui_up, 1), {name: round(available[name], 1) for name in models}


def _critical_paths(
    env: Mapping[str, str], models: Mapping[str, Mapping[str, str]], started_at: dt.datetime, deadline: float
) -> dict[str, Any]:
    """Each lifecycle DAG's first run (waited for until it ends, within ``deadline``) and its task rows."""
    api = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}"
    default = Path(env["AIRFLOW_HOME"], "simple_auth_manager_passwords.json.generated")
    passwords = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", default)
    password = json.loads(Path(passwords).read_text())
    token = httpx.post(f"{api}/auth/token", json={"username": "admin", "password": password["admin"]}, timeout=30)
    token.raise_for_status()
    paths = {}
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        for name, model in models.items():
            dag_id = model["dag_id"]
            while True:
                runs = client.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})
                runs.raise_for_status()
                run = first_run(runs.json()["dag_runs"])
                if run["state"] in TERMINAL or time.monotonic() > deadline:
                    break
                time.sleep(2)
            tis = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances", params={"limit": 100})
            tis.raise_for_status()
            paths[name] = {
                "dag_id": dag_id,
                "run_id": run["dag_run_id"],
                "state": run["state"],
                "queued_s": _since(run.get("queued_at"), started_at),
                "start_s": _since(run.get("start_date"), started_at),
                "end_s": _since(run.get("end_date"), started_at),
                "tasks": task_rows(tis.json()["task_instances"], started_at),
            }
    return paths


def one_run(extra_env: Mapping[str, str], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """One fresh ``make run`` until every demo model is AVAILABLE, then its critical paths; the stack stopped."""
    workdir = Path(tempfile.mkdtemp(prefix="mlops-bench-first-run-"))
    env = make_run_env(workdir, extra_env)
    home = Path(env["AIRFLOW_HOME"])
    models = demo_models(env.get("MLOPS_MODELS_DIR"))
    with open(workdir / "run_local.log", "wb") as output:
        started_at, start = dt.datetime.now(dt.UTC), time.monotonic()
        script = subprocess.Popen(
            ["bash", str(PROJECT_ROOT / "scripts" / "run_local.sh")],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        kept = False  # a failed repeat keeps its home and logs to look at
        try:
            ui_up_s, available_s = _wait_for_milestones(script, env, models, start, timeout_s)
            print(f"  UI up {ui_up_s}s, AVAILABLE: {available_s}", flush=True)
            paths = _critical_paths(env, models, started_at, deadline=time.monotonic() + 120)
        except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
            kept = True
            raise RuntimeError(f"first_run: {exc}; kept {workdir}\n{log_tails(workdir, home)}") from exc
        finally:
            stop(script, home)
            if not kept:
                shutil.rmtree(workdir, ignore_errors=True)
    return {"ui_up_s": ui_up_s, "available_s": available_s, "runs": paths}


def run(
    results_dir: Path,
    repeats: int = 2,
    variants: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, Any]:
    """``repeats`` fresh first runs of each variant (alternating); medians, ratios; written to ``first_run.json``."""
    variants = dict(variants or DEFAULT_VARIANTS)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for i in range(repeats):
        for name, extra in variants.items():
            print(f"  {name} {i + 1}/{repeats}: make run on a fresh home (env {dict(extra)})", flush=True)
            samples[name].append(one_run(extra, timeout_s))
    figures = {name: medians(runs) for name, runs in samples.items()}
    result = {
        "benchmark": "first_run",
        "what": "make run (scripts/run_local.sh) on a fresh home and artifact root until every demo model is AVAILABLE",
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "repeats": repeats,
        "target_all_available_s": TARGET_S,
        "variants": {
            name: {"env": dict(variants[name]), "medians": figures[name], "repeats": samples[name]} for name in variants
        },
        "ratios_to_first_variant": ratios(figures),
        "note": "times in seconds since the script started; task times from Airflow's REST API, rounded to 0.1 s",
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "first_run.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, medians_ in figures.items():
        print(f"  {name}: {medians_}", flush=True)
    return result


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run(RESULTS_DIR)
