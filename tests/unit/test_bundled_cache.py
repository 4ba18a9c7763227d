"""The bundled datasets' cache: the same frame as scikit-learn's, read without importing scikit-learn.

Each fault the cache can meet falls back to building the frame: a damaged file, a folder that cannot be
written, a name that is not a plain identifier, a new scikit-learn release.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from include.mlops import artifacts
from include.mlops.data import bundled_cache
from include.mlops.data.sources import SnapshotError, load_bundled

ROOT = Path(__file__).resolve().parents[2]


def sklearn_frame(dataset: str, label: str) -> pd.DataFrame:
    """The frame built straight from scikit-learn, independently of the cache."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{dataset}")()
    frame = pd.DataFrame(bunch.data.astype("float64"), columns=[str(n) for n in bunch.feature_names])
    frame[label] = bunch.target
    return frame


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(bundled_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(("dataset", "label"), [("diabetes", "target"), ("digits", "target")])
def test_the_cached_frame_is_the_frame_scikit_learn_gives(cache: Path, dataset: str, label: str) -> None:
    built = load_bundled(dataset, label)
    path = bundled_cache.cache_path(dataset, label)
    assert path is not None and path.is_relative_to(cache) and path.exists()
    read = load_bundled(dataset, label)
    pd.testing.assert_frame_equal(read, built)
    expected = sklearn_frame(dataset, label)
    assert list(read.columns) == [c.replace(" ", "_") for c in expected.columns]
    assert read.drop(columns=label).to_numpy().tolist() == expected.drop(columns=label).to_numpy().tolist()
    assert read[label].tolist() == expected[label].tolist() and read[label].dtype == expected[label].dtype


def test_a_second_process_reads_the_cache_without_importing_scikit_learn(cache: Path) -> None:
    probe = (
        "import json, sys\n"
        "from include.mlops.data.sources import load_bundled\n"
        "frame = load_bundled('diabetes', 'target')\n"
        "print(json.dumps({'sklearn': 'sklearn' in sys.modules, 'rows': len(frame)}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), bundled_cache.CACHE_ENV: str(cache)}
    first, second = (
        json.loads(
            subprocess.run(
                [sys.executable, "-c", probe], env=env, cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(2)
    )
    assert first == {"sklearn": True, "rows": 442}
    assert second == {"sklearn": False, "rows": 442}


def test_the_file_is_written_like_every_shared_artifact_and_leaves_no_temporary(cache: Path) -> None:
    """Through artifacts.atomic_write_bytes: group-readable (a worker and a step pod may share the folder)."""
    load_bundled("diabetes", "target")
    path = bundled_cache.cache_path("diabetes", "target")
    assert path.stat().st_mode & 0o777 == artifacts.FILE_MODE
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_damaged_file_is_built_again_and_replaced(cache: Path) -> None:
    expected = load_bundled("diabetes", "target")
    path = bundled_cache.cache_path("diabetes", "target")
    path.write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(load_bundled("diabetes", "target"), expected)
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected)


def test_a_folder_that_cannot_be_written_still_gives_the_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(bundled_cache.CACHE_ENV, str(blocker / "cache"))
    frame = load_bundled("diabetes", "target")
    assert len(frame) == 442 and not (blocker / "cache").exists()


def test_each_scikit_learn_release_gets_its_own_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = bundled_cache.cache_path("diabetes", "target")
    monkeypatch.setattr(bundled_cache.metadata, "version", lambda name: "99.0")
    later = bundled_cache.cache_path("diabetes", "target")
    assert now != later and later.parent.name == "sklearn-99.0"


@pytest.mark.parametrize(("dataset", "label"), [("../diabetes", "target"), ("diabetes", "a/b"), ("", "target")])
def test_names_that_are_not_plain_identifiers_are_never_cached(dataset: str, label: str) -> None:
    assert bundled_cache.cache_path(dataset, label) is None


def test_an_unknown_dataset_is_still_a_clear_error_and_caches_nothing(cache: Path) -> None:
    with pytest.raises(SnapshotError, match="no load_nonesuch"):
        load_bundled("nonesuch", "target")
    assert not list(cache.rglob("*.parquet"))
