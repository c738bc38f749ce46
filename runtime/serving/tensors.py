"""Checking request tensors against a model's config, shared by every backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    """A BYTES tensor as strings onnxruntime takes: numpy unicode, or an object array of str as it is.

    onnxruntime reads an object array of str itself, element by element in C: converting it to numpy
    unicode first would only add a pass (BiDAF: 45 µs a request, against 7 µs more in the session).
    """
    if value.dtype.kind == "U":
        return value
    if value.dtype.kind == "S":
        return np.char.decode(value, "utf-8")
    kinds = set(map(type, value.reshape(-1)))  # one pass in C, not a Python generator per element
    if kinds == {str}:
        return value
    if not kinds:
        return value.astype(str)
    if kinds == {bytes}:
        try:
            return np.char.decode(value.astype(np.bytes_), "utf-8")
        except UnicodeDecodeError:
            pass
    decode = np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b), otypes=[object])
    result: np.ndarray = decode(value)
    return result.astype(str)


def _datatype_error(name: str, got: str, want: str) -> BadRequest:
    return BadRequest(f"unexpected datatype TYPE_{got} for inference input '{name}', expecting TYPE_{want}")


def _check_datatype(spec: TensorSpec, array: np.ndarray, exact: bool) -> None:
    """BYTES takes str and bytes; numbers take their own type, or (not ``exact``) one that casts safely."""
    kind = array.dtype.kind
    if spec.datatype == "BYTES":
        if kind not in ("O", "S", "U"):
            raise _datatype_error(spec.name, numpy_to_wire(array.dtype), spec.datatype)
        if kind != "S":
            _check_unicode(spec.name, array)
        return
    want = wire_to_numpy(spec.datatype)
    if array.dtype == want:
        return
    if exact or kind in ("O", "S", "U") or not np.can_cast(array.dtype, want, "same_kind"):
        raise _datatype_error(spec.name, numpy_to_wire(array.dtype), spec.datatype)


def _check_unicode(name: str, array: np.ndarray) -> None:
    """Strings a model can take: a lone surrogate (JSON carries "\\ud800") has no UTF-8 form, and would fail
    the whole batch it joins. One join and one encode, in C."""
    items = array.reshape(-1).tolist()
    try:
        text = "".join(items)
    except TypeError:  # bytes among them (or other objects, refused where the backend converts)
        text = "".join(item for item in items if isinstance(item, str))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            f"input '{name}' holds a string that is not valid Unicode (a lone surrogate such as \\ud800, "
            "which has no UTF-8 form)"
        ) from None


def validate_inputs(config: ModelConfig, inputs: Mapping[str, Any], exact_datatypes: bool = False) -> None:
    """Check inputs against the model's datatypes and shapes, batch first; a 400 naming the tensor otherwise.

    Nothing is converted: each backend converts once, into its own form (:func:`cast`). With
    ``exact_datatypes`` (the v2 wire, where the client declares them) a datatype must match exactly.
    """
    model = config.name
    unknown = [name for name in inputs if config.input(name) is None]
    if unknown:
        known = ", ".join(t.name for t in config.inputs)
        raise BadRequest(f"unexpected inference input '{unknown[0]}' for model '{model}'; it takes: {known}")
    batch: int | None = None
    for spec in config.inputs:
        if spec.name not in inputs:
            if spec.optional:
                continue
            required = sum(not t.optional for t in config.inputs)
            expected = (  # Triton's words
                f"{required} inputs"
                if required == len(config.inputs)
                else f"number of inputs between {required} and {len(config.inputs)}"
            )
            raise BadRequest(
                f"expected {expected} but got {len(inputs)} inputs for model '{model}': input '{spec.name}' is missing"
            )
        value = inputs[spec.name]
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        _check_datatype(spec, array, exact_datatypes)
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
        if spec.reshape is not None and not _reshapable(shape[len(_lead(config, shape)) :], spec.reshape):
            raise BadRequest(
                f"input '{spec.name}' of model '{model}' with shape {list(shape)} cannot be "
                f"reshaped to {list(_lead(config, shape) + spec.reshape)}"
            )


def _reshapable(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether numpy can reshape ``shape`` to ``target`` (which may hold one -1)."""
    size = int(np.prod(shape, dtype=np.int64))
    known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
    if -1 in target:
        return (known > 0 and size % known == 0) or (known == 0 and size == 0)
    return size == known


def _lead(config: ModelConfig, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:1] if config.max_batch_size > 0 else ()


def cast(config: ModelConfig, spec: TensorSpec, value: Any, reshape: bool) -> np.ndarray:
    """A checked input in the model's numeric datatype (BYTES as given), reshaped per the config if asked."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if spec.datatype != "BYTES":
        array = array.astype(wire_to_numpy(spec.datatype), copy=False)
    if reshape and spec.reshape is not None:
        array = array.reshape(_lead(config, array.shape) + spec.reshape)
    return array


def shape_outputs(
    config: ModelConfig, outputs: Mapping[str, np.ndarray], names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Model outputs as the config declares them: the configured ones (or ``names``), ``reshape`` undone."""
    shaped: dict[str, np.ndarray] = {}
    for spec in config.outputs:
        if names is not None and spec.name not in names:
            continue
        value = outputs[spec.name]
        if spec.reshape is not None:
            value = value.reshape(_lead(config, value.shape) + spec.dims)
        if spec.datatype == "BYTES":
            value = to_bytes_array(np.asarray(value))
        shaped[spec.name] = value
    return shaped


def classify(values: np.ndarray, count: int, labels: tuple[str, ...] | None, batched: bool) -> np.ndarray:
    """Triton's classification extension: the top ``count`` entries as "value:index[:label]" strings."""
    rows = values.reshape(values.shape[0], -1) if batched else values.reshape(1, -1)
    count = min(count, rows.shape[1])
    out = np.empty((rows.shape[0], count), dtype=np.object_)
    for r, row in enumerate(rows.astype(np.float64)):
        top = np.argsort(-row, kind="stable")[:count]
        for c, index in enumerate(top):
            text = f"{row[index]:f}:{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[r, c] = text.encode("utf-8")
    return out if batched else out.reshape(count)
