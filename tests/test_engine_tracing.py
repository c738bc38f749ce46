"""Traces cross into the model engine: its queue and batch spans join the request's trace (real server, OTLP)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import script
from tests.support.otlp import collector
from tests.support.servers import ServerProcess, free_port, runtime_argv

pytestmark = pytest.mark.slow

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def test_engine_spans_continue_the_request_trace(model_repo: Path, tmp_path: Path) -> None:
    with collector() as received:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{received.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        port = free_port()
        argv = runtime_argv(
            "serve", "--port", str(port), "--model-dir", str(model_repo), "--entry", script("backend/hook_linear.py")
        )
        server = ServerProcess(argv, port, tmp_path / "runtime.log", env=env).start()
        try:
            for n in range(3):
                traceparent = f"00-{TRACE_ID[:-1]}{n}-b7ad6b716920333{n}-01"
                response = httpx.post(
                    server.url + "/score", json={"x": [1, 2, 3, 4]}, headers={"traceparent": traceparent}, timeout=30
                )
                assert response.status_code == 200, response.text
        finally:
            assert server.stop() == 0  # SIGTERM: worker and engine flush what they hold
        deadline = time.monotonic() + 10
        while len(received.named("batch")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    traces = {f"{TRACE_ID[:-1]}{n}" for n in range(3)}
    for name in ("POST /score", "infer linear", "queue", "batch"):
        assert {s.trace_id for s in received.named(name)} >= traces, (name, received.spans, server.log()[-2000:])
    infers = {s.span_id: s.trace_id for s in received.named("infer linear")}
    for span in received.named("queue") + received.named("batch"):
        # Made in the engine process, under the worker's infer span of the same request.
        assert infers.get(span.parent_span_id) == span.trace_id, span
