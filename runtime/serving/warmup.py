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
    return [
        WarmupSample(
            sample.name,
            {name: _array(config, sample, name, spec) for name, spec in sample.inputs.items()},
            max(1, int(sample.count)),
        )
        for sample in config.proto.model_warmup
    ]
