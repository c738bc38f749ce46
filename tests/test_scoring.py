"""The /score contract: routes, headers, limits, timeouts, concurrency.

In the test process (the app behind Starlette's httpx.Client) for everything but what needs the real
server: CLI flags, several Gunicorn workers, a SIGKILLed worker, SIGTERM. One real server for those (the flags
server): the tests read from it, one SIGKILLs a worker, then SIGTERM stops it and its log is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.settings import Settings
from tests.conftest import script
from tests.support.engine import worker_pids
from tests.support.faults import closed_loop, kill, wait_for, wait_in_flight
from tests.support.inprocess import app_client, captured_logs
from tests.support.servers import ServerPool, ServerProcess

ECHO = script("core/echo.py")
SCRIPT_FAILED = "An unexpected error occurred in scoring script. Check the logs for more info."
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def post(client: httpx.Client | str, body: object, **kwargs: Any) -> httpx.Response:
    if isinstance(client, str):  # a real server's URL
        return httpx.post(client + "/score", json=body, timeout=30, **kwargs)
    return client.post("/score", json=body, **kwargs)


@pytest.fixture(scope="module")
def echo() -> Iterator[httpx.Client]:
    """One app serving echo.py for the tests that only read from it."""
    with app_client(entry_script=ECHO) as client:
        yield client


@pytest.fixture(scope="module")
def unsendable() -> Iterator[httpx.Client]:
    with app_client(entry_script=script("aml/unsendable.py")) as client:
        yield client


def _concurrent(client: httpx.Client, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: post(client, body), bodies))


def test_health_and_generated_request_id(echo: httpx.Client) -> None:
    response = echo.get("/")
    assert response.status_code == 200
    assert response.text == "Healthy"
    assert UUID.match(response.headers["x-request-id"])
    assert response.headers["x-ms-request-id"] == response.headers["x-request-id"]
    assert "x-ms-client-request-id" not in response.headers


def test_request_ids_are_echoed(echo: httpx.Client) -> None:
    response = post(
        echo,
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

    legacy = post(echo, {}, headers={"x-ms-request-id": "legacy-1"})
    assert legacy.headers["x-ms-request-id"] == "legacy-1"
    assert legacy.headers["x-ms-client-request-id"] == "legacy-1"


def test_over_long_ids_get_431(echo: httpx.Client) -> None:
    response = post(echo, {}, headers={"x-ms-client-request-id": "c" * 101})
    assert response.status_code == 431
    assert response.json() == {"message": "x-ms-request-id and x-ms-client-request-id must not exceed 100 characters"}
    # As azmlinfsrv: the request is still named by its x-request-id (generated or given), the others left out.
    assert UUID.match(response.headers["x-request-id"]) and "x-ms-request-id" not in response.headers
    given = post(echo, {}, headers={"x-ms-request-id": "l" * 101, "x-request-id": "rid-431"})
    assert given.status_code == 431 and given.headers["x-request-id"] == "rid-431"
    response = post(echo, {}, headers={"x-request-id": "r" * 101})
    assert response.status_code == 431
    assert response.json() == {"message": "x-request-id must not exceed 100 characters"}
    assert "x-request-id" not in response.headers


def test_oversized_body_gets_413_and_server_keeps_serving() -> None:
    with app_client(entry_script=ECHO, max_body_bytes=1000) as server:
        _oversized(server)


def _oversized(server: httpx.Client) -> None:
    response = server.post("/score", content=b"x" * 5000)
    assert response.status_code == 413
    assert "exceeds the limit of 1000 bytes" in response.json()["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"y" * 500

    response = server.post("/score", content=chunks())
    assert response.status_code == 413
    assert post(server, {"ok": True}).status_code == 200


def test_run_exception_is_500_without_traceback(echo: httpx.Client) -> None:
    with captured_logs() as lines:
        response = post(echo, {"fail": True})
    assert response.status_code == 500
    assert response.json() == {
        "message": "An unexpected error occurred in scoring script. Check the logs for more info."
    }
    assert response.headers["x-ms-run-function-failed"] == "True"
    assert "secret internal detail" not in response.text
    log = "\n".join(lines)
    assert "secret internal detail that must not leak" in log and "Traceback" in log


@pytest.mark.parametrize(
    "case",
    [
        "status_999",
        "status_0",
        "newline_in_value",
        "empty_name",
        "space_in_name",
        "not_latin1",
        "starlette_status_1000",
    ],
)
def test_an_answer_http_cannot_carry_is_the_scripts_500(unsendable: httpx.Client, case: str) -> None:
    """Under uvicorn these were no answer at all (the connection dropped), or a malformed header line, or
    (not latin-1) a 500 blaming the server; azmlinfsrv answers the script's 500 for a newline in a value."""
    with captured_logs() as lines:
        response = unsendable.post("/score", params={"case": case})
    assert response.status_code == 500
    assert response.json() == {"message": SCRIPT_FAILED}
    assert response.headers["x-ms-run-function-failed"] == "True"
    assert "injected" not in response.headers.get("x-a", "") and "x-b" not in response.headers
    assert any("run() returned a response HTTP cannot carry" in line for line in lines)


@pytest.mark.parametrize("case, status", [("no_content_with_body", 204), ("not_modified_with_body", 304)])
def test_no_body_statuses_drop_the_scripts_body(unsendable: httpx.Client, case: str, status: int) -> None:
    """As Werkzeug does; uvicorn refused the body (an unhandled error and a dropped connection)."""
    response = unsendable.post("/score", params={"case": case})
    assert response.status_code == status
    assert response.content == b""
    assert "content-length" not in response.headers


def test_sys_exit_in_run_is_the_scripts_500_and_the_worker_serves_on(echo: httpx.Client) -> None:
    """SystemExit is no Exception: it passed every handler to uvicorn, whose plain-text 500 has no request ids."""
    with captured_logs() as lines:
        response = post(echo, {"exit": 3}, headers={"x-request-id": "exit-1"})
    assert response.status_code == 500
    assert response.json() == {"message": SCRIPT_FAILED}
    assert response.headers["x-ms-run-function-failed"] == "True"
    assert response.headers["x-request-id"] == "exit-1"
    log = "\n".join(lines)
    assert "run() failed for POST /score" in log and "SystemExit: 3" in log
    assert post(echo, {"ok": True}).status_code == 200


def test_bad_input_gets_4xx_with_message(echo: httpx.Client) -> None:
    with captured_logs(logging.INFO) as lines:  # as served: tracebacks of client errors only at DEBUG
        bad_json = echo.post("/score", content=b"{not json")
    assert bad_json.status_code == 400
    assert bad_json.json()["message"].startswith("The request body is not valid JSON:")
    # The client's mistake: one warning line, no error and no traceback in the log.
    assert [line for line in lines if "could not parse the body of POST /score as JSON, answered 400" in line]
    assert not [line for line in lines if "Traceback" in line or "run() failed" in line], lines
    # JSON the script parses of its own (a file, another service's answer): a bug of the script, logged as one.
    with captured_logs(logging.INFO) as lines:
        own = post(echo, {"parse": "{broken"})
    assert own.status_code == 400 and own.json()["message"].startswith("The request body is not valid JSON:")
    log = "\n".join(lines)
    assert "run() failed for POST /score" in log and "Traceback" in log and "JSONDecodeError" in log, log
    non_utf8 = echo.post("/score", content=b"\xff\xfe")
    assert non_utf8.status_code == 400
    assert non_utf8.json()["message"].startswith("Input cannot be decoded as UTF-8")
    put = echo.put("/score", content=b"{}")
    assert put.status_code == 405
    assert put.json() == {"message": "The method is not allowed for the requested URL."}
    missing = echo.get("/nowhere")
    assert missing.status_code == 404
    assert "not found" in missing.json()["message"]
    # curl -d sends a form content type; the body still reaches run() (azmlinfsrv would pass "").
    form = echo.post(
        "/score",
        content=b'{"a": 2}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 200 and form.json()["echo"] == {"a": 2}
    assert post(echo, {"still": "serving"}).status_code == 200


def test_get_query_becomes_json_string(echo: httpx.Client) -> None:
    response = echo.get("/score", params=[("a", "1"), ("a", "2"), ("b", "x")])
    assert response.status_code == 200
    assert response.json()["echo"] == {"a": [1, 2], "b": "x"}


def test_sync_run_overlaps_in_threads() -> None:
    with app_client(entry_script=ECHO, concurrency=8) as server:
        responses = _concurrent(server, [{"sleep": 0.5}] * 8)
    assert all(r.status_code == 200 for r in responses)
    assert max(r.json()["max_in_flight"] for r in responses) > 1


def test_timeout_in_a_thread_answers_500_and_worker_keeps_serving() -> None:
    with app_client(entry_script=ECHO, timeout_ms=500) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, server, {"sleep": 3})
        time.sleep(0.1)
        fast = post(server, {"sleep": 0})
        slow = pending.result()
    assert slow.status_code == 500
    assert slow.json() == {"message": "Scoring timeout after 500 ms"}
    assert slow.headers["x-ms-run-function-failed"] == "True"
    assert fast.status_code == 200


def test_timeout_of_async_run() -> None:
    with app_client(entry_script=script("core/async_run.py"), timeout_ms=300) as server:
        slow = post(server, {"sleep": 5})
        ok = post(server, {"sleep": 0})
    assert slow.status_code == 500
    assert slow.json() == {"message": "Scoring timeout after 300 ms"}
    assert ok.status_code == 200 and ok.json() == {"async": True, "echo": {"sleep": 0}}


Flags = tuple[tuple[str, ...], dict[str, str], Path]


@pytest.fixture(scope="module")
def flags(model_repo: Path) -> Flags:
    """The CLI's flags against its environment, with two workers and the test models (the start-up summary
    lists them): flags, environment and the model dir. Keep-alive connections live 1 s, so that a SIGKILLed
    worker's replacement gets its share of the clients that reconnect."""
    env = {"SCORING_TIMEOUT_MS": "1", "AZUREML_MODEL_DIR": "/elsewhere", "WORKER_COUNT": "2"}
    flags = ("--entry", ECHO, "--timeout-ms", "5000", "--model-dir", str(model_repo), "--keepalive-max-age", "1")
    return flags, env, model_repo


@pytest.fixture(scope="module")
def stopped() -> list[ServerProcess]:
    """The flags server once SIGTERM has stopped it, for the checks of its log that follow."""
    return []


@pytest.fixture
def flags_server(servers: ServerPool, flags: Flags) -> tuple[ServerProcess, Path]:
    """One real server for ``flags``: the tests read from it, then SIGTERM stops it."""
    args, env, model_dir = flags
    return servers.get(*args, env=env), model_dir


@pytest.mark.slow
def test_cli_flags_override_environment(flags_server: tuple[ServerProcess, Path]) -> None:
    server, tmp_path = flags_server
    response = post(server.url, {"sleep": 0.2})
    assert response.status_code == 200
    assert response.json()["model_dir"] == str(tmp_path)


@pytest.mark.slow
def test_worker_count_starts_that_many_workers(flags_server: tuple[ServerProcess, Path]) -> None:
    server = flags_server[0]
    pids = set()
    for _ in range(20):
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda body: post(server.url, body), [{"sleep": 0.05}] * 8))
        pids.update(r.json()["pid"] for r in responses)
        if len(pids) == 2:
            break
    assert len(pids) == 2


@pytest.mark.slow
def test_sigkilled_worker_gets_its_share_back_within_5s(flags_server: tuple[ServerProcess, Path]) -> None:
    server = flags_server[0]
    master = server.proc
    assert master is not None
    # Its workers: the model engine (for --model-dir) is the master's child too.
    assert wait_for(lambda: len(worker_pids(master.pid)) == 2, 30)
    first = sorted(worker_pids(master.pid))
    victim = first[0]
    load = closed_loop(server.url + "/score", 8, 12, {"sleep": 0.02}, events=[(2.0, lambda: kill(victim))])
    result = asyncio.run(load)
    new = [pid for pid in worker_pids(master.pid) if pid not in first]
    assert len(new) == 1 and victim not in worker_pids(master.pid)
    # From 5 s after the kill on, the replacement answers a fair part: a quarter or more of those 4 seconds'
    # answers, and a tenth or more of every one of them (one second alone swings with the machine's load).
    shares = [share for at, share in result.share_after(new[0], 2.0) if 5 <= at < 9]
    together = result.share_after(new[0], 7.0, window=4.0)[0][1]
    assert len(shares) == 4 and together >= 0.25 and min(shares) >= 0.1, result.share_after(new[0], 2.0)


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight(servers: ServerPool, flags: Flags, stopped: list[ServerProcess]) -> None:
    """Three requests of 1.5 s from threads and ten of 1 s from one async client, all in flight on the two
    workers (one of them the SIGKILLed worker's replacement) when SIGTERM comes: each is answered."""
    args, env, _ = flags
    server = servers.take(*args, env=env)  # the flags server, stopped here (a later test would get a fresh one)
    stopped.append(server)
    results: list[httpx.Response] = []

    def call() -> None:
        results.append(post(server.url, {"sleep": 1.5}))

    threads = [threading.Thread(target=call) for _ in range(3)]

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            for t in threads:
                t.start()
            pending = [asyncio.ensure_future(client.post(server.url + "/score", json={"sleep": 1})) for _ in range(10)]
            # All thirteen at once: waiting for the first three before sending the ten could outlast their 1.5 s.
            assert await asyncio.to_thread(wait_in_flight, server.url, 13)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            return [r.status_code for r in await asyncio.gather(*pending)]

    assert asyncio.run(scenario()) == [200] * 10
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert server.wait_exit(30) == 0


@pytest.mark.slow
def test_startup_summary_and_a_clean_shutdown(servers: ServerPool, flags: Flags, stopped: list[ServerProcess]) -> None:
    """The start-up summary of the flags server, and its log once stopped (by SIGTERM in the test above)."""
    args, env, _ = flags
    server = stopped[0] if stopped else servers.take(*args, env=env)
    deadline = time.monotonic() + 30
    while server.log().count("Worker ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.stop() == 0
    log = server.log()
    assert log.count("Serving at ") == 1  # one block, from the first worker that is ready
    summary = log[log.index("Serving at ") :]
    for line in (
        f"Serving at http://127.0.0.1:{server.port}",
        f"  entry script: {ECHO}",
        "  backend:      onnxruntime, in the model engine process (runtime-engine), shared by all workers",
        "  workers:      2, 32 requests in flight each",
        "  model linear: versions 1; max_batch_size 4, dynamic batching (max_queue_delay 0 us); instances 1 x CPU",
        "  model sleepy_unbatched: versions 1; no batching (max_batch_size 0); instances 1 x CPU",
        "  routes:       GET /, GET/POST /score, GET /swagger.json, GET /ready, GET /metrics, and 12 KServe v2 routes",
    ):
        assert line in summary, f"{line!r} not in:\n{summary}"
    assert "Error while closing socket" not in log and "Traceback" not in log


def test_cors_origins() -> None:
    settings = Settings.from_env({"AML_CORS_ORIGINS": "https://a.example, https://b.example"})
    with app_client(entry_script=ECHO, cors_origins=settings.cors_origins) as server:
        response = post(server, {}, headers={"Origin": "https://b.example"})
        assert response.headers["access-control-allow-origin"] == "https://b.example"
        response = post(server, {}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_swagger_versions_and_service_settings() -> None:
    with app_client(
        entry_script=ECHO, service_name="svc", service_version="7.1", service_path_prefix="api/v1"
    ) as server:
        _swagger(server)


def _swagger(server: httpx.Client) -> None:
    v2 = server.get("/swagger.json").json()
    assert v2["swagger"] == "2.0"
    assert v2["info"]["title"] == "svc" and v2["info"]["version"] == "7.1"
    assert "/api/v1/score" in v2["paths"]
    assert server.get("/swagger.json?version=3").json()["openapi"] == "3.0.3"
    assert server.get("/swagger.json?version=3.1").json()["openapi"] == "3.1.0"
    bad = server.get("/swagger.json?version=9")
    assert bad.status_code == 404
    assert bad.json() == {"message": "Swagger version [9] is not valid. Supported versions: [2, 3, 3.1]."}
    empty = server.get("/swagger.json?version=")  # azmlinfsrv: not the default version, an invalid one
    assert empty.status_code == 404
    assert empty.json() == {"message": "Swagger version [] is not valid. Supported versions: [2, 3, 3.1]."}


@pytest.mark.parametrize("path", ["/score/", "/score//", "/swagger.json/", "/v2/health/live/"])
def test_a_trailing_slash_is_404_as_in_azmlinfsrv(echo: httpx.Client, path: str) -> None:
    """Starlette redirected (307, no body) to the path without it."""
    response = echo.request("POST" if path.startswith("/score") else "GET", path, json={})
    assert response.status_code == 404
    if not path.startswith("/v2"):  # Triton's body under /v2
        assert response.json()["message"].startswith("The requested URL was not found on the server.")


@pytest.mark.parametrize("path", ["//score", "///score"])
def test_leading_slashes_are_merged_as_in_azmlinfsrv(echo: httpx.Client, path: str) -> None:
    """A base URL ending in / joined with /score; azmlinfsrv serves it, this answered 404."""
    url = httpx.URL("http://testserver").copy_with(raw_path=path.encode())  # as sent: httpx would merge them
    assert echo.post(url, json={"a": 1}).json()["echo"] == {"a": 1}
    assert echo.get(url.copy_with(raw_path=b"//")).text == "Healthy"


def test_app_root_and_source_directory_are_importable_as_in_azmlinfsrv() -> None:
    """azmlinfsrv puts AML_APP_ROOT and AML_APP_ROOT/AZUREML_SOURCE_DIRECTORY on sys.path; only the script's own
    folder was there, so this script's start-up failed with ModuleNotFoundError (exit code 3)."""
    root = Path(script("aml/app_root/code/sub/score.py")).parents[2]
    settings = Settings.from_env(
        {"AML_APP_ROOT": str(root), "AZUREML_SOURCE_DIRECTORY": "code", "AZUREML_ENTRY_SCRIPT": "code/sub/score.py"}
    )
    with app_client(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}) as client:
        assert post(client, {}).json() == {"app_root": "shared", "source_dir": "helpers"}


def test_user_swagger_file_wins(tmp_path: Path) -> None:
    (tmp_path / "swagger.json").write_text(json.dumps({"swagger": "2.0", "custom": True}))
    with app_client(entry_script=ECHO, app_root=str(tmp_path)) as server:
        _user_swagger(server)


def _user_swagger(server: httpx.Client) -> None:
    assert server.get("/swagger.json").json() == {"swagger": "2.0", "custom": True}


def test_log_level_debug(echo: httpx.Client) -> None:
    with captured_logs(logging.DEBUG) as lines:
        post(echo, {})
    assert re.search(r"D \[\d+\] runtime\.scoring \[[0-9a-f-]{36}\] - POST /score 200", "\n".join(lines))


def test_script_imports_azure_names_lazily() -> None:
    with app_client(entry_script=script("core/lazy_import.py")) as server:
        response = post(server, {})
    assert response.status_code == 200 and response.text == "lazy"
