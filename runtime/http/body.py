"""Request bodies with a Content-Encoding (gzip, deflate), decoded as they arrive under the body-size limit.

Decoding after the whole body is read lets a 1 MiB gzip body become gigabytes before any check.
Here the decoder never produces more than the limit plus one byte: a bomb is a 413 once its output
passes the limit, whatever its ratio. Other encodings are a 415. (The /score routes pass the body
to run() undecoded, as azmlinfsrv does; only the v2 routes decode, as Triton does.)
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from runtime.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from runtime.http.requests import first_header, read_body

# zlib window bits: gzip's header and trailer, or zlib's (what HTTP calls deflate).
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Small bodies may always decode to this much, whatever their ratio (a tiny request of zeros compresses 100:1).
INFLATE_FLOOR = 1 << 20


class Decoder:
    """Incremental gzip/deflate decoding, stopped as soon as the output passes what the bytes sent allow.

    The output may reach ``ratio`` times the bytes received so far (at least :data:`INFLATE_FLOOR`),
    and never ``limit``: a 1 MiB bomb costs at most 16 MiB by default, checked before it is produced.
    """

    def __init__(self, encoding: str, limit: int, ratio: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.ratio = ratio
        self._wbits = WBITS[encoding]
        self._zlib = zlib.decompressobj(self._wbits)
        self._parts: list[bytes] = []
        self._size = 0
        self._received = 0

    def _allowed(self) -> int:
        return min(self.limit, max(INFLATE_FLOOR, self.ratio * self._received))

    def feed(self, data: bytes) -> None:
        self._received += len(data)
        try:
            while data:
                self._add(self._zlib.decompress(data, self._allowed() - self._size + 1))
                data = self._zlib.unconsumed_tail
                if self._zlib.eof:
                    data = self._zlib.unused_data + data
                    if data and self._wbits != WBITS["gzip"]:
                        raise BadRequest(f"request body has {len(data)} bytes after its {self.encoding} stream")
                    if data:  # gzip allows several members, one after the other
                        self._zlib = zlib.decompressobj(self._wbits)
        except zlib.error as ex:
            raise BadRequest(f"request body is not valid {self.encoding}: {ex}") from None

    def _add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.limit:
            raise PayloadTooLarge(
                f"Request body exceeds the limit of {self.limit} bytes once decoded ({self.encoding})."
            )
        if self._size > self._allowed():
            raise PayloadTooLarge(
                f"Request body decodes ({self.encoding}) to more than {self.ratio} times the {self._received} "
                f"bytes sent; send it uncompressed, or raise --max-inflate-ratio."
            )
        if chunk:
            self._parts.append(chunk)

    def finish(self) -> bytes:
        if not self._zlib.eof:
            raise BadRequest(f"request body is not valid {self.encoding}: the stream is truncated")
        return b"".join(self._parts)


def decoder_for(encoding: str | None, limit: int, ratio: int) -> Decoder | None:
    """The decoder a Content-Encoding header asks for; None for none or identity; 415 for the rest."""
    name = (encoding or "").strip().lower()
    if name in ("", "identity"):
        return None
    if name not in WBITS:
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {name[:64]!r}: send gzip, deflate or identity (one encoding)"
        )
    return Decoder(name, limit, ratio)


async def read_decoded_body(request: Request, limit: int, ratio: int) -> bytes:
    """The body, decoded per its Content-Encoding; 413 when the sent or the decoded bytes exceed ``limit``."""
    decoder = decoder_for(first_header(request, b"content-encoding"), limit, ratio)
    if decoder is None:
        return await read_body(request, limit)
    # The sent bytes are bounded too: empty deflate blocks decode to nothing.
    await read_body(request, limit, decoder.feed)
    return decoder.finish()
