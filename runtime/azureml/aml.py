"""The Azure ML entry-script API: ``rawhttp``, ``AMLRequest`` and ``AMLResponse``.

Scripts written for azmlinfsrv import these from the Azure module names;
:mod:`runtime.azureml.compat` provides those names, so such scripts run unchanged
without Flask or the Azure packages.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from typing import IO, Any, TypeVar

from starlette.datastructures import ImmutableMultiDict, UploadFile

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


class MultiDict(ImmutableMultiDict[str, Any]):
    """Werkzeug's MultiDict API over Starlette's: ``get(key, default, type)``, ``getlist``, ``to_dict``."""

    def get(self, key: Any, default: Any = None, type: Callable[[Any], Any] | None = None) -> Any:
        if key not in self:
            return default
        value = self[key]
        if type is None:
            return value
        try:
            return type(value)
        except (ValueError, TypeError):
            return default

    def to_dict(self, flat: bool = True) -> dict[str, Any]:
        if flat:
            return {k: self[k] for k in self}
        return {k: self.getlist(k) for k in self}


class FileStorage:
    """An uploaded file, with the attributes of Werkzeug's FileStorage that scripts use."""

    def __init__(self, upload: UploadFile, name: str) -> None:
        self._upload = upload
        self.name = name
        self.filename = upload.filename
        self.content_type = upload.content_type or ""
        self.mimetype = self.content_type.split(";", 1)[0].strip()
        self.headers = upload.headers

    @property
    def stream(self) -> IO[bytes]:
        return self._upload.file

    def read(self, size: int = -1) -> bytes:
        return self._upload.file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._upload.file.seek(offset, whence)

    def save(self, dst: str | IO[bytes], buffer_size: int = 16384) -> None:
        self._upload.file.seek(0)
        if isinstance(dst, str):
            with open(dst, "wb") as out:
                shutil.copyfileobj(self._upload.file, out, buffer_size)
        else:
            shutil.copyfileobj(self._upload.file, dst, buffer_size)


class JSONDecodeFailed(ValueError):
    pass


class AMLRequest:
    """What ``@rawhttp`` run() receives: the Flask request API that scripts use, on a read request."""

    def __init__(self, request: ScoringRequest) -> None:
        self._request = request
        self.method = request.method
        self.headers = request.headers
        self.path = request.path
        self.args = MultiDict(request.query.multi_items())
        self.query_string = str(request.query).encode("latin-1")
        self.full_path = f"{request.path}?{request.query!s}"
        self.content_type = request.content_type or None
        self.mimetype = request.mimetype
        self.remote_addr = request.client
        form_items: list[tuple[str, Any]] = []
        file_items: list[tuple[str, Any]] = []
        if request.form is not None:
            for key, value in request.form.multi_items():
                if isinstance(value, UploadFile):
                    file_items.append((key, FileStorage(value, key)))
                else:
                    form_items.append((key, value))
        self.form = MultiDict(form_items)
        self.files = MultiDict(file_items)
        self.values = MultiDict([*request.query.multi_items(), *form_items])

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
        # Flask leaves .data empty when it parsed the body as a form.
        return b"" if self.mimetype in FORM_TYPES else self._request.body

    @property
    def stream(self) -> IO[bytes]:
        return io.BytesIO(self.data)

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
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
        except ValueError as ex:
            if silent:
                return None
            raise JSONDecodeFailed(f"Failed to decode JSON object: {ex}") from None

    def __repr__(self) -> str:
        return f"<AMLRequest {self.method} {self.full_path.rstrip('?')}>"


class AMLResponse:
    """A response that run() builds itself; same signature as azmlinfsrv's.

    ``json_str=True`` serialises ``message`` with ``json.dumps``. A header
    value with commas becomes repeated headers, as in azmlinfsrv.
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
        self.headers: list[tuple[str, str]] = []
        self.content_type = "text/html; charset=utf-8"
        if message is None:
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
            self.headers.extend((name, v) for v in values)

    def get_data(self, as_text: bool = False) -> Any:
        return self.body.decode("utf-8") if as_text else self.body

    @property
    def data(self) -> bytes:
        return self.body
