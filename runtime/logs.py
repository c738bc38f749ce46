"""Logging set-up: one format for the master, the workers and user code.

Every record written while a request is served carries its ``x-request-id``
(``record.request_id``, from a context variable that thread-pool calls inherit),
whoever logs it: the runtime, score.py's loggers, ``print()`` (captured as
azmlinfsrv does) or the access log. Text lines show it in brackets after the
logger name; ``--log-format json`` writes one JSON object per line.
"""

from __future__ import annotations

import builtins
import contextvars
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

# azmlinfsrv's format (UTC times), plus the request id where there is one.
FORMAT = "%(asctime)s %(levelname).1s [%(process)d] %(name)s%(request_tag)s - %(message)s"
FORMATS = ("text", "json")

# The request being served; thread-pool calls inherit it, so runtime.infer() from run() propagates it.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
ID_LIMIT = 100  # characters of an x-request-id (azmlinfsrv's limit)


def usable_request_id(text: str) -> bool:
    """Whether a client's id (a v2 body's "id" is any JSON string) may name the request: in log lines and in the
    x-request-id header sent to Triton, where a control character, a line break or non-ASCII would forge log
    lines or fail the call."""
    return len(text) <= ID_LIMIT and text.isascii() and text.isprintable()


PRINT_LOGGER = "runtime.print"
current_format = "text"  # what configure() chose; Gunicorn's handlers get it too
_base_factory = logging.getLogRecordFactory()
_builtin_print = builtins.print


# Set by runtime.tracing while tracing is on: the current (trace id, span id) in hex, or None.
trace_ids: Callable[[], tuple[str, str] | None] | None = None


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    request_id = REQUEST_ID.get()
    record.request_id = request_id
    record.request_tag = f" [{request_id}]" if request_id else ""
    ids = trace_ids() if trace_ids is not None else None
    record.trace_id, record.span_id = ids or (None, None)
    return record


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(FORMAT)
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_tag"):  # made without the record factory (logging.makeLogRecord)
            record.request_tag = ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, process, request_id, message, exception,
    stack (``stack_info=True``)."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            line["trace_id"] = trace_id
            line["span_id"] = getattr(record, "span_id", None)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def formatter(log_format: str = "text") -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def tag_records() -> None:
    """Every record made from now on carries the request id (and trace ids) of where it is made."""
    if logging.getLogRecordFactory() is not _record_factory:
        logging.setLogRecordFactory(_record_factory)


def configure(level: str = "INFO", log_format: str = "text") -> None:
    """Root handler on stderr with the chosen format; request ids on every record from now on."""
    global current_format
    tag_records()
    current_format = log_format
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter(log_format))
    root.setLevel(level.upper())
    logging.getLogger("runtime").setLevel(level.upper())


@functools.wraps(_builtin_print)
def _print_to_log(
    *objects: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
) -> None:
    # As azmlinfsrv: print() to stdout becomes an INFO record of one logger; other files are left alone.
    if file is None or file is sys.stdout:
        logging.getLogger(PRINT_LOGGER).info((sep if sep is not None else " ").join(map(str, objects)))
    else:
        _builtin_print(*objects, sep=sep, end=end, file=file, flush=flush)


def capture_print() -> None:
    """Route score.py's ``print()`` to the log (with the request id), as azmlinfsrv does."""
    builtins.print = _print_to_log


def release_print() -> None:
    builtins.print = _builtin_print
