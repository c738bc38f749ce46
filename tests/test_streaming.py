"""Streamed responses: AMLResponse(generator), async generators, SSE, hook-style streams, timeouts, disconnects."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.settings import Settings
from tests.conftest import script
from tests.support.inprocess import captured_logs, client, served

STREAM = script("aml/stream.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "status", "content_type", "body"),
    [
        ("kind=plain", 201, "text/html; charset=utf-8", b"chunk 0;chunk 1;chunk 2;"),
        ("kind=async", 200, "text/plain", b"token 0;token 1;token 2;"),
        ("kind=sse", 200, "text/event-stream", b"".join(f'data: {{"token": {i}}}\n\n'.encode() for i in range(3))),
        ("kind=plain&count=0", 201, "text/html; charset=utf-8", b""),
    ],
)
async def test_aml_response_streams_its_generator(query: str, status: int, content_type: str, body: bytes) -> None:
    async with client(Settings(entry_script=STREAM)) as http:
        response = await http.get(f"/score?{query}", headers={"x-request-id": "rid-s"})
    assert response.status_code == status
    assert response.content == body
    assert response.headers["content-type"] == content_type
    assert "content-length" not in response.headers
    assert response.headers["x-request-id"] == "rid-s"
    assert response.headers["x-ms-run-function-failed"] == "False"
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0
    if "plain" in query:
        assert response.headers["x-stream"] == "yes"


@pytest.mark.anyio
async def test_an_async_generator_runs_in_one_task_from_its_first_chunk_to_its_last() -> None:
    async with client(Settings(entry_script=STREAM)) as http:
        response = await http.get("/score?kind=one_task")
    assert (response.status_code, response.content) == (200, b"0 True;1 True;2 True;")


@pytest.mark.anyio
async def test_errors_before_the_first_chunk_are_ordinary_answers() -> None:
    async with client(Settings(entry_script=STREAM, timeout_ms=300)) as http:
        slow = await http.get("/score?kind=slow_first&delay=2")
        failing = await http.get("/score?kind=fail_first")
        fine = await http.get("/score?kind=slow_first&delay=0")
    assert slow.status_code == 500
    assert slow.json() == {"message": "Scoring timeout after 300 ms"}
    assert failing.status_code == 500
    assert failing.json() == {
        "message": "An unexpected error occurred in scoring script. Check the logs for more info."
    }
    assert failing.headers["x-ms-run-function-failed"] == "True"
    assert (fine.status_code, fine.content) == (200, b"late")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "status", "content_type", "body"),
    [
        ("generator", 200, "text/plain; charset=utf-8", b"alpha beta 3"),
        ("bytes", 200, "application/octet-stream", b"\x00\x01\x02"),
        ("starlette", 202, "application/x-ndjson", b"s1,s2"),
    ],
)
async def test_hook_postprocess_may_stream(
    model_repo: Path, kind: str, status: int, content_type: str, body: bytes
) -> None:
    settings = Settings(entry_script=script("core/hook_stream.py"), model_dir=str(model_repo))
    async with client(settings) as http:
        response = await http.post(f"/score?kind={kind}", json={})
    assert (response.status_code, response.content) == (status, body)
    assert response.headers["content-type"] == content_type
    assert response.headers["x-ms-run-function-failed"] == "False"


# -- on a socket: chunks on the wire, disconnects ------------------------------------------------


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[str]]]:
    """The app served by uvicorn on a socket in this process, its log lines, and the generators' marker file."""
    marker = tmp_path_factory.mktemp("stream") / "closed.txt"
    with (
        pytest.MonkeyPatch.context() as env,
        captured_logs() as log,
    ):
        env.setenv("STREAM_MARKER", str(marker))
        with served(Settings(entry_script=STREAM)) as url:
            yield url, marker, log


def test_first_chunk_arrives_before_the_generator_finishes(stream_server: tuple[str, Path, list[str]]) -> None:
    url, _, _ = stream_server
    started = time.monotonic()
    with httpx.stream("GET", url + "/score?count=4&delay=0.5", timeout=30) as response:
        assert response.status_code == 201
        arrivals = []
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    assert b"".join(c for _, c in arrivals) == b"chunk 0;chunk 1;chunk 2;chunk 3;"
    # The generator sleeps 0.5 s between chunks, 1.5 s in all: the first chunk came long before the end.
    assert arrivals[0][0] < arrivals[-1][0] - 1.0, arrivals
    assert len(arrivals) >= 3


def test_disconnect_closes_the_generator(stream_server: tuple[str, Path, list[str]]) -> None:
    url, marker, _ = stream_server
    marker.unlink(missing_ok=True)
    with httpx.stream("GET", url + "/score?count=1000&delay=0.05&marker=1", timeout=30) as response:
        first = next(response.iter_raw())
        assert first.startswith(b"chunk 0;")
    # Leaving the block closed the connection; the generator got GeneratorExit (its finally wrote the marker).
    deadline = time.monotonic() + 10
    # The marker exists once opened, before its line is written: wait for the line.
    while time.monotonic() < deadline and not (marker.exists() and marker.read_text()):
        time.sleep(0.05)
    assert marker.read_text() == "closed\n"
    # The worker goes on serving.
    assert httpx.get(url + "/score?count=2", timeout=30).content == b"chunk 0;chunk 1;"


def test_disconnect_lets_an_async_generator_finish_its_async_clean_up(
    stream_server: tuple[str, Path, list[str]],
) -> None:
    url, marker, _ = stream_server
    marker.unlink(missing_ok=True)
    with httpx.stream("GET", url + "/score?kind=async_endless", timeout=30) as response:
        assert next(response.iter_raw()).startswith(b"token 0;")
    # Its finally awaits before it writes the marker: the disconnect's cancellation must not cut it short.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (marker.exists() and marker.read_text()):
        time.sleep(0.05)
    assert marker.read_text() == "closed async\n"


def test_server_sent_events_through_httpx(stream_server: tuple[str, Path, list[str]]) -> None:
    url, _, _ = stream_server
    events = []
    with httpx.stream("GET", url + "/score?kind=sse", timeout=30) as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    assert events == [{"token": 0}, {"token": 1}, {"token": 2}]


def test_failure_halfway_ends_the_body_incomplete(stream_server: tuple[str, Path, list[str]]) -> None:
    url, _, log = stream_server
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("GET", url + "/score?kind=fail", timeout=30) as response,
    ):
        assert response.status_code == 200
        b"".join(response.iter_raw())
    assert "The response stream failed after 1 chunks" in "\n".join(log)
    assert "the model fell over" in "\n".join(log)
