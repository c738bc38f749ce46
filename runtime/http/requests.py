"""What every route reads from a request: the app's state and the body (shared by the Azure ML and v2 routes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

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


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {int(declared)} bytes exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)
