"""Request paths as azmlinfsrv matches them: leading slashes merged (``//score`` is ``/score``).

A client that joins a base URL ending in ``/`` with ``/score`` sends ``//score``; azmlinfsrv (Gunicorn and
Werkzeug) serves it, so it is served here too. Other repeated slashes, and a trailing one, stay a 404 there
and here.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class LeadingSlashesMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path.startswith("//"):
            scope = {**scope, "path": "/" + path.lstrip("/")}
            raw: bytes | None = scope.get("raw_path")
            if raw is not None:
                scope["raw_path"] = b"/" + raw.lstrip(b"/")
        await self.app(scope, receive, send)
