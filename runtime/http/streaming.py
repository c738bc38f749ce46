"""Streamed responses: a generator (sync or async) sent chunk by chunk.

* The scoring timeout covers the time to the first chunk: :meth:`StreamResponse.prime`
  fetches it before the status line is sent, so a script that fails or hangs before
  its first chunk still gets the usual 500 answer.
* Sync generators run in the worker's thread pool, one ``next()`` at a time, so a
  generator that blocks between chunks never blocks the event loop. An async generator
  runs in one task of its own, one chunk ahead of the response.
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


class _Raised:
    """What the async source raised, passed from its pump to the response."""

    def __init__(self, error: Exception) -> None:
        self.error = error


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
        self._queue: asyncio.Queue[Any] | None = None  # the async source's chunks, from its pump task
        self._pump_task: asyncio.Task[None] | None = None
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

    async def _pump(self, queue: asyncio.Queue[Any]) -> None:
        """The async source, run in one task of its own for its whole life, one chunk ahead of the response.

        Its own task: the response's (cancelled by a disconnect's anyio scope again at every await) never
        runs the source's clean-up, and the source keeps one task and one context from chunk to chunk
        (``asyncio.timeout`` or a context variable across its ``yield``). aclose() cancels this task once.
        """
        assert self._aiter is not None
        try:
            async for chunk in self._aiter:
                await queue.put(chunk)
            await queue.put(_END)
        except Exception as ex:
            await queue.put(_Raised(ex))
        finally:
            await self._close_source()

    async def _close_source(self) -> None:
        aclose = getattr(self._aiter, "aclose", None)
        try:
            if aclose is not None:
                await aclose()  # GeneratorExit at its yield, when it waits there (a pump cancelled at put)
        except Exception:
            logger.exception("Closing the response stream failed")

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end; :class:`StreamFailed` when the source raises."""
        try:
            if self._aiter is not None:
                if self._queue is None:
                    self._queue = asyncio.Queue(1)
                    self._pump_task = asyncio.get_running_loop().create_task(self._pump(self._queue))
                chunk = await self._queue.get()
                if isinstance(chunk, _Raised):
                    raise chunk.error
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
        closing: asyncio.Future[None]
        if self._pump_task is not None:
            # One CancelledError where the source waits; the pump's finally then closes it. Not awaited:
            # this caller may be cancelled itself (a disconnect), which would cut the source's clean-up short.
            closing = self._pump_task
            closing.cancel()
        elif self._aiter is not None:  # never started: nothing of it runs yet
            closing = asyncio.get_running_loop().create_task(self._close_source())
        else:
            # Not awaited: a next() may still run in its thread (a timeout, a disconnect); close after it.
            closing = asyncio.get_running_loop().run_in_executor(None, self._close_logged)
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)

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
