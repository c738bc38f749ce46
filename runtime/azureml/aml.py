"""The Azure ML entry-script API: ``rawhttp``, ``AMLRequest`` and ``AMLResponse``.

Scripts written for azmlinfsrv import these from the Azure module names;
:mod:`runtime.azureml.compat` provides those names, so such scripts run unchanged
without Flask or the Azure packages.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from runtime.azureml.form import Args, Files, MultiDict, parse_form
from runtime.azureml.request import FORM_TYPES, ScoringRequest, is_json_mimetype

F = TypeVar("F", bound=Callable[..., Any])

# Set by @rawhttp while a script loads (azmlinfsrv keeps the same module-level flag).
_raw_http_requested = False


def rawhttp(func: F) -> F:
    """Mark ``run()`` to receive the whole HTTP request as an :class:`AMLRequest`."""
    global _raw_http_requested
    _raw_http_requested = True
    return func


def raw_http_requested() -> bool:
    return _raw_http_requested


def reset_raw_http() -> None:
    global _raw_http_requested
    _raw_http_requested = False


class JSONDecodeFailed(ValueError):
    pass


class AMLRequest:
    """What ``@rawhttp`` run() receives: the Flask request API that scripts use, on a read request."""

    def __init__(self, request: ScoringRequest) -> None:
        self._request = request
        self.method = request.method
        self.headers = request.headers
        self.path = request.path
        self.args = Args(request.query.multi_items())
        self.query_string = str(request.query).encode("latin-1")
        self.full_path = f"{request.path}?{request.query!s}"
        self.content_type = request.content_type or None
        self.mimetype = request.mimetype
        self.remote_addr = request.client
        self._form: tuple[MultiDict, Files] | None = None
        # Flask's .data: the body unless it was parsed as a form, or get_data() cached it first.
        self._data_read = False

    def _parsed_form(self) -> tuple[MultiDict, Files]:
        if self._form is None:
            self._form = parse_form(self._request.content_type, self._request.body)
        return self._form

    @property
    def form(self) -> MultiDict:
        return self._parsed_form()[0]

    @property
    def files(self) -> Files:
        return self._parsed_form()[1]

    @property
    def values(self) -> MultiDict:
        if self.method == "GET":  # Flask leaves the form out of GET's values
            return self.args
        return MultiDict([*self.args.multi_items(), *self.form.multi_items()])

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        return int(raw) if raw and raw.isdigit() else None

    @property
    def is_json(self) -> bool:
        return is_json_mimetype(self.mimetype)

    @property
    def url(self) -> str:
        host = self.headers.get("host", "localhost")
        return f"http://{host}{self.full_path.rstrip('?')}"

    @property
    def data(self) -> bytes:
        if self.mimetype in FORM_TYPES and not self._data_read:
            return b""
        return self._request.body

    @property
    def stream(self) -> IO[bytes]:
        return io.BytesIO(self.data)

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        """The whole body, in any order with form/files (Flask returns b"" once it parsed a form first)."""
        self._data_read = self._data_read or cache
        body = self._request.body
        return body.decode("utf-8", "replace") if as_text else body

    @property
    def json(self) -> Any:
        return self.get_json()

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not (force or self.is_json):
            if silent:
                return None
            raise JSONDecodeFailed(
                "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
            )
        try:
            return json.loads(self._request.body)
        except (ValueError, RecursionError) as ex:
            if silent:
                return None
            raise JSONDecodeFailed(f"Failed to decode JSON object: {ex}") from None

    def __repr__(self) -> str:
        return f"<AMLRequest {self.method} {self.full_path.rstrip('?')}>"


class ResponseHeaders:
    """An :class:`AMLResponse`'s headers, with the API of Werkzeug's ``Headers`` that scripts use.

    ``headers[name] = value`` replaces (Azure ML's own @rawhttp sample sets CORS headers so), ``add`` and
    ``add_header`` append, lookups ignore case; iterating gives ``(name, value)`` pairs, in order.
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []

    def get(self, name: str, default: Any = None) -> Any:
        return next((v for k, v in self._items if k.lower() == name.lower()), default)

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self._items if k.lower() == name.lower()]

    def add(self, name: str, value: Any) -> None:
        self._items.append((name, str(value)))

    add_header = add

    def set(self, name: str, value: Any) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        self._items = [(k, v) for k, v in self._items if k.lower() != name.lower()]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __getitem__(self, name: str) -> str:
        value: str | None = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    __setitem__ = set
    __delitem__ = remove

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ResponseHeaders({self._items!r})"


class AMLResponse:
    """A response that run() builds itself; same signature as azmlinfsrv's.

    ``json_str=True`` serialises ``message`` with ``json.dumps``. A header
    value with commas becomes repeated headers, as in azmlinfsrv. A generator
    or other iterator (sync or async) of str/bytes chunks is streamed, as Flask
    streams it; a list or tuple of chunks is joined.
    """

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: dict[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        response_headers = response_headers or {}
        self.status_code = int(status_code)
        self.headers = ResponseHeaders()
        self.content_type = "text/html; charset=utf-8"
        self.stream: Iterator[Any] | AsyncIterator[Any] | None = None
        if isinstance(message, Iterator | AsyncIterator) and not json_str:
            self.stream, self.body = message, b""
        elif isinstance(message, list | tuple) and not json_str:
            self.body = _join(message)
        elif message is None:
            self.body = b"{}"
            self.content_type = "application/json"
        elif json_str:
            self.body = json.dumps(message).encode("utf-8")
            self.content_type = "application/json"
        elif isinstance(message, bytes | bytearray):
            self.body = bytes(message)
        else:
            self.body = str(message).encode("utf-8")
        self.run_function_failed = run_function_failed
        for name, value in response_headers.items():
            values = [v.strip() for v in str(value).split(",")]
            if name.lower() == "content-type":
                self.content_type = ", ".join(values)
                continue
            for v in values:
                self.headers.add(name, v)

    @property
    def content_type(self) -> str | None:
        value: str | None = self.headers.get("content-type")
        return value

    @content_type.setter
    def content_type(self, value: str) -> None:
        self.headers.set("Content-Type", value)

    def get_data(self, as_text: bool = False) -> Any:
        if isinstance(self.stream, Iterator):  # consumes the stream, as Werkzeug does
            chunks, self.stream = self.stream, None
            self.body = _join(chunks)
        return self.body.decode("utf-8") if as_text else self.body

    @property
    def data(self) -> bytes:
        return self.body


def _join(chunks: Iterable[Any]) -> bytes:
    return b"".join(c if isinstance(c, bytes) else str(c).encode("utf-8") for c in chunks)
