"""One version of one model on its instances, behind a dynamic batcher (or a plain scheduler).

Used by the engine process and by the in-worker fallback (``--engine worker``) alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from runtime import metrics
from runtime.errors import ServingError
from runtime.serving import instances as groups
from runtime.serving.batching import BatchStats, DynamicBatcher, Tensors, join
from runtime.serving.platforms import Instance, load_instance, platform_for
from runtime.serving.repository import ModelConfig, load_repository
from runtime.serving.warmup import warmup_samples

logger = logging.getLogger("runtime.serving")


EWMA_WEIGHT = 0.1
# The engine runs a batch on its event loop when the model's executions average less than this: a thread
# hand-off there and back costs about as much, and the loop does nothing but batching.
ENGINE_INLINE_BELOW_S = 0.0002


@dataclass(frozen=True)
class Schedule:
    """Triton's schedule-policy request parameters, and when the caller stops waiting (``time.monotonic()``)."""

    priority: int = 0
    timeout_us: int = 0
    deadline: float | None = None


NO_SCHEDULE = Schedule()


class InferenceFailed(ServingError):
    status_code = 500


def release_free_memory() -> None:
    """Give the heap that model loading freed (the ONNX graph read for the config) back to the OS."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ModelRunner:
    """The instances of one model version, and the batcher or plain scheduler in front of them."""

    def __init__(
        self,
        config: ModelConfig,
        version: str,
        instances: list[Instance],
        on_batch: Callable[[ModelRunner, BatchStats], None] | None = None,
        inline_below_s: float = 0.0,
    ) -> None:
        """``inline_below_s``: run batches on the event loop while they take less than this (0: never)."""
        self.config = config
        self._inline_below_s = inline_below_s if len(instances) == 1 else 0.0
        self._compute_s = 1.0  # a moving average of execution time; the thread pool until measured
        self.version = version
        self.instances = instances
        self._on_batch = on_batch
        self._pool = ThreadPoolExecutor(len(instances), thread_name_prefix=f"model-{config.name}")
        self._batcher: DynamicBatcher | None = None
        self._free: asyncio.Semaphore | None = None
        self._idle: list[int] = []

    def start(self) -> None:
        dynamic = self.config.dynamic_batching
        if dynamic is not None and self.config.max_batch_size > 0:
            self._batcher = DynamicBatcher(
                self._execute,
                instances=len(self.instances),
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
            self._free = asyncio.Semaphore(len(self.instances))
            self._idle = list(range(len(self.instances)))

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for instance in self.instances:
            instance.close()

    def _record(self, stats: BatchStats) -> None:
        metrics.record_batch(self.config.name, self.version, stats)
        if self._on_batch is not None:
            self._on_batch(self, stats)

    async def _execute(self, instance: int, parts: list[Tensors]) -> Tensors:
        run = self.instances[instance].run

        def join_and_run() -> Tensors:
            return run(join(parts))

        try:
            if self._inline_below_s and self._compute_s < self._inline_below_s:
                # Cheaper than the two thread hand-offs: run on the loop (which only batches here).
                started = time.perf_counter()
                outputs = join_and_run()
                self._compute_s += (time.perf_counter() - started - self._compute_s) * EWMA_WEIGHT
                return outputs
            started = time.perf_counter()
            outputs = await asyncio.get_running_loop().run_in_executor(self._pool, join_and_run)
            self._compute_s += (time.perf_counter() - started - self._compute_s) * EWMA_WEIGHT
            return outputs
        except Exception as ex:
            # The library's message names its source files and C++ signatures: the log gets it, the client not.
            raise InferenceFailed(
                f"inference failed for model '{self.config.name}' version {self.version}; the server log has "
                "the details",
                detail=f"{type(ex).__name__}: {ex}",
            ) from ex

    async def _execute_alone(self, inputs: Tensors, tag: object) -> Tensors:
        assert self._free is not None
        async with self._free:
            instance = self._idle.pop()
            started = time.perf_counter()
            try:
                return await self._execute(instance, [inputs])
            finally:
                self._idle.append(instance)
                size = int(next(iter(inputs.values())).shape[0]) if self.config.max_batch_size > 0 else 1
                self._record(BatchStats(size, 1, [0.0], time.perf_counter() - started, [tag]))

    def submit(self, inputs: Tensors, schedule: Schedule = NO_SCHEDULE, tag: object = None) -> asyncio.Future[Tensors]:
        """Queue validated inputs (batched where the model batches); resolves to their outputs.

        ``tag`` reaches ``on_batch``. Cancelling the future takes the request out of its batch. Raises
        :class:`runtime.errors.Overloaded` when the model's queue is full or the deadline has passed.
        """
        started = time.perf_counter()
        if self._batcher is not None:
            try:
                future = self._batcher.submit(
                    inputs,
                    priority=schedule.priority,
                    timeout_us=schedule.timeout_us,
                    deadline=schedule.deadline,
                    tag=tag,
                )
            except ServingError as ex:
                metrics.record_request(self.config.name, self.version, 0.0, False, metrics.failure_reason(ex))
                raise
        else:
            future = asyncio.ensure_future(self._execute_alone(inputs, tag))
        future.add_done_callback(lambda done: self._timed(done, started))
        return future

    def _timed(self, done: asyncio.Future[Tensors], started: float) -> None:
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        seconds = time.perf_counter() - started
        metrics.record_request(self.config.name, self.version, seconds, error is None, metrics.failure_reason(error))

    def warm_up(self) -> None:
        """Run config.pbtxt's ``model_warmup`` samples on every instance (before the model is served)."""
        for sample in warmup_samples(self.config):
            for instance in self.instances:
                for _ in range(sample.count):
                    instance.run(sample.inputs)
            logger.info("Model %s warmed up with %s (x%d)", self.config.name, sample.name, sample.count)


def load_runners(
    model_dir: str,
    cpu_share: int = 1,
    on_batch: Callable[[ModelRunner, BatchStats], None] | None = None,
    inline_below_s: float = 0.0,
) -> list[ModelRunner]:
    """Every version of every model in the repository, on the devices its instance groups name.

    The cores are split over a model's CPU instances, and over ``cpu_share`` copies of the model
    (the in-worker fallback loads one per worker). Call :meth:`ModelRunner.start` on the event loop.
    """
    runners = []
    for config in load_repository(model_dir):
        platform = platform_for(config)
        devices = groups.resolve(config, platform)
        threads = max(1, groups.cpu_threads(devices) // cpu_share)
        for version in config.versions:
            loaded = [load_instance(config, version, device, threads) for device in devices]
            runner = ModelRunner(config, version, loaded, on_batch, inline_below_s)
            runner.warm_up()  # before readiness, as Triton's model_warmup
            runners.append(runner)
        release_free_memory()
        logger.info(
            "Loaded model %s versions %s (max_batch_size %d; instances: %s; %d thread(s) per CPU instance)",
            config.name,
            ",".join(config.versions),
            config.max_batch_size,
            groups.describe(devices),
            threads,
        )
    return runners
