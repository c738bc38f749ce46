"""HTTP request counts and latency by route template and status (the metrics live in :mod:`runtime.metrics`)."""

from __future__ import annotations

import time

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.metrics import CLIENT_CLOSED, record_http

# A method is client input (any token): others are counted as one, so that a client cannot add series.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"))


class MetricsMiddleware:
    """Counts every HTTP request by its route template (bounded label values) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], str] = {}  # (method, path) -> route template

    def _route(self, scope: Scope) -> str:
        key = (scope["method"], scope["path"])
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        template = None
        partial = "unmatched"
        for route in scope["app"].routes if "app" in scope else ():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                template = str(getattr(route, "path", "other"))
                break
            if match == Match.PARTIAL and partial == "unmatched":
                # The path matches, the method does not: the route's 405, counted under its template.
                partial = str(getattr(route, "path", "other"))
        template = template or partial
        if len(self._routes) < 4096:  # paths are client input: bound the cache
            self._routes[key] = template
        return template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
            # Returning without an answer: the client left and its request was cancelled (nginx's 499).
            status = status or CLIENT_CLOSED
        finally:
            status = status or 500
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            record_http(method, self._route(scope), status, time.perf_counter() - started)
