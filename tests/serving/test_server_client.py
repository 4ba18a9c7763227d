"""ModelServerClient against the real local model server: AVAILABLE, never available, failed to load."""

from __future__ import annotations

import time

import pytest

from include.mlops.deploy.server_client import ModelServerClient, ServerNotReadyError, ServerUnreachableError
from include.mlops.registry.filesystem import Registry
from tests.serving.conftest import MODEL, RunningServer, corrupt_weights, free_port

pytestmark = pytest.mark.slow


def test_wait_available_returns_once_the_label_serves_the_version(running: RunningServer, registry: Registry) -> None:
    with ModelServerClient(running.url, timeout=60, poll_seconds=0.1) as client:
        client.wait_available(MODEL, version=1, label="stable")
        registry.preload(MODEL, 2)
        client.wait_available(MODEL, version=2)
        code, body = client.request("POST", f"/v1/models/{MODEL}/versions/2:predict", {"instances": [[1.0] * 10]})
    assert (code, body) == (200, {"predictions": [[20.0]]})


def test_a_version_that_never_loads_times_out_with_what_the_server_reported(
    running: RunningServer, registry: Registry
) -> None:
    # Version 3 is registered but not in the version policy, so the server never loads it.
    with ModelServerClient(running.url, timeout=1.5, poll_seconds=0.1) as client:
        started = time.monotonic()
        with pytest.raises(ServerNotReadyError, match=r"version 3 was not AVAILABLE within 1.5 s") as caught:
            client.wait_available(MODEL, version=3)
        elapsed = time.monotonic() - started
    assert "HTTP 404: Could not find version 3" in str(caught.value)  # the last answer, verbatim
    assert elapsed >= 1.5


def test_a_version_the_server_failed_to_load_fails_at_once_with_its_error(
    running: RunningServer, registry: Registry
) -> None:
    corrupt_weights(registry.version_dir(MODEL, 2))
    registry.preload(MODEL, 2)
    with ModelServerClient(running.url, timeout=60, poll_seconds=0.1) as client:
        started = time.monotonic()
        with pytest.raises(ServerNotReadyError, match=r"could not load version 2: .*corrupt"):
            client.wait_available(MODEL, version=2)
        # Well before the 60 s timeout: state END with an error is final, not retried until the deadline.
        assert time.monotonic() - started < 30


def test_an_unreachable_server_is_reported_as_such() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with ModelServerClient(dead, timeout=0.5, poll_seconds=0.1) as client:
        with pytest.raises(ServerUnreachableError, match="cannot reach"):
            client.request("GET", f"/v1/models/{MODEL}")
        with pytest.raises(ServerNotReadyError, match=r"within 0.5 s \(cannot reach the server"):
            client.wait_available(MODEL, version=1)
