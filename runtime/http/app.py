"""The Starlette application one worker serves, and its start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runtime import api, logs, tracing
from runtime.azureml.entry import load_entry_script
from runtime.azureml.swagger import Swagger
from runtime.context import InitContext
from runtime.dataplane import DataPlane
from runtime.errors import STARTUP_EXIT_CODE, StartupError
from runtime.executor import Executor
from runtime.http import middleware, score, startup, v2, watchdog
from runtime.http.health import WorkerHealth, ready
from runtime.http.requests import AppState
from runtime.http.responses import INTERNAL_ERROR, error_response
from runtime.manager import PluginManager
from runtime.metrics import CLIENT_CLOSED, metrics_endpoint
from runtime.pipeline import Pipeline
from runtime.settings import Settings

logger = logging.getLogger("runtime.app")

# Werkzeug's wording, which azmlinfsrv returns.
NOT_FOUND = (
    "The requested URL was not found on the server. If you entered the URL manually please check your "
    "spelling and try again."
)
METHOD_NOT_ALLOWED = "The method is not allowed for the requested URL."


def build_state(settings: Settings) -> AppState:
    """Load plugins and the entry script (everything but ``init``)."""
    executor = Executor(settings.concurrency)
    pm = PluginManager(Executor(settings.hook_threads), trace=settings.trace_hooks)
    entry = (
        load_entry_script(settings.entry_path, settings.triton_url, settings.import_paths)
        if settings.entry_path
        else None
    )
    pm.register_all(settings, entry)
    plane = DataPlane(pm)
    pipeline = Pipeline(pm, plane, entry, executor, settings.timeout_ms)
    context = InitContext(settings=settings, plugin_manager=pm)
    swagger = Swagger(settings, entry.run if entry else None)
    return AppState(settings, pm, plane, entry, executor, pipeline, swagger, context)


def _only_model(pm: PluginManager) -> str | None:
    """The model hook-style scripts use when preprocess names none: the repository's only model."""
    names = {entry["name"] for entry in pm.model_index()}
    return names.pop() if len(names) == 1 else None


async def _stop(state: AppState) -> None:
    await state.pm.shutdown()
    state.executor.shutdown()
    state.pm.executor.shutdown()
    if state.binding is not None:
        api.unbind(state.binding)


def create_app(
    settings: Settings | None = None, exit_on_startup_error: bool = False, worker_process: bool = False
) -> Starlette:
    """The app one worker serves.

    With ``exit_on_startup_error`` (Gunicorn workers), a start-up error is logged as one clear message and
    the worker exits with code 3, which makes the master stop with code 3 too, as azmlinfsrv does.
    With ``worker_process`` (Gunicorn workers), the app owns its process: it watches SIGTERM to report
    draining, recycles itself with SIGTERM, and may interrupt an async run() that blocks the loop.
    """
    settings = settings or Settings.from_env()
    if worker_process:
        from runtime.http.server import stop_accepting, terminate_self

        health = WorkerHealth(stop_accepting, terminate_self)
    else:
        health = WorkerHealth()
    routes = [
        *score.routes(),
        Route("/ready", ready, methods=["GET"]),
        *v2.routes(),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logs.tag_records()
        logs.capture_print()
        state: AppState | None = None
        started = False
        try:
            tracing.setup(settings)
            with startup.interruptible() if exit_on_startup_error else contextlib.nullcontext():
                state = build_state(settings)
                state.health = health
                state.binding = api.bind(asyncio.get_running_loop(), state.plane)
                await state.pm.init(state.context)
                state.pipeline.default_model = _only_model(state.pm)
            started = True
        except StartupError as ex:
            logger.error("Start-up failed: %s", ex)
            if exit_on_startup_error:
                logging.shutdown()
                os._exit(STARTUP_EXIT_CODE)
            raise
        finally:
            if not started:  # any failure, in a process that goes on: release what start-up took
                try:
                    if state is not None:
                        await _stop(state)
                finally:
                    tracing.shutdown()
                    logs.release_print()  # print() is the process's again
        app.state.runtime = state
        if worker_process:
            health.watch_sigterm()
        entry_run = state.entry.run if state.entry is not None and state.entry.run_is_async else None
        loop_watchdog = watchdog.install(
            asyncio.get_running_loop(), settings.timeout_ms, entry_run, interrupt=worker_process
        )
        monitor = asyncio.get_running_loop().create_task(
            watchdog.monitor(health, state.executor, settings.max_worker_memory_mb), name="worker-monitor"
        )
        health.started = True
        logger.info("Worker ready: entry script %s, timeout %d ms", settings.entry_path, settings.timeout_ms)
        hook_style = state.entry is not None and state.entry.run is None
        startup.log_summary_once(settings, state.pm, routes, hook_style)
        try:
            yield
        finally:
            health.draining = True
            monitor.cancel()
            loop_watchdog.stop()
            await _stop(state)
            tracing.shutdown()
            logs.release_print()

    app = Starlette(
        routes=_scoring_first(routes),
        middleware=middleware.stack(settings, health),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, ClientDisconnect: _client_gone, Exception: _internal_error},
    )
    # /score/ is a 404, as in azmlinfsrv (and Triton for /v2/...): Starlette answered 307 to /score, no body.
    app.router.redirect_slashes = False
    return app


def _scoring_first(routes: list[Route]) -> list[Route]:
    """The routes in the order Starlette tries them: /score and v2 infer first (the paths do not overlap, so the
    order only decides how many path patterns a request is matched against: v2 infer tried 4 before its own)."""
    return sorted(routes, key=lambda route: route.path != "/score" and not route.path.endswith("/infer"))


def _error(request: Request, status: int, message: str) -> Response:
    """The error body of the route family: Triton's ``{"error"}`` under /v2, azmlinfsrv's ``{"message"}`` elsewhere."""
    if request.url.path.startswith("/v2"):
        return JSONResponse({"error": message}, status_code=status)
    return error_response(status, message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405 and request.method == "OPTIONS" and exc.headers:
        # Flask answers OPTIONS on every route itself (CORS preflights for / and /swagger.json pass).
        allow = f"{exc.headers.get('Allow', '')}, OPTIONS".lstrip(", ")
        return Response(b"", media_type="text/html", headers={"Allow": allow})
    message = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}.get(exc.status_code, exc.detail)
    response = _error(request, exc.status_code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection before its body arrived: nobody reads this answer, nothing failed here.
    logger.info("Client left before sending the whole request: %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("Unhandled error for %s %s", request.method, request.url.path, exc_info=exc)
    return _error(request, 500, INTERNAL_ERROR)
