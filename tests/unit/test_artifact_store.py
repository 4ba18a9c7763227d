"""The artifact root on S3 (moto's server, real HTTP): publish by marker, pull through it, clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from s3_stand_in import BUCKET

from include.mlops import artifact_store, artifacts
from include.mlops.registry.filesystem import Registry
from include.mlops.registry.object_store import ObjectStoreRegistry
from include.mlops.registry.protocol import RegistryError


@pytest.fixture
def root_uri(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"s3://{BUCKET}/{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}/artifacts"
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", uri)
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "mirror-a"))
    return uri


def _other_mirror(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> artifact_store.ArtifactStore:
    """The same root seen from another machine: a fresh, empty mirror."""
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "mirror-b"))
    store = artifact_store.current()
    assert store is not None and store.local == artifact_store.mirror_dir(store.uri)
    assert not store.local.exists()
    return store


def _keys(uri: str) -> set[str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return {item["Key"][len(prefix) + 1 :] for item in listed.get("Contents", [])}


def test_a_local_root_is_no_object_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(tmp_path))
    assert artifact_store.current() is None
    assert artifacts.artifact_root() == tmp_path.resolve()
    assert isinstance(artifact_store.open_registry(), Registry)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("gs://bucket/prefix", "only s3:// is supported"),
        ("s3://", "is not an object-store URI"),
        ("s3://bucket/a/../b", "'..'"),
        ("ftp://host/x", "is not an object-store URI"),
    ],
)
def test_a_root_this_build_cannot_use_is_refused_by_name(value: str, said: str, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", value)
    with pytest.raises(artifact_store.ArtifactStoreError, match="MLOPS_ARTIFACT_ROOT") as caught:
        artifacts.artifact_root()
    assert said in str(caught.value)


def test_on_s3_the_root_is_a_local_mirror_and_the_registry_is_in_the_bucket(root_uri: str, tmp_path: Path) -> None:
    root = artifacts.artifact_root()
    assert root.is_relative_to(tmp_path / "mirror-a")
    registry = artifact_store.open_registry()
    assert isinstance(registry, ObjectStoreRegistry)
    assert str(registry.config_path) == f"{root_uri}/models/models.config"
    # A folder given explicitly is used as given (the sandbox's private registry, tests).
    assert isinstance(artifact_store.open_registry(tmp_path / "models"), Registry)


def test_a_pushed_step_folder_is_pulled_whole_into_another_mirror(root_uri, tmp_path, monkeypatch) -> None:
    store = artifact_store.current()
    out = artifacts.run_dir("lifecycle__m", "manual__1", "train")
    (out / "model" / "variables").mkdir(parents=True)
    (out / "model" / "saved_model.pb").write_bytes(b"\x00pb" * 1000)
    (out / "model" / "variables" / "v.index").write_bytes(b"idx")
    (out / "metrics.json").write_text('{"loss": 0.5}')
    store.push(out)
    assert _keys(root_uri) >= {
        "runs/lifecycle__m/manual__1/train/.complete.json",
        "runs/lifecycle__m/manual__1/train/metrics.json",
        "runs/lifecycle__m/manual__1/train/model/saved_model.pb",
    }

    other = _other_mirror(root_uri, tmp_path, monkeypatch)
    there = other.local / "runs/lifecycle__m/manual__1/train"
    assert other.pull(there) is True
    assert (there / "model" / "saved_model.pb").read_bytes() == b"\x00pb" * 1000
    assert (there / "model" / "variables" / "v.index").read_bytes() == b"idx"
    assert json.loads((there / "metrics.json").read_text()) == {"loss": 0.5}
    assert not (there / ".complete.json").exists()


def test_a_step_that_died_before_its_marker_published_nothing(root_uri, tmp_path, monkeypatch) -> None:
    store = artifact_store.current()
    # What a push killed after its first upload leaves: a file, no marker.
    store.objects.put("runs/d/r/train/metrics.json", b'{"half": true}')
    other = _other_mirror(root_uri, tmp_path, monkeypatch)
    assert other.pull(other.local / "runs/d/r/train") is False
    assert not (other.local / "runs/d/r/train").exists()


def test_a_rerun_replaces_the_output_and_readers_drop_the_old_files(root_uri, tmp_path, monkeypatch) -> None:
    store = artifact_store.current()
    out = artifacts.run_dir("d", "r", "evaluate")
    out.mkdir(parents=True)
    (out / "old.json").write_text("1")
    (out / "kept.json").write_text("first")
    store.push(out)
    other = _other_mirror(root_uri, tmp_path, monkeypatch)
    there = other.local / "runs/d/r/evaluate"
    other.pull(there)
    assert (there / "old.json").exists()

    (out / "old.json").unlink()
    (out / "kept.json").write_text("second")
    store.push(out)
    assert "runs/d/r/evaluate/old.json" not in _keys(root_uri)
    other.pull(there)
    assert not (there / "old.json").exists()
    assert (there / "kept.json").read_text() == "second"


def test_a_whole_run_folder_pulls_its_published_steps_only(root_uri, tmp_path, monkeypatch) -> None:
    store = artifact_store.current()
    for step in ("snapshot", "validate"):
        out = artifacts.run_dir("d", "r", step)
        out.mkdir(parents=True)
        (out / "x.json").write_text(step)
        store.push(out)
    store.objects.put("runs/d/r/train/partial.bin", b"half")
    other = _other_mirror(root_uri, tmp_path, monkeypatch)
    assert other.pull(other.local / "runs/d/r") is True
    assert (other.local / "runs/d/r/snapshot/x.json").read_text() == "snapshot"
    assert (other.local / "runs/d/r/validate/x.json").read_text() == "validate"
    assert not (other.local / "runs/d/r/train").exists()


def test_a_single_file_round_trips_and_uris_map_to_mirror_paths(root_uri: str) -> None:
    store = artifact_store.current()
    result = artifacts.run_dir("d", "r", "train").parent / "train.result-try1.json"
    artifacts.atomic_write_json(result, {"ok": True})
    assert str(store.push(result)) == f"{root_uri}/runs/d/r/train.result-try1.json"
    result.unlink()
    assert store.localize(f"{root_uri}/runs/d/r/train.result-try1.json") == str(result)
    assert store.localize("/elsewhere/file") == "/elsewhere/file"
    assert store.pull(result) is True
    assert json.loads(result.read_text()) == {"ok": True}


def test_a_missing_bucket_names_the_uri_and_the_operation(s3_endpoint, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", "s3://no-such-bucket-here/prefix")
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path))
    store = artifact_store.current()
    out = artifacts.run_dir("d", "r", "train")
    out.mkdir(parents=True)
    (out / "a.json").write_text("{}")
    with pytest.raises(RegistryError, match=r"s3://no-such-bucket-here/prefix/runs/d/r/train.*does not exist"):
        store.push(out)
    with pytest.raises(RegistryError, match="no-such-bucket-here"):
        store.pull(out)


def test_a_network_error_mid_upload_is_retried_then_fails_clearly_and_publishes_nothing(
    root_uri, tmp_path, monkeypatch
) -> None:
    store = artifact_store.current()
    out = artifacts.run_dir("d", "r", "train")
    out.mkdir(parents=True)
    (out / "metrics.json").write_text('{"loss": 1}')
    faults = {"left": 2, "raised": 0}

    def drop_puts(request: Any, **_: Any) -> None:
        # The connection drops before the request is answered, as a flaky network does.
        if request.method == "PUT" and faults["left"] > 0:
            faults["left"] -= 1
            faults["raised"] += 1
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=request.url)

    store.client.meta.events.register("before-send.s3", drop_puts)
    try:
        store.push(out)  # two dropped connections: the client's standard retry mode gets through
        assert faults["raised"] == 2
        other = _other_mirror(root_uri, tmp_path, monkeypatch)
        assert other.pull(other.local / "runs/d/r/train")

        faults["left"] = 1000
        with pytest.raises(RegistryError, match=r"cannot write s3://.*/runs/d/r/train/metrics\.json"):
            store.push(out)
        assert faults["raised"] >= 2 + 5  # at least the client's max_attempts, then the clear failure
        # The failed rerun took the old marker down first: readers now see no output, never a mix.
        assert other.pull(other.local / "runs/d/r/train") is False
    finally:
        store.client.meta.events.unregister("before-send.s3", drop_puts)


def test_monitoring_state_follows_the_model_from_machine_to_machine(root_uri, tmp_path, monkeypatch) -> None:
    first = artifact_store.current()
    folder = first.local / "monitoring" / "diabetes"
    # A task records a request, then skips: what it recorded is published all the same.
    with pytest.raises(RuntimeError, match="skip"), artifact_store.synced(folder) as state:
        artifacts.atomic_write_json(state / "retrain_requests.json", {"requests": [{"run": "a"}]})
        raise RuntimeError("skip")

    second = _other_mirror(root_uri, tmp_path, monkeypatch)
    with artifact_store.synced(second.local / "monitoring" / "diabetes") as state:
        assert json.loads((state / "retrain_requests.json").read_text()) == {"requests": [{"run": "a"}]}
        artifacts.atomic_write_json(state / "retrain_requests.json", {"requests": [{"run": "a"}, {"run": "b"}]})
        (state / "windows").mkdir()
        (state / "windows" / "w1.json").write_text("{}")

    # Back on the first machine, its stale copy is replaced by the newer state.
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "mirror-a"))
    with artifact_store.synced(folder) as state:
        assert json.loads((state / "retrain_requests.json").read_text())["requests"][-1] == {"run": "b"}
        assert (state / "windows" / "w1.json").is_file()


def test_a_file_republished_while_it_is_read_is_refused_not_mixed_in(root_uri, tmp_path, monkeypatch) -> None:
    store = artifact_store.current()
    out = artifacts.run_dir("d", "r", "evaluate")
    out.mkdir(parents=True)
    (out / "metrics.json").write_text('{"mae": 1}')
    (out / "plot.png").write_bytes(b"png-1")
    store.push(out)
    # A rerun has uploaded its new plot but not yet replaced the marker this reader is about to follow.
    store.objects.put("runs/d/r/evaluate/plot.png", b"png-2")
    other = _other_mirror(root_uri, tmp_path, monkeypatch)
    with pytest.raises(RegistryError, match=r"evaluate/plot\.png changed while it was being read.*retried"):
        other.pull(other.local / "runs/d/r/evaluate")
    assert not (other.local / "runs/d/r/evaluate/plot.png").exists()
