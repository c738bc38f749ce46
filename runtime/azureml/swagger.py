"""``/swagger.json``: the OpenAPI document of the scoring service, as azmlinfsrv builds it.

A user file in AML_APP_ROOT wins (``swagger.json`` or ``swagger2.json`` for
version 2, ``swagger3.json``, ``swagger3.1.json``); otherwise the document is
generated, with the input and output schemas from inference-schema when run()
is decorated.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from runtime.errors import NotFound, StartupError
from runtime.settings import Settings

logger = logging.getLogger("runtime.swagger")

# version -> its aliases; order matters for messages.
VERSIONS: dict[str, tuple[str, ...]] = {"2": ("2", "2.0"), "3": ("3", "3.0"), "3.1": ("3.1",)}
_ERROR = {"type": "object", "properties": {"message": {"type": "string"}}}
_HEALTH_DESCRIPTION = "If service is up and running, this response will be returned with the content 'Healthy'"
_SCORE_DESCRIPTION = "The service processed the input correctly and provided a result prediction, if applicable."
_FAILED = "The service failed to execute due to an error."
_PAYLOAD = "The input payload for executing the real-time machine learning service."
_BEARER = {"type": "apiKey", "name": "Authorization", "in": "header", "description": "For example: Bearer abc123"}


def _paths(
    prefix: str,
    default: dict[str, Any],
    health: dict[str, Any],
    score_input: dict[str, Any],
    score_output: dict[str, Any],
    version_parameter: dict[str, Any],
    document: dict[str, Any],
) -> dict[str, Any]:
    """The three operations of both versions; the arguments say how each version describes a body."""
    return {
        f"{prefix}/": {
            "get": {
                "operationId": "ServiceHealthCheck",
                "description": "Simple health check endpoint to ensure the service is up at any given point.",
                "responses": {"200": {"description": _HEALTH_DESCRIPTION, **health}, "default": default},
            }
        },
        f"{prefix}/score": {
            "post": {
                "operationId": "RunMLService",
                "description": "Run web service's model and get the prediction output",
                "security": [{"Bearer": []}],
                **score_input,
                "responses": {"200": {"description": _SCORE_DESCRIPTION, **score_output}, "default": default},
            }
        },
        f"{prefix}/swagger.json": {
            "get": {
                "operationId": "GetSwaggerSpec",
                "description": "Get the Swagger specification.",
                "parameters": [{"name": "version", "in": "query", "required": False, **version_parameter}],
                "responses": {"200": {"description": "The Swagger specification.", **document}, "default": default},
            }
        },
    }


def _v2(prefix: str) -> dict[str, Any]:
    string = {"type": "string"}
    body = {"name": "serviceInputPayload", "in": "body", "description": _PAYLOAD}
    return {
        "swagger": "2.0",
        "schemes": ["https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {"Bearer": dict(_BEARER)},
        "paths": _paths(
            prefix,
            default={"description": _FAILED, "schema": {"$ref": "#/definitions/ErrorResponse"}},
            health={"schema": string, "examples": {"application/json": "Healthy"}},
            score_input={"parameters": [{**body, "schema": {"$ref": "#/definitions/ServiceInput"}}]},
            score_output={"schema": {"$ref": "#/definitions/ServiceOutput"}},
            version_parameter={"type": "integer", "enum": [2, 3]},
            document={"schema": string},
        ),
        "definitions": {},
    }


def _v3(prefix: str) -> dict[str, Any]:
    def content(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
        return {"content": {media: {"schema": schema}}}

    return {
        "openapi": "3.0.3",
        "security": [{"Bearer": []}],
        "paths": _paths(
            prefix,
            default={"description": _FAILED, **content({"$ref": "#/components/schemas/ErrorResponse"})},
            health=content({"type": "string", "example": "Healthy"}, "text/plain"),
            score_input={
                "requestBody": {"description": _PAYLOAD, **content({"$ref": "#/components/schemas/ServiceInput"})}
            },
            score_output=content({"$ref": "#/components/schemas/ServiceOutput"}),
            version_parameter={"schema": {"type": "integer", "enum": [2, 3]}},
            document=content({"type": "string"}, "text/plain"),
        ),
        "components": {"schemas": {}, "securitySchemes": {"Bearer": dict(_BEARER)}},
    }


def _schemas(run: Callable[..., Any] | None) -> tuple[set[str], Any, Any]:
    """Supported versions and the input/output schemas for run()."""
    undecorated = {"type": "object", "example": {}}
    if run is None:
        return set(VERSIONS), undecorated, undecorated
    try:
        from inference_schema.schema_util import (
            get_input_schema,
            get_output_schema,
            get_supported_versions,
            is_schema_decorated,
        )
    except ImportError:
        return set(VERSIONS), undecorated, undecorated
    supported = {str(v) for v in get_supported_versions(run)}
    if is_schema_decorated(run):
        return supported, get_input_schema(run), get_output_schema(run)
    return supported, undecorated, undecorated


def without_security(doc: dict[str, Any]) -> None:
    """Drop the Bearer declarations azmlinfsrv always writes: without --auth-key nothing is enforced."""
    doc.pop("securityDefinitions", None)
    doc.pop("security", None)
    doc.get("components", {}).pop("securitySchemes", None)
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            operation.pop("security", None)


class Swagger:
    def __init__(self, settings: Settings, run: Callable[..., Any] | None) -> None:
        prefix = f"/{settings.service_path_prefix.strip('/')}" if settings.service_path_prefix else ""
        info = {
            "title": settings.service_name,
            "description": f"API specification for the Azure Machine Learning service {settings.service_name}",
            "version": settings.service_version,
        }
        supported, input_schema, output_schema = _schemas(run)
        self.documents: dict[str, dict[str, Any]] = {}
        for version, aliases in VERSIONS.items():
            doc = self._user_file(settings.app_root, version)
            if doc is None:
                if not supported.intersection(aliases):
                    continue
                doc = self._generate(version, prefix, info, input_schema, output_schema)
                if not settings.auth_keys:
                    without_security(doc)
            self.documents[version] = doc
        self.supported = sorted(self.documents)

    @staticmethod
    def _user_file(app_root: str, version: str) -> dict[str, Any] | None:
        names = ["swagger.json", "swagger2.json"] if version == "2" else [f"swagger{version}.json"]
        for name in names:
            path = os.path.join(app_root, name)
            if os.path.isfile(path):
                try:
                    with open(path, encoding="utf-8") as f:
                        doc: dict[str, Any] = json.load(f)
                except (OSError, ValueError) as ex:  # azmlinfsrv does not start either
                    raise StartupError(f"The swagger file {path} is not valid JSON: {ex}") from None
                logger.info("Loaded the user's swagger file for version %s from %s", version, path)
                return doc
        return None

    @staticmethod
    def _generate(
        version: str, prefix: str, info: dict[str, str], input_schema: Any, output_schema: Any
    ) -> dict[str, Any]:
        if version == "2":
            doc = _v2(prefix)
            doc["definitions"] = {
                "ServiceInput": copy.deepcopy(input_schema),
                "ServiceOutput": copy.deepcopy(output_schema),
                "ErrorResponse": _ERROR,
            }
        else:
            doc = _v3(prefix)
            doc["components"]["schemas"] = {
                "ServiceInput": copy.deepcopy(input_schema),
                "ServiceOutput": copy.deepcopy(output_schema),
                "ErrorResponse": _ERROR,
            }
            if version == "3.1":
                doc["openapi"] = "3.1.0"
        # Keep azmlinfsrv's key order: the version key, then info, then the rest.
        first = "swagger" if version == "2" else "openapi"
        return {first: doc.pop(first), "info": info, **doc}

    def get(self, version: str | None) -> dict[str, Any]:
        version = "2" if version is None else version  # ?version= is invalid, as in azmlinfsrv
        canonical = next((v for v, aliases in VERSIONS.items() if version in aliases), None)
        listed = ", ".join(self.supported)
        if canonical is None:
            raise NotFound(f"Swagger version [{version}] is not valid. Supported versions: [{listed}].")
        if canonical not in self.documents:
            raise NotFound(
                f"Swagger version [{version}] is not supported for the scoring script. "
                f"Supported swagger versions: [{listed}]."
            )
        return self.documents[canonical]
