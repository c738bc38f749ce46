"""Request ids: ``x-request-id``, ``x-ms-request-id``, ``x-ms-client-request-id`` and ``TraceId``.

A pure ASGI middleware (no per-request task switch): it validates the ids,
puts them in ``scope["state"]`` and adds the contract headers to every
response, as azmlinfsrv does for its routes.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.http.responses import INTERNAL_ERROR
from runtime.logs import ID_LIMIT, REQUEST_ID

logger = logging.getLogger("runtime.headers")

HEADER_LIMIT = ID_LIMIT
# The request headers this middleware reads, as the server gives their names (lower case).
_ID_HEADERS = {name.encode(): name for name in ("x-request-id", "x-ms-request-id", "x-ms-client-request-id", "traceid")}
# A version 4 UUID: the version nibble and the RFC 4122 variant bits over 128 random bits.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


class RequestIds:
    __slots__ = ("client_request_id", "legacy_client_request_id", "request_id")

    def __init__(self, request_id: str, legacy: str, client: str) -> None:
        self.request_id = request_id
        self.legacy_client_request_id = legacy
        self.client_request_id = client


# A generator of the runtime's own: score.py may seed the random module (init() often does, for reproducible
# results), which would give every worker the same ids, and each id would shift the script's own draws.
_RANDOM = random.Random()
os.register_at_fork(after_in_child=_RANDOM.seed)  # each Gunicorn worker draws its own ids


def new_request_id() -> str:
    """``str(uuid.uuid4())``, from a seeded generator (no getrandom system call, no UUID object): 3.5 µs, not 12.

    An id names a request in logs; it is not a secret.
    """
    digits = "%032x" % (_RANDOM.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def id_headers(scope: Scope) -> dict[str, str]:
    """The request's id headers, in one pass over its header list (the first of a repeated name, as Headers)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = _ID_HEADERS.get(name)
        if key is not None and key not in found:
            found[key] = value.decode("latin-1")
    return found


def parse_ids(headers: Mapping[str, str]) -> RequestIds | str:
    """The ids for a request, or the 431 message when one is too long."""
    request_id = headers.get("x-request-id") or new_request_id()
    if len(request_id) > HEADER_LIMIT:
        return f"x-request-id must not exceed {HEADER_LIMIT} characters"
    legacy = headers.get("x-ms-request-id", "")
    client = headers.get("x-ms-client-request-id", "")
    if legacy:
        client = client or legacy
    else:
        legacy = client or request_id
    if len(legacy) > HEADER_LIMIT or len(client) > HEADER_LIMIT:
        return f"x-ms-request-id and x-ms-client-request-id must not exceed {HEADER_LIMIT} characters"
    return RequestIds(request_id, legacy, client)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, server_version: str = "") -> None:
        self.app = app
        self.server_version = server_version.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = id_headers(scope)
        ids = parse_ids(headers)
        extra: list[tuple[bytes, bytes]] = []
        if self.server_version:
            extra.append((b"x-ms-server-version", self.server_version))
        trace_id = headers.get("traceid")
        if trace_id is not None and len(trace_id) > HEADER_LIMIT:
            ids = f"TraceId must not exceed {HEADER_LIMIT} characters"
        elif trace_id is not None:
            # Office services trace with their own header; it is echoed on every response.
            extra.append((b"TraceId", trace_id.encode("latin-1")))
        if isinstance(ids, str):
            request_id = headers.get("x-request-id") or new_request_id()
            if len(request_id) <= HEADER_LIMIT:  # azmlinfsrv names the request unless its own id is the long one
                extra.append((b"x-request-id", request_id.encode("latin-1")))
            await _send_json(send, 431, {"message": ids}, extra)
            return
        scope.setdefault("state", {})["request_ids"] = ids
        extra.append((b"x-request-id", ids.request_id.encode("latin-1")))
        if ids.legacy_client_request_id:
            extra.append((b"x-ms-request-id", ids.legacy_client_request_id.encode("latin-1")))
        if ids.client_request_id:
            extra.append((b"x-ms-client-request-id", ids.client_request_id.encode("latin-1")))

        started = False

        async def send_with_ids(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # The raw pairs, appended as they are (MutableHeaders would decode and re-encode each one).
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        # Every log record written while this request is served carries its id (runtime.logs).
        token = REQUEST_ID.set(ids.request_id)
        try:
            await self.app(scope, receive, send_with_ids)
        except Exception:
            if started:
                raise
            # Answered here, not by Starlette's outermost error handler, so that it carries the ids too.
            logger.exception("Unhandled error for %s %s", scope["method"], scope["path"])
            await _send_json(send, 500, {"message": INTERNAL_ERROR}, extra)
        finally:
            REQUEST_ID.reset(token)


async def _send_json(send: Send, status: int, body: Any, extra: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-ms-run-function-failed", b"False"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
