"""The engine's lean Triton client (engine/tritonhttp.py) against a fake Triton speaking the v2 binary protocol.

The fake decodes requests and encodes answers with the runtime's own v2 codec (which the real-Triton
tests check against tritonclient), and can answer an error or close a kept connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from runtime.errors import BadGateway, BadRequest, Overloaded, ServiceUnavailable, ServingError
from runtime.http.v2codec import decode_infer_request, encode_outputs
from runtime.serving.datatypes import HEADER_LENGTH
from runtime.serving.engine.tritonhttp import TritonHttp
from runtime.serving.model_config import mc
from runtime.serving.repository import ModelConfig, TensorSpec
from runtime.serving.tritoncall import TritonServer, infer_inputs, read_outputs, triton_error

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


# Model 'm' as a Triton serves it: one FP32 input 'x' of dims [2].
M = ModelConfig("m", Path("m"), 4, [TensorSpec("x", "FP32", (2,))], [], ["1"], None, 1, "", mc.ModelConfig())


def answer(status: int, header: object, data: bytes = b"") -> Answer:
    """A fixed answer: ``header`` as JSON (bytes as they are), then ``data`` (binary outputs)."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return lambda body, length: (status, head + data, len(head) if data else None)


def output(shape: list[int], size: int) -> dict[str, object]:
    return {"outputs": [{"name": "y", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": size}}]}


# What a remote Triton, or a proxy in front of it, may answer that is not a v2 response the runtime can read.
ODD_ANSWERS = [
    ("an empty 503", answer(503, b""), ServiceUnavailable, "is unavailable"),
    ("a proxy's 502 page", answer(502, b"<html>Bad Gateway</html>"), ServiceUnavailable, "is unavailable"),
    ("a proxy's 500 page", answer(500, b"<html>oops</html>"), ServingError, "failed to run the request"),
    ("a 200 that is not JSON", answer(200, b"garbage"), BadGateway, "cannot read"),
    ("no outputs", answer(200, {"model_name": "m"}), BadGateway, "cannot read"),
    ("an output without its requested name", answer(200, {"outputs": []}), BadGateway, "cannot read"),
    ("fewer bytes than announced", answer(200, output([1, 2], 8), b"\0" * 4), BadGateway, "cannot read"),
    ("a shape its bytes do not fill", answer(200, output([1, 5], 8), b"\0" * 8), BadGateway, "cannot read"),
]


@pytest.mark.parametrize(("case", "reply", "kind", "text"), ODD_ANSWERS, ids=[c[0] for c in ODD_ANSWERS])
def test_an_answer_that_is_not_tritons_is_a_typed_error_naming_triton_in_both_clients(
    case: str, reply: Answer, kind: type[ServingError], text: str
) -> None:
    """The engine's client and the workers' (tritonclient) alike: 503 for an outage page, 502 for a 200 that
    cannot be read; never an exception of the runtime's own (a 500 saying nothing)."""
    x = np.ones((1, 2), np.float32)

    async def scenario() -> list[BaseException]:
        async with fake_triton(reply) as (url, _):
            http = TritonHttp(url, 10)
            server = TritonServer(url, 1, 10)
            errors: list[BaseException] = []
            try:
                await http.infer("m", "1", {"x": ("FP32", [x])}, ["y"])
            except Exception as ex:
                errors.append(ex)
            try:
                wanted = [triton_http.InferRequestedOutput("y", binary_data=True)]
                result = await server.infer("m", "1", infer_inputs(M, {"x": x}), wanted)
                read_outputs(result, ["y"], url, "m")
            except Exception as ex:
                errors.append(ex)
            await http.close()
            await server.close()
            return errors

    for error in asyncio.run(scenario()):
        assert type(error) is kind, f"{case}: {error!r}"
        assert text in str(error) and "Triton Inference Server at 127.0.0.1:" in str(error), str(error)
        assert error.status_code in (502, 503) if kind is not ServingError else error.status_code == 500


def test_a_model_triton_unloaded_since_start_up_is_a_503_in_both_clients_not_a_404() -> None:
    """The runtime lists the model (its index, its metadata): Triton's 404 (the worker's unversioned request; the
    engine's names the version and got a 503) means Triton stopped serving it, which a retry may outlast."""
    message = "Request for unknown model: 'm' has no available versions"

    async def scenario() -> BaseException:
        async with fake_triton(error(404, message)) as (url, _):
            http = TritonHttp(url, 10)
            with pytest.raises(ServiceUnavailable) as raised:
                await http.infer("m", "1", {"x": ("FP32", [np.ones((1, 2), np.float32)])}, ["y"])
            await http.close()
            return raised.value

    for error_ in (
        asyncio.run(scenario()),
        triton_error(InferenceServerException(message, status="404"), "t:8000", "m"),
    ):
        assert type(error_) is ServiceUnavailable and error_.status_code == 503
        assert "does not serve model 'm' now (it did when the runtime started; see its log): " in str(error_)
        assert str(error_).endswith(message)


# What Triton's gRPC port (HTTP/2) sends an HTTP/1.1 client first: a SETTINGS frame.
HTTP2_SETTINGS = b"\x00\x00\x18\x04\x00\x00\x00\x00\x00\x00\x04\x00@\x00\x00\x00\x05\x00@\x00\x00\x00\x06\x00\x00@\x00"


@asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[str]:
    """A server that reads a request's head, writes ``reply`` as it is and closes; yields its host:port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def unavailable_in_both_clients(url: str, timeout_s: float = 5) -> list[ServiceUnavailable]:
    """One request through the workers' client (tritonclient) and one through the engine's: their 503s."""
    triton, http = TritonServer(url, 1, timeout_s), TritonHttp(url, timeout_s)
    x = np.ones((1, 2), np.float32)
    errors: list[ServiceUnavailable] = []
    try:
        for call in (
            triton.infer("m", "1", infer_inputs(M, {"x": x}), []),
            http.infer("m", "1", {"x": ("FP32", [x])}, []),
        ):
            with pytest.raises(ServiceUnavailable) as raised:
                await call
            errors.append(raised.value)
    finally:
        await triton.close()
        await http.close()
    return errors


def test_an_address_that_does_not_speak_http_1_is_a_startup_error_and_a_503_naming_the_likely_mistake() -> None:
    """--triton-url at Triton's gRPC port (8001 where HTTP is 8000), or at anything else: start-up crashed with
    aiohttp's ClientResponseError (not a StartupError), the workers' requests were 500s, and the engine's an
    IndexError's 500."""
    from runtime.errors import StartupError

    async def scenario() -> list[Exception]:
        async with raw_server(HTTP2_SETTINGS + b"\r\n\r\n") as url:
            triton = TritonServer(url, 1, 5)
            with pytest.raises(StartupError) as started:
                await triton.wait_for_models(None, 0.3)
            await triton.close()
            return [started.value, *await unavailable_in_both_clients(url)]

    for error_ in asyncio.run(scenario()):
        assert "does not answer HTTP/1.1" in str(error_), str(error_)
        assert "Triton's HTTP port (8000 unless --http-port changed it; 8001 is its gRPC port)" in str(error_)


def test_an_answer_cut_off_mid_body_is_the_503_of_a_triton_gone_in_both_clients() -> None:
    """A Triton killed while it answers (or a connection lost): the workers' aiohttp ClientPayloadError was a 500."""

    async def scenario() -> list[ServiceUnavailable]:
        async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"outputs"') as url:
            return await unavailable_in_both_clients(url)

    for error_ in asyncio.run(scenario()):
        assert error_.status_code == 503 and "is unavailable: " in str(error_), str(error_)


def test_a_triton_that_does_not_answer_in_time_is_the_same_503_naming_the_wait_in_both_clients() -> None:
    """The workers' message ended in 'TimeoutError: ' (an empty exception), the engine's said 'no answer in 1 s'."""

    async def scenario() -> list[ServiceUnavailable]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await reader.readexactly(1 << 20)  # reads, never answers; ends when the client gives up

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            return await unavailable_in_both_clients(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout_s=1)

    for error_ in asyncio.run(scenario()):
        assert str(error_).endswith(" is unavailable: no answer in 1 s (SCORING_TIMEOUT_MS)"), str(error_)


@pytest.mark.parametrize("request_id", ["ok-1", "a\nb", "\x10j", "caf\u00e9", "\ud800", "x" * 101])
def test_any_request_id_is_answered_and_only_a_header_safe_one_is_sent_to_triton(request_id: str) -> None:
    """A v2 body's "id" is any JSON string: one with a control character was a 502 ("cannot read": aiohttp
    refused it as the x-request-id header; a lone surrogate, tritonclient's JSON), found by fuzzing a managed
    Triton."""
    x = np.ones((1, 2), np.float32)
    ids: list[str | None] = []

    def echo_id(body: bytes, length: str | None) -> tuple[int, bytes, int | None]:
        ids.append(json.loads(body[: int(length)] if length else body).get("id"))
        return echo(body, length)

    async def scenario() -> np.ndarray:
        async with fake_triton(echo_id) as (url, _):
            server = TritonServer(url, 1, 10)
            try:
                wanted = [triton_http.InferRequestedOutput("out_x", binary_data=True)]
                result = await server.infer("m", "1", infer_inputs(M, {"x": x}), wanted, request_id=request_id)
                return read_outputs(result, ["out_x"], url, "m")["out_x"]
            finally:
                await server.close()

    np.testing.assert_array_equal(asyncio.run(scenario()), x)
    assert ids == [request_id if request_id == "ok-1" else None]
