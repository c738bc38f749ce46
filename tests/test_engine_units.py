"""The engine's parts without servers: arena layout, allocator, control frames, client and engine in one loop,
instance-group placement (with a pretend GPU platform) and the CUDA provider choice."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import random
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from runtime.errors import ServingError, StartupError
from runtime.serving import instances
from runtime.serving.batching import BatchStats, join, signature
from runtime.serving.engine.arena import (
    SMALL_STRINGS,
    Allocator,
    Region,
    read_tensor,
    tensor_nbytes,
    transport_strings,
    write_tensors,
)
from runtime.serving.engine.channel import Channel
from runtime.serving.engine.client import EngineUnavailable
from runtime.serving.platforms import Device
from runtime.serving.platforms import onnx as onnx_platform
from runtime.serving.repository import load_model
from runtime.serving.runner import ENGINE_INLINE_BELOW_S, ModelRunner, Schedule, load_runners
from runtime.serving.supervised import SupervisedProcess
from tests.support.engine import (
    arena_baseline,
    assert_released,
    engine_on_this_loop,
    fill_arena,
    open_descriptors,
    shut_down,
)
from tests.support.models import linear_reference


def test_allocator_reuses_and_merges_freed_space() -> None:
    allocator = Allocator(1024)
    a, b, c = allocator.alloc(100), allocator.alloc(64), allocator.alloc(1)
    assert (a, b, c) == (0, 128, 192)
    assert allocator.alloc(1024) is None
    allocator.free(128, 64)
    assert allocator.alloc(64) == 128  # first fit
    for offset, size in ((0, 100), (128, 64), (192, 1)):
        allocator.free(offset, size)
    assert allocator.free_bytes == 1024 and allocator.alloc(1024) == 0


def test_numeric_and_bytes_tensors_round_trip_through_a_region() -> None:
    region = Region.create("runtime-test", 1 << 16)
    space = region.view(0, region.size)
    floats = np.arange(12, dtype=np.float32).reshape(3, 4)
    strings = np.array([[b"hello"], [b""], ["wörld".encode()]], dtype=object)
    tensors = [(n, a, tensor_nbytes(a)) for n, a in (("f", floats), ("s", strings))]
    metas = write_tensors(space, 128, tensors, buf=0)
    assert [m["datatype"] for m in metas] == ["FP32", "BYTES"]
    assert metas[1]["nbytes"] == 3 * 4 + 5 + 0 + 6 and metas[1]["offset"] % 64 == 0
    got = [read_tensor(space[m["offset"] : m["offset"] + m["nbytes"]], m["datatype"], tuple(m["shape"])) for m in metas]
    assert np.array_equal(got[0], floats) and np.shares_memory(got[0], space)  # a view: no copy on the way in
    assert got[1].tolist() == strings.tolist()
    region.close_fd()


def _cross(tensors: dict[str, np.ndarray]) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """Tensors through a region as the worker's client sends them: their datatypes, what the peer reads."""
    region = Region.create("runtime-test", 1 << 16)
    space = region.view(0, region.size)
    sent = [(n, transport_strings(a), 0) for n, a in tensors.items()]
    metas = write_tensors(space, 0, [(n, a, tensor_nbytes(a)) for n, a, _ in sent], buf=0)
    region.close_fd()
    read = {m["name"]: read_tensor(space[m["offset"] : m["offset"] + m["nbytes"]], m["datatype"], tuple(m["shape"]))
            for m in metas}  # fmt: skip
    return [m["datatype"] for m in metas], read, space


def test_strings_cross_as_numpy_unicode_views_and_bytes_exactly() -> None:
    words = np.array([["héllo", ""], ["wörld 文字", "a"]], dtype=object)
    unicode = np.array(["x", "", "ünï"])
    raw = np.array([b"\xff\xfe not utf-8", b""], dtype=object)
    mixed = np.array(["text", b"bytes"], dtype=object)
    nul = np.array(["ends in nul\x00", "b"], dtype=object)  # numpy unicode would drop the NUL
    big_endian = np.array(["bé"], dtype=">U2")  # the peer reads little-endian UCS4
    tensors = {"w": words, "u": unicode, "r": raw, "m": mixed, "n": nul, "be": big_endian}
    datatypes, got, space = _cross(tensors)
    assert datatypes == ["STR:8", "STR:3", "BYTES", "BYTES", "BYTES", "BYTES"]
    assert got["be"].tolist() == ["bé".encode()]
    assert got["w"].dtype == np.dtype("<U8") and got["w"].tolist() == words.tolist()
    assert np.shares_memory(got["w"], space) and np.shares_memory(got["u"], space)  # mapped, not copied
    assert got["u"].tolist() == unicode.tolist()
    assert got["r"].tolist() == raw.tolist()  # bytes arrive as sent, UTF-8 or not
    assert got["m"].tolist() == [b"text", b"bytes"]
    assert got["n"].tolist() == [b"ends in nul\x00", b"b"]
    # onnxruntime's feed is the view itself; the batcher joins any widths, as objects, not padded to the widest.
    assert onnx_platform.to_str_array(got["w"]) is got["w"]
    parts = [{"w": got["w"]}, {"w": np.array([["longer than eight"] * 2])}]
    assert signature(parts[0]) == signature(parts[1])
    joined = join(parts)["w"]
    assert joined.dtype == object and joined.tolist() == [*words.tolist(), ["longer than eight"] * 2]


def test_strings_much_wider_than_their_bytes_layout_fall_back_to_it() -> None:
    wide = np.array(["x" * 1000] + [""] * 99, dtype=object)  # fixed width: 400 kB against 1.4 kB as BYTES
    assert wide.size * 1000 * 4 > SMALL_STRINGS
    datatypes, got, _ = _cross({"wide": wide, "wide_unicode": wide.astype(str), "narrow": wide[:1]})
    assert datatypes == ["BYTES", "BYTES", "STR:1000"]
    assert got["wide"].tolist() == [s.encode() for s in wide.tolist()] == got["wide_unicode"].tolist()
    assert got["narrow"].tolist() == ["x" * 1000]


def test_frames_carry_file_descriptors_and_survive_split_reads() -> None:
    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        received: list[tuple[int, dict[str, Any], list[int]]] = []
        done = asyncio.Event()

        def on_frame(rid: int, meta: dict[str, Any], fds: list[int]) -> None:
            received.append((rid, meta, fds))
            if len(received) == 3:
                done.set()

        sender = Channel(left, lambda *_: None, lambda: None)
        Channel(right, on_frame, lambda: None)
        region = Region.create("runtime-test", 4096)
        region.view(0, 4)[:] = [1, 2, 3, 4]
        sender.send(1, {"op": "big", "pad": "x" * 3_000_000})  # larger than one read and the socket buffer
        sender.send(2, {"op": "a"}, [region.fd], give=True)  # queued behind it: its fd must stay open till sent
        sender.send(3, {"op": "c"})
        await asyncio.wait_for(done.wait(), 10)
        assert [(rid, meta["op"]) for rid, meta, _ in received] == [(1, "big"), (2, "a"), (3, "c")]
        fd = received[1][2][0]
        assert Region.attach(fd).view(0, 4).tolist() == [1, 2, 3, 4]
        os.close(fd)

    asyncio.run(main())


def test_a_frame_whose_handler_fails_leaves_the_others_handled_once() -> None:
    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        received: list[int] = []
        done = asyncio.Event()

        def on_frame(rid: int, meta: dict[str, Any], fds: list[int]) -> None:
            received.append(rid)
            if rid == 2:
                raise RuntimeError("a handler's bug")
            if rid == 4:
                done.set()

        sender = Channel(left, lambda *_: None, lambda: None)
        receiver = Channel(right, on_frame, lambda: None)
        for rid in (1, 2, 3):  # one write, one read
            sender.send(rid, {"op": "x"})
        await asyncio.sleep(0.05)
        assert received == [1, 2, 3]  # 3 at once, not when more bytes come
        sender.send(4, {"op": "x"})
        await asyncio.wait_for(done.wait(), 10)
        assert received == [1, 2, 3, 4] and not receiver.closed  # 1 and 2 not again

    asyncio.run(main())


def test_client_and_engine_in_one_loop(model_repo: Path) -> None:
    """Outputs are views on the worker's arena, its chunk is reused once they are gone; cancelled requests
    free theirs; a lost engine gives EngineUnavailable."""

    async def main() -> None:
        engine, stop, client = await engine_on_this_loop(model_repo)
        config = load_model(model_repo / "triton" / "linear")
        x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
        full = client._allocator.free_bytes
        outputs = await client.infer(config, "1", {"x": x})  # as the data plane hands them over
        np.testing.assert_allclose(outputs["y"], linear_reference(x)["y"], rtol=1e-6)
        assert np.shares_memory(outputs["y"], client._space)
        assert client._allocator.free_bytes < full
        del outputs
        gc.collect()
        assert client._allocator.free_bytes == full

        sleepy = load_model(model_repo / "triton" / "sleepy")
        slow = asyncio.ensure_future(client.infer(sleepy, "1", {"x": np.ones((32, 4), np.float32)}))
        await asyncio.sleep(0)
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        await asyncio.sleep(0.5)  # the engine answers the cancel
        assert client._allocator.free_bytes == full

        with pytest.raises(ServingError) as error:
            await client.infer(config, "7", {"x": x})
        assert error.value.status_code == 404

        assert client.connected
        stop.set()
        await engine
        await asyncio.sleep(0.05)
        assert not client.connected  # the worker's /v2/health/ready answers 503 meanwhile
        with pytest.raises(EngineUnavailable) as unavailable:
            await client.infer(config, "1", {"x": x})
        assert unavailable.value.status_code == 503 and "runtime-engine" in unavailable.value.message
        await client.close()

    asyncio.run(main())


@pytest.mark.parametrize("cancelled_first", [False, True])
def test_a_request_cancelled_as_its_answer_arrives_frees_its_chunk_and_descriptors(
    model_repo: Path, cancelled_first: bool
) -> None:
    """A client that leaves (or a timeout) in the turn of the loop that brings the engine's answer, just before it
    or just after: the chunk goes back to the arena and the descriptors that came with the answer (outputs in a
    region of their own) are closed, as they are for a request cancelled earlier; the frame is handled once."""

    async def main() -> None:
        engine, stop, client = await engine_on_this_loop(model_repo)
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        config = load_model(model_repo / "triton" / "linear")
        x = np.ones((2, 4), np.float32)
        baseline = await arena_baseline(client, config, {"x": x})
        assert client._channel is not None
        channel = client._channel
        on_frame = channel._on_frame
        leaving: list[asyncio.Future[Any]] = []

        def answered_as_the_client_leaves(rid: int, meta: dict[str, Any], fds: list[int]) -> None:
            if not cancelled_first:
                on_frame(rid, meta, fds)
            for task in leaving:
                task.cancel()
            if cancelled_first:
                on_frame(rid, meta, fds)

        channel._on_frame = answered_as_the_client_leaves
        for overflow in (False, True) * 3:  # outputs in the arena's chunk; in a region the answer brings
            fill_arena(client, overflow)
            leaving[:] = [asyncio.ensure_future(client.infer(config, "1", {"x": x}))]
            with pytest.raises(asyncio.CancelledError):
                await leaving[0]
        await asyncio.sleep(0.1)
        assert_released(client, baseline)
        assert errors == []
        await shut_down(engine, stop, client)

    asyncio.run(main())


def test_clients_that_leave_at_any_moment_get_right_answers_or_leave_nothing_behind(model_repo: Path) -> None:
    """Requests for batched, unbatched and string models, a third cancelled at a random moment (before they are
    sent, while queued or running, as the answer arrives): the others get their own outputs, and in the end the
    arena is whole, no descriptor is left open and no request waits."""
    rng = random.Random(1)

    async def main() -> None:
        engine, stop, client = await engine_on_this_loop(model_repo)
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        names = ["linear", "sleepy", "strings", "sleepy_unbatched"]
        configs = {name: load_model(model_repo / "triton" / name) for name in names}

        def inputs(name: str) -> dict[str, np.ndarray]:
            rows = rng.randint(1, 4)
            if name == "strings":  # some wider than the room left for their outputs: a region of their own
                return {"text": np.array([[b"w" * rng.randint(0, 3000)] for _ in range(rows)], dtype=object)}
            return {"x": np.random.default_rng(rng.randint(0, 1000)).standard_normal((rows, 4)).astype(np.float32)}

        async def one() -> None:
            name = rng.choice(names)
            given = inputs(name)
            task = asyncio.ensure_future(client.infer(configs[name], "1", given))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.02)
                task.cancel()
            elif rng.random() < 0.15:
                for _ in range(rng.randint(0, 5)):
                    await asyncio.sleep(0)
                task.cancel()
            (outputs,) = await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(rng.random() * 0.01)  # others take the chunks freed meanwhile
            if name == "linear" and isinstance(outputs, dict):
                # atol: a sum near zero differs in its last bits with the batch it ran in.
                np.testing.assert_allclose(outputs["y"], linear_reference(given["x"])["y"], rtol=1e-5, atol=1e-6)
            if name == "strings" and isinstance(outputs, dict):
                assert outputs["echo"].tolist() == given["text"].tolist()

        for name in names:  # lazily opened descriptors are open before counting
            await client.infer(configs[name], "1", inputs(name))
        gc.collect()
        baseline = client._allocator.free_bytes, open_descriptors()
        for _ in range(8):
            await asyncio.gather(*(one() for _ in range(60)))
        # The engine answers the last cancels: within 0.3 s on a quiet machine, later under CI's load.
        for _ in range(200):
            await asyncio.sleep(0.05)
            gc.collect()
            if not client._requests and (client._allocator.free_bytes, open_descriptors()) == baseline:
                break
        assert_released(client, baseline)
        assert client._chunks == {}
        assert errors == []
        await shut_down(engine, stop, client)

    asyncio.run(main())


def test_shared_memory_that_cannot_be_allocated_is_a_503_for_inputs_and_for_outputs_on_either_path(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs or outputs that need a region of their own when the worker or the engine is out of descriptors (or
    memory): a retryable 503 for that request, through the batcher or run at once on the engine's loop (where no
    answer came: a hang)."""
    create = Region.create

    def out_of_descriptors(prefix: str) -> Callable[[str, int], Region]:
        def region(name: str, size: int) -> Region:
            if name.startswith(prefix):
                raise OSError(errno.EMFILE, "Too many open files")
            return create(name, size)

        return region

    async def main() -> None:
        engine, stop, client = await engine_on_this_loop(model_repo)
        config = load_model(model_repo / "triton" / "linear")
        x = np.ones((1, 4), np.float32)
        monkeypatch.setattr(Region, "create", out_of_descriptors("runtime-in"))
        fill_arena(client, True)  # inputs in a region of their own: no room reserved for the outputs
        with pytest.raises(ServingError) as error:  # the worker's own region for the inputs
            await client.infer(config, "1", {"x": x})
        assert error.value.status_code == 503
        assert "cannot allocate shared memory for the request's inputs (Too many open files)" in error.value.message
        monkeypatch.setattr(Region, "create", create)
        for warm in (False, True):
            if warm:  # measured as a model of microseconds: it then runs on the engine's loop
                for _ in range(120):
                    await client.infer(config, "1", {"x": x})
            fill_arena(client, True)
            monkeypatch.setattr(Region, "create", out_of_descriptors("runtime-out"))
            with pytest.raises(ServingError) as error:
                await asyncio.wait_for(client.infer(config, "1", {"x": x}), 10)
            assert error.value.status_code == 503
            assert "cannot allocate shared memory for the outputs (Too many open files)" in error.value.message
            monkeypatch.setattr(Region, "create", create)
            fill_arena(client, False)
        outputs = await client.infer(config, "1", {"x": x})  # the engine serves on
        np.testing.assert_allclose(outputs["y"], linear_reference(x)["y"], rtol=1e-6)
        await shut_down(engine, stop, client)

    asyncio.run(main())


def test_a_request_that_cannot_be_sent_frees_its_chunk_and_region(model_repo: Path) -> None:
    """A request whose frame cannot be encoded (a priority past 64 bits, which the data plane refuses first)
    fails alone: its chunk, or the region of its own that a full arena gives it, is not held forever."""

    async def main() -> None:
        engine, stop, client = await engine_on_this_loop(model_repo)
        config = load_model(model_repo / "triton" / "linear")
        x = np.ones((2, 4), np.float32)
        baseline = await arena_baseline(client, config, {"x": x})
        for overflow in (False, True) * 2:
            fill_arena(client, overflow)
            with pytest.raises(TypeError):
                await client.infer(config, "1", {"x": x}, Schedule(priority=2**70))
        assert_released(client, baseline)
        fill_arena(client, False)
        outputs = await client.infer(config, "1", {"x": x})  # the connection serves on
        np.testing.assert_allclose(outputs["y"], linear_reference(x)["y"], rtol=1e-6)
        await shut_down(engine, stop, client)

    asyncio.run(main())


def test_requests_in_one_read_for_a_fast_model_run_as_one_batch_each_with_its_own_outputs(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames that one flush of a worker sends, for an idle model that runs on the engine's loop, run at once as
    one batch (no queue), and each request gets the rows of its own inputs back."""
    labels = {"model": "linear", "version": "1"}
    ran_now: list[int] = []
    run_now = ModelRunner.run_now

    def counted(runner: ModelRunner, requests: list[Any], tags: list[object], answer: Any) -> bool:
        done = run_now(runner, requests, tags, answer)
        if done:
            ran_now.append(len(requests))
        return done

    monkeypatch.setattr(ModelRunner, "run_now", counted)

    def batches() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("runtime_batch_size_count", labels) or 0.0
        return count, REGISTRY.get_sample_value("runtime_batch_size_sum", labels) or 0.0

    async def main() -> None:
        engine, stop, client = await engine_on_this_loop(model_repo)
        config = load_model(model_repo / "triton" / "linear")
        x = np.ones((1, 4), np.float32)
        for _ in range(120):  # measured as a model of microseconds: it then runs on the engine's loop
            await client.infer(config, "1", {"x": x})
        rng = np.random.default_rng(5)
        joined = False
        for _ in range(5):  # one burst suffices; a loaded machine may slow an execution past the threshold
            # 4 rows: the completed config's max_batch_size (Triton's default for onnxruntime models).
            inputs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 2, 1)]
            before = batches()
            outputs = await asyncio.gather(*(client.infer(config, "1", {"x": i}) for i in inputs))
            after = batches()
            for i, out in zip(inputs, outputs, strict=True):
                np.testing.assert_allclose(out["y"], linear_reference(i)["y"], rtol=1e-5)
                np.testing.assert_allclose(out["norm"], linear_reference(i)["norm"], rtol=1e-5)
            assert after[1] - before[1] == 4  # every row ran once
            if after[0] - before[0] == 1 and ran_now[-1:] == [3]:
                joined = True
                break
        assert joined, "no burst ran as one batch"
        stop.set()
        await engine
        await client.close()

    asyncio.run(main())


def test_engine_runners_shard_cpu_instances_and_run_requests_for_an_idle_model_at_once(model_repo: Path) -> None:
    """The engine's CPU instances: one single-threaded session, a batch in as many shards as the instance has
    threads; requests for an idle model that runs on the loop skip the queue, joined into one batch."""
    batches: list[BatchStats] = []

    def on_batch(_: object, stats: BatchStats) -> None:
        batches.append(stats)

    runners = {r.config.name: r for r in load_runners(str(model_repo), 1, on_batch, ENGINE_INLINE_BELOW_S, True)}
    linear = runners["linear"]
    threads = instances.cpu_threads([Device("cpu")])
    assert linear.slots == threads
    session = linear.instances[0].session  # type: ignore[attr-defined]
    assert session.get_session_options().intra_op_num_threads == 1
    per_worker = {r.config.name: r for r in load_runners(str(model_repo), 1)}["linear"]  # intra-op threads
    assert per_worker.slots == 1
    assert per_worker.instances[0].session.get_session_options().intra_op_num_threads == threads  # type: ignore[attr-defined]
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    x3 = np.random.default_rng(3).standard_normal((1, 4)).astype(np.float32)
    answers: list[list[Any]] = []

    def answer(results: list[Any]) -> None:
        assert len(batches) == 1  # answered before its metrics are recorded
        answers.append(results)

    async def main() -> None:
        linear.start()
        try:
            assert not linear.run_now([{"x": x}], [1], answer)  # not measured as fast yet: the batcher and its thread
            np.testing.assert_allclose((await linear.submit({"x": x}))["y"], linear_reference(x)["y"], rtol=1e-6)
            assert len(batches) == 1
            linear._compute_s = 0.0  # measured as a model that runs in microseconds
            await asyncio.sleep(0.01)  # the batch's task finishes: the batcher is idle
            assert linear.runs_now
            # Requests that come together run as one batch (as the batcher would join them), each with its outputs.
            assert linear.run_now([{"x": x}, {"x": x3}], [1, 2], answer)
            assert len(answers) == 1 and len(answers[0]) == 2
            for result, expected in zip(answers[0], (x, x3), strict=True):
                np.testing.assert_allclose(result["y"], linear_reference(expected)["y"], rtol=1e-6)
            assert [(b.batch_size, b.requests, b.tags) for b in batches[1:]] == [(3, 2, [1, 2])]
            queued = linear.submit({"x": x})
            assert not linear.runs_now
            assert not linear.run_now([{"x": x}], [1], answer)  # something to join: through the batcher
            await queued
        finally:
            await linear.stop()

    asyncio.run(main())
    for runner in [*runners.values(), per_worker]:
        if runner is not linear:  # stopped: its sessions are closed
            for instance in runner.instances:
                instance.close()


class FakePlatform:
    """A platform that pretends this machine has ``gpus`` GPUs."""

    name = "fake"

    def __init__(self, gpus: int) -> None:
        self.gpus = gpus

    def gpu_count(self) -> int:
        return self.gpus

    def missing_gpu_reason(self) -> str:
        return "the fake driver is missing"

    def load(self, config: Any, version: str, device: Device, threads: int) -> Any:
        raise NotImplementedError


def config_with(tmp_path: Path, model_repo: Path, groups: str) -> Any:
    folder = tmp_path / "m"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").symlink_to(model_repo / "triton" / "linear" / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(f"instance_group [{groups}]\n")
    return load_model(folder)


@pytest.mark.parametrize(
    ("groups", "gpus", "expected"),
    [
        ("{ count: 2 kind: KIND_CPU }", 2, [Device("cpu")] * 2),
        ("{ count: 2 kind: KIND_GPU gpus: [1] }", 2, [Device("gpu", 1)] * 2),
        ("{ kind: KIND_GPU }", 2, [Device("gpu", 0), Device("gpu", 1)]),
        ("{ count: 1 kind: KIND_AUTO }", 1, [Device("gpu", 0)]),
        ("{ count: 3 kind: KIND_AUTO }", 0, [Device("cpu")] * 3),
        ("{ count: 1 kind: KIND_CPU }, { count: 1 kind: KIND_GPU gpus: [0] }", 1, [Device("cpu"), Device("gpu", 0)]),
    ],
)
def test_instance_groups_resolve_to_devices(
    tmp_path: Path, model_repo: Path, groups: str, gpus: int, expected: list[Device]
) -> None:
    assert instances.resolve(config_with(tmp_path, model_repo, groups), FakePlatform(gpus)) == expected


@pytest.mark.parametrize(
    ("groups", "gpus", "message"),
    [
        ("{ kind: KIND_GPU }", 0, "model 'm': instance_group 0 asks for KIND_GPU, but no GPU is usable: the fake"),
        ("{ kind: KIND_GPU gpus: [3] }", 2, "asks for gpus [3], but this machine has GPUs 0..1"),
        ("{ kind: KIND_MODEL }", 1, "kind KIND_MODEL is not supported"),
    ],
)
def test_instance_groups_that_cannot_be_placed_are_startup_errors(
    tmp_path: Path, model_repo: Path, groups: str, gpus: int, message: str
) -> None:
    with pytest.raises(StartupError, match=message.replace("[", r"\[").replace("]", r"\]")):
        instances.resolve(config_with(tmp_path, model_repo, groups), FakePlatform(gpus))


def test_threads_are_split_over_cpu_instances_only() -> None:
    assert instances.cpu_threads([Device("cpu"), Device("cpu"), Device("gpu")], cores=16) == 8
    assert instances.cpu_threads([Device("gpu")], cores=16) == 16
    assert instances.cpu_threads([Device("cpu")] * 4, cores=2) == 1
    assert instances.describe([Device("cpu"), Device("gpu", 1), Device("gpu", 1)]) == "1 x CPU, 2 x GPU 1"


def test_gpu_instance_asks_onnxruntime_for_cuda_on_its_device(
    tmp_path: Path, model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    seen: list[Any] = []

    class Session:
        def __init__(self, path: str, sess_options: Any, providers: list[Any]) -> None:
            seen.append(providers)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    config = config_with(tmp_path, model_repo, "{ kind: KIND_CPU }")
    onnx_platform.OnnxPlatform().load(config, "1", Device("gpu", 1), threads=1)
    onnx_platform.OnnxPlatform().load(config, "1", Device("cpu"), threads=1)
    assert seen == [[("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"], ["CPUExecutionProvider"]]


def test_cpu_instance_runs_the_compiled_session_with_the_same_results(tmp_path: Path, model_repo: Path) -> None:
    instance = onnx_platform.OnnxPlatform().load(
        config_with(tmp_path, model_repo, "{ kind: KIND_CPU }"), "1", Device("cpu"), threads=1
    )
    assert instance._compiled is not None  # InferenceSession.run's checks skipped on the CPU provider alone
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    outputs = instance.run({"x": x})
    expected = linear_reference(x)
    assert list(outputs) == ["y", "norm"]
    for name, value in outputs.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6)
        np.testing.assert_array_equal(value, instance.session.run([name], {"x": x})[0])
    instance.close()
    with pytest.raises(AttributeError):  # the session is released, the compiled one with it
        instance.run({"x": x})


def test_onnx_platform_says_what_is_missing_for_a_gpu() -> None:
    platform = onnx_platform.OnnxPlatform()
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")  # never in CI: it installs the CPU onnxruntime
    assert platform.gpu_count() == 0
    assert "onnxruntime-gpu" in platform.missing_gpu_reason()


def test_onnx_platform_counts_gpus_through_the_cuda_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path, on a CPU machine: a pretend driver with 2 GPUs and onnxruntime-gpu's provider list."""

    class Driver:
        def cuInit(self, flags: int) -> int:
            return 0

        def cuDeviceGetCount(self, count: Any) -> int:
            count._obj.value = 2
            return 0

    monkeypatch.setattr(onnx_platform, "_available", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnx_platform.ctypes, "CDLL", lambda name: Driver())
    onnx_platform._cuda_devices.cache_clear()
    try:
        assert onnx_platform.OnnxPlatform().gpu_count() == 2
    finally:
        onnx_platform._cuda_devices.cache_clear()


def test_cpu_sessions_allocate_without_memory_patterns(model_repo: Path) -> None:
    """A memory pattern is one arena block per batch shape, and the batcher forms every shape: CPU sessions, in
    the engine and in the per-worker design, allocate tensor by tensor (benchmarks/engine-analysis.md)."""
    for shard_cpu in (True, False):
        for runner in load_runners(str(model_repo), 1, None, 0.0, shard_cpu):
            session = runner.instances[0].session  # type: ignore[attr-defined]
            assert session.get_session_options().enable_mem_pattern is False, runner.config.name
    assert onnx_platform.session_options(1, cpu=False).enable_mem_pattern is True  # GPU sessions as before


class _Sleeper(SupervisedProcess):
    label = "sleeper"

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(["sleep", "60"], start_new_session=True)

    def wait_ready(self) -> None:
        pass


def test_a_forked_child_unwinding_does_not_stop_what_its_parent_started() -> None:
    """A Gunicorn worker that exits (Ctrl-C's quick shutdown, --max-requests) unwinds through the master's
    `finally: triton.stop()`: only the master may stop the managed Triton (the worker's stop killed it, the
    master's supervisor restarted it, and the worker hung until Gunicorn's SIGKILL 30 s later)."""
    sleeper = _Sleeper()
    sleeper._spawn()
    assert sleeper.proc is not None
    child = os.fork()
    if child == 0:  # pragma: no cover - the child exits here, whatever happens
        try:
            sleeper._stop_process(1)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert sleeper.proc.poll() is None, "a forked child stopped its parent's process"
    sleeper._stop_process(5)
    assert sleeper.proc.returncode == -signal.SIGTERM
