"""The local copy of a registry in a bucket that model servers read (moto's S3 server, real HTTP)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from model_factory import make_saved_model
from s3_stand_in import registry_uri

from include.mlops import artifacts
from include.mlops.config import PROJECT_ROOT
from include.mlops.deploy.traffic_split import LocalRoute
from include.mlops.registry import mirror
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.model_config_file import CONFIG_FILE, read_model_config
from include.mlops.registry.object_store import ObjectStoreRegistry
from include.mlops.registry.protocol import CorruptVersionError
from include.mlops.serving.canary_weights import ROUTE_FILE, read_weight

LINEAGE = {"dag_id": "lifecycle__tiny", "run_id": "r1"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("mirror-models")
    return {seed: make_saved_model(base / f"m{seed}", 3, seed=seed) for seed in (1, 2, 3)}


@pytest.fixture
def bucket(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStoreRegistry:
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    return ObjectStoreRegistry(registry_uri(tmp_path))


def _register(bucket: ObjectStoreRegistry, model: Path, run: str) -> int:
    return bucket.register("tiny", model, metrics={"mae": 1.0}, lineage={**LINEAGE, "run_id": run}).version


def test_the_mirror_holds_the_labelled_versions_and_a_config_pointing_at_them(bucket, models, tmp_path) -> None:
    one, two, three = (_register(bucket, models[seed], f"r{seed}") for seed in (1, 2, 3))
    bucket.set_label("tiny", "stable", one)
    bucket.set_label("tiny", "canary", two)
    dest = tmp_path / "served"

    assert mirror.sync_once(bucket, dest) is True

    config = read_model_config(dest / CONFIG_FILE)
    (entry,) = config.model_config_list.config
    assert entry.base_path == str(dest / "tiny")
    assert dict(entry.version_labels) == {"stable": one, "canary": two}
    # Only what the config names is copied; the copies pass the filesystem registry's own checksum check.
    assert sorted(p.name for p in (dest / "tiny").iterdir()) == [str(one), str(two)]
    local = Registry(dest)
    local.verify("tiny", one)
    local.verify("tiny", two)
    assert not (dest / "tiny" / str(three)).exists()
    # Nothing changed in the bucket: a second sync rewrites nothing and downloads nothing.
    mtime = (dest / CONFIG_FILE).stat().st_mtime_ns
    assert mirror.sync_once(bucket, dest) is False
    assert (dest / CONFIG_FILE).stat().st_mtime_ns == mtime

    bucket.move_label("tiny", "stable", three, expected=one)
    assert mirror.sync_once(bucket, dest) is True
    assert Registry(dest).label_version("tiny", "stable") == three
    Registry(dest).verify("tiny", three)


def test_a_corrupt_version_is_never_copied_and_the_config_is_not_moved_to_it(bucket, models, tmp_path) -> None:
    one = _register(bucket, models[1], "r1")
    bucket.set_label("tiny", "stable", one)
    dest = tmp_path / "served"
    mirror.sync_once(bucket, dest)
    two = _register(bucket, models[2], "r2")
    # Damage version 2's weights in the bucket, then label it.
    store = bucket._store
    key = next(k for k in store.keys(f"tiny/{two}") if k.startswith("variables/variables.data"))
    store.put(f"tiny/{two}/{key}", b"garbage")
    bucket.move_label("tiny", "stable", two, expected=one)

    with pytest.raises(CorruptVersionError):
        mirror.sync_once(bucket, dest)
    assert not (dest / "tiny" / str(two)).exists()
    assert Registry(dest).label_version("tiny", "stable") == one  # the server keeps answering from version 1


def test_the_command_line_syncs_once_and_names_a_missing_bucket(bucket, models, tmp_path) -> None:
    bucket.set_label("tiny", "stable", _register(bucket, models[1], "r1"))
    dest = tmp_path / "init"
    command = [sys.executable, "-m", "include.mlops.registry.mirror", "--source", str(bucket.root), "--dest", str(dest)]
    done = subprocess.run([*command, "--once"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Registry(dest).label_version("tiny", "stable") == 1

    missing = ["--source", "s3://no-such-bucket-here/models", "--dest", str(tmp_path / "x"), "--once"]
    done = subprocess.run([*command[:3], *missing], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "no-such-bucket-here" in done.stderr and "does not exist" in done.stderr


def test_the_canary_route_goes_through_the_bucket_to_the_mirror(bucket, models, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(bucket.root.parent))
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "worker"))
    bucket.set_label("tiny", "stable", _register(bucket, models[1], "r1"))
    route = LocalRoute(artifacts.registry_root())
    with pytest.raises(FileNotFoundError, match=r"no model 'other' in the registry at s3://"):
        route.set_canary_weight("other", 10)
    route.set_canary_weight("tiny", 20)
    dest = tmp_path / "served"

    assert mirror.sync_once(bucket, dest) is True
    assert read_weight(dest / "tiny" / ROUTE_FILE) == 20
    route.set_canary_weight("tiny", 50)
    assert mirror.sync_once(bucket, dest) is True
    assert read_weight(dest / "tiny" / ROUTE_FILE) == 50
    assert mirror.sync_once(bucket, dest) is False

    # Another worker, with an empty mirror, reads the weight the bucket holds.
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "another-worker"))
    assert LocalRoute(artifacts.registry_root()).canary_weight("tiny") == 50
