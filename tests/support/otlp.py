"""A local OTLP/HTTP trace collector for tests: keeps every export, protobuf (Python SDK) or JSON (Triton)."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root


class Collector:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.spans: list[ExportedSpan] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.add(self.path, self.headers.get("content-type", ""), body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def add(self, path: str, content_type: str, body: bytes) -> None:
        spans = _json_spans(body) if "json" in content_type else _protobuf_spans(body)
        with self._lock:
            self.paths.append(path)
            self.spans.extend(spans)

    def named(self, name: str) -> list[ExportedSpan]:
        with self._lock:
            return [s for s in self.spans if s.name == name]


def _protobuf_spans(body: bytes) -> list[ExportedSpan]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    export = ExportTraceServiceRequest.FromString(body)
    return [
        ExportedSpan(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex())
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for s in scope.spans
    ]


def _json_spans(body: bytes) -> list[ExportedSpan]:
    export = json.loads(body)
    return [
        ExportedSpan(s["name"], s["traceId"].lower(), s["spanId"].lower(), s.get("parentSpanId", "").lower())
        for resource in export.get("resourceSpans", [])
        for scope in resource.get("scopeSpans", [])
        for s in scope.get("spans", [])
    ]


@contextlib.contextmanager
def collector() -> Iterator[Collector]:
    running = Collector()
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()
