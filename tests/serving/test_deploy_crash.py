"""The deploy step CLI stopped in each way right after its label moved, against a real model server.

Each ending leaves ``stable`` answering with a verified version: SIGTERM puts
the label back before the process exits; after SIGKILL, the retry (any later
deploy of the model) or the champion lookup repairs it from the model's
journal.  Verification through two replicas that re-read ``models.config`` at
different times does not roll back a good version.  The endings that need a
scheduler ("mark failed", ``execution_timeout``, retries exhausted, the next
run) are in ``tests/e2e/test_deploy_endings.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.mlops.config import PROJECT_ROOT, find_model_config
from include.mlops.deploy.deploy import FAULT_AFTER_LABEL_MOVE_ENV
from include.mlops.deploy.journal import journal_path
from include.mlops.exit_codes import EXIT_TERMINATED
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.steps.runners import champion
from tests.serving.conftest import RunningServer, register, serve, wait_for
from tests.serving.round_robin import round_robin

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("server_behaviour")]


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    features = list(find_model_config("diabetes").features)
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(20, len(features))), columns=features)
    frame["split"] = "test"
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def registry(tmp_path: Path, saved_models: dict[float, Path]) -> Registry:
    """Versions 1 (x1) and 2 (x2) of ``diabetes``, ``stable`` -> 1."""
    reg = Registry(tmp_path / "artifacts" / "models")
    register(reg, saved_models[1.0], run="a")
    register(reg, saved_models[2.0], run="b")
    reg.set_label("diabetes", "stable", 1)
    return reg


def deploy_command(
    root: Path, out: Path, server_url: str, data: Path, fault: str | None = None, *extra: str
) -> tuple[list[str], dict[str, str]]:
    """``python -m include.mlops deploy`` of version 2, and its environment, as the local backend runs it."""
    env = {**os.environ, "MLOPS_ARTIFACT_ROOT": str(root)}
    env.pop("MLOPS_SERVING_BASE_PATH", None)
    env.pop(FAULT_AFTER_LABEL_MOVE_ENV, None)
    if fault is not None:
        env[FAULT_AFTER_LABEL_MOVE_ENV] = fault
    command = [sys.executable, "-m", "include.mlops", "deploy", "--model", "diabetes", "--version", "2",
               "--out", str(out), "--server-url", server_url, "--timeout", "60", "--data", str(data), *extra]  # fmt: skip
    return command, env


def run_deploy(
    root: Path, out: Path, server_url: str, data: Path, fault: str | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    command, env = deploy_command(root, out, server_url, data, fault, *extra)
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def label_answers(running: RunningServer, label: str = "stable") -> int | None:
    """The version ``label`` answers with now (its metadata), None when it answers with none."""
    with running.client() as client:
        response = client.get(f"/v1/models/diabetes/labels/{label}/metadata")
    return int(response.json()["model_spec"]["version"]) if response.status_code == 200 else None


def stable_answer(running: RunningServer) -> float:
    with running.client() as client:
        response = client.post("/v1/models/diabetes/labels/stable:predict", json={"instances": [[1.0] * 10]})
    return float(response.json()["predictions"][0][0]) if response.status_code == 200 else -1.0


def kill_after_label_move(root: Path, out: Path, url: str, data: Path, registry: Registry) -> None:
    crashed = run_deploy(root, out, url, data, fault="sigkill")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    # The worst moment: the label names the unverified version and nothing was written but the journal.
    assert registry.label_version("diabetes", "stable") == 2
    assert journal_path(registry.model_dir("diabetes"), "stable").is_file() and not out.exists()


def test_a_retry_after_a_crash_restores_then_deploys_and_verifies(
    registry: Registry, snapshot: Path, tmp_path: Path
) -> None:
    root, out = tmp_path / "artifacts", tmp_path / "artifacts" / "runs" / "lifecycle__diabetes" / "r1" / "deploy"
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        kill_after_label_move(root, out, running.url, snapshot, registry)

        retry = run_deploy(root, out, running.url, snapshot)
        assert retry.returncode == 0, retry.stderr[-3000:]
        assert "was moving label 'stable' from version 1 to version 2 and did not finish; repaired" in retry.stderr
        result = json.loads(retry.stdout.strip().splitlines()[-1])
        # changed/previous show that the label was back on 1 and this attempt moved and verified it.
        assert (result["verified"], result["changed"], result["previous"]) == (True, True, 1)
        assert registry.labels("diabetes") == {"stable": 2}
        assert not journal_path(registry.model_dir("diabetes"), "stable").exists()
        assert wait_for(lambda: stable_answer(running) == pytest.approx(20.0), timeout=30)


def test_a_retry_after_a_crash_that_fails_verification_ends_on_the_old_version(
    registry: Registry, saved_models: dict[float, Path], snapshot: Path, tmp_path: Path
) -> None:
    """The server's folder holds a different model as version 2, so the retry cannot verify it."""
    impostor = Registry(tmp_path / "server-models")
    register(impostor, saved_models[1.0], run="a")
    register(impostor, saved_models[3.0], run="c")
    impostor.config_path.symlink_to(registry.config_path)
    root, out = tmp_path / "artifacts", tmp_path / "artifacts" / "runs" / "lifecycle__diabetes" / "r2" / "deploy"
    with serve(ServerSettings(registry_root=impostor.root, poll_seconds=0.1, predlog_root=None)) as running:
        kill_after_label_move(root, out, running.url, snapshot, registry)

        retry = run_deploy(root, out, running.url, snapshot)
        # Retryable (exit 1): the server disagreed, not the input; the label is already back on version 1.
        assert retry.returncode == 1, retry.stderr[-3000:]
        assert "answered differently from version 2" in retry.stderr
        assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
        assert not journal_path(registry.model_dir("diabetes"), "stable").exists()
        assert wait_for(lambda: stable_answer(running) == pytest.approx(10.0), timeout=30)


def test_sigterm_after_the_label_moved_puts_it_back_before_the_process_exits(
    registry: Registry, snapshot: Path, tmp_path: Path
) -> None:
    """What Airflow's "mark failed", ``execution_timeout`` and a pod deletion send: SIGTERM, then SIGKILL later."""
    root, out = tmp_path / "artifacts", tmp_path / "artifacts" / "runs" / "lifecycle__diabetes" / "r3" / "deploy"
    journal = journal_path(registry.model_dir("diabetes"), "stable")
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        command, env = deploy_command(root, out, running.url, snapshot, "hang")
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: registry.label_version("diabetes", "stable") == 2, timeout=120)
            assert journal.is_file()
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        # Checked right after the exit, without waiting: the step confirmed the label through the server first.
        assert label_answers(running) == 1
        assert proc.returncode == EXIT_TERMINATED, stderr[-3000:]
        assert "deploy stopped: SIGTERM received" in stderr
        assert "was moved back to version 1" in stderr and "confirmed it" in stderr
        assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
        assert not journal.exists() and not out.exists()
        assert stable_answer(running) == pytest.approx(10.0)


def test_after_a_sigkill_the_champion_lookup_repairs_the_label_first(
    registry: Registry, snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries exhausted: no deploy comes back, and the next run's evaluate compares against the verified version."""
    root, out = tmp_path / "artifacts", tmp_path / "artifacts" / "runs" / "lifecycle__diabetes" / "r4" / "deploy"
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        kill_after_label_move(root, out, running.url, snapshot, registry)
        monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(root))

        assert champion(find_model_config("diabetes"), "auto") == (str(registry.version_dir("diabetes", 1)), 1)

        assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
        assert not journal_path(registry.model_dir("diabetes"), "stable").exists()
        assert wait_for(lambda: label_answers(running) == 1 and stable_answer(running) == pytest.approx(10.0))


def test_a_replica_that_rereads_models_config_late_does_not_roll_back_a_good_version(
    registry: Registry, snapshot: Path, tmp_path: Path
) -> None:
    """Two servers behind one address; one polls models.config every 0.1 s, the other every 2 s (30 s on TF Serving).

    Each request goes to the other replica than the one before, so a check
    that trusted one answer would send the smoke rows to the late replica,
    which still labels the old version (or, in the tfserving behaviour, has
    not loaded the new one yet) and the good version would be rolled back.
    """
    root, out = tmp_path / "artifacts", tmp_path / "artifacts" / "runs" / "lifecycle__diabetes" / "r5" / "deploy"
    prompt, late = (ServerSettings(registry_root=registry.root, poll_seconds=s, predlog_root=None) for s in (0.1, 2.0))
    with serve(prompt) as first, serve(late) as second, round_robin([first.url, second.url]) as service:
        deployed = run_deploy(root, out, service, snapshot, None, "--server-poll-seconds", "2")

        assert deployed.returncode == 0, deployed.stderr[-3000:]
        result = json.loads(deployed.stdout.strip().splitlines()[-1])
        assert (result["verified"], result["changed"], result["previous"]) == (True, True, 1)
        # Both replicas serve version 2 through the label (the late one within its next poll).
        assert label_answers(first) == 2
        assert wait_for(lambda: label_answers(second) == 2, timeout=10)
        assert registry.labels("diabetes") == {"stable": 2}
