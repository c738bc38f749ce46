"""The engine's lean Triton client (engine/tritonhttp.py) against a fake Triton speaking the v2 binary protocol.

The fake decodes requests and encodes answers with the runtime's own v2 codec (which the real-Triton
tests check against tritonclient), and can answer an error or close a kept connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
import pytest

from runtime.errors import BadRequest, Overloaded, ServiceUnavailable
from runtime.http.v2codec import decode_infer_request, encode_outputs
from runtime.serving.datatypes import HEADER_LENGTH
from runtime.serving.engine.tritonhttp import TritonHttp

Answer = Callable[[bytes, str | None], tuple[int, bytes, int | None]]


def echo(body: bytes, header_length: str | None) -> tuple[int, bytes, int | None]:
    """Every input back as output ``out_<name>``, binary."""
    request = decode_infer_request(body, header_length)
    outputs = [(f"out_{name}", array, True) for name, array in request.inputs.items()]
    payload, length = encode_outputs(outputs, {"model_name": "m", "outputs": []})
    return 200, payload, length


@asynccontextmanager
async def fake_triton(answer: Answer, close_after: int = 0) -> AsyncIterator[tuple[str, list[str]]]:
    """A server on a free port; yields its host:port and the request lines it saw. ``close_after``: close each
    connection after that many answers (0: keep it)."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
                body = await reader.readexactly(int(fields["content-length"]))
                seen.append(head[0])
                status, payload, length = answer(body, fields.get(HEADER_LENGTH.lower()))
                extra = f"{HEADER_LENGTH}: {length}\r\n" if length is not None else ""
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n{extra}\r\n".encode() + payload)
                await writer.drain()
                answered += 1
                if close_after and answered >= close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"127.0.0.1:{port}", seen


def test_a_batch_goes_out_as_one_request_joined_on_the_wire() -> None:
    async def scenario() -> None:
        async with fake_triton(echo) as (url, seen):
            http = TritonHttp(url, 10)
            parts = [np.arange(4, dtype=np.float32).reshape(1, 4), np.ones((2, 4), np.float32)]
            words = [np.array([[b"a"]], dtype=object), np.array([[b"bc"], [b""]], dtype=object)]
            empty = [np.zeros((1, 0), np.int64), np.zeros((2, 0), np.int64)]
            inputs = {"x": ("FP32", parts), "w": ("BYTES", words), "e": ("INT64", empty)}
            out = await http.infer("m", "3", inputs, ["out_x", "out_w", "out_e"])
            np.testing.assert_array_equal(out["out_x"], np.concatenate(parts))
            assert out["out_w"].ravel().tolist() == [b"a", b"bc", b""]
            assert out["out_e"].shape == (3, 0)
            again = await http.infer("m", "3", {"x": ("FP32", parts[:1])}, ["out_x"])
            np.testing.assert_array_equal(again["out_x"], parts[0])
            assert seen == ["POST /v2/models/m/versions/3/infer HTTP/1.1"] * 2
            await http.close()

    asyncio.run(scenario())


def test_a_kept_connection_the_server_closed_is_retried_once_on_a_new_one() -> None:
    async def scenario() -> None:
        async with fake_triton(echo, close_after=1) as (url, seen):
            http = TritonHttp(url, 10)
            x = {"x": ("FP32", [np.ones((1, 2), np.float32)])}
            for _ in range(3):
                assert (await http.infer("m", "1", x, ["out_x"]))["out_x"].shape == (1, 2)
            assert len(seen) == 3
            await http.close()

    asyncio.run(scenario())


def error(status: int, message: str) -> Answer:
    return lambda body, length: (status, json.dumps({"error": message}).encode(), None)


@pytest.mark.parametrize(
    ("status", "message", "kind", "text"),
    [
        (400, "unexpected shape for input 'x'", BadRequest, "unexpected shape for input 'x'"),
        (503, "Exceeds maximum queue size", Overloaded, "rejected the request: Exceeds maximum queue size"),
        (500, "onnxruntime.cc:123 failed", Exception, "failed to run the request; the server log has the details"),
    ],
)
def test_tritons_errors_map_as_in_the_workers(status: int, message: str, kind: type, text: str) -> None:
    async def scenario() -> None:
        async with fake_triton(error(status, message)) as (url, _):
            http = TritonHttp(url, 10)
            with pytest.raises(kind) as raised:
                await http.infer("m", "1", {"x": ("FP32", [np.ones((1, 2), np.float32)])}, ["y"])
            assert text in str(raised.value) and raised.value.status_code == status
            await http.close()

    asyncio.run(scenario())


def test_nothing_listening_is_the_503_that_names_triton() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        url = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        server.close()
        await server.wait_closed()
        http = TritonHttp(url, 10)
        with pytest.raises(ServiceUnavailable) as raised:
            await http.infer("m", "1", {"x": ("FP32", [np.ones((1, 2), np.float32)])}, ["y"])
        assert raised.value.status_code == 503
        assert str(raised.value).startswith(f"Triton Inference Server at {url} is unavailable: ")

    asyncio.run(scenario())
