"""CORS for ``AML_CORS_ORIGINS``, exactly as azmlinfsrv 1.5.1 does it (flask-cors with its defaults).

azmlinfsrv calls ``flask_cors.CORS(blueprint, methods=["GET", "POST"], origins=...)``: every
request header may be asked for (``allow_headers="*"``, so a preflight asking for
``Authorization`` passes), preflights are not answered here but reach the route (``/score``
answers OPTIONS with 200, a ``@rawhttp`` run() sees it), and the CORS headers are added to
the route's response. Origins are literal (case-insensitive) or regular expressions
(when they contain one of ``*\\]?$^[]()``); ``*`` allows every origin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = "GET, POST"
_REGEX_HINTS = frozenset("*\\]?$^[]()")

Pattern = str | re.Pattern[str]


def _pattern(origin: str) -> Pattern:
    origin = ".*" if origin == "*" else origin
    return re.compile(origin, re.IGNORECASE) if not _REGEX_HINTS.isdisjoint(origin) else origin


def _matches(value: str, patterns: Sequence[Pattern]) -> bool:
    return any(p.match(value) if isinstance(p, re.Pattern) else p.casefold() == value.casefold() for p in patterns)


class CorsPolicy:
    """flask-cors' ``get_cors_headers`` for azmlinfsrv's options."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.allow_all = "*" in origins or ".*" in origins
        self.origins = [_pattern(o) for o in origins]
        literal = sorted(o for o in self.origins if isinstance(o, str))
        # always_send: a request without Origin still gets the header (flask-cors sends the first, sorted).
        self.without_origin = "*" if self.allow_all else (literal[0] if literal else None)
        self.vary = len(self.origins) > 1 or any(isinstance(o, re.Pattern) for o in self.origins)

    def headers(self, request: Headers, method: str) -> list[tuple[str, str]]:
        origin = request.get("origin")
        if origin:
            if not _matches(origin, self.origins):
                return []
            allowed = origin
        elif self.without_origin is None:
            return []
        else:
            allowed = self.without_origin
        out = [("Access-Control-Allow-Origin", allowed)]
        if request.get("access-control-request-private-network") == "true":
            out.append(("Access-Control-Allow-Private-Network", "false"))
        wanted = request.get("access-control-request-method", "").upper()
        # flask-cors tests membership in the string "GET, POST", so that is what is tested here.
        if method == "OPTIONS" and wanted and wanted in METHODS:
            asked = request.get("access-control-request-headers")
            if asked:
                names = sorted(h.strip() for h in asked.split(","))
                if names:
                    out.append(("Access-Control-Allow-Headers", ", ".join(names)))
            out.append(("Access-Control-Allow-Methods", METHODS))
        if allowed != "*" and self.vary:
            out.append(("Vary", "Origin"))
        return out


class CorsMiddleware:
    """Adds the CORS headers to every response that does not set its own ``Access-Control-Allow-Origin``."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.policy = CorsPolicy(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.policy.headers(Headers(scope=scope), scope["method"])
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "access-control-allow-origin" not in headers:
                    for name, value in extra:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_cors)
