"""The order of one ``/score`` request, in one place.

    1. preprocess(request)          first result wins (built-in default: trylast)
    2. run(payload)                 when score.py defines run() (Azure ML style)
       or infer(model, inputs)      otherwise (hook style): the data plane, batched by the backend
    3. postprocess(request, outputs) first result wins (built-in default: trylast)

Hooks are called through :class:`runtime.manager.PluginManager`, which decides where they run; run()
executes in the worker's thread pool (or on the loop when async). The whole sequence is bounded by
the scoring timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import tracing
from runtime.azureml.entry import EntryScript
from runtime.azureml.request import ScoringRequest
from runtime.dataplane import DEADLINE, DataPlane
from runtime.errors import BadRequest, RunFailed, ScoringTimeout, ServingError
from runtime.executor import Executor
from runtime.manager import PluginManager


@dataclass
class InferRequest:
    """What a hook-style preprocess returns when it names the model itself."""

    model: str
    inputs: Mapping[str, np.ndarray]
    parameters: Mapping[str, Any] | None = None


class Pipeline:
    def __init__(
        self,
        pm: PluginManager,
        plane: DataPlane,
        entry: EntryScript | None,
        executor: Executor,
        timeout_ms: int,
        default_model: str | None = None,
    ) -> None:
        self.pm = pm
        self.plane = plane
        self.entry = entry
        self.executor = executor
        self.timeout_ms = timeout_ms
        self.default_model = default_model

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
        with tracing.span("preprocess"):
            payload = await self.pm.preprocess(request)
        start = time.perf_counter()
        try:
            if self.entry is not None and self.entry.run is not None:
                with tracing.span("run"):
                    outputs = await self._run(payload, request)
            else:
                outputs = await self.infer(payload)
        except (ServingError, asyncio.CancelledError):
            raise
        except (Exception, SystemExit) as ex:  # sys.exit() in run() fails its request, not the worker
            raise RunFailed(ex) from ex
        elapsed_ms = (time.perf_counter() - start) * 1000
        with tracing.span("postprocess"):
            response = await self.pm.postprocess(request, outputs)
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
        """Hand model inputs to the data plane."""
        if isinstance(payload, InferRequest):
            model, inputs, parameters = payload.model, payload.inputs, payload.parameters
        elif isinstance(payload, Mapping):
            if self.default_model is None:
                raise BadRequest(
                    "preprocess() returned tensors but no model is named: return "
                    "runtime.InferRequest(model, inputs), or serve a repository with exactly one model."
                )
            model, inputs, parameters = self.default_model, payload, None
        else:
            raise TypeError(
                f"preprocess() must return a mapping of input name to array or a runtime.InferRequest, "
                f"got {type(payload).__name__}"
            )
        return await self.plane.infer(model, inputs, parameters)
