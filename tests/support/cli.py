"""``runtime`` commands run in the test process through ``runtime.cli.main``: parsing and preflight, no server.

For the commands that stop before serving (usage mistakes exit 2, start-up errors exit 3): the same
parser, checks and messages as the console script, without a Python process per case. A command
that gets as far as serving fails the test instead of starting Gunicorn. tests/test_azureml_conformance.py
keeps a real process for a refused start (exit 3 from the workers' start-up, through the installed ``runtime``
script); a usage mistake's exit 2 is argparse's, raised inside ``cli.main`` and the same in this process.
``serving`` runs a command that serves, with its model engine, and its app in this process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn
from unittest import mock

import runtime.logs
from runtime import cli
from runtime.settings import Settings


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _would_serve(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("the command got as far as serving; a test of a refused start expected it to stop")


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """``runtime serve`` configures logging for its process: put the test process's back afterwards."""
    root, ours = logging.getLogger(), logging.getLogger("runtime")
    levels = (root.level, ours.level)
    formatters = {handler: handler.formatter for handler in root.handlers}
    log_format = runtime.logs.current_format
    try:
        yield
    finally:
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
        for handler, formatter in formatters.items():
            handler.setFormatter(formatter)
        runtime.logs.current_format = log_format


def run_cli(*args: str, env: Mapping[str, str] | None = None, engine: bool = False) -> Result:
    """``runtime ARGS`` with ``env`` added to the environment; its exit status, stdout and stderr.

    ``engine=True`` lets the command start the model engine, a process of its own (its log goes to this
    process's file descriptor 2: read it with pytest's ``capfd``), for start-ups the engine refuses.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, dict(env or {})),
        mock.patch("runtime.http.server.serve", _would_serve),
        mock.patch.object(cli, "serve_with_engine", cli.serve_with_engine if engine else _would_serve),
        mock.patch.object(cli, "serve_with_managed_triton", _would_serve),
        _logging_restored(),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        try:
            code = cli.main(list(args))
        except SystemExit as ex:  # argparse's usage errors
            code = ex.code if isinstance(ex.code, int) else 1
    return Result(code, stdout.getvalue(), stderr.getvalue())


class _Served(Exception):
    """Raised in place of Gunicorn's start, carrying the Settings it was given."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("served")
        self.settings = settings


def _capture(settings: Settings) -> NoReturn:
    raise _Served(settings)


def settings_of(*args: str, env: Mapping[str, str] | None = None) -> Settings:
    """The Settings ``runtime ARGS`` hands to Gunicorn: the same parser, environment and checks as the console
    script, stopped where the workers would start (for a command served without the model engine or a
    managed Triton). Serve them in this process with ``tests.support.inprocess.served``."""
    with (
        mock.patch.dict(os.environ, dict(env or {})),
        mock.patch("runtime.http.server.serve", _capture),
        mock.patch.object(cli, "serve_with_managed_triton", _would_serve),
        _logging_restored(),
    ):
        try:
            code = cli.main(list(args))
        except _Served as served:
            # serve_with_engine stops the engine it started when serve() raises: such a command needs a real server.
            assert served.settings.engine_address is None, "this command serves with the model engine"
            return served.settings
    raise AssertionError(f"runtime {' '.join(args)} exited with {code} instead of serving")


@contextlib.contextmanager
def serving(*args: str, env: Mapping[str, str] | None = None) -> Iterator[tuple[str, Settings]]:
    """``runtime ARGS`` run as the console script runs it, up to Gunicorn: its parser, checks and the model
    engine it starts (a process of its own, a child of this one), with the app served in this process in
    place of Gunicorn's workers (``tests.support.inprocess.served``). Yields the app's base URL and the
    Settings the workers would get; on exit the app stops, then the command stops its engine and must
    exit 0. For what needs the engine but not several workers, signals or the installed script. The command
    sets os.environ (its metrics folder, the engine's address) until then: start no real server meanwhile."""
    from tests.support.inprocess import served

    started: queue.Queue[tuple[str, Settings] | None] = queue.Queue()
    release = threading.Event()
    outcome: list[int | BaseException] = []

    def serve(settings: Settings) -> None:
        with served(settings) as url:
            started.put((url, settings))
            release.wait()

    def command() -> None:
        try:
            outcome.append(cli.main(list(args)))
        except BaseException as ex:  # handed to the test below
            outcome.append(ex)
        finally:
            started.put(None)  # wakes the test if the command stopped before serving

    with (
        mock.patch.dict(os.environ, dict(env or {})),
        mock.patch("runtime.http.server.serve", serve),
        mock.patch.object(cli, "serve_with_managed_triton", _would_serve),
        _logging_restored(),
    ):
        thread = threading.Thread(target=command, name="runtime-serve", daemon=True)
        thread.start()
        try:
            served_at = started.get(timeout=120)
            assert served_at is not None, f"runtime {' '.join(args)} stopped before serving: {outcome}"
            yield served_at
        finally:
            release.set()
            thread.join(60)
    assert outcome == [0], outcome
