"""Apps in the test process: ``create_app(Settings(...))`` behind Starlette's TestClient (lifespan included).

No server process, no port: for the HTTP contracts (/score, /v2) that do not depend on Gunicorn,
signals or several workers. Several apps may run at once (``runtime.api`` binds per app).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from runtime.http.app import create_app
from runtime.settings import Settings
from tests.support.servers import free_port


class _LoopTransport(httpx.BaseTransport):
    """A sync transport that hands each request to ``httpx.ASGITransport`` on the app's event loop.

    Requests from several threads run concurrently on that loop, as on a server.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, app: Starlette) -> None:
        self.loop = loop
        self.asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()  # a generator body stays chunked: its headers are kept as they are

        async def send() -> httpx.Response:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, stream=httpx.ByteStream(body)
            )
            response = await self.asgi.handle_async_request(forwarded)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        return asyncio.run_coroutine_threadsafe(send(), self.loop).result()


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    async with app.router.lifespan_context(app):
        yield


# Longer than any start-up wait of the runtime's own (Triton's 120 s by default is not used by the tests' apps).
LIFESPAN_TIMEOUT_S = 180.0


def _within(future: concurrent.futures.Future[None], loop: asyncio.AbstractEventLoop, what: str) -> None:
    """The lifespan step's result; a step that hangs fails the test with the app's tasks and where each waits,
    instead of holding the whole run until CI's limit."""
    try:
        future.result(LIFESPAN_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        stacks: list[str] = []

        def dump() -> None:
            for task in asyncio.all_tasks(loop):
                out = io.StringIO()
                task.print_stack(file=out)
                stacks.append(out.getvalue())

        loop.call_soon_threadsafe(dump)
        time.sleep(1)
        future.cancel()
        tasks = "\n".join(stacks)
        raise AssertionError(f"the app's {what} took over {LIFESPAN_TIMEOUT_S:g} s; its tasks:\n{tasks}") from None


@contextlib.contextmanager
def app_client(**settings: Any) -> Iterator[httpx.Client]:
    """A started app for ``Settings(**settings)`` and a client for it; stopped (shutdown hooks run) on exit."""
    app = create_app(Settings(**settings))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="app-loop", daemon=True)
    thread.start()
    lifespan = _lifespan(app)
    try:
        _within(asyncio.run_coroutine_threadsafe(lifespan.__aenter__(), loop), loop, "start-up")
        try:
            with httpx.Client(transport=_LoopTransport(loop, app), base_url="http://testserver", timeout=60) as client:
                yield client
        finally:
            _within(asyncio.run_coroutine_threadsafe(lifespan.__aexit__(None, None, None), loop), loop, "shutdown")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def captured_logs(level: int = logging.DEBUG) -> Iterator[list[str]]:
    """Lines the runtime logs meanwhile, formatted as the server logs them."""
    from runtime.logs import formatter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(level)
    handler.setFormatter(formatter("text"))
    logger = logging.getLogger("runtime")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


class AppPool:
    """In-process apps started on first use and shared by the tests of a module that only read from them."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._apps: dict[tuple[tuple[str, str], ...], httpx.Client] = {}

    def get(self, **settings: Any) -> httpx.Client:
        key = tuple(sorted((name, repr(value)) for name, value in settings.items()))
        if key not in self._apps:
            self._apps[key] = self._stack.enter_context(app_client(**settings))
        return self._apps[key]

    def close(self) -> None:
        self._stack.close()
        self._apps.clear()


def startup_failure(**settings: Any) -> str:
    """What the runtime logs when an app for ``Settings(**settings)`` fails to start (it must fail).

    In this process start-up raises StartupError; a real server exits with code 3 on any of them.
    """
    import pytest

    from runtime.errors import StartupError

    with captured_logs() as lines, pytest.raises(StartupError), app_client(**settings):
        pass
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app for ``settings`` on the caller's event loop, for async tests (lifespan included)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


class InProcess:
    """:func:`client` for synchronous code (hypothesis tests are synchronous), on an event loop of its own.

    Fast enough for thousands of requests: no sockets, no Gunicorn.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._stack = contextlib.AsyncExitStack()
        self.http: httpx.AsyncClient | None = None

    def __enter__(self) -> InProcess:
        self.http = self.loop.run_until_complete(self._stack.enter_async_context(client(self.settings)))
        return self

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        assert self.http is not None
        return self.loop.run_until_complete(self.http.request(method, url, timeout=60, **kwargs))

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self._stack.aclose())
        self.loop.close()


@contextlib.contextmanager
def served(settings: Settings, timeout: float = 60) -> Iterator[str]:
    """``create_app(settings)`` served by uvicorn on a free loopback port, in a thread of this process.

    A real socket for the clients that need one (tritonclient, streamed bodies), without Gunicorn: for the
    HTTP contracts only. Workers, signals, the model engine and exit codes need ``runtime serve``.
    Yields the base URL; the app is stopped (shutdown hooks run) on exit.
    """
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, lifespan="on", log_config=None)
    server = uvicorn.Server(config)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as ex:
            failed.append(ex)

    thread = threading.Thread(target=run, name=f"served-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            raise RuntimeError(f"the app did not start serving on port {port}") from (failed[0] if failed else None)
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
