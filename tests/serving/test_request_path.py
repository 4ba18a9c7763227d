"""The predict path's per-version set-up and its inline gate, without a server or TensorFlow.

What a request works out once per loaded version (the signature plan) must follow the version it is
for: a version loaded later, or another model, gets its own.  Which predicts may run on the event
loop is decided from the times the gate is given, so these tests hand it times instead of measuring.
The server-level checks (where requests really run) are in test_server.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from include.mlops.registry.serving_artifact import SAVED_MODEL, ServedArtifact
from include.mlops.serving.errors import number_marks
from include.mlops.serving.loaders import LoadedVersion, TensorSpecInfo
from include.mlops.serving.models import ServingError
from include.mlops.serving.predict_json import _has_long_non_fraction, parse_predict_request, signature_plan
from include.mlops.serving.route import _summarise_few_rows, _summarise_many_rows, summarise_rows
from include.mlops.serving.workers import InlineGate

SIGNATURE = "serving_default"


def loaded_version(name: str, version: int, inputs: dict[str, str], outputs: tuple[str, ...] = ("y",)) -> LoadedVersion:
    """A loaded version whose ``serving_default`` takes ``inputs`` (name -> numpy dtype name) and echoes nothing."""

    def run(signature: str, feeds: Any) -> dict[str, np.ndarray]:
        raise AssertionError("these tests do not call the model")

    specs = {key: TensorSpecInfo(key, dtype, (None, 1)) for key, dtype in inputs.items()}
    path = Path(f"/nowhere/{name}/{version}")
    return LoadedVersion(
        name, version, path, ServedArtifact(SAVED_MODEL, path), "0" * 64, {SIGNATURE: specs},
        {SIGNATURE: sorted(outputs)}, None, run, None,
    )  # fmt: skip


# --------------------------------------------------------------------------- signature plans


def test_a_signature_plan_is_built_on_the_first_request_and_kept_on_the_version() -> None:
    loaded = loaded_version("m", 1, {"x": "float32"}, outputs=("b", "a"))
    assert loaded.plans == {}
    plan, feeds, columnar = parse_predict_request(b'{"instances": [[1.5]]}', loaded)
    assert (plan.signature, plan.names, plan.outputs, columnar) == (SIGNATURE, ("x",), ["a", "b"], False)
    assert feeds["x"].dtype == np.float32 and feeds["x"].tolist() == [[1.5]]
    assert loaded.plans == {SIGNATURE: plan}
    again, _, _ = parse_predict_request(b'{"inputs": [[2.5]]}', loaded)
    assert again is plan


def test_a_version_loaded_later_gets_its_own_plan() -> None:
    """Version 2 of the same model takes int64 where version 1 took float32: each request follows its version."""
    first = loaded_version("m", 1, {"x": "float32"})
    parse_predict_request(b'{"instances": [[1.5]]}', first)
    later = loaded_version("m", 2, {"x": "int64"})
    with pytest.raises(ServingError, match="is not of expected type: int64"):
        parse_predict_request(b'{"instances": [[1.5]]}', later)
    plan, feeds, _ = parse_predict_request(b'{"instances": [[7]]}', later)
    assert feeds["x"].dtype == np.int64 and plan.types["x"].dtype == "int64"
    assert first.plans[SIGNATURE].types["x"].dtype == "float32"  # the first version's plan is untouched
    _, feeds, _ = parse_predict_request(b'{"instances": [[1.5]]}', first)
    assert feeds["x"].dtype == np.float32


def test_models_with_different_signatures_do_not_share_plans() -> None:
    one = loaded_version("one", 1, {"a": "float32"})
    two = loaded_version("two", 1, {"b": "float32", "c": "float32"})
    _, feeds, _ = parse_predict_request(b'{"instances": [{"a": [1.0]}]}', one)
    assert list(feeds) == ["a"]
    _, feeds, _ = parse_predict_request(b'{"instances": [{"b": [1.0], "c": [2.0]}]}', two)
    assert sorted(feeds) == ["b", "c"]
    with pytest.raises(ServingError, match="does not have named input: a"):
        parse_predict_request(b'{"instances": [{"a": [1.0]}]}', two)
    assert one.plans[SIGNATURE].names == ("a",) and two.plans[SIGNATURE].names == ("b", "c")


def test_a_signature_the_version_lacks_is_refused_and_not_kept() -> None:
    """Signature names come from clients: only the version's own signatures get a plan."""
    loaded = loaded_version("m", 1, {"x": "float32"})
    with pytest.raises(ServingError, match='Serving signature name: "nope" not found'):
        parse_predict_request(b'{"signature_name": "nope", "instances": [[1.0]]}', loaded)
    with pytest.raises(ServingError, match='"nope" not found'):
        signature_plan(loaded, "nope")
    assert loaded.plans == {}


# --------------------------------------------------------------------------- long digit runs


@pytest.mark.parametrize(
    ("body", "long_non_fraction"),
    [
        (b'{"instances": [[0.0012345678901234567, -0.00012345678901234567]]}', False),  # fractions only
        (b'{"instances": [[1.5, 123456789012345678]]}', False),  # 18 digits: within int64
        (b'{"instances": [[1180591620717411303424]]}', True),
        (b'{"instances": [[-1180591620717411303424]]}', True),
        (b'{"instances": [[1e0000000000000000000001, 2]]}', True),
        (b'{"instances": [[1E+0000000000000000000001]]}', True),
        (b"1180591620717411303424", True),
    ],
)
def test_only_digit_runs_outside_fractions_send_a_body_to_the_slower_parser(
    body: bytes, long_non_fraction: bool
) -> None:
    assert _has_long_non_fraction(number_marks(body)) is long_non_fraction


def test_a_long_integer_is_quoted_as_written_and_long_fractions_read_exactly() -> None:
    """Python's json reads an integer past 64 bits as an integer (orjson: a float); errors quote it as sent."""
    ints = loaded_version("m", 1, {"x": "int64"})
    with pytest.raises(ServingError, match=r"JSON Value: 1180591620717411303424 Type: Number is not of expected type"):
        parse_predict_request(b'{"instances": [[1180591620717411303424]]}', ints)
    floats = loaded_version("m", 1, {"x": "float64"})
    _, feeds, _ = parse_predict_request(b'{"instances": [[0.0012345678901234567], [-0.00012345678901234567]]}', floats)
    assert feeds["x"].tolist() == [[0.0012345678901234567], [-0.00012345678901234567]]


# --------------------------------------------------------------------------- the inline gate


def test_a_version_runs_inline_only_once_enough_small_calls_were_timed_quick() -> None:
    gate = InlineGate(max_body_bytes=100, max_micros=1000.0, after=3)
    loaded = loaded_version("m", 1, {"x": "float32"})
    assert not gate.allows(loaded, 10), "a version nobody has timed yet runs in a worker thread"
    for _ in range(2):
        gate.record(loaded, 10, 400.0)
    assert not gate.allows(loaded, 10)
    gate.record(loaded, 10, 400.0)
    assert gate.allows(loaded, 10)
    assert gate.allows(loaded, 100) and not gate.allows(loaded, 101), "a big body always runs in a worker thread"


def test_a_slow_version_stays_in_the_worker_threads_and_a_version_that_turns_slow_goes_back() -> None:
    gate = InlineGate(max_body_bytes=100, max_micros=1000.0, after=3)
    slow = loaded_version("m", 1, {"x": "float32"})
    for _ in range(20):
        gate.record(slow, 10, 5000.0)
    assert not gate.allows(slow, 10)

    quick = loaded_version("m", 2, {"x": "float32"})
    for _ in range(3):
        gate.record(quick, 10, 300.0)
    assert gate.allows(quick, 10)
    gate.record(quick, 10, 2000.0)  # one slow call (the machine busy elsewhere) moves the average a little
    assert gate.allows(quick, 10)
    for _ in range(3):
        gate.record(quick, 10, 20_000.0)
    assert not gate.allows(quick, 10)
    for _ in range(60):
        gate.record(quick, 10, 300.0)
    assert gate.allows(quick, 10), "quick again: back on the event loop"


def test_no_call_runs_inline_while_one_of_the_versions_calls_runs_in_a_worker_thread() -> None:
    """A TFLite version takes one call at a time: a small call must not wait on the event loop for a big one."""
    gate = InlineGate(max_body_bytes=100, max_micros=1000.0, after=1)
    loaded = loaded_version("m", 1, {"x": "float32"})
    gate.record(loaded, 10, 200.0)
    loaded.worker_calls = 1
    assert not gate.allows(loaded, 10)
    loaded.worker_calls = 0
    assert gate.allows(loaded, 10)


def test_big_bodies_are_not_timed_and_each_version_keeps_its_own_times() -> None:
    gate = InlineGate(max_body_bytes=100, max_micros=1000.0, after=1)
    loaded = loaded_version("m", 1, {"x": "float32"})
    gate.record(loaded, 101, 50_000.0)
    assert (loaded.small_calls, loaded.small_call_micros) == (0, 0.0)
    gate.record(loaded, 10, 200.0)
    assert gate.allows(loaded, 10)
    later = loaded_version("m", 2, {"x": "float32"})
    assert not gate.allows(later, 10), "a new version is timed afresh"


# --------------------------------------------------------------------------- row summaries


def _small_outputs() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    outputs = [
        np.array([[1.5]], dtype=np.float32),
        np.array([[np.nan], [2.0], [np.inf], [-3.25]]),
        np.array([[0.1, 0.9, 0.9], [0.5, 0.5, 0.1], [np.nan, 1.0, 0.0]]),  # ties: the first maximum
        np.array([[-0.0, 0.0]]),
        np.array([3, 4, -2], dtype=np.int64),
        np.array([[True, False], [False, True]]),
        np.array([[2**62 + 1]], dtype=np.int64),
        np.float32(2.0),
        np.array(7, dtype=np.int32),
        np.array([[1.0, 2.0]], dtype=np.float16),
    ]
    for rows in range(1, 8):
        for width in (1, 2, 5):
            values = rng.normal(0, 10.0 ** rng.integers(-3, 6), size=(rows, width))
            values[rng.random(values.shape) < 0.1] = rng.choice([np.nan, np.inf, -np.inf])
            outputs.extend([values, values.astype(np.float32)])
    return outputs


@pytest.mark.parametrize("output", _small_outputs(), ids=lambda a: f"{a.dtype}{list(np.shape(a))}")
def test_small_outputs_are_summarised_in_python_exactly_as_numpy_summarises_them(output: np.ndarray) -> None:
    assert _summarise_few_rows(np.asarray(output)) == _summarise_many_rows(np.asarray(output))
    assert summarise_rows(output) == _summarise_many_rows(np.asarray(output))
