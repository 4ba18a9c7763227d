"""A compressed variant, registered as model.tflite, is what the server answers with and what deploy verifies."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from compressed_digits import trained_digits

from include.mlops.deploy.deploy import prepare_smoke_check, verify_deployment
from include.mlops.deploy.server_client import ModelServerClient
from include.mlops.optimize.compress import compress
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.training.datasets import load_split
from include.mlops.training.savedmodel import load_tflite_fn
from tests.serving.conftest import RunningServer


@pytest.mark.slow
def test_the_served_int8_variant_answers_like_its_interpreter_offline(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    settings: ServerSettings,
    start_server: Callable[..., contextlib.AbstractContextManager[RunningServer]],
) -> None:
    digits = trained_digits(tmp_path_factory)
    config = digits.config
    compressed = dataclasses.replace(config.optimize.compress, variants=("int8",), serve="tflite")
    config = dataclasses.replace(config, optimize=dataclasses.replace(config.optimize, compress=compressed))
    result = compress(config, digits.snapshot, digits.model, tmp_path / "compress")
    assert result["served_variant"] == "int8", result["variants"]

    registry = Registry(tmp_path / "artifacts" / "models")
    version = registry.register(
        config.serving_name,
        Path(result["model_uri"]),
        metrics={},
        lineage={"dag_id": config.dag_id, "run_id": "compress", "data_uri": str(digits.snapshot)},
        tflite_path=result["tflite_uri"],
    ).version
    registry.set_label(config.serving_name, "stable", version)
    rows = load_split(config, digits.snapshot, "test").features[:40]
    offline = load_tflite_fn(result["tflite_uri"])(rows)

    with start_server(settings, registry_root=registry.root) as running, running.client() as client:
        response = client.post(f"/v1/models/{config.serving_name}:predict", json={"instances": rows.tolist()})
        assert response.status_code == 200, response.text
        served = np.asarray(response.json()["predictions"], dtype="float32")
        np.testing.assert_allclose(served, offline, rtol=1e-5, atol=1e-6)
        assert (served.argmax(axis=1) == offline.argmax(axis=1)).all()

        # Deploy's own check: expected answers from the version's model.tflite through its interpreter.
        check = prepare_smoke_check(config, registry.version_dir(config.serving_name, version), digits.snapshot, 16)
        assert check.served_format == "tflite"
        verified = verify_deployment(config.serving_name, version, "stable", ModelServerClient(running.url), check)
        assert verified["served_format"] == "tflite" and verified["rows"] == 16
