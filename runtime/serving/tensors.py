"""Checking request tensors against a model's config, shared by every backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from runtime.errors import BadRequest
from runtime.serving.datatypes import numpy_to_wire, wire_to_numpy
from runtime.serving.repository import ModelConfig, TensorSpec


def expected_shape(config: ModelConfig, spec: TensorSpec) -> list[int]:
    return ([-1] if config.max_batch_size > 0 else []) + list(spec.dims)


def _dims_match(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def to_bytes_array(value: np.ndarray) -> np.ndarray:
    """A BYTES tensor as a numpy object array of bytes (str elements are UTF-8 encoded)."""
    out = np.empty(value.shape, dtype=np.object_)
    flat_out = out.reshape(-1)
    for i, item in enumerate(value.reshape(-1)):
        flat_out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out


def to_str_array(value: np.ndarray) -> np.ndarray:
    """A BYTES tensor as numpy unicode strings (what onnxruntime takes), converted in C where possible."""
    if value.dtype.kind == "U":
        return value
    if value.dtype.kind == "S":
        return np.char.decode(value, "utf-8")
    flat = value.reshape(-1)
    if all(type(item) is str for item in flat):
        return value.astype(str)
    if all(type(item) is bytes for item in flat):
        try:
            return np.char.decode(value.astype(np.bytes_), "utf-8")
        except UnicodeDecodeError:
            pass
    decode = np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b), otypes=[object])
    result: np.ndarray = decode(value)
    return result.astype(str)


def validate_inputs(config: ModelConfig, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inputs as the model's datatypes and shapes, batch first; a 400 naming the tensor otherwise."""
    model = config.name
    unknown = [name for name in inputs if config.input(name) is None]
    if unknown:
        known = ", ".join(t.name for t in config.inputs)
        raise BadRequest(f"unexpected inference input '{unknown[0]}' for model '{model}'; it takes: {known}")
    checked: dict[str, np.ndarray] = {}
    batch: int | None = None
    for spec in config.inputs:
        if spec.name not in inputs:
            raise BadRequest(
                f"expected {len(config.inputs)} inputs but got {len(inputs)} inputs for model "
                f"'{model}': input '{spec.name}' is missing"
            )
        array = np.asarray(inputs[spec.name])
        if spec.datatype == "BYTES":
            if array.dtype.kind not in ("O", "S", "U"):
                raise BadRequest(
                    f"input '{spec.name}' of model '{model}' must be BYTES, got {numpy_to_wire(array.dtype)}"
                )
            array = to_bytes_array(array)
        else:
            want = wire_to_numpy(spec.datatype)
            if array.dtype != want:
                if array.dtype.kind in ("O", "S", "U") or not np.can_cast(array.dtype, want, "same_kind"):
                    got = "BYTES" if array.dtype.kind in ("O", "S", "U") else numpy_to_wire(array.dtype)
                    raise BadRequest(
                        f"input '{spec.name}' of model '{model}' has datatype {got}, expected {spec.datatype}"
                    )
                array = array.astype(want)
        shape = tuple(int(s) for s in array.shape)
        if config.max_batch_size > 0:
            if len(shape) < 1 or not _dims_match(shape[1:], spec.dims):
                raise BadRequest(
                    f"input '{spec.name}' of model '{model}' has shape {list(shape)}, "
                    f"expected {expected_shape(config, spec)} (batch dimension first)"
                )
            if not 1 <= shape[0] <= config.max_batch_size:
                raise BadRequest(
                    f"input '{spec.name}' of model '{model}' has batch size {shape[0]}, "
                    f"which must be between 1 and max_batch_size {config.max_batch_size}"
                )
            if batch is not None and shape[0] != batch:
                raise BadRequest(f"inputs of model '{model}' have different batch sizes ({batch} and {shape[0]})")
            batch = shape[0]
        elif not _dims_match(shape, spec.dims):
            raise BadRequest(
                f"input '{spec.name}' of model '{model}' has shape {list(shape)}, "
                f"expected {expected_shape(config, spec)}"
            )
        if spec.reshape is not None:
            lead = shape[:1] if config.max_batch_size > 0 else ()
            try:
                array = array.reshape(lead + spec.reshape)
            except ValueError:
                raise BadRequest(
                    f"input '{spec.name}' of model '{model}' with shape {list(shape)} cannot be "
                    f"reshaped to {list(lead + spec.reshape)}"
                ) from None
        checked[spec.name] = array
    return checked


def shape_outputs(config: ModelConfig, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Model outputs as the config declares them: only configured outputs, ``reshape`` undone."""
    shaped: dict[str, np.ndarray] = {}
    for spec in config.outputs:
        value = outputs[spec.name]
        if spec.reshape is not None:
            lead = value.shape[:1] if config.max_batch_size > 0 else ()
            value = value.reshape(tuple(lead) + tuple(d if d != -1 else -1 for d in spec.dims))
        if spec.datatype == "BYTES":
            value = to_bytes_array(np.asarray(value))
        shaped[spec.name] = value
    return shaped
