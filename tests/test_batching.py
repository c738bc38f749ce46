"""The dynamic batcher on its own: joining, splitting, shapes, failures, limits, ordering."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtime.serving.batching import BatchStats, DynamicBatcher, Tensors


class FakeModel:
    """Doubles x; records every batch it executes; can be slowed down or made to fail."""

    def __init__(self, delay: float = 0.01, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[int] = []

    async def execute(self, instance: int, inputs: Tensors) -> Tensors:
        x = inputs["x"]
        self.batches.append(x.shape[0])
        await asyncio.sleep(self.delay)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ValueError("poisoned row")
        return {"y": x * 2}


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

    async def execute(instance: int, inputs: Tensors) -> Tensors:
        # The first batch is slow, the second fast: without ordering the second finishes first.
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
