"""Gunicorn with uvicorn workers: the process model of ``runtime serve``.

The master forks ``WORKER_COUNT`` workers; each builds the app, loads score.py
and runs ``init`` (as azmlinfsrv does). A worker that fails to start exits
with Gunicorn's boot-error code, and the master then stops with exit code 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from starlette.applications import Starlette
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from runtime import logs, scratch
from runtime.prctl import tie_to_parent
from runtime.settings import Settings

logger = logging.getLogger("runtime.server")


class RuntimeWorker(UvicornWorker):  # type: ignore[misc]
    # httptools parses faster than h11; the Server header is left out as azmlinfsrv's responses carry none
    # of uvicorn's.
    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": "httptools", "server_header": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from runtime.http.protocol import protocol_factory

        # httptools with header limits and read timeouts (runtime/http/protocol.py), from the master's Settings
        # (self.app is the ServerApplication, inherited through fork).
        self.config.http = protocol_factory(self.app.settings)

    def init_process(self) -> None:
        # Gunicorn's sync workers notice a dead master; uvicorn workers do not. Have the kernel tell us.
        tie_to_parent(signal.SIGTERM)
        # uvicorn's shutdown closes the listening socket through asyncio, then through Gunicorn's wrapper,
        # whose second close fails with EBADF and logs it: a harmless double close, not worth a line per stop.
        logging.getLogger("gunicorn.error").addFilter(_not_double_close)
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Gunicorn's quick shutdown (SIGINT or SIGQUIT to the master alone: `kill -INT`, a supervisor) reaches a
        # worker as SIGQUIT, which UvicornWorker only notes: uvicorn served on until the master's SIGKILL after
        # graceful_timeout (30 s, logged as "Perhaps out of memory?"). Stop as Ctrl-C in a terminal stops it.
        super().handle_exit(sig, frame)
        for server in _servers:
            server.should_exit = True

    async def _serve(self) -> None:
        # UvicornWorker._serve, keeping the server so that a recycling worker can stop accepting.
        self.config.app = self.wsgi
        server = Server(config=self.config)
        _servers.append(server)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


_servers: list[Server] = []  # this worker's uvicorn server (one)


def stop_accepting() -> None:
    """Stop taking new connections in this worker; the other workers (or its replacement) take them."""
    for server in _servers:
        for listener in server.servers:
            listener.close()


def terminate_self() -> None:
    """Graceful shutdown of this worker (uvicorn drains on SIGTERM); Gunicorn starts a replacement."""
    os.kill(os.getpid(), signal.SIGTERM)


def _not_double_close(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Error while closing socket [Errno 9]")


class RuntimeLogger(glogging.Logger):  # type: ignore[misc]
    """Gunicorn's and uvicorn's error and access logs in the runtime's format (request ids, JSON)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(logs.formatter(logs.current_format))


class _Arbiter(Arbiter):  # type: ignore[misc]
    """Gunicorn's master, remembering whether Ctrl-C (SIGINT) is what stopped it."""

    interrupted = False

    def handle_int(self) -> None:
        self.interrupted = True
        logging.getLogger("gunicorn.error").addFilter(_workers_interrupted_too)
        super().handle_int()


def _workers_interrupted_too(record: logging.LogRecord) -> bool:
    """Ctrl-C in a terminal signals the workers as well as the master: a worker that drained and then ended by
    that SIGINT (uvicorn raises it again once it has stopped) is shutting down as asked. Gunicorn warns of a
    worker ended by any signal other than SIGTERM or SIGKILL; here that is information, not a warning."""
    args = record.args if isinstance(record.args, tuple) else ()
    if record.levelno == logging.WARNING and record.msg == "Worker (pid:%s) was sent %s!" and args[1:] == ("SIGINT",):
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
    return True


class ServerApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def run(self) -> None:
        """BaseApplication.run, except that a master stopped by Ctrl-C raises KeyboardInterrupt (Gunicorn exits 0):
        the CLI then stops what it started beside Gunicorn (a managed Triton) without a drain, says
        "interrupted" and exits 130, as for a Ctrl-C that lands before Gunicorn takes SIGINT over."""
        arbiter = _Arbiter(self)
        try:
            arbiter.run()
        except RuntimeError as ex:
            print(f"\nError: {ex}\n", file=sys.stderr)
            sys.exit(1)
        except SystemExit:
            if arbiter.interrupted and arbiter.pid == os.getpid():  # the master, not a worker unwinding
                raise KeyboardInterrupt from None
            raise

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            # SEPERATE_HEALTH_ENDPOINT=true: azmlinfsrv binds HEALTH_PORT as well, serving the same app.
            "bind": [f"{s.host}:{s.port}", *([f"{s.host}:{s.health_port}"] if s.separate_health_endpoint else [])],
            "logger_class": RuntimeLogger,
            "workers": s.workers,
            "worker_class": "runtime.http.server.RuntimeWorker",
            "timeout": s.worker_timeout,
            "graceful_timeout": s.graceful_timeout,
            "keepalive": 75,
            "loglevel": s.log_level.lower(),
            "accesslog": "-" if s.access_log else None,
            "errorlog": "-",
            "proc_name": "runtime",
            "child_exit": _child_exit,
        }
        if "control_socket_disable" in self.cfg.settings:
            # Gunicorn >= 25 opens a control socket at one fixed path per user; parallel servers would clash.
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Starlette:
        from runtime.http.app import create_app

        # The master's Settings, inherited through fork: workers read no environment of their own.
        return create_app(self.settings, exit_on_startup_error=True, worker_process=True)


def _child_exit(server: Any, worker: Any) -> None:
    from runtime.metrics import archive_dead_process

    archive_dead_process(worker.pid)


# Temporary folders of the master, then its pid (runtime.scratch).
METRICS_PREFIX = "runtime-metrics-"
SERVE_PREFIX = "runtime-serve-"


@contextlib.contextmanager
def metrics_dir() -> Iterator[None]:
    """One folder for all processes' metric files (prometheus-client multiprocess mode), removed after.

    Set up before the model engine and the workers start, so that they all write there. A folder the user
    set is kept, less the live gauges of processes that are gone.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from runtime.metrics import forget_dead_processes

        # The user's folder outlives servers: one that was killed left its live gauges (queue depths) there.
        forget_dead_processes()
        yield
        return
    scratch.remove_stale(METRICS_PREFIX)  # a killed server's
    path = scratch.owned_folder(METRICS_PREFIX)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    owner = os.getpid()
    try:
        yield
    finally:
        # A worker that exits on its own (--max-requests) unwinds through here too: only the master cleans.
        if os.getpid() == owner:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            scratch.release(path)


def serve(settings: Settings) -> None:
    scratch.remove_stale(SERVE_PREFIX)
    marker_dir = scratch.owned_folder(SERVE_PREFIX)
    # The first worker that is ready logs the start-up summary; the others find this file and stay quiet.
    settings = dataclasses.replace(settings, summary_marker=os.path.join(marker_dir, "summary-logged"))
    master = os.getpid()
    try:
        with metrics_dir():
            ServerApplication(settings).run()
    finally:
        if os.getpid() == master:
            scratch.release(marker_dir)
