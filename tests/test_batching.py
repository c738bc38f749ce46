"""The dynamic batcher on its own: joining, splitting, shapes, failures, limits, ordering."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from runtime import tracing
from runtime.errors import Overloaded, ServiceUnavailable
from runtime.serving.batching import (
    DELAY,
    BatchStats,
    DynamicBatcher,
    QueuePolicy,
    SchedulePolicy,
    Tensors,
    join,
    split_requests,
)
from runtime.settings import Settings


class FakeModel:
    """Doubles x; records every batch it executes; can be slowed down or made to fail."""

    def __init__(self, delay: float = 0.01, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[int] = []

    async def execute(self, instance: int, parts: list[Tensors]) -> Tensors:
        x = join(parts)["x"]
        self.batches.append(x.shape[0])
        await asyncio.sleep(self.delay)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ValueError("poisoned row")
        return {"y": x * 2}


def test_join_concatenates_along_the_batch_and_leaves_one_request_as_it_is() -> None:
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([[1], [2]])}
    b = {"x": np.arange(3, dtype=np.float32).reshape(1, 3) + 10, "n": np.array([[3]])}
    joined = join([a, b])
    assert joined["x"].tolist() == [[0, 1, 2], [3, 4, 5], [10, 11, 12]]
    assert joined["n"].tolist() == [[1], [2], [3]]
    assert join([a])["x"] is a["x"]  # a batch of one is not copied


async def run_requests(batcher: DynamicBatcher, arrays: list[np.ndarray]) -> list[Tensors | BaseException]:
    batcher.start()
    try:
        futures = [batcher.submit({"x": a}) for a in arrays]
        return list(await asyncio.gather(*futures, return_exceptions=True))
    finally:
        await batcher.stop()


def test_concurrent_requests_are_joined_and_split_back() -> None:
    model = FakeModel()
    stats: list[BatchStats] = []
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=8, on_batch=stats.append)
    arrays = [np.full((1, 2), i, dtype=np.float32) for i in range(20)]
    results = asyncio.run(run_requests(batcher, arrays))
    for array, result in zip(arrays, results, strict=True):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], array * 2)
    assert max(model.batches) == 8 and sum(model.batches) == 20
    assert sum(s.requests for s in stats) == 20


def test_an_answered_batch_is_not_kept_while_the_batcher_waits_for_the_next() -> None:
    # In the engine the inputs are views on a worker's shared memory: a batch kept past its answer kept a
    # departed worker's arena mapped until the model's next batch.
    async def scenario() -> bool:
        batcher = DynamicBatcher(FakeModel(delay=0).execute, instances=1, max_batch_size=4)
        batcher.start()
        try:
            x = np.ones((1, 2), np.float32)
            alive = weakref.ref(x)
            result = await batcher.submit({"x": x})
            assert result["y"].tolist() == [[2, 2]]
            del x
            await asyncio.sleep(0.01)  # the batcher now waits for a request
            return alive() is None
        finally:
            await batcher.stop()

    assert asyncio.run(scenario())


def test_batch_never_exceeds_max_batch_size_with_multi_row_requests() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=5)
    arrays = [np.ones((3, 2), dtype=np.float32) * i for i in range(6)]
    results = asyncio.run(run_requests(batcher, arrays))
    assert all(isinstance(r, dict) and r["y"].shape == (3, 2) for r in results)
    assert max(model.batches) <= 5


def test_different_shapes_go_into_separate_batches() -> None:
    model = FakeModel()
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=16)
    arrays = [np.ones((1, 2 + i % 2), dtype=np.float32) for i in range(10)]
    results = asyncio.run(run_requests(batcher, arrays))
    for array, result in zip(arrays, results, strict=True):
        assert isinstance(result, dict) and result["y"].shape == array.shape


def test_a_failing_batch_fails_only_its_requests() -> None:
    model = FakeModel(fail_on=99)
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=2)
    arrays = [np.full((1, 2), v, dtype=np.float32) for v in (1, 99, 3, 4, 5, 6)]
    results = asyncio.run(run_requests(batcher, arrays))
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert 1 in failed and len(failed) <= 2
    assert all(isinstance(results[i], dict) for i in range(2, 6))


@pytest.mark.parametrize(
    ("sizes", "shards", "groups"),
    [
        ([1] * 15, 2, [(0, 8), (8, 15)]),
        ([4, 1, 1, 1, 1], 2, [(0, 1), (1, 5)]),
        ([5], 2, [(0, 1)]),
        ([1, 1], 4, [(0, 1), (1, 2)]),
        ([1] * 6, 3, [(0, 2), (2, 4), (4, 6)]),
    ],
)
def test_split_requests_keeps_requests_whole_and_balances_rows(
    sizes: list[int], shards: int, groups: list[tuple[int, int]]
) -> None:
    assert split_requests(sizes, shards) == groups


class ShardedModel(FakeModel):
    """Counts how many executions run at the same time."""

    def __init__(self, delay: float, fail_on: int | None = None) -> None:
        super().__init__(delay, fail_on)
        self.running = 0
        self.most = 0

    async def execute(self, instance: int, parts: list[Tensors]) -> Tensors:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            return await super().execute(instance, parts)
        finally:
            self.running -= 1


def test_a_sharded_instance_runs_a_batch_as_concurrent_shards_of_whole_requests() -> None:
    model = ShardedModel(delay=0.05, fail_on=99)
    stats: list[BatchStats] = []
    batcher = DynamicBatcher(
        model.execute, instances=1, max_batch_size=16, on_batch=stats.append, shards=lambda instance: 2
    )
    values = [0, 1, 2, 99, 4, 5, 6, 7, 8, 9, 10, 11]

    async def scenario() -> list[Tensors | BaseException]:
        batcher.start()
        first = batcher.submit({"x": np.full((1, 2), -1, dtype=np.float32)})  # runs alone: one request, one shard
        await asyncio.sleep(0.01)
        assert not batcher.idle
        # Queued meanwhile: one batch of 12, in 8 pieces (4 per shard) of whole requests, starting on the free
        # shard, 2 running at a time once the first request is done, each shard taking the next piece when done
        # with one; 99 poisons only its piece.
        futures = [batcher.submit({"x": np.full((1, 2), v, dtype=np.float32)}) for v in values]
        results = list(await asyncio.gather(first, *futures, return_exceptions=True))
        await asyncio.sleep(0.01)  # the batch's task finishes
        assert batcher.idle
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert model.batches == [1, 2, 1, 2, 1, 2, 1, 2, 1] and model.most == 2  # pieces as even as whole requests allow
    assert [(s.batch_size, s.requests) for s in stats] == [(1, 1), (12, 12)]  # the batch as formed, counted once
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [4, 5] and all(isinstance(results[i], ValueError) for i in failed)  # 99 and 4 share a piece
    for index, value in enumerate([-1, *values]):
        if index not in failed:
            result = results[index]
            assert isinstance(result, dict)
            np.testing.assert_array_equal(result["y"], np.full((1, 2), value * 2, dtype=np.float32))


def test_a_sharded_instance_starts_the_next_batch_on_a_shard_that_has_no_piece_left() -> None:
    """A shard idle beside one that finishes a batch's last piece takes the next batch at once (on a machine of
    many cores, a batch's tail would otherwise leave all but one of them waiting)."""
    finished: list[int] = []

    async def execute(instance: int, parts: list[Tensors]) -> Tensors:
        x = join(parts)["x"]
        await asyncio.sleep(0.3 if (x == 0).any() else 0.01)  # the piece holding request 0 is slow
        return {"y": x * 2}

    stats: list[BatchStats] = []
    batcher = DynamicBatcher(execute, instances=1, max_batch_size=16, on_batch=stats.append, shards=lambda i: 2)

    async def scenario() -> None:
        batcher.start()

        async def request(value: int) -> None:
            result = await batcher.submit({"x": np.full((1, 1), value, dtype=np.float32)})
            assert result["y"].tolist() == [[value * 2]]
            finished.append(value)

        first = [asyncio.ensure_future(request(v)) for v in (0, 1)]  # one batch, two pieces, one per shard
        await asyncio.sleep(0.05)  # the fast piece is done; its shard is free while the slow one runs
        assert not batcher.idle  # the batcher has the instance back, but a shard still runs (the engine's run_now)
        started = time.perf_counter()
        await request(2)
        assert time.perf_counter() - started < 0.2  # it did not wait for the slow piece
        await asyncio.gather(*first)
        await batcher.stop()

    asyncio.run(scenario())
    assert finished == [2, 0, 1]  # a batch's answers go out together, when its last piece is done
    assert [(s.batch_size, s.requests) for s in stats] == [(1, 1), (2, 2)]


def test_with_preserve_ordering_the_next_batch_runs_beside_the_last_pieces_but_answers_after_them() -> None:
    events: list[str] = []

    async def execute(instance: int, parts: list[Tensors]) -> Tensors:
        x = join(parts)["x"]
        events.append(f"run {int(x[0, 0])}")
        await asyncio.sleep(0.3 if (x == 0).any() else 0.01)  # the piece holding request 0 is slow
        return {"y": x * 2}

    stats: list[BatchStats] = []
    batcher = DynamicBatcher(
        execute, instances=1, max_batch_size=16, preserve_ordering=True, on_batch=stats.append, shards=lambda i: 2
    )

    async def scenario() -> None:
        batcher.start()

        async def request(value: int) -> None:
            result = await batcher.submit({"x": np.full((1, 1), value, dtype=np.float32)})
            assert result["y"].tolist() == [[value * 2]]
            events.append(f"answer {value}")

        first = [asyncio.ensure_future(request(v)) for v in (0, 1)]  # one batch, two pieces, one per shard
        await asyncio.sleep(0.05)  # the fast piece is done; its shard is free while the slow one runs
        await asyncio.gather(request(2), *first)
        await batcher.stop()

    asyncio.run(scenario())
    assert events == ["run 0", "run 1", "run 2", "answer 0", "answer 1", "answer 2"]
    assert [(s.batch_size, s.requests) for s in stats] == [(2, 2), (1, 1)]  # on_batch in order too


def test_a_sharded_instance_whose_shard_count_changes_between_batches_never_runs_more_than_its_shards() -> None:
    """The engine's runner says 1 shard while its model runs on the event loop, its threads' count otherwise:
    a batch run whole may start beside a shard still running the last piece of a sharded one, and the next
    sharded batch adds only the shards that are free."""

    class Model(ShardedModel):
        async def execute(self, instance: int, parts: list[Tensors]) -> Tensors:
            self.delay = 0.3 if (join(parts)["x"] == 0).any() else 0.01  # the piece holding request 0 is slow
            return await super().execute(instance, parts)

    model = Model(delay=0)
    count = {"shards": 2}
    stats: list[BatchStats] = []
    batcher = DynamicBatcher(
        model.execute, instances=1, max_batch_size=16, on_batch=stats.append, shards=lambda i: count["shards"]
    )

    async def scenario() -> None:
        batcher.start()
        first = [batcher.submit(row(v)) for v in (0, 1)]  # sharded: two pieces
        await asyncio.sleep(0.05)  # the instance is back; a shard runs the slow piece
        count["shards"] = 1
        assert (await batcher.submit(row(2)))["y"].tolist() == [[4, 4]]  # whole, beside the slow piece
        count["shards"] = 2
        rest = await asyncio.gather(*(batcher.submit(row(v)) for v in range(3, 9)))  # sharded again
        assert [r["y"][0, 0] for r in rest] == [2 * v for v in range(3, 9)]
        assert [r["y"][0, 0] for r in await asyncio.gather(*first)] == [0, 2]
        await asyncio.sleep(0.01)
        assert batcher.idle
        await batcher.stop()

    asyncio.run(scenario())
    assert model.most == 2
    assert sorted((s.batch_size, s.requests) for s in stats) == [(1, 1), (2, 2), (6, 6)]


def test_the_next_batch_goes_to_an_idle_instance_before_one_whose_shards_finish_the_last() -> None:
    """An instance given back while a shard still runs its batch's last piece offers fewer shards than an idle one."""
    ran: list[tuple[int, int]] = []

    async def execute(instance: int, parts: list[Tensors]) -> Tensors:
        x = join(parts)["x"]
        ran.append((instance, int(x[0, 0])))
        await asyncio.sleep(0.3 if (x == 0).any() else 0.01)  # the piece holding request 0 is slow
        return {"y": x * 2}

    batcher = DynamicBatcher(execute, instances=2, max_batch_size=16, shards=lambda instance: 2)

    async def scenario() -> None:
        batcher.start()
        first = [batcher.submit({"x": np.full((1, 1), v, dtype=np.float32)}) for v in (0, 1)]  # two pieces
        await asyncio.sleep(0.05)  # the fast piece is done; its instance is back, a shard still busy
        await asyncio.gather(*(batcher.submit({"x": np.full((1, 1), v, dtype=np.float32)}) for v in range(10, 14)))
        await asyncio.gather(*first)
        await batcher.stop()

    asyncio.run(scenario())
    first_instance = ran[0][0]
    assert {instance for instance, value in ran if value >= 10} == {1 - first_instance}


def test_a_piece_whose_requests_were_all_cancelled_while_it_waited_is_not_run() -> None:
    """As a batch leaves out requests cancelled before it runs, a piece does (the engine frees a cancelled
    request's shared memory at once: a piece run later would read what the worker wrote there since)."""
    model = ShardedModel(delay=0.05)
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=16, shards=lambda instance: 2)

    async def scenario() -> list[Tensors | BaseException]:
        batcher.start()
        futures = [batcher.submit({"x": np.full((1, 2), v, dtype=np.float32)}) for v in range(4)]
        await asyncio.sleep(0.01)  # one batch, 4 pieces of one request: two run, two wait
        futures[3].cancel()
        results = list(await asyncio.gather(*futures, return_exceptions=True))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(isinstance(r, dict) for r in results[:3])
    assert model.batches == [1, 1, 1]  # request 3's piece never ran


def test_a_batch_on_a_sharded_instance_makes_a_task_per_piece_not_per_shard() -> None:
    """A batch of one request on a 16-shard instance (the engine on 16 cores, light load) starts one shard: a task
    per idle shard, each finding nothing to do, cost the engine's event loop about 80 us a batch."""
    model = ShardedModel(delay=0)
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=16, shards=lambda instance: 16)
    created = 0

    async def scenario() -> None:
        nonlocal created
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        batcher.start()
        loop.set_task_factory(factory)
        for value in range(20):  # one at a time: 20 batches of one request
            result = await batcher.submit({"x": np.full((1, 2), value, dtype=np.float32)})
            assert result["y"].tolist() == [[value * 2] * 2]
        await asyncio.sleep(0.01)
        loop.set_task_factory(None)
        assert batcher.idle
        await batcher.stop()

    asyncio.run(scenario())
    assert model.batches == [1] * 20
    assert created == 20  # one shard task a batch


@pytest.mark.parametrize("shards", [1, 2])
def test_a_failed_batch_or_piece_does_not_keep_its_requests_alive(shards: int) -> None:
    """The error of a failed execution, kept by its requests' futures, must not hold the frame that caught it
    and through it the batch (every piece's inputs, views on the workers' shared memory in the engine, and
    outputs) in a reference cycle that only the garbage collector frees."""
    model = ShardedModel(delay=0.001, fail_on=3)
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=16, shards=lambda instance: shards)

    async def scenario() -> list[weakref.ref[np.ndarray]]:
        batcher.start()
        arrays = [np.full((1, 2), v, dtype=np.float32) for v in range(8)]
        alive = [weakref.ref(a) for a in arrays]
        futures = [batcher.submit({"x": a}) for a in arrays]
        del arrays
        results = await asyncio.gather(*futures, return_exceptions=True)
        # One batch of 8: whole, or in 8 pieces of one request (3 then fails only its own)
        expected = [True] * 8 if shards == 1 else [v == 3 for v in range(8)]
        assert [isinstance(r, ValueError) for r in results] == expected
        alive += [weakref.ref(r["y"]) for r in results if isinstance(r, dict)]
        del futures, results
        await asyncio.sleep(0.01)
        await batcher.stop()
        return alive

    gc.disable()
    try:
        alive = asyncio.run(scenario())
        assert [ref() is None for ref in alive] == [True] * len(alive)
    finally:
        gc.enable()


@pytest.mark.parametrize("shards", [1, 2])
def test_a_batch_span_is_a_child_of_its_first_request_linked_to_all_and_marks_a_failure(shards: int) -> None:
    model = ShardedModel(delay=0.001, fail_on=3)
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=16, shards=lambda instance: shards)
    exporter = InMemorySpanExporter()

    async def scenario() -> list[int]:
        assert tracing.setup(Settings(otel_traces_exporter=("console",)))
        tracing.add_processor(SimpleSpanProcessor(exporter))
        requester = TracerProvider().get_tracer("client")  # the requests' spans, whose context each submit keeps
        batcher.start()
        futures, ids = [], []
        for value in range(4):  # one batch (in pieces of one request when sharded); 3 fails
            with requester.start_as_current_span(f"request {value}") as span:
                ids.append(span.get_span_context().span_id)
                futures.append(batcher.submit({"x": np.full((1, 2), value, dtype=np.float32)}))
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert [isinstance(r, ValueError) for r in results] == [shards == 1] * 3 + [True]
        await batcher.stop()
        return ids

    try:
        ids = asyncio.run(scenario())
        (batch,) = [s for s in exporter.get_finished_spans() if s.name == "batch"]
    finally:
        tracing.shutdown()
    assert batch.parent is not None and batch.parent.span_id == ids[0]
    assert [link.context.span_id for link in batch.links] == ids
    assert batch.status.status_code == StatusCode.ERROR and "poisoned row" in (batch.status.description or "")


def test_queue_delay_waits_for_more_requests() -> None:
    model = FakeModel(delay=0)
    batcher = DynamicBatcher(model.execute, instances=1, max_batch_size=8, max_queue_delay_us=200_000)

    async def trickle() -> None:
        batcher.start()
        futures = []
        for i in range(4):
            futures.append(batcher.submit({"x": np.full((1, 1), i, dtype=np.float32)}))
            await asyncio.sleep(0.01)
        await asyncio.gather(*futures)
        await batcher.stop()

    asyncio.run(trickle())
    assert model.batches == [4]


def test_stop_answers_the_requests_of_a_batch_still_forming() -> None:
    """Requests taken into a batch that waits for more (max_queue_delay) are answered with a 503 by stop(), as the
    queued ones are, not left waiting forever."""
    model, batcher = single_instance(0.01, max_batch_size=4, max_queue_delay_us=10_000_000)

    async def scenario() -> list[Tensors | BaseException]:
        batcher.start()
        forming = [batcher.submit(row(v)) for v in (1, 2)]
        await asyncio.sleep(0.05)  # both in a batch that waits for 2 more
        await batcher.stop()
        return list(await asyncio.wait_for(asyncio.gather(*forming, return_exceptions=True), 1))

    results = asyncio.run(scenario())
    assert [type(r) for r in results] == [ServiceUnavailable] * 2
    assert all("shutting down" in str(r) for r in results)
    assert model.batches == []


def test_preferred_batch_size_closes_the_batch() -> None:
    model = FakeModel(delay=0)
    batcher = DynamicBatcher(
        model.execute, instances=1, max_batch_size=8, max_queue_delay_us=500_000, preferred_batch_sizes=(2,)
    )
    arrays = [np.ones((1, 1), dtype=np.float32)] * 2
    asyncio.run(run_requests(batcher, arrays))
    assert model.batches == [2]


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_ordering_resolves_in_arrival_order(preserve: bool) -> None:
    order: list[int] = []

    async def execute(instance: int, parts: list[Tensors]) -> Tensors:
        # The first batch is slow, the second fast: without ordering the second finishes first.
        inputs = join(parts)
        await asyncio.sleep(0.2 if inputs["x"][0, 0] == 0 else 0)
        return {"y": inputs["x"]}

    batcher = DynamicBatcher(execute, instances=2, max_batch_size=1, preserve_ordering=preserve)

    async def scenario() -> None:
        batcher.start()
        futures = [batcher.submit({"x": np.full((1, 1), i, dtype=np.float32)}) for i in range(2)]
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _, i=i: order.append(i))
        await asyncio.gather(*futures)
        await batcher.stop()

    asyncio.run(scenario())
    assert order == ([0, 1] if preserve else [1, 0])


# -- queue policy (Triton's ModelQueuePolicy), priorities, deadlines and cancellation --------------------


def row(value: float = 1) -> Tensors:
    return {"x": np.full((1, 2), value, dtype=np.float32)}


def single_instance(delay: float, **kwargs: Any) -> tuple[FakeModel, DynamicBatcher]:
    model = FakeModel(delay=delay)
    return model, DynamicBatcher(model.execute, instances=1, **kwargs)


async def _held(batcher: DynamicBatcher, model: FakeModel) -> asyncio.Future[Tensors]:
    """Occupy the only instance with one request, so that what follows waits in the queue."""
    batcher.start()
    first = batcher.submit(row(-1))
    while not model.batches:
        await asyncio.sleep(0.001)
    return first


def test_max_queue_size_rejects_at_once_naming_the_model() -> None:
    policy = SchedulePolicy(QueuePolicy(max_queue_size=2))
    model, batcher = single_instance(0.2, max_batch_size=1, schedule=policy, name="linear")

    async def scenario() -> None:
        first = await _held(batcher, model)
        queued = [batcher.submit(row()) for _ in range(2)]
        with pytest.raises(Overloaded, match="model 'linear' has 2 requests queued, its max_queue_size"):
            batcher.submit(row())
        assert batcher.depth == 2
        await asyncio.gather(first, *queued)
        await batcher.stop()

    asyncio.run(scenario())
    assert model.batches == [1, 1, 1]


def test_cancelled_requests_never_join_a_batch() -> None:
    depths: list[int] = []
    model, batcher = single_instance(0.1, max_batch_size=8, on_queue=depths.append)

    async def scenario() -> None:
        first = await _held(batcher, model)
        gone = [batcher.submit(row(7)) for _ in range(5)]
        stays = batcher.submit(row(3))
        for future in gone:
            future.cancel()
        await asyncio.sleep(0)
        assert batcher.depth == 1
        await asyncio.gather(first, stays)
        await batcher.stop()

    asyncio.run(scenario())
    assert model.batches == [1, 1]  # the held request, then the one that stayed: nothing for the 5 that left
    assert depths[-1] == 0 and max(depths) == 6


def test_a_request_cancelled_or_timed_out_in_the_queue_lets_its_inputs_go_at_once() -> None:
    """Its entry waits in the queue for the next batch to pop it, which an idle model may not form for long; its
    inputs (in the engine, views on the shared memory of a worker that may have left) are not kept meanwhile."""
    policy = SchedulePolicy(QueuePolicy(default_timeout_us=20_000))
    model, batcher = single_instance(0.3, max_batch_size=4, schedule=policy)

    async def scenario() -> None:
        first = await _held(batcher, model)
        arrays = [np.ones((1, 2), dtype=np.float32) for _ in range(2)]
        alive = [weakref.ref(a) for a in arrays]
        left, timed_out = (batcher.submit({"x": a}) for a in arrays)
        del arrays
        left.cancel()
        await asyncio.gather(left, timed_out, return_exceptions=True)
        assert timed_out.exception() is not None
        assert [ref() is None for ref in alive] == [True, True]  # while the first batch still runs
        await first
        await batcher.stop()

    asyncio.run(scenario())
    assert model.batches == [1]


def test_queue_timeout_rejects_and_the_request_is_not_computed() -> None:
    policy = SchedulePolicy(QueuePolicy(default_timeout_us=50_000))
    model, batcher = single_instance(0.3, max_batch_size=4, schedule=policy, name="m")

    async def scenario() -> None:
        first = await _held(batcher, model)
        late = batcher.submit(row())
        with pytest.raises(Overloaded, match="timed out in the queue of model 'm'"):
            await late
        await first
        await batcher.stop()

    asyncio.run(scenario())
    assert model.batches == [1]


def test_a_request_put_back_behind_a_batch_of_another_shape_still_times_out() -> None:
    """A request that a forming batch passes over (another shape, or no room left) goes back to the queue with its
    queue timeout and its deadline still armed."""
    policy = SchedulePolicy(QueuePolicy(default_timeout_us=50_000))
    model, batcher = single_instance(0.3, max_batch_size=4, schedule=policy, name="m")

    async def scenario() -> list[Tensors | BaseException]:
        batcher.start()
        first = batcher.submit(row())
        wide = batcher.submit({"x": np.ones((1, 3), dtype=np.float32)})  # passed over by first's batch
        late = batcher.submit({"x": np.ones((1, 3), dtype=np.float32)}, deadline=time.monotonic() + 0.05)
        results = await asyncio.gather(first, wide, late, return_exceptions=True)
        await batcher.stop()
        return results

    first, wide, late = asyncio.run(scenario())
    assert isinstance(first, dict)
    assert isinstance(wide, Overloaded) and "timed out in the queue of model 'm'" in str(wide)
    assert isinstance(late, Overloaded)
    assert model.batches == [1]


def test_timeout_override_only_when_allowed() -> None:
    async def outcome(allow: bool) -> bool:
        policy = SchedulePolicy(QueuePolicy(allow_timeout_override=allow))
        model, batcher = single_instance(0.2, max_batch_size=4, schedule=policy)
        first = await _held(batcher, model)
        late = batcher.submit(row(), timeout_us=20_000)
        result = await asyncio.gather(late, return_exceptions=True)
        await first
        await batcher.stop()
        return isinstance(result[0], Overloaded)

    assert asyncio.run(outcome(True)) is True
    assert asyncio.run(outcome(False)) is False


def test_delay_action_serves_timed_out_requests_after_the_others() -> None:
    policy = SchedulePolicy(QueuePolicy(default_timeout_us=0, timeout_action=DELAY, allow_timeout_override=True))
    model, batcher = single_instance(0.1, max_batch_size=1, schedule=policy)
    order: list[int] = []

    async def scenario() -> None:
        first = await _held(batcher, model)
        delayed = batcher.submit(row(1), timeout_us=10_000)
        await asyncio.sleep(0.03)  # its timeout passes: it moves behind requests that arrive later
        on_time = batcher.submit(row(2))
        for value, future in ((1, delayed), (2, on_time)):
            future.add_done_callback(lambda _, v=value: order.append(v))
        await asyncio.gather(first, delayed, on_time)
        await batcher.stop()

    asyncio.run(scenario())
    assert order == [2, 1]


def test_priority_levels_serve_higher_priority_first() -> None:
    policy = SchedulePolicy(priority_levels=3, default_priority_level=2)
    model, batcher = single_instance(0.05, max_batch_size=1, schedule=policy)
    order: list[float] = []

    async def scenario() -> None:
        first = await _held(batcher, model)
        futures = []
        for value, priority in ((30, 3), (20, 0), (10, 1), (21, 2), (99, 7)):  # 0 and 7: the default level (2)
            future = batcher.submit(row(value), priority=priority)
            future.add_done_callback(lambda _, v=value: order.append(v))
            futures.append(future)
        await asyncio.gather(first, *futures)
        await batcher.stop()

    asyncio.run(scenario())
    assert order == [10, 20, 21, 99, 30]


def test_per_level_policy_limits_only_its_level() -> None:
    policy = SchedulePolicy(priority_levels=2, default_priority_level=2, levels={2: QueuePolicy(max_queue_size=1)})
    model, batcher = single_instance(0.2, max_batch_size=1, schedule=policy, name="m")

    async def scenario() -> None:
        first = await _held(batcher, model)
        low = batcher.submit(row(), priority=2)
        with pytest.raises(Overloaded, match="at priority level 2"):
            batcher.submit(row(), priority=2)
        high = [batcher.submit(row(), priority=1) for _ in range(3)]
        await asyncio.gather(first, low, *high)
        await batcher.stop()

    asyncio.run(scenario())


def test_deadline_drops_a_queued_request_and_refuses_a_passed_one() -> None:
    model, batcher = single_instance(0.2, max_batch_size=4, name="m")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first = await _held(batcher, model)
        with pytest.raises(Overloaded, match="deadline passed"):
            batcher.submit(row(), deadline=loop.time() - 1)
        late = batcher.submit(row(), deadline=loop.time() + 0.05)
        with pytest.raises(Overloaded):
            await late
        await first
        await batcher.stop()

    asyncio.run(scenario())
    assert model.batches == [1]
