"""KServe v2 / Triton HTTP endpoints for every model the backends serve.

``tritonclient.http.InferenceServerClient`` works against these unchanged.
Errors use Triton's body, ``{"error": "..."}``; bad input is a 400 (where
Triton answers some of it with 500).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from runtime import __version__
from runtime.dataplane import CLASSIFICATION, OUTPUTS, REQUEST_ID
from runtime.errors import Overloaded, ServingError
from runtime.http.body import read_decoded_body
from runtime.http.health import not_ready_reason
from runtime.http.requests import first_header, state_of
from runtime.http.responses import overloaded
from runtime.http.v2codec import RequestedOutput, decode_infer_request, encode_outputs
from runtime.logs import usable_request_id
from runtime.serving.datatypes import HEADER_LENGTH
from runtime.serving.tensors import expected_shape

EXTENSIONS = ["classification", "binary_tensor_data", "model_repository", "schedule_policy"]
# Request parameters of the schedule-policy extension, handed to the backend's queue.
SCHEDULE_PARAMETERS = ("priority", "timeout")
logger = logging.getLogger("runtime.v2")
HEADER_NAME = HEADER_LENGTH.lower().encode("latin-1")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


def v2_errors(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Overloaded as ex:
            return overloaded(error(ex.status_code, ex.message), ex)
        except ServingError as ex:
            if ex.status_code >= 500:
                logger.error("%s %s", request.url.path, ex.log_line(REQUEST_ID.get() or _request_id(request)))
            return error(ex.status_code, ex.message)

    wrapped.__name__ = handler.__name__
    return wrapped


def _request_id(request: Request) -> str | None:
    ids = request.scope.get("state", {}).get("request_ids")
    return ids.request_id if ids is not None else None


def _model_version(request: Request) -> tuple[str, str | None]:
    return request.path_params["model"], request.path_params.get("version")


@v2_errors
async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "runtime", "version": __version__, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if await not_ready_reason(request) is None else 503)


@v2_errors
async def model_metadata(request: Request) -> Response:
    model, version = _model_version(request)
    config = state_of(request).plane.resolve(model, version)

    def tensors(specs: list[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": expected_shape(config, t)} for t in specs]

    return JSONResponse(
        {
            "name": config.name,
            "versions": config.versions,
            "platform": config.proto.platform,
            "inputs": tensors(config.inputs),
            "outputs": tensors(config.outputs),
        }
    )


@v2_errors
async def model_ready(request: Request) -> Response:
    model, version = _model_version(request)
    state = state_of(request)
    state.plane.resolve(model, version)
    return Response(status_code=200 if await state.pm.model_ready(model, version) else 503)


@v2_errors
async def model_config_json(request: Request) -> Response:
    model, version = _model_version(request)
    return JSONResponse(state_of(request).plane.resolve(model, version).config_json())


@v2_errors
async def repository_index(request: Request) -> Response:
    return JSONResponse(state_of(request).pm.model_index())


@v2_errors
async def model_infer(request: Request) -> Response:
    model, version = _model_version(request)
    state = state_of(request)
    body = await read_decoded_body(request, state.settings.max_body_bytes, state.settings.max_inflate_ratio)
    decoded = decode_infer_request(body, first_header(request, HEADER_NAME))
    config = state.plane.resolve(model, version)
    requested = decoded.outputs or [RequestedOutput(t.name, decoded.binary_output) for t in config.outputs]
    if decoded.id and usable_request_id(decoded.id):
        REQUEST_ID.set(decoded.id)  # the answer echoes any id; only a header-safe one names the request
    parameters: dict[str, Any] = {OUTPUTS: [o.name for o in requested]} if decoded.outputs else {}
    counts = {o.name: o.class_count for o in requested if o.class_count}
    parameters.update({k: decoded.parameters[k] for k in SCHEDULE_PARAMETERS if k in decoded.parameters})
    if counts:
        parameters[CLASSIFICATION] = counts
    outputs = await state.plane.run(config, version, decoded.inputs, parameters, exact_datatypes=True)
    selected = [(o.name, outputs[o.name], o.binary) for o in requested]
    header: dict[str, Any] = {"model_name": model, "model_version": version or config.latest_version}
    if decoded.id is not None:
        header["id"] = decoded.id
    payload, header_length = encode_outputs(selected, header)
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


class AsgiHandler:
    """A ``request -> response`` handler as its route's ASGI app, for the hot path (v2 infer).

    Starlette wraps a function endpoint in ``request_response``: two closures a request and a wrapper
    around each send, for exception handling that the ExceptionMiddleware around the router does as
    well, with the same handlers and the same scope.
    """

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


def routes() -> list[Route]:
    model = "/v2/models/{model}"
    infer_app = AsgiHandler(model_infer)
    versioned = "/v2/models/{model}/versions/{version}"
    return [
        # First: Starlette tries routes in order, and infer is the hot path (the paths do not overlap).
        *(Route(f"{base}/infer", infer_app, methods=["POST"], name="model_infer") for base in (model, versioned)),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST", "GET"]),
        *(Route(base, model_metadata, methods=["GET"]) for base in (model, versioned)),
        *(Route(f"{base}/ready", model_ready, methods=["GET"]) for base in (model, versioned)),
        *(Route(f"{base}/config", model_config_json, methods=["GET"]) for base in (model, versioned)),
    ]
