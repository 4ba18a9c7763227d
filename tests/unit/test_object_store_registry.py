"""What only the object-store registry has to prove: claims without locks, CAS without rename, errors naming the URI.

The shared contract (versions, idempotency, labels, concurrency in threads and
processes) runs against it in ``test_registry_contract.py``; these tests add
what a crash or a race does on S3 (moto's server, ``tests/s3_stand_in.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.session
import botocore.stub
import pytest
from model_factory import make_saved_model
from s3_stand_in import BUCKET, registry_uri

from include.mlops.config import PROJECT_ROOT
from include.mlops.registry.label_log import label_move_context
from include.mlops.registry.object_store import ObjectStoreRegistry
from include.mlops.registry.object_uri import ObjectUri
from include.mlops.registry.protocol import RegistryError, VersionNotFoundError
from include.mlops.registry.s3_objects import S3Objects

LINEAGE = {"dag_id": "lifecycle__tiny", "run_id": "run1"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_saved_model(tmp_path_factory.mktemp("object-store-model") / "m", 3, seed=1)


@pytest.fixture
def registry(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStoreRegistry:
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    return ObjectStoreRegistry(registry_uri(tmp_path))


def _keys(uri: ObjectUri) -> list[str]:
    answer = boto3.client("s3").list_objects_v2(Bucket=uri.bucket, Prefix=uri.key + "/")
    return sorted(uri.relative_key(item["Key"]) for item in answer.get("Contents", []))


def _start_all(script: str, args: list[list[str]], go: Path) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", script, *a, str(go)], cwd=PROJECT_ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for a in args
    ]  # fmt: skip
    time.sleep(0.5)  # let the interpreters reach the starting line
    go.touch()
    return procs


_KILLED_SCRIPT = """
import os, signal, sys
from include.mlops.registry.object_store import ObjectStoreRegistry

def die(self, key, manifest):
    # Test-only: every file of the version is uploaded, then the writer dies before its manifest.
    os.kill(os.getpid(), signal.SIGKILL)

ObjectStoreRegistry._publish = die
ObjectStoreRegistry(sys.argv[1]).register("tiny", sys.argv[2], metrics={}, lineage={"dag_id": "d", "run_id": "r"})
"""


def test_a_register_killed_before_its_manifest_is_never_listed_and_its_number_is_not_reused(
    registry: ObjectStoreRegistry, model: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_SCRIPT, str(registry.root), str(model)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = _keys(registry.model_dir("tiny"))
    assert ".claims/1.json" in left and "1/saved_model.pb" in left  # claimed and uploaded ...
    assert "1/assets.extra/checksums.json" not in left  # ... but never published
    assert registry.versions("tiny") == []
    with pytest.raises(VersionNotFoundError):
        registry.require_version("tiny", 1)
    with pytest.raises(VersionNotFoundError):
        registry.set_label("tiny", "stable", 1)

    # The retry of that run claims a fresh number: the dead writer's leftovers are never overwritten or listed.
    result = registry.register("tiny", model, metrics={}, lineage={"dag_id": "d", "run_id": "r"})
    assert (result.version, result.created) == (2, True)
    assert registry.versions("tiny") == [2]
    assert registry.verify("tiny", 2)


def test_a_register_that_fails_halfway_removes_its_uploads_and_burns_its_number(
    registry: ObjectStoreRegistry, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = registry._store
    real_upload, calls = store.upload, []

    def fail_on_third(rel: str, path: str) -> None:
        calls.append(rel)
        if len(calls) == 3:
            raise RegistryError(f"cannot write {store.uri(rel)}: connection reset")
        real_upload(rel, path)

    monkeypatch.setattr(store, "upload", fail_on_third)
    with pytest.raises(RegistryError, match="connection reset"):
        registry.register("tiny", model, metrics={}, lineage=LINEAGE)
    monkeypatch.undo()
    assert _keys(registry.model_dir("tiny")) == [".claims/1.json"]  # nothing half-written stays
    assert registry.versions("tiny") == []
    assert registry.register("tiny", model, metrics={}, lineage=LINEAGE).version == 2


_MOVER_SCRIPT = """
import os, sys, time
from include.mlops.registry.object_store import ObjectStoreRegistry

root, label, rounds, go = sys.argv[1:5]
registry = ObjectStoreRegistry(root)
while not os.path.exists(go):
    time.sleep(0.005)
for r in range(int(rounds)):
    registry.set_label("tiny", label, 1 + r % 2)
"""


def test_concurrent_label_moves_from_processes_lose_none(
    registry: ObjectStoreRegistry, model: Path, tmp_path: Path
) -> None:
    for run in ("run1", "run2"):
        registry.register("tiny", model, metrics={}, lineage={"dag_id": "d", "run_id": run})
    movers, rounds = 4, 6
    with label_move_context(reason="setup"):
        registry.set_label("tiny", "stable", 1)
    procs = _start_all(
        _MOVER_SCRIPT, [[str(registry.root), f"label{i}", str(rounds)] for i in range(movers)], tmp_path / "go"
    )
    for proc in procs:
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
    final = 1 + (rounds - 1) % 2
    # Every mover's last move survived, and so did the label nobody touched.
    assert registry.labels("tiny") == {"stable": 1, **{f"label{i}": final for i in range(movers)}}
    assert registry.served_versions("tiny") == sorted({1, final})
    # Every published move is in the audit log, once.
    moves = registry.read_label_moves("tiny")
    assert len(moves) == 1 + movers * rounds
    assert moves[0]["label"] == "stable" and moves[0]["reason"] == "setup"
    for i in range(movers):
        mine = [(m["from"], m["to"]) for m in moves if m["label"] == f"label{i}"]
        assert sorted(mine, key=str) == sorted(
            [(None, 1)] + [(1 + r % 2, 1 + (r + 1) % 2) for r in range(rounds - 1)], key=str
        )


def test_a_missing_bucket_is_a_clear_error_naming_the_uri(s3_endpoint: str, model: Path) -> None:
    registry = ObjectStoreRegistry("s3://no-such-bucket-here/team/models")
    for call in (
        lambda: registry.versions("tiny"),
        lambda: registry.register("tiny", model, metrics={}, lineage=LINEAGE),
        lambda: registry.set_label("tiny", "stable", 1),
        lambda: registry.labels("tiny"),
    ):
        with pytest.raises(RegistryError) as info:
            call()
        message = str(info.value)
        assert "bucket 'no-such-bucket-here' does not exist" in message, message
        assert "s3://no-such-bucket-here/team/models" in message and "cannot " in message
    assert [bucket["Name"] for bucket in boto3.client("s3").list_buckets()["Buckets"]] == [BUCKET]  # none made


def test_no_permission_is_a_clear_error_naming_the_uri_and_the_operation() -> None:
    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with botocore.stub.Stubber(client) as stub:
        stub.add_client_error("get_object", "AccessDenied", "Access Denied", 403)
        store = S3Objects(ObjectUri.parse("s3://bucket/models"), client)
        with pytest.raises(RegistryError, match=r"cannot read s3://bucket/models/models.config: no permission"):
            store.get("models.config")


def test_locations_are_uris_that_do_no_io(registry: ObjectStoreRegistry) -> None:
    version_dir = registry.version_dir("tiny", 3)
    assert str(version_dir) == f"{registry.root}/tiny/3" and str(version_dir).startswith(f"s3://{BUCKET}/")
    assert version_dir.name == "3" and version_dir.parent == registry.model_dir("tiny")
    assert str(registry.config_path) == f"{registry.root}/models.config"
    assert not isinstance(version_dir, os.PathLike)  # open() or shutil on it fails instead of writing locally
    with pytest.raises(ValueError):
        _ = version_dir / ".."
    for bad in ("/local/path", "s3://", "http://bucket/x"):
        with pytest.raises(RegistryError):
            ObjectStoreRegistry(bad)
    with pytest.raises(RegistryError, match="only s3://"):
        ObjectStoreRegistry("gs://bucket/models")


def test_the_serving_base_path_is_the_model_uri(registry: ObjectStoreRegistry, model: Path) -> None:
    registry.register("tiny", model, metrics={}, lineage=LINEAGE)
    registry.set_label("tiny", "stable", 1)
    (entry,) = registry.read_serving_config().model_config_list.config
    assert entry.base_path == str(registry.model_dir("tiny"))
    stored = boto3.client("s3").get_object(Bucket=BUCKET, Key=registry.config_path.key)["Body"].read().decode()
    assert 'base_path: "s3://' in stored and json.dumps("stable") in stored
