"""The dynamic batcher: joins concurrent requests for one model into one execution.

Like Triton's dynamic batcher, a batch is formed when a model instance is
free: requests that arrived while every instance was busy are joined along
the batch dimension, up to ``max_batch_size``. ``max_queue_delay`` lets the
batcher wait a little for more requests; a preferred batch size closes a
batch early. Requests whose non-batch dimensions or dtypes differ go into
separate batches. A failing execution fails only the requests in it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger("runtime.batching")

Tensors = dict[str, np.ndarray]
# Runs one batch on one instance (in a thread) and returns the outputs, batch first.
Execute = Callable[[int, Tensors], Awaitable[Tensors]]
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass
class Pending:
    inputs: Tensors
    size: int
    signature: Signature
    future: asyncio.Future[Tensors]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What one execution did, for metrics."""

    batch_size: int
    requests: int
    queue_seconds: list[float]
    compute_seconds: float


def signature(inputs: Mapping[str, np.ndarray]) -> Signature:
    return tuple(sorted((name, str(a.dtype), tuple(a.shape[1:])) for name, a in inputs.items()))


class DynamicBatcher:
    def __init__(
        self,
        execute: Execute,
        instances: int,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: tuple[int, ...] = (),
        preserve_ordering: bool = False,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._execute = execute
        self._max_batch_size = max(1, max_batch_size)
        self._delay = max_queue_delay_us / 1e6
        self._preferred = tuple(sorted(preferred_batch_sizes))
        self._preserve_ordering = preserve_ordering
        self._on_batch = on_batch
        self._free_instances = list(range(instances))
        self._instance_ready = asyncio.Semaphore(instances)
        self._queue: collections.deque[Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._previous_done: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    def submit(self, inputs: Tensors) -> asyncio.Future[Tensors]:
        """Queue one request (inputs batch-first, already validated); resolves to its own outputs."""
        size = int(next(iter(inputs.values())).shape[0])
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        self._queue.append(Pending(inputs, size, signature(inputs), future))
        self._arrived.set()
        return future

    async def _next_request(self, deadline: float | None) -> Pending | None:
        """The oldest queued request; wait until ``deadline`` (None: forever) for one to arrive."""
        while not self._queue:
            self._arrived.clear()
            if deadline is None:
                await self._arrived.wait()
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        return self._queue.popleft()

    async def _form_batch(self) -> list[Pending]:
        first = await self._next_request(None)
        assert first is not None
        batch, size = [first], first.size
        deadline = time.perf_counter() + self._delay
        skipped: list[Pending] = []
        while size < self._max_batch_size:
            if self._preferred and size in self._preferred and not self._queue:
                break
            nxt = await self._next_request(deadline if self._delay > 0 else time.perf_counter())
            if nxt is None:
                break
            if nxt.signature != first.signature:
                skipped.append(nxt)  # other shapes wait for a batch of their own, in order
                continue
            if size + nxt.size > self._max_batch_size:
                skipped.append(nxt)
                break
            batch.append(nxt)
            size += nxt.size
        self._queue.extendleft(reversed(skipped))
        if self._queue:
            self._arrived.set()
        return batch

    async def _loop(self) -> None:
        while True:
            await self._instance_ready.acquire()
            try:
                batch = await self._form_batch()
            except BaseException:
                self._instance_ready.release()
                raise
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                self._instance_ready.release()
                continue
            instance = self._free_instances.pop()
            previous = self._previous_done
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._previous_done = done if self._preserve_ordering else None
            task = asyncio.get_running_loop().create_task(self._run(instance, batch, previous, done))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(
        self, instance: int, batch: list[Pending], previous: asyncio.Future[None] | None, done: asyncio.Future[None]
    ) -> None:
        started = time.perf_counter()
        try:
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                names = batch[0].inputs.keys()
                inputs = {n: np.concatenate([p.inputs[n] for p in batch], axis=0) for n in names}
            outputs: Tensors | None = await self._execute(instance, inputs)
            error: BaseException | None = None
        except Exception as ex:
            outputs, error = None, ex
        finally:
            self._free_instances.append(instance)
            self._instance_ready.release()
        compute = time.perf_counter() - started
        if previous is not None:
            await asyncio.shield(previous)
        self._resolve(batch, outputs, error)
        done.set_result(None)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(sum(p.size for p in batch), len(batch), [started - p.enqueued for p in batch], compute)
            )

    @staticmethod
    def _resolve(batch: list[Pending], outputs: Tensors | None, error: BaseException | None) -> None:
        offset = 0
        for pending in batch:
            if pending.future.done():
                offset += pending.size
                continue
            if error is not None or outputs is None:
                pending.future.set_exception(error or RuntimeError("no outputs"))
                continue
            pending.future.set_result({n: o[offset : offset + pending.size] for n, o in outputs.items()})
            offset += pending.size
