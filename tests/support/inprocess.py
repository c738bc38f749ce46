"""The app in this process: its lifespan (score.py's init) runs, requests go through httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from runtime.http.app import create_app
from runtime.settings import Settings


@contextlib.asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
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
