"""Built-in defaults (``trylast``): the Azure ML input contract and JSON outputs.

preprocess builds run()'s arguments exactly as azmlinfsrv does:

* undecorated ``run(data)``: POST body as str; GET query parameters as a JSON string;
* ``@rawhttp``: an :class:`runtime.azureml.aml.AMLRequest`;
* inference-schema: keyword arguments taken by name from the JSON body.

For hook-style scripts without their own preprocess, the JSON body
``{"input_name": [...]}`` (or ``{"inputs": {...}}``) becomes numpy arrays.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import numpy as np

from runtime.azureml.aml import AMLRequest
from runtime.azureml.entry import EntryScript, InputMode
from runtime.azureml.request import ScoringRequest, is_json_mimetype
from runtime.errors import BadRequest, MethodNotAllowed, UnsupportedMediaType
from runtime.hookspecs import hookimpl
from runtime.manager import inline


class AzureMLDefaults:
    def __init__(self, entry: EntryScript | None) -> None:
        self.entry = entry

    @hookimpl(trylast=True)
    @inline
    def preprocess(self, request: ScoringRequest) -> Any:
        entry = self.entry
        if entry is None or entry.run is None:
            return tensors_from_json(request.json())
        if entry.input_mode is InputMode.RAW:
            # @rawhttp scripts get every method /score accepts, OPTIONS included.
            return {entry.data_param: AMLRequest(request)}
        if request.method not in ("GET", "POST"):
            raise MethodNotAllowed("Method not allowed")
        if entry.input_mode is InputMode.SCHEMA:
            return {p.name: v for p, v in zip(entry.schema_params, schema_arguments(entry, request), strict=True)}
        if request.method == "GET":
            return {entry.data_param: json.dumps(request.query_as_json())}
        return {entry.data_param: request.text()}

    @hookimpl(trylast=True)
    @inline
    def postprocess(self, request: ScoringRequest, outputs: Any) -> Any:
        # Returned as they are: the JSON encoder turns numpy values into lists and numbers as it meets them
        # (runtime.http.responses.numpy_default), without a recursive copy that fails on deep outputs.
        return outputs


def schema_arguments(entry: EntryScript, request: ScoringRequest) -> list[Any]:
    if request.method == "GET":
        body: Any = request.query_as_json()
    else:
        if not is_json_mimetype(request.mimetype):
            raise UnsupportedMediaType("Expects Content-Type to be application/json")
        if not request.body:
            raise BadRequest("POST body is empty. Expecting a JSON dictionary.")
        body = request.json()
        if not isinstance(body, dict):
            raise BadRequest("POST body should be a JSON dictionary.")
    values = []
    for param in entry.schema_params:
        value = body.get(param.name, param.default)
        if value is inspect.Parameter.empty:
            raise BadRequest(f"A value is not provided for the {param.name!r} parameter.")
        values.append(value)
    return values


def tensors_from_json(body: Any) -> dict[str, np.ndarray]:
    if isinstance(body, dict) and isinstance(body.get("inputs"), dict):
        body = body["inputs"]
    if not isinstance(body, dict) or not body:
        raise BadRequest('Expected a JSON object of input tensors: {"input_name": [[...]], ...}.')
    try:
        return {str(name): np.asarray(value) for name, value in body.items()}
    except ValueError as ex:
        raise BadRequest(f"Input tensors must be rectangular nested lists: {ex}") from None
