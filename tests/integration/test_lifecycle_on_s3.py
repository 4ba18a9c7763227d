"""The lifecycle DAG with its artifact root in a bucket (moto's S3 server, real HTTP), through ``dag.test()``.

The steps, the gate and the deploy work in the worker's local mirror and
publish to the bucket; the model server is a separate process with a mirror of
its own, so it can serve only what reached the bucket, and the deploy verifies
the new version through it.  Afterwards a third, empty mirror (another machine)
reads the run's outputs and the registry from the bucket alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from airflow_stack import free_port, wait_until
from dag_runner import run_lifecycle
from s3_stand_in import BUCKET

from include.mlops import artifact_store
from include.mlops.artifacts import run_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "lifecycle__diabetes"
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
ANY_QUALITY = {"r2": {"min": -1000.0}, "mae": {"max": 1000.0}}


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def model_server(env: dict[str, str], log: Path) -> Iterator[str]:
    """``python -m include.mlops.serving`` reading the registry from the bucket through its own mirror."""
    url = f"http://127.0.0.1:{(port := free_port())}"
    command = [sys.executable, "-m", "include.mlops.serving", "--port", str(port), "--poll-seconds", "0.2"]
    command += ["--mirror-interval-s", "0.5", "--no-predlog", "--log-level", "INFO"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or _answers(f"{url}/monitoring/prometheus/metrics"), 90,
                   "the model server to start")  # fmt: skip
        assert process.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def bucket_root(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"s3://{BUCKET}/{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}/artifacts"
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", uri)
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "worker-mirror"))
    return uri


def _keys(uri: str) -> set[str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {item["Key"][len(prefix) + 1 :] for page in pages for item in page.get("Contents", [])}


def test_a_release_runs_with_the_artifact_root_in_a_bucket(
    bucket_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_env = {**os.environ, "MLOPS_STAGING_DIR": str(tmp_path / "server-mirror")}
    server_env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"
    with model_server(server_env, tmp_path / "model-server.log") as url:
        monkeypatch.setenv("AIRFLOW_CONN_MODEL_SERVER_DEFAULT", url)
        run = run_lifecycle(DAG_ID, DAY, {"thresholds": ANY_QUALITY, "epochs": 3})

        assert run["state"] == "success", run
        deployed = run["xcoms"]["deploy"]
        assert (deployed["version"], deployed["label"], deployed["verified"]) == (1, "stable", True), deployed
        # The server answers from its own mirror of the bucket, which it filled by itself.
        answer = httpx.post(f"{url}/v1/models/diabetes/labels/stable:predict", json={"instances": [[0.0] * 10]})
        assert answer.status_code == 200, answer.text
        assert any((tmp_path / "server-mirror").rglob("saved_model.pb"))

    keys = _keys(bucket_root)
    run_id = run["run_id"]
    safe = run_dir(DAG_ID, run_id, "").relative_to(artifact_store.current().local).as_posix()
    for step in ("snapshot", "validate", "train", "evaluate", "gate", "register", "deploy"):
        assert f"{safe}/{step}/.complete.json" in keys, (step, sorted(k for k in keys if k.startswith(safe)))
    assert "models/models.config" in keys
    assert "models/diabetes/1/saved_model.pb" in keys
    assert "models/diabetes/1/assets.extra/checksums.json" in keys
    # XComs carry URIs, so any machine can follow them.
    assert run["xcoms"]["train"]["model_uri"].startswith(f"{bucket_root}/runs/")

    # Another machine: an empty mirror reads the run and the registry from the bucket alone.
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "other-mirror"))
    other = artifact_store.current()
    assert not other.local.exists()
    assert other.pull(other.local / safe / "evaluate")
    metrics = json.loads((other.local / safe / "evaluate" / "metrics.json").read_text())
    assert metrics["model"] == "diabetes" and "mae" in metrics["metrics"]
    registry = artifact_store.open_registry()
    assert registry.labels("diabetes") == {"stable": 1}
    registry.verify("diabetes", 1)
    lineage = registry.read_metadata("diabetes", 1)["lineage"]
    assert lineage["run_id"] == run_id
    # Where the files came from is recorded as URIs in the bucket, readable from any machine.
    assert lineage["sources"]["model_uri"].startswith(f"{bucket_root}/runs/"), lineage["sources"]
    assert lineage["data_uri"].startswith(f"{bucket_root}/runs/"), lineage
