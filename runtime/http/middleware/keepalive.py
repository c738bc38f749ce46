"""Keep-alive fairness: connections older than ``--keepalive-max-age`` seconds are closed after a response.

Gunicorn's workers share one listening socket, so a worker only gets the connections it accepts.
Keep-alive clients stay on the worker they first reached: after a worker restarts, its replacement
would get no traffic until clients reconnect. Answering with ``Connection: close`` once a connection
is older than the limit makes every client reconnect within that many seconds, and the new
connections spread over all workers again.
"""

from __future__ import annotations

import collections
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_TRACKED = 65536


class ConnectionAgeMiddleware:
    def __init__(self, app: ASGIApp, max_age_s: float) -> None:
        self.app = app
        self.max_age_s = max_age_s
        # (client address, port) -> when the connection was first seen; one entry per open connection.
        self._first_seen: collections.OrderedDict[tuple[str, int], float] = collections.OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if not client or self.max_age_s <= 0:
            await self.app(scope, receive, send)
            return
        key = (client[0], client[1])
        now = time.monotonic()
        first = self._first_seen.setdefault(key, now)
        if now - first < self.max_age_s:
            if len(self._first_seen) > MAX_TRACKED:
                self._first_seen.popitem(last=False)
            await self.app(scope, receive, send)
            return
        del self._first_seen[key]
        await self.app(scope, receive, closing(send))


def closing(send: Send) -> Send:
    """``send`` that answers with ``Connection: close``: the client reconnects, possibly to another worker."""

    async def send_close(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_close
