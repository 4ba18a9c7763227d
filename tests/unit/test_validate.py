"""The validate step: the committed GX suites pass good snapshots and reject each kind of bad data."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from include.mlops.data.snapshot import snapshot
from include.mlops.data.suites import build_suite
from include.mlops.data.validate import RESULT_FILE, SUMMARY_FILE, DataValidationError, SuiteNotFoundError, validate

DS = "2026-11-03"


@pytest.fixture
def bad_snapshot(diabetes_config, uri_config, reference_rows, write_partition, interval, tmp_path):
    """``bad_snapshot(frame, config=diabetes, copies=1)``: snapshot ``frame`` landed as a CSV partition.

    With ``copies=2`` the same file lands on two days and the source reads both (a duplicated partition).
    """

    def make(frame: pd.DataFrame, config=diabetes_config, copies: int = 1) -> str:
        template = tmp_path / "landing" / "{{ ds }}.csv"
        days = ["2026-11-02", DS][-copies:]
        for ds in days:
            write_partition(frame, template, ds)
        source_config = uri_config(config, template, lookback_days=copies)
        return snapshot(source_config, *interval(DS), tmp_path / "snapshot")["data_uri"]

    return make


def _rejects(config, data_uri: str, out: Path) -> DataValidationError:
    """Validate, expect rejection, and check the evidence was kept all the same."""
    with pytest.raises(DataValidationError) as caught:
        validate(config, data_uri, out)
    error = caught.value
    result = json.loads((out / RESULT_FILE).read_text())
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert result["success"] is False
    assert summary["success"] is False
    assert summary["failed"] == error.failures
    assert error.result_uri == str((out / RESULT_FILE).resolve())
    # One line per failed expectation after the header.
    assert str(error).splitlines()[1:] == error.failures
    assert len(error.failures) == result["statistics"]["unsuccessful_expectations"]
    return error


def _line(error: DataValidationError, prefix: str) -> str:
    matches = [line for line in error.failures if line.startswith(prefix)]
    assert matches, f"no failure starting with {prefix!r} in:\n{error}"
    return matches[0]


# --------------------------------------------------------------------------- the committed suites


@pytest.mark.parametrize("model", ["diabetes", "digits"])
def test_committed_suite_matches_its_generator(model, request):
    config = request.getfixturevalue(f"{model}_config")
    committed = json.loads(config.suite_path.read_text())
    assert committed == build_suite(config)
    kinds = {e["type"] for e in committed["expectations"]}
    assert {
        "expect_table_columns_to_match_set",
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_proportion_of_unique_values_to_be_between",
    } <= kinds
    label_checks = (
        {"expect_column_kl_divergence_to_be_less_than", "expect_column_values_to_be_in_set"}
        if config.task == "classification"
        else {"expect_column_mean_to_be_between", "expect_column_stdev_to_be_between"}
    )
    assert label_checks <= kinds


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("model", ["diabetes", "digits"])
def test_bundled_snapshot_passes(model, request, interval, tmp_path):
    config = request.getfixturevalue(f"{model}_config")
    data_uri = snapshot(config, *interval("2026-11-01"), tmp_path / "snapshot")["data_uri"]

    result = validate(config, data_uri, tmp_path / "validate")
    suite = json.loads(config.suite_path.read_text())
    assert result["success"] is True
    assert result["evaluated"] == len(suite["expectations"])
    assert result["rows"] == pd.read_parquet(data_uri).shape[0]
    stored = json.loads(Path(result["result_uri"]).read_text())
    assert stored["success"] is True
    assert stored["meta"]["data_uri"] == data_uri
    summary = json.loads((tmp_path / "validate" / SUMMARY_FILE).read_text())
    assert summary["failed"] == [] and summary["successful"] == result["evaluated"]
    json.dumps(result)


def test_whole_dataset_from_a_file_source_passes(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    data_uri = bad_snapshot(reference_rows(diabetes_config))
    assert validate(diabetes_config, data_uri, tmp_path / "validate")["rows"] == 442


# --------------------------------------------------------------------------- bad inputs


def test_missing_column(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    data_uri = bad_snapshot(reference_rows(diabetes_config).drop(columns=["bmi"]))
    error = _rejects(diabetes_config, data_uri, tmp_path / "validate")
    # The schema problem comes first; the checks on the missing column fail too, and say why.
    assert error.failures == [
        "expect_table_columns_to_match_set(table): missing [bmi]",
        "expect_column_values_to_be_of_type(bmi): column is missing",
        "expect_column_values_to_not_be_null(bmi): column is missing",
        "expect_column_values_to_be_between(bmi): column is missing",
    ]


def test_unexpected_extra_column_is_not_possible_through_snapshot_but_caught_directly(
    diabetes_config, interval, tmp_path
):
    data_uri = snapshot(diabetes_config, *interval(DS), tmp_path / "snapshot")["data_uri"]
    tampered = pd.read_parquet(data_uri).assign(leak="x")
    tampered.to_parquet(tmp_path / "tampered.parquet", index=False)
    error = _rejects(diabetes_config, str(tmp_path / "tampered.parquet"), tmp_path / "validate")
    assert error.failures == ["expect_table_columns_to_match_set(table): unexpected [leak]"]


def test_source_columns_the_config_does_not_list_are_logged_and_reported(
    diabetes_config, reference_rows, bad_snapshot, tmp_path, caplog
):
    rows = reference_rows(diabetes_config).assign(patient_id=range(442), clinic="north")
    with caplog.at_level("WARNING"):
        data_uri = bad_snapshot(rows)
        result = validate(diabetes_config, data_uri, tmp_path / "validate")
    # The snapshot holds only what the config lists, so the data passes; the extras are on record.
    assert "patient_id" not in pd.read_parquet(data_uri).columns
    assert result["extra_columns"] == ["patient_id", "clinic"]
    summary = json.loads((tmp_path / "validate" / SUMMARY_FILE).read_text())
    assert summary["success"] is True
    assert summary["extra_columns"] == ["patient_id", "clinic"]
    stored = json.loads((tmp_path / "validate" / RESULT_FILE).read_text())
    assert stored["meta"]["extra_columns"] == ["patient_id", "clinic"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("['patient_id', 'clinic']" in w and "does not list" in w for w in warnings), warnings


def test_no_extra_columns_is_an_empty_list(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    result = validate(diabetes_config, bad_snapshot(reference_rows(diabetes_config)), tmp_path / "validate")
    assert result["extra_columns"] == []


def test_feature_as_strings(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    rows = reference_rows(diabetes_config)
    rows["bmi"] = [f"{v:.4f}kg" for v in rows["bmi"]]
    error = _rejects(diabetes_config, bad_snapshot(rows), tmp_path / "validate")
    assert _line(error, "expect_column_values_to_be_of_type(bmi)") == (
        "expect_column_values_to_be_of_type(bmi): observed str; expected float64"
    )


def test_label_with_wrong_dtype(digits_config, reference_rows, bad_snapshot, tmp_path):
    rows = reference_rows(digits_config)
    rows["target"] = rows["target"].astype("float64") + 0.5
    error = _rejects(digits_config, bad_snapshot(rows, config=digits_config), tmp_path / "validate")
    assert _line(error, "expect_column_values_to_be_of_type(target)").endswith("observed float64; expected int64")
    assert "1797 unexpected (100.00%)" in _line(error, "expect_column_values_to_be_in_set(target)")


def test_nans(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    rows = reference_rows(diabetes_config)
    rows.loc[[3, 50, 400], "bmi"] = float("nan")
    error = _rejects(diabetes_config, bad_snapshot(rows), tmp_path / "validate")
    assert error.failures == ["expect_column_values_to_not_be_null(bmi): 3 unexpected (0.68%)"]


def test_out_of_range_values(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    rows = reference_rows(diabetes_config)
    rows.loc[[7, 8], "s5"] = 100.0  # unscaled values where standardised ones belong
    error = _rejects(diabetes_config, bad_snapshot(rows), tmp_path / "validate")
    line = _line(error, "expect_column_values_to_be_between(s5)")
    assert line.startswith("expect_column_values_to_be_between(s5): 2 unexpected (0.45%), e.g. [100, 100]")
    assert "expected between" in line


def test_empty_partition(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    header_only = reference_rows(diabetes_config).iloc[:0]
    data_uri = bad_snapshot(header_only)
    assert pd.read_parquet(data_uri).empty
    error = _rejects(diabetes_config, data_uri, tmp_path / "validate")
    assert error.rows == 0
    assert error.failures[0].startswith("expect_table_row_count_to_be_between(table): observed 0; expected between 50")


def test_bundled_interval_before_the_first_arrival_fails(digits_config, interval, tmp_path):
    data_uri = snapshot(digits_config, *interval("2026-10-31"), tmp_path / "snapshot")["data_uri"]
    error = _rejects(digits_config, data_uri, tmp_path / "validate")
    assert _line(error, "expect_table_row_count_to_be_between(table)").startswith(
        "expect_table_row_count_to_be_between(table): observed 0"
    )


def test_duplicated_partition(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    data_uri = bad_snapshot(reference_rows(diabetes_config), copies=2)
    assert len(pd.read_parquet(data_uri)) == 884
    error = _rejects(diabetes_config, data_uri, tmp_path / "validate")
    assert error.failures == [
        "expect_column_proportion_of_unique_values_to_be_between(_row_hash): observed 0.5; expected between 0.9 and 1"
    ]


def test_same_rows_twice_in_one_file(digits_config, reference_rows, bad_snapshot, tmp_path):
    rows = reference_rows(digits_config)
    data_uri = bad_snapshot(pd.concat([rows, rows], ignore_index=True), config=digits_config)
    error = _rejects(digits_config, data_uri, tmp_path / "validate")
    assert _line(error, "expect_column_proportion_of_unique_values_to_be_between(_row_hash)").startswith(
        "expect_column_proportion_of_unique_values_to_be_between(_row_hash): observed 0.5;"
    )


def test_a_few_identical_rows_are_tolerated(digits_config, reference_rows, bad_snapshot, tmp_path):
    rows = reference_rows(digits_config)
    data_uri = bad_snapshot(pd.concat([rows, rows.iloc[:20]], ignore_index=True), config=digits_config)
    assert validate(digits_config, data_uri, tmp_path / "validate")["success"] is True


def test_class_shares_drift(digits_config, reference_rows, bad_snapshot, tmp_path):
    rows = reference_rows(digits_config)
    skewed = rows[rows["target"] >= 5]  # half the classes vanish
    error = _rejects(digits_config, bad_snapshot(skewed, config=digits_config), tmp_path / "validate")
    assert error.failures[0].startswith("expect_column_kl_divergence_to_be_less_than(target): observed ")
    assert error.failures[0].endswith("; expected < 0.05")


def test_regression_label_shift(diabetes_config, reference_rows, bad_snapshot, tmp_path):
    rows = reference_rows(diabetes_config)
    rows["target"] = rows["target"] * 1.4  # e.g. a unit change upstream
    error = _rejects(diabetes_config, bad_snapshot(rows), tmp_path / "validate")
    assert {line.split(":")[0] for line in error.failures} >= {
        "expect_column_mean_to_be_between(target)",
        "expect_column_stdev_to_be_between(target)",
        "expect_column_values_to_be_between(target)",
    }


def test_rerun_replaces_earlier_result(diabetes_config, reference_rows, bad_snapshot, interval, tmp_path):
    out = tmp_path / "validate"
    good = snapshot(diabetes_config, *interval(DS), tmp_path / "good")["data_uri"]
    validate(diabetes_config, good, out)
    rows = reference_rows(diabetes_config)
    rows.loc[0, "age"] = None
    _rejects(diabetes_config, bad_snapshot(rows), out)
    assert sorted(p.name for p in out.iterdir()) == [SUMMARY_FILE, RESULT_FILE]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_missing_suite_says_how_to_make_one(diabetes_config, interval, tmp_path):
    data_uri = snapshot(diabetes_config, *interval(DS), tmp_path / "snapshot")["data_uri"]
    unknown = dataclasses.replace(diabetes_config, name="no_such_model")
    with pytest.raises(SuiteNotFoundError, match=r"python -m include\.mlops\.data\.suites no_such_model"):
        validate(unknown, data_uri, tmp_path / "validate")


def test_missing_snapshot_is_a_clear_error(diabetes_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="run the snapshot step"):
        validate(diabetes_config, tmp_path / "nowhere" / "data.parquet", tmp_path / "validate")


# --------------------------------------------------------------------------- the suite generator's input


def _run_suites(models: Path, *args: str) -> subprocess.CompletedProcess[str]:
    project = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-m", "include.mlops.data.suites", *args],
        cwd=project,
        env={**os.environ, "MLOPS_MODELS_DIR": str(models), "MLOPS_GX_DIR": str(models)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _cancer_model(tmp_path: Path, diabetes_config, features: list[str]) -> Path:
    """A breast-cancer classifier config (diabetes' builder) with the given feature names."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(diabetes_config.builder_path, models / "cancer.py")
    (models / "cancer.yaml").write_text(
        "name: cancer\ntask: classification\nbuilder: cancer\nnum_classes: 2\n"
        "source: {kind: bundled, dataset: breast_cancer, start_date: 2026-11-01}\n"
        f"features: {json.dumps(features)}\nlabel: target\nmetrics: [accuracy]\n"
    )
    return models


def test_suite_for_features_missing_from_the_bundled_data_names_expected_and_available(diabetes_config, tmp_path):
    models = _cancer_model(tmp_path, diabetes_config, ["mean radius", "mean_texture"])
    proc = _run_suites(models, "cancer")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "KeyError" not in proc.stderr and "Traceback" not in proc.stderr
    assert "the bundled dataset 'breast_cancer' lacks 1 of the 3 columns model 'cancer' needs" in proc.stderr
    assert "missing ['mean radius']" in proc.stderr
    assert "expected ['mean radius', 'mean_texture', 'target']" in proc.stderr
    assert "available ['mean_radius', 'mean_texture'," in proc.stderr
    assert not (models / "cancer.json").exists()


def test_suite_for_reference_data_missing_a_feature_names_expected_and_available(
    diabetes_config, reference_rows, tmp_path
):
    models = _cancer_model(tmp_path, diabetes_config, ["mean_radius"])
    shutil.copy(diabetes_config.builder_path, models / "diabetes.py")
    shutil.copy(diabetes_config.path, models / "diabetes.yaml")
    reference = tmp_path / "reference.csv"
    reference_rows(diabetes_config).drop(columns=["bmi"]).to_csv(reference, index=False)
    proc = _run_suites(models, "diabetes", "--data", str(reference))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "the reference data for 'diabetes' lacks 1 of the 11 columns" in proc.stderr
    assert "missing ['bmi']" in proc.stderr and "available ['age', 'sex', 'bp'," in proc.stderr


def test_suite_generator_writes_a_suite_from_the_bundled_data(diabetes_config, tmp_path):
    models = _cancer_model(tmp_path, diabetes_config, ["mean_radius", "mean_texture"])
    proc = _run_suites(models, "cancer")
    assert proc.returncode == 0, proc.stderr[-2000:]
    suite = json.loads((models / "cancer.json").read_text())
    assert suite["expectations"][0]["kwargs"]["column_set"] == [
        "mean_radius",
        "mean_texture",
        "target",
        "split",
        "_row_hash",
    ]
