"""Shared fixtures: real server processes on free loopback ports."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import schedule
from tests.support.inprocess import AppPool
from tests.support.servers import REPO, ServerPool, ServerProcess, free_port, runtime_argv, stop_all

SCRIPTS = REPO / "tests" / "scripts"

StartRuntime = Callable[..., ServerProcess]


def pytest_configure(config: pytest.Config) -> None:
    """Tests press Ctrl-C on the servers they start (SIGINT, as a terminal sends it). A run started in the
    background (a script's ``&``, nohup) inherits SIGINT ignored, and would pass that on to every server: with
    a handler here, they start with SIGINT's default, as from a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first (tests/support/schedule.py); a stable sort keeps each module's own order."""
    items.sort(key=lambda item: schedule.rank(item.path.name))


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
    stop_all(servers)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    """Real servers shared by every test that only reads from them, keyed by their flags (stopped at the end)."""
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    yield pool
    pool.stop()


@pytest.fixture(scope="module")
def apps() -> Iterator[AppPool]:
    """In-process apps shared by a module's tests (started on first use, stopped after the module)."""
    pool = AppPool()
    yield pool
    pool.close()


def script(name: str) -> str:
    return str(SCRIPTS / name)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository (Azure ML layout, ``triton/``) with one test model of each kind."""
    from tests.support import models

    return models.make_test_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def linear_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository (Azure ML layout) with the linear model only: a Triton of its own loads it in a
    second, where ``model_repo``'s six python-backend models take several."""
    from tests.support import models

    root = tmp_path_factory.mktemp("linear")
    models.make_linear(root / "triton" / "linear" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="session")
def tritonserver_binary() -> Path:
    """A real tritonserver: one on PATH or TRITONSERVER_PATH, else the runtime's own install (made if missing)."""
    from runtime.errors import StartupError
    from runtime.serving.tritonserver import find_tritonserver, install
    from runtime.settings import Settings

    settings = Settings.from_env()
    try:
        return find_tritonserver(settings.tritonserver_path, Path(settings.triton_home))
    except StartupError:
        return install(Path(settings.triton_home))
