"""JSON parsing that fails as a 400, whatever the input: bad syntax, bad UTF-8, deep nesting, huge integers.

``json.loads`` raises ``RecursionError`` (not a ValueError) on deeply nested input and a plain
``ValueError`` on integers of more than 4300 digits; left alone, both became 500s.
"""

from __future__ import annotations

import json
import json.encoder
from typing import Any

from runtime.errors import BadRequest

# json.dumps(value) with its default arguments makes a C encoder per call (and a closure for floats); one,
# made once, writes the same text 2 µs sooner. No circular-reference check: for values the runtime builds.
_ENCODE = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
)


def dumps(value: Any) -> str:
    """``json.dumps(value)`` exactly, for dicts and lists of str, numbers, bools and None that hold no cycle."""
    return "".join(_ENCODE(value, 0))


def loads(data: str | bytes, failure: str = "The request body could not be decoded as JSON") -> Any:
    """Parse ``data``; any failure is a :class:`BadRequest`: ``failure``, then the reason."""
    try:
        if isinstance(data, bytes) and data[:1] == b"{" and data[1:2] not in (b"", b"\x00"):
            # What json.loads does with bytes that open an object (json.detect_encoding says UTF-8 for them),
            # without its detection: 2 µs of a small v2 header.
            data = data.decode("utf-8", "surrogatepass")
        return json.loads(data)
    except RecursionError:
        raise BadRequest(f"{failure}: it is nested too deeply") from None
    except ValueError as ex:  # JSONDecodeError, UnicodeDecodeError, and the integer digit limit
        raise BadRequest(f"{failure}: {ex}") from None
