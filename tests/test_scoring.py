"""The /score contract against a real ``runtime serve``: routes, headers, limits, timeouts, concurrency."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartRuntime, script

pytestmark = pytest.mark.slow

ECHO = script("core/echo.py")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def post(url: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(url + "/score", json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_health_and_generated_request_id(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO)
    response = httpx.get(server.url + "/")
    assert response.status_code == 200
    assert response.text == "Healthy"
    assert UUID.match(response.headers["x-request-id"])
    assert response.headers["x-ms-request-id"] == response.headers["x-request-id"]
    assert "x-ms-client-request-id" not in response.headers


def test_request_ids_are_echoed(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO)
    response = post(
        server.url,
        {"a": 1},
        headers={"x-request-id": "rid-1", "x-ms-client-request-id": "cid-1", "TraceId": "trace-9"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "rid-1"
    assert response.headers["x-ms-request-id"] == "cid-1"
    assert response.headers["x-ms-client-request-id"] == "cid-1"
    assert response.headers["traceid"] == "trace-9"
    assert response.headers["x-ms-run-function-failed"] == "False"
    assert float(response.headers["x-ms-run-fn-exec-ms"]) >= 0
    assert response.json()["echo"] == {"a": 1}

    legacy = post(server.url, {}, headers={"x-ms-request-id": "legacy-1"})
    assert legacy.headers["x-ms-request-id"] == "legacy-1"
    assert legacy.headers["x-ms-client-request-id"] == "legacy-1"


def test_over_long_ids_get_431(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO)
    response = post(server.url, {}, headers={"x-ms-client-request-id": "c" * 101})
    assert response.status_code == 431
    assert response.json() == {"message": "x-ms-request-id and x-ms-client-request-id must not exceed 100 characters"}
    response = post(server.url, {}, headers={"x-request-id": "r" * 101})
    assert response.status_code == 431
    assert response.json() == {"message": "x-request-id must not exceed 100 characters"}


def test_oversized_body_gets_413_and_server_keeps_serving(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO, "--max-body-bytes", "1000")
    response = httpx.post(server.url + "/score", content=b"x" * 5000, timeout=30)
    assert response.status_code == 413
    assert "exceeds the limit of 1000 bytes" in response.json()["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"y" * 500

    response = httpx.post(server.url + "/score", content=chunks(), timeout=30)
    assert response.status_code == 413
    assert post(server.url, {"ok": True}).status_code == 200


def test_run_exception_is_500_without_traceback(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO)
    response = post(server.url, {"fail": True})
    assert response.status_code == 500
    assert response.json() == {
        "message": "An unexpected error occurred in scoring script. Check the logs for more info."
    }
    assert response.headers["x-ms-run-function-failed"] == "True"
    assert "secret internal detail" not in response.text
    time.sleep(0.5)
    log = server.log()
    assert "secret internal detail that must not leak" in log and "Traceback" in log


def test_bad_input_gets_4xx_with_message(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO)
    bad_json = httpx.post(server.url + "/score", content=b"{not json", timeout=30)
    assert bad_json.status_code == 400
    assert bad_json.json()["message"].startswith("The request body is not valid JSON:")
    non_utf8 = httpx.post(server.url + "/score", content=b"\xff\xfe", timeout=30)
    assert non_utf8.status_code == 400
    assert non_utf8.json()["message"].startswith("Input cannot be decoded as UTF-8")
    put = httpx.put(server.url + "/score", content=b"{}", timeout=30)
    assert put.status_code == 405
    assert put.json() == {"message": "The method is not allowed for the requested URL."}
    missing = httpx.get(server.url + "/nowhere", timeout=30)
    assert missing.status_code == 404
    assert "not found" in missing.json()["message"]
    # curl -d sends a form content type; the body still reaches run() (azmlinfsrv would pass "").
    form = httpx.post(
        server.url + "/score",
        content=b'{"a": 2}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert form.status_code == 200 and form.json()["echo"] == {"a": 2}
    assert post(server.url, {"still": "serving"}).status_code == 200


def test_get_query_becomes_json_string(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO)
    response = httpx.get(server.url + "/score", params=[("a", "1"), ("a", "2"), ("b", "x")], timeout=30)
    assert response.status_code == 200
    assert response.json()["echo"] == {"a": [1, 2], "b": "x"}


async def _concurrent(url: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.post(url + "/score", json=b) for b in bodies))


def test_sync_run_overlaps_in_threads(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO, "--concurrency", "8")
    responses = asyncio.run(_concurrent(server.url, [{"sleep": 0.5}] * 8))
    assert all(r.status_code == 200 for r in responses)
    assert max(r.json()["max_in_flight"] for r in responses) > 1


def test_timeout_in_a_thread_answers_500_and_worker_keeps_serving(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO, "--timeout-ms", "500")

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            slow = asyncio.ensure_future(client.post(server.url + "/score", json={"sleep": 3}))
            await asyncio.sleep(0.1)
            fast = await client.post(server.url + "/score", json={"sleep": 0})
            return await slow, fast

    slow, fast = asyncio.run(scenario())
    assert slow.status_code == 500
    assert slow.json() == {"message": "Scoring timeout after 500 ms"}
    assert slow.headers["x-ms-run-function-failed"] == "True"
    assert fast.status_code == 200


def test_timeout_of_async_run(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", script("core/async_run.py"), env={"SCORING_TIMEOUT_MS": "300"})
    slow = post(server.url, {"sleep": 5})
    assert slow.status_code == 500
    assert slow.json() == {"message": "Scoring timeout after 300 ms"}
    ok = post(server.url, {"sleep": 0})
    assert ok.status_code == 200 and ok.json() == {"async": True, "echo": {"sleep": 0}}


def test_cli_flags_override_environment(start_runtime: StartRuntime, tmp_path: Path) -> None:
    server = start_runtime(
        "--entry",
        ECHO,
        "--timeout-ms",
        "5000",
        "--model-dir",
        str(tmp_path),
        env={"SCORING_TIMEOUT_MS": "1", "AZUREML_MODEL_DIR": "/elsewhere"},
    )
    response = post(server.url, {"sleep": 0.2})
    assert response.status_code == 200
    assert response.json()["model_dir"] == str(tmp_path)


def test_worker_count_starts_that_many_workers(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO, env={"WORKER_COUNT": "2"})
    pids = set()
    for _ in range(20):
        responses = asyncio.run(_concurrent(server.url, [{"sleep": 0.05}] * 8))
        pids.update(r.json()["pid"] for r in responses)
        if len(pids) == 2:
            break
    assert len(pids) == 2


def test_sigterm_finishes_requests_in_flight(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO)
    results: list[httpx.Response] = []

    def call() -> None:
        results.append(post(server.url, {"sleep": 1.5}))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert server.wait_exit(30) == 0


def test_cors_origins(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO, env={"AML_CORS_ORIGINS": "https://a.example, https://b.example"})
    response = post(server.url, {}, headers={"Origin": "https://b.example"})
    assert response.headers["access-control-allow-origin"] == "https://b.example"
    response = post(server.url, {}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_swagger_versions_and_service_settings(start_runtime: StartRuntime) -> None:
    server = start_runtime(
        "--entry",
        ECHO,
        env={"SERVICE_NAME": "svc", "SERVICE_VERSION": "7.1", "SERVICE_PATH_PREFIX": "api/v1"},
    )
    v2 = httpx.get(server.url + "/swagger.json").json()
    assert v2["swagger"] == "2.0"
    assert v2["info"]["title"] == "svc" and v2["info"]["version"] == "7.1"
    assert "/api/v1/score" in v2["paths"]
    assert httpx.get(server.url + "/swagger.json?version=3").json()["openapi"] == "3.0.3"
    assert httpx.get(server.url + "/swagger.json?version=3.1").json()["openapi"] == "3.1.0"
    bad = httpx.get(server.url + "/swagger.json?version=9")
    assert bad.status_code == 404
    assert bad.json() == {"message": "Swagger version [9] is not valid. Supported versions: [2, 3, 3.1]."}


def test_user_swagger_file_wins(start_runtime: StartRuntime, tmp_path: Path) -> None:
    (tmp_path / "swagger.json").write_text(json.dumps({"swagger": "2.0", "custom": True}))
    server = start_runtime("--entry", ECHO, env={"AML_APP_ROOT": str(tmp_path)})
    assert httpx.get(server.url + "/swagger.json").json() == {"swagger": "2.0", "custom": True}


def test_log_level_debug(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", ECHO, env={"AZUREML_LOG_LEVEL": "DEBUG"})
    post(server.url, {})
    time.sleep(0.3)
    assert re.search(r"D \[\d+\] runtime\.scoring \[[0-9a-f-]{36}\] - POST /score 200", server.log())


def test_script_imports_azure_names_lazily(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", script("core/lazy_import.py"))
    response = post(server.url, {})
    assert response.status_code == 200 and response.text == "lazy"
