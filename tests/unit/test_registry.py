"""The registry: TF Serving layout, never-overwritten versions, crash safety, labels in models.config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from model_factory import make_saved_model
from tensorflow_serving.config import model_server_config_pb2

from include.mlops import artifacts
from include.mlops.config import PROJECT_ROOT
from include.mlops.registry.filesystem import (
    CorruptVersionError,
    Registry,
    RegistryError,
    VersionNotFoundError,
)

N_FEATURES = 4
METRICS = {"mae": 40.0, "r2": 0.5, "size_mb": 0.01, "latency_ms": 1.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different tiny SavedModels (different weights)."""
    base = tmp_path_factory.mktemp("savedmodels")
    return (
        make_saved_model(base / "a", N_FEATURES, seed=1),
        make_saved_model(base / "b", N_FEATURES, 1, seed=2),
    )


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    return Registry(tmp_path / "models")


def lineage(run_id: str = "manual__2026-11-27T00:00:00+00:00") -> dict[str, str]:
    return {
        "dag_id": "lifecycle__tiny",
        "run_id": run_id,
        "data_interval_start": "2026-11-26T00:00:00+00:00",
        "data_interval_end": "2026-11-27T00:00:00+00:00",
        "created_at": "2026-11-27T00:00:00+00:00",
        "code_version": "abc123",
        "data_sha256": "0" * 64,
    }


def parse_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    return config


# --------------------------------------------------------------------------- versions and layout


def test_register_numbers_versions_and_writes_tf_serving_layout(registry: Registry, models: tuple[Path, Path]) -> None:
    a, b = models
    assert registry.versions("tiny") == [] and registry.latest_version("tiny") is None
    first = registry.register(
        "tiny", a, metrics=METRICS, lineage=lineage("run1"), model_card=lambda v: f"# tiny v{v}\n"
    )
    second = registry.register("tiny", b, metrics=METRICS, lineage=lineage("run2"))
    assert (first.version, first.created, second.version, second.created) == (1, True, 2, True)
    assert registry.versions("tiny") == [1, 2]

    v1 = registry.version_dir("tiny", 1)
    assert first.version_dir == v1 == registry.root / "tiny" / "1"
    assert (v1 / "saved_model.pb").is_file() and (v1 / "variables").is_dir()
    assert json.loads((v1 / "assets.extra" / "metrics.json").read_text()) == METRICS
    written = json.loads((v1 / "assets.extra" / "lineage.json").read_text())
    assert written == {**lineage("run1"), "model_name": "tiny", "version": 1}
    assert (v1 / "assets.extra" / "model_card.md").read_text() == "# tiny v1\n"
    assert "version 2" in (registry.version_dir("tiny", 2) / "assets.extra" / "model_card.md").read_text()
    sums = json.loads((v1 / "assets.extra" / "checksums.json").read_text())
    on_disk = {p.relative_to(v1).as_posix() for p in v1.rglob("*") if p.is_file()}
    assert set(sums) == on_disk - {"assets.extra/checksums.json"}
    assert registry.verify("tiny", 1) == sums
    # Only version folders (all digits) and dot-files: TF Serving sees nothing else.
    assert sorted(p.name for p in (registry.root / "tiny").iterdir()) == [".lock", "1", "2"]


def test_loads_as_a_savedmodel_with_the_serving_signature(registry: Registry, models: tuple[Path, Path]) -> None:
    import tensorflow as tf

    result = registry.register("tiny", models[0], metrics=METRICS, lineage=lineage())
    loaded = tf.saved_model.load(str(result.version_dir))
    fn = loaded.signatures["serving_default"]
    assert fn(inputs=tf.ones((3, N_FEATURES)))["outputs"].shape == (3, 1)


def test_existing_versions_are_never_overwritten(registry: Registry, models: tuple[Path, Path]) -> None:
    a, b = models
    # A folder "1" that someone put there by hand (say, a restored backup) must survive untouched.
    manual = registry.root / "tiny" / "1"
    manual.mkdir(parents=True)
    (manual / "keep.txt").write_text("hands off")
    result = registry.register("tiny", a, metrics=METRICS, lineage=lineage("run1"))
    assert result.version == 2
    assert sorted(p.name for p in manual.iterdir()) == ["keep.txt"]
    before = artifacts.dir_checksums(result.version_dir)
    registry.register("tiny", b, metrics=METRICS, lineage=lineage("run2"))
    assert artifacts.dir_checksums(result.version_dir) == before
    assert registry.versions("tiny") == [1, 2, 3]


def test_register_with_tflite_adds_model_tflite_to_the_version(
    registry: Registry, models: tuple[Path, Path], tmp_path: Path
) -> None:
    tflite = tmp_path / "candidate.tflite"
    tflite.write_bytes(b"TFL3" + bytes(range(256)))
    result = registry.register("tiny", models[0], metrics=METRICS, lineage=lineage(), tflite_path=tflite)
    assert (result.version_dir / "model.tflite").read_bytes() == tflite.read_bytes()
    assert "model.tflite" in registry.verify("tiny", result.version)
    # The same run with and without the TFLite file are different models.
    again = registry.register("tiny", models[0], metrics=METRICS, lineage=lineage())
    assert again.created and again.version == 2


def test_register_records_the_gate_decision(registry: Registry, models: tuple[Path, Path]) -> None:
    decision = {"passed": True, "override": True, "checks": []}
    result = registry.register("tiny", models[0], metrics=METRICS, lineage=lineage(), gate_decision=decision)
    assert registry.read_metadata("tiny", result.version)["gate"] == decision
    assert registry.read_metadata("tiny", result.version)["lineage"]["run_id"] == lineage()["run_id"]


def test_register_rejects_bad_input(registry: Registry, models: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not a SavedModel folder"):
        registry.register("tiny", tmp_path, metrics=METRICS, lineage=lineage())
    with pytest.raises(RegistryError, match="non-empty 'run_id'"):
        registry.register("tiny", models[0], metrics=METRICS, lineage={"dag_id": "d"})
    with pytest.raises(RegistryError, match="TFLite model"):
        registry.register("tiny", models[0], metrics=METRICS, lineage=lineage(), tflite_path=tmp_path / "no.tflite")
    for bad in ("../evil", "a/b", "123", ""):
        with pytest.raises(RegistryError, match="model name"):
            registry.register(bad, models[0], metrics=METRICS, lineage=lineage())
    assert not (registry.root / "tiny").exists() or registry.versions("tiny") == []


# --------------------------------------------------------------------------- idempotent retry


def test_retry_of_the_same_run_and_model_returns_the_existing_version(
    registry: Registry, models: tuple[Path, Path]
) -> None:
    a, b = models
    first = registry.register("tiny", a, metrics=METRICS, lineage=lineage("run1"))
    retry = registry.register("tiny", a, metrics={"mae": 1.0}, lineage=lineage("run1"))
    assert (retry.version, retry.created, retry.version_dir) == (1, False, first.version_dir)
    assert registry.versions("tiny") == [1]
    # Same run, different model (the run retrained): a new version.
    assert registry.register("tiny", b, metrics=METRICS, lineage=lineage("run1")).version == 2
    # Different run, same model: a new version with its own lineage.
    assert registry.register("tiny", a, metrics=METRICS, lineage=lineage("run2")).version == 3
    # And a retry finds the right one among several.
    again = registry.register("tiny", b, metrics=METRICS, lineage=lineage("run1"))
    assert (again.version, again.created) == (2, False)


# --------------------------------------------------------------------------- processes

_REGISTER_SCRIPT = """
import json, os, sys, time
from pathlib import Path
from include.mlops.registry.filesystem import Registry

root, model, run_id, go = sys.argv[1:5]
while not os.path.exists(go):
    time.sleep(0.005)
result = Registry(root).register(
    "tiny", model, metrics={"mae": 1.0}, lineage={"dag_id": "lifecycle__tiny", "run_id": run_id}
)
print(json.dumps({"version": result.version, "created": result.created}))
"""


def test_concurrent_registers_in_separate_processes_get_distinct_versions(
    registry: Registry, models: tuple[Path, Path], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _REGISTER_SCRIPT, str(registry.root), str(models[i % 2]), f"run{i}", str(go)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(1.0)  # let every interpreter start and wait on the same starting line
    go.touch()
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout))
    assert sorted(r["version"] for r in results) == [1, 2, 3, 4]
    assert all(r["created"] for r in results)
    assert registry.versions("tiny") == [1, 2, 3, 4]
    runs = {registry.read_metadata("tiny", v)["lineage"]["run_id"] for v in (1, 2, 3, 4)}
    assert runs == {"run0", "run1", "run2", "run3"}
    for version in (1, 2, 3, 4):
        registry.verify("tiny", version)


_KILLED_SCRIPT = """
import sys, time
from pathlib import Path
from include.mlops.registry import filesystem as reg

root, model, marker = sys.argv[1:4]
real_copy = reg._copy_file

def copy_then_hang(src, dst):
    # Test-only: the first file lands in the staging folder, then the writer stalls until killed.
    real_copy(src, dst)
    Path(marker).write_text(dst)
    time.sleep(600)

reg._copy_file = copy_then_hang
reg.Registry(root).register("tiny", model, metrics={"mae": 1.0}, lineage={"dag_id": "d", "run_id": "r"})
"""


def test_register_killed_halfway_leaves_no_version_and_the_retry_succeeds(
    registry: Registry, models: tuple[Path, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "copied"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SCRIPT, str(registry.root), str(models[0]), str(marker)],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the register subprocess never started copying"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    base = registry.root / "tiny"
    leftovers = [p for p in base.iterdir() if p.name.startswith(".staging-")]
    assert len(leftovers) == 1 and any(leftovers[0].iterdir())  # half-written, invisible to TF Serving
    assert registry.versions("tiny") == []

    # The retry takes the lock the dead writer held, clears its staging folder, and writes version 1.
    result = registry.register("tiny", models[0], metrics={"mae": 1.0}, lineage={"dag_id": "d", "run_id": "r"})
    assert (result.version, result.created) == (1, True)
    assert not [p for p in base.iterdir() if p.name.startswith(".staging-")]
    registry.verify("tiny", 1)


# --------------------------------------------------------------------------- verify


def test_verify_detects_an_edited_byte_a_missing_file_and_an_extra_file(
    registry: Registry, models: tuple[Path, Path]
) -> None:
    a, b = models
    v1 = registry.register("tiny", a, metrics=METRICS, lineage=lineage("run1")).version_dir
    v2 = registry.register("tiny", b, metrics=METRICS, lineage=lineage("run2")).version_dir
    v3 = registry.register("tiny", a, metrics=METRICS, lineage=lineage("run3")).version_dir

    weights = next((v1 / "variables").glob("variables.data-*"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match=r"variables/variables\.data-.* has changed") as info:
        registry.verify("tiny", 1)
    assert info.value.version == 1 and len(info.value.problems) == 1

    (v2 / "saved_model.pb").unlink()
    (v2 / "extra.bin").write_bytes(b"x")
    with pytest.raises(CorruptVersionError) as info:
        registry.verify("tiny", 2)
    assert info.value.problems == ["saved_model.pb is missing", "extra.bin is not listed in checksums.json"]

    (v3 / "assets.extra" / "checksums.json").unlink()
    with pytest.raises(CorruptVersionError, match=r"checksums\.json is missing"):
        registry.verify("tiny", 3)
    with pytest.raises(VersionNotFoundError, match="has no version 9"):
        registry.verify("tiny", 9)


# --------------------------------------------------------------------------- labels and models.config


def test_labels_live_in_a_tf_serving_model_config(registry: Registry, models: tuple[Path, Path]) -> None:
    a, b = models
    registry.register("tiny", a, metrics=METRICS, lineage=lineage("run1"))
    registry.register("tiny", b, metrics=METRICS, lineage=lineage("run2"))
    assert registry.labels("tiny") == {} and registry.label_version("tiny", "stable") is None

    assert registry.set_label("tiny", "stable", 1) is None
    assert registry.set_label("tiny", "canary", 2) is None
    assert registry.labels("tiny") == {"stable": 1, "canary": 2}
    assert registry.set_label("tiny", "stable", 2) == 1
    assert registry.label_version("tiny", "stable") == 2

    config = parse_config(registry.config_path)
    (entry,) = config.model_config_list.config
    assert entry.name == "tiny"
    assert entry.base_path == str(registry.root / "tiny")
    assert entry.model_platform == "tensorflow"
    assert dict(entry.version_labels) == {"stable": 2, "canary": 2}
    # Only labelled versions stay loaded (TF Serving can only label loaded versions).
    assert list(entry.model_version_policy.specific.versions) == [2]
    registry.preload("tiny", 1)
    assert registry.served_versions("tiny") == [1, 2]
    assert registry.remove_label("tiny", "canary") == 2 and registry.labels("tiny") == {"stable": 2}


def test_label_errors(registry: Registry, models: tuple[Path, Path]) -> None:
    registry.register("tiny", models[0], metrics=METRICS, lineage=lineage())
    with pytest.raises(VersionNotFoundError, match="versions: 1"):
        registry.set_label("tiny", "stable", 5)
    with pytest.raises(RegistryError, match="label must be"):
        registry.set_label("tiny", "not a label", 1)
    registry.config_path.write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(RegistryError, match="not a valid TF Serving model config file"):
        registry.labels("tiny")


def test_label_moves_keep_other_models_and_honour_the_serving_base_path(
    registry: Registry, models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = model_server_config_pb2.ModelServerConfig()
    entry = other.model_config_list.config.add()
    entry.name = "hand_written"
    entry.base_path = "/somewhere/else"
    entry.model_platform = "tensorflow"
    entry.model_version_policy.latest.num_versions = 2
    registry.root.mkdir(parents=True)
    registry.config_path.write_text(text_format.MessageToString(other))

    registry.register("tiny", models[0], metrics=METRICS, lineage=lineage())
    monkeypatch.setenv("MLOPS_SERVING_BASE_PATH", "/models/")
    registry.set_label("tiny", "stable", 1)

    config = parse_config(registry.config_path)
    by_name = {e.name: e for e in config.model_config_list.config}
    assert set(by_name) == {"hand_written", "tiny"}
    assert by_name["hand_written"] == entry  # untouched, including its own version policy
    assert by_name["tiny"].base_path == "/models/tiny"
    assert not [p for p in registry.root.iterdir() if p.name.endswith(".tmp")]


_LABEL_SCRIPT = """
import sys
from include.mlops.registry.filesystem import Registry

root, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
registry = Registry(root)
for i in range(rounds):
    registry.set_label(name, "stable", 1 + i % 2)
"""


def test_concurrent_label_moves_never_expose_a_partial_config(registry: Registry, models: tuple[Path, Path]) -> None:
    for name in ("tiny", "tiny2"):
        for run in ("run1", "run2"):
            registry.register(name, models[0], metrics=METRICS, lineage=lineage(run))
        registry.set_label(name, "stable", 1)
    writers = [
        subprocess.Popen([sys.executable, "-c", _LABEL_SCRIPT, str(registry.root), name, "60"], cwd=PROJECT_ROOT)
        for name in ("tiny", "tiny2")
    ]
    reads = 0
    done = threading.Event()

    def wait() -> None:
        for proc in writers:
            proc.wait(timeout=120)
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    while not done.is_set():
        config = parse_config(registry.config_path)  # raises on a torn write
        names = sorted(e.name for e in config.model_config_list.config)
        assert names == ["tiny", "tiny2"], names  # neither writer ever drops the other's entry
        assert all(e.version_labels["stable"] in (1, 2) for e in config.model_config_list.config)
        reads += 1
    waiter.join()
    assert all(proc.returncode == 0 for proc in writers)
    assert reads > 0
    # 60 moves each, alternating 1, 2, ...: both end on version 2.
    assert registry.labels("tiny") == {"stable": 2} and registry.labels("tiny2") == {"stable": 2}
