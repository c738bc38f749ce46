"""The request object hooks receive: one HTTP request, already read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers, QueryParams

from runtime.errors import BadRequest

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def is_json_mimetype(mimetype: str) -> bool:
    """Flask's rule: application/json or any application/*+json."""
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


@dataclass
class ScoringRequest:
    """One request to ``/score``, as hooks see it.

    ``body`` is complete (size-checked) before any hook runs. ``state`` is a
    free dict that hooks of one request may use to pass things along.
    """

    method: str
    path: str
    headers: Headers
    query: QueryParams
    body: bytes
    request_id: str
    client: str | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def mimetype(self) -> str:
        return self.content_type.split(";", 1)[0].strip().lower()

    def text(self) -> str:
        """The body as str; a non-UTF-8 body is a 400."""
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as ex:
            raise BadRequest(f"Input cannot be decoded as UTF-8: {ex}") from None

    def json(self) -> Any:
        """The body parsed as JSON; an empty or malformed body is a 400 that says why."""
        if not self.body:
            raise BadRequest("POST body is empty. Expecting a JSON document.")
        text = self.text()
        try:
            return json.loads(text)
        except json.JSONDecodeError as ex:
            raise BadRequest(f"POST body could not be decoded as JSON: {ex}") from None

    def query_as_json(self) -> dict[str, Any]:
        """Query parameters the azmlinfsrv way: each value parsed as JSON if it can be,
        repeated keys become lists."""
        parsed: dict[str, Any] = {}
        for key in dict.fromkeys(k for k, _ in self.query.multi_items()):
            values = [_maybe_json(v) for v in self.query.getlist(key)]
            parsed[key] = values[0] if len(values) == 1 else values
        return parsed

    def header_dict(self) -> dict[str, str]:
        """Headers as a dict with Werkzeug's capitalisation (what ``request_headers`` gets in azmlinfsrv)."""
        out: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.title()
            out[key] = f"{out[key]},{value}" if key in out else value
        return out


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
