"""The local model server over real HTTP: TF Serving's REST shapes, bad input, hot label switches, metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from model_factory import make_saved_model
from prometheus_client.parser import text_string_to_metric_families

from include.mlops.registry.filesystem import Registry
from include.mlops.serving import app as app_module
from include.mlops.serving.loaders import LoadedVersion, load_version
from include.mlops.serving.metrics import INITIAL_STATUSES, LATENCY_BUCKETS_US, UNKNOWN_MODEL
from include.mlops.serving.models import ModelManager
from include.mlops.serving.predlog import read_prediction_log
from include.mlops.serving.workers import InlineGate
from tests.serving.conftest import MODEL, N_FEATURES, RunningServer, corrupt_weights, register, wait_for

pytestmark = pytest.mark.slow  # every test here starts a real server on real SavedModels

ROW = [1.0] * N_FEATURES  # sum 10: version v answers 10 * v


def ok_status(version: int) -> dict[str, object]:
    return {"version": str(version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


def served_value(client: httpx.Client, path: str = f"/v1/models/{MODEL}/labels/stable:predict") -> float:
    response = client.post(path, json={"instances": [ROW]})
    assert response.status_code == 200, response.text
    return float(response.json()["predictions"][0][0])


def assert_still_serving(client: httpx.Client) -> None:
    assert served_value(client) == pytest.approx(10.0)


# --------------------------------------------------------------------------- the documented API


def test_status_metadata_and_predict_match_tf_serving_shapes(running: RunningServer) -> None:
    with running.client() as client:
        # Only the labelled version is loaded: set_label writes a specific policy of the labelled versions.
        assert client.get(f"/v1/models/{MODEL}").json() == {"model_version_status": [ok_status(1)]}
        assert client.get(f"/v1/models/{MODEL}/versions/1").json() == {"model_version_status": [ok_status(1)]}
        assert client.get(f"/v1/models/{MODEL}/labels/stable").json() == {"model_version_status": [ok_status(1)]}
        response = client.get(f"/V1/MODELS/{MODEL}/labels/stable")  # TF Serving's routes are case-insensitive
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"

        metadata = client.get(f"/v1/models/{MODEL}/labels/stable/metadata").json()
        assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["method_name"] == "tensorflow/serving/predict"
        assert signature["inputs"]["inputs"]["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in signature["inputs"]["inputs"]["tensor_shape"]["dim"]] == ["-1", str(N_FEATURES)]
        assert list(signature["outputs"]) == ["outputs"]

        rows = {"instances": [ROW, [2.0] * N_FEATURES]}
        assert client.post(f"/v1/models/{MODEL}:predict", json=rows).json() == {"predictions": [[10.0], [20.0]]}
        assert client.post(f"/v1/models/{MODEL}/versions/1:predict", json=rows).json()["predictions"] == [
            [10.0],
            [20.0],
        ]
        columnar = client.post(f"/v1/models/{MODEL}/labels/stable:predict", json={"inputs": [ROW]})
        assert columnar.json() == {"outputs": [[10.0]]}
        named = {"signature_name": "serving_default", "inputs": {"inputs": [ROW]}}
        assert client.post(f"/v1/models/{MODEL}:predict", json=named).json() == {"outputs": [[10.0]]}
        as_objects = {"instances": [{"inputs": ROW}]}
        assert client.post(f"/v1/models/{MODEL}:predict", json=as_objects).json() == {"predictions": [[10.0]]}


# Errors raised inside TensorFlow's kernels are worded by the kernel that runs, and TensorFlow picks the kernel
# by CPU: oneDNN's MatMul where oneDNN is on (the default on CPUs with AVX-512, or TF_ENABLE_ONEDNN_OPTS=1), Eigen's
# elsewhere (TF_ENABLE_ONEDNN_OPTS=0, or an AMD CPU without AVX-512).  The server passes the op's message on as TF
# Serving does, so these cases accept what either kernel says.  The server's own words are asserted exactly.
class KernelWords(tuple[str, ...]):
    """Alternative wordings of one kernel error: the error must contain one of them."""


# A batch of rank 3, or an empty columnar batch (rank 1), reaching the Dense layer's MatMul.
MATMUL_RANK = KernelWords(("ndims must be >= 2", "has different ndims"))  # oneDNN, Eigen
# A row of the wrong width: both kernels say it the same way today.
MATMUL_WIDTH = KernelWords(("Matrix size-incompatible",))  # oneDNN and Eigen

BAD_REQUESTS = [
    pytest.param(b"{not json", 400, "JSON Parse error", id="malformed-json"),
    pytest.param(b"[1, 2]", 400, "JSON Value: [1,2] Is not object", id="not-an-object"),
    pytest.param(
        b'{"instances": [[1,1,1,1,1,1,1,1,1,1]], "inputs": [[1,1,1,1,1,1,1,1,1,1]]}', 400, "only one of", id="both"
    ),
    pytest.param(b'{"signature_name": "serving_default"}', 400, "Missing 'inputs' or 'instances'", id="neither"),
    pytest.param(b'{"instances": [[1, 2, 3]]}', 400, MATMUL_WIDTH, id="wrong-width"),
    pytest.param(b'{"instances": [[[1,1,1,1,1,1,1,1,1,1]]]}', 400, MATMUL_RANK, id="wrong-rank"),
    pytest.param(
        b'{"instances": [[1,1,1,1,1,1,1,1,1,1], [1, 2]]}', 400, "Expecting tensor size: 10 but got: 2", id="ragged"
    ),
    pytest.param(
        b'{"instances": [["a","b","c","d","e","f","g","h","i","j"]]}',
        400,
        "is not of expected type: float",
        id="strings",
    ),
    pytest.param(
        b'{"instances": [[1,1,1,1,1,"1",1,1,1,1]]}',
        400,
        'JSON Value: "1" Type: String is not of expected type: float',
        id="string-among-numbers",
    ),
    pytest.param(
        b'{"instances": [[true,1,1,1,1,1,1,1,1,1]]}',
        400,
        "JSON Value: true Type: True is not of expected type",
        id="booleans",
    ),
    pytest.param(b'{"instances": []}', 400, "No values in 'instances' array", id="empty-batch"),
    pytest.param(b'{"inputs": []}', 400, MATMUL_RANK, id="empty-columnar"),  # the model's own error
    pytest.param(
        b'{"instances": {"inputs": 1}}', 400, "Expecting 'instances' to be an list/array", id="instances-not-a-list"
    ),
    pytest.param(
        b'{"signature_name": "nope", "instances": [[1,1,1,1,1,1,1,1,1,1]]}', 400, '"nope" not found', id="signature"
    ),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_REQUESTS)
def test_bad_predict_requests_get_a_tf_serving_error_and_the_server_keeps_serving(
    running: RunningServer, body: bytes, status: int, message: str | KernelWords
) -> None:
    with running.client() as client:
        response = client.post(
            f"/v1/models/{MODEL}/labels/stable:predict", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == status
        assert set(response.json()) == {"error"}
        error = response.json()["error"]
        if isinstance(message, KernelWords):
            assert any(words in error for words in message), error
            # What the server adds to a kernel's error: nothing.  It drops eager TF's preamble and op suffix, and
            # sends the op's message as TF Serving does.
            assert not error.startswith(("Graph execution error", "Detected at node", "{{function_node")), error
            assert "[Op:" not in error and "Traceback" not in error, error
        else:
            assert message in error, error
        assert_still_serving(client)


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/v1/models/nope", "Could not find any versions of model nope"),
        ("GET", f"/v1/models/{MODEL}/versions/9", "Could not find version 9"),
        ("GET", f"/v1/models/{MODEL}/versions/9/metadata", "Servable not found"),
        ("POST", "/v1/models/nope:predict", "Servable not found"),
        ("POST", f"/v1/models/{MODEL}/versions/2:predict", "Servable not found"),  # registered, not loaded
    ],
)
def test_unknown_models_and_versions_are_404(running: RunningServer, method: str, path: str, message: str) -> None:
    with running.client() as client:
        response = client.request(method, path, json={"instances": [ROW]} if method == "POST" else None)
        assert response.status_code == 404
        assert message in response.json()["error"]
        assert_still_serving(client)


def test_oversized_body_is_413_and_the_server_keeps_serving(running: RunningServer) -> None:
    limit = running.settings.max_body_bytes
    rows = [ROW] * (limit // 40 + 1)  # each row is ~40 bytes of JSON
    with running.client() as client:
        response = client.post(f"/v1/models/{MODEL}:predict", json={"instances": rows})
        assert response.status_code == 413
        assert f"limit of {limit} bytes" in response.json()["error"]
        # Chunked upload with no Content-Length: cut off while streaming.
        chunked = client.post(
            f"/v1/models/{MODEL}:predict", content=iter([b'{"instances": [', b"[1,1,1,1,1,1,1,1,1,1]," * 4000, b"]}"])
        )
        assert chunked.status_code == 413
        assert_still_serving(client)


def test_a_client_disconnecting_mid_request_does_not_affect_others(running: RunningServer) -> None:
    address = urlparse(running.url)
    for _ in range(3):
        with socket.create_connection((address.hostname, address.port)) as sock:
            sock.sendall(
                f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 5000\r\n\r\n".encode()
                + b'{"instances": [[1,1,'
            )
        # ... and one that sends a whole request but leaves before reading the answer.
        with socket.create_connection((address.hostname, address.port)) as sock:
            body = b'{"instances": [[1,1,1,1,1,1,1,1,1,1]]}'
            sock.sendall(
                f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
    with running.client() as client:
        for _ in range(5):
            assert_still_serving(client)
        assert client.get(f"/v1/models/{MODEL}").status_code == 200


# --------------------------------------------------------------------------- hot swap


def test_label_switches_under_continuous_load_lose_no_request(running: RunningServer, registry: Registry) -> None:
    """Clients hammer the stable label while it flips 1 -> 2 -> 3 -> 1; every response is 200 and right."""
    stop = threading.Event()
    failures: list[str] = []
    answers: list[float] = []

    def client_loop() -> None:
        with running.client() as client:
            while not stop.is_set():
                try:
                    response = client.post(f"/v1/models/{MODEL}/labels/stable:predict", json={"instances": [ROW]})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    answers.append(response.json()["predictions"][0][0])

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        with running.client() as client:
            for version in (2, 3, 1, 2):
                registry.set_label(MODEL, "stable", version)
                assert wait_for(lambda v=version: served_value(client) == pytest.approx(10.0 * v), timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert len(answers) > 20
    assert set(answers) <= {10.0, 20.0, 30.0} and {20.0, 30.0} <= set(answers)


def test_a_corrupt_version_is_refused_and_the_previous_keeps_serving(
    running: RunningServer, registry: Registry
) -> None:
    corrupt_weights(registry.version_dir(MODEL, 2))
    registry.set_label(MODEL, "stable", 2)
    with running.client() as client:

        def version_2_status() -> dict[str, object] | None:
            response = client.get(f"/v1/models/{MODEL}/versions/2")
            return response.json()["model_version_status"][0] if response.status_code == 200 else None

        assert wait_for(lambda: version_2_status() is not None, timeout=30)
        status = version_2_status()
        assert status is not None and status["state"] == "END"
        assert status["status"]["error_code"] == "DATA_LOSS"  # type: ignore[index]
        assert "corrupt" in status["status"]["error_message"]  # type: ignore[index]
        # The label stays on version 1, which keeps answering.
        assert client.get(f"/v1/models/{MODEL}/labels/stable").json() == {"model_version_status": [ok_status(1)]}
        for _ in range(5):
            assert_still_serving(client)
        # Fixing the config (label back to 1) keeps serving; a good new version then loads.
        registry.set_label(MODEL, "stable", 3)
        assert wait_for(lambda: served_value(client) == pytest.approx(30.0), timeout=60)


def test_new_latest_version_is_picked_up_under_a_latest_policy(
    tmp_path: Path, saved_models: dict[float, Path], start_server, settings
) -> None:  # type: ignore[no-untyped-def]
    """Without labels TF Serving serves the latest version; a new version appears without a restart."""
    reg = Registry(tmp_path / "latest" / "models")
    register(reg, saved_models[1.0], run="a")
    reg.config_path.write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: "/models/{MODEL}" }} }}\n')
    with start_server(settings, registry_root=reg.root) as running, running.client() as client:
        assert served_value(client, f"/v1/models/{MODEL}:predict") == pytest.approx(10.0)
        register(reg, saved_models[2.0], run="b")
        assert wait_for(lambda: served_value(client, f"/v1/models/{MODEL}:predict") == pytest.approx(20.0))
        statuses = client.get(f"/v1/models/{MODEL}").json()["model_version_status"]
        assert statuses[0]["version"] == "2"


# --------------------------------------------------------------------------- metrics and prediction log


def test_metrics_carry_tf_serving_names_and_labels(running: RunningServer) -> None:
    with running.client() as client:
        for _ in range(3):
            assert_still_serving(client)
        client.post(f"/v1/models/{MODEL}:predict", json={"instances": []})
        client.get(f"/v1/models/{MODEL}/metadata")
        response = client.get("/monitoring/prometheus/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE :tensorflow:serving:request_count counter\n" in text  # TF Serving's header, no _total
    assert f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}} 3.0' in text
    families = {family.name: family for family in text_string_to_metric_families(text)}

    def samples(name: str, suffix: str = "", **labels: str) -> list[float]:
        return [
            s.value
            for s in families[name].samples
            if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    counts = families[":tensorflow:serving:request_count"]
    assert counts.type == "counter"
    assert samples(":tensorflow:serving:request_count", "_total", model_name=MODEL, status="OK") == [3.0]
    assert samples(":tensorflow:serving:request_count", "_total", model_name=MODEL, status="INVALID_ARGUMENT") == [1.0]

    latency = families[":tensorflow:serving:request_latency"]
    assert latency.type == "histogram"
    predict = {"model_name": MODEL, "API": "Predict", "entrypoint": "REST"}
    assert samples(latency.name, "_count", **predict) == [3.0]
    buckets = [s for s in latency.samples if s.name.endswith("_bucket") and s.labels["API"] == "Predict"]
    assert len(buckets) == len(LATENCY_BUCKETS_US) + 1 and buckets[-1].labels["le"] == "+Inf"
    assert samples(latency.name, "_count", model_name=MODEL, API="GetModelMetadata", entrypoint="REST") == [1.0]
    assert samples(":tensorflow:serving:runtime_latency", "_count", model_name=MODEL, API="Predict", runtime="TF1")

    loads = families[":tensorflow:cc:saved_model:load_attempt_count"]
    (load,) = [s for s in loads.samples if s.labels["status"] == "success"]
    assert load.value == 1.0 and load.labels["model_path"].endswith(f"{MODEL}/1")
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert "error" not in (check.stdout + check.stderr).lower(), check.stdout + check.stderr


def test_predictions_are_logged_to_parquet_off_the_request_path(running: RunningServer) -> None:
    with running.client() as client:
        for value in (1.0, 2.0):
            client.post(f"/v1/models/{MODEL}/labels/stable:predict", json={"instances": [[value] * N_FEATURES] * 2})
    predlog = running.server.predlog
    assert predlog is not None and predlog.flush()
    root = running.settings.predlog_root
    assert root is not None
    frame = read_prediction_log(root, MODEL)
    assert len(frame) == 4
    assert frame["model_version"].tolist() == [1, 1, 1, 1]
    assert frame["version_label"].tolist() == ["stable"] * 4
    assert [list(x) for x in frame["inputs"]] == [[1.0] * N_FEATURES] * 2 + [[2.0] * N_FEATURES] * 2
    assert [list(x) for x in frame["outputs"]] == [[10.0], [10.0], [20.0], [20.0]]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert all(p.parent == root / "predictions" / MODEL for p in (root / "predictions").rglob("*.parquet"))


# --------------------------------------------------------------------------- hardening


def test_a_config_write_during_a_slow_load_is_applied_by_the_next_poll(registry: Registry) -> None:
    """A label move written while the server is still loading must not be taken as already seen."""
    moved_during_load = threading.Event()

    def load_while_a_deploy_moves_the_label(name: str, version: int, path: Path) -> LoadedVersion:
        if not moved_during_load.is_set():
            moved_during_load.set()
            registry.set_label(MODEL, "stable", 2)  # lands between the config read and the end of the load
        return load_version(name, version, path)

    manager = ModelManager(registry.root, poll_seconds=0.05, loader=load_while_a_deploy_moves_the_label)
    manager.start()
    try:
        assert moved_during_load.is_set()
        assert manager.state.model(MODEL).labels["stable"] == 1  # the first load applied what it read
        assert wait_for(lambda: manager.state.model(MODEL).labels.get("stable") == 2, timeout=10), (
            "the label move written during the load was never applied"
        )
        assert manager.state.resolve(MODEL, label="stable").run("serving_default", {"inputs": _rows(1)})[
            "outputs"
        ].tolist() == [[20.0]]
    finally:
        manager.stop()


def _rows(count: int) -> object:
    import numpy as np

    return np.ones((count, N_FEATURES), dtype="float32")


def test_unknown_model_names_count_under_one_fixed_label(running: RunningServer) -> None:
    with running.client() as client:
        for name in ("typo-1", "typo-2", "typo-3"):
            assert client.post(f"/v1/models/{name}:predict", json={"instances": [ROW]}).status_code == 404
        client.post(f"/v1/models/{MODEL}/versions/9:predict", json={"instances": [ROW]})  # known model, no version
        text = client.get("/monitoring/prometheus/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == ":tensorflow:serving:request_count"]
    counts = {(s.labels["model_name"], s.labels["status"]): s.value for s in family.samples}
    assert {key: value for key, value in counts.items() if value} == {
        (UNKNOWN_MODEL, "NOT_FOUND"): 3.0,
        (MODEL, "NOT_FOUND"): 1.0,
    }
    assert "typo" not in text


def test_a_served_models_request_counts_start_at_zero(running: RunningServer) -> None:
    # Prometheus's increase() loses a series' first sample: errors whose series first appears after
    # a burst would never count against the SLO, so every status the server answers starts at 0.
    with running.client() as client:
        text = client.get("/monitoring/prometheus/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == ":tensorflow:serving:request_count"]
    counts = {s.labels["status"]: s.value for s in family.samples if s.labels["model_name"] == MODEL}
    assert set(INITIAL_STATUSES) <= set(counts), counts
    (latency,) = [f for f in text_string_to_metric_families(text) if f.name == ":tensorflow:serving:request_latency"]
    assert any(s.labels.get("model_name") == MODEL and s.labels.get("API") == "Predict" for s in latency.samples)


def test_deeply_nested_json_is_a_400_in_tf_serving_shape(running: RunningServer) -> None:
    depth = 20_000  # 40 KB: under the test server's body limit, far over the JSON parser's recursion limit
    body = b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"
    with running.client() as client:
        response = client.post(f"/v1/models/{MODEL}:predict", content=body)
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"} and "too deeply" in response.json()["error"]
        assert_still_serving(client)


def record_where_bodies_are_parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap the real parser to record where each predict body is parsed: on the event loop or in a worker thread."""
    where: list[str] = []
    parse = app_module.parse_predict_request

    def recording_parse(body: bytes, loaded: LoadedVersion) -> object:
        try:
            asyncio.get_running_loop()
            where.append("event loop")
        except RuntimeError:  # no running loop: a worker thread
            where.append("worker thread")
        return parse(body, loaded)

    monkeypatch.setattr(app_module, "parse_predict_request", recording_parse)
    return where


def test_small_predicts_move_to_the_event_loop_once_the_version_is_timed_quick_and_big_bodies_never_do(
    running: RunningServer, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version's first small predicts, and every big body, are parsed in a worker thread.

    The gate's time limit is lifted here, so that which calls count as quick does not depend on the machine.
    """
    where = record_where_bodies_are_parsed(monkeypatch)
    gate = InlineGate(max_micros=float("inf"))
    monkeypatch.setattr(running.server, "inline", gate)
    big = {"instances": [ROW] * 400}  # about 13 KB: over the gate's body limit, within the test server's
    assert len(json.dumps(big)) > gate.max_body_bytes
    with running.client() as client:
        for _ in range(gate.after):
            assert_still_serving(client)
        assert where == ["worker thread"] * gate.after
        assert_still_serving(client)
        assert served_value(client, f"/v1/models/{MODEL}:predict") == pytest.approx(10.0)
        assert where[gate.after :] == ["event loop", "event loop"]
        response = client.post(f"/v1/models/{MODEL}/labels/stable:predict", json=big)
        assert response.status_code == 200 and response.json()["predictions"] == [[10.0]] * 400
        assert where[-1] == "worker thread"
        # A version loaded later is timed afresh: its first small predicts go to a worker thread again.
        registry.preload(MODEL, 2)
        assert wait_for(lambda: client.get(f"/v1/models/{MODEL}/versions/2").status_code == 200, timeout=60)
        assert served_value(client, f"/v1/models/{MODEL}/versions/2:predict") == pytest.approx(20.0)
        assert where[-1] == "worker thread"
        assert_still_serving(client)
        assert where[-1] == "event loop"


def test_a_small_predict_to_a_version_busy_in_a_worker_thread_does_not_wait_on_the_event_loop(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that takes one call at a time (as a TFLite interpreter does) and a big call holding it: a small
    call to the same version then waits in a worker thread, and status requests are answered meanwhile."""
    where = record_where_bodies_are_parsed(monkeypatch)
    gate = InlineGate(max_micros=float("inf"))
    monkeypatch.setattr(running.server, "inline", gate)
    big = {"instances": [ROW] * 400}
    with running.client() as client:
        for _ in range(gate.after):
            assert_still_serving(client)  # from now on small predicts to this version may run inline
        loaded = running.server.models.state.resolve(MODEL, None, "stable")
        one_at_a_time, big_running, small_waiting, release = (threading.Lock(), *(threading.Event() for _ in "abc"))
        run = loaded.runner

        def serialised_run(signature: str, feeds: dict[str, object]) -> dict[str, object]:
            (big_running if len(feeds["inputs"]) > 1 else small_waiting).set()  # type: ignore[arg-type]
            with one_at_a_time:
                if len(feeds["inputs"]) > 1:  # type: ignore[arg-type]
                    release.wait(30)
                return run(signature, feeds)

        monkeypatch.setattr(loaded, "runner", serialised_run)
        answers: list[int] = []

        def post(body: object) -> None:
            with running.client() as other:
                answers.append(other.post(f"/v1/models/{MODEL}/labels/stable:predict", json=body).status_code)

        threads = [threading.Thread(target=post, args=(big,))]
        threads[0].start()
        assert big_running.wait(30)
        threads.append(threading.Thread(target=post, args=({"instances": [ROW]},)))
        threads[1].start()
        try:
            assert small_waiting.wait(30)
            assert client.get(f"/v1/models/{MODEL}", timeout=10).status_code == 200  # the event loop is free
        finally:
            release.set()
            for thread in threads:
                thread.join(timeout=30)
    assert answers == [200, 200]
    assert where[-2:] == ["worker thread", "worker thread"]


def test_a_version_loaded_later_is_read_with_its_own_signature(
    running: RunningServer, registry: Registry, tmp_path: Path
) -> None:
    """What the server works out once per version (the input names and dtypes) follows the version."""
    renamed = make_saved_model(tmp_path / "renamed", N_FEATURES, scale=4.0, input_name="features")
    version = register(registry, renamed, run="run-renamed")
    path = f"/v1/models/{MODEL}/labels/stable:predict"
    named = {"instances": [{"inputs": ROW}]}
    with running.client() as client:
        assert client.post(path, json=named).json() == {"predictions": [[10.0]]}
        registry.set_label(MODEL, "stable", version)
        assert wait_for(lambda: client.post(path, json={"instances": [{"features": ROW}]}).status_code == 200)
        assert client.post(path, json={"instances": [{"features": ROW}]}).json() == {"predictions": [[40.0]]}
        refused = client.post(path, json=named)
        assert refused.status_code == 400 and "does not have named input: inputs" in refused.json()["error"]


def test_predicts_to_a_slow_version_stay_in_worker_threads(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gate for which no call is quick enough stands for a slow model: its small predicts never run inline."""
    where = record_where_bodies_are_parsed(monkeypatch)
    gate = InlineGate(max_micros=0.0)
    monkeypatch.setattr(running.server, "inline", gate)
    with running.client() as client:
        for _ in range(gate.after + 5):
            assert_still_serving(client)
    assert where == ["worker thread"] * (gate.after + 5)


def test_label_less_requests_keep_the_stable_version_while_a_new_one_is_preloaded(
    running: RunningServer, registry: Registry
) -> None:
    """Deploy preloads a candidate before moving a label; clients without a label must not see it."""
    stop = threading.Event()
    failures: list[str] = []
    answers: list[float] = []
    after_preload: list[float] = []
    preloaded = threading.Event()

    def client_loop() -> None:
        with running.client() as client:
            while not stop.is_set():
                response = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [ROW]})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                value = response.json()["predictions"][0][0]
                answers.append(value)
                if preloaded.is_set():
                    after_preload.append(value)

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        with running.client() as client:
            registry.preload(MODEL, 3)
            assert wait_for(lambda: client.get(f"/v1/models/{MODEL}/versions/3").status_code == 200, timeout=60)
            preloaded.set()
            assert wait_for(lambda: len(after_preload) >= 30, timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert set(answers) == {10.0}, "a label-less request was answered by the preloaded, unverified version"
    with running.client() as client:
        # Version 3 is loaded and reachable by number; only the default route stays on stable.
        assert served_value(client, f"/v1/models/{MODEL}/versions/3:predict") == pytest.approx(30.0)
        assert client.get(f"/v1/models/{MODEL}/metadata").json()["model_spec"]["version"] == "1"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PUT", f"/v1/models/{MODEL}", 405),
        ("DELETE", f"/v1/models/{MODEL}/labels/stable", 405),
        ("PATCH", f"/v1/models/{MODEL}:predict", 405),
        ("TRACE", f"/v1/models/{MODEL}", 405),
        ("POST", "/monitoring/prometheus/metrics", 405),
        ("GET", "/", 404),
        ("GET", "/v1", 404),
        ("GET", "/nope", 404),
        ("GET", "/monitoring/prometheus/metrics/", 404),
        ("DELETE", "/nope/deeper", 404),
    ],
)
def test_unsupported_methods_are_405_and_unknown_paths_404_in_tf_serving_shape(
    running: RunningServer, method: str, path: str, status: int
) -> None:
    with running.client(follow_redirects=False) as client:
        response = client.request(method, path)
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"}, response.text
        assert path in response.json()["error"]
        if status == 405:
            assert method in response.json()["error"] and response.headers["allow"]
        assert_still_serving(client)


def test_an_unexpected_server_error_is_a_500_in_tf_serving_shape(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_status(name: str, version: int | None, label: str | None) -> str:
        raise KeyError("a bug in the status code")

    monkeypatch.setattr(running.server, "model_status", broken_status)
    with running.client() as client:
        response = client.get(f"/v1/models/{MODEL}")
        assert response.status_code == 500
        assert response.json() == {"error": "KeyError: 'a bug in the status code'"}
        assert_still_serving(client)
