"""Form bodies for ``@rawhttp`` scripts: ``request.form`` and ``request.files`` as Flask gives them.

The body is already in memory (read once, size-checked), so it is parsed from
those bytes, lazily, the first time a script asks for the form; nothing reads
the request stream a second time. Parsing runs in the thread that runs
``run()``, never on the event loop.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from typing import IO, Any
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers, ImmutableMultiDict

from runtime.errors import BadRequest, PayloadTooLarge

MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
# Werkzeug's defaults (MAX_FORM_PARTS, MAX_FORM_MEMORY_SIZE): Flask rejects bigger forms too.
MAX_PARTS = 1000
MAX_FIELD_BYTES = 500_000


class MissingKey(KeyError, BadRequest):
    """``request.form["x"]`` for a key the client did not send: a 400 naming it (Werkzeug's BadRequestKeyError)."""

    def __init__(self, key: Any, where: str) -> None:
        BadRequest.__init__(self, f"The request has no {where} field {key!r}.")

    def __str__(self) -> str:
        return self.message


class MultiDict(ImmutableMultiDict[str, Any]):
    """Werkzeug's MultiDict API over Starlette's: ``get(key, default, type)``, ``getlist``, ``to_dict``."""

    where = "form"

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            raise MissingKey(key, self.where) from None

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


class Args(MultiDict):
    where = "query"


class Files(MultiDict):
    where = "file"


class FileStorage:
    """An uploaded file, with the API of Werkzeug's FileStorage that scripts use."""

    def __init__(self, data: bytes, name: str, filename: str, headers: Headers) -> None:
        self.stream: IO[bytes] = io.BytesIO(data)
        self.name = name
        self.filename = filename
        self.headers = headers

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip().lower()

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", 0) or 0)

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self.stream.readline(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def save(self, dst: str | IO[bytes], buffer_size: int = 16384) -> None:
        """Write the file to a path or a binary file object, from where the stream is (as Werkzeug)."""
        if isinstance(dst, str):
            with open(dst, "wb") as out:
                shutil.copyfileobj(self.stream, out, buffer_size)
        else:
            shutil.copyfileobj(self.stream, dst, buffer_size)

    def close(self) -> None:
        self.stream.close()

    def __bool__(self) -> bool:
        return bool(self.filename)

    def __repr__(self) -> str:
        return f"<FileStorage: {self.filename!r} ({self.content_type!r})>"


def parse_form(content_type: str, body: bytes) -> tuple[MultiDict, Files]:
    """``(form, files)`` of a body; both empty unless the content type is a form type (as Flask)."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype == URLENCODED:
        try:
            fields = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_PARTS)
        except ValueError:
            raise PayloadTooLarge(f"The form has more than {MAX_PARTS} fields.") from None
        return MultiDict(fields), Files()
    if mimetype == MULTIPART:
        return _Multipart(content_type).parse(body)
    return MultiDict(), Files()


class _Multipart:
    def __init__(self, content_type: str) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise BadRequest("The multipart/form-data body has no boundary in its Content-Type header.")
        self.boundary = boundary
        self.fields: list[tuple[str, str]] = []
        self.files: list[tuple[str, FileStorage]] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_name = b""
        self._header_value = b""
        self._data: list[bytes] = []
        self._size = 0
        self._parts = 0

    def _part_begin(self) -> None:
        self._headers, self._data, self._size = [], [], 0
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise PayloadTooLarge(f"The multipart body has more than {MAX_PARTS} parts.")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])
        self._size += end - start

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._header_name.lower(), self._header_value))
        self._header_name = self._header_value = b""

    def _part_end(self) -> None:
        headers = Headers(raw=self._headers)
        _, options = parse_options_header(headers.get("content-disposition", ""))
        if b"name" not in options:
            raise BadRequest("A part of the multipart body has no name in its Content-Disposition header.")
        name = options[b"name"].decode("utf-8", "replace")
        data = b"".join(self._data)
        if b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
            self.files.append((name, FileStorage(data, name, filename, headers)))
        elif self._size > MAX_FIELD_BYTES:
            raise PayloadTooLarge(
                f"The form field {name!r} has {self._size} bytes; fields above {MAX_FIELD_BYTES} bytes must be "
                "sent as files (with a filename)."
            )
        else:
            self.fields.append((name, data.decode("utf-8", "replace")))

    def parse(self, body: bytes) -> tuple[MultiDict, Files]:
        try:
            parser = MultipartParser(  # refuses a boundary over 256 bytes
                self.boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_part_data": self._part_data,
                    "on_part_end": self._part_end,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value_data,
                    "on_header_end": self._header_end,
                },
            )
            parser.write(body)
            parser.finalize()
        except FormParserError as ex:
            raise BadRequest(f"The multipart/form-data body cannot be parsed: {ex}") from None
        return MultiDict(self.fields), Files(self.files)
