"""``model_warmup`` from config.pbtxt: the samples a model runs before it is reported ready (as in Triton)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.serving.datatypes import config_to_wire, wire_to_numpy
from runtime.serving.model_config import mc
from runtime.serving.repository import ModelConfig, RepositoryError


@dataclass
class WarmupSample:
    name: str
    inputs: dict[str, np.ndarray]
    count: int


def _dims(values: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


def check_warmup(config: ModelConfig) -> None:
    """Refuse samples that Triton's warm-up requests would fail the load with (the model's run raised a library
    error at start-up instead): inputs that are not the model's, or not all of them, datatypes and dims unlike
    the config's, a batch over max_batch_size, a data file of the wrong size. Builds no arrays."""
    where = config.path / "config.pbtxt"
    specs = {spec.name: spec for spec in config.inputs}
    optional = {t.name for t in config.proto.input if t.optional}
    for sample in config.proto.model_warmup:
        if config.max_batch_size > 0 and sample.batch_size > config.max_batch_size:
            raise RepositoryError(
                f"{where}: model_warmup '{sample.name}' has batch_size {sample.batch_size}, "
                f"more than max_batch_size {config.max_batch_size}"
            )
        for name, value in sample.inputs.items():
            at = f"{where}: model_warmup '{sample.name}' input '{name}'"
            spec = specs.get(name)
            if spec is None:
                raise RepositoryError(f"{at} is not an input of the model (it has {', '.join(specs)})")
            datatype = config_to_wire(mc.DataType.Name(value.data_type))
            if datatype != spec.datatype:
                raise RepositoryError(
                    f"{at} has data_type {mc.DataType.Name(value.data_type)}, but the input is TYPE_"
                    f"{'STRING' if spec.datatype == 'BYTES' else spec.datatype}"
                )
            dims = tuple(int(d) for d in value.dims)
            if any(d < 0 for d in dims):
                raise RepositoryError(f"{at} has dims {_dims(dims)}: give every size (no -1)")
            if len(dims) != len(spec.dims) or any(c not in (-1, d) for d, c in zip(dims, spec.dims, strict=False)):
                raise RepositoryError(f"{at} has dims {_dims(dims)}, but the input has dims {_dims(spec.dims)}")
            if value.WhichOneof("input_data_type") == "input_data_file" and datatype != "BYTES":
                path = config.path / "warmup" / value.input_data_file
                need = int(np.prod(dims)) * wire_to_numpy(datatype).itemsize
                try:
                    size = path.stat().st_size
                except OSError as ex:
                    raise RepositoryError(f"{at}: cannot read {path}: {ex.strerror}") from None
                if size != need:
                    raise RepositoryError(f"{at}: {path} holds {size} bytes, the input needs {need}")
        missing = [name for name in specs if name not in sample.inputs and name not in optional]
        if missing:
            raise RepositoryError(f"{where}: model_warmup '{sample.name}' gives no value for input '{missing[0]}'")


def _array(config: ModelConfig, sample: mc.ModelWarmup, name: str, spec: mc.ModelWarmup.Input) -> np.ndarray:
    where = f"{config.path / 'config.pbtxt'}: model_warmup '{sample.name}' input '{name}'"
    datatype = config_to_wire(mc.DataType.Name(spec.data_type))
    if datatype == "BYTES":
        raise RepositoryError(f"{where}: TYPE_STRING warm-up inputs are not supported by the embedded backend")
    dtype = wire_to_numpy(datatype)
    shape = tuple(int(d) for d in spec.dims)
    if config.max_batch_size > 0:
        shape = (max(1, int(sample.batch_size)), *shape)
    source = spec.WhichOneof("input_data_type")
    if source == "random_data":
        return np.random.default_rng(0).random(shape).astype(dtype)
    if source == "input_data_file":
        path = config.path / "warmup" / spec.input_data_file
        try:
            one = np.frombuffer(path.read_bytes(), dtype=dtype)
        except (OSError, ValueError) as ex:
            raise RepositoryError(f"{where}: cannot read {path}: {ex}") from None
        per_batch = int(np.prod(shape[1:] if config.max_batch_size > 0 else shape))
        if one.size != per_batch:
            raise RepositoryError(f"{where}: {path} holds {one.size} values, the input needs {per_batch}")
        return np.array(np.broadcast_to(one.reshape(shape[1:] if config.max_batch_size > 0 else shape), shape))
    return np.zeros(shape, dtype=dtype)


def warmup_samples(config: ModelConfig) -> list[WarmupSample]:
    """The model's warm-up requests, built from config.pbtxt (zero_data, random_data or input_data_file)."""
    check_warmup(config)
    return [
        WarmupSample(
            sample.name,
            {name: _array(config, sample, name, spec) for name, spec in sample.inputs.items()},
            max(1, int(sample.count)),
        )
        for sample in config.proto.model_warmup
    ]
