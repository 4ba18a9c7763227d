"""The request logger (python -m include.mlops.serving.request_logger) in front of the local server as TF Serving.

The upstream is the project's server in its ``tfserving`` behaviour (a real uvicorn, conftest.serve_as_configured),
writing its own prediction log with every request; the proxy runs as its own process, as in the pod.  Answers
through the proxy must be the upstream's to the byte, and the proxy's log must be the server's: the same rows,
versions and labels, read by the drift step alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from include.mlops.monitoring.drift import read_window
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.serving.models import TFSERVING_BEHAVIOUR
from include.mlops.serving.predlog import read_prediction_log
from include.mlops.serving.proxy_log import decode_body, rows_of
from include.mlops.serving.request_logger import LoggerSettings, create_app, create_request_log
from tests.serving.conftest import (
    MODEL,
    N_FEATURES,
    RunningServer,
    behaviour_settings,
    free_port,
    register,
    serve_as_configured,
)

ROOT = Path(__file__).resolve().parents[2]
PROXY_MODULE = "include.mlops.serving.request_logger"


@dataclass
class Stack:
    upstream: RunningServer
    proxy_url: str
    proxy_log: Path  # the proxy's --predlog-root
    server_log: Path  # the upstream server's own prediction log root

    def proxy(self) -> httpx.Client:
        return httpx.Client(base_url=self.proxy_url, timeout=30)

    def direct(self) -> httpx.Client:
        return self.upstream.client()


@contextlib.contextmanager
def run_proxy(upstream: str, predlog_root: Path, *extra: str) -> Iterator[str]:
    """The request logger as its own process on a free port; its URL once it answers."""
    port = free_port()
    command = [sys.executable, "-m", PROXY_MODULE, "--upstream", upstream, "--port", str(port)]
    command += ["--predlog-root", str(predlog_root), "--predlog-sample-rate", "1", "--predlog-flush-seconds", "0.2"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    process = subprocess.Popen([*command, *extra], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}/v1/models", timeout=2)
                break
            assert process.poll() is None, f"the request logger exited: {process.communicate()[1]}"
            assert time.monotonic() < deadline, "the request logger did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, saved_models: dict[float, Path]) -> Iterator[Stack]:
    """Versions 1 (x1), 2 (x2), 3 (x3) of ``diabetes``, each with a label, served as TF Serving behind the proxy."""
    base = tmp_path_factory.mktemp("request-logger")
    registry = Registry(base / "artifacts" / "models")
    for scale in (1.0, 2.0, 3.0):
        register(registry, saved_models[scale], run=f"run-{scale:g}")
    # TF Serving loads the labelled versions only (models.config's specific policy): label all three.
    for label, version in {"stable": 1, "canary": 2, "next": 3}.items():
        registry.set_label(MODEL, label, version)
    settings = ServerSettings(
        registry_root=registry.root,
        predlog_root=base / "server-log",
        predlog_sample_rate=1.0,
        predlog_flush_seconds=0.2,
    )
    with serve_as_configured(behaviour_settings(settings, TFSERVING_BEHAVIOUR)) as upstream:
        with run_proxy(upstream.url, base / "proxy-log") as url:
            yield Stack(upstream, url, base / "proxy-log", base / "server-log")


_nonce = iter(range(1, 10_000))


def rows(n: int = 2) -> list[list[float]]:
    """``n`` rows whose first value is new to this module, so their logged rows are found by it."""
    first = float(next(_nonce))
    return [[first, *[0.25 * (i + j) for j in range(1, N_FEATURES)]] for i in range(n)]


def logged(root: Path, first: float, timeout: float = 20.0, expected: int = 1) -> pd.DataFrame:
    """The logged rows whose first input is ``first``, once at least ``expected`` of them are written."""
    deadline = time.monotonic() + timeout
    while True:
        frame = read_prediction_log(root, MODEL)
        found = frame[[float(values[0]) == first for values in frame["inputs"]]] if len(frame) else frame
        if len(found) >= expected or time.monotonic() > deadline:
            return found.reset_index(drop=True)
        time.sleep(0.1)


def predict_path(address: str) -> str:
    return f"/v1/models/{MODEL}{address}:predict"


def same_answer(stack: Stack, method: str, path: str, **kwargs: object) -> httpx.Response:
    """Send one request to the proxy and to the upstream; both answers must be the same."""
    with stack.proxy() as proxy, stack.direct() as direct:
        through = proxy.request(method, path, **kwargs)  # type: ignore[arg-type]
        upstream = direct.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert through.status_code == upstream.status_code
    assert through.content == upstream.content
    assert through.headers.get("content-type") == upstream.headers.get("content-type")
    return through


# --------------------------------------------------------------------------- answers and rows


@pytest.mark.parametrize("columnar", [False, True], ids=["row", "columnar"])
@pytest.mark.parametrize(
    ("address", "version", "label"),
    [("/labels/stable", 1, "stable"), ("/versions/2", 2, None), ("", 3, None)],
    ids=["by-label", "by-version", "by-name"],
)
def test_predict_passes_through_and_logs_what_was_sent(
    stack: Stack, address: str, version: int, label: str | None, columnar: bool
) -> None:
    sent = rows(3)
    body = {"inputs": sent} if columnar else {"instances": sent}
    answer = same_answer(stack, "POST", predict_path(address), json=body)
    assert answer.status_code == 200
    outputs = answer.json()["outputs" if columnar else "predictions"]

    found = logged(stack.proxy_log, sent[0][0], expected=3)
    assert len(found) == 3
    assert set(found["model_name"]) == {MODEL}
    assert set(found["model_version"]) == {version}
    assert [None if pd.isna(v) else v for v in found["version_label"]] == [label] * 3
    np.testing.assert_array_equal(np.stack(found["inputs"]), np.asarray(sent, np.float32))
    np.testing.assert_array_equal(np.stack(found["outputs"]), np.asarray(outputs, np.float32))
    # The answering version is the one logged: version N answers sum(x) * N.
    np.testing.assert_allclose(np.stack(found["outputs"])[:, 0], np.sum(sent, axis=1) * version, rtol=1e-5)


def input_name(stack: Stack) -> str:
    with stack.direct() as direct:
        metadata = direct.get(f"/v1/models/{MODEL}/metadata").json()
    (name,) = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    return str(name)


def test_named_inputs_are_logged_by_their_one_input(stack: Stack) -> None:
    sent = rows(2)
    name = input_name(stack)
    answer = same_answer(stack, "POST", predict_path("/versions/3"), json={"instances": [{name: r} for r in sent]})
    assert answer.status_code == 200
    found = logged(stack.proxy_log, sent[0][0], expected=2)
    assert list(found["model_version"]) == [3, 3]
    np.testing.assert_array_equal(np.stack(found["inputs"]), np.asarray(sent, np.float32))


def test_gzip_bodies_and_what_is_not_one_numeric_tensor() -> None:
    request = {"inputs": {"x": [[1, 2], [3, 4]]}}
    response = {"outputs": [[0.5], [1.5]]}
    wire = gzip.compress(json.dumps(request).encode())
    inputs, outputs = rows_of(json.loads(decode_body(wire, "gzip")), response)  # type: ignore[misc]
    assert inputs.tolist() == [[1, 2], [3, 4]] and outputs.tolist() == [[0.5], [1.5]]
    with pytest.raises(ValueError, match="br"):
        decode_body(b"", "br")
    not_loggable = [
        ({"instances": [{"a": [1.0], "b": [2.0]}]}, {"predictions": [[1.0]]}),  # two inputs
        ({"instances": [[1.0]]}, {"predictions": [{"p": [1.0], "q": [2.0]}]}),  # two outputs
        ({"instances": ["text"]}, {"predictions": [[1.0]]}),  # a string input
        ({"inputs": 3.0}, {"outputs": [1.0]}),  # a scalar: no rows
        ({"instances": [[1.0], [2.0]]}, {"predictions": [[1.0]]}),  # rows do not match
    ]
    for sent, answered in not_loggable:
        assert rows_of(sent, answered) is None, sent


def test_status_metadata_and_metrics_pass_through(stack: Stack) -> None:
    for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/labels/stable", f"/v1/models/{MODEL}/metadata"):
        assert same_answer(stack, "GET", path).status_code == 200, path
    with stack.proxy() as proxy:
        metrics = proxy.get("/monitoring/prometheus/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert ":tensorflow:serving:request_count" in metrics.text


# --------------------------------------------------------------------------- errors


def assert_nothing_more_logged(stack: Stack, before: int) -> None:
    """No rows since ``before`` but a barrier's: a good call sent now is written after anything sent earlier."""
    barrier = rows(1)
    with stack.proxy() as proxy:
        assert proxy.post(predict_path("/versions/1"), json={"instances": barrier}).status_code == 200
    assert len(logged(stack.proxy_log, barrier[0][0])) == 1
    assert len(read_prediction_log(stack.proxy_log, MODEL)) == before + 1


def test_refused_requests_pass_through_and_are_not_logged(stack: Stack) -> None:
    before = len(read_prediction_log(stack.proxy_log, MODEL))
    headers = {"content-type": "application/json"}
    malformed = same_answer(
        stack, "POST", predict_path("/labels/stable"), content=b'{"instances": [1, 2', headers=headers
    )
    assert malformed.status_code == 400 and "JSON Parse error" in malformed.json()["error"]
    # Valid JSON the model refuses (three features, not ten): a 400 from the model, not logged either.
    wrong_width = same_answer(stack, "POST", predict_path("/versions/1"), json={"instances": [[1.0, 2.0, 3.0]]})
    assert wrong_width.status_code == 400
    unknown = same_answer(stack, "POST", "/v1/models/nope:predict", json={"instances": rows(1)})
    assert unknown.status_code == 404 and "error" in unknown.json()
    missing_version = same_answer(stack, "POST", predict_path("/versions/99"), json={"instances": rows(1)})
    assert missing_version.status_code == 404
    assert same_answer(stack, "GET", "/v2/nothing/here").status_code == 404
    assert_nothing_more_logged(stack, before)


def test_unreachable_upstream_is_a_503_in_tf_servings_shape(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with run_proxy(dead, tmp_path) as url:
        answer = httpx.post(f"{url}{predict_path('')}", json={"instances": rows(1)}, timeout=30)
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/json"
    (message,) = answer.json().values()
    assert list(answer.json()) == ["error"] and "cannot be reached" in message and dead in message


def test_a_full_log_queue_never_fails_a_request(stack: Stack, tmp_path: Path) -> None:
    import uvicorn

    settings = LoggerSettings(upstream=stack.upstream.url, predlog_root=tmp_path, predlog_sample_rate=1.0)
    request_log = create_request_log(dataclasses.replace(settings, predlog_queue_size=1))
    request_log.start = lambda: None  # type: ignore[method-assign]  # no worker: the queue only fills
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, request_log), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the request logger did not start"
            time.sleep(0.05)
        sent = rows(1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as proxy, stack.direct() as direct:
            expected = direct.post(predict_path("/versions/2"), json={"instances": sent}).content
            for _ in range(3):
                answer = proxy.post(predict_path("/versions/2"), json={"instances": sent})
                assert answer.status_code == 200 and answer.content == expected
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert request_log.dropped == 2


# --------------------------------------------------------------------------- the drift step's view


def test_the_drift_step_reads_the_proxys_log_as_the_servers(stack: Stack) -> None:
    """The same calls, logged by the proxy and by the server behind it, are the same window for the drift step."""
    start = dt.datetime.now(dt.UTC)
    sent = {address: rows(4) for address in ("/labels/stable", "/versions/2", "")}
    with stack.proxy() as proxy:
        for address, batch in sent.items():
            assert proxy.post(predict_path(address), json={"instances": batch}).status_code == 200
    for batch in sent.values():
        for root in (stack.proxy_log, stack.server_log):
            assert len(logged(root, batch[0][0], expected=4)) == 4
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    windows = [read_window(root, MODEL, N_FEATURES, start, end) for root in (stack.proxy_log, stack.server_log)]
    by_proxy, by_server = (
        {(int(v), tuple(r.tolist())) for v, r in zip(w.versions, w.rows, strict=True)} for w in windows
    )
    assert by_proxy == by_server and len(by_proxy) == 12
    assert {v for v, _ in by_proxy} == {1, 2, 3}
    assert windows[0].problems == windows[1].problems == []
