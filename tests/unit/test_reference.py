"""The training reference: its bins and statistics, and the copy register stores in every new version."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from model_factory import make_saved_model

from include.mlops.config import find_model_config
from include.mlops.data.snapshot import snapshot
from include.mlops.evaluation import gate as gate_lib
from include.mlops.monitoring.reference import REFERENCE_FILE, bin_index, build_reference, has_sample, read_reference
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.register import register_model


def test_every_value_falls_in_a_bin_and_constant_and_low_cardinality_features_get_distinct_edges() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "blank_pixel": np.zeros(500),  # digits' always-blank pixels
            "pixel": rng.choice([0.0, 0.0, 0.0, 4.0, 16.0], 500),  # mostly 0, three distinct values
            "smooth": rng.normal(size=500),
        }
    )
    reference = build_reference(frame, list(frame.columns), bins=10, snapshot_sha256="abc")
    assert reference["rows"] == 500 and reference["snapshot_sha256"] == "abc" and reference["format"] == 2
    for name, stats in reference["features"].items():
        edges = stats["bin_edges"]
        assert bool(np.all(np.diff(edges) > 0)), (name, edges)
        assert len(stats["bin_weights"]) == len(edges) + 1 and sum(stats["bin_weights"]) == pytest.approx(1.0)
        # The outer bins are open: a value outside the training range lands in the training bin beside it.
        outside = bin_index(np.array([stats["min"] - 1.0, stats["max"] + 1.0]), edges)
        assert outside.tolist() == [0, len(edges)]
        assert min(stats["bin_weights"]) > 0.0, "every bin holds training rows"
        assert len(stats["sample"]) == 500
    assert reference["features"]["blank_pixel"]["bin_edges"] == []
    assert reference["features"]["blank_pixel"]["bin_weights"] == [1.0]
    pixel = reference["features"]["pixel"]  # edges halfway between a quantile and the training value below it
    assert pixel["bin_edges"] == [2.0, 10.0] and pixel["bin_weights"][0] == pytest.approx(0.6, abs=0.06)
    smooth = reference["features"]["smooth"]
    assert len(smooth["bin_weights"]) == 10 and max(smooth["bin_weights"]) == pytest.approx(0.1, abs=0.01)
    assert smooth["quantiles"]["0.5"] == pytest.approx(float(np.median(frame["smooth"])), abs=1e-6)
    kinds = {name: stats["kind"] for name, stats in reference["features"].items()}
    assert kinds == {"blank_pixel": "categorical", "pixel": "categorical", "smooth": "numeric"}


def test_the_training_sample_is_bounded_seeded_and_exact_in_float32() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=3000), "n": rng.integers(0, 40, 3000).astype(float)})
    first = build_reference(frame, ["x", "n"], bins=5, sample_rows=1000)
    again = build_reference(frame, ["x", "n"], bins=5, sample_rows=1000)
    assert first["sample"] == {"rows": 1000, "seed": first["sample"]["seed"]}
    assert first["features"]["x"]["sample"] == again["features"]["x"]["sample"]
    sample = np.asarray(first["features"]["x"]["sample"], dtype=np.float32)
    assert np.isin(sample, frame["x"].to_numpy(np.float32)).all(), "sampled values read back as the same float32"
    assert first["features"]["n"]["kind"] == "numeric", "integers with more than 32 values are tested as numbers"


def test_a_format_1_reference_reads_back_with_open_outer_bins(tmp_path: Path) -> None:
    old = {
        "format": 1, "rows": 10, "bins": 4,
        "features": {"x": {"min": 0.0, "max": 3.0, "bin_edges": [0.0, 1.0, 2.0, 3.0000002],
                           "bin_weights": [0.0, 0.3, 0.3, 0.4, 0.0]}},
    }  # fmt: skip
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / REFERENCE_FILE).write_text(json.dumps(old))
    read = read_reference(tmp_path)
    assert read is not None and not has_sample(read)
    assert read["features"]["x"]["bin_edges"] == [1.0, 2.0]
    assert read["features"]["x"]["bin_weights"] == [0.3, 0.3, 0.4]


def test_a_non_finite_training_value_is_refused() -> None:
    with pytest.raises(ValueError, match=r"features \['x'\] hold NaN"):
        build_reference(pd.DataFrame({"x": [1.0, np.nan]}), ["x"], bins=4)


def test_a_registered_version_carries_the_reference_of_its_training_rows(artifact_root: Path, tmp_path: Path) -> None:
    config = find_model_config("diabetes")
    end = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    snap = snapshot(config, end - dt.timedelta(days=1), end, tmp_path / "snapshot")
    model = make_saved_model(tmp_path / "model", len(config.features), 1, seed=1)
    metrics = {"mae": 44.0, "rmse": 50.0, "r2": 0.5}
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    decision = gate_lib.decide_for_config(config, metrics, None, force=True)
    lineage = {"dag_id": config.dag_id, "run_id": "manual__1", "data_uri": snap["data_uri"]}
    result = register_model(
        config, model, tmp_path / "evaluate", lineage=lineage, gate_decision=decision.to_dict(), out=tmp_path / "r"
    )

    version_dir = Path(result["version_dir"])
    stored = json.loads((version_dir / REFERENCE_FILE).read_text())
    data = pd.read_parquet(snap["data_uri"])
    train = data[data["split"] == "train"]
    assert stored["rows"] == len(train) < len(data)
    assert stored["bins"] == config.monitor.drift.bins
    assert stored["sample"]["rows"] == min(len(train), config.monitor.drift.reference_sample_rows)
    lineage_written = json.loads((version_dir / "assets.extra" / "lineage.json").read_text())
    assert stored["snapshot_sha256"] == lineage_written["data_sha256"] is not None
    for feature in config.features:
        values = train[feature].to_numpy(np.float32).astype(np.float64)
        stats = stored["features"][feature]
        assert stats["mean"] == pytest.approx(values.mean()) and stats["max"] == values.max()
        counts = np.bincount(bin_index(values, stats["bin_edges"]), minlength=len(stats["bin_edges"]) + 1)
        assert stats["bin_weights"] == pytest.approx((counts / len(values)).tolist())
    # Covered by the version's checksums like every other file.
    assert REFERENCE_FILE in Registry(artifact_root / "models").verify(config.serving_name, result["version"])
