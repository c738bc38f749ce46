"""OpenTelemetry tracing and request ids in logs, in-process (httpx.ASGITransport on create_app)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import types
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import logs, tracing
from runtime.settings import Settings
from tests.conftest import script
from tests.support.inprocess import client
from tests.support.otlp import collector

pytestmark = pytest.mark.anyio

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.shutdown()


@contextlib.asynccontextmanager
async def serve(settings: Settings, exporter: InMemorySpanExporter) -> AsyncIterator[httpx.AsyncClient]:
    async with client(settings) as http:
        tracing.add_processor(SimpleSpanProcessor(exporter))
        yield http


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


def trace_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def settings_for(entry: str, model_repo: Path) -> Settings:
    return Settings(entry_script=script(entry), model_dir=str(model_repo), otel_traces_exporter=("console",))


@pytest.mark.parametrize(("entry", "model_span"), [("backend/hook_linear.py", None), ("backend/aml_linear.py", "run")])
async def test_traceparent_continues_into_every_span(
    exported: InMemorySpanExporter, model_repo: Path, entry: str, model_span: str | None
) -> None:
    async with serve(settings_for(entry, model_repo), exported) as http:
        response = await http.post(
            "/score", json={"x": [1, 2, 3, 4]}, headers={"traceparent": TRACEPARENT, "x-request-id": "rid-trace"}
        )
        assert response.status_code == 200, response.text
    spans = by_name(exported.get_finished_spans())
    wanted = ["POST /score", "preprocess", "infer linear", "queue", "batch", "postprocess"]
    if model_span:
        wanted.append(model_span)
    for name in wanted:
        assert name in spans, f"no {name!r} span in {sorted(spans)}"
        assert trace_hex(spans[name][-1]) == TRACE_ID, name
    request = spans["POST /score"][-1]
    assert request.parent is not None and f"{request.parent.span_id:016x}" == "b7ad6b7169203331"
    assert request.attributes is not None and request.attributes["azureml.request_id"] == "rid-trace"
    assert request.attributes["http.response.status_code"] == 200
    queue, batch = spans["queue"][-1], spans["batch"][-1]
    assert queue.end_time is not None and queue.start_time is not None and queue.end_time >= queue.start_time
    infer = spans["infer linear"][-1]
    assert batch.parent is not None and infer.context is not None
    assert batch.parent.span_id == infer.context.span_id  # the execution hangs under the request's infer


async def test_batch_execution_is_linked_to_every_request(exported: InMemorySpanExporter, model_repo: Path) -> None:
    traces = [f"{i:032x}" for i in range(1, 9)]
    async with serve(settings_for("backend/hook_linear.py", model_repo), exported) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    "/score",
                    json={"x": [i, 0, 0, 0], "model": "sleepy"},
                    headers={"traceparent": f"00-{t}-{i:016x}-01"},
                )
                for i, t in enumerate(traces, 1)
            )
        )
        assert [r.status_code for r in responses] == [200] * len(traces)
    spans = by_name(exported.get_finished_spans())
    linked = {f"{link.context.trace_id:032x}" for span in spans["batch"] for link in span.links}
    assert linked == set(traces)
    assert len(spans["batch"]) < len(traces)  # requests shared executions
    assert {trace_hex(s) for s in spans["queue"]} == set(traces)


async def test_tracing_is_off_by_default(model_repo: Path) -> None:
    settings = Settings(entry_script=script("backend/hook_linear.py"), model_dir=str(model_repo))
    assert not tracing.configured(settings)
    async with client(settings) as http:
        assert not tracing.enabled()
        response = await http.post("/score", json={"x": [1, 2, 3, 4]}, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
        assert "traceparent" not in response.headers


async def test_log_records_carry_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with client(Settings(entry_script=script("aml/prints.py"))) as http:
        response = await http.post("/score", content=b"hello", headers={"x-request-id": "rid-log"})
        assert response.status_code == 200
    printed = [r for r in caplog.records if r.name == logs.PRINT_LOGGER and r.getMessage() == "scoring hello"]
    assert len(printed) == 1
    assert getattr(printed[0], "request_id", None) == "rid-log"
    assert "[rid-log]" in logs.TextFormatter().format(printed[0])
    line = json.loads(logs.JsonFormatter().format(printed[0]))
    assert line["request_id"] == "rid-log" and line["message"] == "scoring hello" and line["level"] == "INFO"
    bare = logging.makeLogRecord({"name": "other", "msg": "made elsewhere", "levelno": logging.INFO})
    assert logs.TextFormatter().format(bare).endswith(" other - made elsewhere")
    init = [r for r in caplog.records if r.getMessage() == "init says hello"]
    assert len(init) == 1 and getattr(init[0], "request_id", "missing") is None


def test_app_insights_switches() -> None:
    key = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    on = Settings.from_env({"AML_APP_INSIGHTS_ENABLED": "true", "AML_APP_INSIGHTS_KEY": key})
    assert on.app_insights_connection_string == f"InstrumentationKey={key}"
    assert tracing.configured(on)
    # As azmlinfsrv: an invalid key or any value but "true" leaves it off.
    assert (
        Settings.from_env(
            {"AML_APP_INSIGHTS_ENABLED": "true", "AML_APP_INSIGHTS_KEY": "nope"}
        ).app_insights_connection_string
        is None
    )
    assert (
        Settings.from_env(
            {"AML_APP_INSIGHTS_ENABLED": "True", "AML_APP_INSIGHTS_KEY": key}
        ).app_insights_connection_string
        is None
    )
    assert not tracing.configured(Settings.from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}))
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "console,otlp"}).otel_traces_exporter == ("console", "otlp")


def fake_exporter(base: type, success: Any) -> Any:
    """Stands in for an azure-monitor-opentelemetry-exporter class (no network here); keeps what it is given."""

    class Fake(base):  # type: ignore[misc,valid-type]
        made: ClassVar[list[Any]] = []

        def __init__(self, connection_string: str) -> None:
            self.connection_string = connection_string
            self.items: list[Any] = []
            self.made.append(self)

        def export(self, batch: Sequence[Any]) -> Any:
            self.items.extend(batch)
            return success

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return Fake


FakeTraceExporter = fake_exporter(SpanExporter, SpanExportResult.SUCCESS)
FakeLogExporter = fake_exporter(LogRecordExporter, LogRecordExportResult.SUCCESS)


async def test_app_insights_exports_through_azure_monitor(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    settings = Settings(entry_script=script("aml/prints.py"), app_insights_enabled=True, app_insights_key=key)
    caplog.set_level(logging.INFO)  # runtime serve's default level
    # Not installed: a warning that says what to install, and the server serves.
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry.exporter", None)
    async with client(settings) as http:
        assert (await http.post("/score", content=b"x")).status_code == 200
    assert "pip install 'scoring-runtime[azure-monitor]'" in caplog.text
    # Installed: the request's spans go to it, with azmlinfsrv's connection string.
    monkeypatch.setitem(
        sys.modules,
        "azure.monitor.opentelemetry.exporter",
        types.SimpleNamespace(AzureMonitorTraceExporter=FakeTraceExporter, AzureMonitorLogExporter=FakeLogExporter),
    )
    async with client(settings) as http:
        assert (await http.post("/score", content=b"x", headers={"traceparent": TRACEPARENT})).status_code == 200
    exporter = FakeTraceExporter.made[-1]
    assert exporter.connection_string == f"InstrumentationKey={key}"
    assert {"POST /score", "run"} <= {s.name for s in exporter.items}
    assert {trace_hex(s) for s in exporter.items} == {TRACE_ID}
    # Log records too (print() included), correlated with the request's trace, as azmlinfsrv sends them.
    log_exporter = FakeLogExporter.made[-1]
    assert log_exporter.connection_string == f"InstrumentationKey={key}"
    printed = [r for r in log_exporter.items if r.log_record.body == "scoring x"]
    assert len(printed) == 1
    assert f"{printed[0].log_record.trace_id:032x}" == TRACE_ID


def test_app_insights_without_its_exporter_leaves_tracing_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Tracing was on with no exporter at all: spans made for nobody on every request, and a log line that said
    "Tracing on: exporters azure_monitor" right after the warning that it is not installed."""
    caplog.set_level(logging.INFO)
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry.exporter", None)
    settings = Settings(app_insights_enabled=True, app_insights_key="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    try:
        assert tracing.setup(settings) is False
        assert not tracing.enabled()
    finally:
        tracing.shutdown()
    assert "Tracing on" not in caplog.text
    assert "pip install 'scoring-runtime[azure-monitor]'" in caplog.text


def test_inject_carries_the_current_span_on() -> None:
    assert tracing.inject({}) == {}  # off: nothing added
    assert tracing.setup(Settings(otel_traces_exporter=("console",)))
    try:
        with tracing.client_span("triton infer") as outer:
            headers = tracing.inject({"x-request-id": "r"})
        trace_id = f"{outer.get_span_context().trace_id:032x}"
        assert headers["x-request-id"] == "r"
        assert headers["traceparent"].split("-")[1] == trace_id
    finally:
        tracing.shutdown()


async def test_otlp_exporter_sends_to_the_configured_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with collector() as received:
        # Standard variables, read by the SDK's exporter itself.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{received.port}")
        settings = Settings.from_env({"OTEL_TRACES_EXPORTER": "otlp", "AZUREML_ENTRY_SCRIPT": script("aml/prints.py")})
        async with client(settings) as http:
            response = await http.post("/score", content=b"x", headers={"traceparent": TRACEPARENT})
            assert response.status_code == 200
        # Shutting the worker down flushed the batch.
        assert set(received.paths) == {"/v1/traces"}
        assert {s.trace_id for s in received.spans} == {TRACE_ID}
        assert {"POST /score", "preprocess", "run", "postprocess"} <= {s.name for s in received.spans}
