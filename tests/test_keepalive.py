"""runtime.http.middleware.keepalive: connections older than --keepalive-max-age are answered with Connection: close."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from runtime.http.middleware.keepalive import ConnectionAgeMiddleware
from runtime.http.protocol import CONNECTION_WATCH, ConnectionWatch


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def connection_header(middleware: ConnectionAgeMiddleware, scope: dict[str, Any]) -> bytes | None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "http", **scope}, receive, send))
    return dict(sent[0]["headers"]).get(b"connection")


def test_the_connection_age_comes_from_the_connection_not_its_client_port() -> None:
    middleware = ConnectionAgeMiddleware(ok, max_age_s=1)
    old, new = ConnectionWatch(), ConnectionWatch()
    old.opened -= 5
    client = ("10.0.0.7", 40000)  # a proxy's port, reused by the new connection
    assert connection_header(middleware, {"client": client, "extensions": {CONNECTION_WATCH: old}}) == b"close"
    assert connection_header(middleware, {"client": client, "extensions": {CONNECTION_WATCH: new}}) is None


def test_without_a_connection_watch_the_age_is_counted_per_client_address() -> None:
    middleware = ConnectionAgeMiddleware(ok, max_age_s=0.05)
    client = {"client": ("127.0.0.1", 40001)}
    assert connection_header(middleware, client) is None
    asyncio.run(asyncio.sleep(0.06))
    assert connection_header(middleware, client) == b"close"
    assert connection_header(middleware, client) is None  # the client reconnected: a new connection


def test_an_age_of_zero_never_closes() -> None:
    middleware = ConnectionAgeMiddleware(ok, max_age_s=0)
    old = ConnectionWatch()
    old.opened -= 3600
    assert connection_header(middleware, {"client": ("127.0.0.1", 1), "extensions": {CONNECTION_WATCH: old}}) is None
