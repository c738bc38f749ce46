"""Streamed responses: a generator (sync or async) sent chunk by chunk.

* The scoring timeout covers the time to the first chunk: :meth:`StreamResponse.prime`
  fetches it before the status line is sent, so a script that fails or hangs before
  its first chunk still gets the usual 500 answer.
* Sync generators run in the worker's thread pool, one ``next()`` at a time, so a
  generator that blocks between chunks never blocks the event loop.
* When the client disconnects, or the response ends for any reason, the generator is
  closed (``GeneratorExit`` at its ``yield``, or for an async one waiting on something, one
  ``CancelledError`` there), so its ``finally`` blocks run, to the end: awaits included.
* A generator that raises after the first chunk cannot change the status any more:
  the error is logged with the request id and the connection is closed without the
  final chunk, so the client sees an incomplete body, never a complete-looking one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Send

from runtime.errors import ScoringTimeout
from runtime.executor import Executor

logger = logging.getLogger("runtime.http.streaming")

_END = object()
# Closes of sync generators still waiting for their thread; kept so they are not garbage-collected.
_closing: set[asyncio.Future[None]] = set()


def is_stream(value: object) -> bool:
    """A generator or other iterator (sync or async): the body of a streamed response."""
    if isinstance(value, str | bytes | bytearray | memoryview | Mapping):
        return False
    return isinstance(value, Iterator | AsyncIterator) or inspect.isasyncgen(value)


def encode(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"a streamed chunk must be str or bytes, got {type(chunk).__name__}")


class StreamFailed(Exception):
    """The generator raised while producing a chunk; carries the original."""


class ChunkStream:
    """The chunks of a sync or async iterable, as bytes; :meth:`aclose` closes the source."""

    def __init__(self, source: Iterable[Any] | AsyncIterable[Any]) -> None:
        self.source = source
        self.executor: Executor | None = None  # the worker's pool, once primed
        self._aiter: AsyncIterator[Any] | None = source.__aiter__() if isinstance(source, AsyncIterable) else None
        self._iter: Iterator[Any] | None = None if isinstance(source, AsyncIterable) else iter(source)
        # One next() or close() at a time: close() waits for a next() still running in its thread.
        self._lock = threading.Lock()
        self._closed = False
        self._pending: asyncio.Task[Any] | None = None  # the async source's next chunk, being produced
        self.chunks = 0
        self.text = False  # whether the first chunk was str

    def _next(self) -> Any:
        with self._lock:
            if self._closed or self._iter is None:
                return _END
            return next(self._iter, _END)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            close = getattr(self.source, "close", None)
            if callable(close):
                close()

    async def _pull(self) -> Any:
        assert self._aiter is not None
        try:
            return await self._aiter.__anext__()
        except StopAsyncIteration:
            return _END

    async def _anext(self) -> Any:
        # In a task of its own: when the response is cancelled (a disconnect cancels its anyio scope, which
        # cancels every await in it again and again), the source is not; aclose() ends it with one cancel.
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._pull())
        chunk = await asyncio.shield(self._pending)
        self._pending = None
        return chunk

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end; :class:`StreamFailed` when the source raises."""
        try:
            if self._aiter is not None:
                chunk = await self._anext()
            elif self.executor is not None:
                chunk = await self.executor.run(self._next)
            else:
                chunk = await asyncio.to_thread(self._next)
            if chunk is _END:
                self._closed = True  # exhausted: nothing left to close
                return None
            if not self.chunks:
                self.text = isinstance(chunk, str)
            self.chunks += 1
            return encode(chunk)
        except Exception as ex:
            raise StreamFailed(str(ex)) from ex

    async def aclose(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        # Not awaited: the caller may be cancelled (a disconnect), which would cut an async source's clean-up
        # short at its first await; and a sync source's next() may still run in its thread: close after it.
        closing: asyncio.Future[None] = (
            loop.create_task(self._aclose_source())
            if self._aiter is not None
            else loop.run_in_executor(None, self._close_logged)
        )
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)

    async def _aclose_source(self) -> None:
        try:
            if self._pending is not None and not self._pending.done():
                self._pending.cancel()  # a CancelledError at the source's await; its finally then runs as usual
                await asyncio.wait([self._pending])
            aclose = getattr(self._aiter, "aclose", None)
            if aclose is not None:
                await aclose()
        except Exception:
            logger.exception("Closing the response stream failed")

    def _close_logged(self) -> None:
        try:
            self._close()
        except Exception:
            logger.exception("Closing the response stream failed")


class StreamResponse(StreamingResponse):
    """A streamed response whose first chunk is fetched, under the scoring timeout, before it is sent."""

    def __init__(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.stream = ChunkStream(source)
        self._first: bytes | None = None
        self._primed = False
        super().__init__(self._chunks(), status_code, headers, media_type)

    @classmethod
    def wrap(cls, response: StreamingResponse) -> StreamResponse:
        """A Starlette StreamingResponse (from a hook) as a StreamResponse with the same status and headers."""
        if isinstance(response, StreamResponse):
            return response
        wrapped = cls(response.body_iterator, response.status_code)
        wrapped.raw_headers = list(response.raw_headers)
        wrapped.background = response.background
        return wrapped

    async def prime(self, executor: Executor, timeout_s: float, timeout_ms: int) -> None:
        """Fetch the first chunk within ``timeout_s``; the script's errors surface as for run()."""
        self.stream.executor = executor
        try:
            self._first = await asyncio.wait_for(self.stream.next(), max(timeout_s, 0.001))
        except (TimeoutError, asyncio.TimeoutError):
            await self.stream.aclose()
            raise ScoringTimeout(timeout_ms) from None
        except StreamFailed:
            await self.stream.aclose()
            raise
        self._primed = True
        if "content-type" not in self.headers:  # a bare generator: its chunks say what it is
            self.headers["content-type"] = (
                "text/plain; charset=utf-8" if self.stream.text else "application/octet-stream"
            )
        if self._first is None:
            await self.stream.aclose()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._primed:
            if self._first is None:
                return
            yield self._first
        while (chunk := await self.stream.next()) is not None:
            yield chunk

    async def stream_response(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except StreamFailed as ex:
            # Headers are out: no status can tell the client. Ending without the last chunk makes
            # the server close the connection, so the client sees an incomplete body.
            logger.error(
                "The response stream failed after %d chunks; closing the connection", self.stream.chunks, exc_info=ex
            )
        finally:
            await self.stream.aclose()
