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

from runtime.http.protocol import CONNECTION_WATCH, ConnectionWatch

MAX_TRACKED = 65536


class ConnectionAgeMiddleware:
    def __init__(self, app: ASGIApp, max_age_s: float) -> None:
        self.app = app
        self.max_age_s = max_age_s
        # Under another server than ours (no ConnectionWatch to tell a connection's age): (client address,
        # port) -> when the connection was first seen, one entry per connection.
        self._first_seen: collections.OrderedDict[tuple[str, int], float] = collections.OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if not client or self.max_age_s <= 0:
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        watch: ConnectionWatch | None = scope.get("extensions", {}).get(CONNECTION_WATCH)
        if watch is not None:
            # The connection's own clock: a new connection from a port an old one used is new.
            old = now - watch.opened >= self.max_age_s
        else:
            key = (client[0], client[1])
            old = now - self._first_seen.setdefault(key, now) >= self.max_age_s
            if old:
                del self._first_seen[key]
            elif len(self._first_seen) > MAX_TRACKED:
                self._first_seen.popitem(last=False)
        await self.app(scope, receive, closing(send) if old else send)


def closing(send: Send) -> Send:
    """``send`` that answers with ``Connection: close``: the client reconnects, possibly to another worker."""

    async def send_close(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_close
