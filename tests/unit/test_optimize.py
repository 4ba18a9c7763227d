"""Tuning trials: the seeded Optuna plan, one real trial, and selection on validation loss."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from ml_fixtures import make_snapshot

from include.mlops import cli
from include.mlops.config import SearchConfig, SearchDimension, find_model_config
from include.mlops.optimize.tuning import plan_trials, run_trial, select_best, tune_plan

DIABETES = find_model_config("diabetes")


def with_search(**search: object) -> object:
    return dataclasses.replace(DIABETES, optimize=dataclasses.replace(DIABETES.optimize, search=SearchConfig(**search)))


def test_the_plan_is_seeded_draws_from_the_space_and_layers_the_optimize_settings() -> None:
    space = {
        "learning_rate": SearchDimension(type="float", low=0.001, high=0.01, log=True),
        "batch_size": SearchDimension(type="categorical", choices=(16, 64)),
    }
    config = with_search(trials=6, min_successful=2, seed=7, space=space)
    plan = plan_trials(config, {"epochs": 3})
    assert [t["trial"] for t in plan] == list(range(6))
    assert plan == plan_trials(config, {"epochs": 3})  # same seed, same plan
    assert plan != plan_trials(with_search(trials=6, min_successful=2, seed=8, space=space), {"epochs": 3})
    for trial in plan:
        hparams = trial["hparams"]
        assert 0.001 <= hparams["learning_rate"] <= 0.01
        assert hparams["batch_size"] in (16, 64) and isinstance(hparams["batch_size"], int)
        # The run's override beats optimize.epochs; optimize.patience is unset, so train's applies.
        assert hparams["epochs"] == 3 and hparams["patience"] == DIABETES.train.patience
    assert len({t["hparams"]["learning_rate"] for t in plan}) == 6
    # Without overrides the optimize branch's longer schedule applies.
    assert {t["hparams"]["epochs"] for t in plan_trials(config)} == {DIABETES.optimize.epochs}


def _trial_result(trials_dir: Path, index: int, val_loss: float) -> None:
    folder = trials_dir / str(index)
    folder.mkdir(parents=True)
    result = {"trial": index, "hparams": {}, "val_loss": val_loss, "val_metrics": {"mae": val_loss}}
    result |= {"model_uri": str(folder / "model"), "weights_uri": str(folder / "weights.npz")}
    (folder / "trial.json").write_text(json.dumps(result))


def test_selection_takes_the_lowest_validation_loss_and_reports_failed_and_missing_trials(tmp_path: Path) -> None:
    plan = tune_plan(with_search(trials=4, min_successful=2), tmp_path / "tune_plan")
    trials_dir = tmp_path / "tune_trial"
    _trial_result(trials_dir, 0, 0.9)
    _trial_result(trials_dir, 2, 0.4)
    (trials_dir / "1.failed.json").write_text(json.dumps({"error": "TrainingError: diverged"}))

    selected = select_best(DIABETES, plan["plan_uri"], trials_dir, tmp_path / "tune_select")

    assert selected["best"] == 2 and selected["model_uri"] == str(trials_dir / "2" / "model")
    record = json.loads(Path(selected["trials_uri"]).read_text())
    assert [t["status"] for t in record["trials"]] == ["success", "failed", "success", "failed"]
    assert record["trials"][1]["error"] == "TrainingError: diverged"
    assert "did not run to the end" in record["trials"][3]["error"]
    assert record["trials"][1]["hparams"] == plan["trials"][1]["hparams"]


def test_too_few_successful_trials_exit_3_with_the_reasons(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("diabetes.yaml", "diabetes.py"):
        text = (DIABETES.path.parent / name).read_text()
        (models / name).write_text(text.replace("min_successful: 2", "min_successful: 3"))
    plan = tune_plan(find_model_config("diabetes", models), tmp_path / "tune_plan")
    trials_dir = tmp_path / "tune_trial"
    _trial_result(trials_dir, 0, 0.5)
    _trial_result(trials_dir, 1, float("nan"))
    argv = ["tune-select", "--model", "diabetes", "--models-dir", str(models), "--out", str(tmp_path / "select")]
    code = cli.main([*argv, "--plan", plan["plan_uri"], "--trials-dir", str(trials_dir)])
    assert code == cli.EXIT_BAD_INPUT
    record = json.loads((tmp_path / "select" / "trials.json").read_text())
    assert record["best"] == 0 and [t["status"] for t in record["trials"]] == ["success", "failed", "failed"]
    assert "not finite" in record["trials"][1]["error"]


@pytest.mark.slow
def test_a_trial_trains_exports_and_saves_its_weights_and_a_diverging_one_leaves_its_error(tmp_path: Path) -> None:
    snapshot = make_snapshot(DIABETES, tmp_path / "snapshot", rows=200)
    hparams = {"epochs": 3, "batch_size": 32, "learning_rate": 0.005, "patience": 5}
    out = tmp_path / "tune_trial" / "0"
    result = run_trial(DIABETES, snapshot, out, trial=0, hparams=hparams)
    assert result["trial"] == 0 and result["model_uri"] == str(out / "model")
    assert set(result["val_metrics"]) == {"mae"} and result["val_loss"] > 0
    assert json.loads((out / "trial.json").read_text()) == result
    # model.get_weights() in order (what TFMOT rebuilds the model from): the hidden layer's kernel is there.
    weights = np.load(result["weights_uri"])
    assert weights.files == [f"arr_{i}" for i in range(len(weights.files))]
    assert (10, 20) in [weights[name].shape for name in weights.files]
    assert (out / "model" / "saved_model.pb").is_file()

    failed = tmp_path / "tune_trial" / "1"
    with pytest.raises(Exception, match="not finite"):
        run_trial(DIABETES, snapshot, failed, trial=1, hparams={**hparams, "learning_rate": 1e30})
    assert not failed.exists()
    assert "not finite" in json.loads((tmp_path / "tune_trial" / "1.failed.json").read_text())["error"]
