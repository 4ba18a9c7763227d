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
from include.mlops.serving.metrics import (
    METRICS_PATH,
    ROUTE_LATENCY,
    ROUTE_NONFINITE_ROWS,
    ROUTE_PREDICTION_ROWS,
    ROUTE_PREDICTION_VALUE_SQUARES,
    ROUTE_PREDICTION_VALUE_SUM,
    ROUTE_REQUESTS,
    UNKNOWN_MODEL,
)
from include.mlops.serving.models import TFSERVING_BEHAVIOUR
from include.mlops.serving.predlog import read_prediction_log
from include.mlops.serving.proxy_log import decode_body, rows_of
from include.mlops.serving.proxy_metrics import merged_exposition
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


# --------------------------------------------------------------------------- the route series, per track
#
# Two request loggers in front of one local server as TF Serving, as the two Deployments of serving/canary read
# one models.config: the stable pod's (--track stable, the default) and the canary pod's (--track canary), whose
# requests the gateway has rewritten to labels/canary.  Version 1 (stable) answers sum(x); version 2 (canary)
# answers the same except NaN for rows whose first feature is above NAN_ABOVE.

NAN_ABOVE = 1000.0
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Pair:
    upstream: RunningServer
    stable_url: str
    canary_url: str


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, saved_models: dict[float, Path]) -> Iterator[Pair]:
    from tests.model_factory import make_misbehaving_model

    base = tmp_path_factory.mktemp("request-logger-tracks")
    registry = Registry(base / "artifacts" / "models")
    register(registry, saved_models[1.0], run="stable")
    register(registry, make_misbehaving_model(base / "nan", N_FEATURES, fault="nan", threshold=NAN_ABOVE), run="nan")
    registry.set_label(MODEL, "stable", 1)
    registry.set_label(MODEL, "canary", 2)
    settings = ServerSettings(registry_root=registry.root, predlog_root=base / "server-log", predlog_sample_rate=0.0)
    with serve_as_configured(behaviour_settings(settings, TFSERVING_BEHAVIOUR)) as upstream:
        with (
            run_proxy(upstream.url, base / "stable-log") as stable,
            run_proxy(upstream.url, base / "canary-log", "--track", "canary") as canary,
        ):
            yield Pair(upstream, stable, canary)


def scrape(url: str) -> Series:
    """The logger's metrics page as one exposition: every family once, every sample by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    page = httpx.get(f"{url}{METRICS_PATH}", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(page.text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"a family appears twice: {sorted(n for n in names if names.count(n) > 1)}"
    return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}


def value(series: Series, name: str, track: str, model: str = MODEL, **labels: str) -> float:
    key = frozenset({"model_name": model, "track": track, **labels}.items())
    # prometheus_client's parser names a counter's samples <name>_total even where the page does not.
    return series.get((name, key), series.get((f"{name}_total", key), 0.0))


def send(url: str, address: str, batches: list[list[list[float]]], model: str = MODEL) -> list[int]:
    with httpx.Client(base_url=url, timeout=30) as client:
        return [client.post(f"/v1/models/{model}{address}:predict", json={"instances": b}).status_code for b in batches]


@dataclass
class Expected:
    """What one track of one logger should add: requests by status, and the rows of the answers."""

    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    outputs: list[float] = dataclasses.field(default_factory=list)  # finite single-value outputs
    nonfinite: int = 0

    def add(self, status: str, batches: list[list[list[float]]], nan_above: float | None = None) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + len(batches)
        if status != "OK":
            return
        for row in (r for b in batches for r in b):
            if nan_above is not None and row[0] > nan_above:
                self.nonfinite += 1
            else:
                self.outputs.append(float(sum(row)))


def assert_added(url: str, before: Series, expected: dict[str, Expected]) -> None:
    """The logger's series grew by ``expected`` per track (rows are counted off the request: wait for them)."""
    from tests.serving.conftest import wait_for

    def rows_in() -> bool:
        after = scrape(url)
        return all(
            value(after, ROUTE_PREDICTION_ROWS, t) - value(before, ROUTE_PREDICTION_ROWS, t) == len(e.outputs)
            and value(after, ROUTE_NONFINITE_ROWS, t) - value(before, ROUTE_NONFINITE_ROWS, t) == e.nonfinite
            for t, e in expected.items()
        )

    assert wait_for(rows_in, timeout=20)
    after = scrape(url)
    for track, e in expected.items():
        for status in {*e.statuses, "OK", "INVALID_ARGUMENT", "NOT_FOUND"}:
            added = value(after, ROUTE_REQUESTS, track, status=status) - value(
                before, ROUTE_REQUESTS, track, status=status
            )
            assert added == e.statuses.get(status, 0), (track, status)
        latency = f"{ROUTE_LATENCY}_count"
        assert value(after, latency, track) - value(before, latency, track) == e.statuses.get("OK", 0), track
        total = value(after, ROUTE_PREDICTION_VALUE_SUM, track) - value(before, ROUTE_PREDICTION_VALUE_SUM, track)
        squares = value(after, ROUTE_PREDICTION_VALUE_SQUARES, track) - value(
            before, ROUTE_PREDICTION_VALUE_SQUARES, track
        )
        assert total == pytest.approx(sum(e.outputs), rel=1e-5)
        assert squares == pytest.approx(sum(o * o for o in e.outputs), rel=1e-5)


def batches(count: int, n: int = 2, first: float | None = None) -> list[list[list[float]]]:
    made = [rows(n) for _ in range(count)]
    if first is not None:
        for batch in made:
            batch[0][0] = first
    return made


def test_the_stable_pods_logger_counts_each_request_on_the_track_its_path_names(pair: Pair) -> None:
    before = scrape(pair.stable_url)
    stable, canary = Expected(), Expected()
    sent = batches(3)
    assert send(pair.stable_url, "/labels/stable", sent) == [200] * 3
    stable.add("OK", sent)
    sent = batches(2, first=NAN_ABOVE + 1)  # the canary version answers NaN for these rows' first row
    assert send(pair.stable_url, "/labels/canary", sent) == [200] * 2
    canary.add("OK", sent, nan_above=NAN_ABOVE)
    sent = batches(2)
    assert send(pair.stable_url, "", sent) == [200] * 2  # unlabeled: this pod's track, stable
    stable.add("OK", sent, nan_above=NAN_ABOVE)  # TF Serving answers from the highest version (the canary's)
    assert send(pair.stable_url, "/versions/1", batches(2)) == [200] * 2  # a version number: not counted
    assert send(pair.stable_url, "/labels/next", batches(1)) != [200]  # another label (unknown here): not counted
    wrong_width = [[[1.0, 2.0]]]
    assert send(pair.stable_url, "/labels/stable", wrong_width) == [400]
    stable.add("INVALID_ARGUMENT", wrong_width)
    assert_added(pair.stable_url, before, {"stable": stable, "canary": canary})
    # A model no answer has named: its 404 is counted under <unknown>, minting no series of its own.
    assert send(pair.stable_url, "/labels/stable", batches(1), model="nope") == [404]
    after = scrape(pair.stable_url)
    assert value(after, ROUTE_REQUESTS, "stable", model=UNKNOWN_MODEL, status="NOT_FOUND") >= 1
    assert not any(dict(labels).get("model_name") == "nope" for _, labels in after)


def test_the_canary_pods_logger_counts_unlabeled_requests_as_canary(pair: Pair) -> None:
    before = scrape(pair.canary_url)
    stable, canary = Expected(), Expected()
    sent = batches(3, n=3, first=NAN_ABOVE + 5)
    assert send(pair.canary_url, "/labels/canary", sent) == [200] * 3  # as the gateway rewrites them
    canary.add("OK", sent, nan_above=NAN_ABOVE)
    sent = batches(2)
    assert send(pair.canary_url, "", sent) == [200] * 2
    canary.add("OK", sent, nan_above=NAN_ABOVE)
    sent = batches(1)
    assert send(pair.canary_url, "/labels/stable", sent) == [200]  # the path's label wins over the pod's track
    stable.add("OK", sent)
    assert_added(pair.canary_url, before, {"stable": stable, "canary": canary})
    assert canary.nonfinite == 3


def test_the_metrics_page_is_tf_servings_then_the_loggers_own(pair: Pair) -> None:
    """One exposition: TF Serving's families and the route series, each once (the local server as TF Serving
    exports mlops_route_* too; the logger's replace them)."""
    page = httpx.get(f"{pair.stable_url}{METRICS_PATH}", timeout=30).text
    series = scrape(pair.stable_url)
    assert any(name.startswith(":tensorflow:serving:request_count") for name, _ in series)
    assert any(name == ROUTE_REQUESTS for name, _ in series)
    assert page.index(":tensorflow:serving:request_count") < page.index(ROUTE_REQUESTS)
    assert page.count(f"# TYPE {ROUTE_LATENCY} histogram") == 1


def test_with_tf_serving_down_the_page_has_the_loggers_series_and_says_why(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with run_proxy(dead, tmp_path, "--track", "canary") as url:
        assert httpx.post(f"{url}{predict_path('')}", json={"instances": rows(1)}, timeout=30).status_code == 503
        page = httpx.get(f"{url}{METRICS_PATH}", timeout=30)
        series = scrape(url)
    assert page.status_code == 200
    assert page.text.startswith("# The model server's metrics could not be read:") and dead in page.text
    assert value(series, ROUTE_REQUESTS, "canary", status="UNAVAILABLE") == 1


def test_merged_exposition_leaves_out_the_upstreams_route_series() -> None:
    upstream = (
        b"# TYPE :tensorflow:serving:request_count counter\n"
        b':tensorflow:serving:request_count{model_name="m",status="OK"} 3\n'
        b"# HELP mlops_route_requests_total theirs\n# TYPE mlops_route_requests_total counter\n"
        b'mlops_route_requests_total{model_name="m",track="stable",status="OK"} 9'
    )
    own = b'# TYPE mlops_route_requests_total counter\nmlops_route_requests_total{model_name="m"} 1.0\n'
    merged = merged_exposition(upstream, None, own)
    assert merged == upstream.split(b"# HELP mlops_route")[0] + own


@pytest.mark.slow
def test_measure_canary_reads_both_tracks_from_a_prometheus_scraping_the_two_loggers(
    pair: Pair, tmp_path: Path
) -> None:
    """The canary analysis with TF Serving's semantics: a real Prometheus scrapes the stable and the canary pod's
    loggers as the ServiceMonitor does, and measure_canary gets figures for both tracks (the canary's NaN rows
    among its errors)."""
    from prometheus_stack import prometheus_stack

    from include.mlops.deploy.canary_metrics import SMD, measure_canary

    targets = [url.removeprefix("http://") for url in (pair.stable_url, pair.canary_url)]
    with prometheus_stack(tmp_path / "prometheus", model_servers=targets) as prometheus:
        prometheus.wait_for_targets_up()
        time.sleep(3)  # a few scrapes of the starting values
        for _ in range(6):
            assert send(pair.stable_url, "/labels/stable", batches(4)) == [200] * 4
            canary = batches(2, first=NAN_ABOVE + 1) + batches(2)
            assert send(pair.canary_url, "/labels/canary", canary) == [200] * 4
            time.sleep(0.5)
        time.sleep(3)
        measured = measure_canary(prometheus.url, MODEL, weight=50, interval_s=15)
    assert measured.unavailable is None and measured.stable is not None and measured.canary is not None
    assert measured.stable.requests > 0 and measured.canary.requests > 0
    assert measured.stable.errors == 0 and measured.canary.errors > 0  # the canary's NaN rows
    assert measured.stable.p95_ms > 0 and measured.canary.p95_ms > 0
    assert measured.distance_method == SMD and measured.distance is not None, measured.problems
