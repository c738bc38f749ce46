"""``runtime.infer``: the blocking call an Azure ML style run() makes to the backend.

Calls from many threads join the same batches: each call is handed to the
worker's event loop, where the backend's batcher collects them.

Each app binds its own :class:`Binding` at start-up; code running for that app
(its init, run() and hooks, which inherit the context) reaches that app, so two
apps can live in one process. A thread the script starts itself does not
inherit the context: it reaches the app when only one is bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from runtime.dataplane import DataPlane


@dataclass(frozen=True)
class Binding:
    loop: asyncio.AbstractEventLoop
    plane: DataPlane
    loop_thread: int


_current: contextvars.ContextVar[Binding | None] = contextvars.ContextVar("runtime_app", default=None)
_bound: list[Binding] = []


def bind(loop: asyncio.AbstractEventLoop, plane: DataPlane) -> Binding:
    """Called by an app at start-up, before ``init`` hooks run; current in the calling context."""
    binding = Binding(loop, plane, threading.get_ident())
    _bound.append(binding)
    _current.set(binding)
    return binding


def use(binding: Binding) -> None:
    """Make ``binding`` current for the calling context (the app does this for every request)."""
    _current.set(binding)


def unbind(binding: Binding) -> None:
    if binding in _bound:
        _bound.remove(binding)
    if _current.get() is binding:
        _current.set(None)


def _binding(name: str) -> Binding:
    binding = _current.get()
    if binding is not None:
        return binding
    if len(_bound) == 1:
        return _bound[0]
    if not _bound:
        raise RuntimeError(f"runtime.{name}() works inside a `runtime serve` worker (after start-up)")
    raise RuntimeError(f"runtime.{name}() was called outside any app's requests, and {len(_bound)} apps are bound")


def infer(
    model: str,
    inputs: Mapping[str, Any],
    version: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``inputs`` (batch first) and return its outputs by name. Thread-safe.

    Raises :class:`runtime.errors.BadRequest` for inputs that do not fit the
    model; from run(), that becomes a 400 for the client.
    """
    binding = _binding("infer")
    if threading.get_ident() == binding.loop_thread:
        raise RuntimeError("runtime.infer() blocks; in async code use `await runtime.infer_async(...)`")
    call = binding.plane.infer(model, inputs, parameters, version)
    future = asyncio.run_coroutine_threadsafe(call, binding.loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:  # TimeoutError from Python 3.11
        future.cancel()  # the caller stopped waiting: the backend need not run it (nor hold its batch slot)
        raise


async def infer_async(
    model: str,
    inputs: Mapping[str, Any],
    version: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The awaitable form of :func:`infer`, for async run() and hooks, and for an event loop of the script's own
    (``asyncio.run`` in a sync run()): the call runs on the app's loop, where the backend batches, either way."""
    binding = _binding("infer_async")
    call = binding.plane.infer(model, inputs, parameters, version)
    if asyncio.get_running_loop() is binding.loop:
        return await call
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, binding.loop))
