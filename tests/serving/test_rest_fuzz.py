"""Property: whatever JSON a client sends, to whichever endpoint, the server answers it and never with a 500.

Bodies of random shape and type (nested lists and objects, strings, numbers from tiny to past a double,
booleans, nulls, ``{"b64": ...}`` objects, wrong keys, raw tokens Python's json cannot write, truncated or
re-encoded text) go over HTTP to ``:predict``, ``:classify`` and ``:regress`` of models with every kind of
signature (tests/serving/tfs_models.py), and status and metadata paths are asked alongside. Every answer is
a 200 with JSON, or a 4xx whose body is ``{"error": "<text>"}``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tfs_models import ECHO_DTYPES, make_echo_model, make_half_plus_two_tf1

from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from tests.serving.conftest import RunningServer, register, serve

pytestmark = pytest.mark.slow  # builds SavedModels and starts a real server

HP1, ECHO = "half_plus_two", "echo"
SIGNATURES = [
    "serving_default",
    "classify_x_to_y",
    "classify_labels",
    "regress_x_to_y",
    *(f"echo_{dtype}" for dtype in ECHO_DTYPES),
    "echo_bytes",
    "echo_named",
    "uneven_batch",
    "scalar_out",
    "complex_out",
    "rows_of_three",
    "",
    "nope",
]
KEYS = ["instances", "inputs", "signature_name", "examples", "context", "b64", "x", "a", "s", "y", ""]


class Raw:
    """A token written into the body as it is (numbers and strings Python's json does not write)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


RAW_TOKENS = [
    "1e400",
    "-1e400",
    "1E+309",
    "0e400",
    "1" + "0" * 400,
    "1" + "0" * 310 + ".5",
    "1e-400",
    "1.7976931348623157e308",
    "3.4028235e38",
    "1e39",
    "-0",
    "NaN",
    "Infinity",
    "-Infinity",
    "Inf",
    "-NaN",
    str(2**64),
    str(-(2**63) - 1),
    '"\\ud800"',
    '"\\udc00x"',
    '"\\ud83d\\ude00"',
    '"\\u00e9\\n\\t"',
    '"\xed\xa0\x80"',  # a surrogate as raw UTF-8 bytes (written as latin-1 below, byte for byte)
    '"\\x"',
    "tru",
    "01",
    "1.",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6, width=32),
    st.text(max_size=8),
    st.sampled_from(RAW_TOKENS).map(Raw),
    st.binary(max_size=8).map(lambda data: {"b64": base64.b64encode(data).decode()}),
    st.text(max_size=6).map(lambda text: {"b64": text}),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
    max_leaves=16,
)
# Tensors of one shape and one kind of value, so that bodies get past the shape checks to the dtypes and models.
leaves = st.sampled_from(
    [
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**65), max_value=2**65),
        st.booleans(),
        st.text(max_size=4),
        st.binary(max_size=4).map(lambda data: {"b64": base64.b64encode(data).decode()}),
        scalars,
    ]
)
tensors = st.tuples(leaves, st.integers(min_value=0, max_value=3), st.integers(min_value=1, max_value=3)).flatmap(
    lambda spec: st.one_of(
        spec[0],
        st.lists(spec[0], min_size=spec[1], max_size=spec[1]),
        st.lists(st.lists(spec[0], min_size=spec[1], max_size=spec[1]), min_size=1, max_size=spec[2]),
    )
)
named = st.dictionaries(st.sampled_from(["a", "s", "x", "y"]), tensors, max_size=3)
payloads = st.one_of(tensors, tensors, named, values)
examples = st.lists(
    st.dictionaries(st.sampled_from(["x", "y", "inputs"]), scalars | st.lists(scalars, max_size=3), max_size=2),
    max_size=3,
)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Mostly the skeleton of a real request with random contents; sometimes any JSON value at all."""
    shape = draw(st.sampled_from(["instances", "instances", "inputs", "inputs", "examples", "mixed", "any"]))
    if shape == "any":
        return draw(values)
    doc: dict[str, Any] = {}
    signature = draw(st.sampled_from(["real"] * 8 + ["none", "other"]))
    if signature != "none":
        doc["signature_name"] = draw(st.sampled_from(SIGNATURES) if signature == "real" else scalars)
    if shape == "instances":
        doc["instances"] = draw(st.lists(payloads, min_size=1, max_size=3) | payloads)
    elif shape == "inputs":
        doc["inputs"] = draw(payloads)
    elif shape == "examples":
        doc["examples"] = draw(examples | values)
        if draw(st.booleans()):
            doc["context"] = draw(st.dictionaries(st.sampled_from(["x", "y"]), scalars) | values)
    else:
        doc.update(draw(st.dictionaries(st.sampled_from(KEYS), payloads, max_size=4)))
    return doc


def text_of(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(text_of(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key)}:{text_of(item)}" for key, item in value.items()) + "}"
    return json.dumps(value, allow_nan=True)


def encode(text: str) -> bytes:
    # Raw tokens carry raw bytes as latin-1 characters; everything else is plain UTF-8.
    return text.encode("utf-8", "surrogatepass").replace("\xed\xa0\x80".encode(), b"\xed\xa0\x80")


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    body = encode(text_of(draw(documents())))
    change = draw(st.sampled_from(["none"] * 6 + ["cut", "insert", "utf-16", "space"]))
    if change == "cut":
        return body[: draw(st.integers(min_value=0, max_value=len(body)))]
    if change == "insert":
        at = draw(st.integers(min_value=0, max_value=len(body)))
        return body[:at] + draw(st.binary(min_size=1, max_size=3)) + body[at:]
    if change == "utf-16":
        return body.decode("utf-8", "surrogateescape").encode("utf-16", "surrogatepass")
    if change == "space":
        return b" \t\r\n" + body + b"\n"
    return body


models = st.sampled_from([HP1, ECHO, "nope"]) | st.text(min_size=1, max_size=6)
wheres = st.sampled_from(
    ["", "/versions/1", "/versions/2", "/versions/00001", "/versions/" + "9" * 25, "/labels/stable", "/labels/nope"]
) | st.text(min_size=1, max_size=6).map(lambda label: f"/labels/{label}")
apis = st.sampled_from(["predict", "classify", "regress"])


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("fuzz-models")
    registry = Registry(tmp_path_factory.mktemp("fuzz-registry") / "models")
    for name, build in ((HP1, make_half_plus_two_tf1), (ECHO, make_echo_model)):
        register(registry, build(base / name), run="run-1", name=name)
        registry.set_label(name, "stable", 1)
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.2, max_body_bytes=1024 * 1024)) as running:
        yield running


def assert_answered(response: httpx.Response) -> None:
    request = f"{response.request.method} {response.request.url.raw_path!r} {response.request.content[:300]!r}"
    assert response.status_code == 200 or 400 <= response.status_code < 500, (request, response.text)
    body = json.loads(response.text)  # NaN and Infinity are TF Serving's tokens, which Python's json reads
    if response.status_code != 200:
        assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), (request, body)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,  # the same bodies on every run, so that CI is repeatable
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(body=bodies(), model=models, where=wheres, api=apis)
# Bodies that once got a 500: a scalar string output (bare bytes from TensorFlow), a lone surrogate (escaped or
# as raw UTF-8 bytes) in a string input or a feature name, and text that Python reads as UTF-16.
@example(body=b'{"signature_name": "echo_bytes", "inputs": {"b64": "aGk="}}', model=ECHO, where="", api="predict")
@example(body=b'{"signature_name": "echo_string", "inputs": "hi"}', model=ECHO, where="", api="predict")
@example(body=b'{"signature_name": "echo_string", "inputs": ["\\ud800"]}', model=ECHO, where="", api="predict")
@example(body=b'{"signature_name": "echo_string", "inputs": ["\xed\xa0\x80"]}', model=ECHO, where="", api="predict")
@example(body=b'{"examples": [{"\xed\xa0\x80": 1.0}]}', model=HP1, where="", api="classify")
@example(body='{"instances": [["a"]]}'.encode("utf-16"), model=HP1, where="", api="predict")
def test_no_request_gets_a_server_error(
    fuzz_server: RunningServer, body: bytes, model: str, where: str, api: str
) -> None:
    path = f"/v1/models/{quote(model, safe='')}{quote(where, safe='/')}"
    with fuzz_server.client() as client:
        for served in (HP1, ECHO):
            assert_answered(client.post(f"/v1/models/{served}:{api}", content=body))
        assert_answered(client.post(f"{path}:{api}", content=body))
        assert_answered(client.get(path))
        assert_answered(client.get(f"{path}/metadata"))


too_big = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1E+309", "0e400", "10e308", "1.8e308", "1" + "0" * 400, "-" + "9" * 311]),
    st.builds("{}e{}".format, st.integers(min_value=0, max_value=10**6), st.integers(min_value=309, max_value=10**5)),
    st.builds("-{}.{}E+{}".format, st.integers(1, 999), st.integers(0, 999), st.integers(min_value=309, max_value=999)),
)
# Where the number sits, and what closes the brackets opened before it.
PLACES = [('{"x": ', ""), ('{"instances": [[', "]]"), ('{"inputs": [1.5, ', "]"), ('{"examples": [{"x": ', "}]")]


@settings(max_examples=50, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(number=too_big, place=st.sampled_from(PLACES), rest=documents(), model=st.sampled_from([HP1, ECHO]), api=apis)
def test_a_number_past_a_double_is_refused_as_tf_serving_refuses_it(
    fuzz_server: RunningServer, number: str, place: tuple[str, str], rest: Any, model: str, api: str
) -> None:
    # RapidJSON reads the document in order: the number is its first error, whatever follows it.
    prefix, closer = place
    members = text_of(rest)[1:-1] if isinstance(rest, dict) else f'"rest": {text_of(rest)}'
    body = encode(prefix + number + closer + (f", {members}" if members else "") + "}")
    with fuzz_server.client() as client:
        response = client.post(f"/v1/models/{model}:{api}", content=body)
    assert response.status_code == 400, (body[:300], response.text)
    offset = len(prefix)
    assert response.json() == {"error": f"JSON Parse error: Number too big to be stored in double. at offset: {offset}"}
