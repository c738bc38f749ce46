"""uvicorn's httptools protocol with the limits it lacks: header count and size, URL length, read timeouts.

httptools accepts any number of headers of any size, and uvicorn arms no timer until a first
response is sent: a client that opens a connection and stalls, or sends ``Content-Length: 1000``
and 10 bytes, holds it forever. This subclass answers like Gunicorn's own parser (431 for too many
or too large header fields, 414 for a long request line) and closes a connection whose headers are
not complete ``header_timeout_s`` after they began, or whose body sends nothing for
``body_timeout_s`` (nginx's client_header_timeout and client_body_timeout), with a 408.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from runtime.settings import Settings

logger = logging.getLogger("runtime.protocol")


@dataclass(frozen=True)
class Limits:
    max_header_count: int
    max_header_bytes: int  # one header line: name and value
    max_url_bytes: int
    header_timeout_s: float
    body_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_header_count,
            settings.max_header_bytes,
            settings.max_url_bytes,
            settings.header_timeout_s,
            settings.body_timeout_s,
        )

    @property
    def header_section_bytes(self) -> int:
        """The most bytes a request may send before its headers end (the parser buffers that much)."""
        return self.max_url_bytes + self.max_header_count * (self.max_header_bytes + 4) + 1024


# The scope extension under which this protocol offers a request's :class:`ConnectionWatch`.
CONNECTION_WATCH = "runtime.connection_watch"
# A first body chunk up to this size is joined to the held header block; a bigger one is not copied for that.
COALESCE_MAX_BYTES = 64 << 10
# A connection closed while its request is still arriving (a body refused unread, then ``Connection: close``)
# lingers, as nginx's does: closed at once, the kernel would answer the client's next bytes with a reset, and
# the client would lose the response it has not read yet. It stops writing, discards what comes, and closes
# when the client does, after LINGER_IDLE_S without a byte, or after LINGER_TOTAL_S in all.
LINGER_IDLE_S = 5.0
LINGER_TOTAL_S = 10.0


class ConnectionWatch:
    """What to call when a connection is lost: the admission middleware cancels the requests nobody awaits.

    Told by the protocol itself, so that no request needs a task of its own reading the server's
    ``receive`` to notice a disconnect (a timer, a task and a resume_reading per request).
    """

    __slots__ = ("callbacks", "loop", "opened")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.callbacks: set[Callable[[], None]] = set()
        self.opened = time.monotonic()  # the connection's age, for --keepalive-max-age
        # The connection's loop, for asyncio.current_task(loop): without it, get_running_loop() makes a
        # getpid system call on Python 3.11.
        self.loop = loop

    def lost(self) -> None:
        callbacks, self.callbacks = self.callbacks, set()
        for callback in callbacks:
            callback()


class Rejected(Exception):
    """Raised from a parser callback: httptools stops, uvicorn calls send_400_response, we answer this."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def error_bytes(status: int, reason: str, message: str, path: bytes) -> bytes:
    """A complete response that closes the connection, with the error body of the route family."""
    key = "error" if path.startswith(b"/v2") else "message"
    body = json.dumps({key: message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class CoalescingTransport:
    """The connection's transport, which sends a response's header block together with its first body chunk.

    uvicorn writes the headers when the app sends ``http.response.start`` and the body with the next
    message: two ``send`` system calls per response, and on loopback or a fast network two wake-ups of
    the client, which reads the headers and waits again (a third of a worker's CPU per tiny request,
    and about 0.05 ms at c=1). A write that starts a response is held until the next write or the end
    of this turn of the event loop (a streamed body's headers still leave at once), or a close.

    ``arriving`` says whether the request is still arriving: then :meth:`close` lingers (see LINGER_IDLE_S).
    """

    __slots__ = (
        "_arriving",
        "_flush",
        "_held",
        "_last_byte",
        "_linger_until",
        "_loop",
        "_timer",
        "_transport",
        "lingering",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        arriving: Callable[[], bool] = lambda: False,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""
        self._flush: asyncio.Handle | None = None
        self._arriving = arriving
        self.lingering = False
        self._linger_until = self._last_byte = 0.0
        self._timer: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.lingering:
            # Closed for writing (write_eof) after an answer that ended the connection, such as uvicorn's 400 for
            # a malformed pipelined request: an earlier request's late answer is dropped, as asyncio drops
            # writes to a closing transport (uvloop raised "Cannot call write() after write_eof()").
            return
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
            held, self._held = self._held, b""
            if len(data) <= COALESCE_MAX_BYTES:
                data = held + data
            else:
                self._transport.write(held)
        elif data[:9] == b"HTTP/1.1 " and data[9:13] != b"100 ":  # a 100 Continue leaves at once
            self._held = bytes(data)
            self._flush = self._loop.call_soon(self._send_held)
            return
        self._transport.write(data)

    def _send_held(self) -> None:
        self._flush = None
        held, self._held = self._held, b""
        if not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._send_held()
        if self.lingering:
            return
        if self._transport.is_closing() or not self._arriving() or not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        self._transport.write_eof()  # after what is buffered: the client reads the whole response, then EOF
        if not self._transport.is_reading():  # uvicorn paused it while the unread body piled up
            self._transport.resume_reading()
        now = self._loop.time()
        self._linger_until, self._last_byte = now + LINGER_TOTAL_S, now
        self._timer = self._loop.call_later(min(LINGER_IDLE_S, LINGER_TOTAL_S), self._linger_due)

    def discarded(self) -> None:
        """Bytes came while lingering (and were dropped)."""
        self._last_byte = self._loop.time()

    def _linger_due(self) -> None:
        # Decided after this turn's reads: a server that was too busy to read is not a client that went quiet.
        self._timer = self._loop.call_soon(self._linger_decide)

    def _linger_decide(self) -> None:
        now = self._loop.time()
        due = min(self._last_byte + LINGER_IDLE_S, self._linger_until)
        if now >= due:
            self.end_linger()
        else:
            self._timer = self._loop.call_later(due - now, self._linger_due)

    def end_linger(self) -> None:
        self.lost()
        self._transport.close()

    def lost(self) -> None:
        """The connection is gone: no linger timer outlives it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # the rest of asyncio.Transport, as it is
        return getattr(self._transport, name)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._rejected: Rejected | None = None
        self._in_headers = True  # a new connection is waiting for its first request's headers
        self._in_body = False  # headers complete, body not yet
        self._header_bytes = 0
        self._header_count = 0
        self._timer: asyncio.TimerHandle | None = None
        self.watch = ConnectionWatch(self.loop)
        # The answer to a request that failed to parse, held until the ``_owed`` requests before it are answered.
        self._deferred: Callable[[], None] | None = None
        self._owed = 0

    # Timers: one at a time, for the headers of the current request or the idle gap in its body.
    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, what: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if what == "body" and self.flow.read_paused:
            # We stopped reading (the app has not taken the body yet): the client is not the one stalling.
            self._arm(self.limits.body_timeout_s, "body")
            return
        seconds = self.limits.header_timeout_s if what == "headers" else self.limits.body_timeout_s
        logger.info("Closing a connection from %s: no complete request %s within %g s", self.client, what, seconds)
        if self.cycle is None or not self.cycle.response_started:
            message = f"The request {what} did not arrive within {seconds:g} s."
            self.transport.write(error_bytes(408, "Request Timeout", message, self.url if self.scope else b""))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.coalescing = CoalescingTransport(transport, self.loop, self._arriving)
        self.transport = self.coalescing  # type: ignore[assignment]
        self._arm(self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.coalescing.lost()
        super().connection_lost(exc)  # marks the request disconnected first: its receive() says so
        self.watch.lost()

    def shutdown(self) -> None:
        if self.coalescing.lingering:  # the worker is stopping: the rest of a refused request is not waited for
            self.coalescing.end_linger()
            return
        super().shutdown()

    def _arriving(self) -> bool:
        """Whether the current request has bytes still to come: its body, or the rest of its headers."""
        return self._in_body or (self._in_headers and self._header_bytes > 0)

    def data_received(self, data: bytes) -> None:
        if self.coalescing.lingering:
            self.coalescing.discarded()  # the rest of a request already answered (and closed)
            return
        if self._deferred is not None:
            return  # bytes after a request that failed to parse: the connection closes once it is answered
        if self._in_headers:
            if self._header_bytes > self.limits.header_section_bytes:
                # Bytes the parser holds before calling on_header: refuse before a huge field is buffered.
                self._reject(Rejected(431, "Request Header Fields Too Large", "The request headers are too large."))
                return
            self._header_bytes += len(data)
        super().data_received(data)
        # Timers are armed once the chunk is parsed, and only for a request still waiting for bytes: a request
        # that arrives whole (the common case) arms none, instead of two call_later and two cancel.
        if self.transport.is_closing():
            return
        if self._in_body:
            if self.limits.body_timeout_s:
                self._arm(self.limits.body_timeout_s, "body")  # restarts the idle-gap timer on every chunk
        elif self._in_headers and self._header_bytes and self._timer is None:
            self._arm(self.limits.header_timeout_s, "headers")

    def _reject(self, rejected: Rejected) -> None:
        self._rejected = rejected
        self.send_400_response(rejected.message)

    def send_400_response(self, msg: str) -> None:
        rejected, self._rejected = self._rejected, None
        self._disarm()
        if rejected is None:
            answer = functools.partial(super().send_400_response, msg)
        else:
            logger.info("Refused a request from %s: %d %s", self.client, rejected.status, rejected.message)
            response = error_bytes(rejected.status, rejected.reason, rejected.message, self.url or b"")
            answer = functools.partial(self._write_and_close, response)
        owed = self._answers_owed()
        if owed:
            # HTTP/1.1 answers in order: a client that pipelined takes the first answer for its first request.
            # This one waits for the answers of the requests before it; nothing more is read meanwhile.
            self._deferred, self._owed = answer, owed
            self.flow.pause_reading()
            return
        answer()

    def _write_and_close(self, response: bytes) -> None:
        self.transport.write(response)
        self.transport.close()

    def _answers_owed(self) -> int:
        """How many requests before the one that failed to parse still await their answers."""
        cycles = [cycle for cycle, _ in self.pipeline]  # queued behind the one running, the latest first
        if self._in_body and self.cycle is not None:
            # Its body failed to parse: this request has a cycle. Queued, it never runs (answered by the error).
            if self.cycle in cycles:
                self.pipeline.remove(self.pipeline[cycles.index(self.cycle)])
                return len(self.pipeline) + 1  # the queued ones before it, and the one running
            return 0  # it is the one running: nothing before it is unanswered
        if self.pipeline:
            return len(self.pipeline) + 1
        return 1 if self.cycle is not None and not self.cycle.response_complete else 0

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next queued request, if any
        if self._deferred is not None:
            self._owed -= 1
            if self._owed <= 0:
                answer, self._deferred = self._deferred, None
                answer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {CONNECTION_WATCH: self.watch}  # type: ignore[dict-item]
        self._in_headers = True
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._rejected = Rejected(
                414, "URI Too Long", f"The request URL exceeds {self.limits.max_url_bytes} bytes."
            )
            raise self._rejected

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            message = f"The request has more than {self.limits.max_header_count} header fields."
        elif len(name) + len(value) > self.limits.max_header_bytes:
            message = f"The header field {name[:64].decode('latin-1')!r} exceeds {self.limits.max_header_bytes} bytes."
        else:
            super().on_header(name, value)
            return
        self._rejected = Rejected(431, "Request Header Fields Too Large", message)
        raise self._rejected

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._in_body = True
        self._header_bytes = 0
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()
        # The next request's headers are timed from their first byte (the keep-alive timer runs until then).
        self._in_headers = True


def protocol_factory(settings: Settings) -> Any:
    """What uvicorn's ``Config(http=...)`` takes: a callable that builds one protocol per connection."""
    return functools.partial(LimitedHttpToolsProtocol, limits=Limits.from_settings(settings))
