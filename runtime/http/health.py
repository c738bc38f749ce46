"""Truthful health: liveness, readiness, and the worker's own decision to be replaced.

Liveness (``GET /``, ``/v2/health/live``) means the process answers. Readiness
(``GET /ready``, ``/v2/health/ready``) is false until start-up (init and every
model's warm-up) is done, while draining after SIGTERM, and once the worker is
poisoned or recycling. A worker that must go (too many abandoned threads, too
much memory) asks for its own graceful shutdown with SIGTERM: the server stops
accepting connections, answers what is in flight, and Gunicorn starts a fresh
worker.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from runtime import metrics
from runtime.http.responses import error_response

logger = logging.getLogger("runtime.health")


class WorkerHealth:
    def __init__(
        self, stop_accepting: Callable[[], None] | None = None, terminate: Callable[[], None] | None = None
    ) -> None:
        """``stop_accepting`` and ``terminate``: what recycling does to the process (nothing in-process)."""
        self.started = False
        self.draining = False
        self.poisoned: str | None = None
        self._stop_accepting = stop_accepting
        self._terminate = terminate

    def not_ready_reason(self) -> str | None:
        """Why this worker should get no new traffic, or None when it is ready."""
        if not self.started:
            return "the worker is starting"
        if self.poisoned is not None:
            return f"the worker is being replaced: {self.poisoned}"
        if self.draining:
            return "the worker is draining after SIGTERM"
        return None

    def recycle(self, reason: str, label: str) -> None:
        """Take this worker out of rotation; :func:`runtime.http.watchdog.monitor` has it replaced.

        It stops accepting connections at once; until it exits it answers the requests on the connections
        it has with ``Connection: close``, so that keep-alive clients reconnect (to the other workers, or to
        the replacement) instead of meeting a connection closed under them.
        """
        if self.poisoned is not None:
            return
        self.poisoned = reason
        metrics.RECYCLES.labels(label).inc()
        logger.warning("Recycling worker %d: %s", os.getpid(), reason)
        if self._stop_accepting is not None:
            self._stop_accepting()

    def terminate(self) -> None:
        """Shut this worker down gracefully (in-flight requests are answered first)."""
        if self._terminate is not None:
            self._terminate()

    def watch_sigterm(self) -> None:
        """Mark the worker draining when SIGTERM arrives, then let the server's own handler drain it."""
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            self.draining = True
            if callable(previous):
                previous(sig, frame)

        signal.signal(signal.SIGTERM, on_sigterm)


async def not_ready_reason(request: Request) -> str | None:
    """Why this worker is not ready (its own state first, then every backend's), or None."""
    state = request.app.state.runtime  # runtime.http.requests.AppState (which holds a WorkerHealth)
    reason: str | None = state.health.not_ready_reason()
    if reason is None and not await state.pm.server_ready():
        reason = "a backend is not ready"
    return reason


async def ready(request: Request) -> Response:
    """``GET /ready``: the readiness probe for /score users (``GET /`` stays the liveness probe)."""
    reason = await not_ready_reason(request)
    if reason is None:
        return PlainTextResponse("Ready")
    return error_response(503, f"Not ready: {reason}")
