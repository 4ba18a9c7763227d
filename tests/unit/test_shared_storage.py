"""One UID/GID policy for the shared artifact root (docs/shared-storage.md).

On Kubernetes the step pods (uid 1000, gid 1000) and Airflow's workers (uid
50000, gid 0, supplementary group 1000) write the same share.  The main test
prepares a share as the cluster does (owner 1000:1000, mode 2775) and runs the
project's real writers as both users with ``setpriv``, each writing into what
the other made.  It needs root (to switch users); CI runs as root, so under
``$CI`` a missing precondition fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARE_GID = 1000
STEP_POD = ("--reuid", "1000", "--regid", "1000", "--clear-groups")
WORKER = ("--reuid", "50000", "--regid", "0", "--groups", str(SHARE_GID))
# The policy, spelled out here rather than imported, so that the test states the contract.
FILE_MODE, DIR_MODE, SHARED_UMASK = 0o664, 0o2775, 0o002

DAG_ID, RUN_ID = "lifecycle__diabetes", "manual__2026-11-02T00_00_00_00_00"
RUN = f"runs/{DAG_ID}/{RUN_ID}"

SNAPSHOT_ARGS = (
    "-m include.mlops snapshot --model diabetes --wait-for-data 0 "
    "--interval-start 2026-11-01T00:00:00+00:00 --interval-end 2026-11-02T00:00:00+00:00"
)

# A step's output holding a stand-in SavedModel: its folders are made 0755 on purpose, as TensorFlow
# makes them whatever the umask (test_savedmodel_folders_get_the_shared_mode checks the real thing).
# The registry only reads files, so the stand-in is enough to register it.
STEP_TRAIN_AND_REGISTER = """
import os, sys
from pathlib import Path
os.umask(0o002)  # what the step CLI does first (test_step_cli_sets_the_shared_umask)
from include.mlops import artifacts
from include.mlops.registry.filesystem import Registry
root = artifacts.artifact_root()
with artifacts.step_output(root / "{run}/train") as staging:
    model = staging / "model"
    for folder in (model, model / "variables", model / "assets"):
        os.mkdir(folder, 0o755)
    (model / "saved_model.pb").write_bytes(b"graph" + sys.argv[1].encode())
    (model / "variables" / "variables.index").write_bytes(b"index")
registry = Registry()
result = registry.register(
    "diabetes", root / "{run}/train/model", metrics={{"mae": 1.0}},
    lineage={{"dag_id": "{dag_id}", "run_id": "{run_id}-" + sys.argv[1]}},
)
registry.set_label("diabetes", "canary", result.version)
print("registered", result.version)
"""

WORKER_TASKS = """
import os
from airflow.sdk.listener import get_listener_manager
# What the Task SDK does in a task's process before execute (the project's plugin listens).
get_listener_manager().hook.on_task_instance_running(previous_state=None, task_instance=None)
from include.mlops import artifacts
from include.mlops.registry.filesystem import Registry
from mlops_airflow.alerts import record_alert
root = artifacts.artifact_root()
assert (root / "{run}/.snapshot.result.json").is_file()
artifacts.atomic_write_json(root / "{run}/gate/decision.json", {{"route": "register"}})
artifacts.atomic_write_text(root / "{run}/gate/decision.md", "# Gate: register\\n")
record_alert("diabetes", {{"kind": "slo", "message": "p99 latency over budget"}})
print("stable was", Registry().set_label("diabetes", "stable", 1))
"""


def _require_root_and_setpriv() -> None:
    if os.geteuid() != 0:
        problem = "switching to the step pod's and the worker's uids needs root (CI runs as root)"
    elif shutil.which("setpriv") is None:
        problem = "setpriv (util-linux) is missing; install util-linux"
    else:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem}; CI must run this test")
    pytest.skip(problem)


@pytest.fixture
def share() -> Iterator[Path]:
    """A share prepared as the cluster does; under /tmp, since pytest's tmp_path is private to root."""
    _require_root_and_setpriv()
    base = Path(tempfile.mkdtemp(prefix="mlops-share-"))
    try:
        base.chmod(0o755)
        root = base / "artifacts"
        root.mkdir()
        os.chown(root, 1000, SHARE_GID)
        root.chmod(DIR_MODE)
        for home, uid in (("home-1000", 1000), ("home-50000", 50000)):
            (base / home).mkdir()
            os.chown(base / home, uid, 0)
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as(identity: tuple[str, ...], share: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` as ``identity`` starting from umask 022 (a container's default)."""
    uid = identity[1]
    home = share.parent / f"home-{uid}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
        "MLOPS_ARTIFACT_ROOT": str(share),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW_CONFIG": str(PROJECT_ROOT / "airflow.cfg"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    command = ["sh", "-c", 'umask 022 && exec "$@"', "sh", "setpriv", *identity, sys.executable, *args]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def _check_can_import(identity: tuple[str, ...], share: Path) -> None:
    probe = _as(identity, share, ["-c", "import include.mlops.artifacts"])
    if probe.returncode != 0:
        pytest.fail(
            f"uid {identity[1]} cannot import the project: make the checkout {PROJECT_ROOT} and the virtualenv "
            f"{sys.executable} readable (and their folders searchable) by other users.\n{probe.stderr[-2000:]}"
        )


def _run(identity: tuple[str, ...], share: Path, args: list[str], what: str) -> str:
    done = _as(identity, share, args)
    assert done.returncode == 0, f"{what} as uid {identity[1]} failed:\n{done.stderr[-4000:]}"
    return done.stdout


def _snapshot(identity: tuple[str, ...], share: Path) -> str:
    out, result = share / RUN / "snapshot", share / RUN / ".snapshot.result.json"
    return _run(identity, share, [*SNAPSHOT_ARGS.split(), "--out", str(out), "--result-file", str(result)], "snapshot")


def _python(code: str, *argv: str) -> list[str]:
    return ["-c", textwrap.dedent(code.format(run=RUN, dag_id=DAG_ID, run_id=RUN_ID)), *argv]


def test_step_pods_and_workers_share_runs_and_registry(share: Path) -> None:
    _check_can_import(STEP_POD, share)
    _check_can_import(WORKER, share)

    # A step pod: the snapshot step through the real CLI, then a trained model, registered and labelled.
    _snapshot(STEP_POD, share)
    assert "registered 1" in _run(STEP_POD, share, _python(STEP_TRAIN_AND_REGISTER, "1"), "train+register")
    # A worker: the gate's decision into the pod's run folder, an alert, and a label move.
    assert "stable was None" in _run(WORKER, share, _python(WORKER_TASKS), "gate+alert+label")
    # The step pod again: a retry replaces its outputs, registers a second version and moves a label
    # in the models.config the worker rewrote last.
    _snapshot(STEP_POD, share)
    assert "registered 2" in _run(STEP_POD, share, _python(STEP_TRAIN_AND_REGISTER, "2"), "retry train+register")
    # And the worker once more, over files the step pod replaced.
    _run(WORKER, share, _python(WORKER_TASKS), "gate+alert+label again")

    from include.mlops.registry.filesystem import Registry

    registry = Registry(share / "models")
    assert registry.versions("diabetes") == [1, 2]
    assert registry.labels("diabetes") == {"canary": 2, "stable": 1}
    assert (share / "monitoring/diabetes/alerts.jsonl").read_text().count("\n") == 2
    owners = {
        share / RUN / "snapshot/data.parquet": 1000,
        share / RUN / "gate/decision.json": 50000,
        share / "models/diabetes/2/saved_model.pb": 1000,
        share / "models/models.config": 50000,
    }
    assert {path: path.stat().st_uid for path in owners} == owners

    wrong = []
    for path in sorted(share.rglob("*")):
        info = path.lstat()
        want = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
        if stat.S_IMODE(info.st_mode) != want or info.st_gid != SHARE_GID:
            wrong.append(f"{path.relative_to(share)}: {stat.S_IMODE(info.st_mode):o} gid {info.st_gid}")
        if ".old-" in path.name or "staging" in path.name:
            wrong.append(f"{path.relative_to(share)}: left over from a replace")
    assert wrong == [], f"want files {FILE_MODE:o} and folders {DIR_MODE:o}, group {SHARE_GID}:\n" + "\n".join(wrong)


def test_step_cli_sets_the_shared_umask() -> None:
    code = "import os; os.umask(0o022)\nfrom include.mlops import cli\ntry:\n    cli.main(['--help'])\n"
    code += "except SystemExit:\n    pass\nprint(oct(os.umask(0o022)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == oct(SHARED_UMASK)


def test_airflow_task_processes_get_the_shared_umask() -> None:
    # The Task SDK loads listeners from the plugins folder (set by tests/conftest.py) in the task's process.
    code = textwrap.dedent(
        """
        import os
        os.umask(0o022)
        from airflow.sdk.listener import get_listener_manager
        get_listener_manager().hook.on_task_instance_running(previous_state=None, task_instance=None)
        print(oct(os.umask(0o022)))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == oct(SHARED_UMASK)


@pytest.mark.slow
def test_savedmodel_folders_get_the_shared_mode(tmp_path: Path) -> None:
    """TensorFlow makes SavedModel folders 0755 whatever the umask; a step's output must not keep that."""
    import tensorflow as tf

    from include.mlops.artifacts import step_output

    class Tiny(tf.Module):
        def __init__(self) -> None:
            self.weight = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            return x * self.weight

    with step_output(tmp_path / "train") as staging:
        tf.saved_model.save(Tiny(), str(staging / "model"))
    model = tmp_path / "train" / "model"
    folders = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in [model, *model.rglob("*")] if p.is_dir()}
    files = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in model.rglob("*") if p.is_file()}
    assert {"model", "variables"} <= set(folders)
    assert "saved_model.pb" in files
    assert set(folders.values()) == {oct(DIR_MODE)}, folders
    assert set(files.values()) == {oct(FILE_MODE)}, files
