"""Turning results and errors into HTTP responses with the Azure ML body and headers."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from starlette.responses import Response, StreamingResponse

from runtime.azureml.aml import AMLResponse
from runtime.errors import Overloaded, RunFailed
from runtime.http.streaming import StreamResponse

FAILED = "x-ms-run-function-failed"
# azmlinfsrv's answer to an error nobody handled.
INTERNAL_ERROR = "An unexpected internal error occurred. Check the logs for more info."
EXEC_MS = "x-ms-run-fn-exec-ms"
# RFC 9110: a header name is a token; a value has no control characters but tab. uvicorn sends what it is given
# (an empty name: a malformed header line) or fails once the answer is under way (no answer at all).
HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BAD_HEADER_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def numpy_default(value: Any) -> Any:
    """``json.dumps(default=...)``: numpy arrays become lists, numpy scalars numbers, bytes UTF-8 text."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_response(status: int, body: Any, run_failed: bool = False) -> Response:
    """azmlinfsrv's ``AMLResponse(body, status, json_str=True)``: ``json.dumps`` with its default separators.

    NaN and Infinity are written as the bare tokens ``NaN`` and ``Infinity``, as azmlinfsrv (Python's json)
    writes them; see docs/reliability.md.
    """
    return Response(
        json.dumps(body, default=numpy_default),
        status_code=status,
        media_type="application/json",
        headers={FAILED: str(run_failed)},
    )


def error_response(status: int, message: str, run_failed: bool = False) -> Response:
    return json_response(status, {"message": message}, run_failed)


def from_aml_response(result: AMLResponse) -> Response:
    response: Response
    if result.stream is not None:
        response = StreamResponse(result.stream, status_code=result.status_code)
    else:
        response = Response(result.body, status_code=result.status_code)
    failed = result.run_function_failed or result.status_code >= 500
    response.headers[FAILED] = str(failed)
    for name, value in result.headers:  # Content-Type among them, unless the script removed it
        response.headers.append(name, value)
    return response


def sendable(response: Response) -> Response:
    """A response the script built, as HTTP carries it: :class:`RunFailed` (the script's 500) for a status or a
    header that HTTP (uvicorn: statuses 100 to 599) cannot carry; no body for 1xx, 204 and 304, as Werkzeug."""
    status = response.status_code
    problem = None if 100 <= status <= 599 else f"status {status} (HTTP statuses run from 100 to 599)"
    for name, value in response.raw_headers:
        if not HEADER_NAME.fullmatch(name) or BAD_HEADER_VALUE.search(value):
            problem = f"header {name.decode('latin-1')!r}: {value.decode('latin-1')!r}"
    if problem is not None:
        raise RunFailed(ValueError(f"run() returned a response HTTP cannot carry: {problem}"))
    if (status < 200 or status in (204, 304)) and not isinstance(response, StreamingResponse):
        response.body = b""
    return response


def from_foreign_response(result: Any) -> Response | None:
    """A Flask/Werkzeug Response (from a script that imports Flask itself), duck-typed."""
    if not (hasattr(result, "status_code") and hasattr(result, "get_data") and hasattr(result, "headers")):
        return None
    response = Response(result.get_data(), status_code=int(result.status_code))
    for name, value in result.headers.items():
        if name.lower() != "content-length":
            response.headers.append(name, str(value))
    if int(result.status_code) >= 500:
        response.headers[FAILED] = "True"
    return response


def overloaded(response: Response, error: Overloaded) -> Response:
    """A load-shedding answer: tell the client when to come back."""
    response.headers["retry-after"] = str(error.retry_after_s)
    return response
