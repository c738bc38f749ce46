"""The hook pipeline with real servers: order, first result, precedence, async hooks, entry points."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartRuntime, script

pytestmark = pytest.mark.slow

RECORD_PLUGIN = script("core/record_plugin.py")


def test_order_first_result_and_score_py_wins(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", script("core/hook_style.py"), "--plugin", RECORD_PLUGIN)
    response = httpx.post(server.url + "/score", json={"x": [1.5, 2]}, timeout=30)
    assert response.status_code == 200, response.text
    # The plugin's tryfirst preprocess ran first and returned None; score.py's preprocess gave the
    # result; the plugin's infer doubled; score.py's async postprocess beat the plugin's trylast one.
    assert response.json() == {"y": [3.0, 4.0], "order": ["plugin.preprocess"]}
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0


def test_preprocess_bad_request_is_400(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", script("core/hook_style.py"), "--plugin", RECORD_PLUGIN)
    response = httpx.post(server.url + "/score", json={"nox": 1}, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"message": "missing field 'x'"}
    malformed = httpx.post(server.url + "/score", content=b"{", timeout=30)
    assert malformed.status_code == 400
    assert malformed.json()["message"].startswith("POST body could not be decoded as JSON")


def test_plugin_beats_builtin_default(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", script("core/hook_pre_only.py"), "--plugin", RECORD_PLUGIN)
    response = httpx.post(server.url + "/score", json={"x": [1, 2]}, timeout=30)
    assert response.json() == {"from": "plugin", "y": [2.0, 4.0]}


def test_unknown_model_is_404(start_runtime: StartRuntime, tmp_path: Path) -> None:
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
    server = start_runtime(
        "--entry", script("core/hook_pre_only.py"), "--plugin", RECORD_PLUGIN, "--plugin", str(plugin)
    )
    response = httpx.post(server.url + "/score", json={"x": [1]}, timeout=30)
    assert response.status_code == 404
    assert response.json() == {"message": "No backend serves a model named 'missing'."}


def test_entry_point_plugin_is_loaded(start_runtime: StartRuntime, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "ep_double-1.0.dist-info").mkdir(parents=True)
    (site / "ep_double-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-double\nVersion: 1.0\n")
    (site / "ep_double-1.0.dist-info" / "entry_points.txt").write_text("[scoring_runtime]\ndouble = ep_double\n")
    (site / "ep_double.py").write_text(Path(RECORD_PLUGIN).read_text())
    server = start_runtime("--entry", script("core/hook_pre_only.py"), env={"PYTHONPATH": str(site)})
    response = httpx.post(server.url + "/score", json={"x": [4]}, timeout=30)
    assert response.status_code == 200, server.log()
    assert response.json() == {"from": "plugin", "y": [8.0]}


def test_misspelled_plugin_hook_fails_startup(start_runtime: StartRuntime) -> None:
    server = start_runtime(
        "--entry", script("core/echo.py"), "--plugin", script("core/misspelled_plugin.py"), wait=False
    )
    assert server.wait_exit(60) == 3
    assert "unknown hook 'postprocesss'" in server.log()


def test_init_and_shutdown_hooks(start_runtime: StartRuntime, tmp_path: Path) -> None:
    record = tmp_path / "lifecycle.txt"
    server = start_runtime(
        "--entry",
        script("core/echo.py"),
        "--plugin",
        script("core/lifecycle_plugin.py"),
        env={"LIFECYCLE_FILE": str(record)},
    )
    assert record.read_text() == "init True\n"
    assert server.stop() == 0
    deadline = time.monotonic() + 10
    while "shutdown" not in record.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert record.read_text() == "init True\nshutdown\n"


def test_inline_hooks_run_on_the_event_loop_others_in_the_pool(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", script("core/thread_names.py"), "--plugin", script("core/double_plugin.py"))
    response = httpx.post(server.url + "/score", json={"x": [1]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["preprocess"] == "MainThread"
    assert response.json()["postprocess"].startswith("score")
