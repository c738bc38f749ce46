"""KServe v2 endpoints: tritonclient (JSON and binary tensors) against the app served on a socket in this
process; raw HTTP for bad input against the same app through its ASGI interface."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from runtime.settings import Settings
from tests.support.inprocess import app_client, served
from tests.support.models import TYPED, linear_reference


@pytest.fixture(scope="module")
def url(model_repo: Path) -> Iterator[str]:
    """One repository-only app (these tests only read from it); the model engine's transport of the same
    requests is tests/test_engine.py's."""
    with served(Settings(model_dir=str(model_repo))) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    yield client
    client.close()


def test_health_metadata_and_config(client: triton.InferenceServerClient, url: str) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and client.is_model_ready("linear", "1")
    assert client.get_server_metadata()["extensions"] == [
        "classification",
        "binary_tensor_data",
        "model_repository",
        "schedule_policy",
    ]
    meta = client.get_model_metadata("linear")
    assert meta == {
        "name": "linear",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "norm", "datatype": "FP32", "shape": [-1, 1]},
        ],
    }
    config = client.get_model_config("classifier")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [5]
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    # Auto-completed: no config.pbtxt, a dynamic batch dimension -> Triton's default max_batch_size 4.
    assert client.get_model_config("linear")["max_batch_size"] == 4
    index = httpx.post(url + "/v2/repository/index").json()
    assert {"name": "linear", "version": "1", "state": "READY"} in index


@pytest.mark.parametrize("binary", [True, False])
def test_infer_float_bytes_and_classification(client: triton.InferenceServerClient, binary: bool) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor = triton.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("y", binary_data=binary), triton.InferRequestedOutput("norm", binary)]
    result = client.infer("linear", [tensor], outputs=outputs, request_id="req-1")
    want = linear_reference(x)
    np.testing.assert_allclose(result.as_numpy("y"), want["y"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("norm"), want["norm"], rtol=1e-6)
    assert result.get_response()["id"] == "req-1"

    text = triton.InferInput("text", [3, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"hello"], [b"world"], ["h\u00e9".encode()]], dtype=object), binary)
    result = client.infer("strings", [text])
    assert result.as_numpy("id").ravel().tolist() == [1, 2, 0]
    assert [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("echo").ravel()] == [
        b"hello",
        b"world",
        "h\u00e9".encode(),
    ]

    logits = triton.InferInput("x", [2, 5], "FP32")
    logits.set_data_from_numpy(np.array([[1, 5, 2, 3, 0], [9, 0, 0, 0, 1]], dtype=np.float32), binary)
    result = client.infer("classifier", [logits], outputs=[triton.InferRequestedOutput("probs", binary, class_count=2)])
    top = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in result.as_numpy("probs")]
    assert [[entry.split(":", 1)[1] for entry in row] for row in top] == [["1:b", "3:d"], ["0:a", "4:e"]]
    assert float(top[0][0].split(":")[0]) == pytest.approx(np.exp(5) / np.exp([1, 5, 2, 3, 0]).sum(), rel=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(client: triton.InferenceServerClient, binary: bool) -> None:
    dtypes = {
        "i8": np.int8,
        "u8": np.uint8,
        "i16": np.int16,
        "i32": np.int32,
        "i64": np.int64,
        "f16": np.float16,
        "f32": np.float32,
        "f64": np.float64,
        "b": np.bool_,
    }
    assert set(dtypes) == set(TYPED)
    inputs, values = [], {}
    for key, dtype in dtypes.items():
        value = (np.array([[1, 0], [0, 1]]) if dtype is np.bool_ else np.array([[1, -2], [3, 4]])).astype(dtype)
        if dtype in (np.uint8,):
            value = np.abs(value).astype(dtype)
        tensor = triton.InferInput(f"in_{key}", [2, 2], triton.np_to_triton_dtype(np.dtype(dtype)))
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
        values[key] = value
    result = client.infer("types", inputs, outputs=[triton.InferRequestedOutput(f"out_{k}", binary) for k in dtypes])
    for key, value in values.items():
        got = result.as_numpy(f"out_{key}")
        assert got.dtype == value.dtype and np.array_equal(got, value), key


@pytest.fixture(scope="module")
def app(model_repo: Path) -> Iterator[httpx.Client]:
    """The same repository-only app in this process, for the raw-HTTP contract."""
    with app_client(model_dir=str(model_repo)) as client:
        yield client


def infer_raw(app: httpx.Client, model: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return app.post(f"/v2/models/{model}/infer", content=body, headers=headers or {})


def tensor_json(name: str = "x", shape: list[int] | None = None, datatype: str = "FP32", data: object = None) -> bytes:
    shape = shape if shape is not None else [1, 4]
    data = data if data is not None else [1.0] * int(np.prod(shape))
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}).encode()


def with_parameters(**parameters: object) -> bytes:
    return json.dumps({**json.loads(tensor_json()), "parameters": parameters}).encode()


@pytest.mark.parametrize(
    ("model", "body", "headers", "status", "message"),
    [
        (
            "linear",
            tensor_json(shape=[1, 5]),
            None,
            400,
            "input 'x' of model 'linear' has shape [1, 5], expected [-1, 4]",
        ),
        (
            "linear",
            tensor_json(datatype="FP64"),
            None,
            400,
            "unexpected datatype TYPE_FP64 for inference input 'x', expecting TYPE_FP32",
        ),
        ("linear", tensor_json(name="z"), None, 400, "unexpected inference input 'z' for model 'linear'"),
        ("linear", with_parameters(priority=2**64), None, 400, "parameter 'priority' must be an integer from 0 to"),
        ("linear", with_parameters(timeout=2**70), None, 400, "parameter 'timeout' must be an integer from 0 to"),
        (
            "linear",
            json.dumps({"inputs": [json.loads(tensor_json())["inputs"][0]] * 2}).encode(),
            None,
            400,
            "input 'x' appears more than once in the request",
        ),
        ("linear", json.dumps({"inputs": []}).encode(), None, 400, "non-empty 'inputs' list"),
        (
            "linear",
            tensor_json(shape=[2, 4], data=[1.0, 2.0]),
            None,
            400,
            "unexpected number of elements for input 'x': shape [2, 4] needs 8, got 2",
        ),
        ("linear", b'{"inputs": [', None, 400, "failed to parse the request JSON"),
        ("linear", tensor_json(data=["a", "b", "c", "d"]), None, 400, "its JSON data must be numbers"),
        ("linear", tensor_json(shape=[9, 4]), None, 400, "batch size 9, which must be between 1 and max_batch_size 4"),
        ("nope", tensor_json(), None, 404, "Request for unknown model: 'nope' is not found"),
        (
            "linear",
            tensor_json(),
            {"Inference-Header-Content-Length": "abc"},
            400,
            "Inference-Header-Content-Length must be an integer",
        ),
        (
            "linear",
            tensor_json(),
            {"Inference-Header-Content-Length": "100000"},
            400,
            "Inference-Header-Content-Length is 100000, but the request body has",
        ),
    ],
)
def test_bad_infer_requests_get_4xx_and_server_keeps_serving(
    app: httpx.Client, model: str, body: bytes, headers: dict[str, str] | None, status: int, message: str
) -> None:
    response = infer_raw(app, model, body, headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    ok = infer_raw(app, "linear", tensor_json())
    assert ok.status_code == 200 and ok.json()["outputs"][0]["name"] == "y"


def test_malformed_binary_tensors(app: httpx.Client) -> None:
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    short = infer_raw(app, "linear", header + b"\0" * 8, {"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400
    assert "declares binary_data_size 16, but only 8 bytes" in short.json()["error"]
    extra = infer_raw(app, "linear", header + b"\0" * 20, {"Inference-Header-Content-Length": str(len(header))})
    assert extra.status_code == 400 and "4 bytes of binary data that no input claims" in extra.json()["error"]
    text_header = json.dumps(
        {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}
    ).encode()
    truncated = struct.pack("<I", 10) + b"ab"
    bad = infer_raw(app, "strings", text_header + truncated, {"Inference-Header-Content-Length": str(len(text_header))})
    assert bad.status_code == 400 and "ends inside an element" in bad.json()["error"]


def test_versioned_routes_and_unknown_version(app: httpx.Client) -> None:
    ok = infer_raw(app, "linear/versions/1", tensor_json())
    assert ok.status_code == 200 and ok.json()["model_version"] == "1"
    missing = app.get("/v2/models/linear/versions/7")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Request for unknown model: 'linear' version 7 is not found"}


def test_repository_only_server_has_no_score(app: httpx.Client) -> None:
    response = app.post("/score", json={})
    assert response.status_code == 404
    assert "no entry script" in response.json()["message"]


def test_infer_route_errors_outside_the_data_plane(app: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """v2 infer is its route's ASGI app (no request_response wrapper): Starlette's handlers still answer."""
    wrong_method = app.get("/v2/models/linear/infer")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert wrong_method.headers["allow"] == "POST"

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("runtime.http.v2.decode_infer_request", broken)
    failed = infer_raw(app, "linear", tensor_json())
    assert failed.status_code == 500
    assert failed.headers["x-request-id"]  # answered inside the request-id middleware, as before


def test_an_optional_input_may_be_left_out(tmp_path: Path) -> None:
    """config.pbtxt's `optional: true` (Triton's): a request without the input runs on the graph's default; one
    with it overrides it; requests of both kinds never share a batch. Both kinds were a 400 ("is missing")."""
    from tests.test_repository import scaled_repo

    repo = scaled_repo(tmp_path / "repo")
    x = [1.0, 2.0, 3.0, 4.0]
    alone = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]}).encode()
    scale = {"name": "scale", "shape": [1, 1], "datatype": "FP32", "data": [3.0]}
    both = json.dumps({"inputs": [json.loads(alone)["inputs"][0], scale]}).encode()
    with app_client(model_dir=str(repo), engine="worker") as app:
        assert infer_raw(app, "scaled", alone).json()["outputs"][0]["data"] == [2 * v for v in x]
        assert infer_raw(app, "scaled", both).json()["outputs"][0]["data"] == [3 * v for v in x]
        config = app.get("/v2/models/scaled/config").json()
        assert [i.get("optional", False) for i in config["input"]] == [False, True]
        missing = json.dumps({"inputs": [scale]}).encode()
        refused = infer_raw(app, "scaled", missing)
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "expected number of inputs between 1 and 2 but got 1 inputs for model 'scaled': input 'x' is missing"
    }
