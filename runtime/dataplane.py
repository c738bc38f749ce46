"""The data plane: every model call (hook-style /score, /v2 infer, ``runtime.infer()``) goes through here.

One path for all three: resolve the model's config once, check the inputs once (one set of
messages, nothing converted), hand the requested outputs and classification down to the backend
through ``parameters``, and give back exactly the outputs asked for. The HTTP modules only decode,
call and encode.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runtime import logs, tracing
from runtime.errors import BadRequest, UnknownModel, UnsupportedDatatype
from runtime.manager import PluginManager
from runtime.serving.repository import ModelConfig
from runtime.serving.tensors import classify, validate_inputs

# parameters keys a backend may read: the output names wanted (default: every configured output) and
# the classification extension, {output name: class count}. A backend that classifies itself (Triton)
# returns strings for those outputs; for the others it is done here.
OUTPUTS = "runtime.outputs"
CLASSIFICATION = "runtime.classification"
# The request being served (set by the request-id middleware; v2 infer may name its own): thread-pool calls
# inherit it, so runtime.infer() from run() propagates it.
REQUEST_ID = logs.REQUEST_ID
# When the caller stops waiting (time.monotonic() seconds): the scoring timeout as a deadline that the
# queue, the batch and the call to Triton honour. Thread-pool calls inherit it, like REQUEST_ID.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
UINT64_MAX = 2**64 - 1


def schedule_parameters(parameters: Mapping[str, Any]) -> tuple[int, int]:
    """``priority`` and ``timeout`` (microseconds) of Triton's schedule-policy extension, checked."""
    values = []
    for name in ("priority", "timeout"):
        value = parameters.get(name, 0)
        # Triton's uint64: a larger value could not cross to the model engine (or Triton) at all.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
            raise BadRequest(f"parameter '{name}' must be an integer from 0 to {UINT64_MAX}, got {value!r}")
        values.append(value)
    return values[0], values[1]


class DataPlane:
    def __init__(self, pm: PluginManager) -> None:
        self.pm = pm

    def lookup(self, model: str, version: str | None) -> ModelConfig | None:
        """The config of ``model``; None when no backend describes it; 404 for a version it lacks."""
        config = self.pm.model_config(model, version)
        if config is not None and version is not None and version not in config.versions:
            raise UnknownModel(model, version)
        return config

    def resolve(self, model: str, version: str | None) -> ModelConfig:
        """The config of ``model``, or a 404 in Triton's words."""
        config = self.lookup(model, version)
        if config is None:
            raise UnknownModel(model)
        return config

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        parameters: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` by name: ``runtime.infer()`` and hook-style /score."""
        config = self.lookup(model, version)
        if config is None:
            # A plugin that serves infer without describing its model checks its own inputs.
            with tracing.span(f"infer {model}", {"model": model}):
                return await self.pm.infer(model, version, inputs, _with_request_id(parameters))
        return await self.run(config, version, inputs, parameters)

    async def run(
        self,
        config: ModelConfig,
        version: str | None,
        inputs: Mapping[str, Any],
        parameters: Mapping[str, Any] | None = None,
        exact_datatypes: bool = False,
    ) -> dict[str, np.ndarray]:
        """Check ``inputs`` against ``config``, run the model, return the wanted outputs (classified if asked)."""
        if config.uncarried is not None:
            raise UnsupportedDatatype(config.name, *config.uncarried)
        validate_inputs(config, inputs, exact_datatypes)
        params = _with_request_id(parameters)
        requested: Sequence[str] | None = params.get(OUTPUTS)
        counts: Mapping[str, int] = params.get(CLASSIFICATION) or {}
        for name in [*(requested or ()), *counts]:
            if config.output(name) is None:
                raise BadRequest(f"unexpected inference output '{name}' for model '{config.name}'")
        with tracing.span(f"infer {config.name}", {"model": config.name}):
            outputs = await self.pm.infer(config.name, version, inputs, params)
        wanted = requested or [t.name for t in config.outputs]
        if not counts:
            return {name: outputs[name] for name in wanted}
        selected: dict[str, np.ndarray] = {}
        for name in wanted:
            value = outputs[name]
            count = counts.get(name, 0)
            if count and value.dtype.kind != "O":
                spec = config.output(name)
                assert spec is not None
                value = classify(value, count, spec.labels, config.max_batch_size > 0)
            selected[name] = value
        return selected


def _with_request_id(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    params = dict(parameters or {})
    request_id = REQUEST_ID.get()
    if request_id is not None:
        params.setdefault("request_id", request_id)
    return params
