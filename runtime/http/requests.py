"""What every route reads from a request: the app's state and the body (shared by the Azure ML and v2 routes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope

from runtime.api import Binding
from runtime.azureml.entry import EntryScript
from runtime.azureml.swagger import Swagger
from runtime.context import InitContext
from runtime.dataplane import DataPlane
from runtime.errors import PayloadTooLarge
from runtime.executor import Executor
from runtime.http.health import WorkerHealth
from runtime.manager import PluginManager
from runtime.pipeline import Pipeline
from runtime.settings import Settings


@dataclass
class AppState:
    settings: Settings
    pm: PluginManager
    plane: DataPlane
    entry: EntryScript | None
    executor: Executor
    pipeline: Pipeline
    swagger: Swagger
    context: InitContext
    health: WorkerHealth = field(default_factory=WorkerHealth)
    binding: Binding | None = None  # runtime.infer()'s way to this app, once started


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.runtime
    return state


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's first value, ``name`` in lower case as the server gives names.

    One pass over the scope's list: ``request.headers`` builds a Headers object, and each of its lookups
    lower-cases and encodes the name again.
    """
    for key, value in scope["headers"]:
        if key == name:
            found: bytes = value
            return found
    return None


def first_header(request: Request, name: bytes) -> str | None:
    """:func:`header` of a request, as text."""
    value = header(request.scope, name)
    return None if value is None else value.decode("latin-1")


async def read_body(request: Request, limit: int, feed: Callable[[bytes], None] | None = None) -> bytes:
    """The whole body, or 413 as soon as the bytes sent are known to exceed ``limit``.

    With ``feed``, each chunk goes to it instead (a decoder), and the result is empty.
    """
    declared = header(request.scope, b"content-length") or b""
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {int(declared)} bytes exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []
    consume = chunks.append if feed is None else feed
    size = 0
    # request.stream()'s loop without its async generator (which the event loop registers and finalizes).
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            consume(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
