"""runtime.http.protocol.CoalescingTransport: a response's headers leave with its body, in one write; a close while
the request still arrives lingers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime.http import protocol
from runtime.http.protocol import COALESCE_MAX_BYTES, CoalescingTransport


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def coalesced(*steps: bytes | None) -> tuple[list[bytes], Recorder]:
    """Write each step; None: let the event loop turn once."""
    raw = Recorder()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    for step in steps:
        if step is None:
            await asyncio.sleep(0)
        else:
            transport.write(step)
    return raw.writes, raw


def test_headers_and_body_leave_in_one_write() -> None:
    writes, _ = asyncio.run(coalesced(HEAD, b"ok", HEAD, b"no", None))
    assert writes == [HEAD + b"ok", HEAD + b"no"]


def test_a_big_body_is_not_copied_to_join_its_headers() -> None:
    big = b"x" * (COALESCE_MAX_BYTES + 1)
    writes, _ = asyncio.run(coalesced(HEAD, big, None))
    assert writes == [HEAD, big]


def test_headers_alone_leave_at_the_end_of_the_turn() -> None:
    # A streamed response: the client gets its headers before the first chunk exists.
    writes, _ = asyncio.run(coalesced(HEAD, None, b"chunk", None))
    assert writes == [HEAD, b"chunk"]


def test_continue_and_plain_writes_are_not_held() -> None:
    writes, _ = asyncio.run(coalesced(b"HTTP/1.1 100 Continue\r\n\r\n", b"body"))
    assert writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"body"]


def test_close_sends_what_is_held_first() -> None:
    async def run() -> tuple[list[bytes], bool]:
        raw = Recorder()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n{}")
        transport.close()
        await asyncio.sleep(0)
        return raw.writes, raw.closed

    assert asyncio.run(run()) == ([b"HTTP/1.1 408 Request Timeout\r\n\r\n{}"], True)


def test_the_rest_of_the_transport_is_the_wrapped_one() -> None:
    async def run() -> Any:
        transport = CoalescingTransport(Recorder(), asyncio.get_running_loop())  # type: ignore[arg-type]
        return transport.get_extra_info("peername"), transport.is_closing()

    assert asyncio.run(run()) == (("127.0.0.1", 1), False)


class HalfClosable(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.eof = False
        self.reading = False  # uvicorn paused reading while the unread body piled up

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def is_reading(self) -> bool:
        return self.reading

    def resume_reading(self) -> None:
        self.reading = True


def test_a_close_while_the_request_arrives_lingers_until_the_client_stops_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(protocol, "LINGER_IDLE_S", 0.05)

    async def run() -> list[tuple[bool, bool, bool]]:
        raw = HalfClosable()
        transport = CoalescingTransport(raw, asyncio.get_running_loop(), lambda: True)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\n\r\n{}")
        transport.close()
        states = [(raw.eof, raw.closed, transport.is_closing())]
        assert raw.reading  # else the client's bytes would never come, and the idle timer would cut it
        for _ in range(3):  # the client goes on sending: each chunk restarts the idle timer
            await asyncio.sleep(0.03)
            transport.discarded()
        states.append((raw.eof, raw.closed, transport.is_closing()))
        await asyncio.sleep(0.1)
        states.append((raw.eof, raw.closed, transport.is_closing()))
        assert raw.writes == [b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\n\r\n{}"]
        return states

    assert asyncio.run(run()) == [(True, False, True), (True, False, True), (True, True, True)]


def test_lingering_ends_after_its_total_even_while_bytes_come(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "LINGER_TOTAL_S", 0.05)

    async def run() -> bool:
        raw = HalfClosable()
        transport = CoalescingTransport(raw, asyncio.get_running_loop(), lambda: True)  # type: ignore[arg-type]
        transport.close()
        for _ in range(5):
            await asyncio.sleep(0.02)
            transport.discarded()
        return raw.closed

    assert asyncio.run(run())


def test_a_close_between_requests_is_immediate() -> None:
    async def run() -> tuple[bool, bool]:
        raw = HalfClosable()
        transport = CoalescingTransport(raw, asyncio.get_running_loop(), lambda: False)  # type: ignore[arg-type]
        transport.close()
        return raw.eof, raw.closed

    assert asyncio.run(run()) == (False, True)


def test_a_stopping_worker_ends_the_linger_at_once() -> None:
    async def run() -> tuple[bool, bool]:
        raw = HalfClosable()
        transport = CoalescingTransport(raw, asyncio.get_running_loop(), lambda: True)  # type: ignore[arg-type]
        transport.close()
        lingering = not raw.closed
        transport.end_linger()
        return lingering, raw.closed

    assert asyncio.run(run()) == (True, True)


class EofStrict(HalfClosable):
    """As uvloop's transport: a write after write_eof raises."""

    def write(self, data: bytes) -> None:
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        super().write(data)


def test_a_late_answer_on_a_lingering_connection_is_dropped() -> None:
    """A request whose own body fails to parse while its app runs gets the 400 at once, and the connection closes
    (we linger); the app's answer comes later and is dropped: it was an 'Unhandled error' and a 500 in the log
    (found by fuzzing, then with the request in flight before a malformed one, which now waits for it)."""

    async def run() -> list[bytes]:
        raw = EofStrict()
        transport = CoalescingTransport(raw, asyncio.get_running_loop(), lambda: True)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
        transport.close()
        transport.write(HEAD)
        transport.write(b"{}")
        await asyncio.sleep(0)
        transport.end_linger()
        return raw.writes

    assert asyncio.run(run()) == [b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n"]
