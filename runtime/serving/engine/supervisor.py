"""The master's side of the engine: start it before the workers, restart it when it dies, stop it last.

The engine is a fresh interpreter (``subprocess``, so nothing is forked after onnxruntime or CUDA
is initialised), dies with the master (PR_SET_PDEATHSIG) and listens on a Linux abstract socket
whose name the workers find in ``RUNTIME_ENGINE_ADDRESS``. A supervisor thread restarts it if it
exits while the server runs; the workers reconnect by themselves.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

from runtime.serving.engine.channel import socket_address
from runtime.serving.supervised import SupervisedProcess

if TYPE_CHECKING:
    from runtime.settings import Settings

logger = logging.getLogger("runtime.engine")

ADDRESS_ENV = "RUNTIME_ENGINE_ADDRESS"


def _die_with_parent() -> None:
    """In the child: SIGTERM when the master dies (even by SIGKILL); a process group of its own, so that a
    signal to the server's group (Ctrl-C, ``timeout``) reaches the master, which stops the engine last."""
    from runtime.prctl import tie_to_parent

    tie_to_parent(signal.SIGTERM)
    os.setpgrp()


class EngineSupervisor(SupervisedProcess):
    label = "the model engine"
    restart_delay = 0.0  # requests get 503s meanwhile: restart at once

    def __init__(
        self,
        model_dir: str,
        log_level: str = "INFO",
        log_format: str = "text",
        wait_s: float = 300,
        drain_s: float = 30,
        triton_url: str = "",
        triton_wait_s: float = 120.0,
        settings: Settings | None = None,
    ) -> None:
        """``triton_url``: the engine is the client of that Triton server (``--triton-client engine``).
        ``settings``: the server's, handed down to the engine (else it reads its environment)."""
        super().__init__()
        self.settings = settings
        self.model_dir = model_dir
        self.triton_url = triton_url
        self.triton_wait_s = triton_wait_s
        self.log_level = log_level
        self.log_format = log_format
        self.wait_s = wait_s
        self.drain_s = drain_s
        self.address = f"@runtime-engine-{os.getpid()}-{secrets.token_hex(4)}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "runtime.serving.engine.process",
            "--address",
            self.address,
            "--model-dir",
            self.model_dir,
            "--drain-seconds",
            str(self.drain_s),
            "--log-level",
            self.log_level,
            "--log-format",
            self.log_format,
            *(("--triton-url", self.triton_url, "--triton-wait-s", str(self.triton_wait_s)) if self.triton_url else ()),
        ]

    def start(self) -> None:
        """Start the engine and wait until every model is loaded (the caller tells the workers ``address``)."""
        self._spawn()
        self.wait_ready()
        self._supervise()

    def _spawn(self) -> None:
        env = self.settings.child_environment() if self.settings is not None else None
        self.proc = subprocess.Popen(self.command(), env=env, preexec_fn=_die_with_parent)
        logger.info("Started the model engine (pid %d)", self.proc.pid)

    def wait_ready(self) -> None:
        """Until the engine listens, which it does once every model is loaded."""
        self._wait_for(self._listening, self.wait_s, 0.05)

    def _listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(socket_address(self.address))
            except OSError:
                return False
            return True

    def _after_exit(self) -> None:
        from runtime.metrics import forget_dead_processes  # prometheus-client: only once an engine died

        forget_dead_processes()

    def stop(self) -> None:
        """SIGTERM: the engine answers what is in flight, then exits (after the workers did)."""
        self._stop_process(self.drain_s + 5)  # in the master only (a worker unwinding does nothing)
