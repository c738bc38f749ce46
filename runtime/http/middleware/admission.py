"""Admission control and cancellation for the scoring routes (/score and /v2/.../infer).

A pure ASGI middleware, per worker:

- at most ``max_concurrent_requests`` requests in progress; the next one gets a 429 with
  ``Retry-After`` at once (as Azure ML endpoints answer beyond ``max_concurrent_requests_per_instance``);
- at most ``max_body_bytes_in_flight`` bytes of request bodies held at once (declared lengths are
  reserved before the body is read; chunked bodies are counted as they arrive);
- a worker being replaced still answers, with ``Connection: close``, so clients move to its replacement;
- a client that disconnects cancels its request: queued work is dropped before it runs. Our HTTP
  protocol reports a lost connection itself (:class:`runtime.http.protocol.ConnectionWatch`); under
  another server a task per request reads ``receive`` for the disconnect once the body is in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime import metrics
from runtime.errors import Overloaded
from runtime.http.health import WorkerHealth
from runtime.http.middleware.keepalive import closing
from runtime.http.protocol import CONNECTION_WATCH, ConnectionWatch
from runtime.http.requests import header

logger = logging.getLogger("runtime.admission")

RETRY_AFTER_S = 1
# Without the protocol's ConnectionWatch, the disconnect watcher (a task per request) starts this long after
# the body is read: a request answered sooner never pays for it, and a client that leaves is noticed at most
# this much later.
WATCH_AFTER_S = 0.005


# The methods of /score that reach the script: run() gets GET's query as its input, as in azmlinfsrv (HEAD is
# GET's), and a @rawhttp run() every OPTIONS too.
SCORE_METHODS = frozenset(("GET", "HEAD", "POST", "OPTIONS"))


def scoring_route(scope: Scope) -> str | None:
    """The label of an admission-controlled request, or None for those always served (health, a 405...).

    CORS preflights are always served: refused, the browser reports a CORS failure, and the page never sees
    the 429 (and its Retry-After) that its request itself would get.
    """
    path: str = scope["path"]
    if path == "/score":
        method = scope["method"]
        if method == "OPTIONS" and header(scope, b"access-control-request-method") is not None:
            return None
        return "/score" if method in SCORE_METHODS else None
    if scope["method"] == "POST" and path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


class Admission:
    """This worker's counters: requests in progress and request-body bytes held."""

    def __init__(self, max_requests: int, max_body_bytes: int, lifetime_requests: int = 0) -> None:
        self.max_requests = max_requests
        self.max_body_bytes = max_body_bytes
        self.lifetime_requests = lifetime_requests  # recycle after this many requests (0: never)
        self.in_progress = 0
        self.body_bytes = 0
        self.served = 0

    def refusal(self, declared: int) -> tuple[str, str] | None:
        """(reason label, message) when a request declaring ``declared`` body bytes cannot be admitted now."""
        if self.in_progress >= self.max_requests:
            return (
                "max_concurrent_requests",
                f"Too many requests: this worker is serving {self.in_progress} requests, its limit "
                f"(max_concurrent_requests {self.max_requests}). Retry after {RETRY_AFTER_S} s.",
            )
        # One request is always admitted when no other body is held, so a cap below the body limit cannot
        # refuse a request forever.
        if self.body_bytes and self.body_bytes + declared > self.max_body_bytes:
            return "body_bytes", self.body_bytes_message()
        return None

    def body_bytes_message(self) -> str:
        return (
            f"Too many request bytes in flight: this worker holds {self.body_bytes} bytes of request bodies, "
            f"its limit is {self.max_body_bytes} (max_body_bytes_in_flight). Retry after {RETRY_AFTER_S} s."
        )


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, admission: Admission, health: WorkerHealth, max_body_bytes: int) -> None:
        self.app = app
        self.admission = admission
        self.health = health
        self.max_body_bytes = max_body_bytes  # larger bodies are refused with 413 by the route, unread

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admission = self.admission
        admission.served += 1
        if admission.served == admission.lifetime_requests:
            self.health.recycle(f"it served {admission.served} requests (--max-requests)", "max_requests")
        if self.health.poisoned is not None:
            send = closing(send)  # still served, but the client reconnects to the worker that replaces this one
        route = scoring_route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        reserved = declared if declared <= self.max_body_bytes else 0
        refusal = admission.refusal(reserved)
        if refusal is not None:
            await _refuse(send, route, 429, *refusal)
            return
        admission.in_progress += 1
        admission.body_bytes += reserved
        metrics.IN_PROGRESS.inc()
        try:
            reserved += await _Watched(self.app, scope, receive, send, admission, reserved).run(route)
        finally:
            admission.in_progress -= 1
            admission.body_bytes -= reserved
            metrics.IN_PROGRESS.dec()


class _Watched:
    """One admitted request: counts unannounced body bytes and cancels the handler when the client leaves."""

    def __init__(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, admission: Admission, reserved: int
    ) -> None:
        self.app, self.scope, self._receive, self._send = app, scope, receive, send
        self.admission = admission
        self.reserved = reserved
        self.counted = reserved == 0 and b"content-length" not in _header_names(scope)
        self.extra_bytes = 0  # bytes of a chunked body, reserved as they arrive
        self.body_done = False
        self.responded = False
        self.client_left = False
        self._gone: asyncio.Event | None = None  # made when first needed: most requests never need it
        self.watcher: asyncio.Task[None] | None = None
        self._watch_later: asyncio.TimerHandle | None = None
        self.connection: ConnectionWatch | None = scope.get("extensions", {}).get(CONNECTION_WATCH)
        self.task = asyncio.current_task(self.connection.loop if self.connection is not None else None)

    @property
    def gone(self) -> asyncio.Event:
        """Set when the client is gone."""
        if self._gone is None:
            self._gone = asyncio.Event()
        return self._gone

    async def run(self, route: str) -> int:
        """Serve the request; return the chunked-body bytes it reserved (for the caller to release)."""
        try:
            await self.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self.client_left:
                raise
            if self.task is not None and sys.version_info >= (3, 11):
                self.task.uncancel()
            metrics.CANCELLED.labels(route).inc()
            logger.info("Client left before the answer to %s %s: request cancelled", self.scope["method"], route)
        finally:
            if self.connection is not None:
                self.connection.callbacks.discard(self._connection_lost)
            if self._watch_later is not None:
                self._watch_later.cancel()
            if self.watcher is not None:
                self.watcher.cancel()
        return self.extra_bytes

    async def receive(self) -> Message:
        if self.body_done:
            await self.gone.wait()  # the watcher owns the server's receive now
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            if self.counted:
                self._reserve(len(message.get("body", b"")))
            if not message.get("more_body", False):
                self.body_done = True
                if self.connection is not None:
                    self.connection.callbacks.add(self._connection_lost)
                else:
                    self._watch_later = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start_watching)
        elif message["type"] == "http.disconnect":
            self.gone.set()
        return message

    def _reserve(self, size: int) -> None:
        admission = self.admission
        others = admission.body_bytes - self.reserved - self.extra_bytes
        if others and admission.body_bytes + size > admission.max_body_bytes:
            metrics.REJECTED.labels("body_bytes").inc()
            raise Overloaded(admission.body_bytes_message())
        admission.body_bytes += size
        self.extra_bytes += size

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.responded = True
        await self._send(message)

    def _start_watching(self) -> None:
        self._watch_later = None
        if not self.responded:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Wait for the server to report the connection gone; cancel the handler if nothing was answered."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._connection_lost()

    def _connection_lost(self) -> None:
        """Cancel the handler if nothing was answered yet."""
        self.gone.set()
        if not self.responded and self.task is not None:
            self.client_left = True
            self.task.cancel()


def _header_names(scope: Scope) -> set[bytes]:
    return {name for name, _ in scope["headers"]}


def _content_length(scope: Scope) -> int:
    declared = header(scope, b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else 0


async def _refuse(send: Send, route: str, status: int, reason: str, message: str) -> None:
    metrics.REJECTED.labels(reason).inc()
    # /score answers as Azure ML does ({"message"}); KServe v2 clients read {"error"}.
    body = json.dumps({"message": message} if route == "/score" else {"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    if route == "/score":
        headers.append((b"x-ms-run-function-failed", b"False"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
