"""The register and deploy steps on real SavedModels: contract check, metadata, label moves, crash recovery."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from google.protobuf import text_format
from ml_fixtures import make_snapshot
from model_factory import make_saved_model
from tensorflow_serving.config import model_server_config_pb2

from include.mlops.config import BUDGET_METRICS, METRICS, ModelConfig, find_model_config
from include.mlops.deploy.deploy import FAULT_AFTER_LABEL_MOVE_ENV, deploy
from include.mlops.deploy.journal import journal_path
from include.mlops.evaluation.gate import decide
from include.mlops.registry.filesystem import CorruptVersionError, Registry, VersionNotFoundError
from include.mlops.registry.register import CandidateModelError, RegisterError, register_model

CANDIDATE = {"mae": 44.0, "mse": 3000.0, "rmse": 54.8, "r2": 0.47, "size_mb": 0.02, "latency_ms": 1.5}
CHAMPION = {"mae": 46.0, "mse": 3200.0, "rmse": 56.6, "r2": 0.44, "size_mb": 0.02, "latency_ms": 1.4}


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    """The real diabetes config (10 features, regression)."""
    return find_model_config("diabetes")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, config: ModelConfig) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("savedmodels")
    n = len(config.features)
    return {
        "a": make_saved_model(base / "a", n, 1, seed=1),
        "b": make_saved_model(base / "b", n, 1, seed=2),
        "wrong_input_name": make_saved_model(base / "in", n, 1, seed=1, input_name="x"),
        "wrong_width": make_saved_model(base / "width", n + 1, 1, seed=1),
        "wrong_output": make_saved_model(base / "out", n, 1, seed=1, output_name="predictions"),
        "two_outputs": make_saved_model(base / "two", n, 2, seed=1),
    }


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    monkeypatch.delenv("MLOPS_CODE_VERSION", raising=False)
    return tmp_path / "artifacts"


@pytest.fixture
def evaluation(tmp_path: Path) -> Path:
    """An evaluate step's output folder with a champion comparison."""
    folder = tmp_path / "evaluate"
    folder.mkdir()
    payload = {"metrics": CANDIDATE, "champion": {"version": 3, "metrics": CHAMPION}}
    (folder / "metrics.json").write_text(json.dumps(payload))
    return folder


@pytest.fixture
def snapshot(tmp_path: Path, config: ModelConfig) -> Path:
    # A real snapshot: register reads its train split for the version's drift reference.
    return make_snapshot(config, tmp_path / "snapshot", rows=80)


def lineage(run_id: str = "scheduled__2026-11-27T00:00:00+00:00", **extra: str) -> dict[str, str]:
    return {
        "dag_id": "lifecycle__diabetes",
        "run_id": run_id,
        "data_interval_start": "2026-11-26T00:00:00+00:00",
        "data_interval_end": "2026-11-27T00:00:00+00:00",
        "created_at": "2026-11-27T00:00:00+00:00",
        **extra,
    }


def gate_for(config: ModelConfig, candidate: dict[str, float], force: bool = False) -> dict[str, object]:
    directions = {**METRICS[config.task], **BUDGET_METRICS}
    return decide(candidate, CHAMPION, config.gate, directions, force=force).to_dict()


def register(config: ModelConfig, model: Path, evaluation: Path, out: Path, **kwargs: object) -> dict[str, object]:
    kwargs.setdefault("lineage", lineage())
    kwargs.setdefault("gate_decision", gate_for(config, CANDIDATE))
    return register_model(config, str(model), str(evaluation), out=out, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- register_model


def test_register_model_writes_version_with_metadata_and_card(
    root: Path, config: ModelConfig, models: dict[str, Path], evaluation: Path, snapshot: Path, tmp_path: Path
) -> None:
    out = tmp_path / "register"
    result = register(config, models["a"], evaluation, out, lineage=lineage(data_uri=str(snapshot)))
    version_dir = root / "models" / "diabetes" / "1"
    assert result == {"version": 1, "created": True, "version_dir": str(version_dir)}
    assert json.loads((out / "result.json").read_text()) == {**result, "model_name": "diabetes"}

    extra = version_dir / "assets.extra"
    assert json.loads((extra / "metrics.json").read_text()) == CANDIDATE
    written = json.loads((extra / "lineage.json").read_text())
    assert written["dag_id"] == "lifecycle__diabetes" and written["version"] == 1
    assert written["created_at"] == "2026-11-27T00:00:00+00:00"
    assert written["data_interval_end"] == "2026-11-27T00:00:00+00:00"
    assert re.fullmatch(r"[0-9a-f]{40}", written["code_version"])  # git rev-parse HEAD of this checkout
    import hashlib

    assert written["data_sha256"] == hashlib.sha256((snapshot / "data.parquet").read_bytes()).hexdigest()
    assert json.loads((extra / "gate.json").read_text())["passed"] is True

    card = (extra / "model_card.md").read_text()
    assert card.startswith("# Model card: diabetes version 1")
    assert "| mae | 44 | 46 | -4.35% (better) |" in card  # metrics vs champion, with direction
    assert "champion (v3)" in card
    assert "**Gate: PASSED**" in card and "| threshold | r2 | 0.47 | >= 0.2 |" in card
    assert config.description in card and written["code_version"] in card
    Registry(root / "models").verify("diabetes", 1)


def test_register_model_retry_returns_the_same_version(
    root: Path, config: ModelConfig, models: dict[str, Path], evaluation: Path, tmp_path: Path
) -> None:
    first = register(config, models["a"], evaluation, tmp_path / "r1")
    retry = register(config, models["a"], evaluation, tmp_path / "r1")
    assert first["version"] == retry["version"] == 1
    assert (first["created"], retry["created"]) == (True, False)
    other = register(config, models["b"], evaluation, tmp_path / "r2", lineage=lineage("manual__2"))
    assert (other["version"], other["created"]) == (2, True)
    assert Registry(root / "models").versions("diabetes") == [1, 2]


def test_register_model_refuses_a_rejected_candidate_but_keeps_forced_ones_visible(
    root: Path, config: ModelConfig, models: dict[str, Path], evaluation: Path, tmp_path: Path
) -> None:
    bad = {**CANDIDATE, "r2": 0.05}
    with pytest.raises(RegisterError, match=r"gate rejected .*r2 = 0.05 violates the threshold >= 0.2"):
        register(config, models["a"], evaluation, tmp_path / "r", gate_decision=gate_for(config, bad))
    assert not (root / "models" / "diabetes").exists() or Registry(root / "models").versions("diabetes") == []
    assert not (tmp_path / "r").exists()

    forced = register(config, models["a"], evaluation, tmp_path / "r", gate_decision=gate_for(config, bad, force=True))
    card = (Path(forced["version_dir"]) / "assets.extra" / "model_card.md").read_text()
    assert "**Override**" in card and "PASSED by override" in card and "**FAIL**" in card


def test_register_model_without_gate_or_champion(
    root: Path, config: ModelConfig, models: dict[str, Path], tmp_path: Path
) -> None:
    flat = tmp_path / "flat.json"  # a flat metrics file is read too
    flat.write_text(json.dumps(CANDIDATE))
    result = register(config, models["a"], flat, tmp_path / "r", gate_decision=None)
    card = (Path(result["version_dir"]) / "assets.extra" / "model_card.md").read_text()
    assert "No gate decision was recorded" in card and "No champion" in card
    assert not (Path(result["version_dir"]) / "assets.extra" / "gate.json").exists()


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("wrong_input_name", "one input named 'inputs'"),
        ("wrong_width", r"must be float32 \[None, 10\]"),
        ("wrong_output", "one output named 'outputs'"),
        ("two_outputs", r"output 'outputs' must be float32 \[None, 1\]"),
    ],
)
def test_register_model_refuses_a_model_that_breaks_the_serving_contract(
    root: Path, config: ModelConfig, models: dict[str, Path], evaluation: Path, tmp_path: Path, model: str, match: str
) -> None:
    with pytest.raises(CandidateModelError, match=match):
        register(config, models[model], evaluation, tmp_path / "r")
    assert not (root / "models" / "diabetes").exists()


def test_register_model_reports_missing_inputs(
    root: Path, config: ModelConfig, models: dict[str, Path], evaluation: Path, tmp_path: Path
) -> None:
    with pytest.raises(RegisterError, match="no evaluation metrics"):
        register(config, models["a"], tmp_path / "nowhere", tmp_path / "r")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "metrics.json").write_text(json.dumps({"metrics": {"mae": 1.0}}))
    with pytest.raises(RegisterError, match="lacks the config's metric"):
        register(config, models["a"], partial, tmp_path / "r")
    with pytest.raises(RegisterError, match="lineage lacks run_id"):
        register(config, models["a"], evaluation, tmp_path / "r", lineage={"dag_id": "d"})
    with pytest.raises(CandidateModelError, match="not a SavedModel folder"):
        register(config, tmp_path, evaluation, tmp_path / "r")


# --------------------------------------------------------------------------- deploy


@pytest.fixture
def two_versions(
    root: Path, config: ModelConfig, models: dict[str, Path], evaluation: Path, tmp_path: Path
) -> Registry:
    register(config, models["a"], evaluation, tmp_path / "r1", lineage=lineage("run1"))
    register(config, models["b"], evaluation, tmp_path / "r2", lineage=lineage("run2"))
    return Registry(root / "models")


def test_deploy_moves_the_label_and_is_retry_safe(two_versions: Registry, config: ModelConfig, tmp_path: Path) -> None:
    registry = two_versions
    first = deploy(config, 1, out=tmp_path / "d1")
    # No model server URL: only the label moves, and the result says it was not verified.
    assert first == {"version": 1, "previous": None, "label": "stable", "changed": True, "verified": False}
    second = deploy(config, 2, out=tmp_path / "d2")
    assert second == {"version": 2, "previous": 1, "label": "stable", "changed": True, "verified": False}
    # A retried task (same out folder) reports what the first attempt did and changes nothing.
    retry = deploy(config, 2, out=tmp_path / "d2")
    assert retry == {"version": 2, "previous": 1, "label": "stable", "changed": False, "verified": False}
    # A fresh deploy of the serving version is a no-op too.
    assert deploy(config, 2, out=tmp_path / "d3")["changed"] is False
    assert json.loads((tmp_path / "d2" / "result.json").read_text())["previous"] == 1

    canary = deploy(config, 1, label="canary", out=tmp_path / "c")
    assert canary["previous"] is None and registry.labels("diabetes") == {"stable": 2, "canary": 1}
    config_file = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(registry.config_path.read_text(), config_file)
    (entry,) = config_file.model_config_list.config
    assert dict(entry.version_labels) == {"stable": 2, "canary": 1}
    assert list(entry.model_version_policy.specific.versions) == [1, 2]


def test_deploy_refuses_a_corrupted_version(two_versions: Registry, config: ModelConfig, tmp_path: Path) -> None:
    registry = two_versions
    deploy(config, 1, out=tmp_path / "d1")
    weights = next((registry.version_dir("diabetes", 2) / "variables").glob("variables.data-*"))
    data = bytearray(weights.read_bytes())
    data[0] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match="version 2 is corrupt"):
        deploy(config, 2, out=tmp_path / "d2")
    assert registry.label_version("diabetes", "stable") == 1
    assert not (tmp_path / "d2").exists()
    with pytest.raises(VersionNotFoundError):
        deploy(config, 7, out=tmp_path / "d7")


def test_deploy_restores_the_label_on_any_exception_after_the_move(
    two_versions: Registry, config: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = two_versions
    deploy(config, 1, out=tmp_path / "d1")
    monkeypatch.setenv(FAULT_AFTER_LABEL_MOVE_ENV, "raise")  # not a DeployVerificationError
    with pytest.raises(RuntimeError, match="fault injected"):
        deploy(config, 2, out=tmp_path / "d2")
    assert registry.labels("diabetes") == {"stable": 1}
    assert registry.served_versions("diabetes") == [1]
    assert not (tmp_path / "d2").exists() and not journal_path(registry.model_dir("diabetes"), "stable").exists()
    # A label that did not exist before is removed again.
    with pytest.raises(RuntimeError, match="fault injected"):
        deploy(config, 2, label="canary", out=tmp_path / "c")
    assert registry.labels("diabetes") == {"stable": 1}
    assert registry.served_versions("diabetes") == [1]


def test_the_previous_version_stays_loaded_until_the_deploy_is_complete(
    two_versions: Registry, config: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the candidate is verified, a roll back must be able to name a version the server has loaded."""
    from include.mlops.deploy import deploy as deploy_module

    registry = two_versions
    deploy(config, 1, out=tmp_path / "d1")
    seen: list[tuple[dict[str, int], list[int]]] = []
    monkeypatch.setattr(
        deploy_module,
        "_fault_injection_point",
        lambda: seen.append((registry.labels("diabetes"), registry.served_versions("diabetes"))),
    )
    deploy(config, 2, out=tmp_path / "d2")
    assert seen == [({"stable": 2}, [1, 2])]  # right after the move
    assert registry.served_versions("diabetes") == [2]  # once it is complete


def test_a_failed_first_deploy_returns_models_config_to_its_earlier_content(
    two_versions: Registry, config: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = two_versions
    assert not registry.config_path.exists()
    monkeypatch.setenv(FAULT_AFTER_LABEL_MOVE_ENV, "raise")
    with pytest.raises(RuntimeError, match="fault injected"):
        deploy(config, 1, out=tmp_path / "d1")
    # Neither the label nor the version is left: the model has no entry, as before the deploy.
    assert list(registry.read_serving_config().model_config_list.config) == []
    assert registry.labels("diabetes") == {} and registry.served_versions("diabetes") == []
    # The same after a crash: the retry's recovery removes what the journal names, then deploys.
    monkeypatch.delenv(FAULT_AFTER_LABEL_MOVE_ENV)
    out = tmp_path / "d1b"
    journal_path(registry.model_dir("diabetes"), "stable").write_text(
        json.dumps({"model_name": "diabetes", "label": "stable", "version": 1, "previous": None})
    )
    registry.set_label("diabetes", "stable", 1)
    assert deploy(config, 1, out=out)["previous"] is None
    assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]


def test_deploy_retry_restores_a_half_done_deploy_before_deploying_again(
    two_versions: Registry, config: ModelConfig, tmp_path: Path
) -> None:
    """What a SIGKILL right after the label move leaves: the label on version 2 and the journal."""
    registry = two_versions
    deploy(config, 1, out=tmp_path / "d1")
    out = tmp_path / "runs" / "deploy"
    journal = journal_path(registry.model_dir("diabetes"), "stable")
    # One journal per model and label, beside the versions: any run's deploy (or the champion lookup) finds it.
    assert journal == registry.root / "diabetes" / ".deploy-stable.journal.json"
    journal.write_text(json.dumps({"model_name": "diabetes", "label": "stable", "version": 2, "previous": 1}))
    registry.set_label("diabetes", "stable", 2)

    retry = deploy(config, 2, out=out)
    # The label went back to 1 first, so this attempt moved it again (and would have verified it with a server).
    assert retry == {"version": 2, "previous": 1, "label": "stable", "changed": True, "verified": False}
    assert registry.labels("diabetes") == {"stable": 2} and not journal.exists()
    # A retry after the completed deploy finds no journal and changes nothing.
    again = deploy(config, 2, out=out)
    assert again == {**retry, "changed": False}


def test_deploy_retry_restores_the_label_even_when_the_version_is_now_corrupt(
    two_versions: Registry, config: ModelConfig, tmp_path: Path
) -> None:
    registry = two_versions
    deploy(config, 1, out=tmp_path / "d1")
    out = tmp_path / "d2"
    journal_path(registry.model_dir("diabetes"), "stable").write_text(
        json.dumps({"model_name": "diabetes", "label": "stable", "version": 2, "previous": 1})
    )
    registry.set_label("diabetes", "stable", 2)
    (registry.version_dir("diabetes", 2) / "saved_model.pb").write_bytes(b"broken")
    with pytest.raises(CorruptVersionError):
        deploy(config, 2, out=out)
    assert registry.labels("diabetes") == {"stable": 1}
