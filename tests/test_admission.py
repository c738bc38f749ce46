"""In-process: readiness, admission limits, queue policy through the v2 route, warm-up (httpx on create_app)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from runtime.errors import StartupError
from runtime.http.app import create_app
from runtime.http.health import WorkerHealth
from runtime.http.middleware.admission import WATCH_AFTER_S, Admission, AdmissionMiddleware
from runtime.http.protocol import CONNECTION_WATCH, ConnectionWatch
from runtime.serving.batching import DELAY, QueuePolicy
from runtime.serving.repository import load_repository
from runtime.serving.warmup import warmup_samples
from runtime.settings import Settings
from tests.support import models
from tests.support.faults import FAULTS

QUEUED_CONFIG = """
max_batch_size: 1
instance_group [{ count: 1 kind: KIND_CPU }]
dynamic_batching {
  default_queue_policy { max_queue_size: 1 }
  priority_levels: 2
  default_priority_level: 2
  priority_queue_policy { key: 1 value { max_queue_size: 4 timeout_action: DELAY default_timeout_microseconds: 5000 } }
}
model_warmup [{
  name: "zeros" batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: [4] zero_data: true } }
}]
"""


def repository(root: Path, config: str = QUEUED_CONFIG) -> Path:
    models.make_linear(root / "linear" / "1" / "model.onnx")
    (root / "linear" / "config.pbtxt").write_text(config)
    return root


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield client


def run(scenario: Callable[[httpx.AsyncClient], Any], app: Starlette) -> Any:
    async def main() -> Any:
        async with serving(app) as client:
            return await scenario(client)

    return asyncio.run(main())


def test_queue_policy_and_warmup_are_read_from_config(tmp_path: Path) -> None:
    (config,) = load_repository(repository(tmp_path))
    assert config.dynamic_batching is not None
    schedule = config.dynamic_batching.schedule
    assert schedule.priority_levels == 2 and schedule.default_priority_level == 2
    assert schedule.policy(2) == QueuePolicy(max_queue_size=1)
    assert schedule.policy(1) == QueuePolicy(max_queue_size=4, default_timeout_us=5000, timeout_action=DELAY)
    [sample] = warmup_samples(config)
    assert sample.name == "zeros" and sample.count == 1
    np.testing.assert_array_equal(sample.inputs["x"], np.zeros((1, 4), dtype=np.float32))


def test_bad_default_priority_level_is_a_startup_error(tmp_path: Path) -> None:
    config = "max_batch_size: 4\ndynamic_batching { priority_levels: 2 default_priority_level: 3 }\n"
    with pytest.raises(StartupError, match=r"default_priority_level must be in 1\.\.priority_levels"):
        load_repository(repository(tmp_path, config))


def test_ready_routes_follow_the_worker_state(tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=str(repository(tmp_path))))

    async def scenario(client: httpx.AsyncClient) -> None:
        ready = await client.get("/ready")
        assert (ready.status_code, ready.text) == (200, "Ready")
        assert (await client.get("/v2/health/ready")).status_code == 200
        app.state.runtime.health.draining = True
        not_ready = await client.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"message": "Not ready: the worker is draining after SIGTERM"}
        assert (await client.get("/v2/health/ready")).status_code == 503
        assert (await client.get("/")).status_code == 200  # liveness: the process answers
        assert (await client.get("/v2/health/live")).status_code == 200

    run(scenario, app)


def test_full_queue_is_503_on_v2_naming_the_model(tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=str(repository(tmp_path))))
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        backend = app.state.runtime.pm.get_plugin("onnxruntime")
        batcher = backend.runners[("linear", "1")]._batcher
        gate = asyncio.Event()
        execute = batcher._execute

        async def held(instance: int, inputs: Any) -> Any:
            await gate.wait()
            return await execute(instance, inputs)

        batcher._execute = held
        url = "/v2/models/linear/infer"
        running = asyncio.ensure_future(client.post(url, json=body))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(client.post(url, json=body))
        await asyncio.sleep(0.05)
        shed = await client.post(url, json=body)
        bad = await client.post(url, json={**body, "parameters": {"priority": -1}})
        gate.set()
        return [await running, await queued, shed, bad]

    running, queued, shed, bad = run(scenario, app)
    assert running.status_code == 200 and queued.status_code == 200
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
    assert shed.json() == {
        "error": "model 'linear' has 1 requests queued at priority level 2, its max_queue_size; retry later"
    }
    assert bad.status_code == 400 and "priority" in bad.json()["error"]


def test_request_bodies_held_at_once_are_capped_declared_or_chunked() -> None:
    settings = Settings(entry_script=str(FAULTS / "score.py"), max_body_bytes_in_flight=1000)
    app = create_app(settings)
    json_type = {"content-type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"pad": "'
        for _ in range(6):
            yield b"x" * 100
        yield b'"}'

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        alone = await client.post("/score", json={"pad": "x" * 2000})  # one body is always admitted
        holding = asyncio.ensure_future(client.post("/score", json={"sleep": 0.5, "pad": "x" * 600}))
        await asyncio.sleep(0.1)
        declared = await client.post("/score", json={"pad": "x" * 600})
        chunked = await client.post("/score", content=chunks(), headers=json_type)
        small = await client.post("/score", json={})
        return [alone, await holding, declared, chunked, small]

    alone, holding, declared, chunked, small = run(scenario, app)
    assert alone.status_code == 200 and holding.status_code == 200 and small.status_code == 200
    for response in (declared, chunked):
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert "max_body_bytes_in_flight" in response.json()["message"]


def test_get_on_score_runs_the_script_so_it_is_admitted_like_post() -> None:
    """GET /score calls run() with the query (as azmlinfsrv); it bypassed the limit: queued without bound."""
    app = create_app(Settings(entry_script=str(FAULTS / "score.py"), max_concurrent_requests=1))

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        holding = asyncio.ensure_future(client.get("/score", params={"sleep": "0.5"}))
        await asyncio.sleep(0.1)
        refused = [await client.get("/score"), await client.post("/score", json={})]
        preflight = await client.options("/score", headers={"access-control-request-method": "POST"})
        return [await holding, preflight, *refused, await client.get("/score")]

    holding, preflight, *refused, after = run(scenario, app)
    assert holding.status_code == 200 and after.status_code == 200
    assert preflight.status_code == 200  # a refused preflight would read as a CORS failure in the browser
    for response in refused:
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert "max_concurrent_requests 1" in response.json()["message"]


def test_overload_settings_come_from_the_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.cli import build_parser, build_settings

    env = {"MAX_CONCURRENT_REQUESTS": "5", "RUNTIME_KEEPALIVE_MAX_AGE_S": "0", "RUNTIME_MAX_WORKER_MEMORY_MB": "512"}
    settings = Settings.from_env(env)
    assert (settings.max_concurrent_requests, settings.keepalive_max_age_s, settings.max_worker_memory_mb) == (
        5,
        0,
        512,
    )
    assert settings.max_requests == 0 and settings.max_body_bytes_in_flight == 200 * 1024 * 1024
    with pytest.raises(ValueError, match="RUNTIME_MAX_REQUESTS must be 0 \\(off\\) or positive"):
        Settings.from_env({"RUNTIME_MAX_REQUESTS": "-1"})
    for name in ("MAX_CONCURRENT_REQUESTS", "RUNTIME_MAX_REQUESTS", "RUNTIME_MAX_REQUESTS_JITTER"):
        monkeypatch.setenv(name, "")  # restored after the test, whatever apply_flags writes
    args = build_parser().parse_args(
        ["serve", "--max-concurrent-requests", "7", "--max-requests", "100", "--max-requests-jitter", "10"]
    )
    flagged = build_settings(args)
    assert (flagged.max_concurrent_requests, flagged.max_requests, flagged.max_requests_jitter) == (7, 100, 10)


def metric_value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _admitted(app: Any) -> AdmissionMiddleware:
    return AdmissionMiddleware(app, Admission(4, 1 << 20), WorkerHealth(), max_body_bytes=1 << 20)


def _scope(extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/score", "headers": [(b"content-length", b"2")]}
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


@pytest.mark.parametrize("told_by", ["protocol", "receive"])
def test_a_client_that_leaves_cancels_its_request(told_by: str) -> None:
    """Told by the protocol's ConnectionWatch (our server), or read from receive by a watcher task (any other)."""
    watch = ConnectionWatch()
    state: dict[str, Any] = {}

    async def scenario() -> None:
        left = asyncio.Event()
        delivered = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if delivered:
                return delivered.pop()
            await left.wait()
            return {"type": "http.disconnect"}

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            state["watched"] = len(watch.callbacks)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                state["cancelled"] = True
                raise

        async def send(message: Any) -> None:
            raise AssertionError("a request whose client left gets no answer")

        before = metric_value("runtime_requests_cancelled_total", {"route": "/score"})
        scope = _scope({CONNECTION_WATCH: watch} if told_by == "protocol" else None)
        served = asyncio.ensure_future(_admitted(app)(scope, receive, send))
        await asyncio.sleep(WATCH_AFTER_S * 4)
        if told_by == "protocol":
            watch.lost()
        else:
            left.set()
        await asyncio.wait_for(served, 5)  # returns: the cancellation is the middleware's, not the caller's
        state["counted"] = metric_value("runtime_requests_cancelled_total", {"route": "/score"}) - before

    asyncio.run(scenario())
    assert state == {"watched": 1 if told_by == "protocol" else 0, "cancelled": True, "counted": 1}
    assert watch.callbacks == set()


def test_an_answered_request_leaves_nothing_with_the_connection() -> None:
    watch = ConnectionWatch()
    sent: list[int] = []

    async def scenario() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        async def send(message: Any) -> None:
            sent.append(message.get("status", 0))

        await _admitted(app)(_scope({CONNECTION_WATCH: watch}), receive, send)
        watch.lost()  # the connection closes later: nothing of the request is called

    asyncio.run(scenario())
    assert sent == [200, 0] and watch.callbacks == set()
