"""The ``tfserving`` behaviour over real HTTP on real SavedModels: what TF Serving does where the default is kinder.

Each test runs the same steps in both behaviours and shows where they part, so it fails if the
``tfserving`` behaviour were the default one under another name.  The semantics are TF Serving's
(``tensorflow_serving/model_servers/server_core.cc``, ``server.cc``, ``core/availability_preserving_policy.cc``,
``sources/storage_path/file_system_storage_path_source.cc``, ``get_model_status_impl.cc``).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from include.mlops.registry.filesystem import Registry
from include.mlops.serving import tfserving_mode
from include.mlops.serving.app import ServerSettings
from include.mlops.serving.loaders import LoadedVersion, load_version
from include.mlops.serving.metrics import SERVED_ARTIFACT_INFO
from include.mlops.serving.models import BEHAVIOUR_ENV, BEHAVIOURS, DEFAULT_BEHAVIOUR, TFSERVING_BEHAVIOUR
from include.mlops.training.savedmodel import convert_to_tflite
from tests.serving.conftest import (
    MODEL,
    N_FEATURES,
    behaviour_settings,
    corrupt_weights,
    register,
    serve_as_configured,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test starts real servers on real SavedModels

OTHER = "other"
LABEL_LESS = f"/v1/models/{MODEL}"
STABLE = f"/v1/models/{MODEL}/labels/stable"


@pytest.fixture
def base(settings: ServerSettings) -> ServerSettings:
    return replace(settings, predlog_root=None)


def write_config(registry: Registry, models: Mapping[str, tuple[str | None, Mapping[str, int]]]) -> None:
    """Replace models.config (atomically) with ``{name: (version policy text or None, labels)}``."""
    entries = []
    for name, (policy, labels) in models.items():
        text = f'name: "{name}" base_path: "{registry.model_dir(name)}" model_platform: "tensorflow"'
        if policy is not None:
            text += f" model_version_policy {{ {policy} }}"
        text += "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
        entries.append(f"config {{ {text} }}")
    staging = registry.config_path.with_name(".models.config.test")
    staging.write_text(f"model_config_list {{ {' '.join(entries)} }}\n")
    os.replace(staging, registry.config_path)


def specific(*versions: int) -> str:
    return "specific { " + " ".join(f"versions: {v}" for v in versions) + " }"


def predict(client: httpx.Client, path: str = LABEL_LESS) -> float | tuple[int, str]:
    """The answer to a row of ones (version v answers 10 * v), or (HTTP status, error)."""
    response = client.post(f"{path}:predict", json={"instances": [[1.0] * N_FEATURES]})
    if response.status_code == 200:
        return float(response.json()["predictions"][0][0])
    return response.status_code, response.json()["error"]


def states(client: httpx.Client, path: str = LABEL_LESS) -> dict[int, tuple[str, str]]:
    """The status API's answer as {version: (state, error code)}; {} when it is not a 200."""
    response = client.get(path)
    if response.status_code != 200:
        return {}
    return {int(s["version"]): (s["state"], s["status"]["error_code"]) for s in response.json()["model_version_status"]}


def available(client: httpx.Client) -> set[int]:
    return {v for v, (state, _) in states(client).items() if state == "AVAILABLE"}


# --------------------------------------------------------------------------- version policy


def test_the_version_policy_alone_decides_what_is_loaded(registry: Registry, base: ServerSettings) -> None:
    """A label keeps nothing loaded, a missing specific version is not listed; latest N, all, default latest 1."""
    for behaviour in BEHAVIOURS:
        write_config(registry, {MODEL: (specific(1), {"stable": 1})})
        with serve_as_configured(behaviour_settings(base, behaviour)) as running, running.client() as client:
            # The policy drops the labelled version 1 and asks for 2, 3 and a version that has no folder.
            write_config(registry, {MODEL: (specific(2, 3, 9), {"stable": 1})})
            assert wait_for(lambda: {2, 3} <= available(client))
            if behaviour == TFSERVING_BEHAVIOUR:
                assert wait_for(
                    lambda: states(client) == {1: ("END", "OK"), 2: ("AVAILABLE", "OK"), 3: ("AVAILABLE", "OK")}
                )
                assert client.get(f"{LABEL_LESS}/versions/9").status_code == 404
                # The label names a version that is not loaded any more: NOT_FOUND through it.
                assert predict(client, STABLE) == (404, f"Servable not found for request: Specific({MODEL}, 1)")
            else:
                # Kinder: the label keeps its version loaded, and the missing folder is a failed version.
                assert states(client) == {
                    1: ("AVAILABLE", "OK"), 2: ("AVAILABLE", "OK"), 3: ("AVAILABLE", "OK"), 9: ("END", "NOT_FOUND")
                }  # fmt: skip
                assert predict(client, STABLE) == pytest.approx(10.0)
            # Policies without labels load the same in both behaviours (TF Serving's rules).
            for policy, expected in (
                ("latest { num_versions: 2 }", {2, 3}),
                ("all { }", {1, 2, 3}),
                (None, {3}),  # no policy: the latest version
                ("latest { }", {3}),  # num_versions 0 counts as 1
            ):
                write_config(registry, {MODEL: (policy, {})})
                assert wait_for(lambda expected=expected: available(client) == expected), (behaviour, policy)  # type: ignore[misc]


def test_a_dropped_version_stays_while_no_asked_for_version_is_available(
    registry: Registry, base: ServerSettings
) -> None:
    """TF Serving's AvailabilityPreservingPolicy: the old version unloads only once a new one is AVAILABLE."""
    corrupt_weights(registry.version_dir(MODEL, 2))
    for behaviour in BEHAVIOURS:
        write_config(registry, {MODEL: (specific(1), {})})
        with serve_as_configured(behaviour_settings(base, behaviour)) as running, running.client() as client:
            write_config(registry, {MODEL: (specific(2), {})})
            assert wait_for(lambda: states(client).get(2) == ("END", "DATA_LOSS"))
            time.sleep(0.5)  # a few polls
            if behaviour == TFSERVING_BEHAVIOUR:
                assert available(client) == {1} and predict(client) == pytest.approx(10.0)
            else:
                assert available(client) == set() and predict(client)[0] == 404  # type: ignore[index]


# --------------------------------------------------------------------------- label-less requests


def test_label_less_requests_get_the_highest_available_version(registry: Registry, base: ServerSettings) -> None:
    """Version 2 and a corrupt version 3 are preloaded beside stable -> 1."""
    corrupt_weights(registry.version_dir(MODEL, 3))
    registry.preload(MODEL, 2)
    registry.preload(MODEL, 3)
    for behaviour in BEHAVIOURS:
        with serve_as_configured(behaviour_settings(base, behaviour)) as running, running.client() as client:
            assert states(client)[3] == ("END", "DATA_LOSS")
            metadata = client.get(f"{LABEL_LESS}/metadata").json()
            expected = 2 if behaviour == TFSERVING_BEHAVIOUR else 1  # the default answers with stable
            assert predict(client) == pytest.approx(10.0 * expected), behaviour
            assert metadata["model_spec"]["version"] == str(expected)
            assert predict(client, STABLE) == pytest.approx(10.0)


# --------------------------------------------------------------------------- labels need an AVAILABLE version


def test_a_config_with_labels_starts_only_with_the_allow_flag(registry: Registry, base: ServerSettings) -> None:
    """Nothing is loaded when TF Serving checks the first config's labels, so it refuses to start."""
    strict = replace(behaviour_settings(base, TFSERVING_BEHAVIOUR), allow_version_labels_for_unavailable_models=False)
    with pytest.raises(RuntimeError, match="did not start"), serve_as_configured(strict):
        pass
    for settings in (replace(strict, allow_version_labels_for_unavailable_models=True), base):
        with serve_as_configured(settings) as running, running.client() as client:
            assert predict(client, STABLE) == pytest.approx(10.0)
    registry.remove_label(MODEL, "stable")
    registry.preload(MODEL, 1)  # the same version, without a label
    with serve_as_configured(strict) as running, running.client() as client:
        assert predict(client) == pytest.approx(10.0)


def test_a_label_on_a_version_that_is_not_loaded_refuses_the_whole_config(
    registry: Registry, base: ServerSettings, saved_models: dict[float, Path]
) -> None:
    """One write moves stable to the unloaded version 2 and adds a model: TF Serving applies neither."""
    register(registry, saved_models[1.0], run="other", name=OTHER)
    for behaviour in BEHAVIOURS:
        write_config(registry, {MODEL: (specific(1), {})})
        settings = replace(behaviour_settings(base, behaviour), allow_version_labels_for_unavailable_models=False)
        with serve_as_configured(settings) as running, running.client() as client:
            write_config(registry, {MODEL: (specific(2), {"stable": 2}), OTHER: (specific(1), {})})
            if behaviour == DEFAULT_BEHAVIOUR:  # kinder: loads version 2, then moves the label to it
                assert wait_for(lambda: predict(client, STABLE) == pytest.approx(20.0))
                assert predict(client, f"/v1/models/{OTHER}") == pytest.approx(10.0)
                continue
            time.sleep(1.0)  # ten polls, each refusing the file again
            assert predict(client, STABLE) == (400, "Unrecognized servable version label: stable")
            assert predict(client) == pytest.approx(10.0)  # version 1 keeps serving
            assert states(client) == {1: ("AVAILABLE", "OK")}
            assert client.get(f"/v1/models/{OTHER}").status_code == 404
            # Deploy's order works: load the version first, label it once it is AVAILABLE.
            write_config(registry, {MODEL: (specific(1, 2), {}), OTHER: (specific(1), {})})
            assert wait_for(lambda: available(client) == {1, 2})
            write_config(registry, {MODEL: (specific(2), {"stable": 2}), OTHER: (specific(1), {})})
            assert wait_for(lambda: predict(client, STABLE) == pytest.approx(20.0))
            assert predict(client, f"/v1/models/{OTHER}") == pytest.approx(10.0)


def test_the_allow_flag_lets_only_new_labels_name_unloaded_versions(registry: Registry, base: ServerSettings) -> None:
    canary = f"/v1/models/{MODEL}/labels/canary"
    for behaviour in BEHAVIOURS:
        registry.set_label(MODEL, "stable", 1)
        registry.remove_label(MODEL, "canary")
        with serve_as_configured(behaviour_settings(base, behaviour)) as running, running.client() as client:
            registry.set_label(MODEL, "canary", 3)  # a new label on the unloaded version 3: allowed
            assert wait_for(lambda: predict(client, canary) == pytest.approx(30.0))
            registry.set_label(MODEL, "stable", 2)  # moves an existing label to the unloaded version 2
            if behaviour == DEFAULT_BEHAVIOUR:  # kinder: loads it and moves the label
                assert wait_for(lambda: predict(client, STABLE) == pytest.approx(20.0))
                continue
            time.sleep(1.0)
            assert predict(client, STABLE) == pytest.approx(10.0)
            assert 2 not in states(client) and predict(client, canary) == pytest.approx(30.0)


# --------------------------------------------------------------------------- polling


def test_the_config_is_read_at_each_poll_and_at_no_other_time(
    registry: Registry, base: ServerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests never read the file; each poll reads it whether or not its mtime changed."""
    poll = 1.0
    for behaviour in BEHAVIOURS:
        registry.set_label(MODEL, "stable", 1)
        registry.preload(MODEL, 2)  # versions 1 and 2 loaded, stable -> 1
        settings = replace(behaviour_settings(base, behaviour), poll_seconds=poll)
        with serve_as_configured(settings) as running, running.client() as client:
            time.sleep(1.5 * poll)  # past the first poll (the default reloads once there, to list the folders)
            manager_registry = running.server.models.registry
            reads: list[float] = []
            read = manager_registry.read_serving_config

            def counted_read(read=read, reads=reads):  # type: ignore[no-untyped-def]
                reads.append(time.monotonic())
                return read()

            monkeypatch.setattr(manager_registry, "read_serving_config", counted_read)
            # The label moves in place: same size, same inode, and the old mtime put back.
            path = registry.config_path
            before = path.stat()
            text = path.read_text()
            moved = re.sub(r'(key: "stable"\s+value: )1\b', r"\g<1>2", text)
            assert moved != text and len(moved) == len(text)
            with path.open("r+") as handle:
                handle.write(moved)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            written = time.monotonic()
            seen = wait_for(lambda: predict(client, STABLE) == pytest.approx(20.0), timeout=3 * poll, interval=0.01)
            landed = time.monotonic()
            for _ in range(20):  # requests of every kind read nothing
                predict(client), client.get(LABEL_LESS), client.get(f"{LABEL_LESS}/metadata")
            if behaviour == DEFAULT_BEHAVIOUR:  # reads only when the file's mtime, size or inode changed
                assert not seen and reads == []
                continue
            assert seen, "the poll did not read the changed file"
            # The change landed at a poll after the write, and polls are an interval apart.
            assert any(written <= t <= landed for t in reads)
            assert all(b - a >= 0.9 * poll for a, b in itertools.pairwise(reads)), reads
            assert len(reads) <= (time.monotonic() - written) / poll + 1.5


# --------------------------------------------------------------------------- TFLite


def test_model_tflite_serves_only_with_prefer_tflite_model(
    registry: Registry, base: ServerSettings, saved_models: dict[float, Path], tmp_path: Path
) -> None:
    """Version 4 holds a SavedModel answering x1 and a model.tflite answering x3."""
    tflite = convert_to_tflite(saved_models[3.0], tmp_path / "model.tflite")
    registry.register(MODEL, saved_models[1.0], metrics={}, lineage={"dag_id": "d", "run_id": "t"}, tflite_path=tflite)
    registry.set_label(MODEL, "stable", 4)
    tfserving = behaviour_settings(base, TFSERVING_BEHAVIOUR)
    for settings, answer, fmt in (
        (replace(tfserving, prefer_tflite_model=False), 10.0, "saved_model"),
        (replace(tfserving, prefer_tflite_model=True), 30.0, "tflite"),
        (base, 30.0, "tflite"),  # the default follows serving_artifact.served_artifact
    ):
        with serve_as_configured(settings) as running, running.client() as client:
            assert predict(client, STABLE) == pytest.approx(answer, rel=0.02), settings
            text = client.get("/monitoring/prometheus/metrics").text
        (info,) = [f for f in text_string_to_metric_families(text) if f.name == SERVED_ARTIFACT_INFO]
        assert [s.labels["format"] for s in info.samples if s.labels["version"] == "4"] == [fmt]


# --------------------------------------------------------------------------- status


def test_status_lists_loading_unloaded_and_failed_versions_and_ignores_labels(
    registry: Registry, base: ServerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def gated_load(name: str, version: int, path: Path, **kwargs: bool) -> LoadedVersion:
        if version == 2:
            release.wait(timeout=60)
        return load_version(name, version, path, **kwargs)

    monkeypatch.setattr(tfserving_mode, "load_version", gated_load)
    corrupt_weights(registry.version_dir(MODEL, 3))
    for behaviour in BEHAVIOURS:
        registry.set_label(MODEL, "stable", 1)
        release.clear()
        with serve_as_configured(behaviour_settings(base, behaviour)) as running, running.client() as client:
            registry.preload(MODEL, 2)
            if behaviour == TFSERVING_BEHAVIOUR:  # TF Serving lists a version while it loads; the default does not
                assert wait_for(lambda: states(client).get(2) == ("LOADING", "OK"))
                assert predict(client) == pytest.approx(10.0)
                release.set()
            assert wait_for(lambda: 2 in available(client))
            registry.set_label(MODEL, "stable", 2)  # version 1 unloads
            assert wait_for(lambda: states(client).get(1) == ("END", "OK"))
            registry.set_label(MODEL, "canary", 3)  # the corrupt version 3 fails to load
            assert wait_for(lambda: states(client).get(3) == ("END", "DATA_LOSS"))
            registry.remove_label(MODEL, "canary")
            # TF Serving keeps the last state of every version it saw; by default the statuses are only the
            # config's versions and the ones it just unloaded.
            if behaviour == TFSERVING_BEHAVIOUR:
                expected = {1: ("END", "OK"), 2: ("AVAILABLE", "OK"), 3: ("END", "DATA_LOSS")}
            else:
                expected = {2: ("AVAILABLE", "OK")}
            assert wait_for(lambda expected=expected: states(client) == expected), states(client)  # type: ignore[misc]
            # A label in a status request: TF Serving ignores it (even an unknown one) and lists every version.
            labelled = states(client, STABLE)
            unknown = client.get(f"/v1/models/{MODEL}/labels/no-such-label")
            if behaviour == TFSERVING_BEHAVIOUR:
                assert labelled == expected and unknown.status_code == 200
            else:
                assert labelled == {2: ("AVAILABLE", "OK")} and unknown.status_code == 400


# --------------------------------------------------------------------------- CLI


def test_the_cli_takes_the_behaviour_and_tf_servings_flag_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.mlops.serving.__main__ import build_parser, main

    assert build_parser().parse_args([]).behaviour == DEFAULT_BEHAVIOUR
    monkeypatch.setenv(BEHAVIOUR_ENV, TFSERVING_BEHAVIOUR)
    args = build_parser().parse_args(["--prefer_tflite_model", "--allow_version_labels_for_unavailable_models"])
    assert args.behaviour == TFSERVING_BEHAVIOUR
    assert args.prefer_tflite_model and args.allow_version_labels_for_unavailable_models
    assert build_parser().parse_args(["--behaviour", "default"]).behaviour == DEFAULT_BEHAVIOUR
    monkeypatch.setenv(BEHAVIOUR_ENV, "tf-serving")
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
