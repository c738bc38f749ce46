"""The embedded backend: every model in the repository, in this process, with dynamic batching.

Nothing else to start: ``runtime serve --model-dir DIR`` loads
``DIR/triton/<model>/<version>/model.onnx`` or ``model.pt`` (or ``DIR/<model>/...``),
one platform instance (:mod:`runtime.serving.platforms`) per ``instance_group``
instance, and a :class:`DynamicBatcher` per model version that batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Awaitable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from runtime import metrics
from runtime.context import InitContext
from runtime.dataplane import DEADLINE, OUTPUTS, schedule_parameters
from runtime.errors import ServingError, UnknownModel
from runtime.hookspecs import hookimpl
from runtime.metrics import failure_reason
from runtime.serving import platforms
from runtime.serving.batching import BatchStats, DynamicBatcher, Tensors
from runtime.serving.platforms import Device, Instance, load_instance
from runtime.serving.repository import ModelConfig, load_repository, looks_like_repository
from runtime.serving.tensors import cast, shape_outputs
from runtime.serving.warmup import warmup_samples

logger = logging.getLogger("runtime.onnxruntime")


class InferenceFailed(ServingError):
    status_code = 500


def release_free_memory() -> None:
    """Give the heap that model loading freed (the ONNX graph read for the config) back to the OS."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class LoadedModel:
    """One version of one model: its instances, and the batcher or plain scheduler in front of them."""

    def __init__(self, config: ModelConfig, version: str, threads: int) -> None:
        self.config = config
        self.version = version
        self.sessions: list[Instance] = [
            load_instance(config, version, Device("cpu"), threads) for _ in range(config.instance_count)
        ]
        self._pool = ThreadPoolExecutor(config.instance_count, thread_name_prefix=f"model-{config.name}")
        self._batcher: DynamicBatcher | None = None
        self._free: asyncio.Semaphore | None = None
        self._instances: list[int] = []

    def start(self) -> None:
        dynamic = self.config.dynamic_batching
        if dynamic is not None and self.config.max_batch_size > 0:
            self._batcher = DynamicBatcher(
                self._execute,
                instances=len(self.sessions),
                max_batch_size=self.config.max_batch_size,
                max_queue_delay_us=dynamic.max_queue_delay_us,
                preferred_batch_sizes=dynamic.preferred_batch_sizes,
                preserve_ordering=dynamic.preserve_ordering,
                on_batch=self._record,
                schedule=dynamic.schedule,
                name=self.config.name,
                on_queue=metrics.pending_gauge(self.config.name, self.version).set,
            )
            self._batcher.start()
        else:
            self._free = asyncio.Semaphore(len(self.sessions))
            self._instances = list(range(len(self.sessions)))

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for session in self.sessions:
            session.close()

    def warm_up(self) -> None:
        """Run config.pbtxt's ``model_warmup`` samples on every instance."""
        for sample in warmup_samples(self.config):
            for instance in range(len(self.sessions)):
                for _ in range(sample.count):
                    self.sessions[instance].run(sample.inputs)
            logger.info("Model %s warmed up with %s (x%d)", self.config.name, sample.name, sample.count)

    def _record(self, stats: BatchStats) -> None:
        metrics.record_batch(self.config.name, self.version, stats)

    async def _execute(self, instance: int, inputs: Tensors) -> Tensors:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.sessions[instance].run, inputs)
        except Exception as ex:
            # onnxruntime's message names its source files and C++ signatures: the log gets it, the client not.
            raise InferenceFailed(
                f"inference failed for model '{self.config.name}' version {self.version}; the server log has "
                "the details",
                detail=f"{type(ex).__name__}: {ex}",
            ) from ex

    async def _execute_alone(self, inputs: Tensors) -> Tensors:
        assert self._free is not None
        async with self._free:
            instance = self._instances.pop()
            started = time.perf_counter()
            try:
                return await self._execute(instance, inputs)
            finally:
                self._instances.append(instance)
                size = int(next(iter(inputs.values())).shape[0]) if self.config.max_batch_size > 0 else 1
                self._record(BatchStats(size, 1, [0.0], time.perf_counter() - started))

    def _feeds(self, inputs: Mapping[str, Any]) -> Tensors:
        """Inputs the data plane checked, in the model's dtype and shape (converted once; the instance takes
        them in its library's form)."""
        return {spec.name: cast(self.config, spec, inputs[spec.name], reshape=True) for spec in self.config.inputs}

    async def infer(self, inputs: Mapping[str, Any], parameters: Mapping[str, Any] | None = None) -> Tensors:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            feeds = self._feeds(inputs)
            if self._batcher is not None:
                priority, timeout_us = schedule_parameters(parameters or {})
                outputs = await self._batcher.submit(
                    feeds, priority=priority, timeout_us=timeout_us, deadline=DEADLINE.get()
                )
            else:
                outputs = await self._execute_alone(feeds)
            return shape_outputs(self.config, outputs, (parameters or {}).get(OUTPUTS))
        except BaseException as ex:
            error = ex
            raise
        finally:
            seconds = time.perf_counter() - started
            metrics.record_request(self.config.name, self.version, seconds, error is None, failure_reason(error))


class OnnxRuntimeBackend:
    """The plugin object; ``runtime serve`` registers one per worker."""

    name = "onnxruntime"

    def __init__(self) -> None:
        self.configs: dict[str, ModelConfig] = {}
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self.ready = False

    def _lookup(self, model: str, version: str | None) -> LoadedModel | None:
        config = self.configs.get(model)
        if config is None:
            return None
        version = version or config.latest_version
        loaded = self.models.get((model, version))
        if loaded is None:
            raise UnknownModel(model, version)
        return loaded

    @hookimpl(tryfirst=True)
    async def init(self, context: InitContext) -> None:
        model_dir = context.settings.model_dir
        if not model_dir or not looks_like_repository(model_dir):
            where = f"in {model_dir}" if model_dir else "(no --model-dir)"
            logger.info("No model repository %s: the embedded backend serves no models", where)
            self.ready = True
            return
        platforms.configure(context.settings)
        configs = await asyncio.to_thread(load_repository, model_dir)
        cores = os.cpu_count() or 1
        for config in configs:
            threads = max(1, cores // (config.instance_count * context.settings.workers))
            for version in config.versions:
                loaded = await asyncio.to_thread(LoadedModel, config, version, threads)
                await asyncio.to_thread(loaded.warm_up)  # before readiness, as Triton's model_warmup
                loaded.start()
                self.models[(config.name, version)] = loaded
            self.configs[config.name] = config
            release_free_memory()
            logger.info(
                "Loaded model %s versions %s (max_batch_size %d, %d instance(s), %d thread(s) each)",
                config.name,
                ",".join(config.versions),
                config.max_batch_size,
                config.instance_count,
                threads,
            )
        self.ready = True

    @hookimpl
    def infer(
        self, model: str, version: str | None, inputs: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> Awaitable[dict[str, np.ndarray]] | None:
        loaded = self._lookup(model, version)
        return None if loaded is None else loaded.infer(inputs, parameters)

    @hookimpl
    def model_index(self) -> list[dict[str, str]]:
        return [{"name": name, "version": v, "state": "READY"} for name, v in sorted(self.models)]

    @hookimpl
    def model_config(self, model: str, version: str | None) -> ModelConfig | None:
        loaded = self._lookup(model, version)
        return None if loaded is None else loaded.config

    @hookimpl
    def model_ready(self, model: str, version: str | None) -> bool | None:
        loaded = self._lookup(model, version)
        return None if loaded is None else self.ready

    @hookimpl
    def server_ready(self) -> bool:
        return self.ready

    @hookimpl
    async def shutdown(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.models.values()))
