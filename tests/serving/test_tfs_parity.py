"""The local server against TF Serving's own REST behaviour (http_rest_api_handler_test.cc, json_tensor_test.cc).

The models are rebuilt here (tests/serving/tfs_models.py): half_plus_two in TF1 and TF2 form, with
TF Serving's classify and regress signatures, and an echo model with one signature per dtype.  They are
built once per module and served by one real server; expected answers come from TF Serving's tests.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tfs_models import ECHO_DTYPES, make_echo_model, make_half_plus_two_tf1, make_half_plus_two_tf2

from include.mlops.deploy.deploy import DeployVerificationError, SmokeCheck, verify_deployment
from include.mlops.deploy.server_client import ModelServerClient
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.app import ServerSettings
from include.mlops.serving.loaders import load_version
from include.mlops.serving.models import ServingError
from include.mlops.serving.predict_json import format_predict_response
from tests.serving.conftest import RunningServer, register, serve

pytestmark = pytest.mark.slow  # builds SavedModels and starts a real server

HP1, HP2, ECHO = "half_plus_two", "half_plus_two_tf2", "echo"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tfs-models")
    return {
        HP1: make_half_plus_two_tf1(base / HP1),
        HP2: make_half_plus_two_tf2(base / HP2),
        ECHO: make_echo_model(base / ECHO),
    }


@pytest.fixture(scope="module")
def tfs(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    registry = Registry(tmp_path_factory.mktemp("tfs-registry") / "models")
    for name, path in model_dirs.items():
        register(registry, path, run="run-1", name=name)
        registry.set_label(name, "stable", 1)
    with serve(ServerSettings(registry_root=registry.root, poll_seconds=0.2)) as running:
        yield running


@pytest.fixture
def client(tfs: RunningServer) -> Iterator[httpx.Client]:
    with tfs.client() as client:
        yield client


def post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"Content-Type": "application/json"})


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], body["error"]


# --------------------------------------------------------------------------- 1. every SavedModel loads


def test_a_signature_input_of_unknown_rank_loads(model_dirs: dict[str, Path]) -> None:
    loaded = load_version(HP1, 1, model_dirs[HP1])
    assert loaded.inputs["regress_x_to_y"]["inputs"].shape is None  # tf.Example batch: unknown rank
    assert loaded.inputs["serving_default"]["x"].shape == (None, 1)


def test_tf_servings_half_plus_two_layout_is_available_with_all_signatures(client: httpx.Client) -> None:
    status = client.get(f"/v1/models/{HP1}").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
    signatures = client.get(f"/v1/models/{HP1}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert signatures["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"
    assert signatures["regress_x_to_y"]["inputs"]["inputs"]["tensor_shape"]["unknown_rank"] is True


# --------------------------------------------------------------------------- 2. shapes are the model's business


@pytest.mark.parametrize("name", [HP1, HP2])
def test_instances_of_any_shape_the_model_takes_are_answered(client: httpx.Client, name: str) -> None:
    response = post(client, f"/v1/models/{name}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}
    columnar = post(client, f"/v1/models/{name}:predict", {"inputs": [[1.0], [2.0]]})
    assert columnar.json() == {"outputs": [[2.5], [3.0]]}


def test_the_models_own_argument_errors_are_400_with_its_message(client: httpx.Client) -> None:
    response = post(client, f"/v1/models/{ECHO}:predict", {"signature_name": "rows_of_three", "inputs": [1.0, 2.0]})
    assert_error(response, 400, "Input to reshape is a tensor with 2 values")


def test_rows_of_different_shapes_are_refused_as_tf_serving_refuses_them(client: httpx.Client) -> None:
    response = post(client, f"/v1/models/{HP1}:predict", {"instances": [[1.0], [2.0, 3.0]]})
    assert_error(response, 400, "Failed to process element: 1 of 'instances' list", "Expecting tensor size: 1")


# --------------------------------------------------------------------------- 3. zero-padded version folders


def test_zero_padded_version_folders_are_read_as_their_integer(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(model_dirs[HP1], root / "hp" / "00000123")
    (root / "models.config").write_text(
        'model_config_list { config { name: "hp" base_path: "%s" model_platform: "tensorflow" } }' % (root / "hp")
    )
    with serve(ServerSettings(registry_root=root, verify_checksums=False)) as running, running.client() as client:
        status = client.get("/v1/models/hp").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("123", "AVAILABLE")]
        response = post(client, "/v1/models/hp/versions/123:predict", {"instances": [[1.0]]})
        assert response.json() == {"predictions": [[2.5]]}
    with serve(ServerSettings(registry_root=root, verify_checksums=True)) as running, running.client() as client:
        (status,) = client.get("/v1/models/hp").json()["model_version_status"]
        assert status["state"] == "END" and "--no-verify-checksums" in status["status"]["error_message"]


# --------------------------------------------------------------------------- 4. typed input conversion

ACCEPTED = {
    "float16": [0.5, -2.0, 2048.0],
    "float32": [2.05, -1.5, 3.4e38],
    "float64": [0.1, 1e300],
    "int8": [-128, 127],
    "int16": [-32768, 32767],
    "int32": [-(2**31), 2**31 - 1],
    "int64": [-(2**63), 2**63 - 1],
    "uint8": [0, 255],
    "uint16": [0, 65535],
    "uint32": [0, 2**32 - 1],
    "uint64": [0, 2**64 - 1],
    "bool": [True, False],
    "string": ["héllo", ""],
}
REFUSED = [
    ("int32", 3000000000, "Type: Number is not of expected type: int32"),
    ("int32", 1.5, "is not of expected type: int32"),
    ("int8", 128, "is not of expected type: int8"),
    ("int16", -32769, "is not of expected type: int16"),
    ("int64", 2**63, "is not of expected type: int64"),
    ("uint8", -1, "is not of expected type: uint8"),
    ("uint32", 2**32, "is not of expected type: uint32"),
    ("uint64", 2**64, "is not of expected type: uint64"),
    ("float16", 70000.0, "is not of expected type: half"),
    ("float16", 70000, "is not of expected type: half"),
    ("float32", 1e39, "is not of expected type: float"),
    ("float32", "1.0", "Type: String is not of expected type: float"),
    ("float64", True, "Type: True is not of expected type: double"),
    ("int64", True, "Type: True is not of expected type: int64"),
    ("bool", 1, "Type: Number is not of expected type: bool"),
    ("string", 1, "Type: Number is not of expected type: string"),
    ("string", {"b64": "!!"}, "Unable to base64 decode"),
    ("string", {"text": "x"}, "not formatted correctly for base64 data"),
]


@pytest.mark.parametrize("dtype", ECHO_DTYPES)
def test_every_dtype_round_trips_in_row_and_columnar_form(client: httpx.Client, dtype: str) -> None:
    values = ACCEPTED[dtype]
    path = f"/v1/models/{ECHO}:predict"
    rows = post(client, path, {"signature_name": f"echo_{dtype}", "instances": values})
    assert rows.status_code == 200, rows.text
    assert rows.json() == {"predictions": values}
    columns = post(client, path, {"signature_name": f"echo_{dtype}", "inputs": [values]})
    assert columns.json() == {"outputs": [values]}


@pytest.mark.parametrize(("dtype", "value", "message"), REFUSED)
def test_values_a_dtype_cannot_hold_are_refused(client: httpx.Client, dtype: str, value: Any, message: str) -> None:
    response = post(client, f"/v1/models/{ECHO}:predict", {"signature_name": f"echo_{dtype}", "inputs": [value]})
    assert_error(response, 400, message)


def test_booleans_mixed_into_numbers_are_refused(client: httpx.Client) -> None:
    response = post(client, f"/v1/models/{ECHO}:predict", {"signature_name": "echo_int32", "inputs": [1, True]})
    assert_error(response, 400, "Type: True is not of expected type: int32")


def test_string_requests_are_answered_with_the_prediction_log_on(
    model_dirs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path / "models")
    register(registry, model_dirs[ECHO], run="run-1", name=ECHO)
    registry.set_label(ECHO, "stable", 1)
    settings = ServerSettings(registry_root=registry.root, predlog_root=tmp_path / "log", predlog_sample_rate=1.0)
    with serve(settings) as running, running.client() as client:
        response = post(client, f"/v1/models/{ECHO}:predict", {"signature_name": "echo_string", "instances": ["a"]})
        assert response.json() == {"predictions": ["a"]}
    # The log keeps float rows only: a string request is not offered to it (which would log a traceback).
    assert not [r for r in caplog.records if "prediction log" in r.getMessage()]


def test_binary_strings_travel_as_b64_in_named_rows_and_columns(client: httpx.Client) -> None:
    blob = bytes(range(256))
    b64 = {"b64": base64.b64encode(blob).decode()}
    path = f"/v1/models/{ECHO}:predict"
    unnamed = post(client, path, {"signature_name": "echo_bytes", "instances": [b64, {"b64": ""}]})
    assert unnamed.json() == {"predictions": [b64, {"b64": ""}]}
    named = post(
        client,
        path,
        {"signature_name": "echo_named", "instances": [{"a": 1, "s": {"b64": "aGk="}}, {"a": 2, "s": "yo"}]},
    )
    assert named.json() == {"predictions": [{"a": 1, "s": "hi"}, {"a": 2, "s": "yo"}]}
    columns = post(client, path, {"signature_name": "echo_named", "inputs": {"a": [3], "s": [{"b64": "aGk="}]}})
    assert columns.json() == {"outputs": {"a": [3], "s": ["hi"]}}


# --------------------------------------------------------------------------- 5. output encoding


# TF Serving's WriteDecimal (json_tensor.cc): printf's %g (absl::StrCat, six significant digits) when that text reads
# back as the same float/double, else %.9g / %.17g; ".0" is added when the text has no point and no exponent.  The
# first six rows are TF Serving's own test (FromJsonSingleFloatTensorSixDigitPrecision).  Written out by hand here,
# not computed: the server's helper must reproduce them.
FLOAT32_TEXTS = [
    ("9000000", "9e+06"),
    ("999999", "999999.0"),
    ("0.5", "0.5"),
    ("0.0003", "0.0003"),
    ("0.00003", "3e-05"),
    ("555557.5", "555557.5"),
    ("0", "0.0"),
    ("-0.0", "-0.0"),
    ("-2.5", "-2.5"),
    ("0.1", "0.1"),
    ("2.05", "2.05"),
    ("100000", "100000.0"),
    ("1000000", "1e+06"),
    ("123456.78", "123456.781"),
    ("16777216", "16777216.0"),
    ("0.0001", "0.0001"),
    ("1e-6", "1e-06"),
    ("1e-7", "1e-07"),
    ("1e21", "1e+21"),
    ("1e22", "1e+22"),
    ("0.3333333333", "0.333333343"),
    ("3.4028234663852886e38", "3.40282347e+38"),
    ("-1e-45", "-1.4013e-45"),
]
FLOAT64_TEXTS = [
    ("9000000", "9e+06"),
    ("999999", "999999.0"),
    ("0.1", "0.1"),
    ("123456.78", "123456.78"),
    ("16777217", "16777217.0"),
    ("1e21", "1e+21"),
    ("1e22", "1e+22"),
    ("1e-7", "1e-07"),
    ("0.3333333333333333", "0.33333333333333331"),
    ("0.30000000000000004", "0.30000000000000004"),
    ("1e300", "1e+300"),
    ("1.7976931348623157e308", "1.7976931348623157e+308"),
    ("5e-324", "4.94066e-324"),
    ("-1.5", "-1.5"),
]


@pytest.mark.parametrize(("dtype", "table"), [("float32", FLOAT32_TEXTS), ("float64", FLOAT64_TEXTS)])
def test_floats_are_written_as_tf_servings_write_decimal_writes_them(
    client: httpx.Client, dtype: str, table: list[tuple[str, str]]
) -> None:
    sent = ",".join(text for text, _ in table)
    expected = ",".join(text for _, text in table)
    path = f"/v1/models/{ECHO}:predict"
    columns = post(client, path, f'{{"signature_name": "echo_{dtype}", "inputs": [{sent}]}}'.encode())
    assert columns.text == f'{{"outputs":[{expected}]}}'
    rows = post(client, path, f'{{"signature_name": "echo_{dtype}", "instances": [{sent}]}}'.encode())
    assert rows.text == f'{{"predictions":[{expected}]}}'


def test_predict_and_regress_write_floats_alike(client: httpx.Client) -> None:
    # 0.5 * 17999996 + 2 = 9000000 (exact in float32)
    predict = post(client, f"/v1/models/{HP1}:predict", {"instances": [[17999996.0], [0.1]]})
    assert predict.text == '{"predictions":[[9e+06],[2.05]]}'
    regress = post(
        client, f"/v1/models/{HP1}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 17999996.0}]}
    )
    assert regress.text == '{"results":[9e+06]}'


def test_half_floats_are_written_at_their_own_shortest_text(client: httpx.Client) -> None:
    # TF Serving has no JSON form for half tensors; here they are written at float16's shortest text.
    half = post(client, f"/v1/models/{ECHO}:predict", {"signature_name": "echo_float16", "inputs": [0.1, 65504.0]})
    assert half.text == '{"outputs":[0.1,65500.0]}'  # 65500 reads back as float16's 65504


def test_nan_and_infinities_are_written_as_tf_serving_writes_them(client: httpx.Client) -> None:
    body = b'{"signature_name": "echo_float32", "instances": [NaN, Infinity, -Infinity, 1.5]}'
    response = post(client, f"/v1/models/{ECHO}:predict", body)
    assert response.status_code == 200, response.text
    assert response.text == '{"predictions":[NaN,Infinity,-Infinity,1.5]}'
    assert math.isnan(response.json()["predictions"][0])


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ("uneven_batch", "Tensor name: two has inconsistent batch size: 4 expecting: 2"),
        ("scalar_out", "Tensor name: total has no shape information"),
        ("complex_out", "Failed to write JSON value for tensor type: complex64"),
    ],
)
def test_outputs_row_json_cannot_carry_are_400(client: httpx.Client, signature: str, message: str) -> None:
    response = post(client, f"/v1/models/{ECHO}:predict", {"signature_name": signature, "instances": [1.0, 2.0]})
    assert_error(response, 400, message)


def test_a_scalar_output_is_written_in_columnar_form(client: httpx.Client) -> None:
    response = post(client, f"/v1/models/{ECHO}:predict", {"signature_name": "scalar_out", "inputs": [1.0, 2.0]})
    assert response.json() == {"outputs": 3.0}


@pytest.mark.parametrize(
    ("signature", "sent", "written"),
    [
        ("echo_bytes", {"b64": "aGk="}, {"b64": "aGk="}),  # an output named *_bytes is written as base64
        ("echo_string", "hi", "hi"),
        ("echo_string", {"b64": "aGk="}, "hi"),
    ],
)
def test_a_scalar_string_output_is_written_in_columnar_form(
    client: httpx.Client, signature: str, sent: Any, written: Any
) -> None:
    response = post(client, f"/v1/models/{ECHO}:predict", {"signature_name": signature, "inputs": sent})
    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": written}


def test_a_scalar_string_output_has_no_row_format() -> None:
    # TensorFlow hands a scalar string back as bare bytes; row format needs a batch dimension (TF Serving's 400).
    with pytest.raises(ServingError, match="Tensor name: y_bytes has no shape information") as raised:
        format_predict_response({"y_bytes": b"hi"}, ["y_bytes"], columnar=False)
    assert raised.value.code == "INVALID_ARGUMENT"


# --------------------------------------------------------------------------- 6. classify and regress


def test_classify_answers_label_score_pairs(client: httpx.Client) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": [3.0]}]}
    response = post(client, f"/v1/models/{HP1}:classify", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [[["", 2.5]], [["", 3.5]]]}
    labelled = post(client, f"/v1/models/{HP1}/labels/stable:classify", {**body, "signature_name": "classify_labels"})
    assert labelled.json() == {"results": [[["low", -2.5], ["high", 2.5]], [["low", -3.5], ["high", 3.5]]]}


def test_regress_answers_one_value_per_example_with_context(client: httpx.Client) -> None:
    plain = post(
        client, f"/v1/models/{HP1}/versions/1:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 0.1}]}
    )
    assert plain.text == '{"results":[2.05]}'
    body = {"signature_name": "regress_x_to_y", "context": {"x": 1.0}, "examples": [{}, {"x": 3.0}]}
    response = post(client, f"/v1/models/{HP1}:regress", body)
    assert response.json() == {"results": [2.5, 3.5]}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (f"{HP1}:classify", {"examples": [{"x": 1.0}]}, "Expected classification signature method_name to be"),
        (
            f"{HP1}:regress",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]},
            "Was: tensorflow/serving/classify",
        ),
        (
            f"{HP1}:regress",
            {"signature_name": "nope", "examples": [{"x": 1.0}]},
            "No signature was found with the name: nope",
        ),
        (f"{HP1}:classify", {"signature_name": "classify_x_to_y"}, "key 'examples' is expected and was not found"),
        (f"{HP1}:classify", {"examples": []}, "'examples' value is an empty array"),
        (f"{HP1}:classify", {"examples": [[1.0]]}, "Example must be JSON object but got JSON Array"),
        (
            f"{HP1}:regress",
            {"examples": [{"x": [1.0, "a"]}]},
            "Unexpected element type in feature: x expecting type: float",
        ),
        (f"{HP1}:regress", {"examples": [{"x": None}]}, "has element with unexpected JSON type: Null"),
        (f"{HP1}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 1}]}, "Data types don't match"),
    ],
)
def test_bad_classify_and_regress_requests_are_400(
    client: httpx.Client, path: str, body: dict[str, Any], message: str
) -> None:
    assert_error(post(client, f"/v1/models/{path}", body), 400, message)


def test_classify_and_regress_are_counted_in_the_metrics(client: httpx.Client) -> None:
    post(client, f"/v1/models/{HP1}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]})
    post(client, f"/v1/models/{HP1}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]})
    text = client.get("/monitoring/prometheus/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    apis = {s.labels.get("API") for s in families[":tensorflow:serving:request_latency"].samples}
    assert {"Classify", "Regress"} <= apis
    runtime = {s.labels.get("API") for s in families[":tensorflow:serving:runtime_latency"].samples}
    assert {"Classify", "Regress"} <= runtime


# --------------------------------------------------------------------------- 7. small mismatches


def test_an_unknown_version_label_is_400(client: httpx.Client) -> None:
    assert_error(
        post(client, f"/v1/models/{HP1}/labels/nope:predict", {"instances": [[1.0]]}),
        400,
        "Unrecognized servable version label: nope",
    )
    assert_error(client.get(f"/v1/models/{HP1}/labels/nope"), 400, "Unrecognized servable version label: nope")


def test_a_version_that_overflows_cannot_be_converted(client: httpx.Client) -> None:
    big = "9" * 25
    assert_error(
        post(client, f"/v1/models/{HP1}/versions/{big}:predict", {"instances": [[1.0]]}),
        400,
        f"Failed to convert version: {big}",
    )
    assert_error(client.get(f"/v1/models/{HP1}/versions/{big}"), 400, "Failed to convert version")


@pytest.mark.parametrize("path", ["/statuspage", "/statuspage/", "/v1/models/", "/monitoring/prometheus/metrics/"])
def test_unknown_paths_are_never_redirected(client: httpx.Client, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code in (400, 404), (response.status_code, response.headers)
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize("api", ["predict", "classify", "regress"])
def test_deeply_nested_json_is_a_400_on_every_api(client: httpx.Client, api: str) -> None:
    depth = 20_000
    body = b'{"examples": [{"x": ' + b"[" * depth + b"]" * depth + b"}]}"
    if api == "predict":
        body = b'{"instances": [' + b"[" * depth + b"]" * depth + b"]}"
    assert_error(post(client, f"/v1/models/{HP1}:{api}", body), 400, "too deeply")


@pytest.mark.parametrize("api", ["predict", "classify", "regress"])
def test_tf_servings_stable_error_words(client: httpx.Client, api: str) -> None:
    assert_error(post(client, f"/v1/models/{HP1}:{api}", b""), 400, "JSON Parse error: The document is empty")
    assert_error(post(client, f"/v1/models/{HP1}:{api}", b"[1]"), 400, "JSON Value: [1] Is not object")
    # TF Serving's own malformed body (http_rest_api_handler_test.cc), in RapidJSON's words and offset.
    assert_error(
        post(client, f"/v1/models/{HP1}:{api}", b"instances = [1, 2]"),
        400,
        "JSON Parse error: Invalid value. at offset: 0",
    )


# RapidJSON's message (rapidjson/error/en.h) and the byte offset its reader stops at, read with TF Serving's flags.
MALFORMED = [
    pytest.param(b"   ", "The document is empty. at offset: 3", id="only-whitespace"),
    pytest.param(b"{not json", "Missing a name for object member. at offset: 1", id="unquoted-key"),
    pytest.param(b'{"instances": [1.0,]}', "Invalid value. at offset: 19", id="trailing-comma"),
    pytest.param(b'{"instances": [[1.0] [2.0]]}', "Missing a comma or ']' after an array element. at offset: 21"),
    pytest.param(b'{"instances": [[1.0]]', "Missing a comma or '}' after an object member. at offset: 21"),
    pytest.param(b'{"instances" [[1.0]]}', "Missing a colon after a name of object member. at offset: 13"),
    pytest.param(b'{"instances": [[tru]]}', "Invalid value. at offset: 19", id="bad-literal"),
    pytest.param(b'{"instances": [[1.]]}', "Miss fraction part in number. at offset: 18"),
    pytest.param(b'{"instances": [[1e]]}', "Miss exponent in number. at offset: 18"),
    pytest.param(b'{"instances": ["a\\x"]}', "Invalid escape character in string. at offset: 17"),
    pytest.param(b'{"instances": ["abc', "Missing a closing quotation mark in string. at offset: 19"),
    pytest.param(b'{"instances": ["\\ud800"]}', "The surrogate pair in string is invalid. at offset: 16"),
    pytest.param(b'{"instances": ["\\udc00"]}', "The surrogate pair in string is invalid. at offset: 16"),
    # RapidJSON's stream ends at a NUL byte: UTF-16 text (which Python's json would read) is refused.
    pytest.param('{"instances": [[1.0]]}'.encode("utf-16-le"), "Missing a name for object member. at offset: 1"),
    # Knowingly different: TF Serving stops at the document's end and ignores what follows; here that is refused.
    pytest.param(b'{"instances": [[1.0]]} x', "The document root must not be followed by other values. at offset: 23"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED)
def test_malformed_json_is_refused_in_rapidjsons_words(client: httpx.Client, body: bytes, message: str) -> None:
    assert_error(post(client, f"/v1/models/{HP1}:predict", body), 400, f"JSON Parse error: {message}")


@pytest.mark.parametrize(
    ("path", "body", "offset"),
    [
        (f"{HP1}:predict", b'{"instances": [[1e400]]}', 16),
        (f"{HP1}:predict", b'{"instances": [[-1e400]]}', 16),
        (f"{HP1}:predict", b'{"instances": [[1' + b"0" * 400 + b"]]}", 16),  # an integer past a double
        (f"{HP1}:predict", b'{"instances": [[1' + b"0" * 400 + b".5]]}", 16),
        (f"{HP1}:predict", b'{"instances": [[1.0]], "unused": 1E+309}', 33),  # anywhere in the document
        (f"{HP1}:predict", b'{"instances": [[0e400]]}', 16),  # RapidJSON refuses any exponent past 308 (+ digits)
        (f"{ECHO}:predict", b'{"signature_name": "echo_float64", "inputs": [1.8e308]}', 46),
        (f"{HP1}:regress", b'{"signature_name": "regress_x_to_y", "examples": [{"x": 1e999}]}', 56),
        (f"{HP1}:classify", b'{"signature_name": "classify_x_to_y", "examples": [{"x": 1e400}]}', 57),
    ],
)
def test_numbers_a_double_cannot_hold_are_refused(client: httpx.Client, path: str, body: bytes, offset: int) -> None:
    assert_error(
        post(client, f"/v1/models/{path}", body),
        400,
        f"JSON Parse error: Number too big to be stored in double. at offset: {offset}",
    )


def test_numbers_a_double_holds_are_read(client: httpx.Client) -> None:
    path = f"/v1/models/{ECHO}:predict"
    body = b'{"signature_name": "echo_float64", "inputs": [1e308, 1e-400, 0.000001e310, 1' + b"0" * 300 + b"]}"
    response = post(client, path, body)
    assert response.text == '{"outputs":[1e+308,0.0,1e+304,1e+300]}'
    infinities = post(client, path, b'{"signature_name": "echo_float64", "inputs": [Infinity, -Infinity]}')
    assert infinities.text == '{"outputs":[Infinity,-Infinity]}'


def test_a_float_feature_that_only_fits_as_infinity_is_refused(client: httpx.Client) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1e39}]}
    assert_error(
        post(client, f"/v1/models/{HP1}:regress", body),
        400,
        "Cannot convert JSON value: 1e+39 to float without loss of precision.",
    )


def test_strings_pass_as_the_bytes_sent(client: httpx.Client) -> None:
    # RapidJSON does not check UTF-8: TF Serving hands a string's raw bytes to the model (here: a UTF-8 surrogate).
    body = b'{"signature_name": "echo_bytes", "inputs": ["\xed\xa0\x80", "\\ud83d\\ude00"]}'
    response = post(client, f"/v1/models/{ECHO}:predict", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": [{"b64": "7aCA"}, {"b64": base64.b64encode("\U0001f600".encode()).decode()}]}


# --------------------------------------------------------------------------- deploy's smoke check


def test_the_deploy_smoke_check_calls_every_classify_and_regress_signature(tfs: RunningServer) -> None:
    rows, expected = np.array([[1.0], [3.0]], dtype="float32"), np.array([[2.5], [3.5]], dtype="float32")
    check = SmokeCheck(rows=rows, expected=expected, served_format="saved_model", features=("x",))
    with ModelServerClient(tfs.url, timeout=30) as server:
        result = verify_deployment(HP1, 1, "stable", server, check)
        assert result["example_signatures"] == {
            "classify_labels": "classify",
            "classify_x_to_y": "classify",
            "regress_x_to_y": "regress",
        }
        wrong_names = SmokeCheck(rows=rows, expected=expected, served_format="saved_model", features=("z",))
        with pytest.raises(DeployVerificationError, match="failed the classify smoke request on signature"):
            verify_deployment(HP1, 1, "stable", server, wrong_names)
