"""Real server processes for tests: started on a free loopback port, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One server process; ``url`` is its base URL on 127.0.0.1."""

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_path: str = "/",
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.signalled = False  # by send_signal(), for stop_all()

    def start(self, wait: bool = True, timeout: float = 90) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.signalled = False
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        if not self.signalled:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` if the process still runs; a ``stop()`` after it waits without sending another."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.signalled = True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def stop_all(servers: Iterable[ServerProcess]) -> None:
    """Stop several servers at once: every one is told first, so their graceful shutdowns overlap."""
    servers = list(servers)
    for server in servers:
        server.send_signal()
    for server in servers:
        server.stop()


def runtime_argv(*args: str) -> list[str]:
    return [str(BIN / "runtime"), *args]


def start_azmlinfsrv_and_runtime(
    entry: Path, azml_python: Path, tmp: Path, env: Mapping[str, str] | None = None
) -> tuple[ServerProcess, ServerProcess]:
    """azmlinfsrv 1.5.1 and ``runtime serve`` on the same entry script, started (not yet ready)."""
    launcher = REPO / "tests" / "support" / "azmlinfsrv_launcher.py"
    ref_port, our_port = free_port(), free_port()
    reference = ServerProcess(
        [str(azml_python), str(launcher), "--entry_script", str(entry), "--port", str(ref_port)],
        ref_port,
        tmp / f"azmlinfsrv-{entry.stem}.log",
        env=env,
        cwd=tmp,
    )
    ours = ServerProcess(
        runtime_argv("serve", "--entry", str(entry), "--port", str(our_port)),
        our_port,
        tmp / f"runtime-{entry.stem}.log",
        env=env,
        cwd=tmp,
    )
    return reference.start(wait=False), ours.start(wait=False)


def start_module_server(tmp_path_factory: Any, *args: str, env: Mapping[str, str] | None = None) -> ServerProcess:
    """``runtime serve ARGS`` on a free port, ready; for module-scoped fixtures (the caller stops it)."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    return ServerProcess(runtime_argv("serve", "--port", str(port), *args), port, log, env).start()


PoolT = TypeVar("PoolT", bound="ServerPool")
PoolKey = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]  # flags, environment


class ServerPool:
    """``runtime serve`` processes started on first use and shared by every test that only reads from them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._servers: dict[PoolKey, ServerProcess] = {}
        self._taken: list[ServerProcess] = []

    @staticmethod
    def _key(
        args: tuple[str, ...], env: Mapping[str, str] | None
    ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        return args, tuple(sorted((env or {}).items()))

    def get(self, *args: str, env: Mapping[str, str] | None = None) -> ServerProcess:
        key = self._key(args, env)
        if key not in self._servers:
            self._servers[key] = self.start(args, env)
        return self._servers[key]

    def start(self, args: Sequence[str], env: Mapping[str, str] | None) -> ServerProcess:
        """``runtime serve ARGS`` on a free port, ready (a subclass may note what it needs first)."""
        port = free_port()
        log = self.directory / f"runtime-{port}.log"
        return ServerProcess(runtime_argv("serve", "--port", str(port), *args), port, log, env).start()

    def take(self, *args: str, env: Mapping[str, str] | None = None) -> ServerProcess:
        """The server for these flags (started if need be), handed to a test that stops or kills it: a later
        ``get`` of the same flags starts a fresh one. The pool still stops it at the end if the test did not."""
        server = self.get(*args, env=env)
        del self._servers[self._key(args, env)]
        self._taken.append(server)
        return server

    def stop(self) -> None:
        stop_all([*self._servers.values(), *self._taken])

    def __enter__(self: PoolT) -> PoolT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
