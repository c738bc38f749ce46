"""Finding a server's model engine and its shared memory from /proc, and keeping a server busy."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton_http

from runtime.serving.engine.client import EngineClient
from runtime.serving.engine.process import serve
from runtime.serving.repository import ModelConfig
from runtime.serving.tritonserver import SHM_PREFIX
from tests.support.processes import alive, comm, descendants

ENGINE_COMM = "runtime-engine"
INSTANCE_COMM = "runtime-inst"  # the engine's instance processes (RUNTIME_INSTANCE_PROCESSES)


def engine_pids(master: int) -> set[int]:
    return {p for p in alive(descendants(master)) if comm(p) == ENGINE_COMM}


def instance_pids(master: int) -> set[int]:
    return {p for p in alive(descendants(master)) if comm(p) == INSTANCE_COMM}


def worker_pids(master: int) -> set[int]:
    return {p for p in alive(descendants(master)) if comm(p) not in (ENGINE_COMM, INSTANCE_COMM)}


def wait_for(check: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def one_engine(master: int, timeout: float = 60) -> int:
    wait_for(lambda: len(engine_pids(master)) == 1, timeout, "one runtime-engine process")
    return engine_pids(master).pop()


def shm_mappings(pid: int) -> list[str]:
    """The runtime's shared-memory mappings in a process (memfd arenas and regions)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return sorted({line.split(maxsplit=5)[-1] for line in maps.splitlines() if "memfd:runtime-" in line})


# The python-backend regions of Triton servers that other tests or jobs may run meanwhile: a managed server's
# (named for its runtime) and any other's (Triton's default name).
TRITON_SHM = (SHM_PREFIX, "triton_python_backend_shm")


def dev_shm() -> set[str]:
    """/dev/shm, less the regions of Triton servers (:data:`TRITON_SHM`)."""
    return {p.name for p in Path("/dev/shm").iterdir() if not p.name.startswith(TRITON_SHM)}


async def load(
    url: str, body: Callable[[int], dict[str, object]], seconds: float, clients: int, during: Callable[[], None]
) -> list[httpx.Response | Exception]:
    """``clients`` clients posting to ``url`` for ``seconds``; ``during()`` runs (in a thread) a third of the way in."""
    results: list[httpx.Response | Exception] = []
    stop = time.monotonic() + seconds

    async def client(n: int, http: httpx.AsyncClient) -> None:
        i = 0
        while time.monotonic() < stop:
            try:
                results.append(await http.post(url, json=body(n * 100_000 + i)))
            except httpx.HTTPError as ex:
                results.append(ex)
            i += 1

    async def trigger() -> None:
        await asyncio.sleep(seconds / 3)
        await asyncio.to_thread(during)

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(trigger(), *(client(n, http) for n in range(clients)))
    return results


def v2_inputs(inputs: Mapping[str, np.ndarray]) -> list[triton_http.InferInput]:
    """tritonclient inputs carrying ``inputs`` as binary tensors (object arrays as BYTES)."""
    requested = []
    for name, value in inputs.items():
        datatype = "BYTES" if value.dtype == object else triton_http.np_to_triton_dtype(value.dtype)
        tensor = triton_http.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value, binary_data=True)
        requested.append(tensor)
    return requested


async def engine_on_this_loop(model_dir: Path) -> tuple[asyncio.Task[None], asyncio.Event, EngineClient]:
    """An engine serving ``model_dir`` on the running event loop, a client (1 MiB arena) connected to it,
    and the event that stops the engine."""
    address = f"@runtime-test-{secrets.token_hex(4)}"
    stop = asyncio.Event()
    engine = asyncio.get_running_loop().create_task(serve(address, str(model_dir), 5, stop))
    client = EngineClient(address, 1 << 20)
    await client.connect(60)
    return engine, stop, client


async def shut_down(engine: asyncio.Task[None], stop: asyncio.Event, client: EngineClient) -> None:
    """Stop an :func:`engine_on_this_loop` and close its client."""
    stop.set()
    await engine
    await client.close()


def _no_room(_: int) -> int | None:
    return None


def fill_arena(client: EngineClient, full: bool) -> None:
    """Have ``client`` find its arena full (each request's inputs then go in a region of their own), or not."""
    if full:
        setattr(client, "_alloc", _no_room)  # noqa: B010 (a method replaced on the instance)
    else:
        vars(client).pop("_alloc", None)


def open_descriptors() -> int:
    """This process's open descriptors, less those open on /proc: another thread (the server counter of
    tests/support/servercount.py) reads /proc at any moment, and the engine client never opens a file there."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        # Closed since the listing: the listing's own descriptor, among others.
        with contextlib.suppress(FileNotFoundError):
            count += not os.readlink(f"/proc/self/fd/{fd}").startswith("/proc")  # /proc itself too
    return count


async def arena_baseline(
    client: EngineClient, config: ModelConfig, inputs: Mapping[str, np.ndarray]
) -> tuple[int, int]:
    """The arena's free bytes and this process's open descriptors once a request has run each way (in the arena, in
    a region of its own), so that what is opened once and kept is open."""
    for full in (False, True):
        fill_arena(client, full)
        await client.infer(config, "1", inputs)
    fill_arena(client, False)
    gc.collect()
    return client._allocator.free_bytes, open_descriptors()


def assert_released(client: EngineClient, baseline: tuple[int, int]) -> None:
    """Nothing of the requests since ``baseline`` (:func:`arena_baseline`) is held: no request waits for an answer,
    the arena is whole and no descriptor is left open."""
    gc.collect()
    assert client._requests == {}
    assert (client._allocator.free_bytes, open_descriptors()) == baseline
