"""Start-up failures end ``runtime serve`` with exit code 3 and a message naming script, function and cause."""

from __future__ import annotations

import asyncio
import builtins
from pathlib import Path
from typing import NoReturn

import pytest

from runtime.http import app as app_module
from runtime.settings import Settings
from tests.conftest import script
from tests.support.cli import run_cli
from tests.support.inprocess import captured_logs, startup_failure

FAILURES = [
    ("core/no_init.py", ["no_init.py", "does not have a init() function defined"]),
    (
        "core/bad_signature.py",
        ["bad_signature.py", "run()", "cannot accept positional-only arguments, *args"],
    ),
    ("core/import_error.py", ["import_error.py", "failed to import", "module_that_does_not_exist"]),
    ("aml/init_raises.py", ["init_raises.py", "init()", "ValueError", "model file missing"]),
    ("core/misspelled_hook.py", ["misspelled_hook.py", "preproces()", "did you mean preprocess()"]),
    ("core/wrong_hook_args.py", ["postprocess", "extra_argument"]),
    ("core/init_with_args.py", ["init", "model_path"]),
]


@pytest.mark.parametrize(("name", "expected"), FAILURES)
def test_startup_failure_names_script_function_and_cause(name: str, expected: list[str]) -> None:
    log = startup_failure(entry_script=script(name))
    for text in expected:
        assert text in log, f"{text!r} not in log:\n{log}"


def test_a_user_swagger_file_that_is_not_json_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    """azmlinfsrv fails to start too; here the JSON error escaped as a traceback, not the start-up message."""
    (tmp_path / "swagger3.json").write_text('{"openapi": ')
    log = startup_failure(entry_script=script("core/echo.py"), app_root=str(tmp_path))
    assert f"The swagger file {tmp_path / 'swagger3.json'} is not valid JSON" in log
    assert "Expecting value: line 1 column 13" in log


class Exited(BaseException):
    """``os._exit`` in this process: the worker's exit code, without ending pytest."""


def exit_here(code: int) -> NoReturn:
    raise Exited(code)


# A failure while loading score.py ends the worker with exit code 3, which Gunicorn's master passes on: the
# worker's start-up (the lifespan of create_app(exit_on_startup_error=True)) in this process, with os._exit
# and logging.shutdown stubbed. A real server exits 3 through the same lifespan for a failure in init():
# tests/test_azureml_conformance.py::test_init_failure_exits_3_on_both, beside azmlinfsrv.
@pytest.mark.parametrize(("name", "expected"), [FAILURES[2]])
def test_startup_failure_exits_3(monkeypatch: pytest.MonkeyPatch, name: str, expected: list[str]) -> None:
    monkeypatch.setattr(app_module.os, "_exit", exit_here)
    monkeypatch.setattr(app_module.logging, "shutdown", lambda: None)
    app = app_module.create_app(Settings(entry_script=script(name)), exit_on_startup_error=True)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with captured_logs() as lines, pytest.raises(Exited) as exited:
        asyncio.run(start())
    assert exited.value.args == (3,)
    log = "\n".join(lines)
    for text in expected:
        assert text in log, f"{text!r} not in log:\n{log}"


def test_missing_entry_script_exits_3() -> None:
    # Refused before serving: the command in this process (the installed script's exit 3: a failure in init(),
    # tests/test_azureml_conformance.py).
    result = run_cli("serve", "--entry", "/nonexistent/score.py")
    assert result.returncode == 3
    assert "/nonexistent/score.py does not exist" in result.stderr


def test_unknown_plugin_stops_startup() -> None:
    log = startup_failure(entry_script=script("core/echo.py"), plugins=("no_such_plugin_module",))
    assert "Plugin module 'no_such_plugin_module' failed to import" in log


def test_bad_flag_value_is_a_usage_error() -> None:
    # argparse's exit 2, raised inside runtime.cli.main, which the installed script returns as it is.
    result = run_cli("serve", "--entry", script("core/echo.py"), "--workers", "0")
    assert result.returncode == 2
    assert "must be a positive integer" in result.stderr


def test_any_startup_exception_hands_print_back(monkeypatch: pytest.MonkeyPatch) -> None:
    original = builtins.print

    def broken(settings: Settings) -> None:
        raise MemoryError("not a StartupError")

    monkeypatch.setattr(app_module, "build_state", broken)
    app = app_module.create_app(Settings())

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(MemoryError, match="not a StartupError"):
        asyncio.run(start())
    assert builtins.print is original


def test_scoring_routes_are_tried_first_and_the_summary_keeps_the_declared_order() -> None:
    app = app_module.create_app(Settings())
    first = ["/score", "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"]
    assert [route.path for route in app.routes[:3]] == first  # Starlette matches in this order
    assert len(app.routes) == 17
    routes = app_module.startup._routes(app_module._scoring_first(app.routes[::-1]))
    assert routes.startswith("GET/POST /score, GET /metrics")  # _scoring_first moves only the scoring routes
