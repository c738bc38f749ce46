"""The hook pipeline: order, first result, precedence, async hooks (in the test process); entry points,
start-up failures, shutdown and threads."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import script
from tests.support.cli import settings_of
from tests.support.inprocess import InProcess, app_client, captured_logs, startup_failure
from tests.support.servers import free_port

RECORD_PLUGIN = script("core/record_plugin.py")


@pytest.fixture(scope="module")
def hook_style() -> Iterator[httpx.Client]:
    with app_client(entry_script=script("core/hook_style.py"), plugins=(RECORD_PLUGIN,)) as client:
        yield client


def test_order_first_result_and_score_py_wins(hook_style: httpx.Client) -> None:
    response = hook_style.post("/score", json={"x": [1.5, 2]})
    assert response.status_code == 200, response.text
    # The plugin's tryfirst preprocess ran first and returned None; score.py's preprocess gave the
    # result; the plugin's infer doubled; score.py's async postprocess beat the plugin's trylast one.
    assert response.json() == {"y": [3.0, 4.0], "order": ["plugin.preprocess"]}
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0


def test_preprocess_bad_request_is_400(hook_style: httpx.Client) -> None:
    response = hook_style.post("/score", json={"nox": 1})
    assert response.status_code == 400
    assert response.json() == {"message": "missing field 'x'"}
    malformed = hook_style.post("/score", content=b"{")
    assert malformed.status_code == 400
    assert malformed.json()["message"].startswith("POST body could not be decoded as JSON")


def test_plugin_beats_builtin_default() -> None:
    with app_client(entry_script=script("core/hook_pre_only.py"), plugins=(RECORD_PLUGIN,)) as server:
        response = server.post("/score", json={"x": [1, 2]})
    assert response.json() == {"from": "plugin", "y": [2.0, 4.0]}


def test_unknown_model_is_404(tmp_path: Path) -> None:
    plugin = tmp_path / "other_model.py"
    plugin.write_text(
        textwrap.dedent("""
        import numpy as np
        from runtime import InferRequest, hookimpl

        @hookimpl(tryfirst=True)
        def preprocess(request):
            return InferRequest("missing", {"x": np.zeros(1)})
    """)
    )
    with app_client(entry_script=script("core/hook_pre_only.py"), plugins=(RECORD_PLUGIN, str(plugin))) as server:
        response = server.post("/score", json={"x": [1]})
    assert response.status_code == 404
    assert response.json() == {"message": "No backend serves a model named 'missing'."}


def test_entry_point_plugin_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / "ep_double-1.0.dist-info").mkdir(parents=True)
    (site / "ep_double-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-double\nVersion: 1.0\n")
    (site / "ep_double-1.0.dist-info" / "entry_points.txt").write_text("[scoring_runtime]\ndouble = ep_double\n")
    (site / "ep_double.py").write_text(Path(RECORD_PLUGIN).read_text())
    monkeypatch.syspath_prepend(str(site))  # as PYTHONPATH would: the entry point is found through sys.path
    with captured_logs() as log, app_client(entry_script=script("core/hook_pre_only.py")) as server:
        response = server.post("/score", json={"x": [4]})
    assert response.status_code == 200, log
    assert response.json() == {"from": "plugin", "y": [8.0]}


def test_misspelled_plugin_hook_fails_startup() -> None:
    log = startup_failure(entry_script=script("core/echo.py"), plugins=(script("core/misspelled_plugin.py"),))
    assert "unknown hook 'postprocesss'" in log


def test_init_and_shutdown_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "lifecycle.txt"
    monkeypatch.setenv("LIFECYCLE_FILE", str(record))
    # A clean stop of a real server (exit 0) is tests/test_scoring.py::test_sigterm_finishes_requests_in_flight.
    with app_client(entry_script=script("core/echo.py"), plugins=(script("core/lifecycle_plugin.py"),)):
        assert record.read_text() == "init True\n"
    deadline = time.monotonic() + 10
    while "shutdown" not in record.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert record.read_text() == "init True\nshutdown\n"


def test_inline_hooks_run_on_the_event_loop_others_in_the_pool() -> None:
    # The command line's Settings; the app's event loop runs in this main thread, as in a Gunicorn worker.
    argv = ["--entry", script("core/thread_names.py"), "--plugin", script("core/double_plugin.py")]
    with InProcess(settings_of("serve", *argv, "--port", str(free_port()))) as app:
        response = app.request("POST", "/score", json={"x": [1]})
    assert response.status_code == 200, response.text
    assert response.json()["preprocess"] == "MainThread"
    assert response.json()["postprocess"].startswith("score")
