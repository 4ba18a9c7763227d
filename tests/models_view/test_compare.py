"""Comparing two versions (include.mlops.registry.compare): the input check and where hyperparameters come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.ui import write_history
from include.mlops import artifacts
from include.mlops.config import load_model_config
from include.mlops.registry.catalog import Catalog, UnknownError
from include.mlops.registry.compare import CompareInputError, compare_versions, requested_versions, training_record

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = PROJECT_ROOT / "include" / "models"


@pytest.mark.parametrize(
    ("a", "b", "says"),
    [(None, "1", "a is missing"), ("1", "", "b is missing"), ("1", "1", "both version 1"), ("x", "1", "a='x'"),
     ("1", "0", "b='0'"), ("1", "1.0", "b='1.0'"), ("1", "-1", "b='-1'"), ("01", "1", "both version 1")],
)  # fmt: skip
def test_bad_requests_are_refused_with_what_is_wrong(a: str | None, b: str | None, says: str) -> None:
    with pytest.raises(CompareInputError, match=says):
        requested_versions(a, b)
    assert requested_versions("3", "1") == (3, 1)


def test_the_hyperparameters_are_the_chosen_trials_unless_the_version_came_from_train(tmp_path: Path) -> None:
    config = load_model_config(MODELS / "diabetes.yaml")
    written = write_history(tmp_path, config, versions=1, runs=2)
    catalog = Catalog(tmp_path, MODELS)
    run = artifacts.run_dir(config.dag_id, written["runs"][1], "", root=tmp_path)
    record = catalog.version_record("diabetes", 1)
    assert training_record(catalog, "diabetes", record)["source"] is None, "no record: nothing to show"
    artifacts.atomic_write_json(run / "train" / "history.json", {"hparams": {"learning_rate": 0.01}, "val_loss": 0.5})
    artifacts.atomic_write_json(
        run / "tune_select" / "trials.json",
        {"best": 1, "trials": [{"trial": 0, "hparams": {"learning_rate": 0.1}, "val_loss": 0.9},
                               {"trial": 1, "hparams": {"learning_rate": 0.002}, "val_loss": 0.2}]},
    )  # fmt: skip
    tuned = training_record(catalog, "diabetes", record)
    assert (tuned["trial"], tuned["hparams"], tuned["val_loss"]) == (1, {"learning_rate": 0.002}, 0.2)
    trained_lineage = {**record.lineage, "sources": {"model_uri": str(run / "train" / "model")}}
    trained = training_record(catalog, "diabetes", type(record)(**{**record.__dict__, "lineage": trained_lineage}))
    assert (trained["trial"], trained["hparams"]) == (None, {"learning_rate": 0.01})


def test_unknown_versions_are_unknown(tmp_path: Path) -> None:
    write_history(tmp_path, load_model_config(MODELS / "diabetes.yaml"), versions=1, runs=2)
    with pytest.raises(UnknownError, match="no version '2'"):
        compare_versions(Catalog(tmp_path, MODELS), "diabetes", 1, 2)
