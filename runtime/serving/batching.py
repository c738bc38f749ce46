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
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import tracing
from runtime.errors import Overloaded, ServiceUnavailable

logger = logging.getLogger("runtime.batching")

Tensors = dict[str, np.ndarray]
# Runs one batch on one instance (in a thread) and returns the outputs, batch first. It gets the requests'
# inputs as they were queued and joins them with :func:`join` where it runs: the one copy a batch needs
# then happens off the event loop, which goes on answering and queueing meanwhile.
# It may also return the outputs of each request apart (an instance process writes them where each goes).
Execute = Callable[[int, list[Tensors]], Awaitable["Tensors | list[Tensors]"]]
Signature = tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]
# How many shards an instance runs batches of whole requests on, concurrently (1: one batch at a time, whole).
Shards = Callable[[int], int]
# A sharded batch is cut into this many pieces per shard (of whole requests), which the shards take in turn.
CHUNKS_PER_SHARD = 4


REJECT = "REJECT"
DELAY = "DELAY"


@dataclass(frozen=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy`` for one priority level (0 sizes and timeouts mean unlimited)."""

    max_queue_size: int = 0
    default_timeout_us: int = 0
    timeout_action: str = REJECT  # REJECT: fail the request when it times out; DELAY: serve it after the rest
    allow_timeout_override: bool = False


@dataclass(frozen=True)
class SchedulePolicy:
    """``dynamic_batching`` queue settings: the default policy, priority levels and per-level policies."""

    default: QueuePolicy = field(default_factory=QueuePolicy)
    priority_levels: int = 0  # 0: one level; else levels 1 (highest) .. priority_levels
    default_priority_level: int = 0
    levels: Mapping[int, QueuePolicy] = field(default_factory=dict)

    def level_of(self, priority: int) -> int:
        """The level of a request's ``priority`` parameter: 0 or out of range means the default (Triton)."""
        if self.priority_levels <= 0:
            return 1
        if 1 <= priority <= self.priority_levels:
            return priority
        default = self.default_priority_level
        return default if 1 <= default <= self.priority_levels else self.priority_levels

    def policy(self, level: int) -> QueuePolicy:
        return self.levels.get(level, self.default)


@dataclass(eq=False)
class Pending:
    inputs: Tensors
    size: int
    signature: Signature
    future: asyncio.Future[Tensors]
    enqueued: float = field(default_factory=time.perf_counter)
    level: int = 1
    delayed: bool = False
    queued: bool = True
    timer: asyncio.TimerHandle | None = None
    expiry: tuple[float, str] | None = None  # when (the loop's clock) its timer fires, and the action it takes
    trace: Any = field(default_factory=tracing.capture)  # the requester's trace context (None: tracing off)
    tag: object = None


@dataclass
class _Level:
    policy: QueuePolicy
    queue: collections.deque[Pending] = field(default_factory=collections.deque)
    delayed: collections.deque[Pending] = field(default_factory=collections.deque)
    count: int = 0  # live (not cancelled) requests in queue and delayed


@dataclass
class BatchStats:
    """What one execution did, for metrics."""

    batch_size: int
    requests: int
    queue_seconds: list[float]
    compute_seconds: float
    tags: list[object] = field(default_factory=list)  # what each request was submitted with


_OBJECT = np.dtype(object)


@dataclass(eq=False)
class _Job:
    """A batch on a sharded instance: pieces of whole requests that its shards take; answered when all are done."""

    batch: list[Pending]
    groups: list[tuple[int, int]]
    started: float
    previous: asyncio.Future[None] | None
    done: asyncio.Future[None]
    span: Any
    results: list[tuple[Tensors | list[Tensors] | None, BaseException | None]] = field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.results = [(None, None)] * len(self.groups)
        self.remaining = len(self.groups)


@dataclass
class _Lane:
    """The shards of one instance: pieces waiting for a shard, shards running, and whether they hold the
    instance (the first of them to find no piece left gives it back to the batcher)."""

    pieces: collections.deque[tuple[_Job, int]] = field(default_factory=collections.deque)
    running: int = 0
    held: bool = False


def join(parts: list[Tensors]) -> Tensors:
    """One batch from the requests' inputs, along the batch dimension (no copy for a batch of one)."""
    if len(parts) == 1:
        return parts[0]
    return {name: _concatenate([p[name] for p in parts]) for name in parts[0]}


def check_rows(outputs: Tensors, rows: int, model: str) -> None:
    """A batching model's outputs hold a row per input row, at least, as Triton checks before it splits a batch:
    with fewer, :func:`split` would hand the batch's later requests empty outputs (ValueError)."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] < rows:
            got = "a scalar" if value.ndim == 0 else f"{value.shape[0]} row(s)"
            raise ValueError(
                f"model '{model}' returned {got} of output '{name}' for a batch of {rows} rows: a model with "
                "max_batch_size > 0 must return every output with the batch as its first dimension, a row per input row"
            )


def split(outputs: Tensors | list[Tensors], sizes: list[int]) -> list[Tensors]:
    """Each request's outputs from its batch's: :func:`join` undone (views, no copy). A list (an instance
    that answered per request) is already split."""
    if isinstance(outputs, list):
        return outputs
    if len(sizes) == 1:
        return [outputs]
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [{n: o[a:b] for n, o in outputs.items()} for a, b in itertools.pairwise(bounds)]


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    first = arrays[0].dtype
    if first.kind in "OU" and any(a.dtype != first for a in arrays):
        # Strings of different widths (or with bytes): as objects, not all padded to the widest.
        return np.concatenate(arrays, axis=0, dtype=object)
    return np.concatenate(arrays, axis=0)


def signature(inputs: Mapping[str, np.ndarray]) -> Signature:
    # dtype objects compare and hash as their types; str(dtype) costs microseconds a request. Numpy unicode
    # of any width batches with object arrays (the engine's transport gives either for strings).
    return tuple(sorted((name, _OBJECT if a.dtype.kind == "U" else a.dtype, a.shape[1:]) for name, a in inputs.items()))


def split_requests(sizes: list[int], shards: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of consecutive requests, at most ``shards``, their batch sizes as even as whole
    requests allow (a request is never cut: its outputs stay in one shard)."""
    total, start, size = sum(sizes), 0, 0
    groups: list[tuple[int, int]] = []
    for i, n in enumerate(sizes):
        size += n
        if len(groups) < shards - 1 and i + 1 < len(sizes) and size * shards >= total * (len(groups) + 1):
            groups.append((start, i + 1))
            start = i + 1
    groups.append((start, len(sizes)))
    return groups


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
        *,
        schedule: SchedulePolicy | None = None,
        name: str = "model",
        on_queue: Callable[[int], None] | None = None,
        shards: Shards | None = None,
        inline: Callable[[], bool] | None = None,
    ) -> None:
        """``schedule``: Triton's queue policy; ``name``: the model, for error messages; ``on_queue``: called
        with the number of queued requests whenever it changes (the pending-request gauge); ``shards``: per
        instance, how many concurrent executions it runs batches on (1 when absent; see :meth:`_run_sharded`);
        ``inline``: true while ``execute`` returns without suspending (no task is made for the batch then)."""
        self._execute = execute
        self._max_batch_size = max(1, max_batch_size)
        self._delay = max_queue_delay_us / 1e6
        self._preferred = tuple(sorted(preferred_batch_sizes))
        self._preserve_ordering = preserve_ordering
        self._on_batch = on_batch
        self._instances = instances
        self._forming = False  # requests popped into a batch that is not running yet
        self._free_instances = list(range(instances))
        self._instance_ready = asyncio.Semaphore(instances)
        self._schedule = schedule or SchedulePolicy()
        self._name = name
        self._on_queue = on_queue
        self._shards = shards
        self._inline = inline
        levels = max(1, self._schedule.priority_levels)
        self._levels = [_Level(self._schedule.policy(n)) for n in range(1, levels + 1)]
        self._depth = 0
        self._arrived = asyncio.Event()
        self._previous_done: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._lanes: dict[int, _Lane] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        for level in self._levels:
            for pending in (*level.queue, *level.delayed):
                if not pending.future.done():
                    pending.future.set_exception(ServiceUnavailable("the server is shutting down"))

    @property
    def idle(self) -> bool:
        """Nothing queued, no batch forming or running, no wait for more requests: a request could run now."""
        return (
            not self._depth
            and not self._forming
            and not self._running
            and self._delay == 0
            and len(self._free_instances) == self._instances
        )

    @property
    def depth(self) -> int:
        """Requests queued and not yet in a batch (cancelled ones excluded)."""
        return self._depth

    def submit(
        self,
        inputs: Tensors,
        *,
        priority: int = 0,
        timeout_us: int = 0,
        deadline: float | None = None,
        tag: object = None,
    ) -> asyncio.Future[Tensors]:
        """Queue one request (inputs batch-first, already validated); resolves to its own outputs.

        ``priority`` and ``timeout_us`` are the request parameters of Triton's schedule-policy extension;
        ``deadline`` (``time.monotonic()`` seconds) is when the caller stops waiting: a request still queued
        then is dropped. Raises :class:`Overloaded` when the priority level's queue is full. Cancelling the
        returned future takes the request out of the queue: it never joins a batch. ``tag`` (who asked, for
        example) comes back in the :class:`BatchStats` of the request's batch.
        """
        level_no = self._schedule.level_of(priority)
        level = self._levels[level_no - 1] if self._schedule.priority_levels > 0 else self._levels[0]
        policy = level.policy
        if policy.max_queue_size and level.count >= policy.max_queue_size:
            where = f" at priority level {level_no}" if self._schedule.priority_levels else ""
            raise Overloaded(
                f"model '{self._name}' has {level.count} requests queued{where}, its max_queue_size; retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and deadline <= now:
            raise Overloaded(f"the request's deadline passed before model '{self._name}' could run it")
        size = int(next(iter(inputs.values())).shape[0])
        future: asyncio.Future[Tensors] = loop.create_future()
        pending = Pending(inputs, size, signature(inputs), future, level=level_no, tag=tag)
        timeout_s = (
            timeout_us if timeout_us > 0 and policy.allow_timeout_override else policy.default_timeout_us
        ) / 1e6
        expire_at = now + timeout_s if timeout_s > 0 else None
        if deadline is not None and (expire_at is None or deadline <= expire_at):
            pending.expiry = (deadline, REJECT)
        elif expire_at is not None:
            pending.expiry = (expire_at, policy.timeout_action)
        self._arm(pending)
        future.add_done_callback(lambda _: self._dropped(pending))
        level.queue.append(pending)
        level.count += 1
        self._queue_changed(1)
        self._arrived.set()
        return future

    def _arm(self, pending: Pending) -> None:
        if pending.expiry is not None and not pending.delayed:
            when, action = pending.expiry
            pending.timer = asyncio.get_running_loop().call_at(when, self._expire, pending, action)

    def _level(self, pending: Pending) -> _Level:
        return self._levels[pending.level - 1] if self._schedule.priority_levels > 0 else self._levels[0]

    def _queue_changed(self, delta: int) -> None:
        self._depth += delta
        if self._on_queue is not None:
            self._on_queue(self._depth)

    def _dropped(self, pending: Pending) -> None:
        """The future is done while queued (cancelled by a departed client or a timeout): forget it."""
        if pending.timer is not None:
            pending.timer.cancel()
        if not pending.queued:
            return
        pending.queued = False
        # It stays in the deque until popped, maybe long (an idle model): its inputs, in the engine views on the
        # shared memory of a worker that may be gone, are let go now.
        pending.inputs = {}
        level = self._level(pending)
        level.count -= 1
        self._queue_changed(-1)
        # Compact the deque too, so that many cancelled entries do not pile up.
        for queue in (level.queue, level.delayed):
            if len(queue) > 2 * level.count + 64:
                live = [p for p in queue if p.queued]
                queue.clear()
                queue.extend(live)

    def _expire(self, pending: Pending, action: str) -> None:
        pending.timer = None
        if not pending.queued or pending.future.done():
            return
        if action == DELAY:
            level = self._level(pending)
            if not pending.delayed:
                level.queue.remove(pending)
                level.delayed.append(pending)
                pending.delayed = True
            return
        pending.future.set_exception(
            Overloaded(f"request timed out in the queue of model '{self._name}' before it ran; retry later")
        )

    def _pop(self) -> Pending | None:
        """The next request: highest priority level first; within a level, on-time before delayed."""
        for level in self._levels:
            for queue in (level.queue, level.delayed):
                while queue:
                    pending = queue.popleft()
                    if not pending.queued:
                        continue
                    pending.queued = False
                    if pending.timer is not None:
                        pending.timer.cancel()
                        pending.timer = None
                    level.count -= 1
                    self._queue_changed(-1)
                    return pending
        return None

    def _put_back(self, skipped: list[Pending]) -> None:
        """Return requests that did not fit a batch to the front of their queues, in order."""
        for pending in reversed(skipped):
            if pending.future.done():
                continue
            level = self._level(pending)
            (level.delayed if pending.delayed else level.queue).appendleft(pending)
            pending.queued = True
            self._arm(pending)  # _pop disarmed it
            level.count += 1
            self._queue_changed(1)

    async def _next_request(self, deadline: float | None) -> Pending | None:
        """The oldest queued request; wait until ``deadline`` (None: forever) for one to arrive."""
        while not self._depth:
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
        return self._pop()

    async def _form_batch(self) -> list[Pending]:
        first = None
        while first is None:  # the queue may empty between the wake-up and the pop (cancellations)
            first = await self._next_request(None)
        self._forming = True
        try:
            return await self._grow_batch(first)
        finally:
            self._forming = False

    async def _grow_batch(self, first: Pending) -> list[Pending]:
        batch, size = [first], first.size
        deadline = time.perf_counter() + self._delay
        skipped: list[Pending] = []
        try:
            while size < self._max_batch_size:
                if self._preferred and size in self._preferred and not self._depth:
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
        except BaseException:  # stop() while waiting for more: back in the queue, which it answers
            self._put_back(sorted([*batch, *skipped], key=lambda p: p.enqueued))
            raise
        self._put_back(skipped)
        if self._depth:
            self._arrived.set()
        return batch

    async def _loop(self) -> None:
        while True:
            await self._instance_ready.acquire()
            try:
                formed = await self._form_batch()
            except BaseException:
                self._instance_ready.release()
                raise
            # Handed on, not kept: a local of this frame would hold the last batch's tensors (and the shared
            # memory of a departed worker that they view) until the next batch forms.
            await self._dispatch(formed)
            del formed

    async def _dispatch(self, formed: list[Pending]) -> None:
        batch = [p for p in formed if not p.future.cancelled()]
        if not batch:
            self._instance_ready.release()
            return
        instance = self._free_instances.pop()
        previous = self._previous_done
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._previous_done = done if self._preserve_ordering else None
        shards = self._shards(instance) if self._shards is not None else 1
        if shards > 1:
            self._run_sharded(instance, shards, batch, previous, done)
            return
        if self._inline is not None and self._inline() and previous is None:
            await self._run(instance, batch, previous, done, handoff=False)  # does not suspend: no task
            return
        task = asyncio.get_running_loop().create_task(self._run(instance, batch, previous, done))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(
        self,
        instance: int,
        batch: list[Pending],
        previous: asyncio.Future[None] | None,
        done: asyncio.Future[None],
        handoff: bool = True,
    ) -> None:
        """``handoff``: yield to the batcher before answering (a batch that ran on the loop has none to wait for)."""
        started = time.perf_counter()
        outputs: Tensors | list[Tensors] | None = None
        error: BaseException | None = None
        try:
            tracing.record_queue([p.trace for p in batch], [p.enqueued for p in batch], started)
            span = tracing.batch_span("batch", [p.trace for p in batch], {"batch.requests": len(batch)})
            outputs, error = await self._attempt(instance, [p.inputs for p in batch], span)
        except Exception as ex:  # tracing's own
            error = ex
        finally:
            self._free_instances.append(instance)
            self._instance_ready.release()
        compute = time.perf_counter() - started
        # Let the batcher hand the freed instance its next batch before this one's answers go out: with a
        # queue waiting, the model then runs while the loop answers.
        if handoff:
            await asyncio.sleep(0)
        if previous is not None:
            await asyncio.shield(previous)
        self._resolve(batch, outputs, error)
        self._answered(batch, started, compute, done)

    def _run_sharded(
        self,
        instance: int,
        shards: int,
        batch: list[Pending],
        previous: asyncio.Future[None] | None,
        done: asyncio.Future[None],
    ) -> None:
        """Run a batch on an instance's shards: concurrent single-threaded executions of the same session.

        The batch is cut into pieces of whole requests (CHUNKS_PER_SHARD per shard), which the shards take in
        turn, so a shard that gets less CPU (other processes, the workers' preprocessing) does not hold the
        others up. A shard with no piece left gives the instance back to the batcher at once (a batch of fewer
        pieces than idle shards, as it starts): the next batch forms and starts on it while the other shards
        finish this one's last pieces, and joins them when they are done. Requests queued meanwhile then never
        wait beside an idle core.
        """
        started = time.perf_counter()
        traces = [p.trace for p in batch]
        tracing.record_queue(traces, [p.enqueued for p in batch], started)
        span = tracing.start_batch_span("batch", traces, {"batch.requests": len(batch)})
        groups = split_requests([p.size for p in batch], min(len(batch), shards * CHUNKS_PER_SHARD))
        job = _Job(batch, groups, started, previous, done, span)
        lane = self._lanes.setdefault(instance, _Lane())
        lane.pieces.extend((job, index) for index in range(len(groups)))
        idle = shards - lane.running
        # A task per piece that an idle shard can take now, not per shard (a batch of one on 16 shards made 15
        # tasks that found nothing, about 80 us of the event loop's time a batch).
        for _ in range(min(idle, len(groups))):
            lane.running += 1
            task = asyncio.get_running_loop().create_task(self._shard(instance, lane))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if idle > len(groups):  # a shard stays idle: the next batch may start on it at once
            self._give_back(instance, lane)
        else:  # the first shard that finds no piece left gives the instance back
            lane.held = True

    async def _shard(self, instance: int, lane: _Lane) -> None:
        try:
            while lane.pieces:
                job, index = lane.pieces.popleft()
                a, b = job.groups[index]
                # Skipped when every request in it was cancelled while it waited, as _dispatch leaves them out
                # (the engine frees a cancelled request's shared memory at once).
                if not all(p.future.done() for p in job.batch[a:b]):
                    job.results[index] = await self._attempt(instance, [p.inputs for p in job.batch[a:b]])
                job.remaining -= 1
                if not job.remaining:
                    self._job_done(job)
        finally:
            lane.running -= 1
            if lane.held:
                lane.held = False
                self._give_back(instance, lane)

    def _give_back(self, instance: int, lane: _Lane) -> None:
        """The batcher's next batch may start on ``instance``; after any instance none of whose shards is busy
        (``_dispatch`` takes the last free one), which has more shards to offer it."""
        if lane.running:
            self._free_instances.insert(0, instance)
        else:
            self._free_instances.append(instance)
        self._instance_ready.release()

    async def _attempt(
        self, instance: int, parts: list[Tensors], span: contextlib.AbstractContextManager[Any] = tracing.NOOP
    ) -> tuple[Tensors | list[Tensors] | None, BaseException | None]:
        """Execute; the outputs, or the error (``span`` records it, as the batch's span)."""
        # Caught here, in a frame that holds only the inputs: an error's traceback holds the frame that catches
        # it, and a frame holding the batch (whose futures get the error) made a cycle that kept every request's
        # inputs and outputs, views on the workers' shared memory in the engine, until the garbage collector ran.
        try:
            with span:
                return await self._execute(instance, parts), None
        except Exception as ex:
            return None, ex

    def _job_done(self, job: _Job) -> None:
        compute = time.perf_counter() - job.started
        tracing.end_span(job.span, next((error for _, error in job.results if error is not None), None))

        def answer(_: object = None) -> None:
            for (a, b), (outputs, error) in zip(job.groups, job.results, strict=True):
                self._resolve(job.batch[a:b], outputs, error)
            self._answered(job.batch, job.started, compute, job.done)

        if job.previous is not None and not job.previous.done():
            job.previous.add_done_callback(answer)  # preserve_ordering: after the batch before it
        else:
            answer()

    def _answered(self, batch: list[Pending], started: float, compute: float, done: asyncio.Future[None]) -> None:
        done.set_result(None)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    sum(p.size for p in batch),
                    len(batch),
                    [started - p.enqueued for p in batch],
                    compute,
                    [p.tag for p in batch],
                )
            )

    @staticmethod
    def _resolve(batch: list[Pending], outputs: Tensors | list[Tensors] | None, error: BaseException | None) -> None:
        if error is not None or outputs is None:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error or RuntimeError("no outputs"))
            return
        for pending, result in zip(batch, split(outputs, [p.size for p in batch]), strict=True):
            if not pending.future.done():  # cancelled meanwhile: its rows are skipped
                pending.future.set_result(result)
