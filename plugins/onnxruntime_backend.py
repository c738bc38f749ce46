"""The embedded backend: every model of the repository, batched, served from the model engine.

``runtime serve --model-dir DIR`` starts one engine process (:mod:`runtime.serving.engine`) that
loads ``DIR/triton/<model>/<version>/model.onnx`` (or ``DIR/<model>/...``) once for the whole
server; this plugin, in every worker, checks the inputs against the model's config and hands them
to the engine through shared memory. Without an engine (``--engine worker``, or an app built
in-process) each worker loads its own copy of every model, as before the engine existed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

import numpy as np

from runtime import metrics
from runtime.context import InitContext
from runtime.dataplane import DEADLINE, OUTPUTS, schedule_parameters
from runtime.errors import ServingError, UnknownModel
from runtime.hookspecs import hookimpl
from runtime.metrics import failure_reason
from runtime.serving import platforms
from runtime.serving.engine.client import EngineClient, config_from_engine
from runtime.serving.repository import ModelConfig, looks_like_repository
from runtime.serving.runner import NO_SCHEDULE, ModelRunner, Schedule, load_runners
from runtime.serving.tensors import cast, shape_outputs

logger = logging.getLogger("runtime.onnxruntime")

ENGINE_CONNECT_TIMEOUT_S = 60.0


class OnnxRuntimeBackend:
    """The plugin object; ``runtime serve`` registers one per worker."""

    name = "onnxruntime"

    def __init__(self) -> None:
        self.configs: dict[str, ModelConfig] = {}
        self.runners: dict[tuple[str, str], ModelRunner] = {}
        self.engine: EngineClient | None = None
        self.ready = False

    def _config(self, model: str, version: str | None) -> tuple[ModelConfig, str] | None:
        config = self.configs.get(model)
        if config is None:
            return None
        version = version or config.latest_version
        if version not in config.versions:
            raise UnknownModel(model, version)
        return config, version

    @hookimpl(tryfirst=True)
    async def init(self, context: InitContext) -> None:
        address = context.settings.engine_address
        model_dir = context.settings.model_dir
        if address:
            self.engine = EngineClient(address, context.settings.engine_arena_mb << 20)
            await self.engine.connect(ENGINE_CONNECT_TIMEOUT_S)
            for model in self.engine.models:
                self.configs[model["name"]] = config_from_engine(model)
        elif model_dir and looks_like_repository(model_dir):
            platforms.configure(context.settings)
            runners = await asyncio.to_thread(load_runners, model_dir, context.settings.workers)
            for runner in runners:
                runner.start()
                self.runners[(runner.config.name, runner.version)] = runner
                self.configs[runner.config.name] = runner.config
        else:
            where = f"in {model_dir}" if model_dir else "(no --model-dir)"
            logger.info("No model repository %s: the embedded backend serves no models", where)
        self.ready = True

    @hookimpl
    def infer(
        self, model: str, version: str | None, inputs: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> Awaitable[dict[str, np.ndarray]] | None:
        found = self._config(model, version)
        return None if found is None else self._infer(*found, inputs, parameters)

    async def _infer(
        self, config: ModelConfig, version: str, inputs: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        try:
            # The data plane checked the inputs; converted once, to the model's dtypes and shapes.
            checked = {
                spec.name: cast(config, spec, inputs[spec.name], reshape=True)
                for spec in config.inputs
                if spec.name in inputs  # an optional input may be left out
            }
            priority, timeout_us = schedule_parameters(parameters)
        except ServingError as ex:
            metrics.record_request(config.name, version, 0.0, False, failure_reason(ex))
            raise
        deadline = DEADLINE.get()
        schedule = NO_SCHEDULE  # a frozen dataclass costs 1.5 µs to build; most requests ask for nothing
        if priority or timeout_us or deadline is not None:
            schedule = Schedule(priority, timeout_us, deadline)
        if self.engine is not None:
            outputs = await self.engine.infer(config, version, checked, schedule, parameters.get("request_id"))
        else:
            outputs = await self.runners[(config.name, version)].submit(checked, schedule)
        return shape_outputs(config, outputs, parameters.get(OUTPUTS))

    @hookimpl
    def model_index(self) -> list[dict[str, str]]:
        return [
            {"name": name, "version": v, "state": "READY"}
            for name, config in sorted(self.configs.items())
            for v in config.versions
        ]

    @hookimpl
    def model_config(self, model: str, version: str | None) -> ModelConfig | None:
        found = self._config(model, version)
        return None if found is None else found[0]

    @hookimpl
    def model_ready(self, model: str, version: str | None) -> bool | None:
        found = self._config(model, version)
        return None if found is None else self.ready

    @hookimpl
    def server_ready(self) -> bool:
        # Not ready while the engine restarts, so that a load balancer holds traffic back.
        return self.ready and (self.engine is None or self.engine.connected)

    @hookimpl
    async def shutdown(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
