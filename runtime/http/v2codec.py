"""KServe v2 / Triton HTTP wire format <-> numpy, including the binary tensor extension.

Kept apart from the HTTP handlers (as MLServer keeps its codecs): these
functions take and return bytes, dicts and arrays, and raise
:class:`BadRequest` with a message that names the tensor.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import safejson
from runtime.errors import BadRequest
from runtime.serving.datatypes import HEADER_LENGTH, WIRE_TO_NUMPY, numpy_to_wire, serialize_bytes


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    class_count: int = 0


@dataclass
class InferRequestBody:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_output: bool
    parameters: dict[str, Any] = field(default_factory=dict)


def _element_count(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _reshape(array: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    # A zero-size tensor matches any shape with a 0 in it, [0, 2**70] included, which numpy cannot make.
    try:
        return array.reshape(shape)
    except (ValueError, OverflowError) as ex:
        raise BadRequest(f"input '{name}' cannot have shape {shape}: {ex}") from None


def _parameters(raw: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = raw.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"'parameters' of {where} must be an object, got {type(parameters).__name__}")
    return parameters


def deserialize_bytes(buffer: bytes | memoryview, name: str) -> list[bytes]:
    """BYTES in binary form: each element is a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise BadRequest(f"binary data of input '{name}' ends inside an element length")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise BadRequest(f"binary data of input '{name}' ends inside an element")
        items.append(bytes(buffer[offset : offset + length]))
        offset += length
    return items


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    stack = [data]
    # Iterative flatten keeps deep tensors from hitting the recursion limit.
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _decode_json_tensor(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    flat = _flatten(data)
    expected = _element_count(shape)
    if len(flat) != expected:
        raise BadRequest(
            f"unexpected number of elements for input '{name}': shape {shape} needs {expected}, got {len(flat)}"
        )
    if datatype == "BYTES":
        out = np.empty(len(flat), dtype=np.object_)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise BadRequest(f"input '{name}' is BYTES: its JSON data must be strings")
            try:
                out[i] = item.encode("utf-8")
            except UnicodeEncodeError:  # JSON allows a lone surrogate ("\ud800"); UTF-8 cannot hold it
                raise BadRequest(
                    f"input '{name}' is BYTES: element {i} is not valid Unicode (it holds a lone surrogate)"
                ) from None
        return _reshape(out, shape, name)
    dtype = WIRE_TO_NUMPY[datatype]
    if datatype == "BOOL" and not all(isinstance(v, bool) for v in flat):
        raise BadRequest(f"input '{name}' is BOOL: its JSON data must be true or false")
    if datatype != "BOOL" and not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise BadRequest(f"input '{name}' is {datatype}: its JSON data must be numbers")
    try:
        array = np.asarray(flat, dtype=dtype)
    except (ValueError, OverflowError) as ex:
        raise BadRequest(f"input '{name}' cannot be read as {datatype}: {ex}") from None
    return _reshape(array, shape, name)


def _decode_binary_tensor(name: str, datatype: str, shape: list[int], buffer: memoryview) -> np.ndarray:
    """A view on the request body where numpy can read it as it is (no copy); BYTES elements are copied out."""
    expected = _element_count(shape)
    if datatype == "BYTES":
        items = deserialize_bytes(buffer, name)
        if len(items) != expected:
            raise BadRequest(
                f"unexpected number of elements for input '{name}': shape {shape} needs {expected}, got {len(items)}"
            )
        out = np.empty(len(items), dtype=np.object_)
        out[:] = items
        return _reshape(out, shape, name)
    dtype = WIRE_TO_NUMPY[datatype]
    if len(buffer) != expected * dtype.itemsize:
        raise BadRequest(
            f"unexpected size of binary data for input '{name}': shape {shape} of {datatype} needs "
            f"{expected * dtype.itemsize} bytes, got {len(buffer)}"
        )
    return _reshape(np.frombuffer(buffer, dtype=dtype), shape, name)


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary remainder of an infer request body (a view: tensors are not copied)."""
    view = memoryview(body)
    if header_length is None:
        json_part, binary = body, view[len(body) :]
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < length <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {length}, but the request body has {len(body)} bytes")
        json_part, binary = bytes(view[:length]), view[length:]
    header = safejson.loads(json_part, "failed to parse the request JSON")
    if not isinstance(header, dict):
        raise BadRequest("the request JSON must be an object")
    return header, binary


def decode_infer_request(body: bytes, header_length: str | None) -> InferRequestBody:
    header, binary = split_body(body, header_length)
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("the request must have a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BadRequest("each input must be an object with a 'name'")
        name = raw["name"]
        if name in inputs:  # as Triton: the model would otherwise run on whichever came last
            raise BadRequest(f"input '{name}' appears more than once in the request")
        datatype = raw.get("datatype")
        shape = raw.get("shape")
        if not isinstance(datatype, str) or datatype not in WIRE_TO_NUMPY:
            raise BadRequest(f"input '{name}' has unsupported datatype {str(datatype)[:64]!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise BadRequest(f"input '{name}' must have a 'shape' of non-negative integers, got {str(shape)[:64]}")
        size = _parameters(raw, f"input '{name}'").get("binary_data_size")
        if isinstance(size, bool):
            raise BadRequest(f"input '{name}' declares binary_data_size {size!r}, which is not a byte count")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(
                    f"input '{name}' declares binary_data_size {size!r}, but only {len(binary) - offset} "
                    "bytes of binary data remain"
                )
            inputs[name] = _decode_binary_tensor(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in raw:
            inputs[name] = _decode_json_tensor(name, datatype, shape, raw["data"])
        else:
            raise BadRequest(f"input '{name}' has neither 'data' nor binary_data_size")
    if offset != len(binary):
        raise BadRequest(f"the request has {len(binary) - offset} bytes of binary data that no input claims")
    parameters = _parameters(header, "the request")
    outputs = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise BadRequest("'outputs' must be a list")
        outputs = []
        for raw in header["outputs"]:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise BadRequest("each requested output must be an object with a 'name'")
            params = _parameters(raw, f"output '{raw['name']}'")
            count = params.get("classification", 0)
            if type(count) is not int or count < 0:
                raise BadRequest(f"classification of output '{raw['name']}' must be a non-negative integer")
            binary_out = params.get("binary_data", parameters.get("binary_data_output", False))
            outputs.append(RequestedOutput(raw["name"], bool(binary_out), count))
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"the request 'id' must be a string, got {type(request_id).__name__}")
    return InferRequestBody(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def encode_outputs(outputs: list[tuple[str, np.ndarray, bool]], header: dict[str, Any]) -> tuple[bytes, int | None]:
    """The response body and its JSON header length (None when nothing is binary)."""
    encoded, chunks = [], []
    for name, array, binary in outputs:
        datatype = numpy_to_wire(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = serialize_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)
            ]
        else:
            entry["data"] = array.reshape(-1).tolist()
        encoded.append(entry)
    json_part = safejson.dumps({**header, "outputs": encoded}).encode("utf-8")
    if not chunks:
        return json_part, None
    return json_part + b"".join(chunks), len(json_part)
