"""Infra validation and warmup requests: a version is loaded alone in a sandbox server before any label moves.

The sandbox is the project's server in its ``tfserving`` behaviour, started as
its own process on a spare port, as deploy starts it.  TF Serving replays a
version's ``assets.extra/tf_serving_warmup_requests`` before the version is
AVAILABLE, and a failing request fails the load; the project's server does the
same, so a version whose warmup fails never gets a label.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from include.mlops.config import PROJECT_ROOT, ModelConfig, find_model_config
from include.mlops.deploy.deploy import deploy
from include.mlops.deploy.errors import InfraValidationError
from include.mlops.deploy.journal import journal_path
from include.mlops.deploy.sandbox import infra_validate
from include.mlops.deploy.smoke import prepare_smoke_check
from include.mlops.exit_codes import EXIT_BAD_INPUT
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.training.warmup import WARMUP_ROWS, warmup_path, write_warmup_requests
from tests.serving.conftest import make_linear_model, serve

pytestmark = pytest.mark.slow


@pytest.fixture
def config() -> ModelConfig:
    return find_model_config("diabetes")


@pytest.fixture
def rows(tmp_path: Path, config: ModelConfig) -> Path:
    frame = pd.DataFrame(
        np.random.default_rng(0).normal(size=(20, len(config.features))), columns=list(config.features)
    )
    frame["split"] = "test"
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path, index=False)
    return path


def model_with_warmup(folder: Path, scale: float, warmup_width: int = 10) -> Path:
    model = make_linear_model(folder, scale)
    write_warmup_requests(model, np.ones((WARMUP_ROWS, warmup_width), dtype=np.float32))
    return model


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """Version 1 (x1) serves as ``stable``; version 2 (x2) is good; version 3's warmup requests have 11 columns."""
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    reg = Registry(tmp_path / "artifacts" / "models")
    for number, (scale, width) in enumerate([(1.0, 10), (2.0, 10), (3.0, 11)], start=1):
        model = model_with_warmup(tmp_path / f"m{number}", scale, width)
        reg.register("diabetes", model, metrics={"mae": 1.0}, lineage={"dag_id": "d", "run_id": f"r{number}"})
    reg.set_label("diabetes", "stable", 1)
    return reg


def test_warmup_requests_are_tf_servings_own_record_format(tmp_path: Path) -> None:
    """Read back with TF Serving's protos directly: a TFRecord of PredictionLog, batches of 1 and WARMUP_ROWS rows."""
    model = model_with_warmup(tmp_path / "m", 1.0)
    path = warmup_path(model)
    assert path == model / "assets.extra" / "tf_serving_warmup_requests"
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
    ]
    requests = [log.predict_log.request for log in logs]
    assert [r.model_spec.signature_name for r in requests] == ["serving_default"] * 2
    shapes = [[d.size for d in r.inputs["inputs"].tensor_shape.dim] for r in requests]
    assert shapes == [[1, 10], [WARMUP_ROWS, 10]]
    assert all(r.inputs["inputs"].dtype == tf.float32.as_datatype_enum for r in requests)


def test_the_server_replays_warmup_and_a_failing_warmup_fails_the_load(registry: Registry) -> None:
    registry.preload("diabetes", 3)
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        with running.client() as client:
            status = client.get("/v1/models/diabetes/versions/3").json()["model_version_status"][0]
            good = client.get("/v1/models/diabetes/versions/1").json()["model_version_status"][0]
    assert status["state"] == "END" and "its warmup requests failed" in status["status"]["error_message"]
    assert good["state"] == "AVAILABLE"


def test_a_good_version_passes_the_sandbox_and_deploy_records_it(
    registry: Registry, config: ModelConfig, rows: Path, tmp_path: Path
) -> None:
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        result = deploy(config, 2, out=tmp_path / "d2", server_url=running.url, data_uri=rows, timeout=60)
    assert result["verified"] and result["infra_validation"]["max_abs_diff"] <= 1e-4
    assert registry.labels("diabetes") == {"stable": 2}


def test_a_version_that_fails_to_load_in_the_sandbox_is_never_labelled(
    registry: Registry, config: ModelConfig, rows: Path, tmp_path: Path
) -> None:
    check = prepare_smoke_check(config, registry.version_dir("diabetes", 3), rows, 8)
    with pytest.raises(InfraValidationError, match=r"(?s)failed infra validation: .*warmup requests failed"):
        infra_validate(registry, "diabetes", 3, check, timeout_s=60, tolerance=1e-4)
    # Through the step CLI against a running server: exit 3 (no retry), and nothing moved or was loaded.
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        argv = [sys.executable, "-m", "include.mlops", "deploy", "--model", "diabetes", "--version", "3",
                "--out", str(tmp_path / "d3"), "--server-url", running.url, "--data", str(rows)]  # fmt: skip
        done = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    assert "failed infra validation" in done.stderr and "warmup requests failed" in done.stderr
    assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
    assert not journal_path(registry.model_dir("diabetes"), "stable").exists()


def test_infra_validation_can_be_turned_off_in_the_model_config(registry: Registry, rows: Path, tmp_path: Path) -> None:
    models = tmp_path / "configs"
    models.mkdir()
    source = PROJECT_ROOT / "include" / "models"
    text = (source / "diabetes.yaml").read_text() + "\ndeploy:\n  infra_validation: false\n"
    (models / "diabetes.yaml").write_text(text)
    shutil.copy(source / "diabetes.py", models / "diabetes.py")
    config = find_model_config("diabetes", models)
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.1, predlog_root=None)) as running:
        result = deploy(config, 2, out=tmp_path / "d2", server_url=running.url, data_uri=rows, timeout=60)
    assert result["verified"] and "infra_validation" not in result
    assert json.loads((tmp_path / "d2" / "result.json").read_text())["version"] == 2
