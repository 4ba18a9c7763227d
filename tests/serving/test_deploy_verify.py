"""deploy() against a real running model server: verified success, and failure -> rollback."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from include.mlops.config import ModelConfig, find_model_config
from include.mlops.deploy.deploy import DeployError, DeployVerificationError, deploy, prepare_smoke_check
from include.mlops.deploy.journal import journal_path
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.training.savedmodel import convert_to_tflite
from tests.serving.conftest import free_port, register, serve, wait_for

# Each test starts a real model server or loads real models with TensorFlow, once per server behaviour.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("server_behaviour")]


@pytest.fixture
def config() -> ModelConfig:
    return find_model_config("diabetes")  # 10 features, served as "diabetes"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    return tmp_path / "artifacts"


@pytest.fixture
def snapshot(tmp_path: Path, config: ModelConfig) -> Path:
    """A snapshot-shaped parquet: the features plus a split column (only test rows are sent)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, len(config.features))), columns=list(config.features))
    frame[config.label] = 1.0
    frame["split"] = ["train", "test"] * 20
    folder = tmp_path / "snapshot"
    folder.mkdir()
    frame.to_parquet(folder / "data.parquet", index=False)
    return folder


def settings_for(registry_root: Path, poll_seconds: float = 0.1) -> ServerSettings:
    return ServerSettings(registry_root=registry_root, poll_seconds=poll_seconds, predlog_root=None)


def impostor_of(registry: Registry, saved_models: dict[float, Path], folder: Path, scales: list[float]) -> Registry:
    """A server folder that shares ``registry``'s models.config but holds other models under the same versions."""
    impostor = Registry(folder)
    for i, scale in enumerate(scales):
        register(impostor, saved_models[scale], run=f"impostor-{i}")
    impostor.config_path.symlink_to(registry.config_path)
    return impostor


def answer(client: httpx.Client, path: str) -> float | int:
    """The first prediction through ``path``, or the HTTP status when it is not a 200."""
    response = client.post(f"{path}:predict", json={"instances": [[1.0] * 10]})
    return float(response.json()["predictions"][0][0]) if response.status_code == 200 else response.status_code


def available(client: httpx.Client) -> set[int]:
    """The versions the server reports AVAILABLE (none when it does not know the model)."""
    response = client.get("/v1/models/diabetes")
    entries = response.json().get("model_version_status", []) if response.status_code == 200 else []
    return {int(e["version"]) for e in entries if e["state"] == "AVAILABLE"}


def test_deploy_verifies_through_the_label(
    root: Path, config: ModelConfig, saved_models: dict[float, Path], snapshot: Path, tmp_path: Path
) -> None:
    registry = Registry(root / "models")
    register(registry, saved_models[1.0], run="a")
    register(registry, saved_models[2.0], run="b")
    registry.set_label("diabetes", "stable", 1)
    with serve(settings_for(registry.root)) as running:
        result = deploy(config, 2, out=tmp_path / "d2", server_url=running.url, timeout=60, data_uri=snapshot)
        assert result["verified"] is True and result["changed"] is True and result["previous"] == 1
        assert result["smoke"]["rows"] == 20 and result["smoke"]["max_abs_diff"] < 1e-4
        assert registry.label_version("diabetes", "stable") == 2
        assert registry.served_versions("diabetes") == [2]
        # A retry verifies again and changes nothing.
        again = deploy(config, 2, out=tmp_path / "d2", server_url=running.url, timeout=60, data_uri=snapshot)
        assert again["verified"] is True and again["changed"] is False and again["previous"] == 1


def test_deploy_rolls_back_when_the_label_answers_differently(
    root: Path, config: ModelConfig, saved_models: dict[float, Path], snapshot: Path, tmp_path: Path
) -> None:
    """The server's folder shares models.config but holds a different model as version 2."""
    registry = Registry(root / "models")
    register(registry, saved_models[1.0], run="a")
    register(registry, saved_models[2.0], run="b")
    registry.set_label("diabetes", "stable", 1)
    impostor = Registry(tmp_path / "server-models")
    register(impostor, saved_models[1.0], run="a")
    register(impostor, saved_models[3.0], run="c")  # version 2 answers x3, the registry's answers x2
    impostor.config_path.symlink_to(registry.config_path)
    with serve(settings_for(impostor.root)) as running:
        with pytest.raises(DeployVerificationError) as caught:
            deploy(config, 2, out=tmp_path / "d2", server_url=running.url, timeout=60, data_uri=snapshot)
        message = str(caught.value)
        assert "answered differently from version 2" in message
        assert "moved back to version 1, which keeps serving" in message
        assert registry.label_version("diabetes", "stable") == 1
        assert not (tmp_path / "d2").exists()
        with running.client() as client:

            def stable_answer() -> float:
                response = client.post("/v1/models/diabetes/labels/stable:predict", json={"instances": [[1.0] * 10]})
                return float(response.json()["predictions"][0][0]) if response.status_code == 200 else -1.0

            assert wait_for(lambda: stable_answer() == pytest.approx(10.0), timeout=30)


def test_deploy_without_a_reachable_server_does_not_move_the_label(
    root: Path, config: ModelConfig, saved_models: dict[float, Path], snapshot: Path, tmp_path: Path
) -> None:
    registry = Registry(root / "models")
    register(registry, saved_models[1.0], run="a")
    register(registry, saved_models[2.0], run="b")
    registry.set_label("diabetes", "stable", 1)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DeployVerificationError, match=r"did not become AVAILABLE .* version 1 keeps serving"):
        deploy(config, 2, out=tmp_path / "d2", server_url=dead, timeout=1, data_uri=snapshot)
    assert registry.labels("diabetes") == {"stable": 1}
    assert registry.served_versions("diabetes") == [1]  # the preload was undone


def test_deploy_cli_passes_the_server_arguments(
    root: Path, saved_models: dict[float, Path], snapshot: Path, tmp_path: Path
) -> None:
    from include.mlops.cli import main

    registry = Registry(root / "models")
    register(registry, saved_models[1.0], run="a")
    with serve(settings_for(registry.root)) as running:
        out = tmp_path / "cli"
        code = main(
            ["deploy", "--model", "diabetes", "--version", "1", "--out", str(out), "--server-url", running.url,
             "--timeout", "60", "--data", str(snapshot / "data.parquet"), "--result-file", str(tmp_path / "r.json")]
        )  # fmt: skip
    assert code == 0
    result = pd.read_json(tmp_path / "r.json", typ="series")
    assert bool(result["verified"]) is True and int(result["version"]) == 1
    assert os.path.isfile(out / "result.json")


def test_unreadable_held_out_rows_fail_before_the_label_moves(
    root: Path, config: ModelConfig, saved_models: dict[float, Path], tmp_path: Path
) -> None:
    """The expected answers are built before the move, so an error there leaves the old version serving."""
    registry = Registry(root / "models")
    register(registry, saved_models[1.0], run="a")
    register(registry, saved_models[2.0], run="b")
    registry.set_label("diabetes", "stable", 1)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    with serve(settings_for(registry.root)) as running:
        with pytest.raises(DeployError, match=r"cannot read the held-out rows in .*corrupt.parquet"):
            deploy(config, 2, out=tmp_path / "d2", server_url=running.url, timeout=60, data_uri=corrupt)
    assert registry.labels("diabetes") == {"stable": 1}
    assert registry.served_versions("diabetes") == [1]  # not even preloaded
    assert not (tmp_path / "d2").exists() and not journal_path(registry.model_dir("diabetes"), "stable").exists()


def test_expected_answers_come_from_the_tflite_file_when_the_version_has_one(
    root: Path, config: ModelConfig, saved_models: dict[float, Path], snapshot: Path, tmp_path: Path
) -> None:
    """A version with model.tflite is served from it, so deploy verifies against the TFLite interpreter."""
    registry = Registry(root / "models")
    tflite = convert_to_tflite(saved_models[3.0], tmp_path / "model.tflite")  # answers x3; the SavedModel x1
    version_dir = registry.register(
        "diabetes", saved_models[1.0], metrics={}, lineage={"dag_id": "d", "run_id": "r"}, tflite_path=tflite
    ).version_dir
    plain_dir = registry.version_dir("diabetes", register(registry, saved_models[1.0], run="plain"))

    check = prepare_smoke_check(config, version_dir, snapshot, max_rows=8)
    sums = check.rows.sum(axis=1, keepdims=True)
    assert check.served_format == "tflite"
    np.testing.assert_allclose(check.expected, 3.0 * sums, rtol=0.02, atol=0.02)
    plain = prepare_smoke_check(config, plain_dir, snapshot, max_rows=8)
    assert plain.served_format == "saved_model"
    np.testing.assert_allclose(plain.expected, sums, rtol=1e-5, atol=1e-5)


def test_a_rollback_ends_only_once_the_label_answers_with_the_previous_version(
    root: Path, config: ModelConfig, saved_models: dict[float, Path], snapshot: Path, tmp_path: Path
) -> None:
    """The server reads models.config once a second here: deploy waits for that read before it returns."""
    registry = Registry(root / "models")
    register(registry, saved_models[1.0], run="a")
    register(registry, saved_models[2.0], run="b")
    registry.set_label("diabetes", "stable", 1)
    impostor = impostor_of(registry, saved_models, tmp_path / "server-models", [1.0, 3.0])
    with serve(settings_for(impostor.root, poll_seconds=1.0)) as running, running.client() as client:
        with pytest.raises(
            DeployVerificationError, match=r"moved back to version 1, which keeps serving; .* confirmed"
        ):
            deploy(config, 2, out=tmp_path / "d2", server_url=running.url, timeout=60, data_uri=snapshot)
        # At once, no waiting here: the label already answers with version 1 (x1), not the rejected x3.
        assert answer(client, "/v1/models/diabetes/labels/stable") == pytest.approx(10.0)
        metadata = client.get("/v1/models/diabetes/labels/stable/metadata").json()
        assert metadata["model_spec"]["version"] == "1"
    assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
    assert not journal_path(registry.model_dir("diabetes"), "stable").exists()


def test_a_failed_first_deploy_leaves_nothing_loaded(
    root: Path, config: ModelConfig, saved_models: dict[float, Path], snapshot: Path, tmp_path: Path
) -> None:
    """No label before: a failed deploy removes the label and the version, and models.config is as it was."""
    registry = Registry(root / "models")
    register(registry, saved_models[1.0], run="a")
    assert not registry.read_serving_config().model_config_list.config
    impostor = impostor_of(registry, saved_models, tmp_path / "server-models", [3.0])
    with serve(settings_for(impostor.root)) as running, running.client() as client:
        with pytest.raises(DeployVerificationError, match=r"'stable' was removed .* version 1 unloaded"):
            deploy(config, 1, out=tmp_path / "d1", server_url=running.url, timeout=60, data_uri=snapshot)
        assert answer(client, "/v1/models/diabetes/labels/stable") in (400, 404)  # at once: the label is gone
        # Unknown to the default behaviour; TF Serving keeps listing the unloaded version (END).
        assert wait_for(lambda: available(client) == set(), timeout=30), client.get("/v1/models/diabetes").text
    assert list(registry.read_serving_config().model_config_list.config) == []
    assert registry.labels("diabetes") == {} and registry.served_versions("diabetes") == []
    assert not (tmp_path / "d1").exists() and not journal_path(registry.model_dir("diabetes"), "stable").exists()
