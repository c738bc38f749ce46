"""A lean HTTP/1.1 client for one call, Triton's binary-tensor infer, on keep-alive connections.

The engine sends Triton one request per batch, on its event loop. tritonclient's aio client
(aiohttp, a JSON builder, InferInput objects) cost it about 0.7 ms of CPU per request on this
project's 2-core machine, as much as all the rest of the engine's work for a batch; this writes
the request head, the JSON header and the tensors' own buffers (no copy of numeric tensors) to a
pooled connection, and reads numeric outputs as views on the response body. Failures map as
tritonclient's do in the workers (:func:`runtime.serving.tritoncall.triton_error`), so a client
sees the same status and message whichever process calls Triton.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from runtime.errors import ServiceUnavailable
from runtime.serving.datatypes import HEADER_LENGTH, serialize_bytes
from runtime.serving.engine.arena import read_tensor
from runtime.serving.tritoncall import NOT_HTTP_HINT, no_answer, triton_error, unreadable

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class NotHttp(ValueError):
    """An answer whose status line is not HTTP/1.x (another protocol at that port)."""


HEADER_END = b"\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024


class TritonHttp:
    """Triton's infer endpoint at ``host:port``; connections are opened as batches need them, then reused."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        host, _, port = url.rpartition(":")
        self.host, self.port = host or "localhost", int(port)
        self.timeout_s = timeout_s
        self._idle: list[Connection] = []

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()

    async def infer(
        self, model: str, version: str, inputs: Mapping[str, tuple[str, list[np.ndarray]]], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """``inputs``: name -> (datatype, the batch's requests' arrays, joined along the first dimension on the
        wire); every output in ``outputs`` comes back (binary), for the whole batch."""
        request = _request(self.host, model, version, inputs, outputs)
        for attempt in range(2):
            reused = bool(self._idle)
            connection = self._idle.pop() if reused else None
            try:
                if connection is None:
                    connection = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout_s)
                status, keep, body, header_length = await asyncio.wait_for(
                    _exchange(connection, request), self.timeout_s
                )
            except asyncio.TimeoutError as ex:  # before OSError, its base class (on 3.11)
                if connection is not None:
                    connection[1].close()
                raise ServiceUnavailable(
                    f"Triton Inference Server at {self.url} is unavailable: {no_answer(self.timeout_s)}"
                ) from ex
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as ex:
                if connection is not None:
                    connection[1].close()
                if reused and attempt == 0:
                    continue  # a kept connection to a Triton that restarted, or closed it: once more on a new one
                reason = str(ex) if isinstance(ex, NotHttp) else f"{type(ex).__name__}: {ex}"
                raise ServiceUnavailable(f"Triton Inference Server at {self.url} is unavailable: {reason}") from ex
            except BaseException:
                if connection is not None:
                    connection[1].close()  # cancelled halfway: the connection's state is unknown
                raise
            if keep:
                self._idle.append(connection)
            else:
                connection[1].close()
            return _outputs(status, body, header_length, self.url, model, outputs)
        raise AssertionError("unreachable: the second attempt returns or raises")


def _request(
    host: str, model: str, version: str, inputs: Mapping[str, tuple[str, list[np.ndarray]]], outputs: Sequence[str]
) -> list[bytes | memoryview]:
    tensors: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    for name, (datatype, parts) in inputs.items():
        # A batch's requests go out one after the other, from their own buffers: the wire joins them, not numpy.
        shape = [sum(int(part.shape[0]) for part in parts), *parts[0].shape[1:]] if len(parts) > 1 else parts[0].shape
        size = 0
        for part in parts:
            data: bytes | memoryview = b""
            if datatype == "BYTES":
                data = serialize_bytes(part)
            elif part.size:  # (a memoryview with a 0 in its shape cannot be cast)
                data = np.ascontiguousarray(part).data.cast("B")
            buffers.append(data)
            size += len(data)
        parameters = {"binary_data_size": size}
        tensors.append({"name": name, "shape": list(shape), "datatype": datatype, "parameters": parameters})
    wanted = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    header = json.dumps({"inputs": tensors, "outputs": wanted}, separators=(",", ":")).encode()
    length = len(header) + sum(len(b) for b in buffers)
    path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"{HEADER_LENGTH}: {len(header)}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    return [head, header, *buffers]


async def _exchange(connection: Connection, request: list[bytes | memoryview]) -> tuple[int, bool, bytes, int | None]:
    """Send one request, read its response: (status, whether the connection may be reused, body, JSON length)."""
    reader, writer = connection
    writer.writelines(request)
    await writer.drain()
    head = await reader.readuntil(HEADER_END)
    if len(head) > MAX_HEAD_BYTES:
        raise ValueError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    words = lines[0].split(" ", 2)
    if len(words) < 2 or not words[0].startswith("HTTP/1.") or not words[1].isdigit():
        raise NotHttp(f"it does not answer HTTP/1.1 ({lines[0][:40]!r}). {NOT_HTTP_HINT}")
    status = int(words[1])
    fields: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if fields.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # the (empty) trailer
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(fields.get("content-length", "0")))
    keep = fields.get("connection", "").lower() != "close"
    length = fields.get(HEADER_LENGTH.lower())
    return status, keep, body, int(length) if length is not None else None


def _outputs(
    status: int, body: bytes, header_length: int | None, url: str, model: str, wanted: Sequence[str]
) -> dict[str, np.ndarray]:
    if status != 200:
        message = _error_message(body, header_length) or f"HTTP {status}"
        raise triton_error(InferenceServerException(message, status=str(status)), url, model)
    try:
        header = json.loads(body[:header_length] if header_length is not None else body)
        raw = np.frombuffer(body, np.uint8)
        offset = header_length or 0
        outputs = {}
        for tensor in header["outputs"]:
            size = int(tensor["parameters"]["binary_data_size"])
            if offset + size > len(raw):
                raise ValueError(f"output {tensor['name']!r} announces {size} bytes past the end of the answer")
            shape = tuple(tensor["shape"])
            outputs[tensor["name"]] = read_tensor(raw[offset : offset + size], tensor["datatype"], shape)
            offset += size
    except (ValueError, KeyError, TypeError) as ex:  # a 200 that is no v2 answer (a proxy, another server)
        raise unreadable(url, model, ex) from ex
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise unreadable(url, model, f"the answer lacks output(s) {', '.join(missing)}")
    return outputs


def _error_message(body: bytes, header_length: int | None) -> str:
    """Triton's ``{"error": ...}``; a body that is not (a proxy's page) is described, not relayed."""
    try:
        header = json.loads(body[:header_length] if header_length is not None else body)
    except ValueError:
        return f"an answer that is not Triton's ({len(body)} bytes)" if body else ""
    return str(header.get("error", "")) if isinstance(header, dict) else ""
