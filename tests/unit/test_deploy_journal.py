"""One deploy journal per model and label: who finds it, who repairs it, and two deploys of one model at once.

No model server here (``tests/serving/test_deploy_crash.py`` has the endings
against a real one): the label moves in the model config file only.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from model_factory import make_saved_model

from include.mlops.cli import main as step_cli
from include.mlops.config import ModelConfig, find_model_config
from include.mlops.deploy import deploy as deploy_module
from include.mlops.deploy.deploy import ServedBytesError, deploy
from include.mlops.deploy.journal import DeployBusyError, deploy_lock, journal_path
from include.mlops.exit_codes import EXIT_BAD_INPUT
from include.mlops.registry.catalog import Catalog
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.serving_artifact import SAVED_MODEL, served_artifact
from include.mlops.steps.runners import champion

METRICS = {"mae": 44.0, "mse": 3000.0, "rmse": 54.8, "r2": 0.47, "size_mb": 0.02, "latency_ms": 1.5}


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    return find_model_config("diabetes")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory, config: ModelConfig) -> list[Path]:
    base = tmp_path_factory.mktemp("savedmodels")
    return [make_saved_model(base / str(seed), len(config.features), seed=seed) for seed in (1, 2, 3)]


def lineage(run: str, **extra: object) -> dict[str, object]:
    return {"dag_id": "lifecycle__diabetes", "run_id": run, **extra}


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved_models: list[Path]) -> Registry:
    """Versions 1-3 of ``diabetes``, each with the measured artifact its gate saw; ``stable`` -> 1."""
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    reg = Registry(tmp_path / "artifacts" / "models")
    for number, model in enumerate(saved_models, start=1):
        measured = {"format": SAVED_MODEL, "path": str(model), "sha256": served_artifact(model).sha256}
        reg.register("diabetes", model, metrics=METRICS, lineage=lineage(f"r{number}", measured_artifact=measured))
    reg.set_label("diabetes", "stable", 1)
    return reg


def leave_unfinished(reg: Registry, version: int = 2, previous: int = 1) -> Path:
    """What a deploy killed right after its label move leaves: the label on ``version`` and the journal."""
    journal = journal_path(reg.model_dir("diabetes"), "stable")
    journal.write_text(json.dumps({"model_name": "diabetes", "label": "stable", "version": version,
                                   "previous": previous, "started_at": "2026-12-01T00:00:00+00:00",
                                   "pid": 4242, "host": "worker-1"}))  # fmt: skip
    reg.move_label("diabetes", "stable", version, expected=previous, keep=(previous,))
    return journal


def test_the_champion_lookup_repairs_an_unfinished_deploy_and_compares_against_the_verified_version(
    registry: Registry, config: ModelConfig, caplog: pytest.LogCaptureFixture
) -> None:
    journal = leave_unfinished(registry)
    with caplog.at_level(logging.WARNING):
        uri, version = champion(config, "auto")
    assert (uri, version) == (str(registry.version_dir("diabetes", 1)), 1)
    assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
    assert not journal.exists()
    assert "was moving label 'stable' from version 1 to version 2 and did not finish; repaired" in caplog.text


def test_while_a_deploy_runs_the_champion_is_its_previous_version_and_nothing_is_touched(
    registry: Registry, config: ModelConfig
) -> None:
    journal = leave_unfinished(registry)
    with deploy_lock(registry.model_dir("diabetes"), wait_s=1):  # a live deploy holds the lock
        assert champion(config, "auto") == (str(registry.version_dir("diabetes", 1)), 1)
        assert registry.labels("diabetes") == {"stable": 2} and journal.exists()


def test_the_models_view_shows_the_verified_version_and_the_unfinished_move(registry: Registry) -> None:
    leave_unfinished(registry)
    record = Catalog(registry.root.parent).model("diabetes")
    assert (record.labels, record.stable_version) == ({"stable": 1}, 1)
    assert record.unfinished_deploys == [
        {"label": "stable", "version": 2, "previous": 1, "started_at": "2026-12-01T00:00:00+00:00",
         "pid": 4242, "host": "worker-1"}
    ]  # fmt: skip


def test_any_deploy_of_the_model_repairs_every_unfinished_label_first(
    registry: Registry, config: ModelConfig, tmp_path: Path
) -> None:
    journal = leave_unfinished(registry)
    result = deploy(config, 3, label="canary", out=tmp_path / "canary")
    assert result["previous"] is None and registry.labels("diabetes") == {"stable": 1, "canary": 3}
    assert not journal.exists()


def test_an_unreadable_journal_stops_the_deploy_and_says_what_to_do(
    registry: Registry, config: ModelConfig, tmp_path: Path
) -> None:
    journal_path(registry.model_dir("diabetes"), "stable").write_text("{not json")
    with pytest.raises(Exception, match=r"deploy journal .* is unreadable .* then delete the journal and retry"):
        deploy(config, 2, out=tmp_path / "d")
    assert registry.labels("diabetes") == {"stable": 1}


def test_two_deploys_of_one_model_run_one_after_the_other(
    registry: Registry, config: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first deploy pauses right after its label move; the second waits for it instead of interleaving."""
    moved, release = threading.Event(), threading.Event()

    def pause_first() -> None:
        if not moved.is_set():
            moved.set()
            assert release.wait(30)

    monkeypatch.setattr(deploy_module, "_fault_injection_point", pause_first)
    results: dict[str, dict] = {}
    first = threading.Thread(target=lambda: results.setdefault("v2", deploy(config, 2, out=tmp_path / "a")))
    second = threading.Thread(target=lambda: results.setdefault("v3", deploy(config, 3, out=tmp_path / "b")))
    first.start()
    assert moved.wait(30)
    second.start()
    second.join(1.5)
    # The second deploy is waiting for the lock: the first one's move and journal are untouched.
    assert second.is_alive() and registry.labels("diabetes") == {"stable": 2}
    assert registry.served_versions("diabetes") == [1, 2]
    release.set()
    first.join(30)
    second.join(30)
    assert results["v2"]["previous"] == 1 and results["v3"]["previous"] == 2
    assert registry.labels("diabetes") == {"stable": 3} and registry.served_versions("diabetes") == [3]
    assert not journal_path(registry.model_dir("diabetes"), "stable").exists()


def test_a_deploy_waits_for_the_lock_only_so_long(registry: Registry) -> None:
    with (
        deploy_lock(registry.model_dir("diabetes"), wait_s=1),
        pytest.raises(DeployBusyError, match="another deploy of this model holds"),
        deploy_lock(registry.model_dir("diabetes"), wait_s=0.5),
    ):
        pass


def test_a_version_whose_served_bytes_are_not_the_gated_ones_is_refused_before_any_label_moves(
    registry: Registry, config: ModelConfig, saved_models: list[Path], tmp_path: Path
) -> None:
    """Version 4 holds model 3's files, but its lineage says the gate measured model 1."""
    measured = {"format": SAVED_MODEL, "path": str(saved_models[0]), "sha256": served_artifact(saved_models[0]).sha256}
    registry.register("diabetes", saved_models[2], metrics=METRICS, lineage=lineage("r4", measured_artifact=measured))
    with pytest.raises(ServedBytesError, match=r"version 4 would serve .* but its gate measured .*no label was moved"):
        deploy(config, 4, out=tmp_path / "d4")
    assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
    assert not journal_path(registry.model_dir("diabetes"), "stable").exists()
    # Through the step CLI it is bad input: exit 3, so the task fails without a retry.
    argv = ["deploy", "--model", "diabetes", "--version", "4", "--out", str(tmp_path / "cli")]
    assert step_cli(argv) == EXIT_BAD_INPUT
    assert registry.labels("diabetes") == {"stable": 1}


def test_every_label_move_is_in_the_models_audit_log(
    registry: Registry, config: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy, a failed deploy's roll back and a repair each leave their moves, in order, with the process."""
    from include.mlops.deploy.deploy import FAULT_AFTER_LABEL_MOVE_ENV
    from include.mlops.registry.label_log import read_label_moves

    deploy(config, 2, out=tmp_path / "d2")
    monkeypatch.setenv(FAULT_AFTER_LABEL_MOVE_ENV, "raise")
    with pytest.raises(RuntimeError, match="fault injected"):
        deploy(config, 3, out=tmp_path / "d3")
    monkeypatch.delenv(FAULT_AFTER_LABEL_MOVE_ENV)
    leave_unfinished(registry, version=3, previous=2)
    champion(config, "auto")

    moves = [(m["label"], m["from"], m["to"]) for m in read_label_moves(registry.model_dir("diabetes"))]
    assert moves == [
        ("stable", None, 1),  # the fixture's set_label
        ("stable", 1, 2),  # deploy
        ("stable", 2, 3),  # the failed deploy's move ...
        ("stable", 3, 2),  # ... and its roll back
        ("stable", 2, 3),  # leave_unfinished
        ("stable", 3, 2),  # the champion lookup's repair
    ]
    reasons = [m.get("reason", "") for m in read_label_moves(registry.model_dir("diabetes"))]
    assert reasons[1:4] == ["deploy", "deploy", "roll back of a failed deploy (RuntimeError: fault injected by "
                            "MLOPS_TEST_FAULT_AFTER_LABEL_MOVE=raise after the label moved)"]  # fmt: skip
    assert reasons[5].startswith(
        "repair: a deploy (pid 4242 on worker-1, started 2026-12-01T00:00:00+00:00) was moving"
    )
    last = read_label_moves(registry.model_dir("diabetes"))[-1]
    assert last["pid"] > 0 and last["host"] and last["at"].endswith("+00:00")
    assert read_label_moves(registry.model_dir("diabetes"))[1]["task"] == str(tmp_path / "d2")
