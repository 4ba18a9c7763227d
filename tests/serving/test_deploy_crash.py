"""The deploy step CLI killed with SIGKILL right after the label moved, then retried, against a real model server."""

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
from include.mlops.deploy.deploy import FAULT_AFTER_LABEL_MOVE_ENV, journal_path
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from tests.serving.conftest import RunningServer, register, serve, wait_for

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


def run_deploy(
    root: Path, out: Path, server_url: str, data: Path, fault: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m include.mlops deploy`` in its own process, as the local backend runs it."""
    env = {**os.environ, "MLOPS_ARTIFACT_ROOT": str(root)}
    env.pop("MLOPS_SERVING_BASE_PATH", None)
    env.pop(FAULT_AFTER_LABEL_MOVE_ENV, None)
    if fault is not None:
        env[FAULT_AFTER_LABEL_MOVE_ENV] = fault
    command = [sys.executable, "-m", "include.mlops", "deploy", "--model", "diabetes", "--version", "2",
               "--out", str(out), "--server-url", server_url, "--timeout", "60", "--data", str(data)]  # fmt: skip
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def stable_answer(running: RunningServer) -> float:
    with running.client() as client:
        response = client.post("/v1/models/diabetes/labels/stable:predict", json={"instances": [[1.0] * 10]})
    return float(response.json()["predictions"][0][0]) if response.status_code == 200 else -1.0


def kill_after_label_move(root: Path, out: Path, url: str, data: Path, registry: Registry) -> None:
    crashed = run_deploy(root, out, url, data, fault="sigkill")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    # The worst moment: the label names the unverified version and nothing was written but the journal.
    assert registry.label_version("diabetes", "stable") == 2
    assert journal_path(out).is_file() and not out.exists()


def test_a_retry_after_a_crash_restores_then_deploys_and_verifies(
    registry: Registry, snapshot: Path, tmp_path: Path
) -> None:
    root, out = tmp_path / "artifacts", tmp_path / "artifacts" / "runs" / "lifecycle__diabetes" / "r1" / "deploy"
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        kill_after_label_move(root, out, running.url, snapshot, registry)

        retry = run_deploy(root, out, running.url, snapshot)
        assert retry.returncode == 0, retry.stderr[-3000:]
        assert "died while moving label 'stable' to version 2; restoring it first" in retry.stderr
        result = json.loads(retry.stdout.strip().splitlines()[-1])
        # changed/previous show that the label was back on 1 and this attempt moved and verified it.
        assert (result["verified"], result["changed"], result["previous"]) == (True, True, 1)
        assert registry.labels("diabetes") == {"stable": 2} and not journal_path(out).exists()
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
        assert not journal_path(out).exists()
        assert wait_for(lambda: stable_answer(running) == pytest.approx(10.0), timeout=30)
