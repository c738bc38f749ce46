"""The Triton backend: ``infer`` through tritonclient's aio HTTP client to a Triton server.

Triton batches across all Gunicorn workers. Tensors travel as binary data;
names, datatypes and shapes come from the model's config on the server, so
inputs are checked here before they cross the wire. If Triton is down, the
caller gets a 503 naming Triton and its URL; the client reconnects by itself
when Triton is back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import numpy as np
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from runtime import metrics, tracing
from runtime.context import InitContext
from runtime.dataplane import CLASSIFICATION, DEADLINE, OUTPUTS, schedule_parameters
from runtime.errors import BadRequest, NotFound, Overloaded, ServiceUnavailable, ServingError, StartupError
from runtime.hookspecs import hookimpl
from runtime.metrics import failure_reason
from runtime.serving.repository import ModelConfig, load_repository, looks_like_repository, model_config_from_proto
from runtime.serving.tensors import cast
from runtime.serving.tritonstats import prometheus_text

logger = logging.getLogger("runtime.triton")

# Triton's messages when its queue policy sheds a request (queue full, timed out in the queue).
TRITON_REJECTIONS = ("Exceeds maximum queue size", "Request timeout expired")
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError, ConnectionError)


WAIT_REPORT_S = 5.0
STATS_TIMEOUT_S = 2.0


def _connection_reason(ex: BaseException) -> str:
    """Why a connection failed, in words: "connection refused", not aiohttp's class name."""
    cause: BaseException | None = ex
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(cause, asyncio.TimeoutError):
            return "no answer (timed out)"
        cause = cause.__cause__ or (cause.os_error if isinstance(cause, aiohttp.ClientConnectorError) else None)
    return f"cannot connect: {ex}"


def triton_error(ex: InferenceServerException, url: str) -> ServingError:
    status = ex.status()
    message = ex.message() or str(ex)
    code = int(status) if status and str(status).isdigit() else 0
    if any(marker in message for marker in TRITON_REJECTIONS):
        return Overloaded(f"Triton Inference Server at {url} rejected the request: {message}")
    if code == 400:
        return BadRequest(message)
    if code == 404:
        return NotFound(message)
    if code in (0, 502, 503, 504):
        return ServiceUnavailable(f"Triton Inference Server at {url} is unavailable: {message}")
    # Triton relays its backends' messages (onnxruntime's name source files): the log gets them, the client not.
    return ServingError(
        f"Triton Inference Server at {url} failed to run the request; the server log has the details",
        status_code=500,
        detail=message,
    )


class TritonBackend:
    name = "triton"

    def __init__(self) -> None:
        self.url = ""
        self.client: triton_aio.InferenceServerClient | None = None
        self.configs: dict[str, ModelConfig] = {}

    # -- start-up ---------------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    async def init(self, context: InitContext) -> None:
        settings = context.settings
        self.url = settings.triton_url
        wait_s = settings.triton_wait_s
        self.client = triton_aio.InferenceServerClient(
            self.url, conn_limit=max(settings.concurrency, 8), conn_timeout=settings.timeout_ms / 1000
        )
        deadline = time.monotonic() + wait_s
        await self._wait(deadline, "the server", self._server_reason)
        names = self._expected_models(context)
        if names is None:
            index = await self.client.get_model_repository_index()
            names = sorted({entry["name"] for entry in index if entry.get("state", "READY") == "READY"})
        for name in names:
            await self._wait(deadline, f"model {name!r}", functools.partial(self._model_reason, name))
            config_json = await self.client.get_model_config(name)
            proto = json_format.ParseDict(config_json, mc.ModelConfig(), ignore_unknown_fields=True)
            self.configs[name] = model_config_from_proto(proto, versions=await self._versions(name))
        logger.info("Triton at %s serves %s", self.url, ", ".join(sorted(self.configs)) or "no models")
        metrics.add_scrape_source(self._statistics)

    async def _statistics(self) -> bytes:
        """Triton's batch statistics for /metrics (nothing when Triton cannot be reached right now)."""
        assert self.client is not None
        try:
            stats = await asyncio.wait_for(self.client.get_inference_statistics(), STATS_TIMEOUT_S)
        except (InferenceServerException, *CONNECTION_ERRORS) as ex:
            logger.debug("Triton statistics unavailable: %s", ex)
            return b""
        return prometheus_text(stats)

    def _expected_models(self, context: InitContext) -> list[str] | None:
        """The models score.py relies on: the repository's, when --model-dir names one (else Triton's index)."""
        model_dir = context.settings.model_dir
        if model_dir and looks_like_repository(model_dir):
            return [config.name for config in load_repository(model_dir)]
        return None

    async def _versions(self, name: str) -> list[str]:
        assert self.client is not None
        metadata = await self.client.get_model_metadata(name)
        return sorted(metadata.get("versions", ["1"]), key=lambda v: int(v) if v.isdigit() else 0)

    async def _wait(self, deadline: float, what: str, probe: Callable[[], Awaitable[str | None]]) -> None:
        """Poll ``probe`` (None when ready, else why not) until ``deadline``, saying every few seconds why."""
        started = time.monotonic()
        total = deadline - started
        next_report = started  # say at once why it is waiting, and for how long
        while True:
            reason = await probe()
            if reason is None:
                return
            now = time.monotonic()
            if now > deadline or now >= next_report:
                message = (
                    f"Triton Inference Server at {self.url}: {what} is not ready: {reason} "
                    f"({now - started:.0f} s of {total:.0f} s; RUNTIME_TRITON_WAIT_S sets how long)"
                )
                if "refused" in reason or "cannot connect" in reason.lower():
                    message += (
                        ". Is a Triton server running at that address? "
                        "To have the runtime start one for --model-dir, use --triton managed"
                    )
                if now > deadline:
                    raise StartupError(message)
                logger.warning("%s; trying again for %.0f s", message, deadline - now)
                next_report = now + WAIT_REPORT_S
            await asyncio.sleep(0.25)

    async def _probe(self, call: Awaitable[bool]) -> str | None:
        try:
            return None if await call else "it answers, but is not ready yet"
        except InferenceServerException as ex:
            return ex.message() or str(ex)
        except CONNECTION_ERRORS as ex:
            return _connection_reason(ex)

    async def _server_reason(self) -> str | None:
        assert self.client is not None
        return await self._probe(self.client.is_server_ready())

    async def _model_reason(self, name: str, version: str = "") -> str | None:
        assert self.client is not None
        return await self._probe(self.client.is_model_ready(name, version))

    async def _server_ready(self) -> bool:
        return await self._server_reason() is None

    async def _model_ready(self, name: str, version: str = "") -> bool:
        return await self._model_reason(name, version) is None

    # -- serving ----------------------------------------------------------------------------------

    async def _infer(
        self, config: ModelConfig, version: str | None, inputs: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        assert self.client is not None
        started = time.perf_counter()
        tensors = []
        for spec in config.inputs:
            # Checked by the data plane; Triton applies the config's reshape itself.
            value = cast(config, spec, inputs[spec.name], reshape=False)
            if value.dtype.kind == "U":
                value = value.astype(object)  # tritonclient serialises str and bytes objects, not numpy unicode
            tensor = triton_http.InferInput(spec.name, list(value.shape), spec.datatype)
            tensor.set_data_from_numpy(value, binary_data=True)
            tensors.append(tensor)
        counts: Mapping[str, int] = parameters.get(CLASSIFICATION) or {}
        names: list[str] = parameters.get(OUTPUTS) or [t.name for t in config.outputs]
        outputs = [
            triton_http.InferRequestedOutput(name, binary_data=True, class_count=counts.get(name, 0)) for name in names
        ]
        request_id = str(parameters.get("request_id") or "")
        priority, timeout_us = schedule_parameters(parameters)
        deadline = DEADLINE.get()
        error: BaseException | None = None
        try:
            for attempt in range(2):
                try:
                    if deadline is not None:
                        # The caller's deadline travels to Triton as the request timeout (the scoring timeout
                        # around /score bounds our own wait).
                        left_us = int((deadline - time.monotonic()) * 1e6)
                        if left_us <= 0:
                            raise Overloaded(f"the request's deadline passed before model '{config.name}' ran")
                        timeout_us = min(timeout_us, left_us) if timeout_us else left_us
                    with tracing.client_span("triton infer", {"model": config.name}):
                        headers = tracing.inject({"x-request-id": request_id} if request_id else {})
                        result = await self.client.infer(
                            config.name,
                            tensors,
                            model_version=version or "",
                            outputs=outputs,
                            request_id=request_id,
                            priority=priority,
                            timeout=timeout_us or None,
                            headers=dict(headers) or None,
                        )
                    break
                except aiohttp.ServerDisconnectedError as ex:
                    # A pooled connection to a Triton that restarted: one retry on a fresh one.
                    if attempt:
                        raise ServiceUnavailable(f"Triton Inference Server at {self.url} is unavailable: {ex}") from ex
                except InferenceServerException as ex:
                    raise triton_error(ex, self.url) from ex
                except CONNECTION_ERRORS as ex:
                    raise ServiceUnavailable(
                        f"Triton Inference Server at {self.url} is unavailable: {type(ex).__name__}: {ex}"
                    ) from ex
            return {name: result.as_numpy(name) for name in names}
        except BaseException as ex:
            error = ex
            raise
        finally:
            seconds = time.perf_counter() - started
            reason = failure_reason(error)
            metrics.record_request(config.name, version or config.latest_version, seconds, error is None, reason)

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
        if self.client is not None:
            await self.client.close()
