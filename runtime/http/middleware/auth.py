"""Optional authentication: an API key or Bearer token on /score, /v2 and /metrics; health routes stay open.

``runtime serve --auth-key KEY`` (or ``RUNTIME_AUTH_KEY``, or ``--auth-key-file`` with one key a
line, for key rotation) makes those routes require ``Authorization: Bearer KEY`` or
``x-api-key: KEY``. Every accepted key is compared in constant time, so the answer's timing does
not reveal how much of a guess was right. Without a key nothing is checked, and the swagger
document declares no security (runtime/azureml/swagger.py).
"""

from __future__ import annotations

import hmac
import logging

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("runtime.auth")

PROTECTED = ("/score", "/v2", "/metrics")
OPEN = ("/v2/health/",)


def is_protected(path: str) -> bool:
    if path.startswith(OPEN):
        return False
    return any(path == p or path.startswith(p + "/") for p in PROTECTED)


def presented_key(headers: Headers) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key")


def matches(candidate: str, keys: tuple[bytes, ...]) -> bool:
    given = candidate.encode("utf-8", "surrogateescape")
    found = False
    for key in keys:  # every key is compared: which one matched does not show in the timing either
        found |= hmac.compare_digest(given, key)
    return found


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...], cors: bool = False) -> None:
        self.app = app
        self.keys = tuple(k.encode("utf-8") for k in keys)
        # Browsers send CORS preflights without credentials (Fetch standard): with AML_CORS_ORIGINS they pass.
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.cors and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self.app(scope, receive, send)
            return
        key = presented_key(headers)
        if key is not None and matches(key, self.keys):
            await self.app(scope, receive, send)
            return
        logger.info("Refused %s %s: %s", scope["method"], scope["path"], "wrong key" if key else "no key")
        message = (
            "This endpoint requires a key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            if key is None
            else "The key is not valid."
        )
        field = "error" if scope["path"].startswith("/v2") else "message"
        response = JSONResponse({field: message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
