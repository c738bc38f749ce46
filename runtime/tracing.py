"""OpenTelemetry tracing: off by default, configured by the standard ``OTEL_*`` variables.

Tracing is on in a worker when ``OTEL_TRACES_EXPORTER`` names exporters (``console``,
``otlp``; ``none`` is off) or Application Insights is enabled, and the packages are
installed (``pip install 'scoring-runtime[otel]'``). Everything else is the SDK's own
``OTEL_*`` configuration: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_PROPAGATORS`` (W3C ``traceparent``
by default) and ``OTEL_BSP_*``.

Spans: the request (``POST /score``, continuing an incoming ``traceparent``), ``preprocess``,
``run`` or ``infer <model>``, ``queue`` (time a request waited for its batch), ``batch
<model>`` (the execution, a child of the first request in the batch and linked to every
request in it), ``triton infer`` (whose ``traceparent`` goes on to Triton) and
``postprocess``. When tracing is off, every helper here is a no-op that costs a function
call.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from runtime import logs
from runtime.errors import StartupError

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from runtime.settings import Settings

logger = logging.getLogger("runtime.tracing")

NOOP: contextlib.AbstractContextManager[None] = contextlib.nullcontext()  # a span when off
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
# Log records to Application Insights: the handler on the "runtime" logger and its provider.
_log_handler: logging.Handler | None = None
_log_provider: LoggerProvider | None = None


def enabled() -> bool:
    return _tracer is not None


def _otlp_exporter(protocol: str) -> SpanExporter:
    # The exporters read OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout, ...) themselves.
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError as ex:
            raise StartupError(
                "OTLP over gRPC needs its exporter: pip install opentelemetry-exporter-otlp-proto-grpc"
            ) from ex
        return GrpcExporter()  # type: ignore[no-any-return]
    if protocol != "http/protobuf":
        raise StartupError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported: use http/protobuf or grpc")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as ex:
        raise StartupError("the OTLP exporter is not installed: pip install 'scoring-runtime[otel]'") from ex
    return OTLPSpanExporter()


def _exporter_processor(name: str, settings: Settings) -> SpanProcessor:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    if name == "console":
        # Written as each span ends: for reading along, not for production volume.
        return SimpleSpanProcessor(ConsoleSpanExporter())
    if name == "otlp":
        return BatchSpanProcessor(_otlp_exporter(settings.otel_exporter_otlp_protocol))
    raise StartupError(f"OTEL_TRACES_EXPORTER {name!r} is not supported: use console, otlp or none")


def _azure_monitor(connection_string: str, resource: Resource) -> SpanProcessor | None:
    """Application Insights: spans, and the runtime's log records (``print()`` included) as azmlinfsrv sends."""
    try:
        from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter, AzureMonitorTraceExporter
    except ImportError:
        logger.warning(
            "Application Insights is enabled but azure-monitor-opentelemetry-exporter is not installed; "
            "install it with: pip install 'scoring-runtime[azure-monitor]'"
        )
        return None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _export_logs(AzureMonitorLogExporter(connection_string=connection_string), resource)
    return BatchSpanProcessor(AzureMonitorTraceExporter(connection_string=connection_string))


def _export_logs(exporter: Any, resource: Resource) -> None:
    """Send the records of the ``runtime`` loggers (INFO and up) to ``exporter``, with their trace context."""
    global _log_handler, _log_provider
    try:
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    except ImportError:  # the SDK's logs API is still experimental and may move
        logger.warning("This OpenTelemetry SDK has no logs API; only traces go to Application Insights")
        return
    _log_provider = LoggerProvider(resource=resource)
    _log_provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    with warnings.catch_warnings():
        # Newer SDKs deprecate their handler (azmlinfsrv 1.5.1 uses the same one); it still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        _log_handler = LoggingHandler(level=logging.INFO, logger_provider=_log_provider)
    logging.getLogger("runtime").addHandler(_log_handler)


def configured(settings: Settings) -> bool:
    """Whether ``settings`` ask for tracing (an exporter, or Application Insights)."""
    names = [n for n in settings.otel_traces_exporter if n != "none"]
    return not settings.otel_sdk_disabled and bool(names or settings.app_insights_connection_string)


def setup(settings: Settings) -> bool:
    """Start tracing in this worker as ``settings`` say; False when off or OpenTelemetry is missing."""
    global _tracer, _provider
    names = [n for n in settings.otel_traces_exporter if n != "none"]
    insights = settings.app_insights_connection_string
    if not configured(settings):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        logger.warning("Tracing is configured but OpenTelemetry is not installed: pip install 'scoring-runtime[otel]'")
        return False
    shutdown()
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "unknown_service")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": settings.service_name}))
    chosen: list[SpanProcessor] = [_exporter_processor(n, settings) for n in names]
    if insights and (monitor := _azure_monitor(insights, resource)) is not None:
        chosen.append(monitor)
        names.append("azure_monitor")
    if not chosen:
        return False  # Application Insights alone, without its exporter: spans would go nowhere
    provider = TracerProvider(resource=resource)
    for processor in chosen:
        provider.add_span_processor(processor)
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)  # score.py's own spans join ours
    _provider, _tracer = provider, provider.get_tracer("runtime")
    logs.trace_ids = current_ids
    logger.info("Tracing on: exporters %s", ", ".join(names))
    return True


def add_processor(processor: SpanProcessor) -> None:
    """One more span processor (an in-memory exporter in tests); tracing must be on."""
    assert _provider is not None, "tracing is off"
    _provider.add_span_processor(processor)


def shutdown() -> None:
    """Flush and stop (worker shutdown)."""
    global _tracer, _provider, _log_handler, _log_provider
    if _provider is not None:
        _provider.shutdown()
    if _log_handler is not None:
        logging.getLogger("runtime").removeHandler(_log_handler)
    if _log_provider is not None:
        _log_provider.shutdown()  # flushes what is queued
    _provider = _tracer = _log_handler = _log_provider = None
    logs.trace_ids = None


def current_ids() -> tuple[str, str] | None:
    """The current (trace id, span id) in hex, for log records."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def span(name: str, attributes: dict[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one, current inside the ``with``."""
    if _tracer is None:
        return NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def client_span(name: str, attributes: dict[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A span for a call to another service (Triton); :func:`inject` inside it carries it on."""
    if _tracer is None:
        return NOOP
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add ``traceparent`` (and the other configured propagation headers) for the current span."""
    if _tracer is not None:
        from opentelemetry import propagate

        propagate.inject(headers)
    return headers


def capture() -> Any:
    """The current trace context, kept by a request that waits (a batch queue); None when off."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


@contextlib.contextmanager
def continued(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Inside, the trace context ``carrier`` (another process's :func:`inject`) is current."""
    if _tracer is None or not carrier:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)


def _epoch_ns(perf: float, now_perf: float, now_ns: int) -> int:
    return now_ns - int((now_perf - perf) * 1e9)


def record_queue(parents: Iterable[Any], enqueued: Iterable[float], started: float) -> None:
    """A finished ``queue`` span per request: from ``enqueued`` to ``started`` (``time.perf_counter``)."""
    if _tracer is None:
        return
    now_perf, now_ns = time.perf_counter(), time.time_ns()
    end = _epoch_ns(started, now_perf, now_ns)
    for parent, queued in zip(parents, enqueued, strict=True):
        if parent is not None:
            _tracer.start_span("queue", context=parent, start_time=_epoch_ns(queued, now_perf, now_ns)).end(end)


def batch_span(name: str, parents: Sequence[Any], attributes: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """The span of one batch execution: a child of the first request in it, linked to every request."""
    if _tracer is None or not any(p is not None for p in parents):
        return NOOP
    return _tracer.start_as_current_span(name, context=parents[0], links=_links(parents), attributes=attributes)


def start_batch_span(name: str, parents: Sequence[Any], attributes: dict[str, Any]) -> Any:
    """:func:`batch_span` for a batch whose pieces run in several tasks: not made current; end it with
    :func:`end_span`. None when off."""
    if _tracer is None or not any(p is not None for p in parents):
        return None
    return _tracer.start_span(name, context=parents[0], links=_links(parents), attributes=attributes)


def end_span(span: Any, error: BaseException | None = None) -> None:
    """End a span of :func:`start_batch_span`; ``error`` is recorded as :func:`batch_span` records one."""
    if span is None:
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def _links(parents: Sequence[Any]) -> list[Any]:
    from opentelemetry import trace

    return [trace.Link(trace.get_current_span(p).get_span_context()) for p in parents if p is not None]


def server_span(method: str, headers: dict[str, str], attributes: dict[str, Any]) -> Any:
    """The server span of one request, continuing the trace of an incoming ``traceparent``; None when off."""
    if _tracer is None:
        return None
    from opentelemetry import propagate, trace

    return _tracer.start_as_current_span(
        method, context=propagate.extract(headers), kind=trace.SpanKind.SERVER, attributes=attributes
    )
