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

from runtime import metrics, tracing
from runtime.errors import ServingError, StartupError
from runtime.serving import instances as groups
from runtime.serving.batching import BatchStats, DynamicBatcher, Tensors, check_rows, join, signature, split
from runtime.serving.engine.remote import InstanceLost, RemoteInstance, applies
from runtime.serving.platforms import Instance, load_instance, platform_for
from runtime.serving.repository import ModelConfig, load_repository
from runtime.serving.warmup import warmup_samples

logger = logging.getLogger("runtime.serving")


EWMA_WEIGHT = 0.1
# The engine runs a batch on its event loop when the model's executions average less than this: a thread
# hand-off there and back costs about as much, and the loop does nothing but batching.
ENGINE_INLINE_BELOW_S = 0.0002
# time.thread_time() is a system call (about 5 µs on a VM, twice per execution, where the tiny model runs in
# 8): a model that runs inline is timed every TIMED_EVERY-th execution only. One that slows down is still
# seen within a few dozen executions; a model on the thread pool is timed every time.
TIMED_EVERY = 8


@dataclass(frozen=True)
class Schedule:
    """Triton's schedule-policy request parameters, and when the caller stops waiting (``time.monotonic()``)."""

    priority: int = 0
    timeout_us: int = 0
    deadline: float | None = None


NO_SCHEDULE = Schedule()


class InferenceFailed(ServingError):
    status_code = 500


def _one(outputs: Tensors | list[Tensors]) -> Tensors:
    return outputs[0] if isinstance(outputs, list) else outputs


def _batch_size(inputs: Tensors) -> int:
    return int(next(iter(inputs.values())).shape[0])


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
        shards: list[int] | None = None,
    ) -> None:
        """``inline_below_s``: run batches on the event loop while they take less than this (0: never).
        ``shards``: per instance, how many batches of whole requests it runs at once (its CPU threads, each
        running a shard single-threaded; 1: one batch at a time)."""
        self.config = config
        self._inline_below_s = inline_below_s if len(instances) == 1 else 0.0
        self._compute_s = 1.0  # a moving average of execution time; the thread pool until measured
        self._executions = 0
        self.version = version
        self.instances = instances
        self._on_batch = on_batch
        self._shards = shards or [1] * len(instances)
        self._pool = ThreadPoolExecutor(sum(self._shards), thread_name_prefix=f"model-{config.name}")
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
                shards=self._shards_for,
                inline=self._runs_inline,
            )
            self._batcher.start()
        else:
            # Without a batcher every shard is a slot: requests run side by side, each single-threaded.
            self._free = asyncio.Semaphore(sum(self._shards))
            self._idle = [i for i, n in enumerate(self._shards) for _ in range(n)]

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

    @property
    def slots(self) -> int:
        """Executions of this model that can run at once: its instances, and their shards."""
        return sum(self._shards)

    def _runs_inline(self) -> bool:
        return bool(self._inline_below_s) and self._compute_s < self._inline_below_s

    def _shards_for(self, instance: int) -> int:
        return 1 if self._runs_inline() else self._shards[instance]

    def _timed_run(self, instance: int, parts: list[Tensors]) -> Tensors | list[Tensors]:
        """Join and run; time the execution alone (not the thread hand-off), which decides where the next runs.

        An instance process joins the parts itself and answers each request's outputs apart.
        """
        target = self.instances[instance]
        if isinstance(target, RemoteInstance):
            return target.run_parts(parts)
        inputs = join(parts)
        self._executions += 1
        if self._executions % TIMED_EVERY and self._runs_inline():
            return self._checked(target.run(inputs), inputs)
        # A single-threaded session (a sharded instance) is timed by this thread's CPU: on a busy machine its
        # wall time also counts preemptions and, in the pool, waits for the GIL, and those would send a model
        # of microseconds to the pool (where the GIL waits keep it). Sessions with threads of their own:
        # wall time.
        clock = time.thread_time if self._shards[instance] > 1 else time.perf_counter
        started = clock()
        outputs = target.run(inputs)
        self._compute_s += (clock() - started - self._compute_s) * EWMA_WEIGHT
        return self._checked(outputs, inputs)

    def _checked(self, outputs: Tensors, inputs: Tensors) -> Tensors:
        if self.config.max_batch_size > 0:
            check_rows(outputs, _batch_size(inputs), self.config.name)
        return outputs

    async def _execute(self, instance: int, parts: list[Tensors]) -> Tensors | list[Tensors]:
        try:
            if self._runs_inline():
                # Cheaper than the two thread hand-offs: run on the loop (which only batches here).
                return self._timed_run(instance, parts)
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._timed_run, instance, parts)
        except InstanceLost:
            raise  # a 503 that says what happened (the batch's instance process died)
        except Exception as ex:
            raise self._failure(ex) from ex

    def _failure(self, ex: Exception) -> InferenceFailed:
        # The library's message names its source files and C++ signatures: the log gets it, the client not.
        return InferenceFailed(
            f"inference failed for model '{self.config.name}' version {self.version}; the server log has the details",
            detail=f"{type(ex).__name__}: {ex}",
        )

    async def _execute_alone(self, inputs: Tensors, tag: object) -> Tensors:
        assert self._free is not None
        async with self._free:
            instance = self._idle.pop()
            started = time.perf_counter()
            try:
                return _one(await self._execute(instance, [inputs]))
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

    @property
    def runs_now(self) -> bool:
        """Whether :meth:`run_now` would run requests at once: a model that runs on the event loop (see
        ``inline_below_s``), its batcher idle (nothing queued, no batch forming or running, no
        ``max_queue_delay`` to wait for), tracing off (the batcher's spans)."""
        batcher = self._batcher
        return batcher is not None and batcher.idle and self._runs_inline() and tracing.capture() is None

    def run_now(
        self, requests: list[Tensors], tags: list[object], answer: Callable[[list[Tensors | InferenceFailed]], None]
    ) -> bool:
        """Run ``requests`` on the caller's thread, at once, while :attr:`runs_now`; False: :meth:`submit` them.

        They are joined into batches as the batcher would join them (consecutive requests of one signature, up
        to ``max_batch_size``), without the queue, the futures and their wake-ups. ``answer`` gets, per
        request, its outputs or the error of its batch; the metrics (the same as through the batcher) are
        recorded after it returns, off the requests' path.
        """
        if not self.runs_now:
            return False
        results: list[Tensors | InferenceFailed] = []
        ran: list[tuple[BatchStats, str]] = []
        limit = max(1, self.config.max_batch_size)
        start = 0
        while start < len(requests):
            first = requests[start]
            sizes = [_batch_size(first)]
            end = start + 1
            kind = signature(first) if end < len(requests) else None  # a request alone joins nothing
            while end < len(requests) and sum(sizes) + _batch_size(requests[end]) <= limit:
                if signature(requests[end]) != kind:
                    break
                sizes.append(_batch_size(requests[end]))
                end += 1
            outcomes, stats = self._run_batch_now(requests[start:end], sizes, tags[start:end])
            results += outcomes
            ran.append((stats, metrics.failure_reason(outcomes[0]) if isinstance(outcomes[0], Exception) else ""))
            start = end
        answer(results)
        for stats, reason in ran:
            self._record(stats)
            metrics.record_request(
                self.config.name, self.version, stats.compute_seconds, not reason, reason, stats.requests
            )
        return True

    def _run_batch_now(
        self, parts: list[Tensors], sizes: list[int], tags: list[object]
    ) -> tuple[list[Tensors] | list[InferenceFailed], BatchStats]:
        started = time.perf_counter()
        outcomes: list[Tensors] | list[InferenceFailed]
        try:
            outputs = self._timed_run(0, parts)
        except Exception as ex:
            outcomes = [self._failure(ex)] * len(parts)
        else:
            outcomes = split(outputs, sizes)
        stats = BatchStats(sum(sizes), len(parts), [0.0] * len(parts), time.perf_counter() - started, tags)
        return outcomes, stats

    def _timed(self, done: asyncio.Future[Tensors], started: float) -> None:
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        seconds = time.perf_counter() - started
        metrics.record_request(self.config.name, self.version, seconds, error is None, metrics.failure_reason(error))

    def warm_up(self) -> None:
        """Run config.pbtxt's ``model_warmup`` samples on every instance (before the model is served)."""
        for sample in warmup_samples(self.config):
            for instance in self.instances:
                for _ in range(sample.count):
                    try:
                        instance.run(sample.inputs)
                    except Exception as ex:  # as Triton, the load fails; a TorchScript error's cause is its last line
                        lines = str(ex).strip().splitlines() or [type(ex).__name__]
                        raise StartupError(
                            f"{self.config.path / 'config.pbtxt'}: model '{self.config.name}' failed its model_warmup "
                            f"'{sample.name}': {lines[-1].strip()}"
                        ) from ex
            logger.info("Model %s warmed up with %s (x%d)", self.config.name, sample.name, sample.count)


def load_runners(
    model_dir: str,
    cpu_share: int = 1,
    on_batch: Callable[[ModelRunner, BatchStats], None] | None = None,
    inline_below_s: float = 0.0,
    shard_cpu: bool = False,
    processes: str = "off",
) -> list[ModelRunner]:
    """Every version of every model in the repository, on the devices its instance groups name.

    The cores are split over a model's CPU instances, and over ``cpu_share`` copies of the model
    (the in-worker fallback loads one per worker). With ``shard_cpu`` (the engine), a CPU instance of a
    platform whose sessions run concurrently uses its threads as shards: a batch of several requests runs
    as that many single-threaded executions at once, on the one copy of the model. On few busy cores this
    costs about 12% less CPU per image than intra-op threads, which wait for each other at every operator.
    ``processes`` (``RUNTIME_INSTANCE_PROCESSES``: auto, on, off) says which instances run in a process of
    their own (:mod:`runtime.serving.engine.remote`). Call :meth:`ModelRunner.start` on the event loop.
    """
    runners = []
    for config in load_repository(model_dir):
        platform = platform_for(config)
        devices = groups.resolve(config, platform)
        threads = max(1, groups.cpu_threads(devices) // cpu_share)
        sharded = shard_cpu and getattr(platform, "concurrent_runs", False)
        remote = [applies(processes, d) for d in devices]
        shards = [threads if sharded and d.kind == "cpu" and not r else 1 for d, r in zip(devices, remote, strict=True)]
        for version in config.versions:
            loaded: list[Instance] = [
                RemoteInstance(config, version, d, threads)  # loads in its own process, alongside the rest
                if r
                else load_instance(config, version, d, 1 if n > 1 else threads)
                for d, n, r in zip(devices, shards, remote, strict=True)
            ]
            # A batch on an instance process is a round trip to it: never on the event loop.
            inline = 0.0 if any(remote) else inline_below_s
            runners.append(ModelRunner(config, version, loaded, on_batch, inline, shards))
        release_free_memory()
        shared = ", as concurrent single-threaded shards of each batch" if max(shards) > 1 else ""
        processes_note = f", {sum(remote)} in instance processes" if any(remote) else ""
        logger.info(
            "Loaded model %s versions %s (max_batch_size %d; instances: %s; %d thread(s) per CPU instance%s%s)",
            config.name,
            ",".join(config.versions),
            config.max_batch_size,
            groups.describe(devices),
            threads,
            shared,
            processes_note,
        )
    for runner in runners:
        for instance in runner.instances:
            if isinstance(instance, RemoteInstance):
                instance.wait_ready()
        runner.warm_up()  # before readiness, as Triton's model_warmup
    return runners
