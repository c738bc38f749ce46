"""Every ASGI middleware a worker's app runs, and their order (:func:`stack`), in one place."""

from __future__ import annotations

import random

from starlette.middleware import Middleware

from runtime import tracing
from runtime.http.health import WorkerHealth
from runtime.http.middleware.admission import Admission, AdmissionMiddleware
from runtime.http.middleware.auth import AuthMiddleware
from runtime.http.middleware.cors import CorsMiddleware
from runtime.http.middleware.keepalive import ConnectionAgeMiddleware
from runtime.http.middleware.paths import LeadingSlashesMiddleware
from runtime.http.middleware.request_ids import RequestIdMiddleware
from runtime.http.middleware.request_metrics import MetricsMiddleware
from runtime.http.middleware.server_spans import TracingMiddleware
from runtime.settings import Settings


def stack(settings: Settings, health: WorkerHealth) -> list[Middleware]:
    """The middleware of one app, outermost first: each sees what the ones before it answered too."""
    # First: every other middleware (metrics' route labels, admission's routes) sees the path as it is served.
    middleware = [Middleware(LeadingSlashesMiddleware)]
    middleware.append(Middleware(MetricsMiddleware))  # counts every answer, the refusals below included
    if settings.cors_origins:
        # Outside the request ids: their 431 answers get the CORS headers too, as in azmlinfsrv.
        middleware.append(Middleware(CorsMiddleware, origins=settings.cors_origins))
    middleware.append(Middleware(RequestIdMiddleware, server_version=settings.server_version_header))
    if tracing.configured(settings):
        middleware.append(Middleware(TracingMiddleware))
    middleware += [
        Middleware(ConnectionAgeMiddleware, max_age_s=settings.keepalive_max_age_s),
        Middleware(
            AdmissionMiddleware,
            admission=Admission(
                settings.max_concurrent_requests,
                settings.max_body_bytes_in_flight,
                settings.max_requests + random.randint(0, settings.max_requests_jitter) if settings.max_requests else 0,
            ),
            health=health,
            max_body_bytes=settings.max_body_bytes,
        ),
    ]
    if settings.auth_keys:
        # Innermost: a refused key still gets request ids, metrics and CORS headers.
        middleware.append(Middleware(AuthMiddleware, keys=settings.auth_keys, cors=bool(settings.cors_origins)))
    return middleware
