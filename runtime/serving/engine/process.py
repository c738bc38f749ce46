"""The engine process, ``runtime-engine``: every model, one batcher per model version, all workers.

Started by ``runtime serve`` (:mod:`.supervisor`) as a fresh interpreter, never forked from a
process that has onnxruntime or CUDA initialised::

    python -m runtime.serving.engine.process --address @NAME --model-dir DIR
    python -m runtime.serving.engine.process --address @NAME --triton-url HOST:PORT [--model-dir DIR]

It loads every model first and only then listens, so a worker that connects finds them ready. With
``--triton-url`` it is Triton's client instead (:mod:`.triton`): it waits for Triton's models, then
batches the workers' requests and sends Triton one request per batch.
SIGTERM stops accepting, answers the requests in flight, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from runtime import metrics, tracing
from runtime.errors import STARTUP_EXIT_CODE, ServiceUnavailable, ServingError, StartupError
from runtime.prctl import name_and_tie_to_parent
from runtime.serving.batching import BatchStats, Tensors
from runtime.serving.engine.arena import Region, align, read_tensor, tensor_nbytes, write_tensors
from runtime.serving.engine.channel import Channel, Meta, close_all, socket_address
from runtime.serving.engine.remote import LOGGING, REGIONS, Request
from runtime.serving.runner import (
    ENGINE_INLINE_BELOW_S,
    NO_SCHEDULE,
    InferenceFailed,
    ModelRunner,
    Schedule,
    load_runners,
)
from runtime.serving.tensors import to_bytes_array

logger = logging.getLogger("runtime.engine")

PROCESS_NAME = b"runtime-engine"
# How long a thread holds the GIL before another may take it (Python's default is 5 ms). Model threads release
# and retake it during a forward pass, and each retake waits out the holder's interval: with another thread
# running Python, a TorchScript DenseNet-121 batch of 28 took 63 ms instead of 15 ms on an H100
# (benchmarks/scripts/gpu_forward.py); on the CPU a shorter interval halved that penalty.
SWITCH_INTERVAL_S = 0.0005
# How often the engine writes the model metrics it holds (metrics.defer_model_metrics) when no scrape asks first.
METRICS_FLUSH_S = 0.5
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's starting value, kept


def fixed_mmap_threshold() -> None:
    """Blocks over 128 KiB (a batch's joined inputs) get a mapping of their own, unmapped when freed.

    glibc raises that threshold to the largest block freed so far (up to 32 MiB); such blocks then come
    from the heap of the model thread that joined them, one heap per thread, which gives back only its
    top: 60 MiB of the engine's RSS after a DenseNet burst. A threshold set by mallopt stays put. The
    price, a page fault per 4 KiB of a fresh block, is well under 1% of a DenseNet batch; the tiny
    model's blocks are smaller.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


@dataclass(slots=True)
class _Now:
    """A request whose model runs at once (see :meth:`WorkerConnection._drained`)."""

    rid: int
    meta: Meta
    inputs: Request
    fds: list[int]


class Engine:
    def __init__(self, runners: list[ModelRunner]) -> None:
        self.runners = {(r.config.name, r.version): r for r in runners}
        self.strings = {r: {t.name for t in r.config.outputs if t.datatype == "BYTES"} for r in runners}
        self.connections: set[WorkerConnection] = set()

    def models(self) -> list[Meta]:
        seen: dict[str, Meta] = {}
        for runner in self.runners.values():
            config = runner.config
            seen[config.name] = {
                "name": config.name,
                "versions": config.versions,
                "path": str(config.path),
                "config": config.config_text(),
            }
        return list(seen.values())

    def in_flight(self) -> int:
        return sum(len(c.pending) for c in self.connections)


def record_workers(runner: ModelRunner, stats: BatchStats) -> None:
    """How many worker processes share each batch (tags are worker pids)."""
    metrics.record_batch_workers(runner.config.name, runner.version, len(set(stats.tags)))


class WorkerConnection:
    """One worker's control connection and its arena."""

    def __init__(self, engine: Engine, sock: socket.socket) -> None:
        self.engine = engine
        self.pid = 0
        self.arena: np.ndarray | None = None
        self.arena_key = 0  # in remote.REGIONS: instance processes map the arena to read and write in place
        self.pending: dict[int, asyncio.Future[dict[str, np.ndarray]]] = {}
        self.requests: dict[int, Request] = {}
        self._now: dict[ModelRunner, list[_Now]] = {}  # from the frames being read, for models that run at once
        self.channel = Channel(sock, self._frame, self._closed, self._drained)

    def _frame(self, rid: int, meta: Meta, fds: list[int]) -> None:
        op = meta.get("op")
        if op == "infer":
            self._infer(rid, meta, fds)
        elif op == "cancel":
            pending = self.pending.get(rid)
            if pending is not None and self.requests[rid].drop():
                pending.cancel()  # else an instance process holds it: the answer comes when it is done
        elif op == "metrics":  # the worker is about to answer a scrape of /metrics
            metrics.flush_model_metrics()
            self.channel.send(rid, {"op": "metrics"})
        elif op == "hello":
            self.pid = int(meta["pid"])
            region = Region.attach(fds[0])
            self.arena = region.view(0, region.size)
            self.arena_key = REGIONS.add(region.fd, self.arena)
            self.channel.send(0, {"op": "welcome", "pid": os.getpid(), "models": self.engine.models()})
            logger.info("Worker %d connected (arena %d MiB)", self.pid, region.size >> 20)
        else:
            logger.error("Worker %d sent an unknown control frame %r; closing its connection", self.pid, op)
            self.channel.close()

    def _closed(self) -> None:
        for held in self._now.values():  # parsed from a read that the close cut short
            for request in held:
                close_all(request.fds)
        self._now.clear()
        for pending in list(self.pending.values()):
            pending.cancel()  # queued requests leave the batches they wait for
        self.engine.connections.discard(self)
        # Arrays still in a running batch keep the mapping alive; the memory goes with the last of them
        # (and, in instance processes, when their next batch tells them to forget it).
        self.arena = None
        if self.arena_key:
            REGIONS.remove(self.arena_key)
            self.arena_key = 0
        if self.pid:
            logger.info("Worker %d disconnected", self.pid)

    def _space(self, buf: int, fds: list[int]) -> np.ndarray:
        if buf == 0:
            assert self.arena is not None, "infer before hello"
            return self.arena
        region = Region.attach(fds[buf - 1])
        return region.view(0, region.size)

    def _infer(self, rid: int, meta: Meta, fds: list[int]) -> None:
        """Run one request soon (its model is idle and fast) or queue it on its model's batcher."""
        try:
            runner = self.engine.runners.get((meta["model"], meta["version"]))
            if runner is None:
                raise ServingError(f"model '{meta['model']}' version {meta['version']} is not loaded", 404)
            spaces: dict[int, np.ndarray] = {}
            offset, room = meta["reserved"]
            inputs = Request((self.arena_key, offset, room) if room else None)
            for t in meta["inputs"]:
                space = spaces.get(t["buf"])
                if space is None:
                    space = spaces[t["buf"]] = self._space(t["buf"], fds)
                raw = space[t["offset"] : t["offset"] + t["nbytes"]]
                inputs[t["name"]] = read_tensor(raw, t["datatype"], tuple(t["shape"]))
            deadline = meta.get("deadline")
            if "trace" not in meta and runner.runs_now and (deadline is None or deadline > time.monotonic()):
                # Its model is idle and runs on the loop: it runs with the other frames of this read (in one
                # batch, answered in one write), once they are parsed. Nothing is queued, so its priority and
                # queue timeout cannot matter.
                self._now.setdefault(runner, []).append(_Now(rid, meta, inputs, fds))
                return
        except Exception as ex:
            close_all(fds)
            self.failed(rid, meta, ex)
            return
        self.submit(rid, meta, runner, inputs, fds)

    def _drained(self) -> None:
        """Every complete frame read so far is handled: run the requests held for models that run at once."""
        while self._now:
            runner, held = self._now.popitem()
            if not runner.run_now(
                [r.inputs for r in held], [self.pid] * len(held), partial(self._answer, runner, held)
            ):
                for r in held:  # the model got busy meanwhile (a traced request): through its batcher
                    self.submit(r.rid, r.meta, runner, r.inputs, r.fds)

    def _answer(self, runner: ModelRunner, held: list[_Now], results: list[Tensors | InferenceFailed]) -> None:
        for request, result in zip(held, results, strict=True):
            try:  # every request gets an answer, whatever happens to the one before it
                if isinstance(result, InferenceFailed):
                    self.failed(request.rid, request.meta, result)
                else:
                    self.reply(request.rid, runner, result, request.meta["reserved"])
            except Exception as ex:
                self.failed(request.rid, request.meta, ex)
            close_all(request.fds)  # mappings of them stay valid while arrays use them
        self.channel.flush()  # before the runner records the metrics: the worker is waiting

    def submit(self, rid: int, meta: Meta, runner: ModelRunner, inputs: Request, fds: list[int]) -> None:
        """Queue one request on its model's batcher; :meth:`_finished` answers it. No task per request."""
        schedule = (
            Schedule(meta.get("priority", 0), meta.get("timeout_us", 0), meta.get("deadline"))
            if "deadline" in meta or "priority" in meta
            else NO_SCHEDULE
        )
        try:
            with tracing.continued(meta.get("trace")):  # the batcher keeps the context for its spans
                future = runner.submit(inputs, schedule, tag=self.pid)
        except Exception as ex:
            close_all(fds)
            self.failed(rid, meta, ex)
            return
        self.pending[rid] = future
        self.requests[rid] = inputs
        future.add_done_callback(lambda done: self._finished(rid, meta, runner, fds, done))

    def _finished(
        self, rid: int, meta: Meta, runner: ModelRunner, fds: list[int], done: asyncio.Future[dict[str, np.ndarray]]
    ) -> None:
        self.pending.pop(rid, None)
        self.requests.pop(rid, None)
        close_all(fds)  # mappings of them stay valid while arrays use them
        if self.channel.closed:
            return
        if done.cancelled():
            # Also when cancelled before it ran: the worker frees the request's chunk on this answer.
            self.channel.send(rid, {"op": "cancelled"})
            return
        error = done.exception()
        try:
            if error is not None:
                raise error
            self.reply(rid, runner, done.result(), meta["reserved"])
        except Exception as ex:
            self.failed(rid, meta, ex)

    def failed(self, rid: int, meta: Meta, error: BaseException) -> None:
        if isinstance(error, ServingError):
            if error.detail:  # the worker gets the message; the detail stays in the engine's log
                logger.error("%s", error.log_line(meta.get("request_id", str(rid))))
            answer = {"op": "error", "status": error.status_code, "message": error.message}
        else:
            logger.error("Request %s from worker %d failed", meta.get("request_id", rid), self.pid, exc_info=error)
            answer = {"op": "error", "status": 500, "message": "the model engine failed (see its log)"}
        if not self.channel.closed:
            self.channel.send(rid, answer)

    def reply(self, rid: int, runner: ModelRunner, outputs: dict[str, np.ndarray], reserved: list[int]) -> None:
        if self.channel.closed:
            return
        tensors = []
        strings = self.engine.strings[runner]
        for name, value in outputs.items():
            array = to_bytes_array(np.asarray(value)) if name in strings else value
            tensors.append((name, np.ascontiguousarray(array) if array.dtype.kind != "O" else array))
        sizes = [tensor_nbytes(a) for _, a in tensors]
        offset, room = reserved
        fds: list[int] = []
        if sum(align(s) for s in sizes) <= room:
            assert self.arena is not None
            space, buf = self.arena, 0
        else:
            # Outputs larger than the worker could foresee (BYTES, dynamic shapes): a region of their own.
            try:
                region = Region.create(f"runtime-out-{self.pid}", sum(align(s) for s in sizes))
            except OSError as ex:  # out of descriptors or memory: this request fails, retryable, the engine serves on
                raise ServiceUnavailable(
                    f"the model engine cannot allocate shared memory for the outputs ({ex.strerror}); retry shortly"
                ) from None
            space, buf, offset = region.view(0, region.size), 1, 0
            fds.append(region.fd)
        metas = write_tensors(space, offset, [(n, a, s) for (n, a), s in zip(tensors, sizes, strict=True)], buf)
        self.channel.send(rid, {"op": "result", "outputs": metas}, fds, give=True)


async def serve(
    address: str,
    model_dir: str,
    drain_seconds: float,
    stop: asyncio.Event | None = None,
    triton_url: str = "",
    triton_wait_s: float = 120.0,
) -> None:
    """Load every model, then serve workers at ``address`` until SIGTERM (or ``stop``).

    With ``triton_url`` the models are Triton's: the engine waits for them and is Triton's client.
    """
    from runtime.serving import platforms
    from runtime.settings import Settings

    settings = Settings.from_env()  # the master's, exported for its children
    tracing.setup(settings)
    runners: list[ModelRunner]
    if triton_url:
        from runtime.serving.engine.triton import load_triton_runners

        timeout_s = settings.timeout_ms / 1000
        runners = await load_triton_runners(triton_url, model_dir, triton_wait_s, timeout_s, record_workers)
    else:
        platforms.configure(settings)
        runners = await asyncio.to_thread(
            load_runners, model_dir, 1, record_workers, ENGINE_INLINE_BELOW_S, True, settings.instance_processes
        )
    for runner in runners:
        runner.start()
    engine = Engine(runners)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_address(address))
    server.listen(256)
    server.setblocking(False)
    logger.info("Model engine ready: %d model version(s) at %s", len(runners), address)

    async def accept() -> None:
        while True:
            sock, _ = await loop.sock_accept(server)
            engine.connections.add(WorkerConnection(engine, sock))

    async def flush_metrics() -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            metrics.flush_model_metrics()

    acceptor = loop.create_task(accept())
    flusher = loop.create_task(flush_metrics())
    await stop.wait()
    acceptor.cancel()
    flusher.cancel()
    server.close()
    logger.info("Model engine stopping: draining %d request(s) in flight", engine.in_flight())
    deadline = loop.time() + drain_seconds
    while engine.in_flight() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    for connection in list(engine.connections):
        connection.channel.close()
    await asyncio.gather(*(r.stop() for r in runners))
    metrics.flush_model_metrics()
    tracing.shutdown()  # flushes the spans still queued for export
    logger.info("Model engine stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runtime-engine")
    parser.add_argument("--address", required=True, help="@abstract-name or a socket path")
    parser.add_argument("--model-dir", default="", help="the repository (with --triton-url: its model names)")
    parser.add_argument("--triton-url", default="", help="host:port: be the client of this Triton server")
    parser.add_argument("--triton-wait-s", type=float, default=120.0, help="how long to wait for Triton")
    parser.add_argument("--drain-seconds", type=float, default=30.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    args = parser.parse_args(argv)
    name_and_tie_to_parent(PROCESS_NAME, signal.SIGTERM)  # the master's death drains and stops the engine
    fixed_mmap_threshold()  # before any thread starts
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # Ctrl-C reaches the whole process group; the master decides when the engine stops (after the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from runtime.logs import configure

    configure(args.log_level, args.log_format)
    LOGGING.update(level=args.log_level, format=args.log_format)
    metrics.defer_model_metrics()  # written every METRICS_FLUSH_S and before a worker answers a scrape
    try:
        import uvloop

        uvloop.run(
            serve(
                args.address,
                args.model_dir,
                args.drain_seconds,
                triton_url=args.triton_url,
                triton_wait_s=args.triton_wait_s,
            )
        )
    except StartupError as ex:
        logger.error("Model engine cannot start: %s", ex)
        return STARTUP_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
