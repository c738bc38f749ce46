"""The order of one ``/score`` request, in one place.

    1. preprocess(request)          first result wins (built-in default: trylast)
    2. run(payload)                 when score.py defines run() (Azure ML style)
       or infer(model, inputs)      otherwise (hook style), batched by the backend
    3. postprocess(request, outputs) first result wins (built-in default: trylast)

Sync hooks and run() execute in the worker's thread pool; async ones are
awaited on the event loop. The whole sequence is bounded by the scoring
timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pluggy

from runtime import tracing
from runtime.azureml.entry import EntryScript
from runtime.azureml.request import ScoringRequest
from runtime.errors import BadRequest, ScoringTimeout, ServingError
from runtime.executor import Executor
from runtime.logs import REQUEST_ID as REQUEST_ID  # re-exported: the name other modules import

logger = logging.getLogger("runtime.pipeline")

# parameters key for the classification extension: {output name: class count}.
CLASSIFICATION = "runtime.classification"

INLINE_MARK = "runtime_inline"
# When the caller stops waiting (time.monotonic() seconds): the scoring timeout as a deadline that the
# queue, the batch and the call to Triton honour. Thread-pool calls inherit it, like REQUEST_ID.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def schedule_parameters(parameters: Mapping[str, Any]) -> tuple[int, int]:
    """``priority`` and ``timeout`` (microseconds) of Triton's schedule-policy extension, checked."""
    values = []
    for name in ("priority", "timeout"):
        value = parameters.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"parameter '{name}' must be a non-negative integer, got {value!r}")
        values.append(value)
    return values[0], values[1]


def inline(func: Any) -> Any:
    """Mark a sync hook as cheap and non-blocking, so it runs on the event loop without a thread hop.

    For hooks that take microseconds (reading a small JSON body, shaping a small answer). Never
    for anything that blocks or computes for long: it would stall every request of the worker.
    A hook runs inline only when every implementation of it is inline (or async).
    """
    setattr(func, INLINE_MARK, True)
    return func


@dataclass
class InferRequest:
    """What a hook-style preprocess returns when it names the model itself."""

    model: str
    inputs: Mapping[str, np.ndarray]
    parameters: Mapping[str, Any] | None = None


class RunFailed(Exception):
    """run() or a hook raised something that is not a ServingError; carries the original."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class Pipeline:
    def __init__(
        self,
        pm: pluggy.PluginManager,
        entry: EntryScript | None,
        executor: Executor,
        timeout_ms: int,
        default_model: str | None = None,
    ) -> None:
        self.pm = pm
        self.entry = entry
        self.executor = executor
        self.timeout_ms = timeout_ms
        self.default_model = default_model
        self._inline = {name: self._all_inline(name) for name in ("preprocess", "postprocess")}

    def _all_inline(self, name: str) -> bool:
        impls = getattr(self.pm.hook, name).get_hookimpls()
        return all(getattr(i.function, INLINE_MARK, False) or inspect.iscoroutinefunction(i.function) for i in impls)

    async def _call_first(self, name: str, **kwargs: Any) -> Any:
        hook = getattr(self.pm.hook, name)
        result = hook(**kwargs) if self._inline[name] else await self.executor.run(hook, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def score(self, request: ScoringRequest) -> tuple[Any, float]:
        """Run the pipeline; return the response object and run()/infer's time in ms."""
        DEADLINE.set(time.monotonic() + self.timeout_ms / 1000)
        try:
            if sys.version_info >= (3, 11):
                # No extra task per request, unlike wait_for.
                async with asyncio.timeout(self.timeout_ms / 1000):
                    return await self._score(request)
            return await asyncio.wait_for(self._score(request), self.timeout_ms / 1000)
        except (TimeoutError, asyncio.TimeoutError):  # distinct types before Python 3.11
            raise ScoringTimeout(self.timeout_ms) from None

    async def _score(self, request: ScoringRequest) -> tuple[Any, float]:
        try:
            with tracing.span("preprocess"):
                payload = await self._call_first("preprocess", request=request)
            start = time.perf_counter()
            if self.entry is not None and self.entry.run is not None:
                with tracing.span("run"):
                    outputs = await self._run(payload, request)
            else:
                outputs = await self.infer(payload)
            elapsed_ms = (time.perf_counter() - start) * 1000
            with tracing.span("postprocess"):
                response = await self._call_first("postprocess", request=request, outputs=outputs)
        except (ServingError, asyncio.CancelledError):
            raise
        except Exception as ex:
            raise RunFailed(ex) from ex
        return response, elapsed_ms

    async def _run(self, payload: Any, request: ScoringRequest) -> Any:
        assert self.entry is not None
        headers = request.header_dict() if self.entry.wants_headers else {}
        if self.entry.run_is_async:
            return await self.entry.call_run(payload, headers)
        result = await self.executor.run(self.entry.call_run, payload, headers)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def infer(self, payload: Any) -> dict[str, np.ndarray]:
        """Hand model inputs to the backend (the ``infer`` hook)."""
        if isinstance(payload, InferRequest):
            model, inputs, parameters = payload.model, payload.inputs, payload.parameters or {}
        elif isinstance(payload, Mapping):
            if self.default_model is None:
                raise BadRequest(
                    "preprocess() returned tensors but no model is named: return "
                    "runtime.InferRequest(model, inputs), or serve a repository with exactly one model."
                )
            model, inputs, parameters = self.default_model, payload, {}
        else:
            raise TypeError(
                f"preprocess() must return a mapping of input name to array or a runtime.InferRequest, "
                f"got {type(payload).__name__}"
            )
        return await infer(self.pm, model, inputs, parameters)


async def infer(
    pm: pluggy.PluginManager,
    model: str,
    inputs: Mapping[str, Any],
    parameters: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> dict[str, np.ndarray]:
    """Call the ``infer`` hook: the backend that serves ``model`` runs it (batched where it batches)."""
    parameters = dict(parameters or {})
    request_id = REQUEST_ID.get()
    if request_id is not None:
        parameters.setdefault("request_id", request_id)
    with tracing.span(f"infer {model}", {"model": model}):
        pending = pm.hook.infer(model=model, version=version, inputs=inputs, parameters=parameters)
        if pending is None:
            from runtime.errors import NotFound

            raise NotFound(f"No backend serves a model named {model!r}.")
        result: dict[str, np.ndarray] = await pending
    return result
