"""Datatype names: Triton config (TYPE_FP32), KServe v2 wire (FP32) and numpy; the v2 binary layout of BYTES."""

from __future__ import annotations

import struct

import numpy as np

# The v2 binary extension: the length of the JSON part of a body whose tensors follow it as raw bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")

# v2 wire name -> numpy dtype. BYTES tensors are numpy object arrays of bytes.
WIRE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


def config_to_wire(data_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32`` (Triton's config enum name to the v2 datatype; TYPE_STRING is BYTES)."""
    name = data_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def wire_to_config(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


_NUMPY_TO_WIRE = {dtype: wire for wire, dtype in WIRE_TO_NUMPY.items()}


def numpy_to_wire(dtype: np.dtype) -> str:
    wire = _NUMPY_TO_WIRE.get(dtype)  # once per tensor on the engine's path: a dict, not a scan
    if wire is not None:
        return wire
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for wire, candidate in WIRE_TO_NUMPY.items():
        if candidate == dtype:
            return wire
    raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype")


def wire_to_numpy(datatype: str) -> np.dtype:
    try:
        return WIRE_TO_NUMPY[datatype]
    except KeyError:
        raise ValueError(f"unsupported datatype {datatype!r}; known: {', '.join(WIRE_TO_NUMPY)}") from None


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor in the v2 binary layout: each element's 4-byte little-endian length, then its bytes
    (str elements UTF-8 encoded)."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)
