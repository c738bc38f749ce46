"""Calling a Triton server over HTTP: waiting until it is ready, reading its configs, one inference.

Used by the Triton backend in every worker (``--triton-client worker``) and by the model engine
when it is Triton's client (``--triton-client engine``), so both wait, retry and fail alike: Triton
down is a 503 naming Triton and its URL, its queue rejections are 503s of load shedding, its own
400s keep their message, and anything else it reports goes to the log, not the client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from runtime import tracing
from runtime.errors import BadGateway, BadRequest, Overloaded, ServiceUnavailable, ServingError, StartupError
from runtime.logs import usable_request_id
from runtime.serving.model_config import mc
from runtime.serving.repository import ModelConfig, model_config_from_proto

logger = logging.getLogger("runtime.triton")

# Triton's messages when its queue policy sheds a request (queue full, timed out in the queue).
TRITON_REJECTIONS = ("Exceeds maximum queue size", "Request timeout expired")
# (ClientPayloadError: an answer cut off mid-body, by a Triton killed or a connection lost meanwhile.)
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, ConnectionError)
WAIT_REPORT_S = 5.0
# An answer that is not HTTP/1.1 (Triton's gRPC port speaks HTTP/2) or not parseable as such: aiohttp says why.
NOT_HTTP = aiohttp.ClientResponseError
NOT_HTTP_HINT = "Is that Triton's HTTP port (8000 unless --http-port changed it; 8001 is its gRPC port)?"


def no_answer(timeout_s: float) -> str:
    """A request to Triton that timed out, in words: the limit, and the setting that sets it."""
    return f"no answer in {timeout_s:g} s (SCORING_TIMEOUT_MS)"


def not_http(ex: BaseException) -> str:
    """An aiohttp failure to read an HTTP/1.1 answer, in words, with the likely mistake."""
    first = str(getattr(ex, "message", "") or ex).strip().splitlines()
    return f"it does not answer HTTP/1.1 ({first[0] if first else type(ex).__name__}). {NOT_HTTP_HINT}"


def connection_reason(ex: BaseException) -> str:
    """Why a connection failed, in words: "connection refused", not aiohttp's class name."""
    cause: BaseException | None = ex
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(cause, asyncio.TimeoutError):
            return "no answer (timed out)"
        cause = cause.__cause__ or (cause.os_error if isinstance(cause, aiohttp.ClientConnectorError) else None)
    return f"cannot connect: {ex}"


def triton_error(ex: InferenceServerException, url: str, model: str = "") -> ServingError:
    """Triton's error answer to an inference of ``model``, one the runtime serves (an unknown model or version is
    the data plane's 404 before Triton is asked)."""
    status = ex.status()
    message = ex.message() or str(ex)
    code = int(status) if status and str(status).isdigit() else 0
    if any(marker in message for marker in TRITON_REJECTIONS):
        return Overloaded(f"Triton Inference Server at {url} rejected the request: {message}")
    if code == 400:
        return BadRequest(message)
    if code == 404:  # Triton stopped serving it (unloaded, or a Triton restarted without it): a retry may outlast that
        what = f"model '{model}'" if model else "the model"
        return ServiceUnavailable(
            f"Triton Inference Server at {url} does not serve {what} now (it did when the runtime started; see "
            f"its log): {message}"
        )
    if code in (0, 502, 503, 504):
        return ServiceUnavailable(f"Triton Inference Server at {url} is unavailable: {message}")
    # Triton relays its backends' messages (onnxruntime's name source files): the log gets them, the client not.
    return ServingError(
        f"Triton Inference Server at {url} failed to run the request; the server log has the details",
        status_code=500,
        detail=message,
    )


def unreadable(url: str, model: str, why: BaseException | str) -> BadGateway:
    """A 200 from Triton that is no v2 answer the runtime can read (a proxy, another server, a version apart)."""
    return BadGateway(
        f"Triton Inference Server at {url} answered a request of model '{model}' with a response the runtime "
        "cannot read; the server log has the details",
        detail=why if isinstance(why, str) else f"{type(why).__name__}: {why}",
    )


def read_outputs(result: Any, names: Sequence[str], url: str, model: str) -> dict[str, np.ndarray]:
    """The outputs ``names`` of tritonclient's InferResult, or :func:`unreadable`."""
    try:
        outputs = {name: result.as_numpy(name) for name in names}
    except (ValueError, KeyError, TypeError) as ex:
        raise unreadable(url, model, ex) from ex
    missing = [name for name, value in outputs.items() if value is None]
    if missing:
        raise unreadable(url, model, f"the answer lacks output(s) {', '.join(missing)}")
    return outputs


def infer_inputs(config: ModelConfig, arrays: Mapping[str, np.ndarray]) -> list[triton_http.InferInput]:
    """The config's inputs as binary tensors (checked and cast to the config's datatypes already)."""
    tensors = []
    for spec in config.inputs:
        if spec.name not in arrays:  # an optional input left out
            continue
        value = arrays[spec.name]
        if value.dtype.kind == "U":
            value = value.astype(object)  # tritonclient serialises str and bytes objects, not numpy unicode
        tensor = triton_http.InferInput(spec.name, list(value.shape), spec.datatype)
        tensor.set_data_from_numpy(value, binary_data=True)
        tensors.append(tensor)
    return tensors


class TritonServer:
    """One Triton HTTP endpoint and this process's connection pool to it."""

    def __init__(self, url: str, conn_limit: int, conn_timeout: float) -> None:
        self.url = url
        self.timeout_s = conn_timeout  # a whole request's (aiohttp's total timeout)
        self.client = triton_aio.InferenceServerClient(url, conn_limit=conn_limit, conn_timeout=conn_timeout)

    async def close(self) -> None:
        await self.client.close()

    # -- start-up ---------------------------------------------------------------------------------

    async def wait_for_models(self, names: Sequence[str] | None, wait_s: float) -> dict[str, ModelConfig]:
        """Wait (up to ``wait_s``) for the server and for ``names`` (None: its repository index) to be ready;
        their configs as Triton completed them."""
        deadline = time.monotonic() + wait_s
        await self._wait(deadline, "the server", self.server_reason)
        if names is None:
            index = await self.client.get_model_repository_index()
            names = sorted({entry["name"] for entry in index if entry.get("state", "READY") == "READY"})
        configs = {}
        for name in names:
            await self._wait(deadline, f"model {name!r}", functools.partial(self.model_reason, name))
            config_json = await self.client.get_model_config(name)
            proto = json_format.ParseDict(config_json, mc.ModelConfig(), ignore_unknown_fields=True)
            configs[name] = model_config_from_proto(proto, versions=await self._versions(name))
        return configs

    async def _versions(self, name: str) -> list[str]:
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

    async def _probe(self, call: Awaitable[bool], model: str | None = None) -> str | None:
        try:
            if await call:
                return None
        except InferenceServerException as ex:
            return ex.message() or str(ex)
        except CONNECTION_ERRORS as ex:
            return connection_reason(ex)
        except NOT_HTTP as ex:
            return not_http(ex)
        return "it answers, but is not ready yet" + await self._unready_models(model)

    async def _unready_models(self, model: str | None) -> str:
        """The models (or ``model``) Triton's index lists as not ready, with its reason: one it could not load
        keeps a server that runs on (``--exit-on-error=false``) not ready for good."""
        try:
            index = await self.client.get_model_repository_index()
        except (InferenceServerException, *CONNECTION_ERRORS):
            return ""
        states = [
            f"model '{entry.get('name')}' version {entry.get('version', '')} is {entry.get('state')}"
            + (f": {entry['reason'].strip().splitlines()[0]}" if str(entry.get("reason", "")).strip() else "")
            for entry in index
            if entry.get("state", "READY") != "READY" and model in (None, entry.get("name"))
        ]
        return f" ({'; '.join(states)})" if states else ""

    async def server_reason(self) -> str | None:
        return await self._probe(self.client.is_server_ready())

    async def model_reason(self, name: str, version: str = "") -> str | None:
        return await self._probe(self.client.is_model_ready(name, version), name)

    # -- serving ----------------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        version: str,
        tensors: list[triton_http.InferInput],
        outputs: list[triton_http.InferRequestedOutput],
        request_id: str = "",
        priority: int = 0,
        timeout_us: int = 0,
        deadline: float | None = None,
    ) -> Any:
        """One inference request; Triton's answer (tritonclient's InferResult), or a :class:`ServingError`.

        ``deadline`` (``time.monotonic()``) travels to Triton as the request's timeout.
        """
        if not usable_request_id(request_id):
            # A hook's parameters may carry any id: one with a control character fails the header, a lone
            # surrogate the JSON; Triton only echoes it.
            request_id = ""
        for attempt in range(2):
            try:
                if deadline is not None:
                    left_us = int((deadline - time.monotonic()) * 1e6)
                    if left_us <= 0:
                        raise Overloaded(f"the request's deadline passed before model '{model}' ran")
                    timeout_us = min(timeout_us, left_us) if timeout_us else left_us
                with tracing.client_span("triton infer", {"model": model}):
                    headers = tracing.inject({"x-request-id": request_id} if request_id else {})
                    return await self.client.infer(
                        model,
                        tensors,
                        model_version=version,
                        outputs=outputs,
                        request_id=request_id,
                        priority=priority,
                        timeout=timeout_us or None,
                        headers=dict(headers) or None,
                    )
            except aiohttp.ServerDisconnectedError as ex:
                # A pooled connection to a Triton that restarted: one retry on a fresh one.
                if attempt:
                    raise ServiceUnavailable(f"Triton Inference Server at {self.url} is unavailable: {ex}") from ex
            except InferenceServerException as ex:
                raise triton_error(ex, self.url, model) from ex
            except asyncio.TimeoutError as ex:  # (an empty exception: its message said nothing)
                raise ServiceUnavailable(
                    f"Triton Inference Server at {self.url} is unavailable: {no_answer(self.timeout_s)}"
                ) from ex
            except CONNECTION_ERRORS as ex:
                raise ServiceUnavailable(
                    f"Triton Inference Server at {self.url} is unavailable: {type(ex).__name__}: {ex}"
                ) from ex
            except NOT_HTTP as ex:
                raise ServiceUnavailable(
                    f"Triton Inference Server at {self.url} is unavailable: {not_http(ex)}"
                ) from ex
            except (ValueError, KeyError, TypeError) as ex:  # tritonclient reading a 200 it cannot parse
                raise unreadable(self.url, model, ex) from ex
        raise AssertionError("unreachable: the second attempt returns or raises")
