"""runtime.http.protocol.CoalescingTransport: a response's headers leave with its body, in one write."""

from __future__ import annotations

import asyncio
from typing import Any

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
