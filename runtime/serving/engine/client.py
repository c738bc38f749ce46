"""The worker side of the engine: one control connection, one arena, requests multiplexed by id.

Inputs are written once into the worker's arena; the engine reads them in place and writes the
outputs into room reserved next to them, so the arrays the worker returns are views on shared
memory (freed for reuse when the last of them is collected). If the engine goes away, requests in
flight and new ones fail with a 503 that names it, and the client reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import socket
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from runtime import metrics, tracing
from runtime.errors import ServiceUnavailable, ServingError
from runtime.serving.datatypes import wire_to_numpy
from runtime.serving.engine.arena import (
    Allocator,
    Region,
    align,
    read_tensor,
    tensor_nbytes,
    transport_strings,
    write_tensors,
)
from runtime.serving.engine.channel import Channel, ChannelClosed, Meta, close_all, socket_address
from runtime.serving.model_config import mc
from runtime.serving.repository import ModelConfig, model_config_from_proto
from runtime.serving.runner import NO_SCHEDULE, Schedule

logger = logging.getLogger("runtime.engine")

DEFAULT_ARENA_BYTES = 64 << 20
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0
# Room for outputs whose size the config leaves open (BYTES, -1 dims), before the engine needs a region of its own.
OPEN_OUTPUT_ROOM = 4096
METRICS_WAIT_S = 2.0  # for the engine to write its held metrics before a scrape


class EngineUnavailable(ServiceUnavailable):
    def __init__(self, why: str) -> None:
        super().__init__(f"The model engine (runtime-engine) is unavailable: {why}. Retry shortly.")


@dataclass
class _Request:
    future: asyncio.Future[Meta]
    offset: int  # of its chunk in the arena; -1 when it has none
    size: int
    abandoned: bool = False


def config_from_engine(model: Meta) -> ModelConfig:
    """A model's config as the engine describes it in its welcome."""
    proto = text_format.Parse(model["config"], mc.ModelConfig())
    return model_config_from_proto(proto, list(model["versions"]), Path(model["path"]))


def output_layout(config: ModelConfig) -> tuple[list[int], int]:
    """Per output whose size the config fixes, its bytes per batch item; and how many outputs it leaves open."""
    fixed, open_ = [], 0
    for spec in config.outputs:
        dims = spec.model_dims
        if spec.datatype == "BYTES" or any(d < 0 for d in dims):
            open_ += 1
        else:
            fixed.append(math.prod(dims) * wire_to_numpy(spec.datatype).itemsize)
    return fixed, open_


def output_room(layout: tuple[list[int], int], batch: int, input_bytes: int) -> int:
    """Bytes to reserve for one request's outputs, from the config's datatypes and dims (its layout)."""
    fixed, open_ = layout
    return sum(align(batch * n) for n in fixed) + open_ * align(max(OPEN_OUTPUT_ROOM, input_bytes))


class _Chunk(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to the array over a request's chunk, which frees the chunk when it is collected."""

    __slots__ = ("offset", "size")

    offset: int
    size: int


class EngineClient:
    def __init__(self, address: str, arena_bytes: int = DEFAULT_ARENA_BYTES) -> None:
        self.address = address
        self.region = Region.create(f"runtime-arena-{os.getpid()}", arena_bytes)
        self._space = self.region.view(0, self.region.size)
        assert self.region.map is not None
        self._memory = memoryview(self.region.map)
        self._allocator = Allocator(self.region.size)
        self._lock = threading.Lock()  # output arrays may be collected in any thread
        self._requests: dict[int, _Request] = {}
        self._chunks: dict[int, _Chunk] = {}  # by offset: chunks whose outputs the caller holds
        self._layouts: dict[int, tuple[ModelConfig, tuple[list[int], int]]] = {}  # by id(config)
        self._ids = itertools.count(1)
        self._channel: Channel | None = None
        self._welcome: asyncio.Future[Meta] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False
        self.models: list[Meta] = []
        self.engine_pid = 0

    # -- connection ---------------------------------------------------------------------------
    async def connect(self, timeout: float) -> None:
        """Connect (retrying until ``timeout``) and receive the engine's model list."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = BACKOFF_START
        while True:
            try:
                await self._connect_once()
                # The engine holds its model metrics back: it writes them before this process answers a scrape.
                metrics.add_scrape_source(self.flush_metrics, before=True)
                return
            except (OSError, asyncio.TimeoutError) as ex:
                if loop.time() + delay > deadline:
                    raise EngineUnavailable(f"cannot connect to {self.address}: {ex}") from ex
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, socket_address(self.address))
        except OSError:
            sock.close()
            raise
        self._welcome = loop.create_future()
        self._loop = loop  # asyncio.get_running_loop() makes a getpid system call per call on Python 3.11
        channel = Channel(sock, self._frame, lambda: self._closed(channel))
        channel.send(0, {"op": "hello", "pid": os.getpid()}, [self.region.fd])
        try:
            welcome = await asyncio.wait_for(asyncio.shield(self._welcome), 30)
        except BaseException:
            channel.close()
            raise
        self.models = welcome["models"]
        self.engine_pid = int(welcome["pid"])
        self._channel = channel
        logger.info("Connected to the model engine (pid %d)", self.engine_pid)

    def _closed(self, channel: Channel) -> None:
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(ConnectionError("the engine closed the connection"))
        if channel is not self._channel:
            return
        self._channel = None
        requests, self._requests = self._requests, {}
        for request in requests.values():
            self._release(request.offset, request.size)
            if not request.future.done():
                request.future.set_exception(EngineUnavailable("it exited while answering this request"))
        if self._closing:
            return
        logger.error("Lost the model engine (pid %d); reconnecting", self.engine_pid)
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = BACKOFF_START
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._connect_once()
                return
            except (OSError, asyncio.TimeoutError):
                delay = min(delay * 2, BACKOFF_MAX)

    async def close(self) -> None:
        self._closing = True
        metrics.remove_scrape_source(self.flush_metrics)
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._channel is not None:
            self._channel.close()
        self.region.close_fd()

    # -- requests -----------------------------------------------------------------------------
    def _frame(self, rid: int, meta: Meta, fds: list[int]) -> None:
        if rid == 0:
            if self._welcome is not None and not self._welcome.done() and meta.get("op") == "welcome":
                self._welcome.set_result(meta)
            return
        request = self._requests.pop(rid, None)
        # Done already: cancelled by a client that left in this turn of the loop, before infer() could mark it.
        if request is None or request.abandoned or request.future.done():
            close_all(fds)
            if request is not None:
                self._release(request.offset, request.size)
            return
        if fds:
            meta["_fds"] = fds
        request.future.set_result(meta)

    def _alloc(self, size: int) -> int | None:
        with self._lock:
            return self._allocator.alloc(size)

    def _release(self, offset: int, size: int) -> None:
        if offset >= 0:
            with self._lock:
                self._allocator.free(offset, size)

    def _collected(self, ref: _Chunk) -> None:
        self._chunks.pop(ref.offset, None)
        self._release(ref.offset, ref.size)

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.closed

    async def infer(
        self,
        config: ModelConfig,
        version: str,
        inputs: Mapping[str, np.ndarray],
        schedule: Schedule = NO_SCHEDULE,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run validated inputs on the engine; the outputs as the model returns them."""
        channel = self._channel
        if channel is None or channel.closed:
            raise EngineUnavailable("it is restarting")
        # Strings cross as numpy unicode where they can (no work per element on either side), else as bytes.
        inputs = {n: transport_strings(a) if a.dtype.kind in "OSU" else a for n, a in inputs.items()}
        sizes = {name: tensor_nbytes(a) for name, a in inputs.items()}
        in_bytes = sum(align(s) for s in sizes.values())
        batch = int(next(iter(inputs.values())).shape[0]) if config.max_batch_size > 0 and inputs else 1
        layout = self._layouts.get(id(config))
        if layout is None or layout[0] is not config:
            layout = self._layouts[id(config)] = (config, output_layout(config))
        room = output_room(layout[1], batch, in_bytes)
        offset = self._alloc(in_bytes + room)
        fds: list[int] = []
        overflow: Region | None = None
        if offset is None:
            # The arena is full (or the request is larger than it): this request gets a region of its own.
            try:
                overflow = Region.create(f"runtime-in-{os.getpid()}", in_bytes)
            except OSError as ex:  # out of descriptors or memory: this request fails, retryable
                raise ServiceUnavailable(
                    f"this worker cannot allocate shared memory for the request's inputs ({ex.strerror}); retry shortly"
                ) from None
            space, buf, position, reserved = overflow.view(0, overflow.size), 1, 0, [0, 0]
            fds.append(overflow.fd)
            chunk = (-1, 0)
        else:
            space, buf, position, reserved = self._space, 0, offset, [offset + in_bytes, room]
            chunk = (offset, in_bytes + room)
        rid = next(self._ids)
        assert self._loop is not None  # set with the channel
        request = _Request(self._loop.create_future(), *chunk)
        self._requests[rid] = request
        given = False
        try:
            metas = write_tensors(space, position, [(n, a, sizes[n]) for n, a in inputs.items()], buf)
            meta: Meta = {"op": "infer", "model": config.name, "version": version}
            meta.update(inputs=metas, reserved=reserved)
            if schedule.deadline is not None:  # time.monotonic(), one clock for every process
                meta["deadline"] = schedule.deadline
            if schedule.priority or schedule.timeout_us:
                meta.update(priority=schedule.priority, timeout_us=schedule.timeout_us)
            if request_id is not None:
                meta["request_id"] = request_id  # for the engine's log
            if trace := tracing.inject({}):
                meta["trace"] = trace  # the engine's queue and batch spans join the request's trace
            given = True  # the channel closes the region's descriptor from here on, sent or not
            channel.send(rid, meta, fds, give=True)
            if len(self._requests) == 1:
                channel.flush()  # nothing else to send with it this turn: one loop iteration sooner
        except BaseException as ex:
            # Nothing was sent: no answer will free the chunk.
            self._requests.pop(rid, None)
            self._release(*chunk)
            if overflow is not None and not given:
                overflow.close_fd()
            if isinstance(ex, ChannelClosed):
                raise EngineUnavailable("it is restarting") from None
            raise
        finally:
            if overflow is not None:
                overflow.fd = -1  # closed by the channel (or above)
        try:
            reply = await request.future
        except asyncio.CancelledError:
            if request.future.done() and not request.future.cancelled() and request.future.exception() is None:
                # Answered in the same turn of the loop as the cancel (a client that left, a timeout): no answer
                # is coming to free the chunk, nor anything to close the descriptors that came with this one.
                self._release(*chunk)
                close_all(request.future.result().get("_fds", ()))
            else:  # the engine may still write into the chunk: it is freed when the engine answers
                request.abandoned = True
                if rid in self._requests and not channel.closed:
                    channel.send(rid, {"op": "cancel"})
            raise
        if reply["op"] == "error":
            self._release(*chunk)
            raise ServingError(reply["message"], int(reply["status"]))
        if reply["op"] != "result":
            self._release(*chunk)
            raise EngineUnavailable(f"it answered {reply['op']!r}")
        return self._outputs(reply, chunk)

    async def flush_metrics(self) -> bytes:
        """Have the engine write the model metrics it holds back (a scrape source run before the collection)."""
        channel = self._channel
        if channel is None or channel.closed or self._loop is None:
            return b""
        rid = next(self._ids)
        answer = self._requests[rid] = _Request(self._loop.create_future(), -1, 0)
        try:
            channel.send(rid, {"op": "metrics"})
            channel.flush()
            await asyncio.wait_for(asyncio.shield(answer.future), METRICS_WAIT_S)
        except (ChannelClosed, ServingError, asyncio.TimeoutError):
            pass  # the scrape shows what the engine has written
        finally:
            self._requests.pop(rid, None)
        return b""

    def _outputs(self, reply: Meta, chunk: tuple[int, int]) -> dict[str, np.ndarray]:
        fds: list[int] = reply.get("_fds", [])
        base: np.ndarray | None = None
        if chunk[0] >= 0:
            # A base of its own (over a memoryview, so numpy does not collapse it into the arena's):
            # the chunk is reused once every output viewing it has been collected.
            base = np.frombuffer(self._memory[chunk[0] : chunk[0] + chunk[1]], np.uint8)
            ref = self._chunks[chunk[0]] = _Chunk(base, self._collected)
            ref.offset, ref.size = chunk
        spaces: dict[int, np.ndarray] = {}
        if fds:
            extra = Region.attach(fds[0])
            extra.close_fd()
            spaces[1] = extra.view(0, extra.size)
            close_all(fds[1:])
        outputs = {}
        for t in reply["outputs"]:
            if t["buf"] == 0:
                assert base is not None
                start = t["offset"] - chunk[0]
                raw = base[start : start + t["nbytes"]]
            else:
                raw = spaces[t["buf"]][t["offset"] : t["offset"] + t["nbytes"]]
            outputs[t["name"]] = read_tensor(raw, t["datatype"], tuple(t["shape"]))
        return outputs
