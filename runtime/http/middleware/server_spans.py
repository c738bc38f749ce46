"""The OpenTelemetry server span of each request (``POST /score``); spans are set up in :mod:`runtime.tracing`."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime import tracing


class TracingMiddleware:
    """The server span of each request (``POST /score``), continuing the trace of an incoming ``traceparent``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        ids = scope.get("state", {}).get("request_ids")
        attributes: dict[str, Any] = {"http.request.method": scope["method"], "url.path": scope["path"]}
        if ids is not None:
            attributes["azureml.request_id"] = ids.request_id
        span = tracing.server_span(scope["method"], carrier, attributes)
        if span is None:  # tracing shut down since the check above
            await self.app(scope, receive, send)
            return
        # Named by the route template once routing is done (bounded names, as OpenTelemetry asks).
        with span as current:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    route = getattr(scope.get("route"), "path", None)
                    if route:
                        current.update_name(f"{scope['method']} {route}")
                        current.set_attribute("http.route", route)
                    status = int(message["status"])
                    current.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        current.set_status(trace.StatusCode.ERROR)
                await send(message)

            await self.app(scope, receive, send_traced)
