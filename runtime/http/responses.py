"""Turning results and errors into HTTP responses with the Azure ML body and headers."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from runtime.azureml.aml import AMLResponse
from runtime.errors import Overloaded
from runtime.http.streaming import StreamResponse

FAILED = "x-ms-run-function-failed"
# azmlinfsrv's answer to an error nobody handled.
INTERNAL_ERROR = "An unexpected internal error occurred. Check the logs for more info."
EXEC_MS = "x-ms-run-fn-exec-ms"


def json_response(status: int, body: Any, run_failed: bool = False) -> Response:
    """azmlinfsrv's ``AMLResponse(body, status, json_str=True)``: ``json.dumps`` with its default separators."""
    return Response(
        json.dumps(body),
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
    response.headers["content-type"] = result.content_type
    failed = result.run_function_failed or result.status_code >= 500
    response.headers[FAILED] = str(failed)
    for name, value in result.headers:
        response.headers.append(name, value)
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
