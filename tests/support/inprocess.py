"""The app in this process: its lifespan (score.py's init) runs, requests go through httpx.ASGITransport."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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
