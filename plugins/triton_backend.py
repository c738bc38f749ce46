"""The Triton backend: ``infer`` through tritonclient's aio HTTP client to a Triton server.

Triton batches across all Gunicorn workers. With ``--triton-client engine`` the workers hand
their tensors to the model engine instead (shared memory), which batches across workers and sends
Triton one request per batch (:mod:`runtime.serving.engine.triton`). Tensors travel as binary data;
names, datatypes and shapes come from the model's config on the server, so
inputs are checked here before they cross the wire. If Triton is down, the
caller gets a 503 naming Triton and its URL; the client reconnects by itself
when Triton is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import numpy as np
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from runtime import metrics
from runtime.context import InitContext
from runtime.dataplane import CLASSIFICATION, DEADLINE, OUTPUTS, schedule_parameters
from runtime.errors import UnknownModel
from runtime.hookspecs import hookimpl
from runtime.metrics import failure_reason
from runtime.serving.engine.client import EngineClient, config_from_engine
from runtime.serving.repository import ModelConfig, looks_like_repository, triton_model_names
from runtime.serving.runner import Schedule
from runtime.serving.tensors import cast
from runtime.serving.tritoncall import CONNECTION_ERRORS, TritonServer, infer_inputs, read_outputs, triton_error
from runtime.serving.tritonstats import prometheus_text

__all__ = ["TritonBackend", "triton_error"]

logger = logging.getLogger("runtime.triton")

STATS_TIMEOUT_S = 2.0
ENGINE_CONNECT_TIMEOUT_S = 60.0


class TritonBackend:
    name = "triton"

    def __init__(self) -> None:
        self.url = ""
        self.server: TritonServer | None = None
        self.configs: dict[str, ModelConfig] = {}
        # --triton-client engine: infer goes to the model engine, which batches across workers and calls Triton.
        self.engine: EngineClient | None = None

    # -- start-up ---------------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    async def init(self, context: InitContext) -> None:
        settings = context.settings
        self.url = settings.triton_url
        self.server = TritonServer(
            self.url, conn_limit=max(settings.concurrency, 8), conn_timeout=settings.timeout_ms / 1000
        )
        if settings.engine_address:
            # The engine waited for Triton and its models before it listened; their configs come from it.
            self.engine = EngineClient(settings.engine_address, settings.engine_arena_mb << 20)
            await self.engine.connect(ENGINE_CONNECT_TIMEOUT_S)
            self.configs = {model["name"]: config_from_engine(model) for model in self.engine.models}
        else:
            self.configs = await self.server.wait_for_models(self._expected_models(context), settings.triton_wait_s)
        via = " through the model engine" if self.engine is not None else ""
        logger.info("Triton at %s serves %s%s", self.url, ", ".join(sorted(self.configs)) or "no models", via)
        metrics.add_scrape_source(self._statistics)

    async def _statistics(self) -> bytes:
        """Triton's batch statistics for /metrics (nothing when Triton cannot be reached right now)."""
        assert self.server is not None
        try:
            stats = await asyncio.wait_for(self.server.client.get_inference_statistics(), STATS_TIMEOUT_S)
        except (InferenceServerException, *CONNECTION_ERRORS) as ex:
            logger.debug("Triton statistics unavailable: %s", ex)
            return b""
        return prometheus_text(stats)

    def _expected_models(self, context: InitContext) -> list[str] | None:
        """The models score.py relies on: the repository's, when --model-dir names one (else Triton's index)."""
        model_dir = context.settings.model_dir
        if model_dir and looks_like_repository(model_dir):
            return triton_model_names(model_dir)
        return None

    async def _server_ready(self) -> bool:
        assert self.server is not None
        if self.engine is not None and not self.engine.connected:
            return False
        return await self.server.server_reason() is None

    async def _model_ready(self, name: str, version: str = "") -> bool:
        assert self.server is not None
        return await self.server.model_reason(name, version) is None

    # -- serving ----------------------------------------------------------------------------------

    async def _infer(
        self, config: ModelConfig, version: str | None, inputs: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        # Checked by the data plane; Triton applies the config's reshape itself.
        arrays = {
            spec.name: cast(config, spec, inputs[spec.name], reshape=False)
            for spec in config.inputs
            if spec.name in inputs  # an optional input may be left out
        }
        counts: Mapping[str, int] = parameters.get(CLASSIFICATION) or {}
        if self.engine is not None and not counts:
            # Classification (class_count) stays with Triton, which holds the labels: straight there.
            return await self._infer_in_engine(config, version, arrays, parameters)
        assert self.server is not None
        started = time.perf_counter()
        names: list[str] = parameters.get(OUTPUTS) or [t.name for t in config.outputs]
        outputs = [
            triton_http.InferRequestedOutput(name, binary_data=True, class_count=counts.get(name, 0)) for name in names
        ]
        priority, timeout_us = schedule_parameters(parameters)
        error: BaseException | None = None
        try:
            result = await self.server.infer(
                config.name,
                version or "",
                infer_inputs(config, arrays),
                outputs,
                request_id=str(parameters.get("request_id") or ""),
                priority=priority,
                timeout_us=timeout_us,
                # The caller's deadline travels to Triton as the request timeout (the scoring timeout around
                # /score bounds our own wait).
                deadline=DEADLINE.get(),
            )
            return read_outputs(result, names, self.url, config.name)
        except BaseException as ex:
            error = ex
            raise
        finally:
            seconds = time.perf_counter() - started
            reason = failure_reason(error)
            metrics.record_request(config.name, version or config.latest_version, seconds, error is None, reason)

    async def _infer_in_engine(
        self, config: ModelConfig, version: str | None, arrays: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Through the engine (which records the model metrics); every output, as Triton answers them."""
        assert self.engine is not None
        version = version or config.latest_version
        if version not in config.versions:
            raise UnknownModel(config.name, version)
        priority, timeout_us = schedule_parameters(parameters)
        schedule = Schedule(priority, timeout_us, DEADLINE.get())
        return await self.engine.infer(config, version, arrays, schedule, parameters.get("request_id"))

    @hookimpl
    def infer(
        self, model: str, version: str | None, inputs: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> Awaitable[dict[str, np.ndarray]] | None:
        config = self.configs.get(model)
        if config is None:
            return None
        return self._infer(config, version, inputs, parameters)

    @hookimpl
    def model_index(self) -> list[dict[str, str]]:
        return [
            {"name": n, "version": v, "state": "READY"} for n, c in sorted(self.configs.items()) for v in c.versions
        ]

    @hookimpl
    def model_config(self, model: str, version: str | None) -> ModelConfig | None:
        return self.configs.get(model)

    @hookimpl
    def model_ready(self, model: str, version: str | None) -> Awaitable[bool] | None:
        if model not in self.configs:
            return None
        return self._model_ready(model, version or "")

    @hookimpl
    def server_ready(self) -> Awaitable[bool]:
        return self._server_ready()

    @hookimpl
    async def shutdown(self) -> None:
        metrics.remove_scrape_source(self._statistics)
        if self.engine is not None:
            await self.engine.close()
        if self.server is not None:
            await self.server.close()
