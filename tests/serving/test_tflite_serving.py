"""A version with ``model.tflite`` is served from those bytes, through the TFLite interpreter (--prefer_tflite_model)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from include.mlops.registry.filesystem import Registry
from include.mlops.registry.serving_artifact import SAVED_MODEL, TFLITE, served_artifact
from include.mlops.serving.app import ServerSettings
from include.mlops.serving.metrics import SERVED_ARTIFACT_INFO
from include.mlops.training.savedmodel import convert_to_tflite
from tests.serving.conftest import MODEL, N_FEATURES, RunningServer, make_linear_model, register, wait_for


@pytest.fixture(scope="module")
def tflite_x3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real .tflite converted (as optimize does) from a SavedModel answering sum(x) * 3."""
    base = tmp_path_factory.mktemp("tflite")
    return convert_to_tflite(make_linear_model(base / "x3", 3.0), base / "model.tflite")


def interpreter_outputs(tflite: Path, rows: np.ndarray) -> np.ndarray:
    """What TensorFlow's own TFLite interpreter answers for ``rows``: the reference the server must match."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(tflite))
    return interpreter.get_signature_runner("serving_default")(inputs=rows)["outputs"]


def test_served_artifact_prefers_model_tflite(tmp_path: Path, saved_models: dict[float, Path], tflite_x3: Path) -> None:
    reg = Registry(tmp_path / "models")
    plain = reg.register(MODEL, saved_models[1.0], metrics={}, lineage={"dag_id": "d", "run_id": "a"})
    with_tflite = reg.register(
        MODEL, saved_models[2.0], metrics={}, lineage={"dag_id": "d", "run_id": "b"}, tflite_path=tflite_x3
    )
    saved = served_artifact(plain.version_dir)
    assert (saved.format, saved.path) == (SAVED_MODEL, plain.version_dir)
    artifact = served_artifact(with_tflite.version_dir)
    assert (artifact.format, artifact.path) == (TFLITE, with_tflite.version_dir / "model.tflite")
    assert artifact.sha256 == hashlib.sha256(tflite_x3.read_bytes()).hexdigest()
    # A SavedModel's digest covers its graph and weights, not our metadata: same model files, same digest.
    again = reg.register(MODEL, saved_models[1.0], metrics={"mae": 2.0}, lineage={"dag_id": "d", "run_id": "c"})
    assert served_artifact(again.version_dir).sha256 == served_artifact(plain.version_dir).sha256
    assert served_artifact(plain.version_dir).sha256 != served_artifact(reg.version_dir(MODEL, 2)).sha256


@pytest.mark.slow
def test_a_version_with_model_tflite_is_served_by_the_interpreter_from_the_gated_bytes(
    tmp_path: Path,
    saved_models: dict[float, Path],
    tflite_x3: Path,
    settings: ServerSettings,
    start_server: Callable[..., contextlib.AbstractContextManager[RunningServer]],
) -> None:
    reg = Registry(tmp_path / "tflite-registry" / "models")
    # Version 1: SavedModel x1 with a model.tflite of x3, so an answer shows which of the two served it.
    version = reg.register(
        MODEL, saved_models[1.0], metrics={}, lineage={"dag_id": "d", "run_id": "a"}, tflite_path=tflite_x3
    ).version
    plain = register(reg, saved_models[2.0], run="b")
    reg.set_label(MODEL, "stable", version)
    reg.set_label(MODEL, "canary", plain)
    rows = np.random.default_rng(0).normal(size=(7, N_FEATURES)).astype("float32")
    expected = interpreter_outputs(tflite_x3, rows)

    with start_server(settings, registry_root=reg.root) as running, running.client() as client:
        response = client.post(f"/v1/models/{MODEL}/labels/stable:predict", json={"instances": rows.tolist()})
        assert response.status_code == 200, response.text
        served = np.asarray(response.json()["predictions"], dtype="float32")
        # The interpreter's kernels (XNNPACK, chosen by CPU features) may round the last bit differently at another
        # batch size or thread count, so equal means equal to float32 precision; x1 against x3 is a factor of 3.
        np.testing.assert_allclose(served, expected, rtol=1e-6)
        np.testing.assert_allclose(served[:, 0], rows.sum(axis=1) * 3.0, rtol=1e-2)  # x3: the tflite, not the x1

        # Metadata still describes the signature (from the version's SavedModel).
        metadata = client.get(f"/v1/models/{MODEL}/labels/stable/metadata").json()
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["inputs"]["inputs"]["dtype"] == "DT_FLOAT"

        text = client.get("/monitoring/prometheus/metrics").text
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == SERVED_ARTIFACT_INFO]
        info = {s.labels["version"]: s for s in family.samples}
        assert set(info) == {str(version), str(plain)}
        assert info[str(version)].labels == {
            "model_name": MODEL,
            "version": str(version),
            "format": "tflite",
            "sha256": hashlib.sha256(tflite_x3.read_bytes()).hexdigest(),
        }
        assert info[str(version)].value == 1.0
        assert info[str(plain)].labels["format"] == "saved_model"
        assert info[str(plain)].labels["sha256"] == served_artifact(reg.version_dir(MODEL, plain)).sha256

        # One interpreter serves every request: concurrent calls of different batch sizes must not mix.
        failures: list[str] = []

        def client_loop(batch: int) -> None:
            with running.client() as own:
                for _ in range(15):
                    answer = own.post(f"/v1/models/{MODEL}:predict", json={"instances": rows[:batch].tolist()})
                    got = np.asarray(answer.json().get("predictions"), dtype="float32")
                    mixed = got.shape != expected[:batch].shape or not np.allclose(got, expected[:batch], rtol=1e-6)
                    if answer.status_code != 200 or mixed:
                        failures.append(f"batch {batch}: {answer.status_code} {answer.text[:200]}")

        threads = [threading.Thread(target=client_loop, args=(batch,)) for batch in (1, 3, 5, 7)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []

        # A request of the wrong width is the client's mistake, a 400 naming the shapes, as the SavedModel path
        # answers; and the same message every time (the interpreter keeps no error text between requests).
        answers = [
            client.post(f"/v1/models/{MODEL}/labels/stable:predict", json={"instances": [[1.0] * (N_FEATURES - 1)]})
            for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [400, 400, 400], answers[0].text
        errors = {a.json()["error"] for a in answers}
        assert len(errors) == 1, errors
        assert f"[1, {N_FEATURES - 1}]" in errors.pop()
        assert (
            client.post(f"/v1/models/{MODEL}/labels/stable:predict", json={"instances": rows.tolist()}).status_code
            == 200
        )

        # Unloading the version removes its info series.
        reg.remove_label(MODEL, "stable")
        assert wait_for(lambda: f'version="{version}"' not in client.get("/monitoring/prometheus/metrics").text)
