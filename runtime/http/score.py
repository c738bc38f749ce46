"""The Azure ML routes: ``GET /``, ``/score`` and ``/swagger.json``."""

from __future__ import annotations

import json
import logging
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from runtime import api
from runtime.azureml.aml import AMLResponse
from runtime.azureml.entry import InputMode
from runtime.azureml.request import ScoringRequest
from runtime.errors import Overloaded, RunFailed, ScoringFailed, ServingError
from runtime.http.requests import read_body, state_of
from runtime.http.responses import (
    EXEC_MS,
    FAILED,
    error_response,
    from_aml_response,
    from_foreign_response,
    json_response,
    overloaded,
    sendable,
)
from runtime.http.streaming import StreamFailed, StreamResponse, is_stream
from runtime.logs import REQUEST_ID

logger = logging.getLogger("runtime.scoring")

SCRIPT_FAILED = "An unexpected error occurred in scoring script. Check the logs for more info."


async def health(request: Request) -> Response:
    return PlainTextResponse("Healthy", media_type="text/html")


async def swagger(request: Request) -> Response:
    try:
        doc = state_of(request).swagger.get(request.query_params.get("version"))
    except ServingError as ex:
        return error_response(ex.status_code, ex.message)
    return json_response(200, doc)


async def score(request: Request) -> Response:
    state = state_of(request)
    entry = state.entry
    if entry is None:
        return error_response(
            404,
            "This server has no entry script (runtime serve --entry score.py); its models are served at "
            "/v2/models/<model>/infer.",
        )
    raw = entry is not None and entry.input_mode is InputMode.RAW
    if request.method == "OPTIONS" and not raw:
        # azmlinfsrv answers OPTIONS with an empty 200 (the CORS middleware adds its headers to it).
        return Response(b"", media_type="text/html", headers={FAILED: "False"})
    started = time.perf_counter()
    body = b""
    try:
        body = await read_body(request, state.settings.max_body_bytes)
        ids = request.scope["state"]["request_ids"]
        if state.binding is not None:
            api.use(state.binding)
        scoring_request = ScoringRequest(
            method=request.method,
            path=request.url.path,
            headers=request.headers,
            query=request.query_params,
            body=body,
            request_id=ids.request_id,
            client=request.client.host if request.client else None,
        )
        result, exec_ms = await state.pipeline.score(scoring_request)
        response = to_response(result)
        if isinstance(response, StreamingResponse):
            # The scoring timeout covers the time to the first chunk.
            response = StreamResponse.wrap(response)
            timeout_ms = state.settings.timeout_ms
            remaining = timeout_ms / 1000 - (time.perf_counter() - started)
            await response.prime(state.executor, remaining, timeout_ms)
        response.headers[EXEC_MS] = f"{exec_ms:.3f}"
    except Overloaded as ex:
        response = overloaded(error_response(ex.score_status, ex.message), ex)
    except ServingError as ex:
        if ex.status_code >= 500:
            logger.error("%s %s", request.url.path, ex.log_line(REQUEST_ID.get()))
        response = error_response(ex.status_code, ex.message, run_failed=ex.status_code >= 500)
    except RunFailed as ex:
        response = run_failed_response(ex.original, request, body)
    except StreamFailed as ex:
        response = run_failed_response(ex.__cause__ or ex, request, body)
    logger.debug(
        "%s %s %d %.3fms",
        request.method,
        request.url.path,
        response.status_code,
        (time.perf_counter() - started) * 1000,
    )
    return response


def run_failed_response(ex: BaseException, request: Request, body: bytes) -> Response:
    if isinstance(ex, json.JSONDecodeError) and ex.doc == body.decode("utf-8", "replace"):
        # The body itself: the client's mistake, not the script's. One line, and the traceback only at DEBUG
        # (clients could fill the log with them).
        logger.warning(
            "run() could not parse the body of %s %s as JSON, answered 400: %s",
            request.method,
            request.url.path,
            ex,
            exc_info=ex if logger.isEnabledFor(logging.DEBUG) else None,
        )
    else:  # the script's failure (JSON it parsed of its own too: a file, another service's answer)
        logger.error("run() failed for %s %s", request.method, request.url.path, exc_info=ex)
    if isinstance(ex, json.JSONDecodeError):
        # The script could not parse JSON: the client sent bad JSON (azmlinfsrv answers 500 here).
        return error_response(400, f"The request body is not valid JSON: {ex}", run_failed=True)
    return error_response(500, SCRIPT_FAILED, run_failed=True)


def to_response(result: object) -> Response:
    if isinstance(result, Response):
        result.headers.setdefault(FAILED, str(result.status_code >= 500))
        return sendable(result)
    if is_stream(result):
        # A bare generator from run() or postprocess: text when its chunks are str (decided on the first).
        return StreamResponse(result, headers={FAILED: "False"})  # type: ignore[arg-type]
    try:
        built = from_aml_response(result) if isinstance(result, AMLResponse) else from_foreign_response(result)
    except UnicodeEncodeError as ex:  # a header value beyond latin-1: the script's answer, not our failure
        raise RunFailed(ValueError(f"run() returned a response HTTP cannot carry: {ex}")) from ex
    if built is not None:
        return sendable(built)
    try:
        return json_response(200, result)
    except (TypeError, ValueError, RecursionError) as ex:
        raise ScoringFailed(f"run() returned a value that cannot be serialised to JSON: {ex}") from ex


def routes() -> list[Route]:
    return [
        Route("/", health, methods=["GET"]),
        Route("/score", score, methods=["GET", "POST", "OPTIONS"]),
        Route("/swagger.json", swagger, methods=["GET"]),
    ]
