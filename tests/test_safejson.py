"""runtime.safejson: json.dumps's exact text from a cached encoder; loads' UTF-8 fast path parses as json.loads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime import safejson
from runtime.errors import BadRequest


@pytest.mark.parametrize(
    "value",
    [
        {"model_name": "m", "outputs": [{"name": "y", "shape": [1, 3], "parameters": {"binary_data_size": 12}}]},
        {"a": 1.5, "b": [1, None, True, False, "é\u2028\ud800\x00"], "c": float("nan"), "d": -float("inf")},
        {"big": 10**30, "neg": -0.0, "nested": [[[]], {}]},
        [],
    ],
)
def test_dumps_writes_what_json_dumps_writes(value: Any) -> None:
    assert safejson.dumps(value) == json.dumps(value)


def test_dumps_refuses_what_json_dumps_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        safejson.dumps({"a": object()})


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1, "a": 2}',
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate: json.loads(bytes) decodes with surrogatepass
        b'{"a": 123456789012345678901234567890, "b": NaN, "c": 1e999}',
        b'{"a": "\xff"}',
        b"{\x00\x00\x00",
        b"{",
        b'{"a": 1} trailing',
        b"\xef\xbb\xbf{}",
        b'\xff\xfe{\x00"\x00a\x00"\x00:\x001\x00}\x00',  # UTF-16 with its BOM
    ],
)
def test_loads_answers_as_json_loads(body: bytes) -> None:
    try:
        expected: Any = ("parsed", repr(json.loads(body)))
    except ValueError as ex:
        expected = ("400", f"bad: {ex}")
    try:
        got: Any = ("parsed", repr(safejson.loads(body, "bad")))
    except BadRequest as ex:
        got = ("400", ex.message)
    assert got == expected
