"""Fixtures for the model server tests: tiny real SavedModels in a real registry, a real uvicorn on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from model_factory import make_saved_model

from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ModelServer, ServerSettings, create_app
from include.mlops.serving.models import BEHAVIOUR_ENV, BEHAVIOURS, DEFAULT_BEHAVIOUR, TFSERVING_BEHAVIOUR

N_FEATURES = 10
MODEL = "diabetes"

# The tfserving behaviour with the TF Serving flags a registry with labels needs: model.tflite where a version has
# one, and new labels that may name a version not loaded yet -- without that flag TF Serving does not start from a
# models.config that has labels (test_tfserving_mode.py shows it).
TFSERVING_SETTINGS: dict[str, object] = {
    "behaviour": TFSERVING_BEHAVIOUR,
    "prefer_tflite_model": True,
    "allow_version_labels_for_unavailable_models": True,
    "file_system_poll_seconds": 0.1,
}


def make_linear_model(path: Path, scale: float, n_features: int = N_FEATURES, n_outputs: int = 1) -> Path:
    """A real SavedModel with the project's contract whose answer is known: ``sum(x) * scale`` per output."""
    return make_saved_model(path, n_features, n_outputs, scale=scale)


def corrupt_weights(version_dir: Path) -> None:
    """Flip one bit of a registered version's weights, so its checksums and its load fail."""
    weights = next((version_dir / "variables").glob("variables.data-*"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """SavedModels answering sum(x) * 1, 2 and 3 (built once per session: saving costs ~1 s each)."""
    base = tmp_path_factory.mktemp("linear-models")
    return {scale: make_linear_model(base / f"scale{scale:g}", scale) for scale in (1.0, 2.0, 3.0)}


def register(registry: Registry, model_dir: Path, run: str, name: str = MODEL) -> int:
    result = registry.register(
        name, model_dir, metrics={"mae": 1.0}, lineage={"dag_id": f"lifecycle__{name}", "run_id": run}
    )
    return result.version


@pytest.fixture
def registry(tmp_path: Path, saved_models: dict[float, Path]) -> Registry:
    """A registry with versions 1 (x1), 2 (x2) and 3 (x3) of ``diabetes``; ``stable`` -> 1."""
    reg = Registry(tmp_path / "artifacts" / "models")
    for scale in (1.0, 2.0, 3.0):
        register(reg, saved_models[scale], run=f"run-{scale:g}")
    reg.set_label(MODEL, "stable", 1)
    return reg


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    server: ModelServer
    settings: ServerSettings

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]


def behaviour_settings(settings: ServerSettings, behaviour: str) -> ServerSettings:
    """``settings`` in ``behaviour``: as they are for ``default``, with :data:`TFSERVING_SETTINGS` for ``tfserving``."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown server behaviour {behaviour!r}")
    return replace(settings, **TFSERVING_SETTINGS) if behaviour == TFSERVING_BEHAVIOUR else settings  # type: ignore[arg-type]


@pytest.fixture(params=BEHAVIOURS)
def server_behaviour(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per server behaviour: :func:`serve` starts its servers in it (via ``$MLOPS_SERVER_BEHAVIOUR``).

    ``pytestmark = pytest.mark.usefixtures("server_behaviour")`` runs a whole module in both.
    """
    monkeypatch.setenv(BEHAVIOUR_ENV, request.param)
    return str(request.param)


@contextlib.contextmanager
def serve(settings: ServerSettings) -> Iterator[RunningServer]:
    """Run the app under a real uvicorn in a thread on a free loopback port.

    Settings in the default behaviour take ``$MLOPS_SERVER_BEHAVIOUR`` (see :func:`behaviour_settings`), so
    ``MLOPS_SERVER_BEHAVIOUR=tfserving pytest tests/serving/test_deploy_verify.py`` runs those servers as TF
    Serving; :func:`serve_as_configured` ignores it.
    """
    behaviour = os.environ.get(BEHAVIOUR_ENV, DEFAULT_BEHAVIOUR)
    if settings.behaviour == DEFAULT_BEHAVIOUR:
        settings = behaviour_settings(settings, behaviour)
    with serve_as_configured(settings) as running:
        yield running


@contextlib.contextmanager
def serve_as_configured(settings: ServerSettings) -> Iterator[RunningServer]:
    """:func:`serve` with exactly ``settings``, whatever ``$MLOPS_SERVER_BEHAVIOUR`` says."""
    import uvicorn

    port = free_port()
    model_server = ModelServer(settings)
    config = uvicorn.Config(
        create_app(settings, model_server), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when the app does not start; the loop below says so
            server.run()

    thread = threading.Thread(target=run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the model server did not start")
        time.sleep(0.05)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", model_server, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def settings(registry: Registry, tmp_path: Path) -> ServerSettings:
    return ServerSettings(
        registry_root=registry.root,
        poll_seconds=0.1,
        max_body_bytes=64 * 1024,
        predlog_root=tmp_path / "artifacts",
        predlog_sample_rate=1.0,
        predlog_flush_seconds=0.5,
    )


@pytest.fixture
def running(settings: ServerSettings) -> Iterator[RunningServer]:
    with serve(settings) as running:
        yield running


@pytest.fixture
def start_server() -> Callable[..., contextlib.AbstractContextManager[RunningServer]]:
    """``with start_server(settings, **changes) as running:`` for tests that need their own settings."""

    def start(settings: ServerSettings, **changes: object) -> contextlib.AbstractContextManager[RunningServer]:
        return serve(replace(settings, **changes))  # type: ignore[arg-type]

    return start


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
