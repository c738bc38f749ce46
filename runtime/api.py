"""``runtime.infer``: the blocking call an Azure ML style run() makes to the backend.

Calls from many threads join the same batches: each call is handed to the
worker's event loop, where the backend's batcher collects them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pluggy

from runtime import pipeline

_bound: tuple[asyncio.AbstractEventLoop, pluggy.PluginManager, int] | None = None


def bind(loop: asyncio.AbstractEventLoop, pm: pluggy.PluginManager) -> None:
    """Called by the worker at start-up, before ``init`` hooks run."""
    global _bound
    _bound = (loop, pm, threading.get_ident())


def unbind() -> None:
    global _bound
    _bound = None


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
    if _bound is None:
        raise RuntimeError("runtime.infer() works inside a `runtime serve` worker (after start-up)")
    loop, pm, loop_thread = _bound
    if threading.get_ident() == loop_thread:
        raise RuntimeError("runtime.infer() blocks; in async code use `await runtime.infer_async(...)`")
    future = asyncio.run_coroutine_threadsafe(pipeline.infer(pm, model, inputs, parameters, version), loop)
    return future.result(timeout)


async def infer_async(
    model: str,
    inputs: Mapping[str, Any],
    version: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The awaitable form of :func:`infer`, for async run() and hooks."""
    if _bound is None:
        raise RuntimeError("runtime.infer_async() works inside a `runtime serve` worker (after start-up)")
    return await pipeline.infer(_bound[1], model, inputs, parameters, version)
