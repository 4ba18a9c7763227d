"""The registry contract, checked through :class:`ModelRegistry` against every implementation.

Each test takes a ``registry`` typed as the Protocol and uses only its members,
so a new implementation (an object store, say) joins by adding one entry to
:data:`IMPLEMENTATIONS`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from model_factory import make_saved_model
from s3_stand_in import registry_uri
from typing_extensions import get_protocol_members

from include.mlops.config import PROJECT_ROOT
from include.mlops.registry.object_uri import ObjectUri
from include.mlops.registry.protocol import (
    CorruptVersionError,
    LabelMovedError,
    Location,
    ModelRegistry,
    RegisterResult,
    RegistryError,
    VersionNotFoundError,
)

N_FEATURES = 3
METRICS = {"mae": 1.0, "r2": 0.5}


@dataclass(frozen=True)
class Implementation:
    """How to build one implementation on a scratch folder.

    ``factory`` is an importable ``module:callable`` taking the registry's root
    (``root(scratch)``: a folder, or a URI), so a child process can open its
    own handle on the same registry.  ``needs`` names a fixture the
    implementation's store needs running (an S3 stand-in, say).
    """

    factory: str
    root: Callable[[Path], str] = lambda scratch: str(scratch / "models")
    needs: str | None = None

    def build(self, scratch: Path) -> ModelRegistry:
        module, _, attr = self.factory.partition(":")
        make: Callable[[str], ModelRegistry] = getattr(importlib.import_module(module), attr)
        return make(self.root(scratch))


IMPLEMENTATIONS = {
    "filesystem": Implementation("include.mlops.registry.filesystem:Registry"),
    "s3": Implementation("include.mlops.registry.object_store:ObjectStoreRegistry", registry_uri, "s3_endpoint"),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> Implementation:
    chosen = IMPLEMENTATIONS[request.param]
    if chosen.needs is not None:
        request.getfixturevalue(chosen.needs)
    return chosen


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    return tmp_path


@pytest.fixture
def registry(implementation: Implementation, scratch: Path) -> ModelRegistry:
    return implementation.build(scratch)


def overwrite(location: Location, data: bytes) -> None:
    """Change a stored file behind the registry's back (a disk error, a person, an attacker)."""
    if isinstance(location, ObjectUri):
        boto3.client("s3").put_object(Bucket=location.bucket, Key=location.key, Body=data)
    else:
        location.write_bytes(data)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny SavedModels with different weights (so, different files)."""
    base = tmp_path_factory.mktemp("contract-models")
    return make_saved_model(base / "a", N_FEATURES, seed=1), make_saved_model(base / "b", N_FEATURES, seed=2)


def register(registry: ModelRegistry, model: Path, run_id: str, name: str = "tiny") -> RegisterResult:
    return registry.register(name, model, metrics=METRICS, lineage={"dag_id": "lifecycle__tiny", "run_id": run_id})


# --------------------------------------------------------------------------- the Protocol itself


def run_beside_a_reader(
    work: Callable[[int], None], workers: int, read: Callable[[], None], done: threading.Event
) -> None:
    """Run ``work(i)`` in ``workers`` threads while ``read`` runs in another, until the workers end."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    reader = threading.Thread(target=read)
    for thread in [*threads, reader]:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    reader.join(timeout=60)


def test_each_registry_satisfies_the_protocol(registry: ModelRegistry) -> None:
    assert isinstance(registry, ModelRegistry)
    cls = type(registry)
    members = get_protocol_members(ModelRegistry)
    assert {"register", "versions", "set_label", "read_serving_config", "config_path"} <= members
    for member in sorted(members):
        declared = inspect.getattr_static(ModelRegistry, member)
        actual = inspect.getattr_static(cls, member, None)
        assert actual is not None, f"{cls.__name__} lacks {member}"
        if isinstance(declared, property):
            assert isinstance(actual, property), f"{cls.__name__}.{member} must be a property"
            continue
        expected = inspect.signature(declared)
        got = inspect.signature(actual)
        shape = [(p.name, p.kind, p.default) for p in expected.parameters.values()]
        assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == shape, member
    assert isinstance(registry.config_path, Location) and isinstance(registry.version_dir("tiny", 3), Location)
    assert str(registry.version_dir("tiny", 3)) == f"{registry.model_dir('tiny')}/3"


# --------------------------------------------------------------------------- versions


def test_versions_start_at_one_increase_and_are_listed(registry: ModelRegistry, models: tuple[Path, Path]) -> None:
    a, b = models
    assert registry.versions("tiny") == []
    results = [register(registry, a, "run1"), register(registry, b, "run2"), register(registry, a, "run3")]
    assert [(r.version, r.created) for r in results] == [(1, True), (2, True), (3, True)]
    assert registry.versions("tiny") == [1, 2, 3]
    assert registry.versions("other") == []
    for result in results:
        assert registry.require_version("tiny", result.version) == result.version_dir
        assert registry.version_dir("tiny", result.version) == result.version_dir
        metadata = registry.read_metadata("tiny", result.version)
        assert metadata["metrics"] == METRICS and metadata["gate"] is None
        assert metadata["lineage"]["run_id"] == f"run{result.version}"
        assert metadata["lineage"]["version"] == result.version
        assert registry.verify("tiny", result.version)


def test_a_claimed_version_is_never_overwritten(registry: ModelRegistry, models: tuple[Path, Path]) -> None:
    a, b = models
    first = register(registry, a, "run1")
    files = registry.verify("tiny", first.version)
    metadata = registry.read_metadata("tiny", first.version)
    # The same run with another model, another run with the same model: new versions, version 1 untouched.
    assert register(registry, b, "run1").version == 2
    assert register(registry, a, "run2").version == 3
    # A retry of the same run with the same model returns the version it made.
    retry = register(registry, a, "run1")
    assert (retry.version, retry.created, retry.version_dir) == (1, False, first.version_dir)
    assert registry.versions("tiny") == [1, 2, 3]
    assert registry.verify("tiny", first.version) == files
    assert registry.read_metadata("tiny", first.version) == metadata


def test_bad_input_claims_no_version(registry: ModelRegistry, models: tuple[Path, Path], scratch: Path) -> None:
    not_a_model = scratch / "empty"
    not_a_model.mkdir()
    with pytest.raises(RegistryError):
        register(registry, not_a_model, "run1")
    with pytest.raises(RegistryError):
        registry.register("tiny", models[0], metrics=METRICS, lineage={"dag_id": "lifecycle__tiny"})
    with pytest.raises(RegistryError):
        register(registry, models[0], "run1", name="../escape")
    assert registry.versions("tiny") == []


def test_concurrent_claims_in_threads_never_share_a_version(registry: ModelRegistry, models: tuple[Path, Path]) -> None:
    writers = 6
    start = threading.Barrier(writers + 1)
    results: dict[str, RegisterResult] = {}
    errors: list[BaseException] = []
    seen_incomplete: list[str] = []
    done = threading.Event()

    def write(i: int) -> None:
        start.wait()
        try:
            results[f"run{i}"] = register(registry, models[i % 2], f"run{i}")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    def read() -> None:
        # Every listed version is complete: a claim is atomic.
        start.wait()
        while not done.is_set():
            for version in registry.versions("tiny"):
                try:
                    registry.verify("tiny", version)
                except RegistryError as exc:
                    seen_incomplete.append(str(exc))

    run_beside_a_reader(write, writers, read, done)

    assert not errors and not seen_incomplete, (errors, seen_incomplete)
    assert sorted(r.version for r in results.values()) == list(range(1, writers + 1))
    assert all(r.created for r in results.values())
    assert registry.versions("tiny") == list(range(1, writers + 1))
    for run_id, result in results.items():
        assert registry.read_metadata("tiny", result.version)["lineage"]["run_id"] == run_id


_CLAIM_SCRIPT = """
import importlib, json, os, sys, time
from pathlib import Path

factory, root, model, prefix, go = sys.argv[1:6]
module, _, attr = factory.partition(":")
registry = getattr(importlib.import_module(module), attr)(root)
while not os.path.exists(go):
    time.sleep(0.005)
claimed = []
for i in range(2):
    result = registry.register("tiny", model, metrics={"mae": 1.0}, lineage={"dag_id": "d", "run_id": f"{prefix}-{i}"})
    claimed.append(result.version)
print(json.dumps(claimed))
"""


def test_concurrent_claims_in_processes_never_share_a_version(
    implementation: Implementation, registry: ModelRegistry, models: tuple[Path, Path], scratch: Path
) -> None:
    go = scratch / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CLAIM_SCRIPT,
                implementation.factory,
                implementation.root(scratch),
                str(models[i % 2]),
                f"p{i}",
                str(go),
            ],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    time.sleep(0.5)  # let the interpreters reach the starting line
    go.touch()
    claimed: list[int] = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        claimed += json.loads(stdout)
    assert sorted(claimed) == [1, 2, 3, 4, 5, 6]
    assert registry.versions("tiny") == [1, 2, 3, 4, 5, 6]
    runs = {registry.read_metadata("tiny", v)["lineage"]["run_id"] for v in claimed}
    assert runs == {f"p{p}-{i}" for p in range(3) for i in range(2)}


def test_verify_refuses_a_changed_file(registry: ModelRegistry, models: tuple[Path, Path]) -> None:
    version = register(registry, models[0], "run1").version
    overwrite(registry.version_dir("tiny", version) / "saved_model.pb", b"not the model")
    with pytest.raises(CorruptVersionError) as info:
        registry.verify("tiny", version)
    assert info.value.version == version and info.value.problems


# --------------------------------------------------------------------------- labels


def test_labels_move_and_read_back(registry: ModelRegistry, models: tuple[Path, Path]) -> None:
    register(registry, models[0], "run1")
    register(registry, models[1], "run2")
    assert registry.labels("tiny") == {} and registry.label_version("tiny", "stable") is None

    assert registry.set_label("tiny", "stable", 1) is None
    assert registry.set_label("tiny", "canary", 2) is None
    assert registry.labels("tiny") == {"stable": 1, "canary": 2}
    assert registry.served_versions("tiny") == [1, 2]
    assert registry.set_label("tiny", "stable", 2) == 1
    assert registry.label_version("tiny", "stable") == 2
    assert registry.served_versions("tiny") == [2]  # only labelled versions stay loaded

    registry.preload("tiny", 1)
    assert registry.served_versions("tiny") == [1, 2] and registry.labels("tiny") == {"stable": 2, "canary": 2}
    assert registry.remove_label("tiny", "canary") == 2
    assert registry.remove_label("tiny", "canary") is None
    assert registry.labels("tiny") == {"stable": 2}

    (entry,) = registry.read_serving_config().model_config_list.config
    assert entry.name == "tiny" and dict(entry.version_labels) == {"stable": 2}


def test_move_label_is_a_compare_and_set_that_refuses_a_stale_expected_version(
    registry: ModelRegistry, models: tuple[Path, Path]
) -> None:
    register(registry, models[0], "run1")
    register(registry, models[1], "run2")
    assert registry.move_label("tiny", "stable", 1, expected=None) is None  # a new label: expected absent
    before = registry.read_serving_config()
    for stale in (None, 2):
        with pytest.raises(LabelMovedError) as refused:
            registry.move_label("tiny", "stable", 2, expected=stale)
        assert (refused.value.expected, refused.value.actual) == (stale, 1)
        assert registry.read_serving_config() == before  # nothing written
    with pytest.raises(LabelMovedError):
        registry.move_label("tiny", "canary", 2, expected=1)  # the label is absent, not on 1

    # A deploy's move keeps the previous version loaded; the step after verification drops it.
    assert registry.move_label("tiny", "stable", 2, expected=1, keep=[1]) == 1
    assert registry.labels("tiny") == {"stable": 2} and registry.served_versions("tiny") == [1, 2]
    assert registry.move_label("tiny", "stable", 2, expected=2) == 2
    assert registry.served_versions("tiny") == [2]

    # Removing the model's last label with nothing kept returns the file to its content before the first label.
    assert registry.move_label("tiny", "stable", None, expected=2) == 2
    assert registry.labels("tiny") == {} and registry.served_versions("tiny") == []
    assert list(registry.read_serving_config().model_config_list.config) == []
    with pytest.raises(VersionNotFoundError):
        registry.move_label("tiny", "stable", 7, expected=None)


def test_of_concurrent_compare_and_sets_from_one_state_exactly_one_wins(
    registry: ModelRegistry, models: tuple[Path, Path]
) -> None:
    register(registry, models[0], "run1")
    register(registry, models[1], "run2")
    registry.set_label("tiny", "stable", 1)
    start = threading.Barrier(6)
    outcomes: list[object] = []

    def move(_: int) -> None:
        start.wait()
        try:
            outcomes.append(registry.move_label("tiny", "stable", 2, expected=1, keep=[1]))
        except LabelMovedError as exc:
            outcomes.append(exc.actual)

    threads = [threading.Thread(target=move, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == [1, 2, 2, 2, 2, 2]  # one returned the old version; five found it moved
    assert registry.labels("tiny") == {"stable": 2} and registry.served_versions("tiny") == [1, 2]


def test_a_label_on_an_unknown_version_is_refused(registry: ModelRegistry, models: tuple[Path, Path]) -> None:
    register(registry, models[0], "run1")
    registry.set_label("tiny", "stable", 1)
    with pytest.raises(VersionNotFoundError):
        registry.set_label("tiny", "stable", 2)
    with pytest.raises(VersionNotFoundError):
        registry.set_label("never_registered", "stable", 1)
    with pytest.raises(VersionNotFoundError):
        registry.preload("tiny", 7)
    with pytest.raises(RegistryError):
        registry.set_label("tiny", "not a label", 1)
    with pytest.raises(RegistryError):
        registry.version_dir("tiny", 0)
    with pytest.raises(RegistryError):
        registry.remove_label("../escape", "stable")
    for read in (registry.require_version, registry.read_metadata, registry.verify):
        with pytest.raises(VersionNotFoundError):
            read("tiny", 9)
    assert registry.labels("tiny") == {"stable": 1} and registry.served_versions("tiny") == [1]
    assert registry.labels("never_registered") == {}


def test_concurrent_label_moves_lose_no_update_and_never_tear(
    registry: ModelRegistry, models: tuple[Path, Path]
) -> None:
    for name in ("tiny", "tiny2"):
        register(registry, models[0], "run1", name=name)
        register(registry, models[1], "run2", name=name)
    movers, rounds = 4, 15
    start = threading.Barrier(movers + 1)
    errors: list[BaseException] = []
    done = threading.Event()

    def move(i: int) -> None:
        # Each mover owns one label; a lost read-modify-write would drop another mover's label.
        name, label = ("tiny", "tiny2")[i % 2], f"label{i}"
        start.wait()
        try:
            for r in range(rounds):
                registry.set_label(name, label, 1 + r % 2)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    def read() -> None:
        start.wait()
        while not done.is_set():
            try:
                for name in ("tiny", "tiny2"):
                    assert set(registry.labels(name).values()) <= {1, 2}
            except BaseException as exc:  # a torn config fails to parse
                errors.append(exc)
                return

    run_beside_a_reader(move, movers, read, done)

    assert not errors, errors
    final = 1 + (rounds - 1) % 2
    assert registry.labels("tiny") == {f"label{i}": final for i in range(0, movers, 2)}
    assert registry.labels("tiny2") == {f"label{i}": final for i in range(1, movers, 2)}
