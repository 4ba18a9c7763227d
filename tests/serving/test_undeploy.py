"""The undeploy step: a canary label leaves the model (file, policy, server); stable is refused; a retry is a no-op."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from include.mlops.config import ModelConfig, find_model_config
from include.mlops.deploy.journal import write_journal
from include.mlops.deploy.undeploy import ProtectedLabelError, undeploy
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.label_log import read_label_moves
from include.mlops.serving.app import ServerSettings
from tests.serving.conftest import register, serve

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("server_behaviour")]


@pytest.fixture
def config() -> ModelConfig:
    return find_model_config("diabetes")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    return tmp_path / "artifacts"


@pytest.fixture
def registry(root: Path, saved_models: dict[float, Path]) -> Registry:
    """Versions 1 and 2 (sum(x) and 2 sum(x)), no label yet."""
    registry = Registry(root / "models")
    register(registry, saved_models[1.0], run="a")
    register(registry, saved_models[2.0], run="b")
    return registry


def status(client: httpx.Client, label: str) -> int:
    return client.post(f"/v1/models/diabetes/labels/{label}:predict", json={"instances": [[1.0] * 10]}).status_code


def test_the_canary_label_leaves_the_file_the_policy_and_the_server(
    root: Path, config: ModelConfig, registry: Registry, tmp_path: Path
) -> None:
    registry.set_label("diabetes", "stable", 1)
    registry.set_label("diabetes", "canary", 2)
    with serve(ServerSettings(registry_root=root / "models", poll_seconds=0.1, predlog_root=None)) as server:
        with server.client() as client:
            assert status(client, "canary") == 200
            result = undeploy(config, label="canary", out=tmp_path / "out", server_url=server.url,
                              server_poll_seconds=0.2, reason="canary rolled back: test")  # fmt: skip
            assert result == {"label": "canary", "removed": True, "version": 2, "verified": True}
            # Confirmed by the step before it returned: the label no longer resolves, stable still does.
            assert status(client, "canary") in (400, 404)  # TF Serving: INVALID_ARGUMENT, unknown label
            assert status(client, "stable") == 200
    assert registry.labels("diabetes") == {"stable": 1}
    assert registry.served_versions("diabetes") == [1]
    assert json.loads((tmp_path / "out" / "result.json").read_text())["removed"] is True
    last = read_label_moves(registry.model_dir("diabetes"))[-1]
    assert (last["label"], last["from"], last["to"]) == ("canary", 2, None)
    assert last["reason"] == "canary rolled back: test"


def test_a_promoted_canary_leaves_its_version_loaded_for_stable(
    config: ModelConfig, registry: Registry, tmp_path: Path
) -> None:
    registry.set_label("diabetes", "stable", 1)
    registry.set_label("diabetes", "canary", 1)
    result = undeploy(config, label="canary", out=tmp_path / "out")
    assert result["removed"] is True and result["verified"] is False
    assert registry.labels("diabetes") == {"stable": 1}
    assert registry.served_versions("diabetes") == [1]


def test_a_missing_label_is_a_no_op_and_says_so(config: ModelConfig, registry: Registry, tmp_path: Path) -> None:
    registry.set_label("diabetes", "stable", 1)
    before = registry.config_path.read_bytes()
    assert undeploy(config, label="canary", out=tmp_path / "out")["removed"] is False
    assert registry.config_path.read_bytes() == before


def test_stable_is_refused_and_nothing_moves(config: ModelConfig, registry: Registry, tmp_path: Path) -> None:
    registry.set_label("diabetes", "stable", 1)
    before = registry.config_path.read_bytes()
    with pytest.raises(ProtectedLabelError, match=r"out of service.*rollback__diabetes"):
        undeploy(config, label="stable", out=tmp_path / "out")
    assert registry.config_path.read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_an_unfinished_move_is_repaired_first(config: ModelConfig, registry: Registry, tmp_path: Path) -> None:
    """A stable move that died half-way (its journal left) is put back before the canary goes."""
    registry.set_label("diabetes", "stable", 2)
    registry.set_label("diabetes", "canary", 2)
    write_journal(registry.model_dir("diabetes"), "diabetes", "stable", 2, 1)
    undeploy(config, label="canary", out=tmp_path / "out")
    assert registry.labels("diabetes") == {"stable": 1}
