"""The canary route of the local server: route.json's weight splits stable-addressed requests, counted per track.

Real servers over real HTTP on real SavedModels: ``diabetes`` versions 1, 2 and 3 answer ``sum(x) * v``, so
an answer says which version gave it (``stable`` -> 1, ``canary`` -> 2 here).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from model_factory import make_saved_model
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binom

from include.mlops.artifacts import atomic_write_text
from include.mlops.deploy.traffic_split import LocalRoute, RouteNotAppliedError
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.serving.canary_weights import ROUTE_FILE
from include.mlops.serving.metrics import (
    CANARY_WEIGHT,
    INITIAL_STATUSES,
    METRICS_PATH,
    ROUTE_LATENCY,
    ROUTE_NONFINITE_ROWS,
    ROUTE_PREDICTED_CLASS,
    ROUTE_PREDICTION_ROWS,
    ROUTE_PREDICTION_VALUE_SQUARES,
    ROUTE_PREDICTION_VALUE_SUM,
    ROUTE_REQUESTS,
    RowSummary,
)
from include.mlops.serving.models import TFSERVING_BEHAVIOUR
from include.mlops.serving.route import summarise_rows
from tests.serving.conftest import MODEL, N_FEATURES, RunningServer, register, serve, wait_for

pytestmark = pytest.mark.slow  # every test here starts a real server on real SavedModels

ROW = [1.0] * N_FEATURES  # sum 10: version v answers 10 * v
TRACKS = ("stable", "canary")
ROUTE_SERIES = (ROUTE_PREDICTION_VALUE_SUM, ROUTE_PREDICTION_VALUE_SQUARES, ROUTE_PREDICTION_ROWS, ROUTE_NONFINITE_ROWS)
CLASSES = "classes"  # a 4-class classifier: stable and canary differ in their weights
NAN = "nanny"  # stable answers sum(x), canary NaN


def path(model: str = MODEL, where: str = "/labels/stable", method: str = "predict") -> str:
    return f"/v1/models/{model}{where}:{method}"


STABLE = path()
IMPLICIT = path(where="")
CANARY = path(where="/labels/canary")


def answered_by(client: httpx.Client, request_path: str) -> int:
    """The version that answered one row (its answer is 10 * version)."""
    response = client.post(request_path, json={"instances": [ROW]})
    assert response.status_code == 200, response.text
    return round(response.json()["predictions"][0][0] / 10)


def answers(client: httpx.Client, request_path: str, count: int) -> Counter[int]:
    return Counter(answered_by(client, request_path) for _ in range(count))


def metrics(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (name, labels); a counter's name as the server writes it, without ``_total``."""
    text = client.get(METRICS_PATH).text
    return {
        (sample.name.removesuffix("_total") if family.type == "counter" else sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }  # fmt: skip


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name.removesuffix("_total"), frozenset(labels.items())))


def apply_weight(running: RunningServer, percent: int, model: str = MODEL) -> None:
    route = LocalRoute(running.settings.registry_root)
    route.set_canary_weight(model, percent)
    route.wait_applied(running.url, model, percent, timeout_s=30, steady_s=0.3)


@pytest.fixture
def with_canary(registry: Registry, settings: ServerSettings) -> ServerSettings:
    """The registry with ``canary`` -> 2 beside ``stable`` -> 1; the settings without a prediction log."""
    registry.set_label(MODEL, "canary", 2)
    return replace(settings, predlog_root=None)


@pytest.fixture
def canary_server(with_canary: ServerSettings) -> Iterator[RunningServer]:
    with serve(with_canary) as running:
        yield running


def test_weight_30_splits_stable_requests_within_a_binomial_band(canary_server: RunningServer) -> None:
    apply_weight(canary_server, 30)
    with canary_server.client() as client:
        seen = answers(client, STABLE, 200) + answers(client, IMPLICIT, 200)
    low, high = binom.interval(0.999, 400, 0.30)
    assert set(seen) <= {1, 2}
    assert low <= seen[2] <= high, (seen, low, high)


@pytest.mark.usefixtures("server_behaviour")
def test_weights_0_and_100_and_requests_that_are_never_rerouted(canary_server: RunningServer) -> None:
    tfserving = canary_server.settings.behaviour == TFSERVING_BEHAVIOUR
    with canary_server.client() as client:
        for percent, stable_answer in ((100, 2), (0, 1), (100, 2)):
            apply_weight(canary_server, percent)
            assert answers(client, STABLE, 20) == {stable_answer: 20}
            # TF Serving answers a request without version or label with the highest loaded version (2 here).
            assert answers(client, IMPLICIT, 20) == {2 if tfserving else stable_answer: 20}
            assert answers(client, CANARY, 10) == {2: 10}
            assert answers(client, path(where="/versions/1"), 10) == {1: 10}
            assert answers(client, path(where="/versions/2"), 10) == {2: 10}
            assert value(metrics(client), CANARY_WEIGHT, model_name=MODEL) == percent


def test_without_a_canary_label_the_weight_is_ignored(registry: Registry, settings: ServerSettings) -> None:
    LocalRoute(registry.root).set_canary_weight(MODEL, 100)
    with serve(replace(settings, predlog_root=None)) as running, running.client() as client:
        with pytest.raises(RouteNotAppliedError, match=r"100% for 'diabetes'.*last seen: 0.*'canary' label"):
            LocalRoute(registry.root).wait_applied(running.url, MODEL, 100, timeout_s=0.5, steady_s=0)
        assert answers(client, STABLE, 10) + answers(client, IMPLICIT, 10) == {1: 20}

        registry.set_label(MODEL, "canary", 3)
        LocalRoute(registry.root).wait_applied(running.url, MODEL, 100, timeout_s=30, steady_s=0.3)
        assert answers(client, STABLE, 10) == {3: 10}

        registry.remove_label(MODEL, "canary")
        LocalRoute(registry.root).wait_applied(running.url, MODEL, 0, timeout_s=30, steady_s=0.3)
        assert answers(client, STABLE, 10) == {1: 10}


def test_a_malformed_route_file_is_weight_0_and_the_server_keeps_serving(
    canary_server: RunningServer, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    apply_weight(canary_server, 100)
    route_file = registry.model_dir(MODEL) / ROUTE_FILE
    with canary_server.client() as client:
        for text in ('{"canary_weight": "100"}', "{not json", '{"canary_weight": 101}'):
            caplog.clear()
            atomic_write_text(route_file, text)
            LocalRoute(registry.root).wait_applied(canary_server.url, MODEL, 0, timeout_s=30, steady_s=0.5)
            assert answers(client, STABLE, 10) == {1: 10}
            warnings = [r for r in caplog.records if "canary route ignored" in r.getMessage()]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]  # logged once, not on every poll
        apply_weight(canary_server, 100)
        assert answers(client, STABLE, 10) == {2: 10}


# --------------------------------------------------------------------------- per-track metrics


@pytest.fixture(scope="module")
def route_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 4-class classifiers (random weights) and a model that answers NaN."""
    base = tmp_path_factory.mktemp("route-models")
    return {
        "classes-1": make_saved_model(base / "classes-1", N_FEATURES, 4, seed=1),
        "classes-2": make_saved_model(base / "classes-2", N_FEATURES, 4, seed=2),
        "nan": make_saved_model(base / "nan", N_FEATURES, scale=float("nan")),
    }


@pytest.fixture
def three_models(
    with_canary: ServerSettings, registry: Registry, route_models: dict[str, Path], saved_models: dict[float, Path]
) -> ServerSettings:
    """``diabetes`` plus ``classes`` (stable and canary: two classifiers) and ``nanny`` (canary answers NaN)."""
    models = {**route_models, "linear": saved_models[1.0]}
    for name, stable, canary in ((CLASSES, "classes-1", "classes-2"), (NAN, "linear", "nan")):
        register(registry, models[stable], f"{name}-1", name)
        register(registry, models[canary], f"{name}-2", name)
        registry.set_label(name, "stable", 1)
        registry.set_label(name, "canary", 2)
    return with_canary


def test_route_series_start_at_zero_for_both_tracks(three_models: ServerSettings, registry: Registry) -> None:
    with serve(three_models) as running, running.client() as client:
        samples = metrics(client)
        for model in (MODEL, CLASSES, NAN):
            assert value(samples, CANARY_WEIGHT, model_name=model) == 0
            for track in TRACKS:
                for status in INITIAL_STATUSES:
                    assert value(samples, ROUTE_REQUESTS, model_name=model, track=track, status=status) == 0
                assert value(samples, f"{ROUTE_LATENCY}_count", model_name=model, track=track) == 0
                for name in ROUTE_SERIES:
                    assert value(samples, name, model_name=model, track=track) == 0


def test_route_metrics_count_what_each_track_answered(three_models: ServerSettings) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, N_FEATURES)).tolist()
    with serve(three_models) as running, running.client() as client:
        for model, percent in ((MODEL, 50), (CLASSES, 50), (NAN, 100)):
            apply_weight(running, percent, model)
        ok: Counter[str] = Counter()
        values: dict[str, list[float]] = {track: [] for track in TRACKS}
        for request_path in [STABLE] * 40 + [IMPLICIT] * 40 + [CANARY] * 10 + [path(where="/versions/1")] * 10:
            response = client.post(request_path, json={"instances": [ROW, [2.0] * N_FEATURES]})
            answer = [row[0] for row in response.json()["predictions"]]
            track = "stable" if answer == [10.0, 20.0] else "canary"
            if "/versions/" not in request_path:  # a request addressed by version number is not counted
                ok[track] += 1
                values[track] += answer
        bad = [client.post(STABLE, json={"instances": [[1.0]]}).status_code for _ in range(5)]
        unknown_label = client.post(path(where="/labels/nope"), json={"instances": [ROW]}).status_code

        # What each version answers, asked by version number (not counted per track).
        classes = {
            t: client.post(path(CLASSES, f"/versions/{v}"), json={"instances": rows}).json()
            for v, t in ((1, "stable"), (2, "canary"))
        }
        argmax = {
            track: Counter(np.argmax(answer["predictions"], axis=1).tolist()) for track, answer in classes.items()
        }
        class_ok: Counter[str] = Counter()
        for _ in range(30):
            answer = client.post(path(CLASSES, ""), json={"instances": rows}).json()
            class_ok[next(t for t in TRACKS if answer == classes[t])] += 1
        nan_answers = [client.post(path(NAN), json={"instances": [ROW, ROW]}).json() for _ in range(10)]
        samples = metrics(client)

    assert bad == [400] * 5 and unknown_label == 400
    assert min(ok["stable"], ok["canary"] - 10) > 0, ok  # both tracks answered stable-addressed requests
    for track in TRACKS:
        labels = {"model_name": MODEL, "track": track}
        assert value(samples, ROUTE_REQUESTS, **labels, status="OK") == ok[track]
        assert value(samples, f"{ROUTE_LATENCY}_count", **labels) == ok[track]
        assert value(samples, ROUTE_PREDICTION_ROWS, **labels) == len(values[track])
        assert value(samples, ROUTE_PREDICTION_VALUE_SUM, **labels) == sum(values[track])
        assert value(samples, ROUTE_PREDICTION_VALUE_SQUARES, **labels) == sum(v * v for v in values[track])
        assert value(samples, ROUTE_NONFINITE_ROWS, **labels) == 0
    # The bad bodies failed on whichever track the route had picked; the unknown label never reached a track.
    invalid = [
        value(samples, ROUTE_REQUESTS, model_name=MODEL, track=t, status="INVALID_ARGUMENT") or 0 for t in TRACKS
    ]
    assert sum(invalid) == 5

    for track in TRACKS:
        for index in range(4):
            expected = argmax[track][index] * class_ok[track]
            assert (
                value(samples, ROUTE_PREDICTED_CLASS, model_name=CLASSES, track=track, **{"class": str(index)}) or 0
            ) == expected
        assert value(samples, ROUTE_PREDICTION_ROWS, model_name=CLASSES, track=track) == 0

    assert all(np.isnan(answer["predictions"]).all() for answer in nan_answers)
    canary = {"model_name": NAN, "track": "canary"}
    assert value(samples, ROUTE_NONFINITE_ROWS, **canary) == 20
    assert value(samples, ROUTE_PREDICTION_ROWS, **canary) == value(samples, ROUTE_PREDICTION_VALUE_SUM, **canary) == 0
    assert value(samples, ROUTE_REQUESTS, **canary, status="OK") == 10
    assert value(samples, ROUTE_REQUESTS, model_name=NAN, track="stable", status="OK") == 0


# --------------------------------------------------------------------------- moving the weight under load


@pytest.mark.usefixtures("server_behaviour")
def test_no_request_fails_while_the_weight_moves_and_the_canary_label_goes(
    canary_server: RunningServer, registry: Registry
) -> None:
    stop = threading.Event()
    failures: list[str] = []
    seen: Counter[int] = Counter()

    def client_loop() -> None:
        with canary_server.client() as client:
            while not stop.is_set():
                for request_path in (STABLE, IMPLICIT):
                    response = client.post(request_path, json={"instances": [ROW]})
                    if response.status_code != 200:
                        failures.append(f"{request_path}: {response.status_code} {response.text}")
                    else:
                        seen[round(response.json()["predictions"][0][0] / 10)] += 1

    thread = threading.Thread(target=client_loop, daemon=True)
    thread.start()
    try:
        apply_weight(canary_server, 50)
        before = seen[2]
        assert wait_for(lambda: seen[2] > before + 5, timeout=30), seen  # the canary answers its share
        apply_weight(canary_server, 0)
        apply_weight(canary_server, 50)
        registry.remove_label(MODEL, "canary")
        LocalRoute(registry.root).wait_applied(canary_server.url, MODEL, 0, timeout_s=30, steady_s=0.3)
        count = sum(seen.values())
        assert wait_for(lambda: sum(seen.values()) > count + 20, timeout=30)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == []
    assert seen[1] > 0 and seen[2] > 0, seen


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (np.array([[1.0], [2.0], [np.inf]]), RowSummary(rows=2, value_sum=3.0, squares=5.0, nonfinite=1)),
        (np.array([3, 4]), RowSummary(rows=2, value_sum=7.0, squares=25.0)),  # one value per row, as a vector
        (np.array([[0.1, 0.9], [0.8, 0.2], [np.nan, 1.0]]), RowSummary(classes={"1": 1, "0": 1}, nonfinite=1)),
        (np.float32(2.0), RowSummary(rows=1, value_sum=2.0, squares=4.0)),  # a scalar answer is one row
        (b"bytes", None),
        (np.array(["a", "b"]), None),
        (np.zeros((0, 1)), None),
    ],
)
def test_summarise_rows(output: object, expected: RowSummary | None) -> None:
    assert summarise_rows(output) == expected  # type: ignore[arg-type]
