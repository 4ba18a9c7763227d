"""The deploy stage on an object-store registry (moto's S3 server, real HTTP): journal objects, a leased lock.

The same endings as ``test_deploy_journal.py`` on a filesystem, with what S3
changes: the journal is an object, and the deploy lock is an object that a
dead holder leaves behind until its lease ends (no kernel releases it), so a
waiter takes it over by a conditional overwrite.  No model server: the label
moves in the bucket's ``models.config`` only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import threading
import time
from pathlib import Path

import boto3
import pytest
from model_factory import make_saved_model
from s3_stand_in import BUCKET

from include.mlops import artifact_store
from include.mlops.config import ModelConfig, find_model_config
from include.mlops.deploy import deploy as deploy_module
from include.mlops.deploy.deploy import FAULT_AFTER_LABEL_MOVE_ENV, deploy
from include.mlops.deploy.errors import DeployError
from include.mlops.deploy.journal import LOCK_NAME, DeployBusyError, deploy_lock, deploy_lock_if_free, journal_path
from include.mlops.deploy.journal_store import store_for
from include.mlops.deploy.undeploy import undeploy
from include.mlops.evaluation.evaluate import champion_problem
from include.mlops.registry.object_store import ObjectStoreRegistry
from include.mlops.registry.object_uri import ObjectUri
from include.mlops.registry.s3_objects import S3Objects
from include.mlops.registry.serving_artifact import SAVED_MODEL, served_artifact
from include.mlops.steps.runners import champion

METRICS = {"mae": 44.0, "mse": 3000.0, "rmse": 54.8, "r2": 0.47, "size_mb": 0.02, "latency_ms": 1.5}
JOURNAL = ".deploy-stable.journal.json"


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    return find_model_config("diabetes")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory, config: ModelConfig) -> list[Path]:
    base = tmp_path_factory.mktemp("s3-deploy-models")
    return [make_saved_model(base / str(seed), len(config.features), seed=seed) for seed in (1, 2, 3)]


@pytest.fixture
def registry(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved_models: list[Path]
) -> ObjectStoreRegistry:
    """The artifact root in the bucket; versions 1-3 of ``diabetes`` with their measured artifacts; ``stable`` -> 1."""
    prefix = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", f"s3://{BUCKET}/{prefix}/artifacts")
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "mirror"))
    monkeypatch.delenv("MLOPS_SERVING_BASE_PATH", raising=False)
    monkeypatch.delenv(FAULT_AFTER_LABEL_MOVE_ENV, raising=False)
    reg = artifact_store.open_registry()
    assert isinstance(reg, ObjectStoreRegistry)
    for number, model in enumerate(saved_models, start=1):
        measured = {"format": SAVED_MODEL, "path": str(model), "sha256": served_artifact(model).sha256}
        lineage = {"dag_id": "lifecycle__diabetes", "run_id": f"r{number}", "measured_artifact": measured}
        reg.register("diabetes", model, metrics=METRICS, lineage=lineage)
    reg.set_label("diabetes", "stable", 1)
    return reg


def model_dir(reg: ObjectStoreRegistry) -> ObjectUri:
    return reg.model_dir("diabetes")


def exists(uri: ObjectUri) -> bool:
    return "Contents" in boto3.client("s3").list_objects_v2(Bucket=uri.bucket, Prefix=uri.key)


def put(uri: ObjectUri, entry: dict) -> None:
    boto3.client("s3").put_object(Bucket=uri.bucket, Key=uri.key, Body=json.dumps(entry).encode())


def moves(reg: ObjectStoreRegistry) -> list[tuple[str, int | None, int | None]]:
    return [(m["label"], m["from"], m["to"]) for m in reg.read_label_moves("diabetes")]


def dead_holders_lock(reg: ObjectStoreRegistry, *, ended_s_ago: float = 60.0) -> ObjectUri:
    """The lock object a deploy killed by SIGKILL leaves on S3: its owner, and a lease that has ended."""
    lock = model_dir(reg) / LOCK_NAME
    ended = time.time() - ended_s_ago
    put(lock, {"host": "worker-1", "pid": 4242, "token": "dead", "lease_s": 1500.0, "expires": ended,
               "at": "2026-12-01T00:00:00+00:00",
               "expires_at": dt.datetime.fromtimestamp(ended, dt.UTC).isoformat()})  # fmt: skip
    return lock


def leave_unfinished(reg: ObjectStoreRegistry, version: int = 2, previous: int = 1) -> ObjectUri:
    """What a deploy killed right after its label move leaves: the label on ``version`` and the journal object."""
    journal = journal_path(model_dir(reg), "stable")
    put(journal, {"model_name": "diabetes", "label": "stable", "version": version, "previous": previous,
                  "started_at": "2026-12-01T00:00:00+00:00", "pid": 4242, "host": "worker-1"})  # fmt: skip
    reg.move_label("diabetes", "stable", version, expected=previous, keep=(previous,))
    return journal


def test_a_label_only_deploy_moves_stable_in_the_bucket_through_a_journal_object(
    registry: ObjectStoreRegistry, config: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, lock = journal_path(model_dir(registry), "stable"), model_dir(registry) / LOCK_NAME
    assert journal == model_dir(registry) / JOURNAL
    seen: list[dict] = []

    def look() -> None:  # right after the label moved: what a reader of the bucket sees mid-deploy
        found = boto3.client("s3").get_object(Bucket=journal.bucket, Key=journal.key)
        seen.append({"journal": json.loads(found["Body"].read()), "lock": exists(lock)})

    monkeypatch.setattr(deploy_module, "_fault_injection_point", look)
    result = deploy(config, 2, out=tmp_path / "d2")
    assert (result["version"], result["previous"], result["verified"]) == (2, 1, False)
    assert seen[0]["lock"] and (seen[0]["journal"]["version"], seen[0]["journal"]["previous"]) == (2, 1)
    fresh = ObjectStoreRegistry(registry.root)  # another process's view of the bucket
    assert fresh.labels("diabetes") == {"stable": 2} and fresh.served_versions("diabetes") == [2]
    assert not exists(journal) and not exists(lock)

    result = deploy(config, 3, out=tmp_path / "d3")
    assert (result["version"], result["previous"]) == (3, 2)
    assert fresh.labels("diabetes") == {"stable": 3} and fresh.served_versions("diabetes") == [3]
    assert not exists(journal) and not exists(lock)
    assert moves(registry) == [("stable", None, 1), ("stable", 1, 2), ("stable", 2, 3)]
    # Nothing of the registry was written on local disk: only version copies were pulled into the mirror.
    assert not list(Path(tmp_path / "mirror").rglob("models.config"))


def test_a_deploy_that_fails_after_the_move_restores_the_label_and_removes_its_journal(
    registry: ObjectStoreRegistry, config: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_AFTER_LABEL_MOVE_ENV, "raise")
    with pytest.raises(RuntimeError, match="fault injected"):
        deploy(config, 2, out=tmp_path / "d2")
    assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
    assert not exists(journal_path(model_dir(registry), "stable")) and not exists(model_dir(registry) / LOCK_NAME)
    assert moves(registry) == [("stable", None, 1), ("stable", 1, 2), ("stable", 2, 1)]


def test_a_deploy_killed_halfway_is_repaired_by_the_next_one_after_its_lease_ended(
    registry: ObjectStoreRegistry, config: ModelConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = leave_unfinished(registry, version=2, previous=1)
    lock = dead_holders_lock(registry)
    with caplog.at_level(logging.WARNING):
        result = deploy(config, 3, out=tmp_path / "d3")
    assert "Took over" in caplog.text and "pid 4242 on worker-1" in caplog.text
    assert "was moving label 'stable' from version 1 to version 2 and did not finish; repaired" in caplog.text
    # The label went back to the verified version first, then moved on from there.
    assert result["previous"] == 1 and registry.labels("diabetes") == {"stable": 3}
    assert moves(registry) == [("stable", None, 1), ("stable", 1, 2), ("stable", 2, 1), ("stable", 1, 3)]
    assert registry.served_versions("diabetes") == [3]
    assert not exists(journal) and not exists(lock)


def _deploy_in_child(version: int, out: str, trace: str, ready: threading.Barrier) -> None:
    """A deploy in a process of its own; it holds the label move unverified for 1.5 s (its critical section)."""
    times: dict[str, float] = {}

    def hold() -> None:
        times["moved"] = time.time()
        time.sleep(1.5)
        times["released"] = time.time()

    deploy_module._fault_injection_point = hold
    model = find_model_config("diabetes")
    ready.wait(120)  # both processes have imported everything: they start their deploys together
    times["called"] = time.time()
    result = deploy_module.deploy(model, version, out=out)
    Path(trace).write_text(json.dumps({**times, "previous": result["previous"]}))


def test_two_deploys_from_two_processes_run_one_after_the_other(registry: ObjectStoreRegistry, tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")  # the environment (MLOPS_ARTIFACT_ROOT, AWS_*) goes with them
    ready = spawn.Barrier(3)
    procs = {
        v: spawn.Process(target=_deploy_in_child, args=(v, str(tmp_path / f"d{v}"), str(tmp_path / f"t{v}"), ready))
        for v in (2, 3)
    }
    for proc in procs.values():
        proc.start()
    ready.wait(180)
    for proc in procs.values():
        proc.join(240)
    assert [proc.exitcode for proc in procs.values()] == [0, 0]
    first, second = sorted((json.loads((tmp_path / f"t{v}").read_text()) | {"v": v} for v in (2, 3)),
                           key=lambda t: t["moved"])  # fmt: skip
    # They contended (both had called deploy before the first one's move was verified) and did not overlap.
    assert second["called"] < first["released"] <= second["moved"]
    assert (first["previous"], second["previous"]) == (1, first["v"])
    assert moves(registry) == [("stable", None, 1), ("stable", 1, first["v"]), ("stable", first["v"], second["v"])]
    assert registry.labels("diabetes") == {"stable": second["v"]}
    assert not exists(model_dir(registry) / LOCK_NAME)


def test_a_live_holder_makes_a_waiter_give_up_naming_the_lock_and_the_champion_use_the_verified_version(
    registry: ObjectStoreRegistry, config: ModelConfig
) -> None:
    lock = model_dir(registry) / LOCK_NAME
    leave_unfinished(registry, version=2, previous=1)
    with deploy_lock(model_dir(registry), wait_s=1, lease_s=600):  # a live deploy holds it
        started = time.monotonic()
        with (
            pytest.raises(DeployBusyError, match="another deploy of this model holds") as busy,
            deploy_lock(model_dir(registry), wait_s=0.3),
        ):
            pass
        assert time.monotonic() - started < 5
        assert str(lock) in str(busy.value) and "lease until" in str(busy.value)
        with deploy_lock_if_free(model_dir(registry)) as free:
            assert not free
        # The champion lookup compares against the journal's previous version and touches nothing.
        uri, version = champion(config, "auto")
        assert version == 1 and registry.labels("diabetes") == {"stable": 2}
    assert not exists(lock)
    # Its folder is the version's copy in the local mirror, which evaluate verifies against its checksums.
    assert Path(uri).is_dir() and (Path(uri) / "saved_model.pb").is_file()
    assert champion_problem(uri, 1) is None
    # With the lock free, the champion lookup repairs the label itself.
    assert champion(config, "auto")[1] == 1 and registry.labels("diabetes") == {"stable": 1}
    assert not exists(journal_path(model_dir(registry), "stable"))


def test_an_expired_lock_is_taken_over_by_exactly_one_of_two_racing_waiters(
    registry: ObjectStoreRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = dead_holders_lock(registry)
    # Both waiters read the expired lock before either writes: the race is forced, not left to timing.
    both_read = threading.Barrier(2, timeout=30)
    original_get = S3Objects.get

    def get_then_wait(self: S3Objects, rel: str) -> tuple[bytes, str] | None:
        found = original_get(self, rel)
        if rel == LOCK_NAME:
            both_read.wait()
        return found

    monkeypatch.setattr(S3Objects, "get", get_then_wait)
    taken: list[bool] = []

    def waiter() -> None:
        with store_for(model_dir(registry)).lock(60.0) as candidate:
            taken.append(candidate.try_take())

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(taken) == [False, True]
    record = json.loads(boto3.client("s3").get_object(Bucket=lock.bucket, Key=lock.key)["Body"].read())
    assert record["token"] != "dead" and record["expires"] > time.time() + 50


def test_an_unreadable_journal_object_stops_the_deploy_and_names_it(
    registry: ObjectStoreRegistry, config: ModelConfig, tmp_path: Path
) -> None:
    journal = journal_path(model_dir(registry), "stable")
    boto3.client("s3").put_object(Bucket=journal.bucket, Key=journal.key, Body=b"{not json")
    with pytest.raises(DeployError, match=r"deploy journal s3://.*/diabetes/\.deploy-stable\.journal\.json is unread"):
        deploy(config, 2, out=tmp_path / "d2")
    assert registry.labels("diabetes") == {"stable": 1} and not exists(model_dir(registry) / LOCK_NAME)


def test_undeploy_removes_a_canary_label_from_the_bucket(
    registry: ObjectStoreRegistry, config: ModelConfig, tmp_path: Path
) -> None:
    deploy(config, 2, label="canary", out=tmp_path / "canary")
    assert registry.labels("diabetes") == {"stable": 1, "canary": 2}
    result = undeploy(config, label="canary", out=tmp_path / "undeploy")
    assert (result["removed"], result["version"]) == (True, 2)
    assert registry.labels("diabetes") == {"stable": 1} and registry.served_versions("diabetes") == [1]
    assert not exists(model_dir(registry) / LOCK_NAME)
