"""Shared fixtures: real server processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.servers import REPO, ServerProcess, free_port, runtime_argv

SCRIPTS = REPO / "tests" / "scripts"

StartRuntime = Callable[..., ServerProcess]


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[StartRuntime]:
    """Start ``runtime serve`` with the given flags; every server is stopped at teardown."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
        port = free_port()
        log = tmp_path / f"runtime-{port}.log"
        server = ServerProcess(runtime_argv("serve", "--port", str(port), *args), port, log, env=env)
        servers.append(server)
        return server.start(wait=wait)

    yield start
    for server in servers:
        server.stop()


def script(name: str) -> str:
    return str(SCRIPTS / name)
