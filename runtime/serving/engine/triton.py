"""The engine as Triton's client (``--triton-client engine``): one Triton request per batch of all workers.

The workers hand their checked tensors to the engine over the shared-memory transport, as they do
for the embedded backend. Here a model's runner forms batches across every worker with the model's
own ``dynamic_batching`` settings (as Triton reports them), and sends each batch to Triton as one
binary-tensor HTTP request; Triton's answer is split back per request. At most the model's Triton
instance count of batches are in flight to Triton at a time, so requests that arrive meanwhile join
the next batch instead of becoming requests of their own. Errors are Triton's, mapped as the workers
map them (:mod:`runtime.serving.tritoncall`): Triton down is the same 503 in both modes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from runtime.errors import ServingError
from runtime.serving.batching import BatchStats, Tensors
from runtime.serving.engine.tritonhttp import TritonHttp
from runtime.serving.platforms import Device, Instance
from runtime.serving.repository import ModelConfig, looks_like_repository, triton_model_names
from runtime.serving.runner import ModelRunner
from runtime.serving.tritoncall import TritonServer

logger = logging.getLogger("runtime.engine")

CPU = Device("cpu")


class TritonSlot:
    """One batch in flight to Triton (the runner's 'instance'); the model runs in Triton, not here."""

    device = CPU

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError("a Triton model runs in Triton: TritonRunner sends the batch there")

    def close(self) -> None:
        pass


class TritonRunner(ModelRunner):
    """One version of one Triton model: the engine's batcher in front, Triton behind."""

    def __init__(
        self,
        http: TritonHttp,
        config: ModelConfig,
        version: str,
        on_batch: Callable[[ModelRunner, BatchStats], None] | None = None,
    ) -> None:
        # One batch in flight per Triton instance: requests that arrive meanwhile join the next batch. (Two per
        # instance, to overlap the HTTP round trip with Triton's execution, halved the tiny model's batches and
        # cost 40% more server CPU per request at c=32 for no measurable gain in throughput.)
        slots: list[Instance] = [TritonSlot() for _ in range(max(config.instance_count, 1))]
        super().__init__(config, version, slots, on_batch)
        self.http = http
        # Every output: the workers pick the ones a request asked for.
        self._outputs = [t.name for t in config.outputs]
        self._datatypes = {t.name: t.datatype for t in config.inputs}

    async def _execute(self, instance: int, parts: list[Tensors]) -> Tensors:
        try:
            tensors = {name: (datatype, [part[name] for part in parts]) for name, datatype in self._datatypes.items()}
            return await self.http.infer(self.config.name, self.version, tensors, self._outputs)
        except ServingError:
            raise  # Triton's answer, mapped as the workers map it
        except Exception as ex:
            raise self._failure(ex) from ex

    def _record(self, stats: BatchStats) -> None:
        # Not runtime_batch_size: /metrics has Triton's own batch sizes under that name (tritonstats).
        if self._on_batch is not None:
            self._on_batch(self, stats)

    def warm_up(self) -> None:
        """Nothing here: Triton runs config.pbtxt's model_warmup itself."""

    async def stop(self) -> None:
        await super().stop()
        await self.http.close()


async def load_triton_runners(
    url: str,
    model_dir: str | None,
    wait_s: float,
    timeout_s: float,
    on_batch: Callable[[ModelRunner, BatchStats], None] | None = None,
) -> list[ModelRunner]:
    """A runner per version of every model Triton serves for ``model_dir`` (else of its repository index),
    once Triton and they are ready (a StartupError after ``wait_s``). ``timeout_s`` bounds one request."""
    names = triton_model_names(model_dir) if model_dir and looks_like_repository(model_dir) else None
    server = TritonServer(url, conn_limit=1, conn_timeout=timeout_s)
    try:
        configs = await server.wait_for_models(names, wait_s)
    finally:
        await server.close()  # what serves the batches is lighter (tritonhttp)
    http = TritonHttp(url, timeout_s)
    runners: list[ModelRunner] = [
        TritonRunner(http, config, version, on_batch) for config in configs.values() for version in config.versions
    ]
    logger.info(
        "Model engine: Triton at %s serves %s; one request to Triton per batch of all workers' requests",
        url,
        ", ".join(sorted(configs)) or "no models",
    )
    return runners
