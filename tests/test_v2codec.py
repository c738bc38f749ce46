"""The v2 wire codec on its own."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from runtime.errors import BadRequest
from runtime.http.v2codec import decode_infer_request, deserialize_bytes, encode_outputs
from runtime.serving.datatypes import serialize_bytes


def test_bytes_serialisation_round_trip() -> None:
    values = np.array([b"a", b"", "\u00e9".encode()], dtype=object)
    raw = serialize_bytes(values)
    assert raw[:4] == struct.pack("<I", 1)
    assert deserialize_bytes(raw, "t") == [b"a", b"", "\u00e9".encode()]


def test_json_and_binary_inputs_in_one_request() -> None:
    floats = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = json.dumps(
        {
            "id": "7",
            "inputs": [
                {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
                {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
                {"name": "c", "shape": [1, 2], "datatype": "BOOL", "data": [[True, False]]},
            ],
            "outputs": [{"name": "out", "parameters": {"classification": 3, "binary_data": True}}],
        }
    ).encode()
    decoded = decode_infer_request(header + floats.tobytes(), str(len(header)))
    assert decoded.id == "7"
    np.testing.assert_array_equal(decoded.inputs["a"], floats)
    assert decoded.inputs["b"].tolist() == [b"x", b"y"]
    assert decoded.inputs["c"].tolist() == [[True, False]]
    assert decoded.outputs is not None and decoded.outputs[0].class_count == 3 and decoded.outputs[0].binary


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP99", "data": [1, 2]}]}, "unsupported datatype"),
        ({"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}]}, "non-negative integers"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}, "neither 'data' nor binary_data_size"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [1]}]}, "must be strings"),
        (
            {"inputs": [{"name": "a", "shape": [2], "datatype": "BYTES", "data": ["x", "\ud800"]}]},
            "element 1 is not valid",
        ),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "BOOL", "data": [1]}]}, "true or false"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "INT8", "data": [1000]}]}, "cannot be read as INT8"),
        ({"inputs": "x"}, "non-empty 'inputs' list"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_requests(body: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_infer_request(json.dumps(body).encode(), None)


def test_binary_output_encoding_and_header_length() -> None:
    body, length = encode_outputs([("y", np.ones((2,), dtype=np.float32), True)], {"model_name": "m"})
    assert length is not None
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(body[length:], dtype=np.float32).tolist() == [1.0, 1.0]
    body, length = encode_outputs([("y", np.array([b"a"], dtype=object), False)], {})
    assert length is None and json.loads(body)["outputs"][0]["data"] == ["a"]


def test_binary_tensors_are_views_on_the_body() -> None:
    floats = np.arange(6, dtype=np.float32)
    header = json.dumps(
        {"inputs": [{"name": "a", "shape": [6], "datatype": "FP32", "parameters": {"binary_data_size": 24}}]}
    ).encode()
    body = header + floats.tobytes()
    decoded = decode_infer_request(body, str(len(header)))
    np.testing.assert_array_equal(decoded.inputs["a"], floats)
    assert np.shares_memory(decoded.inputs["a"], np.frombuffer(body, dtype=np.uint8))
