"""JSON parsing that fails as a 400, whatever the input: bad syntax, bad UTF-8, deep nesting, huge integers.

``json.loads`` raises ``RecursionError`` (not a ValueError) on deeply nested input and a plain
``ValueError`` on integers of more than 4300 digits; left alone, both became 500s.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.errors import BadRequest


def loads(data: str | bytes, failure: str = "The request body could not be decoded as JSON") -> Any:
    """Parse ``data``; any failure is a :class:`BadRequest`: ``failure``, then the reason."""
    try:
        return json.loads(data)
    except RecursionError:
        raise BadRequest(f"{failure}: it is nested too deeply") from None
    except ValueError as ex:  # JSONDecodeError, UnicodeDecodeError, and the integer digit limit
        raise BadRequest(f"{failure}: {ex}") from None
