"""The snapshot step: bundled daily arrivals, partitioned file sources, determinism and the split."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import threading
import time

import pandas as pd
import pytest

from include.mlops.data.snapshot import DATA_FILE, MANIFEST_FILE, PartitionNotLandedError, snapshot
from include.mlops.data.sources import (
    SPLIT_COLUMN,
    SnapshotError,
    assign_split,
    lookback_days,
    row_hashes,
)

FIRST_DAY = "2026-11-01"  # start_date of both demo configs


def test_bundled_diabetes_first_day(diabetes_config, interval, tmp_path):
    start, end = interval(FIRST_DAY)
    result = snapshot(diabetes_config, start, end, tmp_path / "snap")

    frame = pd.read_parquet(result["data_uri"])
    assert list(frame.columns) == [*diabetes_config.features, "target", SPLIT_COLUMN]
    assert len(frame) == result["rows"] == round(0.6 * 442)
    assert all(frame[c].dtype == "float64" for c in [*diabetes_config.features, "target"])
    assert set(frame[SPLIT_COLUMN]) == {"train", "test"}
    assert result["split_counts"] == frame[SPLIT_COLUMN].value_counts().to_dict()
    assert result["partitions"] == [FIRST_DAY]
    assert result["interval_start"] == "2026-11-01T00:00:00+00:00"
    assert result["interval_end"] == "2026-11-02T00:00:00+00:00"
    json.dumps(result)  # crosses the step boundary as JSON

    manifest = json.loads((tmp_path / "snap" / MANIFEST_FILE).read_text())
    assert manifest["sha256"] == result["sha256"]
    assert manifest["rows"] == result["rows"]
    assert manifest["source"]["dataset"] == "diabetes"
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [DATA_FILE, MANIFEST_FILE]
    # No staging folder left behind beside the output.
    assert [p.name for p in tmp_path.iterdir()] == ["snap"]


def test_bundled_digits_columns_and_dtypes(digits_config, interval, tmp_path):
    result = snapshot(digits_config, *interval(FIRST_DAY), tmp_path)
    frame = pd.read_parquet(result["data_uri"])
    assert len(frame) == round(0.6 * 1797)
    assert list(frame.columns[:3]) == ["pixel_0_0", "pixel_0_1", "pixel_0_2"]
    assert frame.columns[63] == "pixel_7_7"
    assert frame["target"].dtype == "int64"
    assert set(frame["target"]) == set(range(10))
    assert (frame[list(digits_config.features)].dtypes == "float64").all()
    assert frame[list(digits_config.features)].to_numpy().max() <= 16.0


def test_rerun_yields_identical_bytes(diabetes_config, interval, tmp_path):
    start, end = interval("2026-11-04")
    first = snapshot(diabetes_config, start, end, tmp_path / "a")
    second = snapshot(diabetes_config, start, end, tmp_path / "b")
    assert first["sha256"] == second["sha256"]
    for name in (DATA_FILE, MANIFEST_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # Rerunning into the same folder replaces it with the same content.
    again = snapshot(diabetes_config, start, end, tmp_path / "a")
    assert again["sha256"] == first["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_data_grows_day_by_day(diabetes_config, interval, tmp_path):
    rows, frames = [], []
    for day in range(1, 6):
        ds = f"2026-11-{day:02d}"
        result = snapshot(diabetes_config, *interval(ds), tmp_path / ds)
        assert result["partitions"][-1] == ds
        assert len(result["partitions"]) == day
        rows.append(result["rows"])
        frames.append(pd.read_parquet(result["data_uri"]))
    assert rows == [265 + 10 * d for d in range(5)]
    # Cumulative: each day's snapshot starts with the previous day's rows, in the same order.
    for earlier, later in itertools.pairwise(frames):
        pd.testing.assert_frame_equal(later.iloc[: len(earlier)], earlier)


def test_interval_on_or_before_start_date_is_empty(diabetes_config, tmp_path):
    start_date = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    result = snapshot(diabetes_config, start_date - dt.timedelta(days=1), start_date, tmp_path)
    assert result["rows"] == 0
    assert result["partitions"] == []
    assert result["split_counts"] == {"train": 0, "test": 0}
    frame = pd.read_parquet(result["data_uri"])
    assert list(frame.columns) == [*diabetes_config.features, "target", SPLIT_COLUMN]


def test_arrivals_stop_when_the_dataset_is_exhausted(diabetes_config, interval, tmp_path):
    result = snapshot(diabetes_config, *interval("2027-06-01"), tmp_path)
    assert result["rows"] == 442
    # 177 rows after the first day at 10 a day: 18 more arrival days.
    assert len(result["partitions"]) == 19


def test_daily_rows_zero_releases_only_the_first_day(diabetes_config, interval, tmp_path):
    frozen = dataclasses.replace(diabetes_config, source=dataclasses.replace(diabetes_config.source, daily_rows=0))
    result = snapshot(frozen, *interval("2026-11-20"), tmp_path)
    assert result["rows"] == 265
    assert result["partitions"] == [FIRST_DAY]


def test_naive_and_non_utc_datetimes_mean_the_same_instant(diabetes_config, tmp_path):
    aware = snapshot(
        diabetes_config,
        dt.datetime(2026, 11, 3, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 4, tzinfo=dt.UTC),
        tmp_path / "a",
    )
    naive = snapshot(diabetes_config, dt.datetime(2026, 11, 3), dt.datetime(2026, 11, 4), tmp_path / "b")
    paris = dt.timezone(dt.timedelta(hours=1))
    shifted = snapshot(
        diabetes_config,
        dt.datetime(2026, 11, 3, 1, tzinfo=paris),
        dt.datetime(2026, 11, 4, 1, tzinfo=paris),
        tmp_path / "c",
    )
    assert aware["sha256"] == naive["sha256"] == shifted["sha256"]
    assert shifted["interval_end"] == "2026-11-04T00:00:00+00:00"


def test_interval_ending_before_it_starts_is_rejected(diabetes_config, interval, tmp_path):
    start, end = interval("2026-11-03")
    with pytest.raises(SnapshotError, match="ends before it starts"):
        snapshot(diabetes_config, end, start, tmp_path)


def test_split_is_stable_per_row(digits_config, interval, tmp_path):
    early = pd.read_parquet(snapshot(digits_config, *interval("2026-11-02"), tmp_path / "early")["data_uri"])
    late = pd.read_parquet(snapshot(digits_config, *interval("2026-11-12"), tmp_path / "late")["data_uri"])
    key = [*digits_config.features, "target"]
    joined = early.merge(late, on=key, suffixes=("_early", "_late"), validate="one_to_one")
    assert len(joined) == len(early)
    assert (joined["split_early"] == joined["split_late"]).all()

    # The split depends on a row's values only: not on its position or on the other rows.
    shuffled = late.sample(frac=1.0, random_state=7)
    resplit = assign_split(shuffled, key, digits_config.test_fraction)
    assert (resplit == shuffled[SPLIT_COLUMN]).all()
    assert 0.15 < (late[SPLIT_COLUMN] == "test").mean() < 0.25


def test_row_hash_ignores_number_dtype_but_not_values():
    ints = pd.DataFrame({"a": [1.5, 2.0], "label": pd.array([3, 4], dtype="int64")})
    floats = pd.DataFrame({"a": [1.5, 2.0], "label": [3.0, 4.0]})
    assert (row_hashes(ints, ["a", "label"]) == row_hashes(floats, ["a", "label"])).all()
    other = floats.assign(a=[1.5, 2.5])
    hashes = row_hashes(other, ["a", "label"])
    assert hashes[0] == row_hashes(floats, ["a", "label"])[0]
    assert hashes[1] != row_hashes(floats, ["a", "label"])[1]


def test_lookback_days_end_the_day_before_interval_end():
    end = dt.datetime(2026, 11, 5, tzinfo=dt.UTC)
    assert lookback_days(end, 3) == [dt.date(2026, 11, 2), dt.date(2026, 11, 3), dt.date(2026, 11, 4)]


def test_csv_uri_source_reads_the_lookback_window(
    diabetes_config, uri_config, reference_rows, write_partition, interval, tmp_path
):
    rows = reference_rows(diabetes_config)
    template = tmp_path / "landing" / "{{ ds }}.csv"
    # Extra columns in the files are dropped; the config's columns come out in config order.
    write_partition(rows.iloc[:200].assign(patient_id=range(200)).iloc[:, ::-1], template, "2026-11-02")
    write_partition(rows.iloc[200:], template, "2026-11-03")
    write_partition(rows.iloc[:5], template, "2026-11-04")  # after the interval: not read
    config = uri_config(diabetes_config, template, lookback_days=2)

    result = snapshot(config, *interval("2026-11-03"), tmp_path / "snap")
    frame = pd.read_parquet(result["data_uri"])
    assert result["partitions"] == ["2026-11-02", "2026-11-03"]
    assert result["rows"] == len(frame) == 442
    assert list(frame.columns) == [*diabetes_config.features, "target", SPLIT_COLUMN]
    pd.testing.assert_frame_equal(frame.drop(columns=SPLIT_COLUMN), rows, check_exact=False, rtol=1e-12)
    manifest = json.loads((tmp_path / "snap" / MANIFEST_FILE).read_text())
    assert manifest["source"] == {"kind": "uri", "uri": str(template), "format": "csv", "lookback_days": 2}


def test_parquet_file_uri_source(digits_config, uri_config, reference_rows, write_partition, interval, tmp_path):
    rows = reference_rows(digits_config)
    template = f"file://{tmp_path}/landing/{{{{ ds }}}}.parquet"
    write_partition(rows, template, "2026-11-07")
    config = uri_config(digits_config, template)

    result = snapshot(config, *interval("2026-11-07"), tmp_path / "snap")
    frame = pd.read_parquet(result["data_uri"])
    assert result["partitions"] == ["2026-11-07"]
    assert len(frame) == 1797
    assert frame["target"].dtype == "int64"
    # Same rows, same split as the bundled source gives them.
    bundled = pd.read_parquet(snapshot(digits_config, *interval("2027-06-01"), tmp_path / "bundled")["data_uri"])
    key = [*digits_config.features, "target"]
    joined = frame.merge(bundled, on=key, suffixes=("_uri", "_bundled"), validate="one_to_one")
    assert (joined["split_uri"] == joined["split_bundled"]).all()


def test_uri_source_keeps_file_dtypes_and_missing_columns(
    diabetes_config, uri_config, reference_rows, write_partition, interval, tmp_path
):
    rows = reference_rows(diabetes_config).drop(columns=["s6"])
    rows["bmi"] = [f"{v:.4f}kg" for v in rows["bmi"]]
    rows["target"] = rows["target"].astype("int64")  # a regression label written as integers
    template = tmp_path / "{{ ds }}.csv"
    write_partition(rows, template, "2026-11-02")

    result = snapshot(uri_config(diabetes_config, template), *interval("2026-11-02"), tmp_path / "snap")
    frame = pd.read_parquet(result["data_uri"])
    assert "s6" not in frame.columns
    assert frame["bmi"].dtype != "float64"
    # Kept as the file has them, not coerced: validation judges them.
    assert frame["target"].dtype == "int64"
    assert frame["bmi"].iloc[0].endswith("kg")


def test_missing_partition_names_the_uri(
    diabetes_config, uri_config, reference_rows, write_partition, interval, tmp_path
):
    template = tmp_path / "landing" / "{{ ds }}.csv"
    write_partition(reference_rows(diabetes_config), template, "2026-11-03")
    config = uri_config(diabetes_config, template, lookback_days=2)

    with pytest.raises(PartitionNotLandedError) as caught:
        snapshot(config, *interval("2026-11-03"), tmp_path / "snap")
    message = str(caught.value)
    assert str(tmp_path / "landing" / "2026-11-02.csv") in message
    assert "2026-11-02" in message and "lookback_days 2" in message
    assert not (tmp_path / "snap").exists()
    # Data that has not landed is not bad input: the step exits 1 (retried), not 3.
    assert not isinstance(caught.value, SnapshotError)


def test_snapshot_waits_for_a_partition_that_lands_late(
    diabetes_config, uri_config, reference_rows, write_partition, interval, tmp_path
):
    template = tmp_path / "landing" / "{{ ds }}.csv"
    config = uri_config(diabetes_config, template)
    lands = threading.Timer(0.5, write_partition, (reference_rows(diabetes_config), template, "2026-11-02"))
    lands.start()
    try:
        result = snapshot(config, *interval("2026-11-02"), tmp_path / "snap", wait_for_data=30)
    finally:
        lands.cancel()
    assert result["partitions"] == ["2026-11-02"]
    assert result["rows"] == len(reference_rows(diabetes_config))


def test_snapshot_gives_up_waiting_after_the_wait(diabetes_config, uri_config, interval, tmp_path):
    config = uri_config(diabetes_config, tmp_path / "{{ ds }}.csv")
    started = time.monotonic()
    with pytest.raises(PartitionNotLandedError, match=r"waited 1s"):
        snapshot(config, *interval("2026-11-02"), tmp_path / "snap", wait_for_data=1.0)
    assert 1.0 <= time.monotonic() - started < 10


def test_unreadable_partition_is_a_snapshot_error(diabetes_config, uri_config, interval, tmp_path):
    (tmp_path / "2026-11-02.parquet").write_bytes(b"not parquet at all")
    config = uri_config(diabetes_config, tmp_path / "{{ ds }}.parquet")
    with pytest.raises(SnapshotError, match=r"cannot read partition 2026-11-02 .*2026-11-02\.parquet"):
        snapshot(config, *interval("2026-11-02"), tmp_path / "snap")
